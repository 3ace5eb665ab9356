"""Loader for the MVTec AD anomaly-detection dataset, in the 4-channel (image + mask) format.

MVTec AD (Bergmann et al., CVPR 2019; https://www.mvtec.com/company/research/datasets/mvtec-ad,
CC BY-NC-SA 4.0, downloaded by the user) is laid out as

    <root>/<category>/train/good/000.png                      defect-free training images
    <root>/<category>/test/<defect>/000.png                   test images, <defect> = good | ...
    <root>/<category>/ground_truth/<defect>/000_mask.png      binary masks (none for "good")

This module returns the same format as ``generators.defects.defect_dataset``: uint8
[N, R, R, 4], RGB (grayscale categories such as grid/screw/zipper get R = G = B) and channel 3 the
defect mask as 0 / 255 (all zero for ``good``), so ``data.to_model_range`` maps it to [-1, 1].

Resizing. Images are centre-cropped to a square if needed (MVTec's are square) and resized to
``resolution`` by area averaging (PIL's BOX filter: each output pixel is the mean of the input
area it covers). Masks are area-averaged the same way and thresholded at ``MASK_COVERAGE`` of the
output pixel's area; a defect that would vanish at low resolution keeps its best-covered pixel,
so a defective image never gets an empty mask. Both are logged once per call.

Example:

    from generators import mvtec
    train = mvtec.load_mvtec("/data/mvtec_ad", "carpet", "train", resolution=64)
    test = mvtec.load_mvtec("/data/mvtec_ad", "carpet", "test", resolution=64)
    test.images.shape, test.defects[:2]    # (117, 64, 64, 4), ['color', 'color']

Training the 4-channel generator on a category (``training_images``; the command is in the
README): the train split gives the defect-free images, the test split the defective ones with
their masks (MVTec's train split has none), so a model trained on both is no longer evaluated
fairly as an anomaly detector on that test split.
"""

from __future__ import annotations

import logging
import os
from typing import Iterator, NamedTuple, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from generators import data

log = logging.getLogger(__name__)

CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
              "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper")
TEXTURE_CATEGORIES = ("carpet", "grid", "leather", "tile", "wood")  # closest to our default domain
SPLITS = ("train", "test")
GOOD = "good"
# A resized mask pixel is "defect" when at least this fraction of its area was defect.
MASK_COVERAGE = 0.25
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_URL = "https://www.mvtec.com/company/research/datasets/mvtec-ad"


class MVTecError(ValueError):
  """An MVTec AD file exists but cannot be used (unreadable, wrong size, ...)."""


class MVTecSample(NamedTuple):
  image: np.ndarray  # [R, R, 4] uint8: RGB + mask (0 = good, 255 = defect)
  name: str          # "<defect>/<stem>", e.g. "crack/003"
  defect: str        # "good" or the defect type folder


class MVTecData(NamedTuple):
  images: np.ndarray  # [N, R, R, 4] uint8: RGB + mask (0 = good, 255 = defect)
  names: list[str]    # [N] "<defect>/<stem>"
  defects: list[str]  # [N] "good" or the defect type


def list_categories(root: str) -> list[str]:
  """Categories present under ``root`` (folders with a ``train`` or ``test`` subfolder)."""
  _check_root(root)
  return sorted(d for d in os.listdir(root)
                if any(os.path.isdir(os.path.join(root, d, s)) for s in SPLITS))


def _check_root(root: str) -> None:
  if not os.path.isdir(root):
    raise FileNotFoundError(f"MVTec AD root {root!r} is not a directory; pass the folder that "
                            f"contains bottle/, carpet/, ... (download: {_URL})")


