"""Procedural surface defects with exact masks, for the 4-channel (image + mask) generator.

Four kinds of defect are painted on texture crops (``generators/data.py``), each returned with the
binary mask of the pixels it covers:

    scratch  a thin bright or dark polyline of 1-3 straight segments;
    crack    a dark, 1-pixel wide random walk that forks into a few branches;
    hole     a dark, roughly circular blob (darker towards its centre) with a bright rim;
    stain    a smooth, low-frequency blob that tints (rust, oil, water, ...) the texture.

Recipe. Sizes are fractions of the crop side S (numbers in brackets are for S = 64); every range
below is sampled uniformly per defect, and the kind is drawn with ``KIND_PROBS``. Each defect is a
coverage ``alpha`` in [0, 1] and an appearance ``target`` (uint8-valued RGB), composited as
``image = (1 - alpha) * crop + alpha * target``. Lines are drawn at ``SUPERSAMPLE`` x the
resolution and box-averaged, discs get an analytic anti-aliased edge, stains a smoothstep edge.
The mask is ``alpha >= MASK_ALPHA * opacity`` (plus, for lines, their 1x raster so that thin
lines stay connected). Pixels outside the mask change only in the soft edge band next to it: at
most 2 px for lines, 0 for holes, 4 px for stains (at S = 64).

Mask channel. ``defect_dataset`` returns uint8 [N, H, W, 4] images: RGB and, as channel 3, the
mask as 0 (no defect) / 255 (defect); defect-free crops have an all-zero mask. The usual
``data.to_model_range`` therefore maps the mask channel {0, 1} -> {-1, +1} like the colours, and a
generated mask is read back with ``model_to_mask(x) = x > 0``. Channel 3 is *not* alpha: don't
save these arrays as RGBA PNGs (see ``inversion.images.save_image``, which writes the mask apart).

Example:

    from generators import data, defects
    ds = defects.defect_dataset(20_000, size=64, defect_fraction=0.5, seed=0)
    ds.images.shape, ds.kinds[:4]      # (20000, 64, 64, 4) uint8, e.g. [-1, 2, 0, -1]
    x = data.to_model_range(ds.images) # RGB in [-1, 1], mask channel in {-1, +1}
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image, ImageDraw

from generators import data

KINDS = ("scratch", "crack", "hole", "stain")
# Probability of each kind (same order as KINDS) for a defective crop.
KIND_PROBS = (0.3, 0.25, 0.2, 0.25)
# Fraction of defect-free crops that receive one defect in ``defect_dataset``.
DEFECT_FRACTION = 0.5
# Thin shapes are rasterised at this many times the crop resolution, then box-averaged.
SUPERSAMPLE = 4
# A pixel is in the mask where the coverage is at least this fraction of the defect's opacity.
MASK_ALPHA = 0.5

# Scratch: polyline through the crop.
SCRATCH_SEGMENTS = (1, 3)          # number of straight segments (inclusive)
SCRATCH_LENGTH = (0.3, 0.9)        # total length, fraction of S [19-58 px]
SCRATCH_TURN = 35.0                # max direction change between segments, degrees
SCRATCH_WIDTH = (1.0, 2.0)         # line width in pixels at S = 64 (scaled with S)
SCRATCH_BRIGHT_PROB = 0.5          # bright (metal showing through) vs dark (groove)
SCRATCH_BRIGHT = (200, 255)        # grey value of a bright scratch
SCRATCH_DARK = (0, 50)             # grey value of a dark scratch
SCRATCH_OPACITY = (0.7, 1.0)

# Crack: branching random walk.
CRACK_LENGTH = (0.6, 1.4)          # trunk length, fraction of S [38-90 px], 1 px steps
CRACK_TURN_STD = 0.25              # radians, random change of heading per pixel step...
CRACK_MOMENTUM = 0.8               # ...smoothed: heading rate = m * rate + (1 - m) * noise
CRACK_BRANCH_PROB = 0.03           # per step probability of forking off a branch
CRACK_MAX_BRANCHES = 3
CRACK_BRANCH_ANGLE = (25.0, 70.0)  # degrees between a branch and its parent
CRACK_WIDTH = 1.0                  # pixels at S = 64 (scaled with S); branches are as wide
CRACK_DARKEN = (0.1, 0.35)         # crack value = this factor x the texture under it

# Hole: dark rough disc with a bright rim (both in the mask).
HOLE_RADIUS = (0.05, 0.15)         # radius of the dark disc, fraction of S [3-10 px]
HOLE_ROUGHNESS = 0.15              # relative amplitude of the boundary wobble (harmonics 2-4)
HOLE_ASPECT = (0.7, 1.0)           # minor / major axis
HOLE_CENTRE_VALUE = (0, 30)        # grey value at the centre; 1.6x that at the disc edge
HOLE_TEXTURE = 0.15                # fraction of the texture's contrast kept inside the hole
HOLE_RIM = 0.3                     # rim width, fraction of the radius (at least 1 px)
HOLE_RIM_GAIN = (40, 90)           # brightness added on the rim's inner edge, fading outwards

# Stain: smooth tinted blob.
STAIN_RADIUS = (0.15, 0.35)        # fraction of S [10-22 px]
STAIN_ROUGHNESS = 0.25             # relative amplitude of the boundary wobble (harmonics 2-4)
STAIN_ASPECT = (0.5, 1.0)          # minor / major axis
STAIN_EDGE = 0.3                   # width of the soft edge, fraction of the radius
STAIN_OPACITY = (0.6, 0.95)
STAIN_TINTS = (                    # target = texture x (R, G, B) multipliers + offset
    ((1.00, 0.60, 0.30), 0),       # rust
    ((0.40, 0.40, 0.48), 0),       # oil / soot
    ((0.55, 0.55, 0.55), 0),       # water (darkening)
    ((1.10, 0.95, 0.45), 0),       # yellow residue
    ((0.60, 0.60, 0.60), 110),     # bleach (brighter, washed out)
)

_MAX_TRIES = 20  # re-draws of a defect whose mask would be empty (e.g. a crack leaving the crop)


class DefectDataset(NamedTuple):
  """Training images for the 4-channel generator."""
  images: np.ndarray  # [N, H, W, 4] uint8: RGB, then the mask (0 = no defect, 255 = defect)
  kinds: np.ndarray   # [N] int8: index into KINDS, -1 for a defect-free crop
  photos: np.ndarray | None = None  # [N] int: index into data.SOURCES; None for given crops


def mask_to_model(mask: np.ndarray) -> np.ndarray:
  """Binary mask -> model range: False -> -1, True -> +1 (float32)."""
  return np.where(np.asarray(mask, bool), np.float32(1), np.float32(-1))


def model_to_mask(x: np.ndarray) -> np.ndarray:
  """Mask channel in model range -> binary mask (threshold at 0)."""
  return np.asarray(x) > 0


# ----------------------------------------------------------------------------------------------
# Shapes: each returns (alpha [S, S] float32 in [0, 1], target [S, S, C] float32 0..255,
# core: None or bool [S, S] pixels that belong to the mask whatever their coverage).


def _uniform(rng, lo_hi):
  return float(rng.uniform(*lo_hi))


def _supersampled(size: int, draw_fn) -> tuple[np.ndarray, np.ndarray]:
  """Shapes drawn by ``draw_fn(ImageDraw, scale)``: (coverage [size, size] in [0, 1] from a
  ``SUPERSAMPLE`` x drawing, box-averaged; bool [size, size] raster of a 1x drawing, which keeps
  thin lines connected where their coverage dips below ``MASK_ALPHA``)."""
  big = Image.new("L", (size * SUPERSAMPLE, size * SUPERSAMPLE), 0)
  draw_fn(ImageDraw.Draw(big), SUPERSAMPLE)
  small = big.resize((size, size), Image.Resampling.BOX)
  raster = Image.new("L", (size, size), 0)
  draw_fn(ImageDraw.Draw(raster), 1)
  return np.asarray(small, np.float32) / 255, np.asarray(raster) > 0


def _polar_field(rng, size: int, radius: float, roughness: float,
                 aspect: tuple[float, float]) -> np.ndarray:
  """rho [size, size] at pixel centres: distance to a random centre divided by a rough,
  elliptical, randomly rotated boundary of mean radius ``radius`` (px); rho < 1 is inside."""
  centre = rng.uniform(0.2 * size, 0.8 * size, size=2)
  c = np.arange(size, dtype=np.float32) + 0.5
  dy = c[:, None] - centre[0]
  dx = c[None, :] - centre[1]
  theta = rng.uniform(0, np.pi)
  ar = rng.uniform(*aspect)
  u = dx * np.cos(theta) + dy * np.sin(theta)
  v = (-dx * np.sin(theta) + dy * np.cos(theta)) / ar
  r = np.sqrt(u * u + v * v)
  phi = np.arctan2(v, u)
  wobble = np.zeros_like(phi)
  for k in (2, 3, 4):
    wobble += rng.uniform(-1, 1) / k * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
  return r / (radius * (1 + roughness * wobble))


def _scratch(crop, rng):
  s = crop.shape[0]
  width = _uniform(rng, SCRATCH_WIDTH) * s / 64
  n_seg = int(rng.integers(SCRATCH_SEGMENTS[0], SCRATCH_SEGMENTS[1] + 1))
  seg_len = _uniform(rng, SCRATCH_LENGTH) * s / n_seg
  pts = [rng.uniform(0.2 * s, 0.8 * s, size=2)]
  heading = rng.uniform(0, 2 * np.pi)
  for _ in range(n_seg):
    heading += np.deg2rad(rng.uniform(-SCRATCH_TURN, SCRATCH_TURN))
    pts.append(pts[-1] + seg_len * np.array([np.cos(heading), np.sin(heading)]))
  # Centre the polyline on its start point so that it stays mostly inside the crop.
  pts = np.array(pts) - (np.array(pts).mean(0) - pts[0])

  def draw(d, k):
    xy = [(float(x) * k, float(y) * k) for x, y in pts]
    d.line(xy, fill=255, width=max(1, int(round(width * k))), joint="curve")

  alpha, core = _supersampled(s, draw)
  alpha *= _uniform(rng, SCRATCH_OPACITY)
  value = _uniform(rng, SCRATCH_BRIGHT if rng.uniform() < SCRATCH_BRIGHT_PROB else SCRATCH_DARK)
  target = np.full(crop.shape, value, np.float32)
  return alpha, target, core


def _crack(crop, rng):
  s = crop.shape[0]
  width = CRACK_WIDTH * s / 64
  segments = []  # polylines in crop pixels

  def walk(start, heading, n_steps, depth):
    pts, p, rate = [start], np.array(start, np.float64), 0.0
    for step in range(n_steps):
      rate = CRACK_MOMENTUM * rate + (1 - CRACK_MOMENTUM) * rng.normal(0, CRACK_TURN_STD)
      heading += rate
      p = p + np.array([np.cos(heading), np.sin(heading)])
      pts.append(p.copy())
      if not (-2 <= p[0] <= s + 2 and -2 <= p[1] <= s + 2):
        break
      if (depth == 0 and len(segments) < CRACK_MAX_BRANCHES and rng.uniform() < CRACK_BRANCH_PROB):
        side = rng.choice([-1.0, 1.0])
        fork = heading + side * np.deg2rad(rng.uniform(*CRACK_BRANCH_ANGLE))
        walk(p.copy(), fork, (n_steps - step) // 2, depth + 1)
    segments.append(pts)

  walk(rng.uniform(0.25 * s, 0.75 * s, size=2), rng.uniform(0, 2 * np.pi),
       int(_uniform(rng, CRACK_LENGTH) * s), 0)

  def draw(d, k):
    for pts in segments:
      if len(pts) > 1:
        d.line([(float(x) * k, float(y) * k) for x, y in pts], fill=255,
               width=max(1, int(round(width * k))), joint="curve")

  alpha, core = _supersampled(s, draw)
  target = crop.astype(np.float32) * _uniform(rng, CRACK_DARKEN)
  return alpha, target, core


def _hole(crop, rng):
  s = crop.shape[0]
  radius = _uniform(rng, HOLE_RADIUS) * s
  rim = max(HOLE_RIM, 1.0 / radius)  # rim width in units of the radius, >= 1 px
  rho = _polar_field(rng, s, radius, HOLE_ROUGHNESS, HOLE_ASPECT)
  # Anti-aliased coverage: (1 + rim - rho) * radius is roughly the distance (px) to the edge.
  alpha = np.clip((1 + rim - rho) * radius + 0.5, 0, 1).astype(np.float32)
  # 1. dark interior, darker towards the centre, keeping a little of the texture's contrast.
  crop_f = crop.astype(np.float32)
  centre_value = _uniform(rng, HOLE_CENTRE_VALUE)
  floor = centre_value * (1 + 0.6 * np.minimum(rho, 1) ** 2)
  interior = floor[..., None] + HOLE_TEXTURE * (crop_f - crop_f.mean())
  # 2. bright rim, fading outwards.
  fade = np.clip(1 - (rho - 1) / rim, 0, 1)
  rim_value = crop_f + _uniform(rng, HOLE_RIM_GAIN) * fade[..., None]
  target = np.where((rho < 1)[..., None], interior, rim_value)
  return alpha, np.clip(target, 0, 255), None


def _stain(crop, rng):
  s = crop.shape[0]
  radius = _uniform(rng, STAIN_RADIUS) * s
  rho = _polar_field(rng, s, radius, STAIN_ROUGHNESS, STAIN_ASPECT)
  t = np.clip((1 - rho) / STAIN_EDGE, 0, 1)
  alpha = (t * t * (3 - 2 * t)) * _uniform(rng, STAIN_OPACITY)  # smoothstep edge
  mult, offset = STAIN_TINTS[int(rng.integers(len(STAIN_TINTS)))]
  mult = np.asarray(mult, np.float32)
  if crop.shape[-1] != 3:
    mult = mult.mean(keepdims=True)
  target = crop.astype(np.float32) * mult + offset
  return alpha.astype(np.float32), np.clip(target, 0, 255), None


_PAINTERS = {"scratch": _scratch, "crack": _crack, "hole": _hole, "stain": _stain}
_OPACITY = {"scratch": SCRATCH_OPACITY, "crack": (1.0, 1.0), "hole": (1.0, 1.0),
            "stain": STAIN_OPACITY}


def add_defect(crop: np.ndarray, kind: str, rng: np.random.Generator | int
               ) -> tuple[np.ndarray, np.ndarray]:
  """Paint one defect of ``kind`` on a crop.

  Args:
    crop: uint8 [H, W, C] texture crop, H == W, C in {1, 3}.
    kind: one of ``KINDS``.
    rng: a ``numpy.random.Generator`` (consumed) or an int seed.

  Returns:
    (image, mask): the painted uint8 [H, W, C] crop and the defect's bool [H, W] mask (never
    empty); pixels outside the mask are unchanged except in a soft edge band next to it.
  """
  if kind not in _PAINTERS:
    raise ValueError(f"unknown defect kind {kind!r}; choose from {KINDS}")
  crop = np.asarray(crop)
  if crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[0] != crop.shape[1]:
    raise ValueError(f"crop must be uint8 [S, S, C], got {crop.dtype} {crop.shape}")
  rng = np.random.default_rng(rng)
  for _ in range(_MAX_TRIES):
    alpha, target, core = _PAINTERS[kind](crop, rng)
    peak = float(alpha.max())
    if peak > 0:
      mask = alpha >= MASK_ALPHA * peak
      if core is not None:  # thin lines: keep the mask connected
        mask |= core & (alpha > 0)
      if mask.any():
        break
  else:
    raise RuntimeError(f"could not place a {kind} defect on a {crop.shape} crop")
  out = (1 - alpha[..., None]) * crop.astype(np.float32) + alpha[..., None] * target
  return np.clip(np.rint(out), 0, 255).astype(np.uint8), mask


def add_defects(crops: np.ndarray, kinds: Sequence[str | None], rng: np.random.Generator | int
                ) -> tuple[np.ndarray, np.ndarray]:
  """Batch ``add_defect``: crops uint8 [N, H, W, C], one kind (or None = leave as is) per crop.

  Returns (images uint8 [N, H, W, C], masks bool [N, H, W]); masks of untouched crops are zero.
  """
  if len(kinds) != len(crops):
    raise ValueError(f"got {len(kinds)} kinds for {len(crops)} crops")
  rng = np.random.default_rng(rng)
  images = np.array(crops, np.uint8, copy=True)
  masks = np.zeros(images.shape[:3], bool)
  for i, kind in enumerate(kinds):
    if kind is not None:
      images[i], masks[i] = add_defect(images[i], kind, rng)
  return images, masks


def _draw_kinds(n: int, defect_fraction: float, kinds: Sequence[str],
                kind_probs: Sequence[float] | None, rng: np.random.Generator) -> np.ndarray:
  """Per-crop kind index into KINDS (-1 = defect-free): exactly round(fraction * n) defective."""
  if not 0 <= defect_fraction <= 1:
    raise ValueError(f"defect_fraction must be in [0, 1], got {defect_fraction}")
  for k in kinds:
    if k not in KINDS:
      raise ValueError(f"unknown defect kind {k!r}; choose from {KINDS}")
  if kind_probs is None:
    kind_probs = [KIND_PROBS[KINDS.index(k)] for k in kinds]
  p = np.asarray(kind_probs, np.float64)
  if p.shape != (len(kinds),) or (p < 0).any() or p.sum() <= 0:
    raise ValueError(f"kind_probs must be {len(kinds)} non-negative weights, got {kind_probs}")
  labels = np.full(n, -1, np.int8)
  defective = rng.permutation(n)[:int(round(defect_fraction * n))]
  choice = rng.choice(len(kinds), size=len(defective), p=p / p.sum())
  labels[defective] = [KINDS.index(kinds[c]) for c in choice]
  return labels


def with_defects(crops: np.ndarray, defect_fraction: float = DEFECT_FRACTION,
                 kinds: Sequence[str] = KINDS, kind_probs: Sequence[float] | None = None,
                 seed: int | np.random.Generator = 0) -> DefectDataset:
  """4-channel images from given crops (e.g. ``data.heldout_crops()``): a random
  ``defect_fraction`` of them get one defect; see ``defect_dataset``."""
  crops = np.asarray(crops)
  if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[-1] != 3:
    raise ValueError(f"crops must be uint8 [N, H, W, 3], got {crops.dtype} {crops.shape}")
  rng = np.random.default_rng(seed)
  labels = _draw_kinds(len(crops), defect_fraction, kinds, kind_probs, rng)
  images, masks = add_defects(crops, [KINDS[k] if k >= 0 else None for k in labels], rng)
  return DefectDataset(np.concatenate([images, masks[..., None] * np.uint8(255)], -1), labels)


def defect_dataset(n: int, size: int = data.CROP_SIZE, defect_fraction: float = DEFECT_FRACTION,
                   kinds: Sequence[str] = KINDS, kind_probs: Sequence[float] | None = None,
                   seed: int | np.random.Generator = 0, rotations: str = "quarter"
                   ) -> DefectDataset:
  """Training set of the 4-channel (image + mask) generator.

  Crops come from ``data.crop_bank`` (training regions only, random flips/rotations); exactly
  ``round(defect_fraction * n)`` of them, chosen at random, get one defect whose kind is drawn
  from ``kinds`` with ``kind_probs`` (default: the matching ``KIND_PROBS``). Deterministic in
  ``seed``. Painting costs 0.15-0.35 ms per defect: 20k crops, half defective, take ~5 s.

  Args:
    n: number of images.
    size: crop side in pixels.
    defect_fraction: fraction of crops with a defect, in [0, 1].
    kinds: defect kinds to draw from (subset of ``KINDS``).
    kind_probs: relative weights of ``kinds``; None = the ``KIND_PROBS`` entries.
    seed: an int or a ``numpy.random.Generator`` (consumed).
    rotations: the crops' rotations (``data.QUARTER_TURNS``).

  Returns:
    ``DefectDataset(images uint8 [n, size, size, 4], kinds int8 [n], photos int [n])``: RGB +
    mask (0/255), the defect kinds and each crop's photo.
  """
  rng = np.random.default_rng(seed)
  coords = data.sample_coords(n, size, rng, rotations=rotations)
  labels = _draw_kinds(n, defect_fraction, kinds, kind_probs, rng)
  images = np.empty((n, size, size, 4), np.uint8)
  for start in range(0, n, data.CHUNK):  # bounded temporaries
    part = slice(start, start + data.CHUNK)
    crops = data.cut(data.CropCoords(*(a[part] for a in coords)), size)
    painted, masks = add_defects(crops, [KINDS[k] if k >= 0 else None for k in labels[part]], rng)
    images[part, ..., :3] = painted
    images[part, ..., 3] = masks * np.uint8(255)
  return DefectDataset(images, labels, coords.source)
