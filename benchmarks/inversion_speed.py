"""Inversion speed: seconds per step and image-steps per second of the compiled engine.

Run:
  python -m benchmarks.inversion_speed --quick --out /tmp/inversion_speed.json   # 64/256 px, B 1/4
  python -m benchmarks.inversion_speed --out inversion_speed.json                # + 1024 px, B 16
  python -m benchmarks.inversion_speed --first-result-only                       # the row below

Time to first result: the wall-clock seconds of the command a user types for one image,
`python -m inversion invert --images ONE.png --out DIR --steps 5` on the embedded model, in a
fresh process each time: "cold" with an empty user cache (everything imported, traced and
compiled), "warm" with the cache the cold run left (median of `--warm-runs`), and "no cache"
with `STYLEGAN_INV_NO_CACHE=1` (generators/cache.py).

What is timed: the engine's compiled chunk (`Engine.run_chunk`, `--chunk` steps under
`lax.scan`), exactly what `inversion.api.invert` runs, for W+ inversion with the Image2StyleGAN
objective (pixel MSE + VGG16 conv1_1/1_2/3_2/4_2 perceptual loss, Adam). The first chunk
(compile + run) is reported as `first_chunk_s`; then the median of `--iters` chunks.

Networks: config-F-shaped StyleGAN2 generators (z = w = 512, 8 mapping layers, channel_base
32768, channel_max 512, 'skip') at 64, 256 and 1024 px with RANDOM weights (NVlabs init), and a
VGG16 with RANDOM weights (inversion.vgg.init_random_params; no VGG weights are downloaded):
the arithmetic, and so the speed, is that of real weights; the losses are meaningless.

FLOPs (analytic, 2 per multiply-add, per image and step):
  generator  forward: `benchmarks.common.synthesis_flops` (useful MACs of every modulated conv,
             toRGB, affines, FIR filters). Backward: the gradient w.r.t. activations only
             (weights are constants), as much as the forward again.
  VGG16      conv1_1 .. conv4_2 (what the loss needs) at min(R, 256) px (larger images are
             area-downsampled to 256, as the loss does): forward and input gradient of the
             reconstruction = 2 forwards. The target's features are loop-invariant: computed
             once per chunk (`engine.hoist_invariants`), not per step, so not counted.
Peak: `benchmarks.common.conv_peak` (forward + input gradient of a dense 3x3 convolution
[8, 32, 32, 512] -> 512). `pct_peak` = achieved GFLOP/s / that peak.

Memory: 1024 px at batch 16 needs tens of GB on the host (activations for the backward pass);
run it on a GPU or drop it with --sizes.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from generators import cache, checkpoint, networks
from inversion import api, engine, vgg

VGG_SIZE = 256                     # the perceptual loss area-downsamples larger images to this
VGG_LAYERS_USED = 9                # conv1_1 .. conv4_2, the deepest layer the loss reads


def random_model(resolution: int) -> checkpoint.Model:
  """A config-F-shaped generator with NVlabs' random initialisation."""
  cfg = common.config_f(resolution)
  return checkpoint.Model(cfg, networks.init_generator(cfg, jax.random.PRNGKey(0)),
                          metadata={'source': 'random config-F-shaped weights'})


# ----------------------------------------------------------------------------------------------
# Analytic FLOPs.


def vgg_forward_flops(resolution: int) -> float:
  """VGG16 conv1_1 .. conv4_2 forward FLOPs per image at min(resolution, 256) px."""
  s = min(resolution, VGG_SIZE)
  total = 0.0
  for name, _, cin, cout in vgg.VGG16_CONVS[:VGG_LAYERS_USED]:
    level = int(name[4]) - 1                       # conv<level+1>_k: after `level` poolings
    side = s // 2 ** level
    total += 2 * side * side * 9 * cin * cout
  return total


def step_flops(resolution: int) -> dict:
  g = common.synthesis_flops(common.config_f(resolution))
  v = vgg_forward_flops(resolution)
  return {'generator_fwd': g, 'vgg_fwd': v, 'per_image_step': 2 * g + 2 * v}


# ----------------------------------------------------------------------------------------------
# Timing.


def time_engine(inv: api.Inverter, resolution: int, batch: int, iters: int
                ) -> tuple[float, float, int]:
  """Runs the engine's compiled chunk on `batch` random targets: once (compile + run), then
  `iters` timed times. Returns (first chunk seconds, median seconds per step, images vectorised
  per group)."""
  chunk = inv.config.chunk_size
  rng = np.random.default_rng(batch)
  targets = rng.uniform(-1, 1, (batch, resolution, resolution, 3)).astype(np.float32)
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(0), i))(jnp.arange(batch))
  state, data = inv.start(targets, None, keys)
  state, data = engine.shard(state, data, engine.batch_mesh(batch))
  t0 = time.perf_counter()
  state, _ = inv.engine.run_chunk(state, data)
  jax.block_until_ready(state)
  first = time.perf_counter() - t0
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    state, _ = inv.engine.run_chunk(state, data)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t0)
  group = inv.engine.group_size(batch, engine.is_sharded(state))
  return first, statistics.median(times) / chunk, group


