"""Encoders against optimisation on one generator: quality against time, measured the same way,
and the three papers' findings printed as checks.

    python -m benchmarks.compare --quick --out out/compare            # embedded model, CPU
    python -m benchmarks.compare --checkpoint G --images DIR --encoder E_DIR \
        --sfe sfe_editor_light.pt,e4e_ffhq_encode.pt --out out/compare  # full: for a GPU

Every method runs on the same images (default: the embedded data's held-out crops), with the
same seeds, in one process:
  optimisation  Image2StyleGAN Z / W / W+ / W+ with noise (configs/image2stylegan.py), the NVlabs
                projector (configs/projector.py), in-domain inversion from the domain-guided
                encoder (configs/idinvert.py); each also as a curve through its intermediate
                step counts (CURVE_STEPS of one run; a schedule that depends on the run's length,
                the projector's, is the full run's)
  encoders      the domain-guided encoder alone, SFE's W+ head alone (G(ws)), SFE (G(ws, F_k))
  not built     SFE + W+ refinement, PTI: listed as skipped, with the reason
A method whose files are missing (no encoder for this generator, no SFE files) is a 'skipped'
row that says why. Per method: MSE, PSNR, SSIM, MS-SSIM (where the size allows), LPIPS (where
its weights exist), the discriminator-feature distance, SWD of the set of reconstructions
against the targets, encoder consistency ||w - E(G(w))|| (where a domain-guided encoder
exists), steps, seconds per image at batch 1 and images per second at --batch-size (the steady
rate; compile time apart), on the device printed.

Image2StyleGAN's robustness study (its section 3.2): the W+ error (MSE of the reconstruction
against its own input) when the input is translated, rotated, scaled or has a part removed,
beside the encoders'.

Writes <out>/compare.md (the table and the findings), compare.csv, compare.json,
quality_vs_time.png (PSNR, and LPIPS where present, against seconds per image, log x),
grid.png (target, then one column per method), losses.png, robustness.png. `--quick` (the
embedded model in about 15 min on 2 CPU cores): 8 crops, 200 steps, 4 images in the
robustness study.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import pathlib
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from benchmarks import common, idinvert as idinvert_bench
from generators import checkpoint, networks
from inversion import api, encoders, engine as eng, images as images_lib
from inversion import metrics as metrics_lib, perceptual, report, sfe
from inversion.encoders import train as encoder_train

FULL_STEPS, QUICK_STEPS = 600, 200            # optimisation steps (the curves' last point)
CURVE_STEPS = (50, 100, 200, 600)             # also the chunk boundaries: keep a common
QUICK_CURVE_STEPS = (25, 50, 100, 200)        # divisor large (per-chunk overhead)
INDOMAIN_STEPS = 100                          # configs/idinvert.py (the paper's)
BATCH1_CHUNKS = 2                             # chunks timed at batch 1 (the first compiles)
QUICK_IMAGES, ROBUST_IMAGES = 8, 4
SWD_KEY = 7
SFE_SPEEDUP_GOAL = 100                        # SFE: "at encoder speed" vs W+ optimisation
SFE_GAIN_GOAL_DB = 3.0                        # SFE: "by a wide margin" over its W+ head
INDOMAIN_ERROR_RATIO = 2.0                    # idinvert: "at <= 2x W+'s error"
TRANSLATIONS = (-8, -4, 0, 4, 8)              # px
ROTATIONS = (-10, -5, 0, 5, 10)               # degrees
SCALES = (0.8, 0.9, 1.0, 1.1, 1.2)
REMOVED_FRACTION = 0.25                       # side of the removed central square / image side
OPTIMISATION = (('Z', 'image2stylegan:z'), ('W', 'image2stylegan:w'),
                ('W+', 'image2stylegan:wplus'), ('W+ noise', 'image2stylegan:wplus_noise'),
                ('projector', 'projector'))
NOT_BUILT = (('SFE + W+ refinement', 'not built: SFE latents carry F_k, which the engine does '
              'not optimise yet'),
             ('PTI', 'not built: pivotal tuning fine-tunes G, which this toolkit keeps frozen'))
log = logging.getLogger(__name__)
AFFINE, BILINEAR = Image.Transform.AFFINE, Image.Resampling.BILINEAR
COLUMNS = ('method', 'kind', 'mse', 'psnr', 'ssim', 'ms_ssim', 'lpips', 'd_feature', 'swd_x1e3',
           'consistency', 'steps', 's_per_image_b1', 'images_per_s', 'compile_s', 'status')


@dataclasses.dataclass
class Settings:
  """How much work each method gets (`--quick` or full)."""
  steps: int = FULL_STEPS
  curve_steps: tuple = CURVE_STEPS
  indomain_steps: int = INDOMAIN_STEPS
  batch_size: int = 8
  robust_images: int = ROBUST_IMAGES
  translations: tuple = TRANSLATIONS
  rotations: tuple = ROTATIONS
  scales: tuple = SCALES
  w_avg_samples: int = 10_000

  @classmethod
  def quick(cls, batch_size: int = 8) -> 'Settings':
    return cls(QUICK_STEPS, QUICK_CURVE_STEPS, INDOMAIN_STEPS // 2, batch_size, ROBUST_IMAGES,
               TRANSLATIONS[::2], ROTATIONS[::2], SCALES[::2], 1000)


@dataclasses.dataclass
class Run:
  """One method's outputs on the targets."""
  method: str
  kind: str                                   # 'optimisation' | 'encoder' | 'skipped'
  recon: Optional[np.ndarray] = None
  ws: Optional[np.ndarray] = None
  steps: int = 0
  s_per_image_b1: float = float('nan')
  images_per_s: float = float('nan')
  compile_s: float = float('nan')
  curve: list = dataclasses.field(default_factory=list)   # [(steps, s/image, {metric: mean})]
  losses: dict = dataclasses.field(default_factory=dict)
  status: str = 'ok'


