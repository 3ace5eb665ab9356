"""Training speed: seconds per compiled G step, D step and D step with R1 (`generators.train`),
and the same for the domain-guided encoder's training (`inversion.encoders.train`).

    python -m benchmarks.train_speed --out out/bench/train_speed.json
    python -m benchmarks.train_speed --compare-autodiff      # also time plain-autodiff convs
    python -m benchmarks.train_speed --encoder idinvert:train,embedded   # E beside G

Builds the steps of a training config (default `embedded`: what trains the shipped model) on
all local devices, with random weights and constant data, and times each step after a warm-up.
One training iteration is a G step and a D step, with R1 on every `r1_interval`-th D step, so
its amortised cost is g + d + (d_r1 - d) / r1_interval; from it come kimg per hour and the
hours the config's `total_kimg` takes (sample grids and checkpoints excluded).

`--compare-autodiff` times the same steps a second time with `upfirdn.conv_transpose2d` and
`upfirdn.strided_conv2d` replaced by their plain-autodiff forms, in the same process: the
hand-written VJPs' speed-up, measured as an A/B.

`--encoder CONFIG` also times an encoder training iteration (E step, D step, lazy R1) on the
embedded model. For both rows, images per second, and GFLOP/s as XLA counts the compiled steps'
floating-point operations (`cost_analysis`), against the device's dense-conv peak
(`common.conv_peak`, as generator_speed.py measures it).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import configs
from benchmarks import common
from generators import train, upfirdn

COLUMNS = ["convs", "g_step", "d_step", "d_r1_step", "per_iteration", "kimg_per_hour",
           "hours_for_total_kimg", "images_per_s", "gflops", "peak_fraction"]
ENCODER_COLUMNS = ["network", "e_step", "d_step", "d_r1_step", "per_iteration", "images_per_s",
                   "gflops", "peak_fraction", "hours_for_total_kimg"]


@contextlib.contextmanager
def autodiff_convs():
  """Swap the hand-written conv VJPs for XLA autodiff of the same forward computations."""
  plain_strided = lambda x, w, stride: upfirdn.conv2d(x, w, stride=stride)
  with mock.patch.object(upfirdn, "conv_transpose2d", upfirdn._conv_transpose2d_phases), \
       mock.patch.object(upfirdn, "strided_conv2d", plain_strided):
    yield


def measure(config, label: str, repeats: int) -> dict:
  """Times the three compiled steps of `config`; returns a result row."""
  resolution = config.data.resolution
  g_config, d_config = train.model_configs(config, resolution, channels=4)
  mesh = Mesh(np.array(jax.devices()), ("data",))
  state = jax.device_put(train.init_state(config, g_config, d_config), NamedSharding(mesh, P()))
  real = jax.device_put(jnp.zeros((config.batch_size, resolution, resolution, 4)),
                        NamedSharding(mesh, P("data")))
  g_step, d_plain, d_r1 = train.make_steps(config, g_config, d_config, mesh)
  key = jax.random.PRNGKey(0)
  c = None  # a conditional config: every image labelled with class 0
  if g_config.c_dim:
    c = jax.device_put(jax.nn.one_hot(jnp.zeros(config.batch_size, int), g_config.c_dim),
                       NamedSharding(mesh, P("data")))
  steps = {"g_step": lambda s: g_step(s, key, 0.99, 1.0, c),
           "d_step": lambda s: d_plain(s, real, key, 1.0, config.r1_gamma, c, c),
           "d_r1_step": lambda s: d_r1(s, real, key, 1.0, config.r1_gamma, c, c)}
  flops = {"g_step": _flops(g_step, state, key, 0.99, 1.0, c),
           "d_step": _flops(d_plain, state, real, key, 1.0, config.r1_gamma, c, c),
           "d_r1_step": _flops(d_r1, state, real, key, 1.0, config.r1_gamma, c, c)}
  row = {"convs": label, **_time_steps(steps, state, repeats)}
  return _iteration(row, flops, "g_step", config)


def _flops(jitted, *args) -> float:
  """Floating-point operations of one call, as XLA counts them in the compiled program."""
  analysis = jitted.lower(*args).compile().cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float(analysis.get("flops", float("nan")))


def _time_steps(steps: dict, state, repeats: int) -> dict:
  """Median seconds of each step (the first call compiles), threading the state through."""
  out = {}
  for name, step in steps.items():
    times = []
    for _ in range(repeats + 1):
      start = time.perf_counter()
      state, *_ = step(state)
      jax.block_until_ready(state)
      times.append(time.perf_counter() - start)
    out[name] = float(np.median(times[1:]))
  return out


def _iteration(row: dict, flops: dict, first: str, config) -> dict:
  """Amortised iteration (`first` step + D step + lazy R1), its rates and its peak fraction."""
  share = lambda v: (v[first] + v["d_step"] + (v["d_r1_step"] - v["d_step"]) / config.r1_interval)
  row["per_iteration"] = share(row)
  row["kimg_per_hour"] = config.batch_size * 3600 / row["per_iteration"] / 1000
  row["hours_for_total_kimg"] = config.total_kimg / row["kimg_per_hour"]
  row["images_per_s"] = config.batch_size / row["per_iteration"]
  row["gflops"] = share(flops) / row["per_iteration"] / 1e9
  row["peak_fraction"] = row["gflops"] / _peak()["gflops"]
  return row


_PEAK = {}


def _peak() -> dict:
  if not _PEAK:
    _PEAK.update(common.conv_peak())
  return _PEAK


def measure_encoder(config_name: str, repeats: int) -> dict:
  """Times an encoder training iteration on the embedded model; returns a result row."""
  from generators import checkpoint, trainer  # pylint: disable=import-outside-toplevel
  from inversion.encoders import train as enc_train  # pylint: disable=import-outside-toplevel

  config = configs.load_config(config_name, [])
  model = checkpoint.load(None)
  _, replicated, batch = trainer.data_mesh(config.batch_size)
  terms, term_params = enc_train._feature_terms(config, model)  # pylint: disable=protected-access
  e_step, d_plain, d_r1 = enc_train.make_steps(config, model.g_config, model.d_config, terms,
                                               batch)
  state = jax.device_put(enc_train.init_state(config, model), replicated)
  x = jax.device_put(jnp.zeros((config.batch_size, model.resolution, model.resolution,
                                model.channels)), batch)
  key, lr = jax.random.PRNGKey(0), config.lr
  e_args = (x, key, model.g_vars, term_params, lr)
  d_args = (x, x, lr, config.r1_gamma)
  steps = {"e_step": lambda s: e_step(s, *e_args), "d_step": lambda s: d_plain(s, *d_args),
           "d_r1_step": lambda s: d_r1(s, *d_args)}
  flops = {"e_step": _flops(e_step, state, *e_args), "d_step": _flops(d_plain, state, *d_args),
           "d_r1_step": _flops(d_r1, state, *d_args)}
  row = {"network": f"encoder ({config_name})", **_time_steps(steps, state, repeats)}
  return _iteration(row, flops, "e_step", config)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--config", default="embedded", help="config name or file[:arg]")
  parser.add_argument("--repeats", type=int, default=3, help="timed calls per step")
  parser.add_argument("--compare-autodiff", action="store_true",
                      help="also time the steps with plain-autodiff convolutions")
  parser.add_argument("--encoder", default=None, metavar="CONFIG",
                      help="also time encoder training with this config (idinvert:train,embedded)")
  parser.add_argument("--out", default=None, help="JSON output path")
  args = parser.parse_args(argv)
  config = configs.load_config(args.config, [])
  print(f"device: {common.device_description()}; config {args.config}: "
        f"{config.data.resolution} px, batch {config.batch_size}, "
        f"channel_base {config.model.channel_base}, channel_max {config.model.channel_max}")
  rows = [measure(config, "hand-written VJPs", args.repeats)]
  if args.compare_autodiff:
    with autodiff_convs():
      rows.append(measure(config, "autodiff", args.repeats))
  common.print_table(rows, COLUMNS)
  encoder_rows = []
  if args.encoder:
    g_row = dict(rows[0], network=f"G ({args.config})", e_step=None)
    encoder_rows = [g_row, measure_encoder(args.encoder, args.repeats)]
    common.print_table(encoder_rows, ENCODER_COLUMNS)
  common.write_json(args.out, {"device": common.device_description(), "config": args.config,
                               "train_config": config.to_dict(), "rows": rows,
                               "encoder_rows": encoder_rows, "conv_peak": _peak()})


if __name__ == "__main__":
  main()
