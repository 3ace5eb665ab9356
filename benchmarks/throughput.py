"""Throughput model: images per hour when inverting many images over devices and hosts.

Run:
  python -m benchmarks.throughput --quick --out out/throughput   # 64/256 px; 1/2/4 devices
  python -m benchmarks.throughput --out out/throughput           # + 1024 px (batch 1); 8 devices
  python -m benchmarks.throughput --gpu-step-s 1024=0.004 ...    # a measured GPU rate replaces
                                                                 # the assumed one (--gpu-kind)

Three measurements on this machine, then a model for machines we do not have.

1. Per-device rate: W+ steps with the Image2StyleGAN objective (pixel MSE + VGG16 perceptual,
   Adam) on one device, timed by `benchmarks.inversion_speed.bench` (the engine's compiled chunk,
   config-F-shaped random generators, random VGG16): seconds per step, image-steps/s, analytic
   GFLOP/s and % of the device's dense conv peak (`benchmarks.common.conv_peak`).
2. Sharding overhead in one process: the same W+ chunk on a global batch of `SHARD_BATCH` images
   at `SHARD_RESOLUTION` px, split by `engine.batch_mesh` + `engine.shard` over N = 1, 2, 4, 8
   forced host devices (`XLA_FLAGS=--xla_force_host_platform_device_count=N`, a fresh process per
   N). Forced host devices share the same physical cores, so the ideal is an equal wall time per
   global-batch step at every N, and
     overhead_pct = (t_N / t_1 - 1) * 100,   efficiency = t_1 / t_N,
   with t_N the seconds per step of the whole global batch on N devices. Every run is the same
   program: the batch vectorised whole (`micro_batch` = batch, what a sharded batch and an
   accelerator always run), so only the split differs. (A job on one CPU device runs its images
   one at a time by default, `Engine.group_size`: part 1 times that.)
3. Two processes: two local processes, each after `jax.distributed.initialize` (CPU, one forced
   device each), invert their half of the global batch on their own `jax.local_devices()`, with no
   collectives (inversion is embarrassingly parallel). A barrier starts their timed chunks
   together. Their summed rate is compared with one process running the whole batch on 2 local
   devices (row N = 2 of part 2): process_overhead_pct = (rate_1proc / rate_2proc - 1) * 100;
   each process vectorises its share whole, as in part 2.
4. The model:
     images/hour = devices * rate_per_device * efficiency * 3600 / steps_per_image
   rate_per_device (image-steps/s) = peak FLOP/s * achieved fraction / FLOPs per image-step
   (`benchmarks.inversion_speed.step_flops`), or 1 / (a measured GPU's seconds per image-step,
   --gpu-step-s); efficiency = the measured device efficiency (part 2, at the devices per host)
   times, for several hosts, the measured 2-process efficiency (part 3). Every assumption is in
   `assumptions` of the JSON and printed. There is no GPU or TPU here: the accelerator rows are a
   model, not a measurement.

Outputs (--out DIR): throughput.json, throughput.md (tables and assumptions), throughput.png
(overhead against device count).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple, Optional, Sequence

import jax

from benchmarks import common, inversion_speed
from generators import cache, distributed
from inversion import engine, vgg

SHARD_RESOLUTION = 64              # px of the sharding and process runs
SHARD_BATCH = 8                    # global batch: divides over 1, 2, 4, 8 devices and 2 processes
NUM_PROCESSES = 2
WORKER_TIMEOUT_S = 1200            # a worker (or both processes) past this is killed
FORCE_DEVICES_FLAG = '--xla_force_host_platform_device_count'
SECONDS_PER_HOUR = 3600

MODEL_RESOLUTIONS = (256, 1024)
STEPS_PER_IMAGE = (1000, 200)      # NVlabs projector's default num_steps; a short job
ACHIEVED_FRACTION = 0.30           # of the accelerator's peak, sustained over a whole W+ step

# Accelerator systems of the model. peak_tflops: per device, dense, at the precision XLA uses for
# float32 convolutions by default (the engine sets none): TF32 tensor cores on A100/H100, one
# bf16 pass on the TPU MXU.
SYSTEMS = {
    '8x A100 SXM': {'devices': 8, 'hosts': 1, 'peak_tflops': 156.0,
                    'peak_is': 'TF32 tensor core, dense (FP32 CUDA cores: 19.5)'},
    '8x H100 SXM': {'devices': 8, 'hosts': 1, 'peak_tflops': 495.0,
                    'peak_is': 'TF32 tensor core, dense (FP32 CUDA cores: 67)'},
    'TPU v4-32': {'devices': 16, 'hosts': 4, 'peak_tflops': 275.0,
                  'peak_is': 'bf16 MXU per chip (XLA default precision: one bf16 pass); '
                             '16 chips, 4 per host'},
}
GPU_KINDS = ('A100 SXM', 'H100 SXM')


class Plan(NamedTuple):
  """What one mode measures."""
  rates: tuple[tuple[int, int, int, int], ...]   # per-device rows: (px, batch, chunk, iters)
  devices: tuple[int, ...]                       # forced host device counts of part 2
  chunk: int                                     # steps per timed chunk, parts 2 and 3
  iters: int                                     # timed chunks (median), parts 2 and 3


PLANS = {
    'quick': Plan(rates=((64, 1, 5, 1), (64, 4, 3, 1), (256, 1, 3, 1), (256, 4, 3, 1)),
                  devices=(1, 2, 4), chunk=2, iters=2),
    # 1024 px: batch 1, 2-step chunks, 1 timed chunk (a step takes seconds on 2 cores)
    'full': Plan(rates=((64, 1, 10, 2), (64, 4, 5, 2), (256, 1, 5, 2), (256, 4, 5, 2),
                        (1024, 1, 2, 1)),
                 devices=(1, 2, 4, 8), chunk=3, iters=2),
}

RATE_COLUMNS = ['resolution', 'batch', 'group', 'chunk', 'iters', 's_per_step',
                'image_steps_per_s', 'gflop_per_image_step', 'gflops', 'pct_peak',
                'first_chunk_s']
SHARD_COLUMNS = ['processes', 'devices', 'batch', 'group', 's_per_step', 'image_steps_per_s',
                 'overhead_pct', 'efficiency', 'first_chunk_s']
PROCESS_COLUMNS = ['process', 'local_devices', 'global_devices', 'batch', 'group', 's_per_step',
                   'image_steps_per_s', 'initialize_s', 'compile_chunk_s']
PREDICTION_COLUMNS = ['system', 'resolution', 'steps_per_image', 'devices', 'rate_source',
                      'device_image_steps_per_s', 'efficiency', 'images_per_hour']


# ----------------------------------------------------------------------------------------------
# Workers: one JSON line on stdout.


def device_worker(resolution: int, batch: int, chunk: int, iters: int, peak: float) -> dict:
  """Part 2 in a process started with N forced host devices: the W+ chunk on `batch` images
  sharded over the largest device count that divides it."""
  row = inversion_speed.bench(resolution, batch, chunk, iters, vgg.init_random_params(0), peak,
                              micro_batch=batch)
  return {**row, 'processes': 1, 'devices': engine.batch_mesh(batch).size}


def process_worker(index: int, port: int, resolution: int, batch: int, chunk: int, iters: int,
                   peak: float) -> dict:
  """Part 3, process `index` of `NUM_PROCESSES`: its own `batch` images on its local devices
  (`engine.batch_mesh`'s default, as a folder job run per process does). The first `bench`
  compiles; the second, after a barrier, runs the same compiled program and is the one
  reported, so both processes time their chunks side by side."""
  t0 = time.perf_counter()
  distributed.initialize(f'localhost:{port}', NUM_PROCESSES, index)
  initialize_s = time.perf_counter() - t0
  time_it = functools.partial(inversion_speed.bench, resolution, batch, chunk, iters,
                              vgg.init_random_params(0), peak, micro_batch=batch)
  compiled = time_it()
  distributed.barrier('benchmarks.throughput: compiled')
  start = time.time()
  row = time_it()
  end = time.time()
  return {**row, 'process': index, 'local_devices': jax.local_device_count(),
          'global_devices': jax.device_count(), 'initialize_s': initialize_s,
          'compile_chunk_s': compiled['first_chunk_s'], 'window': [start, end]}


# ----------------------------------------------------------------------------------------------
# The parent: launches workers and reads their JSON line.


def worker_env(devices: int) -> dict:
  """This environment on CPU with `devices` forced host devices (other XLA flags kept) and the
  program cache off (concurrent workers, comparable compile times)."""
  flags = [f for f in os.environ.get('XLA_FLAGS', '').split() if FORCE_DEVICES_FLAG not in f]
  return {**os.environ, 'XLA_FLAGS': ' '.join(flags + [f'{FORCE_DEVICES_FLAG}={devices}']),
          'JAX_PLATFORMS': 'cpu', cache.NO_CACHE_ENV: '1'}


def run_workers(commands: Sequence[list[str]], env: dict, folder: str) -> list[dict]:
  """Runs the worker commands concurrently (output to files, so no pipe can fill and block);
  returns their last stdout lines as JSON. Kills every worker still running on a failure or
  after `WORKER_TIMEOUT_S`."""
  procs = []
  try:
    for i, cmd in enumerate(commands):
      with open(f'{folder}/out.{i}', 'w') as out, open(f'{folder}/err.{i}', 'w') as err:
        procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=err))
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    for i, p in enumerate(procs):
      if p.wait(timeout=max(1.0, deadline - time.monotonic())) != 0:
        tail = pathlib.Path(f'{folder}/err.{i}').read_text()[-3000:]
        raise RuntimeError(f'worker {" ".join(commands[i])} failed:\n{tail}')
    return [json.loads(pathlib.Path(f'{folder}/out.{i}').read_text().strip().splitlines()[-1])
            for i in range(len(procs))]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()


def worker_command(*flags) -> list[str]:
  """This program as a worker subprocess, with the same Python."""
  return [sys.executable, '-m', 'benchmarks.throughput', *map(str, flags)]


def free_port() -> int:
  """A TCP port free now on localhost (bound to port 0, then released) for the coordinator."""
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def sharding_rows(plan: Plan, peak: float) -> list[dict]:
  """Part 2: one fresh process per forced device count; overhead against 1 device."""
  rows = []
  for n in plan.devices:
    with tempfile.TemporaryDirectory() as folder:
      row, = run_workers([worker_command('--worker-devices', n, '--chunk', plan.chunk,
                                         '--iters', plan.iters, '--peak', peak)],
                         worker_env(n), folder)
    rows.append(row)
    print(f"  {n} devices: {row['s_per_step']:.3f} s/step", flush=True)
  t1 = rows[0]['s_per_step']
  for row in rows:
    row['overhead_pct'] = 100 * (row['s_per_step'] / t1 - 1)
    row['efficiency'] = t1 / row['s_per_step']
  return rows


def process_rows(plan: Plan, peak: float) -> list[dict]:
  """Part 3: `NUM_PROCESSES` processes at once, each with its share of the global batch."""
  port = free_port()
  with tempfile.TemporaryDirectory() as folder:
    commands = [worker_command('--worker-process', i, '--port', port,
                               '--chunk', plan.chunk, '--iters', plan.iters, '--peak', peak)
                for i in range(NUM_PROCESSES)]
    return run_workers(commands, worker_env(1), folder)


def process_summary(procs: list[dict], sharded: list[dict]) -> dict:
  """The processes' summed rate as a part-2 row (overhead against 1 device), compared with one
  process on the same number of devices; `overlap_pct`: how much of the timed windows coincide
  (100 = fully side by side)."""
  rate = sum(p['image_steps_per_s'] for p in procs)
  t1 = sharded[0]['s_per_step']
  s_per_step = SHARD_BATCH / rate
  starts, ends = zip(*(p['window'] for p in procs))
  overlap = max(0.0, min(ends) - max(starts)) / (max(ends) - min(starts))
  same = [r for r in sharded if r['devices'] == NUM_PROCESSES]
  summary = {'processes': NUM_PROCESSES, 'devices': NUM_PROCESSES, 'batch': SHARD_BATCH,
             'group': procs[0]['group'], 's_per_step': s_per_step, 'image_steps_per_s': rate,
             'overhead_pct': 100 * (s_per_step / t1 - 1), 'efficiency': t1 / s_per_step,
             'overlap_pct': 100 * overlap}
  if same:
    summary['process_overhead_pct'] = 100 * (same[0]['image_steps_per_s'] / rate - 1)
    summary['process_efficiency'] = rate / same[0]['image_steps_per_s']
  return summary


# ----------------------------------------------------------------------------------------------
# The model.


def parse_gpu_steps(values: Sequence[str]) -> dict[int, float]:
  """['1024=0.004', ...] -> {1024: 0.004}: measured GPU seconds per image-step by resolution."""
  measured = {}
  for value in values:
    res, _, seconds = value.partition('=')
    if not seconds or int(res) not in MODEL_RESOLUTIONS:
      raise ValueError(f'--gpu-step-s takes RES=SECONDS with RES in {MODEL_RESOLUTIONS}, got '
                       f'{value!r}')
    measured[int(res)] = float(seconds)
  return measured


def measured_efficiency(sharded: list[dict], devices: int) -> tuple[float, int]:
  """(t_1 / t_N, N) at the largest measured N <= devices, capped at 1: a speed-up from splitting
  the batch on a shared CPU is a cache effect, not something an accelerator would gain."""
  row = max((r for r in sharded if r['devices'] <= devices), key=lambda r: r['devices'])
  return min(1.0, row['efficiency']), row['devices']


def assumptions(sharded: list[dict], processes: dict, fraction: float,
                gpu_steps: dict[int, float], gpu_kind: str) -> dict:
  """Every number of the model that is not measured here, and how the measured ones are used."""
  efficiency = {}
  for name, system in SYSTEMS.items():
    per_host = system['devices'] // system['hosts']
    device_eff, at = measured_efficiency(sharded, per_host)
    process_eff = min(1.0, processes.get('process_efficiency', 1.0)) if system['hosts'] > 1 else 1.0
    efficiency[name] = {'device_efficiency': device_eff, 'measured_at_devices': at,
                        'process_efficiency': process_eff,
                        'efficiency': device_eff * process_eff}
  return {
      'systems': SYSTEMS,
      'achieved_fraction': fraction,
      'achieved_fraction_is': 'of the peak, sustained over a whole W+ step (generator forward '
                              'and input gradient, VGG16 conv1_1..conv4_2 twice, Adam) with a '
                              'batch large enough to fill the device; --achieved-fraction',
      'flops_per_image_step': 'analytic, benchmarks.inversion_speed.step_flops',
      'measured_gpu_s_per_image_step': {str(k): v for k, v in gpu_steps.items()},
      'measured_gpu_kind': gpu_kind if gpu_steps else None,
      'efficiency': efficiency,
      'efficiency_is': 'device: t_1 / t_N on forced host devices of one shared CPU (part 2) at '
                       'the devices per host, capped at 1; hosts > 1: times the 2-process '
                       'efficiency (part 3), taken as independent of the host count (no '
                       'collectives between hosts)',
      'steps_per_image': list(STEPS_PER_IMAGE),
      'not_modelled': 'image loading, alignment and writing results; compilation (once per '
                      'job and batch shape); host work between chunks; memory limits (1024 px '
                      'batches need tens of GB of activations)',
  }


def predictions(assumed: dict, rates: list[dict], gpu_steps: dict[int, float],
                gpu_kind: str) -> list[dict]:
  """images/hour for every system, resolution and job length; plus this device, measured."""
  rows = []
  for res in MODEL_RESOLUTIONS:
    flops = inversion_speed.step_flops(res)['per_image_step']
    systems = [(name, s['devices'], assumed['efficiency'][name]['efficiency'],
                s['peak_tflops'] * 1e12 * assumed['achieved_fraction'] / flops, 'assumed')
               for name, s in SYSTEMS.items()]
    if res in gpu_steps:
      systems = [(name, n, eff, 1 / gpu_steps[res], 'measured') if name.endswith(gpu_kind)
                 else (name, n, eff, rate, source) for name, n, eff, rate, source in systems]
    here = [r for r in rates if r['resolution'] == res]
    if here:
      best = max(r['image_steps_per_s'] for r in here)
      systems.append(('this device', 1, 1.0, best, 'measured'))
    for steps in STEPS_PER_IMAGE:
      for name, n, eff, rate, source in systems:
        rows.append({'system': name, 'resolution': res, 'steps_per_image': steps,
                     'devices': n, 'rate_source': source, 'device_image_steps_per_s': rate,
                     'efficiency': eff,
                     'images_per_hour': n * rate * eff * SECONDS_PER_HOUR / steps})
  return rows


# ----------------------------------------------------------------------------------------------
# Outputs.


def table_text(rows: list[dict], columns: list[str]) -> str:
  """`common.print_table` as a string (for the markdown summary)."""
  text = io.StringIO()
  with contextlib.redirect_stdout(text):
    common.print_table(rows, columns)
  return text.getvalue()


def markdown(result: dict, tables: dict[str, tuple[list[dict], list[str]]]) -> str:
  """throughput.md: the device and note, every printed table, the assumptions."""
  lines = ['# Inversion throughput', '', f"Device: {result['device']}. {result['note']}", '']
  for title, (rows, columns) in tables.items():
    lines += [f'## {title}', '', '```', table_text(rows, columns).rstrip(), '```', '']
  lines += ['## Assumptions', '', '```json', json.dumps(result['assumptions'], indent=2), '```',
            '', 'Definitions: see the docstring of `benchmarks/throughput.py`.', '']
  return '\n'.join(lines)


def plot(sharded: list[dict], processes: dict, path: pathlib.Path) -> None:
  """Overhead against device count (one process), and the 2-process point."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.plot([r['devices'] for r in sharded], [r['overhead_pct'] for r in sharded], 'o-',
          label='1 process, N forced host devices')
  ax.plot([processes['devices']], [processes['overhead_pct']], 's',
          label=f"{processes['processes']} processes, 1 device each")
  ax.axhline(0, color='gray', lw=0.5)
  ax.set_xscale('log', base=2)
  ax.set_xticks([r['devices'] for r in sharded], [str(r['devices']) for r in sharded])
  ax.minorticks_off()
  ax.set_xlabel('devices')
  ax.set_ylabel('overhead % (t_N / t_1 - 1)')
  ax.set_title(f'W+ {SHARD_RESOLUTION} px, global batch {SHARD_BATCH}', fontsize=10)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_outputs(out: pathlib.Path, result: dict, tables: dict) -> None:
  """throughput.json, throughput.md and throughput.png under `out`."""
  out.mkdir(parents=True, exist_ok=True)
  common.write_json(str(out / 'throughput.json'), result)
  (out / 'throughput.md').write_text(markdown(result, tables))
  plot(result['sharding'], result['two_processes'], out / 'throughput.png')
  print(f'wrote {out / "throughput.md"}, {out / "throughput.png"}')


