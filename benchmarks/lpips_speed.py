"""LPIPS-VGG forward + backward speed (gradient w.r.t. the first image), jit-compiled.

Run:
  python -m benchmarks.lpips_speed --out /tmp/lpips_speed.json
  python -m benchmarks.lpips_speed --batch 1 8 --size 256 --iters 20 --out lpips.json

What is timed: `jax.value_and_grad` of sum(LPIPS(params, x, y)) w.r.t. x, i.e. the LPIPS part of
one inversion step, compiled once per batch size; compile and `--warmup` calls excluded; each
iteration ends with `block_until_ready`; the median over `--iters` is reported.

Weights are RANDOM (inversion.lpips.random_lpips_params): the arithmetic, and so the speed, is
that of real weights; the loss values are meaningless. Precision is the JAX default for the
device unless --precision is given (on GPUs the default may use TF32 for float32 convolutions).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from inversion import lpips as lpips_lib


def bench(batch: int, size: int, iters: int, warmup: int, precision: str | None) -> dict:
  """Times one configuration; returns a result row."""
  params = lpips_lib.random_lpips_params(0, 'vgg')
  rng = np.random.default_rng(batch)
  x = jnp.asarray(rng.uniform(-1, 1, (batch, size, size, 3)), jnp.float32)
  y = jnp.asarray(rng.uniform(-1, 1, (batch, size, size, 3)), jnp.float32)

  def loss(p, a, b):
    return jnp.sum(lpips_lib.lpips(p, a, b))

  step = jax.jit(jax.value_and_grad(loss, argnums=1))
  ctx = jax.default_matmul_precision(precision) if precision else _null()
  with ctx:
    t0 = time.perf_counter()
    compiled = step.lower(params, x, y).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
      jax.block_until_ready(compiled(params, x, y))
    times = []
    for _ in range(iters):
      t0 = time.perf_counter()
      jax.block_until_ready(compiled(params, x, y))
      times.append(time.perf_counter() - t0)
  med = statistics.median(times)
  return {'batch': batch, 'size': size, 'iters': iters, 'compile_s': compile_s,
          's_per_iter': med, 'images_per_s': batch / med, 'min_s': min(times),
          'max_s': max(times)}


class _null:
  def __enter__(self):
    return self

  def __exit__(self, *a):
    return False


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--batch', type=int, nargs='+', default=[1, 8])   # batch sizes to time
  ap.add_argument('--size', type=int, default=256)                  # image side, pixels
  ap.add_argument('--iters', type=int, default=10)                  # timed iterations (median)
  ap.add_argument('--warmup', type=int, default=2)                  # untimed calls after compile
  ap.add_argument('--precision', default=None,                      # None = device default
                  choices=[None, 'default', 'high', 'highest', 'bfloat16', 'tensorfloat32',
                           'float32'])
  ap.add_argument('--out', default=None)                            # JSON path; None = no file
  args = ap.parse_args(argv)

  device = common.device_description()
  rows = [bench(b, args.size, args.iters, args.warmup, args.precision) for b in args.batch]
  print(f'LPIPS-VGG forward+backward (grad w.r.t. first image), {args.size}x{args.size}, '
        f'RANDOM weights (timing only), precision={args.precision or "default"}')
  print(f'device: {device}   jax {jax.__version__}')
  print(f'{"batch":>5} | {"s/iter (median)":>15} | {"images/s":>9} | {"compile s":>9}')
  print('-' * 48)
  for r in rows:
    print(f'{r["batch"]:>5} | {r["s_per_iter"]:>15.4f} | {r["images_per_s"]:>9.2f} | '
          f'{r["compile_s"]:>9.1f}')
  result = {'benchmark': 'lpips_vgg_forward_backward', 'weights': 'random (timing only)',
            'device': device, 'jax_version': jax.__version__,
            'precision': args.precision or 'default', 'rows': rows}
  common.write_json(args.out, result)
  return result


if __name__ == '__main__':
  main()