def bench(resolution: int, batch: int, chunk: int, iters: int, vgg_params, peak: float,
          micro_batch: int = 0) -> dict:
  """Times W+ inversion steps for one (resolution, batch); returns a result row."""
  model = random_model(resolution)
  config = api.as_config('image2stylegan:wplus', [
      f'--config.steps={chunk * (iters + 1)}', f'--config.chunk_size={chunk}',
      '--config.loss.perceptual=vgg', '--config.loss.fallback=error',
      '--config.metrics.lpips=off', f'--config.micro_batch={micro_batch}'])
  inv = api.Inverter(model, config, term_params={'vgg': vgg_params})
  first, s_step, group = time_engine(inv, resolution, batch, iters)
  flops = step_flops(resolution)
  gflops = flops['per_image_step'] * batch / s_step / 1e9
  return {'resolution': resolution, 'batch': batch, 'group': group, 'chunk': chunk, 'iters': iters,
          'first_chunk_s': first, 's_per_step': s_step, 'image_steps_per_s': batch / s_step,
          'gflop_per_image_step': flops['per_image_step'] / 1e9,
          'gflop_generator_fwd': flops['generator_fwd'] / 1e9,
          'gflop_vgg_fwd': flops['vgg_fwd'] / 1e9, 'gflops': gflops,
          'pct_peak': 100 * gflops / peak}


def time_to_first_result(warm_runs: int = 3, steps: int = 5) -> dict:
  """Seconds of `python -m inversion invert` on one example crop, cold / warm / without cache."""
  example = pathlib.Path(__file__).resolve().parents[1] / 'inversion' / 'examples'
  image = sorted(example.glob('*.png'))[0]
  with tempfile.TemporaryDirectory() as tmp:
    def run(label: str, **env) -> float:
      cmd = [sys.executable, '-m', 'inversion', 'invert', '--images', str(image), '--out',
             f'{tmp}/out_{label}', '--steps', str(steps), '--no-progress']
      t0 = time.perf_counter()
      base = {k: v for k, v in os.environ.items() if k != cache.NO_CACHE_ENV}
      subprocess.run(cmd, check=True, capture_output=True,
                     env={**base, 'STYLEGAN_INV_CACHE': f'{tmp}/cache', **env})
      return time.perf_counter() - t0
    cold = run('cold')
    warm = [run(f'warm{i}') for i in range(warm_runs)]
    plain = run('nocache', **{cache.NO_CACHE_ENV: '1'})
  return {'command': f'python -m inversion invert --images {image.name} --out DIR --steps {steps}',
          'cold_s': cold, 'warm_s': statistics.median(warm), 'warm_runs_s': warm,
          'no_cache_s': plain}


def format_rows(rows) -> str:
  head = (f"{'res':>5} {'batch':>5} {'group':>5} {'s/step':>9} {'img*step/s':>11} "
          f"{'GFLOP/img*step':>15} {'GFLOP/s':>9} {'% peak':>7} {'1st chunk s':>12}")
  lines = [head, '-' * len(head)]
  for r in rows:
    lines.append(f"{r['resolution']:>5} {r['batch']:>5} {r.get('group', r['batch']):>5} "
                 f"{r['s_per_step']:>9.3f} "
                 f"{r['image_steps_per_s']:>11.3f} {r['gflop_per_image_step']:>15.1f} "
                 f"{r['gflops']:>9.1f} {r['pct_peak']:>7.1f} {r['first_chunk_s']:>12.1f}")
  return '\n'.join(lines)


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--quick', action='store_true', help='only 64/256 px, batch 1/4, 1 timed chunk')
  ap.add_argument('--sizes', type=int, nargs='+', default=None)     # default 64 256 1024
  ap.add_argument('--batch', type=int, nargs='+', default=None)     # default 1 4 16
  ap.add_argument('--chunk', type=int, default=None)                # steps per timed chunk
  ap.add_argument('--iters', type=int, default=None)                # timed chunks (median)
  ap.add_argument('--micro-batch', type=int, nargs='+', default=[0],
                  help='images vectorised per group (config.micro_batch; 0 = auto); several '
                       'values compare grouping against whole-batch vmap')
  ap.add_argument('--warm-runs', type=int, default=3, help='time to first result: warm runs')
  ap.add_argument('--first-result-only', action='store_true',
                  help='only the time to first result (one image, 5 steps, embedded model)')
  ap.add_argument('--note', default='', help='free text stored in the JSON (e.g. "contended")')
  ap.add_argument('--out', default=None, help='JSON file for the results')
  args = ap.parse_args(argv)
  sizes = args.sizes or ([64, 256] if args.quick else [64, 256, 1024])
  batches = args.batch or ([1, 4] if args.quick else [1, 4, 16])
  chunk = args.chunk or 10  # presets run 100 (10 in the demo); per-chunk work is amortised
  iters = args.iters or (1 if args.quick else 3)

  print(f'device: {common.device_description()}')
  first = time_to_first_result(args.warm_runs)
  print(f"time to first result ({first['command']}): cold {first['cold_s']:.1f} s, warm "
        f"{first['warm_s']:.1f} s (median of {args.warm_runs}), no cache "
        f"{first['no_cache_s']:.1f} s", flush=True)
  if args.first_result_only:
    common.write_json(args.out, {'device': common.device_description(), 'jax': jax.__version__,
                                 'time_to_first_result': first, 'note': args.note})
    return first
  peak = common.conv_peak()
  print(f"dense conv peak ({peak['shape']}): {peak['gflops']:.1f} GFLOP/s")
  vgg_params = vgg.init_random_params(0)
  rows = []
  for res in sizes:
    for b in batches:
      for micro_batch in args.micro_batch:
        row = bench(res, b, chunk, iters, vgg_params, peak['gflops'], micro_batch)
        rows.append(row)
        print(format_rows([row]).splitlines()[-1], flush=True)
  print()
  print(format_rows(rows))
  result = {'device': common.device_description(), 'jax': jax.__version__, 'peak': peak,
            'rows': rows, 'time_to_first_result': first, 'note': args.note,
            'weights': 'random generator and VGG16 weights (speed only)',
            'objective': 'W+, pixel MSE + Image2StyleGAN VGG16 perceptual, Adam',
            'flop_count': 'analytic, see benchmarks/inversion_speed.py docstring'}
  common.write_json(args.out, result)
  return result


if __name__ == '__main__':
  main()