# ----------------------------------------------------------------------------------------------
# Measuring.


class Scorer:
  """Per-image quality of reconstructions against the targets (RGB), the same for every row."""

  def __init__(self, model, targets: np.ndarray):
    self.model, self.targets = model, targets
    self.channels = min(3, model.channels)
    self.lpips = api.lpips_metric_params('auto', self.channels)
    self.d_layers = (tuple(f'b{r}' for r in model.d_config.block_resolutions)
                     if model.d_config is not None else ())

  def __call__(self, recon: np.ndarray, full: bool = True) -> dict:
    k = self.channels
    out = {key: float(np.mean(v)) for key, v in api.image_metrics(
        recon, self.targets, k, self.lpips).items()}
    if not full:
      return out
    x, y = jnp.asarray(recon[..., :k]), jnp.asarray(self.targets[..., :k])
    if min(x.shape[1:3]) >= metrics_lib.ms_ssim_min_size():
      out['ms_ssim'] = float(np.mean(metrics_lib.ms_ssim(x, y)))
    if self.d_layers:
      out['d_feature'] = float(np.mean(perceptual.discriminator_feature_distance(
          self.model.discriminator_features, jnp.asarray(recon), jnp.asarray(self.targets),
          self.d_layers)))
    if x.shape[1] >= 16 and len(x) > 1:
      swd = metrics_lib.sliced_wasserstein(x, y, jax.random.PRNGKey(SWD_KEY))
      out['swd_x1e3'] = float(swd['SWDx1e3_avg'])
    return out


