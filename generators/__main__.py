"""Command line: `python -m generators {sample,train,export}`; the logic lives in the library."""

from __future__ import annotations

import argparse
import logging
import sys


def _seeds(text: str) -> list[int]:
  """'0-7' or '1,5,9' -> list of ints."""
  seeds = []
  for part in text.split(","):
    lo, sep, hi = part.partition("-")
    seeds.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
  return seeds


def _steps(text: str) -> list[int]:
  """'5000' or '4000,4500,5000' -> list of ints."""
  return [int(part) for part in text.split(",")]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m generators", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  sample = sub.add_parser("sample", help="write a grid of samples from a checkpoint")
  sample.add_argument("--checkpoint", default=None,
                      help="model file or directory, or embedded:NAME (default: the embedded "
                      "model)")
  sample.add_argument("--seeds", type=_seeds, default=_seeds("0-15"))
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
  export = sub.add_parser("export", help="export a training run's G_ema + D as a native model")
  export.add_argument("--workdir", required=True)
  export.add_argument("--out", required=True)
  export.add_argument("--step", type=_steps, default=None,
                      help="a kept checkpoint's step (default: the latest), or several, comma-"
                      "separated, to average their G_ema weights (D: the latest's)")
  args, overrides = parser.parse_known_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)  # orbax's per-save chatter

  if args.command == "sample":
    if overrides:
      parser.error(f"unrecognised arguments: {overrides}")
    import pathlib

    import numpy as np

    from generators import checkpoint, train as train_lib

    try:
      model = checkpoint.load(args.checkpoint)
      images = np.asarray(model.sample(args.seeds, psi=args.psi, noise_mode=args.noise_mode,
                                       label=args.label))
    except (FileNotFoundError, ValueError) as err:  # no such file or embedded model; a class
      parser.error(str(err))                        # label missing, unknown or not wanted
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    train_lib._grid_png(images, out)
    print(f"wrote {len(args.seeds)} samples to {out}")
  elif args.command == "train":
    import configs
    from generators import train as train_lib

    config = configs.load_config(args.config, overrides)
    if (args.branch_from is None) != (args.branch_step is None):
      parser.error("--branch-from and --branch-step go together")
    if args.branch_from is not None:
      try:
        train_lib.branch(args.branch_from, args.branch_step, args.workdir, config)
      except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    train_lib.train(config, args.workdir)
  elif args.command == "export":
    from generators import train as train_lib

    print(train_lib.export(args.workdir, args.out, step=args.step))
  return 0


if __name__ == "__main__":
  sys.exit(main())
