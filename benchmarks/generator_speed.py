"""Synthesis speed: forward, and forward+backward w.r.t. ws (one inversion step's network cost).

    python -m benchmarks.generator_speed --out out/bench/generator_speed.json
    python -m benchmarks.generator_speed --quick        # 64 and 256 px only

Config-F-shaped networks (z = w = 512, channel_base 32768, channel_max 512, random weights) at
64, 256 and 1024 px, batch 1 and 8, on whatever device JAX sees. Each row: median seconds per
call, images/s, achieved GFLOP/s from the analytic count in `benchmarks.common`, and the
fraction of the device's measured dense-conv peak (forward + input gradient of a large 3x3
conv: the same kind of work as a backward pass w.r.t. ws; see `benchmarks.common`). Also the
rate of a plain conv shaped like the top block's layers at that batch (`top_layer_conv_gflops`):
at high resolution the layers have few channels and many pixels, and XLA's convolution itself
runs well below the peak there, so this is the ceiling for the network. At batch > 1 a third
mode, `fwd+bwd 1-by-1`, runs the same gradient one image at a time in a compiled loop: the
inversion engine's CPU schedule (`EngineSpec.micro_batch`).
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp

from benchmarks import common
from generators import networks
from inversion import engine

RESOLUTIONS = (64, 256, 1024)
BATCHES = (1, 8)
COLUMNS = ["resolution", "batch", "mode", "seconds", "images_per_s", "gflops", "peak_fraction",
           "top_layer_conv_gflops", "of_top_layer_conv"]


def ws_gradient(config: networks.GeneratorConfig, ws, variables):
  """Gradient of sum(img^2) w.r.t. ws [B, num_ws, w_dim]: an inversion step's network work."""
  return jax.grad(lambda ws: jnp.sum(networks.synthesis(config, variables, ws) ** 2))(ws)


def one_by_one_gradient(config: networks.GeneratorConfig):
  """`ws_gradient` one image at a time in a compiled loop, jitted: the inversion engine's CPU
  schedule (EngineSpec.micro_batch), so each image's activations stay in cache; weight-only
  work hoisted out of the loop and convolutions canonical, as the engine does
  (`engine.hoist_invariants`)."""
  @jax.jit
  def looped(ws, variables):
    prepare, apply = engine.hoist_invariants(
        lambda w, _, v: ws_gradient(config, w[None], v)[0], ws[0], (), variables,
        canonicalize=jax.default_backend() == "cpu")
    prepared = prepare(())
    return jax.lax.map(lambda w: apply(w, prepared), ws)
  return looped


def measure(resolution: int, batch: int, peak_gflops: float) -> list[dict]:
  config = common.config_f(resolution)
  variables = networks.init_generator(config, jax.random.PRNGKey(0))
  ws = networks.mapping(config, variables, jax.random.normal(jax.random.PRNGKey(1),
                                                             (batch, config.z_dim)))
  # The weights are arguments, not constants, as in the engine (XLA would fold weight-only work).
  forward = jax.jit(lambda ws, v: networks.synthesis(config, v, ws))
  backward = jax.jit(functools.partial(ws_gradient, config))
  looped = one_by_one_gradient(config)
  flops = common.synthesis_flops(config) * batch
  # The ceiling the layer shapes allow: a plain conv shaped like the top block's layers, where
  # most of the time goes at high resolution (few channels, many pixels).
  top = common.conv_rate(batch, resolution, config.channels(resolution),
                         config.channels(resolution))["gflops"]
  rows = []
  modes = [("forward", forward, 1), ("fwd+bwd", backward, common.WS_BACKWARD_FACTOR)]
  if batch > 1:
    modes.append(("fwd+bwd 1-by-1", looped, common.WS_BACKWARD_FACTOR))
  for mode, fn, factor in modes:
    seconds = common.time_fn(fn, ws, variables, repeats=3)
    gflops = factor * flops / seconds / 1e9
    rows.append({"resolution": resolution, "batch": batch, "mode": mode, "seconds": seconds,
                 "images_per_s": batch / seconds, "gflops": gflops,
                 "peak_fraction": gflops / peak_gflops, "top_layer_conv_gflops": top,
                 "of_top_layer_conv": gflops / top})
  return rows


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--quick", action="store_true", help="64 and 256 px only")
  parser.add_argument("--out", default=None, help="JSON output path")
  args = parser.parse_args(argv)
  peak = common.conv_peak()
  # Networks compute in float32. A bfloat16 option pays only where bf16 convs are much faster
  # than float32 ones (README, Benchmarks: on this CPU they are not).
  peak_bf16 = common.conv_peak(jnp.bfloat16)
  print(f"device: {common.device_description()}")
  for p in (peak, peak_bf16):
    print(f"dense conv peak ({p['shape']}): {p['gflops']:.1f} GFLOP/s")
  rows = []
  for resolution in RESOLUTIONS[:2] if args.quick else RESOLUTIONS:
    for batch in BATCHES:
      rows.extend(measure(resolution, batch, peak["gflops"]))
      common.print_table(rows[-3 if batch > 1 else -2:], COLUMNS)
  print()
  common.print_table(rows, COLUMNS)
  common.write_json(args.out, {"device": common.device_description(), "conv_peak": peak,
                               "conv_peak_bfloat16": peak_bf16,
                               "rows": rows})


if __name__ == "__main__":
  main()