def optimise(label: str, model, targets: np.ndarray, config, encoder, settings: Settings,
             scorer: Scorer) -> Run:
  """One optimisation method at the batch size, with its quality at the curve's step counts
  (rendered between chunks; render time excluded from the timing), and its batch-1 rate."""
  steps = settings.indomain_steps if config == 'idinvert' else settings.steps
  chunk = int(np.gcd.reduce([s for s in settings.curve_steps if s <= steps] + [steps]))
  overrides = [f'--config.steps={steps}', f'--config.chunk_size={chunk}',
               f'--config.w_avg_samples={settings.w_avg_samples}']
  inv = api.Inverter(model, api.as_config(config, overrides), encoder=encoder)
  timer, points = idinvert_bench.ChunkTimer(), []

  def on_chunk(info: eng.ChunkInfo) -> None:
    timer(info)
    if info.steps_done in settings.curve_steps and info.steps_done < steps:
      start = time.perf_counter()
      recon = np.asarray(inv.engine.render(eng.final_latents(info.state), model.g_vars))
      points.append((info.steps_done, scorer(recon, full=False)))
      timer.exclude(time.perf_counter() - start)  # the render is not the method's time

  result = _run_engine(inv, targets, on_chunk)
  per_step_b = timer.per_step()
  per_step_1 = _batch1_per_step(model, targets[:1], config, overrides, encoder, chunk)
  run = Run(label, 'optimisation', result.reconstructions, result.ws, steps,
            per_step_1 * steps, len(targets) / (per_step_b * steps), timer.compile_seconds(),
            losses=result.losses)
  run.curve = [(s, per_step_1 * s, m) for s, m in points]
  run.curve.append((steps, per_step_1 * steps, scorer(result.reconstructions, full=False)))
  return run


def _run_engine(inv, targets, on_chunk):
  names = [f'image_{i:03d}' for i in range(len(targets))]
  keys = api.image_keys(jax.random.PRNGKey(inv.config.seed), len(targets))
  state, data = inv.start(targets, None, keys)
  state, data = eng.shard(state, data, eng.batch_mesh(len(targets)))
  state, curves = eng.run(inv.engine, state, data, progress=False, on_chunk=on_chunk)
  return inv.result(state, curves, data, names)


def _batch1_per_step(model, target, config, overrides, encoder, chunk) -> float:
  """Steady seconds per step inverting one image (the first chunk compiles)."""
  inv = api.Inverter(model, api.as_config(config, overrides + [
      f'--config.steps={BATCH1_CHUNKS * chunk + chunk}']), encoder=encoder)
  timer = idinvert_bench.ChunkTimer()
  _run_engine(inv, target, timer)
  return timer.per_step()


def encoder_run(name: str, encode: Callable[[np.ndarray], np.ndarray],
                render: Callable[[np.ndarray], np.ndarray], targets: np.ndarray,
                batch_size: int) -> Run:
  """An encoder: images -> codes (whatever `render` takes) -> images, timed at batch 1 and at
  `batch_size` (first call of each compiles)."""
  start = time.perf_counter()
  render(encode(targets[:1]))
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for x in targets:
    render(encode(x[None]))
  b1 = (time.perf_counter() - start) / len(targets)
  batch = targets[:batch_size]
  render(encode(batch))  # compile at this batch size
  start = time.perf_counter()
  codes = encode(targets)
  recon = render(codes)
  rate = len(targets) / (time.perf_counter() - start)
  ws = codes.ws if isinstance(codes, sfe.Encoded) else codes
  return Run(name, 'encoder', recon, ws, 0, b1, rate, compile_s)


# ----------------------------------------------------------------------------------------------
# The robustness study.


def transform(images: np.ndarray, kind: str, value: float) -> np.ndarray:
  """Targets translated (px, x), rotated (degrees), scaled, or with the central square of side
  `value` x the image side removed (set to mid-grey); edges filled by reflection."""
  out = []
  for img in images:
    if kind == 'removed':
      x = img.copy()
      h, w = x.shape[:2]
      s = int(round(value * h))
      x[(h - s) // 2:(h + s) // 2, (w - s) // 2:(w + s) // 2, :3] = 0.0
      out.append(x)
      continue
    pad = img.shape[0] // 2
    big = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode='reflect')
    channels = []
    for c in range(big.shape[-1]):
      pil = Image.fromarray(big[..., c].astype(np.float32), mode='F')
      if kind == 'translate':
        pil = pil.transform(pil.size, AFFINE, (1, 0, -value, 0, 1, 0), BILINEAR)
      elif kind == 'rotate':
        pil = pil.rotate(value, BILINEAR)
      else:  # scale about the centre
        cx, cy = pil.size[0] / 2, pil.size[1] / 2
        pil = pil.transform(pil.size, AFFINE, (1 / value, 0, cx - cx / value, 0, 1 / value,
                                               cy - cy / value), BILINEAR)
      channels.append(np.asarray(pil))
    out.append(np.stack(channels, -1)[pad:-pad, pad:-pad])
  return np.stack(out).astype(np.float32)


