"""Training data of the embedded default generator: texture crops from bundled photographs.

The embedded 64x64 StyleGAN2 is trained on random crops of three real photographs that ship
inside the scikit-image wheel (``skimage/data/*.png``; no download, no network):

    brick   ``skimage.data.brick()``   512x512 grey, brick wall     CC0, CC0Textures "Bricks25"
    grass   ``skimage.data.grass()``   512x512 grey, lawn close-up  CC0, DeviantArt "Grass-01"
    gravel  ``skimage.data.gravel()``  512x512 grey, loose gravel   CC0, CC0Textures "Gravel04"

Domain choice. All three are stationary, fronto-parallel, evenly lit photos of textured surfaces
at a similar scale, which is what MVTec AD's texture categories (carpet, grid, leather, tile, wood)
look like, and a stationary texture lets a small generator see every part of the distribution in
every crop. The other images bundled in the wheel were checked and left out:

    moon                 mostly flat with a few craters: the craters look exactly like our "hole"
                         defects, so defect-free training crops would contain defect-like blobs.
    coffee               the wood table (an MVTec-like texture) is only a thin, colour, partly
                         shaded border around a cup; too few clean crops and a different colour
                         statistics from the grayscale trio.
    immunohistochemistry a colour microscopy texture (tissue), a different domain and palette.
    cell, microaneurysms, retina, hubble_deep_field, coins, camera, astronaut, chelsea, rocket,
    horse, logo, page, text, clock_motion, color, chessboard_*, phantom, motorcycle_*:
                         objects/scenes, synthetic patterns or too small, not surface textures.

Colour. The model is RGB (+ a mask channel, see ``generators/defects.py``). The sources are
grayscale, so every crop has R = G = B (the grey value copied to the three channels). Only the
stain defects add colour.

Held-out region. Each photo is split into a training region and a held-out region that training
never sees: the right-most ``HELDOUT_FRACTION`` of the columns (a vertical strip: columns
[384, 512) of a 512-wide photo). ``crop_bank`` only samples crops that lie entirely in the training
region (columns [0, 384)); ``heldout_crops`` tiles the strip with non-overlapping crops (for a
512x512 photo and 64x64 crops: 8 rows x 2 columns = 16 crops per photo, 48 in all), used for the
evaluation metrics (SWD) and the demo images in ``examples/``.

Example:

    from generators import data
    bank = data.crop_bank(20_000, size=64, seed=0)          # uint8 [20000, 64, 64, 3]
    x = data.to_model_range(bank[:16])                      # float32 [16, 64, 64, 3] in [-1, 1]
    test = data.heldout_crops(size=64)                      # uint8 [48, 64, 64, 3]
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import numpy as np

# Source photos (names of loader functions in ``skimage.data``).
SOURCES = ("brick", "grass", "gravel")
# Held-out strip: the right-most fraction of each photo's columns (0.25 -> 128 of 512 columns).
HELDOUT_FRACTION = 0.25
# Crop side length of the embedded model.
CROP_SIZE = 64
# The 8 dihedral transforms: op = 4 * flip + k, i.e. optional left-right flip, then rot90 by k.
NUM_OPS = 8
# Rotations a crop may get, in quarter turns: "half" keeps a photo's horizontal and vertical
# axes where they were (brick courses stay vertical, as in the photo), "none" keeps its orientation.
QUARTER_TURNS = {"quarter": (0, 1, 2, 3), "half": (0, 2), "none": (0,)}
# Crops are cut in chunks of this many to bound temporary memory (crop_bank, defect_dataset).
CHUNK = 4096


class Box(NamedTuple):
  """A pixel rectangle [y0, y1) x [x0, x1) of a source photo."""
  y0: int
  y1: int
  x0: int
  x1: int


class CropCoords(NamedTuple):
  """Where crops were cut: one entry per crop (all arrays have shape [N])."""
  source: np.ndarray  # [N] int, index into the ``sources`` tuple
  y: np.ndarray       # [N] int, top row of the crop in the source photo
  x: np.ndarray       # [N] int, left column of the crop in the source photo
  op: np.ndarray      # [N] int in [0, 8): 4 * flip + number of 90-degree rotations; 0 = identity


@functools.lru_cache(maxsize=None)
def load_source(name: str) -> np.ndarray:
  """One source photo as uint8 [H, W, 1] (grayscale; read-only, cached).

  Args:
    name: one of ``SOURCES`` (a ``skimage.data`` loader bundled in the wheel).
  """
  if name not in SOURCES:
    raise ValueError(f"unknown source photo {name!r}; choose from {SOURCES}")
  try:
    import skimage.data
  except ImportError as e:  # scikit-image is an optional dependency ("data" extra)
    raise ImportError("the training photos come from scikit-image: "
                      "pip install 'stylegan-inversion-jax[data]'") from e
  img = np.asarray(getattr(skimage.data, name)())
  if img.dtype != np.uint8 or img.ndim != 2:
    raise ValueError(f"skimage.data.{name}() returned {img.dtype} {img.shape}, "
                     "expected uint8 [H, W]")
  img = np.ascontiguousarray(img[:, :, None])
  img.flags.writeable = False
  return img


def regions(shape: Sequence[int]) -> tuple[Box, Box]:
  """(training box, held-out box) of a photo of shape [H, W, ...]: the held-out box is the
  right-most ``round(HELDOUT_FRACTION * W)`` columns, the training box is the rest."""
  h, w = int(shape[0]), int(shape[1])
  split = w - int(round(HELDOUT_FRACTION * w))
  return Box(0, h, 0, split), Box(0, h, split, w)


def dihedral(crops: np.ndarray, op: int) -> np.ndarray:
  """Dihedral transform ``op`` on [N, H, W, C] crops (left-right flip first, then rot90)."""
  if op >= 4:
    crops = crops[:, :, ::-1]
  return np.rot90(crops, k=op % 4, axes=(1, 2))


def sample_coords(n: int, size: int = CROP_SIZE, seed: int | np.random.Generator = 0,
                  sources: Sequence[str] = SOURCES, flips: bool = True,
                  rotations: str = "quarter", region: str = "train") -> CropCoords:
  """Random crop positions inside the training regions (see ``crop_bank``), or inside the
  held-out strips with ``region='heldout'`` (overlapping crops, for distribution metrics)."""
  if region not in ("train", "heldout"):
    raise ValueError(f"region must be 'train' or 'heldout', got {region!r}")
  if rotations not in QUARTER_TURNS:
    raise ValueError(f"rotations must be one of {', '.join(QUARTER_TURNS)}, got {rotations!r}")
  rng = np.random.default_rng(seed)
  source = rng.integers(len(sources), size=n)
  y = np.empty(n, np.int64)
  x = np.empty(n, np.int64)
  for i, name in enumerate(sources):
    box = regions(load_source(name).shape)[0 if region == "train" else 1]
    if box.y1 - box.y0 < size or box.x1 - box.x0 < size:
      raise ValueError(f"crop size {size} exceeds the {region} region {box} of {name!r}")
    sel = source == i
    y[sel] = rng.integers(box.y0, box.y1 - size + 1, size=sel.sum())
    x[sel] = rng.integers(box.x0, box.x1 - size + 1, size=sel.sum())
  op = np.asarray(QUARTER_TURNS[rotations], np.int64)[
      rng.integers(len(QUARTER_TURNS[rotations]), size=n)]
  if flips:
    op = op + 4 * rng.integers(2, size=n)
  return CropCoords(source, y, x, op)


def cut(coords: CropCoords, size: int = CROP_SIZE, sources: Sequence[str] = SOURCES,
        channels: int = 3) -> np.ndarray:
  """The crops at ``coords`` as uint8 [N, size, size, channels] (grey copied to R = G = B)."""
  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 (grey) or 3 (R = G = B), got {channels}")
  n = len(coords.source)
  out = np.empty((n, size, size, channels), np.uint8)
  for i, name in enumerate(sources):
    # A zero-copy view of every size x size window: [H-size+1, W-size+1, 1, size, size].
    windows = np.lib.stride_tricks.sliding_window_view(load_source(name), (size, size), axis=(0, 1))
    for op in range(NUM_OPS):
      idx = np.flatnonzero((coords.source == i) & (coords.op == op))
      for start in range(0, len(idx), CHUNK):
        part = idx[start:start + CHUNK]
        crops = windows[coords.y[part], coords.x[part]].transpose(0, 2, 3, 1)  # [n, s, s, 1]
        out[part] = dihedral(crops, op)  # broadcasts the grey channel to all output channels
  return out


def crop_bank(n: int, size: int = CROP_SIZE, seed: int | np.random.Generator = 0,
              sources: Sequence[str] = SOURCES, flips: bool = True, rotations: str = "quarter",
              channels: int = 3, return_coords: bool = False):
  """Random training crops with random flips and 90-degree rotations.

  Every crop lies entirely inside the training region of its photo (never in the held-out strip).
  Sources are drawn uniformly, positions uniformly over the training region, and each of the
  enabled dihedral transforms uniformly. The same ``seed`` gives the same bank. A bank of 20k
  64x64 crops takes about a second and 246 MB (uint8).

  Args:
    n: number of crops.
    size: crop side in pixels (64 for the embedded model).
    seed: an int or a ``numpy.random.Generator`` (consumed) for positions and transforms.
    sources: names of the source photos (subset of ``SOURCES``).
    flips: random left-right flips (with ``rotations`` gives all 8 dihedral transforms).
    rotations: random rotations by multiples of 90 degrees ("quarter"), of 180 ("half"), or
      none ("none"); see ``QUARTER_TURNS``.
    channels: 3 (R = G = B, the model's format) or 1 (grey, a third of the memory).
    return_coords: also return the ``CropCoords`` the crops were cut at.

  Returns:
    uint8 [n, size, size, channels], or (crops, coords) when ``return_coords``.
  """
  coords = sample_coords(n, size, seed, sources, flips, rotations)
  crops = cut(coords, size, sources, channels)
  return (crops, coords) if return_coords else crops


def heldout_coords(size: int = CROP_SIZE, sources: Sequence[str] = SOURCES) -> CropCoords:
  """Positions of the non-overlapping held-out crops: each photo's held-out strip tiled
  row-major from its top-left corner (leftover border pixels unused), untransformed."""
  src, ys, xs = [], [], []
  for i, name in enumerate(sources):
    _, held = regions(load_source(name).shape)
    gy = np.arange(held.y0, held.y1 - size + 1, size)
    gx = np.arange(held.x0, held.x1 - size + 1, size)
    if not len(gy) or not len(gx):
      raise ValueError(f"crop size {size} exceeds the held-out strip {held} of {name!r}")
    yy, xx = np.meshgrid(gy, gx, indexing="ij")
    ys.append(yy.ravel())
    xs.append(xx.ravel())
    src.append(np.full(yy.size, i))
  src, ys, xs = (np.concatenate(a).astype(np.int64) for a in (src, ys, xs))
  return CropCoords(src, ys, xs, np.zeros_like(src))


def heldout_crops(size: int = CROP_SIZE, sources: Sequence[str] = SOURCES, channels: int = 3,
                  return_coords: bool = False):
  """Deterministic, non-overlapping crops of the held-out strips (never seen in training).

  Ordered by source, then row-major inside the strip: with the defaults 16 crops per photo
  (8 rows x 2 columns), 48 in all, as uint8 [48, 64, 64, 3].
  """
  coords = heldout_coords(size, sources)
  crops = cut(coords, size, sources, channels)
  return (crops, coords) if return_coords else crops


def to_model_range(x: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] -> float32 [-1, 1] (0 -> -1, 255 -> +1; a 0/255 mask channel -> -1/+1)."""
  x = np.asarray(x)
  if x.dtype != np.uint8:
    raise ValueError(f"to_model_range expects uint8, got {x.dtype}")
  return x.astype(np.float32) * np.float32(2 / 255) - np.float32(1)


def to_uint8(x: np.ndarray) -> np.ndarray:
  """float [-1, 1] -> uint8 [0, 255], rounded; values outside [-1, 1] are clipped."""
  x = np.asarray(x, np.float32)
  return np.clip(np.rint((x + 1) * 127.5), 0, 255).astype(np.uint8)
