"""In-domain inversion on a generator and its domain-guided encoder: the numbers of
generators/embedded/ENCODER_CARD.md and the README, measured in one run.

    python -m benchmarks.idinvert --out out/bench/idinvert        # embedded model + encoder
    python -m benchmarks.idinvert --quick --out /tmp/idi          # smoke: 4 crops, few steps
    python -m benchmarks.idinvert --checkpoint G --encoder E --images DIR --out out/mine

On the held-out crops (default: every third of the embedded data's 48, 16 in all, clean):
  1. reconstruction: E alone (one forward pass), in-domain optimisation (configs/idinvert.py,
     100 steps from E(x)) and W+ optimisation (Image2StyleGAN, 600 steps from w_avg): MSE,
     PSNR, SSIM on RGB, and seconds per image, all in this process; optimisation time is the
     steady rate after the first (compiling) chunk, compile time apart;
  2. in-domain-ness, the paper's claim, two ways: (a) encoder consistency ||w - E(G(w))|| per
     layer of the in-domain and the W+ codes; (b) realism of interpolations: the midpoints of
     16 pairs of inversions (crop i with crop i + N/2), their SWD against the targets and D's
     mean logit (higher: more real to D);
  3. the defect direction (`inversion.directions.defect_direction`, RGB + mask generators): the
     in-domain codes of the clean crops moved +strength sigmas along it; the share whose
     generated mask gains defect pixels, and the RGB PSNR of the edit against the unedited
     reconstruction outside the generated defect;
  4. a grid: target | E(x) | in-domain | W+, one row per crop.
Writes <out>/idinvert.json, <out>/grid.png, <out>/losses.png and prints the tables. With
`--card`, also the encoder's card beside its folder (generators/embedded/ENCODER_CARD.md for
the shipped one) and its pictures, from these numbers and the training run's `--workdir` (its
loss curves).
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from generators import checkpoint, networks, trainer
from inversion import api, encoders, images as images_lib, metrics as metrics_lib, report
from inversion.encoders import train as encoder_train

W_PLUS_STEPS = 600     # the demo's and the model card's W+ preset
DEFECT_STRENGTHS = (3.0, 4.5, 6.0)  # sigmas of the codes along the defect direction
SWD_KEY = 7


class ChunkTimer:
  """Engine callback: the steady seconds per step after the first (compiling) chunk."""

  def __init__(self):
    self.times, self.steps = [time.perf_counter()], [0]

  def __call__(self, info) -> None:
    self.times.append(time.perf_counter())
    self.steps.append(info.steps_done)

  def exclude(self, seconds: float) -> None:
    """Leaves `seconds` just spent between chunks (e.g. rendering a checkpoint) out of the
    method's time."""
    self.times = [t + seconds for t in self.times]

  def per_step(self) -> float:
    if len(self.times) < 3:  # one chunk: compile and steps together
      return (self.times[-1] - self.times[0]) / max(self.steps[-1], 1)
    return (self.times[-1] - self.times[1]) / (self.steps[-1] - self.steps[1])

  def compile_seconds(self) -> float:
    return max(0.0, self.times[1] - self.times[0] - self.per_step() * self.steps[1])


def invert_timed(model, targets, config, encoder):
  timer = ChunkTimer()
  result = api.invert(targets, model, config, encoder=encoder, callback=timer, progress=False)
  steps = result.steps
  return result, {'seconds_per_image': timer.per_step() * steps / len(targets),
                  'compile_seconds': timer.compile_seconds(), 'steps': steps}


def _encoder_alone(model, encoder, targets):
  """E(x) and G(E(x)) per image at batch 1: (reconstructions, ws, seconds per image)."""
  render = jax.jit(lambda ws: networks.synthesis(model.g_config, model.g_vars, ws, 'const'))
  one = lambda x: render(jnp.asarray(encoder(x[None]))).block_until_ready()
  one(targets[0])  # compile
  start = time.perf_counter()
  for x in targets:
    one(x)
  seconds = (time.perf_counter() - start) / len(targets)
  ws = encoder(targets)
  return np.asarray(render(jnp.asarray(ws))), ws, seconds


def consistency(encoder, model, ws) -> np.ndarray:
  """||w - E(G(w))|| per layer, mean over the codes: [num_ws]."""
  recoded = encoder(np.asarray(model.synthesis(jnp.asarray(ws))))
  return np.linalg.norm(ws - recoded, axis=-1).mean(0)