def robustness(model, targets, settings: Settings, invert_fns: dict) -> dict:
  """{method: {kind: [(value, mse)]}}: each method's MSE against its own transformed input."""
  conditions = ([('translate', v) for v in settings.translations]
                + [('rotate', v) for v in settings.rotations]
                + [('scale', v) for v in settings.scales] + [('removed', REMOVED_FRACTION)])
  out = {name: {} for name in invert_fns}
  for kind, value in conditions:
    x = transform(targets, kind, value)
    for name, fn in invert_fns.items():
      recon = fn(x)
      mse = float(np.mean(np.square(recon[..., :3] - x[..., :3])))
      out[name].setdefault(kind, []).append((value, mse))
  return out


# ----------------------------------------------------------------------------------------------
# The findings.


def findings(rows: dict) -> list[str]:
  """The papers' claims as PASS / FAIL / SKIP lines with their numbers."""
  lines = []
  get = lambda name, key: rows.get(name, {}).get(key, float('nan'))
  z, w, wp = get('Z', 'mse'), get('W', 'mse'), get('W+', 'mse')
  lines.append(f'{_verdict(wp < w < z)} Image2StyleGAN: W+ < W < Z in reconstruction MSE '
               f'({wp:.4f} < {w:.4f} < {z:.4f})')
  if 'in-domain' in rows and rows['in-domain'].get('status') == 'ok':
    c_in, c_wp = get('in-domain', 'consistency'), get('W+', 'consistency')
    m_in, m_wp = get('in-domain', 'mid_swd_x1e3'), get('W+', 'mid_swd_x1e3')
    ratio = get('in-domain', 'mse') / wp
    ok = c_in < c_wp and m_in < m_wp and ratio <= INDOMAIN_ERROR_RATIO
    lines.append(f'{_verdict(ok)} idinvert: in-domain codes are more consistent with the encoder '
                 f'({c_in:.3f} vs W+ {c_wp:.3f}), their interpolation midpoints more realistic '
                 f'(SWD x1e3 {m_in:.1f} vs W+ {m_wp:.1f}), at {ratio:.2f}x W+\'s MSE '
                 f'(<= {INDOMAIN_ERROR_RATIO:g})')
  else:
    lines.append('SKIP idinvert: no domain-guided encoder for this generator')
  if rows.get('SFE', {}).get('status') == 'ok':
    gain = get('SFE', 'psnr') - get('SFE W+ head', 'psnr')
    speed = get('W+', 's_per_image_b1') / get('SFE', 's_per_image_b1')
    ok = gain >= SFE_GAIN_GOAL_DB and speed >= SFE_SPEEDUP_GOAL
    lines.append(f'{_verdict(ok)} SFE: beats its own W+ head by {gain:+.2f} dB PSNR (goal '
                 f'>= {SFE_GAIN_GOAL_DB:g}), {speed:.0f}x faster per image than W+ '
                 f'{int(get("W+", "steps"))} steps (goal >= {SFE_SPEEDUP_GOAL})'
                 + ('' if rows['SFE'].get('trained', True) else ' [untrained SFE networks]'))
  else:
    lines.append(f'SKIP SFE: {rows.get("SFE", {}).get("status", "not run")}')
  return lines


def _verdict(ok: bool) -> str:
  return 'PASS' if ok else 'FAIL'


# ----------------------------------------------------------------------------------------------
# The whole comparison.


def _sfe_networks(paths: str, model):
  """(SFE, '') or (None, why it is skipped: one line; the loader's whole message in the log)."""
  try:
    return sfe.resolve(paths or None, model), ''
  except (FileNotFoundError, sfe.SFEError, ValueError) as e:
    log.warning('SFE rows skipped: %s', e)
    return None, ('skipped: no SFE networks for this generator (--sfe FILES or a native folder; '
                  '`python -m inversion train-sfe` trains them)')