def _category_dir(root: str, category: str) -> str:
  _check_root(root)
  path = os.path.join(root, category)
  if os.path.isdir(path):
    return path
  found = list_categories(root)
  if not found and any(os.path.isdir(os.path.join(root, s)) for s in SPLITS):
    hint = (f"{root!r} looks like a single category folder; pass its parent "
            f"{os.path.dirname(os.path.abspath(root))!r} as root and "
            f"{os.path.basename(os.path.abspath(root))!r} as category")
  elif not found:
    hint = (f"no category folders (with train/ or test/) found in {root!r}; expected "
            f"<root>/<category>/train/good/*.png (download: {_URL})")
  else:
    hint = f"categories found there: {', '.join(found)}"
  raise FileNotFoundError(f"MVTec AD category {category!r} not found in {root!r}: {hint}")


def _image_files(folder: str) -> list[str]:
  return sorted(f for f in os.listdir(folder)
                if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))


def _read(path: str, what: str) -> Image.Image:
  """Open and fully decode an image file, with errors that name the file."""
  if os.path.getsize(path) == 0:
    raise MVTecError(f"MVTec AD {what} {path!r} is empty (0 bytes); re-extract the archive")
  try:
    with Image.open(path) as f:
      f.load()
      im = f.copy()  # usable after the file is closed
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    raise MVTecError(f"cannot read MVTec AD {what} {path!r} ({e}); the file is corrupt or "
                     "truncated, re-extract the archive") from e
  if im.width == 0 or im.height == 0:
    raise MVTecError(f"MVTec AD {what} {path!r} has 0 pixels ({im.width}x{im.height})")
  return im


def _square(im: Image.Image) -> Image.Image:
  s = min(im.size)
  left, top = (im.width - s) // 2, (im.height - s) // 2
  return im.crop((left, top, left + s, top + s))


def _resize_mask(mask: np.ndarray, resolution: int) -> np.ndarray:
  """bool [H, W] -> bool [R, R]: area coverage >= MASK_COVERAGE; never empties a non-empty mask."""
  cover = Image.fromarray(mask.astype(np.float32)).resize((resolution, resolution),
                                                          Image.Resampling.BOX)
  cover = np.asarray(cover)
  small = cover >= MASK_COVERAGE
  if mask.any() and not small.any():
    small[np.unravel_index(np.argmax(cover), cover.shape)] = True
  return small


def iter_mvtec(root: str, category: str, split: str = "train", resolution: int = 64,
               defects: Sequence[str] | None = None) -> Iterator[MVTecSample]:
  """Yield the images of one category/split as ``MVTecSample``s (sorted by defect, then file).

  Args:
    root: the MVTec AD folder (contains ``bottle/``, ``carpet/``, ...).
    category: e.g. "carpet" (see ``CATEGORIES``; any folder present under root works).
    split: "train" (only ``good``) or "test".
    resolution: output side R in pixels (area-averaged).
    defects: defect folders to read (e.g. ["good", "crack"]); None = all of the split.

  Raises:
    FileNotFoundError: wrong root, unknown category/split folder, missing mask.
    MVTecError: an unreadable/corrupt/empty file, or a mask whose size differs from its image.
  """
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  if resolution < 1:
    raise ValueError(f"resolution must be >= 1, got {resolution}")
  cat_dir = _category_dir(root, category)
  split_dir = os.path.join(cat_dir, split)
  if not os.path.isdir(split_dir):
    raise FileNotFoundError(f"MVTec AD split folder {split_dir!r} does not exist; expected "
                            f"<root>/{category}/{split}/<defect>/*.png")
  available = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))
  if defects is None:
    defects = available
  missing = [d for d in defects if d not in available]
  if missing:
    raise ValueError(f"defect folders {missing} not in {split_dir!r}; available: {available}")
  logged = set()
  count = 0
  for defect in defects:
    folder = os.path.join(split_dir, defect)
    for fname in _image_files(folder):
      path = os.path.join(folder, fname)
      im = _read(path, "image")
      size = im.size
      if im.mode != "RGB":
        if ("mode", im.mode) not in logged:
          logged.add(("mode", im.mode))
          log.info("MVTec AD %s/%s: converting %s images to RGB (grey -> R = G = B)",
                   category, split, im.mode)
        im = im.convert("RGB")
      if im.width != im.height and "crop" not in logged:
        logged.add("crop")
        log.info("MVTec AD %s/%s: centre-cropping non-square images (first: %s, %dx%d)",
                 category, split, path, im.width, im.height)
      if ("size", size) not in logged:
        logged.add(("size", size))
        log.info("MVTec AD %s/%s: resizing %dx%d images to %dx%d by area averaging "
                 "(masks: coverage >= %.2f)", category, split, size[0], size[1], resolution,
                 resolution, MASK_COVERAGE)
      rgb = np.asarray(_square(im).resize((resolution, resolution), Image.Resampling.BOX))
      if defect == GOOD:
        mask = np.zeros((resolution, resolution), bool)
      else:
        stem = os.path.splitext(fname)[0]
        mask_path = os.path.join(cat_dir, "ground_truth", defect, stem + "_mask.png")
        if not os.path.isfile(mask_path):
          raise FileNotFoundError(f"missing MVTec AD mask {mask_path!r} for test image {path!r}; "
                                  "every defective test image needs "
                                  "<root>/<category>/ground_truth/<defect>/<name>_mask.png")
        mask_im = _read(mask_path, "mask")
        if mask_im.size != size:
          raise MVTecError(f"MVTec AD mask {mask_path!r} is {mask_im.size[0]}x{mask_im.size[1]} "
                           f"but its image {path!r} is {size[0]}x{size[1]}")
        full = np.asarray(_square(mask_im.convert("L"))) >= 128
        mask = _resize_mask(full, resolution)
      image = np.concatenate([rgb, (mask * np.uint8(255))[..., None]], -1)
      count += 1
      yield MVTecSample(image, f"{defect}/{os.path.splitext(fname)[0]}", defect)
  if count == 0:
    raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under "
                            f"{split_dir!r} in folders {list(defects)}")