def midpoint_realism(model, ws, targets) -> dict:
  """Midpoints of (i, i + N/2): SWD against the targets (RGB) and D's mean logit."""
  n = len(ws)
  mid = (ws + ws[(np.arange(n) + n // 2) % n]) / 2
  images = np.asarray(model.synthesis(jnp.asarray(mid)))
  out = {'d_logit': float(np.mean(np.asarray(networks.Discriminator(model.d_config).apply(
      model.d_vars, jnp.asarray(images))))) if model.d_vars is not None else None}
  if images.shape[1] >= 16:
    swd = metrics_lib.sliced_wasserstein(jnp.asarray(images[..., :3]),
                                         jnp.asarray(targets[..., :3]),
                                         jax.random.PRNGKey(SWD_KEY))
    out['swd_x1e3'] = float(swd['SWDx1e3_avg'])
  return out


def defect_edit(model, ws, strengths=DEFECT_STRENGTHS, num_samples: int = 4000) -> dict:
  """The defect direction applied to `ws` at each strength: the share gaining defect pixels,
  their mean count, and the RGB PSNR against the unedited image outside the defect."""
  from inversion import directions  # pylint: disable=import-outside-toplevel
  found = directions.defect_direction(model, num_samples=num_samples)
  direction = found.direction('defect')
  before = np.asarray(model.synthesis(jnp.asarray(ws)))
  rows = []
  for strength in strengths:
    after = np.asarray(model.synthesis(jnp.asarray(directions.apply(ws, direction, strength))))
    gained = (after[..., 3] > 0).sum((1, 2)) > (before[..., 3] > 0).sum((1, 2))
    outside = (after[..., 3] <= 0)[..., None]
    se = np.square(after[..., :3] - before[..., :3]) * outside
    mse = se.sum((1, 2, 3)) / (3 * np.maximum(outside.sum((1, 2, 3)), 1))
    rows.append({'strength_sigmas': strength, 'share_gaining_defect_pixels': float(gained.mean()),
                 'defect_pixels_after': float((after[..., 3] > 0).sum((1, 2)).mean()),
                 'psnr_outside_defect_db': float(np.mean(10 * np.log10(
                     4.0 / np.maximum(mse, 1e-10))))})
  projection = lambda codes: float(np.einsum('nlw,lw->n', codes, direction.vector).mean())
  return {'rows': rows, 'classifier': found.info, 'scale': direction.scale,
          'projection_of_codes': projection(ws),
          'projection_of_sampled_codes': projection(directions.sample_ws(model, 1000, seed=1))}


def targets_from_args(args, model):
  """--images, or the embedded data's held-out crops (every third); --quick keeps a quarter."""
  if args.images:
    targets, names = images_lib.load_images(args.images, model.resolution, model.channels)
  else:
    held = encoder_train.heldout_images(model.resolution)[::3]
    targets, names = held, [f'heldout_{3 * i:02d}' for i in range(len(held))]
  if args.quick:
    targets, names = targets[::4], names[::4]
  return targets, names


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--checkpoint', default=None, help='generator (default: embedded)')
  parser.add_argument('--encoder', default='', help="encoder folder (default: the embedded one)")
  parser.add_argument('--images', default=None, help='targets (default: held-out crops)')
  parser.add_argument('--out', default='out/bench/idinvert')
  parser.add_argument('--quick', action='store_true', help='4 crops, 20 / 60 steps')
  parser.add_argument('--card', action='store_true',
                      help="write the encoder's ENCODER_CARD.md beside it (with --workdir)")
  parser.add_argument('--workdir', default=None, help='the training run of the encoder')
  args = parser.parse_args(argv)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  model = checkpoint.load(args.checkpoint)
  encoder = encoders.resolve_encoder(args.encoder, model)
  targets, names = targets_from_args(args, model)
  idi_steps, wplus_steps = (20, 60) if args.quick else (None, W_PLUS_STEPS)
  metric = api.Inverter(model, 'image2stylegan:wplus').metrics

  recon_e, ws_e, e_seconds = _encoder_alone(model, encoder, targets)
  idi_config = api.as_config('idinvert', [] if idi_steps is None else
                             [f'--config.steps={idi_steps}'])
  idi, idi_time = invert_timed(model, targets, idi_config, encoder)
  wplus, wplus_time = invert_timed(model, targets, api.as_config(
      'image2stylegan:wplus', [f'--config.steps={wplus_steps}']), None)
  rows = []
  for label, recon, timing in (('E(x), one forward pass', recon_e,
                                {'seconds_per_image': e_seconds, 'steps': 0}),
                               (f'in-domain, {idi.steps} steps', idi.reconstructions, idi_time),
                               (f'W+, {wplus.steps} steps', wplus.reconstructions, wplus_time)):
    m = metric(recon, targets)
    rows.append({'method': label, **{k: float(np.mean(v)) for k, v in m.items()}, **timing})
  speedup = wplus_time['seconds_per_image'] / e_seconds
  common.print_table(rows, ['method', 'mse', 'psnr', 'ssim', 'seconds_per_image', 'steps'])
  print(f'E alone is {speedup:.0f}x faster per image than W+ {wplus.steps} steps; in-domain MSE '
        f'is {rows[1]["mse"] / rows[2]["mse"]:.2f}x W+\'s')

  layers = {'in-domain': consistency(encoder, model, idi.ws), 'W+': consistency(
      encoder, model, wplus.ws), 'E(x)': consistency(encoder, model, ws_e)}
  print('encoder consistency ||w - E(G(w))|| per layer:')
  for k, v in layers.items():
    print(f'  {k:10s} mean {v.mean():.3f}  ' + ' '.join(f'{x:.2f}' for x in v))
  realism = {'in-domain': midpoint_realism(model, idi.ws, targets),
             'W+': midpoint_realism(model, wplus.ws, targets)}
  print('interpolation midpoints:', realism)
  defect = defect_edit(model, idi.ws) if model.channels == 4 else None
  if defect:
    common.print_table(defect['rows'], list(defect['rows'][0]))

  shown = np.unique(np.linspace(0, len(targets) - 1, 8).astype(int))  # every photo
  cells = [c for i in shown
           for c in (targets[i], recon_e[i], idi.reconstructions[i], wplus.reconstructions[i])]
  images_lib.save_image(str(out / 'grid.png'), images_lib.image_grid(cells, rows=len(shown),
                                                                     mask='drop'))
  report.plot_losses(out / 'losses.png', {f'in-domain {k}': v for k, v in idi.losses.items()}
                     | {'W+ total': wplus.losses['total']}, names)
  payload = {'device': common.device_description(), 'images': names, 'rows': rows,
             'speedup_encoder_vs_wplus': speedup,
             'mse_ratio_indomain_vs_wplus': rows[1]['mse'] / rows[2]['mse'],
             'consistency_per_layer': {k: v.tolist() for k, v in layers.items()},
             'interpolation_midpoints': realism, 'defect_direction': defect,
             'encoder': {'generator_id': encoder.generator_id,
                         'training_steps': encoder.metadata.get('training_steps'),
                         'kimg': encoder.metadata.get('kimg')}}
  common.write_json(str(out / 'idinvert.json'), payload)
  if args.card:
    write_card(payload, pathlib.Path(args.encoder or encoders.EMBEDDED_ENCODER_DIR), out,
               args.workdir and pathlib.Path(args.workdir), encoder)
  return payload


def _table(rows) -> str:
  lines = ['| method | MSE | PSNR (dB) | SSIM | s / image | steps |', '|---|---|---|---|---|---|']
  lines += [f"| {r['method']} | {r['mse']:.4f} | {r['psnr']:.2f} | {r['ssim']:.3f} | "
            f"{r['seconds_per_image']:.4g} | {r['steps']} |" for r in rows]
  return '\n'.join(lines)


def write_card(payload: dict, encoder_dir: pathlib.Path, out: pathlib.Path,
               workdir: pathlib.Path | None, encoder) -> pathlib.Path:
  """ENCODER_CARD.md, encoder_grid.png and encoder_training_curve.png beside `encoder_dir`
  (a folder that export rewrites whole)."""
  card_dir = encoder_dir.parent
  shutil.copy(out / 'grid.png', card_dir / 'encoder_grid.png')
  curve = ''
  if workdir is not None:
    trainer.plot_records(workdir, card_dir / 'encoder_training_curve.png',
                         ('mse', 'f_discriminator', 'e_adv', 'd_loss'), log_y=True)
    records = trainer.read_records(workdir)
    ends = lambda key: (np.mean([r[key] for r in records[:3]]),
                        np.mean([r[key] for r in records[-3:]]))
    (mse0, mse1), (f0, f1) = ends('mse'), ends('f_discriminator')
    curve = (f'\n![E and D losses over the training run](encoder_training_curve.png)\n\n'
             f'Over the run (first and last three records) the feature distance fell from '
             f'{f0:.2f} to {f1:.2f} and was still falling; the pixel MSE (all channels, '
             f'training crops) went from {mse0:.3f} to {mse1:.3f}. A longer run (the paper sees '
             f'14,000 kimg, this one {encoder.metadata["kimg"]:g}) would buy a closer E(x) and '
             'a shorter in-domain optimisation; E(x) alone stays far from optimisation here, as '
             'in the paper.\n')
  cfg = encoder.metadata['train_config']
  layers = payload['consistency_per_layer']
  real = payload['interpolation_midpoints']
  defect = payload['defect_direction']
  text = f"""# Embedded domain-guided encoder card

The In-Domain GAN Inversion encoder (`inversion/encoders/domain.py`) of the embedded model
(`generators/embedded/model`, fingerprint `{encoder.generator_id}`), trained by
`inversion/encoders/train.py` with `configs/idinvert.py` ('train,embedded'), so `--method
idinvert` and `--method encoder` work offline. Numbers: `python -m benchmarks.idinvert --card
--workdir runs/enc_embedded` on {payload['device']}.

## Data
Real images only: fresh 64x64 crops of the training regions of the three photos the model was
trained on (brick, grass, gravel; random flips and quarter turns), half of them with a painted
defect in the mask channel, as G saw them, and random mirroring (the paper's). The held-out
quarter of every photo stays held out: the numbers below are on 16 of its crops, clean.

## Recipe
The paper's objective with G frozen and D (from the model's D) trained beside E: pixel MSE on all
4 channels (1), F = the model's discriminator features on RGB + mask
({cfg['loss']['fallback_weight']:g}; VGG16 conv4_3 at 5e-5 where its weights exist),
adversarial {cfg['adv_weight']:g}, R1 gamma
{cfg['r1_gamma']:g} (lazy, every {cfg['r1_interval']} D steps). Adam (0.9, 0.99), lr
{cfg['lr']:g} (10x the paper's 1e-4: this run sees 3 orders of magnitude fewer images) decayed
by 0.8 every quarter of the run, batch {cfg['batch_size']}, {encoder.metadata['kimg']:g} kimg
({encoder.metadata['training_steps']} steps). Encoder: channel_base
{cfg['encoder']['channel_base']}, channel_max {cfg['encoder']['channel_max']}, GroupNorm
({cfg['encoder']['norm_groups']} groups).
{curve}
## Reconstruction (16 held-out crops, RGB; all rows measured in one run)

{_table(payload['rows'])}

E alone is **{payload['speedup_encoder_vs_wplus']:.0f}x** faster per image than W+ 600 steps;
in-domain inversion (100 steps from E(x)) reaches
**{payload['mse_ratio_indomain_vs_wplus']:.2f}x** W+'s MSE.
Optimisation times are the steady rate after the first chunk (compile time apart).

![target | E(x) | in-domain, 100 steps | W+, 600 steps](encoder_grid.png)

## In-domain-ness
(a) Encoder consistency, ||w - E(G(w))|| averaged over the layers (per layer in
`idinvert.json`): in-domain codes {sum(layers['in-domain']) / len(layers['in-domain']):.3f},
W+ codes {sum(layers['W+']) / len(layers['W+']):.3f}, E(x) itself
{sum(layers['E(x)']) / len(layers['E(x)']):.3f}.

(b) Interpolation midpoints between pairs of inversions (crop i with crop i + 8): SWD (x1e3)
against the targets, in-domain {real['in-domain'].get('swd_x1e3', float('nan')):.1f} vs W+
{real['W+'].get('swd_x1e3', float('nan')):.1f} (lower is more like the real crops; 16 images
per set, so only large differences count); D's mean logit, in-domain
{real['in-domain']['d_logit']:.2f} vs W+ {real['W+']['d_logit']:.2f} (higher: more real to D).
"""
  if defect:
    table = '\n'.join(
        f"| {r['strength_sigmas']:g} | {100 * r['share_gaining_defect_pixels']:.0f}% | "
        f"{r['defect_pixels_after']:.0f} | {r['psnr_outside_defect_db']:.1f} |"
        for r in defect['rows'])
    text += f"""
## Defect direction
InterFaceGAN on sampled codes labelled by their mask channel
(`inversion.directions.defect_direction`; held-out accuracy
{defect['classifier'].get('heldout_accuracy', float('nan')):.3f}). The in-domain codes of the 16
clean crops moved along it, in sigmas of the sampled codes ({defect['scale']:.2f}):

| strength | crops gaining defect pixels | defect pixels per crop | RGB PSNR outside it (dB) |
|---|---|---|---|
{table}

The codes of real clean crops lie further on the clean side than G's samples (mean projection
{defect['projection_of_codes']:.2f} against {defect['projection_of_sampled_codes']:.2f}): E learnt
"no defect" from a mask channel at -1, so they need a longer move than sampled codes do
(`inversion/directions.py`: +3 sigmas puts defects on 99% of sampled clean codes).
"""
  text += """
## Retrain
    python -m inversion train-encoder --config idinvert:train,embedded --data embedded \\
        --workdir runs/enc_embedded                # resumable
    python -m inversion export-encoder --workdir runs/enc_embedded \\
        --out generators/embedded/encoder
    python -m benchmarks.idinvert --card --workdir runs/enc_embedded --out out/bench/idinvert
"""
  path = card_dir / 'ENCODER_CARD.md'
  path.write_text(text)
  print(f'wrote {path}')
  return path


if __name__ == '__main__':
  main()
