"""Training speed: seconds per compiled G step, D step and D step with R1 (`generators.train`).

    python -m benchmarks.train_speed --out out/bench/train_speed.json
    python -m benchmarks.train_speed --compare-autodiff      # also time plain-autodiff convs

Builds the steps of a training config (default `embedded`: what trains the shipped model) on
all local devices, with random weights and constant data, and times each step after a warm-up.
One training iteration is a G step and a D step, with R1 on every `r1_interval`-th D step, so
its amortised cost is g + d + (d_r1 - d) / r1_interval; from it come kimg per hour and the
hours the config's `total_kimg` takes (sample grids and checkpoints excluded).

`--compare-autodiff` times the same steps a second time with `upfirdn.conv_transpose2d` and
`upfirdn.strided_conv2d` replaced by their plain-autodiff forms, in the same process: the
hand-written VJPs' speed-up, measured as an A/B.
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
           "hours_for_total_kimg"]


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
  row = {"convs": label}
  for name, step in steps.items():
    times = []
    for _ in range(repeats + 1):  # the first call compiles
      start = time.perf_counter()
      state, _ = step(state)
      jax.block_until_ready(state)
      times.append(time.perf_counter() - start)
    row[name] = float(np.median(times[1:]))
  row["per_iteration"] = (row["g_step"] + row["d_step"]
                          + (row["d_r1_step"] - row["d_step"]) / config.r1_interval)
  row["kimg_per_hour"] = config.batch_size * 3600 / row["per_iteration"] / 1000
  row["hours_for_total_kimg"] = config.total_kimg / row["kimg_per_hour"]
  return row


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--config", default="embedded", help="config name or file[:arg]")
  parser.add_argument("--repeats", type=int, default=3, help="timed calls per step")
  parser.add_argument("--compare-autodiff", action="store_true",
                      help="also time the steps with plain-autodiff convolutions")
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
  common.write_json(args.out, {"device": common.device_description(), "config": args.config,
                               "train_config": config.to_dict(), "rows": rows})


if __name__ == "__main__":
  main()