def load_mvtec(root: str, category: str, split: str = "train", resolution: int = 64,
               defects: Sequence[str] | None = None) -> MVTecData:
  """All images of one category/split stacked: ``MVTecData(images uint8 [N, R, R, 4], names,
  defects)``. Arguments and errors as ``iter_mvtec``."""
  samples = list(iter_mvtec(root, category, split, resolution, defects))
  return MVTecData(np.stack([s.image for s in samples]), [s.name for s in samples],
                   [s.defect for s in samples])


def training_images(root: str, category: str, resolution: int = 64,
                    splits: Sequence[str] = SPLITS, dihedral: bool | None = None) -> np.ndarray:
  """The training set of the 4-channel generator from one category: uint8 [N, R, R, 4].

  Every image of ``splits`` (train: ``good``; test: ``good`` and each defect with its mask),
  and with ``dihedral`` each also in its other 7 flips/rotations. ``dihedral=None`` turns them
  on for ``TEXTURE_CATEGORIES`` only: objects have orientation-dependent defects (metal_nut
  "flip", transistor "misplaced")."""
  for split in splits:
    if split not in SPLITS:
      raise ValueError(f"splits must be drawn from {SPLITS}, got {split!r}")
    if not os.path.isdir(os.path.join(_category_dir(root, category), split)):
      raise FileNotFoundError(
          f"MVTec AD {category} has no {split}/ folder under {root!r}; leave the split out "
          f"(--config.data.mvtec_splits={','.join(s for s in splits if s != split) or 'train'}) "
          "or restore the folder.")
  images = np.concatenate([load_mvtec(root, category, s, resolution).images for s in splits])
  if dihedral is None:
    dihedral = category in TEXTURE_CATEGORIES
  if dihedral:
    images = np.concatenate([data.dihedral(images, op) for op in range(data.NUM_OPS)])
  defective = int((images[..., 3] > 0).any(axis=(1, 2)).sum())
  if not defective:
    log.warning("MVTec AD %s (%s): no image has a defect, so the mask channel learns nothing; "
                "the test split holds the defective images", category, "+".join(splits))
  log.info("MVTec AD %s (%s): %d training images, %d with a defect%s", category,
           "+".join(splits), len(images), defective,
           ", each in its 8 flips/rotations" if dihedral else "")
  return images
