"""Command line: `python -m generators {sample,train,export}`; the logic lives in the library.

Errors in the input or settings print one `error:` line (exit status 1); STYLEGAN_INV_TRACEBACK=1
shows the traceback instead (`generators.cli.run_cli`).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys

from generators import distributed
from generators.cli import run_cli

SEEDS_FORMS = "a range '0-7' (both ends included), a list '1,5,9', or both ('0-3,8')"


def parse_seeds(text: str) -> list[int]:
  """'0-7' or '1,5,9' (or '0-3,8') -> list of ints; a ValueError naming --seeds otherwise."""
  seeds = []
  for part in text.split(","):
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
    if not m:
      raise ValueError(f"--seeds {text}: {part.strip()!r} is not a seed or a range of seeds; "
                       f"give non-negative integers as {SEEDS_FORMS}.")
    lo, hi = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
    if hi < lo:
      raise ValueError(f"--seeds {text}: the range {lo}-{hi} is empty (it ends before it "
                       f"starts); write it low-high, e.g. '{hi}-{lo}', or give {SEEDS_FORMS}.")
    seeds.extend(range(lo, hi + 1))
  return seeds


def _steps(text: str) -> list[int]:
  """'5000' or '4000,4500,5000' -> list of ints."""
  return [int(part) for part in text.split(",")]


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m generators", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  sample = sub.add_parser("sample", help="write a grid of samples from a checkpoint")
  sample.add_argument("--checkpoint", default=None,
                      help="model file or directory, or embedded:NAME (default: the embedded "
                      "model)")
  sample.add_argument("--seeds", default="0-15", help=f"{SEEDS_FORMS} (default 0-15)")
  sample.add_argument("--psi", type=float, default=1.0, help="truncation psi (1 = none)")
  sample.add_argument("--noise-mode", default="const", choices=("const", "random", "none"))
  sample.add_argument("--class", dest="label", default=None,
                      help="class name or index, for a conditional generator")
  sample.add_argument("--out", default="out/samples.png")
  train = sub.add_parser("train", help="train (or resume) a StyleGAN2")
  train.add_argument("--config", default="embedded", help="config name or file[:arg]")
  train.add_argument("--workdir", required=True)
  train.add_argument("--branch-from", default=None, metavar="RUN",
                     help="start --workdir as a branch of the run in RUN at --branch-step: "
                     "continue it from that checkpoint under this config (same networks)")
  train.add_argument("--branch-step", type=int, default=None)
  distributed.add_arguments(train)
  export = sub.add_parser("export", help="export a training run's G_ema + D as a native model")
  export.add_argument("--workdir", required=True)
  export.add_argument("--out", required=True)
  export.add_argument("--step", type=_steps, default=None,
                      help="a kept checkpoint's step (default: the latest), or several, comma-"
                      "separated, to average their G_ema weights (D: the latest's)")
  return parser


def main(argv=None) -> int:
  parser = _parser()
  args, overrides = parser.parse_known_args(argv)
  if overrides and args.command != "train":  # only train takes --config.field=value
    parser.error(f"unrecognised arguments: {overrides}")
  if args.command == "train" and (args.branch_from is None) != (args.branch_step is None):
    parser.error("--branch-from and --branch-step go together")
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "jax._src.xla_bridge"):  # orbax's per-save chatter; the TPU probe
    logging.getLogger(noisy).setLevel(logging.WARNING)
  return run_cli(_run, args, overrides)


def _run(args: argparse.Namespace, overrides: list[str]) -> int:
  if args.command == "sample":
    import pathlib

    import numpy as np

    from generators import checkpoint, trainer

    seeds = parse_seeds(args.seeds)
    model = checkpoint.load(args.checkpoint)
    images = np.asarray(model.sample(seeds, psi=args.psi, noise_mode=args.noise_mode,
                                     label=args.label))
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    trainer.grid_png(images, out)
    print(f"wrote {len(seeds)} samples to {out}")
  elif args.command == "train":
    import configs
    from generators import train as train_lib

    distributed.from_args(args)  # before any other JAX work
    config = configs.load_config(args.config, overrides)
    if args.branch_from is not None:
      if distributed.current().main:  # one process copies the checkpoint; the others wait
        train_lib.branch(args.branch_from, args.branch_step, args.workdir, config)
      distributed.barrier("generators train: branched")
    train_lib.train(config, args.workdir)
  elif args.command == "export":
    from generators import train as train_lib

    print(train_lib.export(args.workdir, args.out, step=args.step))
  return 0


if __name__ == "__main__":
  sys.exit(main())