def _domain_encoder(path: str, model):
  """(encoder, '') or (None, why the encoder rows are skipped)."""
  try:
    return encoders.resolve_encoder(path, model), ''
  except (FileNotFoundError, encoders.EncoderError) as e:
    log.warning('domain-encoder rows skipped: %s', e)
    return None, ('skipped: no domain-guided encoder for this generator (--encoder DIR; '
                  '`python -m inversion train-encoder` trains one)')


def run(model, targets: np.ndarray, names: list[str], out: pathlib.Path, settings: Settings, *,
        encoder_path: str = '', sfe_paths: str = '') -> dict:
  """Every method on `targets`; writes the outputs to `out` and returns the JSON payload."""
  out.mkdir(parents=True, exist_ok=True)
  scorer = Scorer(model, targets)
  encoder, encoder_why = _domain_encoder(encoder_path, model)
  nets, sfe_why = _sfe_networks(sfe_paths, model)
  runs: list[Run] = []
  for label, config in OPTIMISATION:
    runs.append(optimise(label, model, targets, config, None, settings, scorer))
  synth = jax.jit(lambda ws: networks.synthesis(model.g_config, model.g_vars, ws))
  render_ws = lambda ws: np.asarray(synth(jnp.asarray(ws)))
  if encoder is not None:
    runs.append(optimise('in-domain', model, targets, 'idinvert', encoder, settings, scorer))
    runs.append(encoder_run('domain encoder', encoder, render_ws, targets, settings.batch_size))
  else:
    runs += [Run('in-domain', 'skipped', status=encoder_why),
             Run('domain encoder', 'skipped', status=encoder_why)]
  if nets is not None:
    encode = lambda x: sfe.encode(nets, model, x, batch_size=settings.batch_size)
    runs.append(encoder_run('SFE W+ head', lambda x: encode(x).ws, render_ws, targets,
                            settings.batch_size))
    runs.append(encoder_run('SFE', encode, lambda e: sfe.render(
        nets, model, e.ws, e.features, batch_size=settings.batch_size), targets,
        settings.batch_size))
  else:
    runs += [Run('SFE W+ head', 'skipped', status=sfe_why), Run('SFE', 'skipped', status=sfe_why)]
  runs += [Run(name, 'skipped', status=f'skipped: {why}') for name, why in NOT_BUILT]

  rows = {}
  for r in runs:
    row = {'method': r.method, 'kind': r.kind, 'status': r.status}
    if r.recon is not None:
      row.update(scorer(r.recon), steps=r.steps, s_per_image_b1=r.s_per_image_b1,
                 images_per_s=r.images_per_s, compile_s=r.compile_s)
      if encoder is not None and r.ws is not None:
        row['consistency'] = float(idinvert_bench.consistency(encoder, model, r.ws).mean())
      if r.ws is not None and len(r.ws) > 1 and r.method in ('W+', 'in-domain'):
        row['mid_swd_x1e3'] = idinvert_bench.midpoint_realism(model, r.ws, targets).get(
            'swd_x1e3', float('nan'))
    rows[r.method] = row
  if nets is not None:
    rows['SFE']['trained'] = rows['SFE W+ head']['trained'] = nets.trained

  wplus = api.as_config('image2stylegan:wplus', [f'--config.steps={settings.steps}',
                                                  f'--config.w_avg_samples={settings.w_avg_samples}'])
  invert_fns = {'W+': lambda x: api.invert(x, model, wplus, progress=False).reconstructions}
  if encoder is not None:
    invert_fns['domain encoder'] = lambda x: render_ws(encoder(x))
  if nets is not None:
    def sfe_invert(x):
      e = sfe.encode(nets, model, x)
      return sfe.render(nets, model, e.ws, e.features)
    invert_fns['SFE'] = sfe_invert
  robust = robustness(model, targets[:settings.robust_images], settings, invert_fns)

  checks = findings(rows)
  _write(out, runs, rows, checks, robust, targets, names)
  payload = {'device': common.device_description(), 'images': names,
             'settings': dataclasses.asdict(settings), 'rows': list(rows.values()),
             'curves': {r.method: r.curve for r in runs if r.curve}, 'findings': checks,
             'robustness': robust}
  common.write_json(str(out / 'compare.json'), payload)
  return payload


