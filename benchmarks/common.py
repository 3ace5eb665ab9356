"""Shared pieces of the speed benchmarks: timing, the device's conv peak, analytic FLOP counts.

FLOP convention: 2 FLOPs per multiply-add; only useful work is counted (a stride-2 transposed
3x3 conv is 9·Cin·Cout MACs per *input* pixel, whatever an implementation spends on inserted
zeros). An inversion step differentiates w.r.t. the latents only: the network weights are
constants, so its backward pass is the input gradient alone, as much work as the forward
(`WS_BACKWARD_FACTOR` = 2 forwards in all). The conv peak is measured on the same kind of work:
forward + input gradient of a large dense 3x3 convolution. (XLA's CPU weight-gradient
convolution runs at about half that rate; training pays it, inversion does not.)
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from generators import networks, upfirdn, xla_cpu

FIR_FLOPS_PER_OUTPUT = 2 * 2 * len(upfirdn.DEFAULT_TAPS)  # two separable passes of 4 taps
WS_BACKWARD_FACTOR = 2  # forward + input gradient = 2 x forward (weights are constants)
PEAK_SHAPE = (8, 32, 512, 512)  # batch, side, Cin, Cout: config-F's widest layers


def time_fn(fn: Callable, *args, repeats: int = 5, min_seconds: float = 0.0) -> float:
  """Median seconds per call of a jitted `fn` (compile and one warm-up call excluded)."""
  jax.block_until_ready(fn(*args))
  times = []
  start = time.perf_counter()
  while len(times) < repeats or time.perf_counter() - start < min_seconds:
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def conv_rate(batch: int, size: int, cin: int, cout: int, dtype=jnp.float32) -> dict:
  """GFLOP/s of a plain 3x3 conv [batch, size, size, cin] -> cout, forward + input gradient."""
  key1, key2 = jax.random.split(jax.random.PRNGKey(0))
  x = jax.random.normal(key1, (batch, size, size, cin), dtype)
  w = jax.random.normal(key2, (3, 3, cin, cout), dtype) * 0.05
  step = jax.jit(jax.grad(lambda x: jnp.sum(upfirdn.conv2d(x, w, padding=1) ** 2)))
  seconds = time_fn(step, x, repeats=3, min_seconds=1.0)
  flops = WS_BACKWARD_FACTOR * 2 * 9 * cin * cout * size * size * batch
  return {"shape": f"[{batch},{size},{size},{cin}] 3x3 -> {cout}, forward + input gradient, "
                   f"{jnp.dtype(dtype).name}",
          "seconds": seconds, "gflops": flops / seconds / 1e9}


def conv_peak(dtype=jnp.float32) -> dict:
  """The device's dense 3x3 conv throughput (`conv_rate` at `PEAK_SHAPE`).

  A large, well-shaped convolution is the best case for every network here, so achieved
  GFLOP/s divided by this peak says how much of the machine a network uses.
  """
  return conv_rate(*PEAK_SHAPE, dtype=dtype)


def synthesis_flops(config: networks.GeneratorConfig) -> float:
  """Forward FLOPs of synthesis for one image (convs, modulation, demodulation, FIR, toRGB)."""
  flops = 0.0
  w_dim = config.w_dim
  prev = None
  for res in config.block_resolutions:
    out = config.channels(res)
    pixels = res * res
    layers = [(out, out, pixels)]  # conv1: (in channels, out channels, input pixels)
    if prev is not None:  # conv0 (up): useful MACs at the input resolution, then FIR at res
      layers.append((prev, out, pixels // 4))
      flops += FIR_FLOPS_PER_OUTPUT * out * pixels
    for cin, cout, pixels_in in layers:
      flops += 2 * 9 * cin * cout * pixels_in  # the 3x3 convolution
      flops += 2 * w_dim * cin + 2 * 9 * cin * cout  # affine, demodulation coefficients
      flops += cin * pixels_in + 2 * cout * pixels  # modulation, demodulation, noise
    if config.architecture == "skip" or res == config.img_resolution:
      flops += 2 * out * config.img_channels * pixels + 2 * w_dim * out  # toRGB
      if prev is not None:
        flops += FIR_FLOPS_PER_OUTPUT * config.img_channels * pixels  # image up-sampling
    prev = out
  return flops


def config_f(resolution: int) -> networks.GeneratorConfig:
  """The FFHQ config-F shape at any resolution (z = w = 512, 8 mapping layers)."""
  return networks.GeneratorConfig(z_dim=512, w_dim=512, img_resolution=resolution,
                                  channel_base=32768, channel_max=512)


def device_description() -> str:
  device = jax.devices()[0]
  cpu = platform.processor() or platform.machine()
  description = (f"{device.platform}:{device.device_kind} x{len(jax.devices())} "
                 f"({cpu}, {os.cpu_count()} logical CPUs)")
  if device.platform == "cpu":  # the conv library changes rates up to 3x (generators.xla_cpu)
    description += ", Eigen convs" if xla_cpu.EIGEN_PREFERRED else ", XLA default convs"
  return description


def print_table(rows: list[dict], columns: list[str]) -> None:
  widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
  print("  ".join(c.rjust(widths[c]) for c in columns))
  for r in rows:
    print("  ".join(_fmt(r.get(c)).rjust(widths[c]) for c in columns))


def _fmt(value) -> str:
  if isinstance(value, float):
    return f"{value:.4g}"
  return "" if value is None else str(value)


def write_json(path: str | None, payload: dict) -> None:
  if path:
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(path).write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")