# ----------------------------------------------------------------------------------------------
# Main.


def measure_and_model(plan: Plan, fraction: float, gpu_steps: dict[int, float], gpu_kind: str,
                      note: str) -> tuple[dict, dict]:
  """Parts 1-4; returns (result for the JSON, {title: (rows, columns)} of the tables)."""
  t0 = time.perf_counter()
  print(f'device: {common.device_description()}. {note}')
  peak = common.conv_peak()
  print(f"dense conv peak ({peak['shape']}): {peak['gflops']:.1f} GFLOP/s", flush=True)
  print('1. per-device rate (W+, MSE + VGG16)')
  vgg_params = vgg.init_random_params(0)
  rates = []
  for res, batch, chunk, iters in plan.rates:
    rates.append(inversion_speed.bench(res, batch, chunk, iters, vgg_params, peak['gflops']))
    print(f"  {res} px batch {batch}: {rates[-1]['s_per_step']:.3f} s/step", flush=True)
  print(f'2. sharding: {SHARD_BATCH} images at {SHARD_RESOLUTION} px on N forced host devices')
  sharded = sharding_rows(plan, peak['gflops'])
  print(f'3. {NUM_PROCESSES} processes (jax.distributed), 1 device each')
  procs = process_rows(plan, peak['gflops'])
  summary = process_summary(procs, sharded)
  assumed = assumptions(sharded, summary, fraction, gpu_steps, gpu_kind)
  predicted = predictions(assumed, rates, gpu_steps, gpu_kind)
  tables = {
      'Per-device rate (W+ steps, MSE + VGG16 perceptual)': (rates, RATE_COLUMNS),
      f'Sharding overhead ({SHARD_BATCH} images, {SHARD_RESOLUTION} px; ideal: equal '
      's/step at every N, overhead_pct = (t_N / t_1 - 1) * 100)': (
          sharded + [summary], SHARD_COLUMNS + ['process_overhead_pct', 'overlap_pct']),
      f'{NUM_PROCESSES} processes (each its share, on its local devices)': (
          procs, PROCESS_COLUMNS),
      'Predicted images/hour (devices x rate x efficiency x 3600 / steps)': (
          predicted, PREDICTION_COLUMNS),
  }
  result = {'device': common.device_description(), 'jax': jax.__version__, 'note': note,
            'peak': peak, 'plan': plan._asdict(), 'rates': rates, 'sharding': sharded,
            'processes': procs, 'two_processes': summary, 'assumptions': assumed,
            'predictions': predicted, 'wall_s': time.perf_counter() - t0,
            'weights': 'random generator and VGG16 weights (speed only)'}
  return result, tables