def _write(out, runs, rows, checks, robust, targets, names) -> None:
  table = [{c: rows[r.method].get(c, '') for c in COLUMNS} for r in runs]
  common.print_table(table, list(COLUMNS))
  print('\n'.join(checks))
  with open(out / 'compare.csv', 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(table)
  done = [r for r in runs if r.recon is not None]
  (out / 'compare.md').write_text(
      report.format_table(table, list(COLUMNS)) + '\n\n' + '\n'.join(checks) + '\n\n'
      + 'grid.png columns: target, ' + ', '.join(r.method for r in done) + '\n')
  shown = min(len(targets), 8)
  cells = [c for i in range(shown) for c in [targets[i]] + [r.recon[i] for r in done]]
  images_lib.save_image(str(out / 'grid.png'), images_lib.image_grid(cells, rows=shown,
                                                                     mask='drop'))
  curves = {f'{r.method} total': r.losses['total'] for r in done if 'total' in r.losses}
  report.plot_losses(out / 'losses.png', curves, names)
  _plot_quality(out / 'quality_vs_time.png', done, rows)
  _plot_robustness(out / 'robustness.png', robust)


def _plot_quality(path, runs, rows) -> None:
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  metrics = ['psnr'] + (['lpips'] if any('lpips' in rows[r.method] for r in runs) else [])
  fig = Figure(figsize=(6 * len(metrics), 4.2), layout='constrained')
  for ax, metric in zip(fig.subplots(1, len(metrics), squeeze=False)[0], metrics):
    for r in runs:
      if r.curve:
        ax.plot([c[1] for c in r.curve], [c[2].get(metric) for c in r.curve], 'o-', ms=3,
                label=r.method)
      else:
        ax.plot([r.s_per_image_b1], [rows[r.method].get(metric)], '*', ms=12, label=r.method)
    ax.set_xscale('log')
    ax.set_xlabel('seconds per image (batch 1)')
    ax.set_ylabel(metric.upper())
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.savefig(path, dpi=110)


def _plot_robustness(path, robust) -> None:
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  kinds = ('translate', 'rotate', 'scale', 'removed')
  fig = Figure(figsize=(4 * len(kinds), 3.2), layout='constrained')
  for ax, kind in zip(fig.subplots(1, len(kinds), squeeze=False)[0], kinds):
    for name, curves in robust.items():
      points = curves.get(kind, [])
      ax.plot([p[0] for p in points], [p[1] for p in points], 'o-', ms=3, label=name)
    ax.set_title(kind)
    ax.set_ylabel('MSE against the input')
    ax.grid(alpha=0.3)
  fig.axes[0].legend(fontsize=7)
  fig.savefig(path, dpi=110)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--checkpoint', default=None, help='generator (default: embedded)')
  parser.add_argument('--images', default=None, help='targets (default: held-out crops)')
  parser.add_argument('--encoder', default='', help='domain-guided encoder folder (default: '
                      "the generator's shipped one, if any)")
  parser.add_argument('--sfe', default='', help='SFE files, comma-separated (default: the '
                      "generator's shipped SFE, if any)")
  parser.add_argument('--batch-size', type=int, default=8)
  parser.add_argument('--quick', action='store_true', help=f'{QUICK_IMAGES} images, '
                      f'{QUICK_STEPS} steps')
  parser.add_argument('--out', default='out/compare')
  args = parser.parse_args(argv)
  model = checkpoint.load(args.checkpoint)
  if args.images:
    targets, names = images_lib.load_images(args.images, model.resolution, model.channels)
  else:
    targets = encoder_train.heldout_images(model.resolution)[::3]
    names = [f'heldout_{3 * i:02d}' for i in range(len(targets))]
  settings = Settings.quick(args.batch_size) if args.quick else Settings(
      batch_size=args.batch_size)
  if args.quick:
    keep = np.linspace(0, len(targets) - 1, QUICK_IMAGES).astype(int)
    targets, names = targets[keep], [names[i] for i in keep]
  print(f'device: {common.device_description()}; {len(targets)} images')
  return run(model, targets, names, pathlib.Path(args.out), settings,
             encoder_path=args.encoder, sfe_paths=args.sfe)


if __name__ == '__main__':
  main()
