"""Defect synthesis by masked inversion: a realistic defect exactly where a mask says, on a
normal image, and an anomaly-detection dataset of the results.

The recipe (configs/defect_synthesis.py has the terms and defaults): G frozen; per (normal
image, target mask) pair, optimise a latent (z, w or w+, with the noise maps) so that

  (a) G's mask channel matches the target mask, everywhere;
  (b) G's RGB matches the normal image outside the (dilated, feathered) mask;
  (c) G's RGB inside the mask matches a defect: a real one pasted there ('stitch'), one the
      generator draws ('distill'), or nothing ('none').

It is one engine run: the three terms are `engine.ImageTerm`s reading their own channels and
mask channels, the targets carry the pasted defect in RGB and the target mask in channel 3, and
the per-pair masks [H, W, 2] hold (b)'s weight and the mask.

    from generators import checkpoint
    from inversion import defects
    model = checkpoint.load()                              # the embedded RGB + mask model
    masks, painted = defects.random_masks(normals, per_image=4, seed=0)
    result = defects.synthesize(np.repeat(normals, 4, 0), masks, model, sources=painted)
    result.metrics['iou'], result.metrics['psnr_outside']

Masks are bool [H, W] at the generator's resolution (`check_masks` says what is wrong with
others): drawn PNGs (`load_masks`, white = defect), procedural shapes (`random_masks`) or a
dataset's ground truth (`mvtec_masks`). `run_defects_command` is `python -m inversion defects`:
pairs in batches, resumable, written in MVTec AD layout (`export`).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import pathlib
from typing import Optional, Sequence

import jax
import ml_collections
import numpy as np

from generators import data as data_lib
from generators import defects as procedural
from generators import mvtec
from inversion import api
from inversion import encoders
from inversion import engine as eng
from inversion import images as images_lib
from inversion import perceptual

log = logging.getLogger(__name__)

__all__ = [
    'DEFECT_MODES',
    'DefectBank',
    'DefectError',
    'DefectResult',
    'JobResult',
    'Pairs',
    'check_masks',
    'default_bank',
    'defect_terms',
    'export',
    'finish',
    'grid',
    'iou',
    'job_pairs',
    'load_masks',
    'make_inverter',
    'make_targets',
    'mvtec_masks',
    'outside_psnr',
    'random_masks',
    'regions',
    'start',
    'synthesize',
    'synthesize_folder',
]

DEFECT_MODES = ('stitch', 'distill', 'none')
MASK_CHANNEL = 3            # the RGB + mask generator's defect channel
OUTSIDE, INSIDE = 0, 1      # channels of the per-pair engine masks
MIN_DEFECT_PIXELS = 4       # a generated sample counts as defective for 'distill' from here
PSNR_RANGE = 2.0            # images in [-1, 1]


class DefectError(ValueError):
  """A mask, source or generator that defect synthesis cannot use; the message says the fix."""


# ----------------------------------------------------------------------------------------------
# Target masks.


def check_masks(masks, resolution: int, what: str = 'mask') -> np.ndarray:
  """Target masks -> bool [N, R, R] (True = defect).

  Takes [R, R], [N, R, R] or [N, R, R, 1]; bool, or numbers where 1 (or 255 for uint8) is the
  defect. Values other than the two levels are thresholded at half the range, with a log line;
  a mask of another size, an empty one and one covering the whole image are errors."""
  m = np.asarray(masks)
  if m.ndim == 4 and m.shape[-1] == 1:
    m = m[..., 0]
  if m.ndim == 2:
    m = m[None]
  if m.ndim != 3 or m.shape[1:] != (resolution, resolution):
    raise DefectError(f'{what} must be {resolution}x{resolution} ([N, {resolution}, '
                      f'{resolution}], the generator\'s resolution), got shape {np.shape(masks)}; '
                      f'draw it at {resolution}x{resolution} or resize it with nearest-'
                      'neighbour sampling so it stays binary')
  if m.dtype != bool:
    top = 255.0 if m.dtype == np.uint8 else 1.0
    v = m.astype(np.float32) / top
    if not np.isfinite(v).all():
      raise DefectError(f'{what} holds NaN or inf values')
    soft = (v != 0) & (v != 1)
    if soft.any():
      log.info('%s: %d pixel(s) are neither 0 nor %g; thresholded at %g (>= = defect)', what,
               int(soft.sum()), top, top / 2)
    m = v >= 0.5
  for i, one in enumerate(m):
    name = what if len(m) == 1 else f'{what} {i}'
    if not one.any():
      raise DefectError(f'{name} marks no pixel: white (1 / 255) marks where the defect goes')
    if one.all():
      raise DefectError(f'{name} covers the whole image: nothing is left of the normal image to '
                        'keep; draw the defect region only (white) on black')
  return m


def load_masks(paths: str | os.PathLike | Sequence[str], resolution: int
               ) -> tuple[np.ndarray, list[str]]:
  """Mask files (a folder's images, sorted, or a list; white = defect) -> (bool [N, R, R],
  names). An MVTec AD category folder (with ground_truth/) gives its test masks."""
  if isinstance(paths, (str, os.PathLike)) and (pathlib.Path(paths) / 'ground_truth').is_dir():
    return mvtec_masks(paths, resolution)
  files = images_lib.list_images(paths)
  if not files:
    raise DefectError(f'no mask images in {paths}')
  masks = [check_masks(images_lib.read_grey(f), resolution, f'mask {f}')[0] for f in files]
  return np.stack(masks), images_lib._unique_names(files)  # pylint: disable=protected-access


def mvtec_masks(category_dir: str | os.PathLike, resolution: int,
                defects: Optional[Sequence[str]] = None) -> tuple[np.ndarray, list[str]]:
  """The ground-truth masks of an MVTec AD category's defective test images, resized as
  `generators.mvtec` resizes them: (bool [N, R, R], names '<type>_<stem>')."""
  samples = _mvtec_defective(category_dir, resolution, defects)
  return (np.stack([s.image[..., 3] > 0 for s in samples]),
          [s.name.replace('/', '_') for s in samples])


def _mvtec_defective(category_dir, resolution, defects=None) -> list[mvtec.MVTecSample]:
  p = pathlib.Path(category_dir)
  samples = [s for s in mvtec.iter_mvtec(str(p.parent), p.name, 'test', resolution, defects)
             if s.defect != mvtec.GOOD]
  if not samples:
    raise DefectError(f'{p}: no defective test images (test/<type>/ with ground_truth/<type>/)')
  return samples


def random_masks(normals, per_image: int, seed: int = 0,
                 kinds: Sequence[str] = procedural.KINDS) -> tuple[np.ndarray, np.ndarray]:
  """`per_image` procedural defects (generators/defects.py: scratch, crack, hole, stain, kinds
  in turn) painted on each normal image: (bool masks [N * per_image, R, R], the painted RGB
  [N * per_image, R, R, 3] in [-1, 1]), normal i's in rows i * per_image ... The painted images
  are 'stitch' sources that match their masks exactly."""
  x = np.asarray(normals, np.float32)
  x = x[None] if x.ndim == 3 else x
  rgb = data_lib.to_uint8(x[..., :3])
  rng = np.random.default_rng(seed)
  reps = np.repeat(rgb, per_image, 0)
  painted, masks = procedural.add_defects(
      reps, [kinds[i % len(kinds)] for i in range(len(reps))], rng)
  return masks, data_lib.to_model_range(painted)


def _dilate(m: np.ndarray, steps: int) -> np.ndarray:
  """Binary dilation of bool [N, H, W] by a 3x3 square, `steps` times."""
  h, w = m.shape[1:]
  for _ in range(steps):
    p = np.pad(m, ((0, 0), (1, 1), (1, 1)))
    m = np.any([p[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
                for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
  return m


def regions(masks: np.ndarray, dilation: int, feather: int) -> np.ndarray:
  """Engine masks [N, H, W, 2] of target masks bool [N, H, W]: channel OUTSIDE is (b)'s weight
  (0 on the mask dilated by `dilation` px, then k / (feather + 1) at k px further, 1 beyond),
  channel INSIDE the mask itself."""
  if dilation < 0 or feather < 0:
    raise DefectError(f'region.dilation and region.feather must be >= 0, got {dilation}, '
                      f'{feather}')
  grown = _dilate(masks, dilation)
  weight = (~grown).astype(np.float32)
  ring = grown
  for k in range(1, feather + 1):
    nxt = _dilate(ring, 1)
    weight[nxt & ~ring] = k / (feather + 1)
    ring = nxt
  return np.stack([weight, masks.astype(np.float32)], -1)


# ----------------------------------------------------------------------------------------------
# Defects to paste: real ones (stitch) or the generator's (distill).


def _shift(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
  """x [H, W, ...] moved by (dy, dx), the border repeated where it moves in."""
  h, w = x.shape[:2]
  ys = np.clip(np.arange(h) - dy, 0, h - 1)
  xs = np.clip(np.arange(w) - dx, 0, w - 1)
  return x[ys][:, xs]


@dataclasses.dataclass
class DefectBank:
  """Defective images to paste into target masks: RGB [K, H, W, 3] in [-1, 1] and their masks
  bool [K, H, W]. `paste` picks, per target mask, the defect that overlaps it best once their
  centroids coincide, and moves it there."""
  images: np.ndarray
  masks: np.ndarray
  source: str = ''

  def __post_init__(self):
    keep = self.masks.reshape(len(self.masks), -1).any(1)
    if not keep.any():
      raise DefectError(f'the defect source {self.source or "given"} holds no defective image')
    self.images, self.masks = self.images[keep, ..., :3], self.masks[keep]

  def match(self, mask: np.ndarray) -> tuple[int, int, int, float]:
    """(index, dy, dx, IoU) of the bank defect best overlapping `mask` [H, W] after the move."""
    cy, cx = np.argwhere(mask).mean(0)
    best = (0, 0, 0, -1.0)
    for k, m in enumerate(self.masks):
      ky, kx = np.argwhere(m).mean(0)
      dy, dx = int(round(cy - ky)), int(round(cx - kx))
      moved = _shift(m, dy, dx)
      score = (moved & mask).sum() / (moved | mask).sum()
      if score > best[3]:
        best = (k, dy, dx, float(score))
    return best

  def paste(self, normals: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """RGB [N, H, W, 3]: each normal with its matched defect inside its mask."""
    out = np.array(normals[..., :3], np.float32)
    for i, m in enumerate(masks):
      k, dy, dx, _ = self.match(m)
      out[i][m] = _shift(self.images[k], dy, dx)[m]
    return out

  @classmethod
  def procedural(cls, resolution: int, size: int, seed: int = 0) -> 'DefectBank':
    """Procedural defects painted on the embedded data's training crops (never its held-out
    strips)."""
    ds = procedural.defect_dataset(size, resolution, defect_fraction=1.0, seed=seed)
    return cls(data_lib.to_model_range(ds.images[..., :3]), ds.images[..., 3] > 0,
               'procedural defects on the embedded training crops')

  @classmethod
  def from_mvtec(cls, category_dir: str | os.PathLike, resolution: int) -> 'DefectBank':
    """The defective test images of an MVTec AD category folder, with their masks."""
    samples = _mvtec_defective(category_dir, resolution)
    images = np.stack([s.image for s in samples])
    return cls(data_lib.to_model_range(images[..., :3]), images[..., 3] > 0, str(category_dir))

  @classmethod
  def from_generator(cls, model, size: int, seed: int = 0, batch: int = 64) -> 'DefectBank':
    """Samples of the generator whose mask channel shows a defect (>= MIN_DEFECT_PIXELS
    pixels, not the whole image): `size` of them, drawn from z ~ N(0, I)."""
    from inversion import editing  # pylint: disable=import-outside-toplevel
    key = jax.random.PRNGKey(seed)
    images, masks, drawn = [], [], 0
    while sum(len(m) for m in masks) < size and drawn < 64 * size:
      z = jax.random.normal(jax.random.fold_in(key, drawn), (batch, model.g_config.z_dim))
      x = editing.render(model, np.asarray(model.mapping(z)), batch_size=batch)
      m = x[..., MASK_CHANNEL] > 0
      count = m.sum((1, 2))
      ok = (count >= MIN_DEFECT_PIXELS) & (count < m[0].size)
      images.append(x[ok, ..., :3])
      masks.append(m[ok])
      drawn += batch
    return cls(np.concatenate(images)[:size], np.concatenate(masks)[:size],
               f'{size} defective samples of the generator')


def default_bank(config: ml_collections.ConfigDict, model) -> Optional[DefectBank]:
  """The bank config.defect asks for: None for 'none'; the generator's samples for 'distill';
  for 'stitch' the MVTec folder config.defect.source, or the embedded data's procedural
  defects."""
  mode, res = config.defect.mode, model.resolution
  size, seed = int(config.defect.bank_size), int(config.seed)
  if mode == 'none':
    return None
  if mode == 'distill':
    return DefectBank.from_generator(model, size, seed)
  if config.defect.source:
    return DefectBank.from_mvtec(config.defect.source, res)
  log.info("defect.source is empty: stitching the embedded data's procedural defects")
  return DefectBank.procedural(res, size, seed)


# ----------------------------------------------------------------------------------------------
# The objective.


def defect_terms(config: ml_collections.ConfigDict, model
                 ) -> tuple[dict[str, eng.ImageTerm], dict]:
  """The three terms of config.loss as engine image terms, with their channels and masks:
  ({name: ImageTerm}, term params)."""
  loss = config.loss
  rgb = (0, MASK_CHANNEL)
  terms = {}
  if loss.mask:
    terms['mask'] = eng.ImageTerm(perceptual.pixel_mse, float(loss.mask),
                                  channels=(MASK_CHANNEL, MASK_CHANNEL + 1), mask_channel=None)
  if loss.outside:
    terms['outside'] = eng.ImageTerm(perceptual.pixel_mse, float(loss.outside), channels=rgb,
                                     mask_channel=OUTSIDE)
  params = {}
  if config.defect.mode != 'none':
    if loss.defect_mse:
      terms['defect_mse'] = eng.ImageTerm(perceptual.pixel_mse, float(loss.defect_mse),
                                          channels=rgb, mask_channel=INSIDE)
    only_perceptual = api.as_config(config, ['--config.loss.mse=0.0'])
    found, params = api.build_image_terms(only_perceptual, model)
    for name, term in found.items():
      terms[f'defect_{name}'] = term._replace(channels=rgb, mask_channel=INSIDE)
  if not terms:
    raise DefectError('every term weight is 0 (config.loss.mask, outside, defect_mse, '
                      'perceptual_weight)')
  return terms, params


def _check_model(model) -> None:
  if model.channels != MASK_CHANNEL + 1:
    raise DefectError(f'defect synthesis needs an RGB + defect-mask generator (4 channels); this '
                      f'one has {model.channels}. Use the embedded model, or train one on your '
                      'data with its masks: python -m generators train --config embedded '
                      '--config.data.mvtec_root=DIR (README, "Your own defect data").')


def _auto_init(config, model, encoder) -> tuple[str, Optional[encoders.Encoder]]:
  """config.init 'auto' -> ('encoder', the encoder) where a domain-guided encoder exists (not
  in Z), else ('mean', None); other inits are kept, with `encoder`."""
  if config.init != 'auto':
    return config.init, encoder
  if config.space == 'z':
    return 'mean', None
  if encoder is not None:
    return 'encoder', encoder
  try:
    return 'encoder', encoders.resolve_encoder('', model)
  except encoders.EncoderError as e:
    log.info('defect synthesis starts from w_avg: no domain-guided encoder (%s)',
             str(e).splitlines()[0])
    return 'mean', None


# ----------------------------------------------------------------------------------------------
# Synthesis.


@dataclasses.dataclass
class DefectResult:
  """What `synthesize` returns (numpy, one row per pair)."""
  inversion: api.InversionResult   # latents, ws, noise, loss curves, ... of the pairs
  normals: np.ndarray              # [N, H, W, 4] the normal images
  target_masks: np.ndarray         # [N, H, W] bool
  targets: np.ndarray              # [N, H, W, 4]: RGB with the pasted defect, the target mask
  images: np.ndarray               # [N, H, W, 4] the results (blended if config.blend)
  metrics: dict                    # {'iou', 'psnr_outside', 'defect_pixels', 'generated_pixels'}
                                   # of the raw results G drew

  @property
  def generated_masks(self) -> np.ndarray:
    """bool [N, H, W]: where the generator drew the defect (its mask channel > 0)."""
    return self.images[..., MASK_CHANNEL] > 0


def iou(generated: np.ndarray, target: np.ndarray) -> np.ndarray:
  """Intersection over union of bool masks [N, H, W] -> [N]."""
  inter = (generated & target).sum((1, 2))
  return inter / np.maximum((generated | target).sum((1, 2)), 1)


def outside_psnr(images: np.ndarray, normals: np.ndarray, masks: np.ndarray,
                 dilation: int) -> np.ndarray:
  """PSNR (dB) of the RGB against the normal images over the pixels outside the masks dilated
  by `dilation` px -> [N]."""
  keep = ~_dilate(masks, dilation)
  se = np.square(images[..., :3] - normals[..., :3]).mean(-1)
  mse = (se * keep).sum((1, 2)) / np.maximum(keep.sum((1, 2)), 1)
  with np.errstate(divide='ignore'):
    return 10 * np.log10(PSNR_RANGE ** 2 / mse)


def synthesize(normals, masks, model, config='defect_synthesis', *,
               space: Optional[str] = None, defect: Optional[str] = None,
               sources: DefectBank | np.ndarray | None = None, init=None,
               encoder: Optional[encoders.Encoder] = None, key=None,
               names: Optional[Sequence[str]] = None, progress: bool = True,
               overrides: Sequence[str] = ()) -> DefectResult:
  """Puts a defect of the generator's drawing into each (normal image, target mask) pair.

  Args:
    normals: [N, H, W, 4] (or [N, H, W, 3]) normal images in [-1, 1]; one image [H, W, C] is
      used for every mask.
    masks: target masks, one per pair (`check_masks`).
    model: an RGB + defect-mask generator (`generators.checkpoint.Model`).
    config: 'defect_synthesis[:variant]' or a ConfigDict (configs/defect_synthesis.py).
    space, defect: set config.space ('z' | 'w' | 'wplus') and config.defect.mode ('stitch' |
      'distill' | 'none') when given.
    sources: for 'stitch' / 'distill': a `DefectBank`, or the pasted RGB itself [N, H, W, 3+]
      (its pixels inside each mask are the defect); None = `default_bank(config)`.
    init: start latents as `api.invert` takes them (config.init 'given').
    encoder: the domain-guided encoder of config.init 'auto' / 'encoder'.
    key, names, progress: as `api.invert`.

  Returns:
    DefectResult: results, their IoU with the target masks, PSNR outside the dilated masks.
  """
  config = api.as_config(config, overrides)
  if space is not None:
    eng.latent_shape(model.g_config, space)  # a clear error for an unknown space
    config.space = space
  if defect is not None:
    config.defect.mode = defect
  _check_model(model)
  res = model.resolution
  masks = check_masks(masks, res)
  x = np.asarray(normals, np.float32)
  x = x[None] if x.ndim == 3 else x
  if x.shape[-1] == MASK_CHANNEL:
    x = np.concatenate([x, -np.ones(x.shape[:-1] + (1,), np.float32)], -1)
  if len(x) == 1 and len(masks) > 1:
    x = np.repeat(x, len(masks), 0)
  x = api.check_images(x, model)
  if len(x) != len(masks):
    raise DefectError(f'{len(x)} normal images for {len(masks)} masks: give one mask per image '
                      '(np.repeat the images for several masks each)')
  inv = make_inverter(config, model, encoder)
  keys = api.image_keys(jax.random.PRNGKey(config.seed) if key is None else key, len(masks))
  state, data = start(inv, model, x, masks, keys, sources, init)
  names = list(names) if names is not None else [f'{i:03d}' for i in range(len(x))]
  state, data = eng.shard(state, data, eng.batch_mesh(len(x)))
  state, curves = eng.run(inv.engine, state, data, progress=progress, names=names,
                          desc=f'defects {config.defect.mode}:{inv.spec.space}')
  return finish(inv, state, curves, data, x, masks, names)


def start(inv: api.Inverter, model, normals: np.ndarray, masks: np.ndarray, keys,
          sources: DefectBank | np.ndarray | None = None, init=None):
  """(engine state, engine data) of a batch of pairs: their targets (`make_targets`), their
  term masks (`regions`) and their start latents."""
  config = inv.config
  targets = make_targets(config, model, normals, masks, sources)
  engine_masks = regions(masks, int(config.region.dilation), int(config.region.feather))
  return inv.start(targets, engine_masks, keys, init)


def make_inverter(config, model, encoder=None) -> api.Inverter:
  """The engine of a defect-synthesis config (its terms, space, init) for `model`."""
  _check_model(model)
  config = api.as_config(config)
  if config.defect.mode not in DEFECT_MODES:
    raise DefectError(f'config.defect.mode must be one of {DEFECT_MODES}, got '
                      f'{config.defect.mode!r}')
  config.init, encoder = _auto_init(config, model, encoder)
  terms, params = defect_terms(config, model)
  return api.Inverter(model, config, image_terms=terms, term_params=params, encoder=encoder)


def make_targets(config, model, normals: np.ndarray, masks: np.ndarray,
                 sources: DefectBank | np.ndarray | None = None) -> np.ndarray:
  """Targets [N, H, W, 4]: the normal RGB with, inside each mask, the defect (c) fits (for
  'stitch' / 'distill'), and the target mask as +1 / -1 in the mask channel."""
  rgb = np.asarray(normals[..., :MASK_CHANNEL], np.float32)
  if config.defect.mode != 'none':
    if sources is None:
      sources = default_bank(config, model)
    if isinstance(sources, DefectBank):
      rgb = sources.paste(rgb, masks)
    else:
      pasted = np.asarray(sources, np.float32)
      if pasted.shape[:3] != rgb.shape[:3]:
        raise DefectError(f'sources must be a DefectBank or [N, H, W, 3] images, one per pair '
                          f'{rgb.shape[:3]}, got {pasted.shape}')
      rgb = np.where(masks[..., None], pasted[..., :MASK_CHANNEL], rgb)
  return np.concatenate([rgb, procedural.mask_to_model(masks)[..., None]], -1)


def finish(inv: api.Inverter, state, curves, data, normals, masks, names) -> DefectResult:
  """The DefectResult of a finished engine run."""
  result = inv.result(state, curves, data, names)
  out = result.reconstructions
  config = inv.config
  if config.blend:
    w = np.asarray(data.masks)[..., OUTSIDE:OUTSIDE + 1]
    out = np.concatenate([w * normals[..., :MASK_CHANNEL] + (1 - w) * out[..., :MASK_CHANNEL],
                          out[..., MASK_CHANNEL:]], -1)
  generated = out[..., MASK_CHANNEL] > 0
  raw = result.reconstructions  # the metrics judge the generator's drawing, not the blend
  metrics = {'iou': iou(generated, masks),
             'psnr_outside': outside_psnr(raw, normals, masks, int(config.region.dilation)),
             'defect_pixels': masks.sum((1, 2)), 'generated_pixels': generated.sum((1, 2))}
  result.metrics.update(metrics)  # so that latents files carry them
  return DefectResult(result, normals, masks, result.targets, out, metrics)


# ----------------------------------------------------------------------------------------------
# Outputs.


DIFF_GAIN = 2.0             # |result - normal| is drawn at this gain in the grid


def grid(normals: np.ndarray, target_masks: np.ndarray, images: np.ndarray,
         rows: Optional[int] = None) -> np.ndarray:
  """uint8 picture, one row per pair: normal | target mask | result | generated mask |
  |result - normal| (RGB, mean over channels, x DIFF_GAIN)."""
  n = len(images) if rows is None else min(rows, len(images))
  grey = lambda m: np.repeat(np.where(m, 1.0, -1.0)[..., None], 3, -1).astype(np.float32)
  diff = np.abs(images[:n, ..., :3] - normals[:n, ..., :3]).mean(-1)
  diff = np.repeat(np.clip(DIFF_GAIN * diff - 1, -1, 1)[..., None], 3, -1)
  cells = [normals[:n, ..., :3], grey(target_masks[:n]), images[:n, ..., :3],
           grey(images[:n, ..., MASK_CHANNEL] > 0), diff]
  return images_lib.image_grid(np.stack(cells, 1).reshape(-1, *cells[0].shape[1:]), rows=n)


def export(result: DefectResult, out_dir: str | os.PathLike, names: Sequence[str],
           category: str = 'synthetic') -> list[pathlib.Path]:
  """Writes the results in MVTec AD layout under out_dir (a category folder, readable with
  `generators.mvtec.iter_mvtec(parent, name, 'test')`): test/<category>/<name>.png (RGB) and
  ground_truth/<category>/<name>_mask.png (the generated mask, 0 / 255). Returns the images."""
  out = pathlib.Path(out_dir)
  written = []
  for i, name in enumerate(names):
    path = out / 'test' / category / f'{name}.png'
    images_lib.save_image(str(path), result.images[i, ..., :MASK_CHANNEL])
    images_lib.save_image(str(out / 'ground_truth' / category / f'{name}_mask.png'),
                          np.where(result.generated_masks[i], 255, 0).astype(np.uint8))
    written.append(path)
  return written


# ----------------------------------------------------------------------------------------------
# The folder job (python -m inversion defects).


@dataclasses.dataclass
class Pairs:
  """Every (normal image, target mask) pair of a job, in order: pair k is named names[k]."""
  names: list[str]
  normal: list[int]              # index into the job's images
  mask_names: list[str]
  masks: np.ndarray              # bool [P, R, R]
  painted: Optional[np.ndarray]  # [P, R, R, 3]: random masks' own painted defects, or None


def job_pairs(normals: np.ndarray, model, *, masks=None, random_masks_per_image: int = 0,
              seed: int = 0) -> Pairs:
  """The pairs of a job: every mask of `masks` (a folder or files of PNGs, an MVTec AD category
  folder, or bool [M, R, R]) on every normal image, or `random_masks_per_image` procedural
  masks per image (image i's drawn from seed + i, so a rerun draws the same)."""
  if (masks is None) == (not random_masks_per_image):
    raise DefectError('give the target masks (--masks DIR) or a number of random masks per '
                      'image (--random-masks N), one of the two')
  res = model.resolution
  if random_masks_per_image:
    drawn = [random_masks(x, random_masks_per_image, seed + i) for i, x in enumerate(normals)]
    all_masks = np.concatenate([m for m, _ in drawn])
    painted = np.concatenate([p for _, p in drawn])
    normal = list(np.repeat(np.arange(len(normals)), random_masks_per_image))
    mask_names = [f'random_{i}_{j}' for i in range(len(normals))
                  for j in range(random_masks_per_image)]
  else:
    if isinstance(masks, (str, os.PathLike, list, tuple)):
      given, given_names = load_masks(masks, res)
    else:
      given = check_masks(masks, res)
      given_names = [f'mask_{j}' for j in range(len(given))]
    all_masks = np.tile(given, (len(normals), 1, 1))
    painted = None
    normal = list(np.repeat(np.arange(len(normals)), len(given)))
    mask_names = given_names * len(normals)
  width = max(3, len(str(len(all_masks) - 1)))
  return Pairs([f'{k:0{width}d}' for k in range(len(all_masks))], [int(i) for i in normal],
               mask_names, all_masks, painted)


@dataclasses.dataclass
class JobResult:
  """What `synthesize_folder` did."""
  out_dir: pathlib.Path
  names: list[str]               # every pair
  done: list[str]                # synthesised in this call
  skipped: list[str]             # finished before this call
  rows: list[dict]               # metrics.csv rows


def synthesize_folder(images, model, config, out_dir, *, masks=None, random_masks_per_image=0,
                      batch_size: int = 8, encoder=None, progress: bool = True,
                      checkpoint_every: Optional[int] = None, devices=None,
                      callback=None) -> JobResult:
  """`python -m inversion defects`: every pair of `job_pairs` through `synthesize`'s engine
  run, in batches, resumable like `inversion.jobs.invert_folder` (finished pairs are skipped,
  the running batch is checkpointed in _work/state.npz every checkpoint_every chunks).

  Writes, under out_dir (an MVTec AD category folder): test/<category>/<pair>.png and
  ground_truth/<category>/<pair>_mask.png (`export`), latents/<pair>.npz, pairs.csv (pair,
  normal image, mask), metrics.csv/json (per pair: iou, psnr_outside, defect_pixels,
  generated_pixels; mse / psnr / ssim are of the RGB against the target, the normal image with
  the pasted defect) and grid.png
  (`grid`). `callback` is called after every chunk (as `invert_folder`'s)."""
  from inversion import jobs  # pylint: disable=import-outside-toplevel
  from inversion import latents as latents_lib  # pylint: disable=import-outside-toplevel
  from inversion import report  # pylint: disable=import-outside-toplevel
  config = api.as_config(config)
  out = report.prepare_out_dir(out_dir)
  _check_model(model)
  res = model.resolution
  paths = images_lib.list_images(images)
  bad = images_lib.check_images(paths)
  if bad:
    raise images_lib.ImageError('cannot read normal image(s):\n' + '\n'.join(bad.values()))
  image_names = images_lib._unique_names(paths)  # pylint: disable=protected-access
  normals = np.stack([images_lib.load_image(p, res, MASK_CHANNEL + 1) for p in paths])
  pairs = job_pairs(normals, model, masks=masks, random_masks_per_image=random_masks_per_image,
                    seed=int(config.seed))
  with open(out / 'pairs.csv', 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['pair', 'normal', 'mask'])
    w.writerows(zip(pairs.names, [image_names[i] for i in pairs.normal], pairs.mask_names))
  inv = make_inverter(config, model, encoder)
  lat_dir, work = out / 'latents', out / '_work' / 'state.npz'
  skipped = [n for n in pairs.names if (lat_dir / f'{n}.npz').exists()]
  for n in skipped:
    latents_lib.load_latents(lat_dir / f'{n}.npz', inv.generator_id)
  finished = set(skipped)
  todo = [k for k, n in enumerate(pairs.names) if n not in finished]
  batch_size = max(1, min(batch_size, len(pairs.names)))
  meta_base = {'generator_id': inv.generator_id, 'config': inv.config.to_json(),
               'batch_size': batch_size, 'init': None}
  batches, resume = jobs.plan_batches(todo, pairs.names, work, meta_base, batch_size)
  # Random masks stitch their own painted defects unless a defect source is named.
  own = (pairs.painted is not None and config.defect.mode == 'stitch'
         and not config.defect.source)
  bank = default_bank(inv.config, model) if batches and not own else None
  base_key = jax.random.PRNGKey(int(config.seed))
  done = []
  for bi, idx in enumerate(batches):
    padded = idx + [idx[-1]] * (batch_size - len(idx))
    x = normals[[pairs.normal[k] for k in padded]]
    m = pairs.masks[padded]
    sources = pairs.painted[padded] if own else bank
    state, data = start(inv, model, x, m, api.image_keys(base_key, batch_size, padded), sources)
    names = [pairs.names[k] for k in padded]
    state, curves, data = jobs.run_batch(
        inv, state, data, work, {**meta_base, 'names': [pairs.names[k] for k in idx]},
        resume if bi == 0 else None, int(checkpoint_every or config.checkpoint_every),
        devices=devices, progress=progress, callback=callback, names=names,
        desc=f'defects batch {bi + 1}/{len(batches)}')
    result = finish(inv, state, curves, data, x, m, names)
    export(result, out, names[:len(idx)], config.defect.category)
    for i, name in enumerate(names[:len(idx)]):
      latents_lib.save_latents(lat_dir / f'{name}.npz', result.inversion, i, model)
    done += names[:len(idx)]
    if work.exists():
      work.unlink()
  rows = _summarise_job(out, pairs, image_names, normals, config, inv)
  return JobResult(out, pairs.names, done, skipped, rows)


def _summarise_job(out: pathlib.Path, pairs: Pairs, image_names, normals, config, inv
                   ) -> list[dict]:
  """metrics.csv/json and grid.png over every finished pair."""
  from inversion import latents as latents_lib  # pylint: disable=import-outside-toplevel
  from inversion import report  # pylint: disable=import-outside-toplevel
  rows, shown = [], []
  for k, name in enumerate(pairs.names):
    f = out / 'latents' / f'{name}.npz'
    if not f.exists():
      continue
    rec = latents_lib.load_latents(f)
    rows.append({'name': name, 'normal': image_names[pairs.normal[k]],
                 'mask': pairs.mask_names[k], **rec.metrics, 'status': rec.status})
    if len(shown) < report.MAX_GRID_ROWS:
      shown.append(k)
  if not rows:
    return rows
  report.write_metrics(out, rows, {'generator_id': inv.generator_id, 'space': inv.spec.space,
                                   'steps': inv.spec.num_steps, 'config': inv.config.to_dict()})
  res, cat = normals.shape[1], config.defect.category
  images = []
  for k in shown:
    rgb = images_lib.load_image(str(out / 'test' / cat / f'{pairs.names[k]}.png'), res, 3)
    mask = images_lib.read_grey(out / 'ground_truth' / cat / f'{pairs.names[k]}_mask.png')
    images.append(np.concatenate([rgb, np.where(mask > 0.5, 1.0, -1.0)[..., None]], -1))
  images_lib.save_image(str(out / 'grid.png'), grid(
      normals[[pairs.normal[k] for k in shown]], pairs.masks[shown], np.stack(images)))
  return rows