def main(argv: Optional[Sequence[str]] = None) -> Optional[dict]:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--quick', action='store_true', help='64/256 px, 1/2/4 devices, short chunks')
  ap.add_argument('--out', default=None, help='folder for throughput.json/.md/.png')
  ap.add_argument('--achieved-fraction', type=float, default=ACHIEVED_FRACTION,
                  help='sustained fraction of the accelerators\' peak over a W+ step')
  ap.add_argument('--gpu-step-s', action='append', default=[], metavar='RES=SECONDS',
                  help='measured GPU seconds per image-step at RES (256 or 1024); replaces the '
                       'assumption for --gpu-kind')
  ap.add_argument('--gpu-kind', choices=GPU_KINDS, default='H100 SXM',
                  help='the GPU that --gpu-step-s was measured on')
  ap.add_argument('--note', default='', help='free text for the outputs (e.g. "shared CPU")')
  # workers (started by this program)
  ap.add_argument('--worker-devices', type=int, default=0, help=argparse.SUPPRESS)
  ap.add_argument('--worker-process', type=int, default=-1, help=argparse.SUPPRESS)
  ap.add_argument('--port', type=int, default=0, help=argparse.SUPPRESS)
  ap.add_argument('--chunk', type=int, default=0, help=argparse.SUPPRESS)
  ap.add_argument('--iters', type=int, default=0, help=argparse.SUPPRESS)
  ap.add_argument('--peak', type=float, default=0.0, help=argparse.SUPPRESS)
  args = ap.parse_args(argv)

  if args.worker_devices:
    print(json.dumps(device_worker(SHARD_RESOLUTION, SHARD_BATCH, args.chunk, args.iters,
                                   args.peak)))
    return None
  if args.worker_process >= 0:
    print(json.dumps(process_worker(args.worker_process, args.port, SHARD_RESOLUTION,
                                    SHARD_BATCH // NUM_PROCESSES, args.chunk, args.iters,
                                    args.peak)))
    return None

  plan = PLANS['quick' if args.quick else 'full']
  gpu_steps = parse_gpu_steps(args.gpu_step_s)
  result, tables = measure_and_model(plan, args.achieved_fraction, gpu_steps, args.gpu_kind,
                                     args.note)
  for title, (rows, columns) in tables.items():
    print(f'\n{title}')
    common.print_table(rows, columns)
  print('\nassumptions:')
  print(json.dumps(result['assumptions'], indent=2))
  print(f"\nwall time: {result['wall_s']:.0f} s")
  if args.out:
    write_outputs(pathlib.Path(args.out), result, tables)
  return result


if __name__ == '__main__':
  main()
