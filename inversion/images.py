"""Reading user images for inversion, and writing results.

``load_image`` turns any PNG / JPEG / WebP / TIFF (or BMP, GIF, PNM) file, of any PIL mode and
any size, into what a generator consumes: float32 [R, R, C] in [-1, 1], NHWC, C = the generator's
channel count (1, 3 or 4). The steps, each logged once per run per kind of conversion (the
first file it happened to is named):

  1. decode: EXIF orientation applied; the first frame of a multi-frame file; the mode mapped to
     grey or RGB in [0, 1]:
       1 (bilevel)          -> grey, 0 / 1
       L, RGB               -> value / 255
       P, PA (palette)      -> palette expanded to RGB, or RGBA when it has transparency
       LA, RGBA, PA, La, RGBa -> composited on black: colour x alpha (transparent -> black;
                               alpha 255 gives exactly the colour; alpha is never the mask)
       I;16, I;16B, I;16L   -> value / 65535 (16-bit: 65535 -> 1)
       I (32-bit int)       -> value / 65535 when all values are in [0, 65535] (how 16-bit PNG
                               and TIFF often decode), else min-max rescaled (logged)
       F (32-bit float)     -> as is when in [0, 1]; value / 255 when in [0, 255]; else min-max
                               rescaled (logged); NaN / inf is an error
       CMYK, YCbCr, LAB, HSV -> PIL's conversion to RGB (naive CMYK, no ICC colour management)
  2. centre crop to a square (the longer side loses (long - short) // 2 pixels at its start);
  3. area (box) resize to R x R: each output pixel is the exact mean of the input area it covers
     (fractional overlaps weighted), computed in float32 (16-bit precision is kept); upscaling
     with a box is pixel replication, so it is logged as a warning;
  4. channels: RGB -> grey by ITU-R BT.601 luma (0.299 R + 0.587 G + 0.114 B) for C = 1; grey ->
     R = G = B for C = 3; for C = 4 (image + defect mask generators) the RGB image plus a 4th
     channel that is -1 everywhere ("no defect") unless a ``mask`` is given: then +1 where the
     resized mask covers at least ``MASK_COVERAGE`` of a pixel (the rule of ``generators.mvtec``);
  5. map [0, 1] -> [-1, 1].

Bad inputs raise ``ImageError`` (a ``ValueError``) naming the file and the fix: missing, empty,
corrupt or truncated files, unsupported formats, 0-pixel images, folders with no images.

Example:

    from inversion import images
    x, names = images.load_images("examples/", resolution=64, channels=3)  # [6, 64, 64, 3]
    images.save_image("out/grid.png", images.image_grid([x, x_rec], rows=2))
"""

from __future__ import annotations

import logging
import os
import re
import struct
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from generators.mvtec import MASK_COVERAGE

log = logging.getLogger(__name__)

CHANNELS = (1, 3, 4)
# Files a folder may hold for ``load_images`` (others are skipped and logged).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".jpe", ".webp", ".tif", ".tiff", ".bmp", ".gif",
                    ".ppm", ".pgm", ".pbm", ".pnm")
# ITU-R BT.601 luma weights (PIL's own RGB -> L) for RGB -> grey.
LUMA = (0.299, 0.587, 0.114)
# Colour painted over defect-mask pixels by ``image_grid`` (RGB in [0, 255]) and its opacity.
MASK_OVERLAY = ((255, 0, 0), 0.5)
# Magic bytes of image formats we recognise, to tell "corrupt" from "not an image we read".
_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"II*\x00": "TIFF",
               b"MM\x00*": "TIFF", b"GIF8": "GIF", b"BM": "BMP"}
_SUPPORTED = "PNG, JPEG, WebP, TIFF (also BMP, GIF, PNM)"
# Columns per chunk in ``area_resize``: bounds the float32 temporary of huge images.
_RESIZE_CHUNK = 512


class ImageError(ValueError):
  """An input image cannot be used; the message names the file and the fix."""


# ----------------------------------------------------------------------------------------------
# Logging each kind of conversion once per run.

_logged: set[str] = set()


def _log_once(kind: str, msg: str, *args, level: int = logging.INFO) -> None:
  if kind not in _logged:
    _logged.add(kind)
    log.log(level, msg, *args)


def reset_log_once() -> None:
  """Forget which conversions were logged (the next of each kind is logged again)."""
  _logged.clear()


# ----------------------------------------------------------------------------------------------
# Area resize (reference implementation: exact area weights, separable).


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] float32: overlap of output cell i = [i, i+1) * n_in / n_out with input pixel
  j = [j, j+1), divided by the cell's length (rows sum to 1)."""
  edges = np.arange(n_out + 1, dtype=np.float64) * (n_in / n_out)
  j = np.arange(n_in, dtype=np.float64)
  overlap = np.minimum(edges[1:, None], j + 1) - np.maximum(edges[:-1, None], j)
  return (np.clip(overlap, 0, None) * (n_out / n_in)).astype(np.float32)


def area_resize(x: np.ndarray, height: int, width: int | None = None) -> np.ndarray:
  """Area-average resize of [H, W, C] (any real dtype) to float32 [height, width, C].

  Each output pixel is the mean of the input rectangle it covers, fractional pixels weighted by
  their overlap; for integer factors this is the mean of each block. Values keep their units.
  """
  width = height if width is None else width
  h, w, c = x.shape
  wy = _area_weights(h, height)                       # [height, H]
  wx = _area_weights(w, width)                        # [width, W]
  cols = np.empty((height, w, c), np.float32)
  for start in range(0, w, _RESIZE_CHUNK):            # 1. along H, a band of columns at a time
    band = x[:, start:start + _RESIZE_CHUNK].astype(np.float32)
    cols[:, start:start + _RESIZE_CHUNK] = np.einsum("yh,hwc->ywc", wy, band)
  return np.einsum("xw,ywc->yxc", wx, cols)           # 2. along W


def center_crop(x: np.ndarray) -> np.ndarray:
  """Centre square crop of [H, W, ...]: side min(H, W), offset (long - short) // 2."""
  h, w = x.shape[:2]
  s = min(h, w)
  top, left = (h - s) // 2, (w - s) // 2
  return x[top:top + s, left:left + s]


# ----------------------------------------------------------------------------------------------
# Decoding.


def _header_size(head: bytes) -> tuple[int, int] | None:
  """(width, height) from the first bytes of a PNG, GIF, BMP or PNM file; None otherwise."""
  if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) >= 24:
    return struct.unpack(">II", head[16:24])
  if head.startswith(b"GIF8") and len(head) >= 10:
    return struct.unpack("<HH", head[6:10])
  if head.startswith(b"BM") and len(head) >= 26:
    w, h = struct.unpack("<ii", head[18:26])
    return abs(w), abs(h)
  m = re.match(rb"P[1-6](?:\s+|#[^\n]*\n)+(\d+)(?:\s+|#[^\n]*\n)+(\d+)", head)
  return (int(m[1]), int(m[2])) if m else None


def _open(path: str) -> Image.Image:
  """Open and fully decode ``path``; every failure becomes an ImageError naming the file."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise ImageError(f"{path}: no such file; check the path")
  if os.path.isdir(path):
    raise ImageError(f"{path} is a directory; use load_images() for a folder of images")
  if os.path.getsize(path) == 0:
    raise ImageError(f"{path} is empty (0 bytes); re-export or re-download the image")
  with open(path, "rb") as f:
    head = f.read(64)
  known = next((fmt for sig, fmt in _SIGNATURES.items() if head.startswith(sig)), None)
  if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
    known = "WebP"
  size = _header_size(head)
  if size is not None and 0 in size:  # PIL refuses these with an unhelpful message
    raise ImageError(f"{path} has 0 pixels ({size[0]}x{size[1]} in its header); re-export the "
                     "image")
  try:
    im = Image.open(path)
  except UnidentifiedImageError as e:
    if known:
      raise ImageError(f"{path} looks like a {known} file but is corrupt ({e}); re-export or "
                       "re-download it") from e
    raise ImageError(f"{path}: unsupported or unrecognised image format; supported: "
                     f"{_SUPPORTED}; convert it to PNG") from e
  except Image.DecompressionBombError as e:
    raise ImageError(f"{path} is too large to decode safely ({e}); downscale it first, or "
                     "raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file") from e
  except OSError as e:
    raise ImageError(f"{path} is corrupt or truncated ({e}); re-export or re-download it") from e
  try:
    if im.width == 0 or im.height == 0:
      raise ImageError(f"{path} has 0 pixels ({im.width}x{im.height}); re-export the image")
    im.load()
  except Image.DecompressionBombError as e:
    im.close()
    raise ImageError(f"{path} is too large to decode safely ({e}); downscale it first") from e
  except (OSError, SyntaxError, ValueError, EOFError) as e:
    im.close()
    if isinstance(e, ImageError):
      raise
    raise ImageError(f"{path} is corrupt or truncated ({e}); re-export or re-download it") from e
  return im


def _decode(im: Image.Image, path: str) -> tuple[np.ndarray, float, float]:
  """PIL image -> (raw array [H, W, 1 | 3], offset, scale): (raw - offset) * scale is in [0, 1]."""
  name = os.path.basename(path)
  if getattr(im, "n_frames", 1) > 1:
    _log_once("frames", "%s has %d frames; using the first", name, im.n_frames)
  if im.getexif().get(0x0112, 1) != 1:  # EXIF orientation tag
    _log_once("exif", "applied the EXIF orientation of %s (and of later files)", name)
    im = ImageOps.exif_transpose(im)
  mode = im.mode
  if mode in ("P", "PA"):
    target = "RGBA" if (mode == "PA" or "transparency" in im.info) else "RGB"
    _log_once(f"palette-{target}", "expanded palette (%s) images to %s (first: %s)", mode,
              target, name)
    im, mode = im.convert(target), target
  if mode in ("LA", "La", "RGBA", "RGBa"):
    colour = "L" if mode[0] == "L" else "RGB"
    _log_once(f"alpha-{mode}", "converted %s->%s by compositing on black (colour x alpha; "
              "alpha is not used as a mask) (first: %s)", mode, colour, name)
    premultiplied = np.asarray(im.convert("La" if colour == "L" else "RGBa"))
    return premultiplied[..., :-1], 0.0, 1 / 255
  if mode == "1":
    _log_once("bilevel", "converted 1-bit images to grey 0 / 1 (first: %s)", name)
    return np.asarray(im)[..., None], 0.0, 1.0
  if mode in ("L", "RGB"):
    x = np.asarray(im)
    return (x[..., None] if x.ndim == 2 else x), 0.0, 1 / 255
  if mode.startswith("I;16"):
    _log_once("16bit", "scaled 16-bit (%s) images by 1/65535 (first: %s)", mode, name)
    return np.asarray(im).astype(np.uint16)[..., None], 0.0, 1 / 65535
  if mode in ("I", "F"):
    x = np.asarray(im)
    if not np.isfinite(x).all():
      raise ImageError(f"{path} ({mode} mode) contains NaN or infinite values; fix the file")
    lo, hi = float(x.min()), float(x.max())
    if mode == "I" and lo >= 0 and hi <= 65535:
      _log_once("int32", "treated 32-bit integer (I) images as 16-bit: scaled by 1/65535 "
                "(first: %s)", name)
      return x[..., None], 0.0, 1 / 65535
    if mode == "F" and lo >= 0 and hi <= 1:
      _log_once("float01", "used float (F) images as values in [0, 1] (first: %s)", name)
      return x[..., None], 0.0, 1.0
    if mode == "F" and lo >= 0 and hi <= 255:
      _log_once("float255", "scaled float (F) images with values in [0, 255] by 1/255 "
                "(first: %s)", name)
      return x[..., None], 0.0, 1 / 255
    # Unknown range: min-max rescaled, logged for every file since it depends on the content.
    log.warning("%s: %s values in [%g, %g] are outside the standard ranges; rescaled min-max "
                "to [0, 1]", name, mode, lo, hi)
    return x[..., None], lo, (1 / (hi - lo) if hi > lo else 0.0)
  try:
    rgb = im.convert("RGB")
  except (ValueError, OSError) as e:
    raise ImageError(f"{path}: unsupported image mode {mode!r}; convert it to RGB PNG") from e
  _log_once(f"mode-{mode}", "converted %s->RGB with PIL%s (first: %s)", mode,
            " (naive CMYK, no ICC colour management)" if mode == "CMYK" else "", name)
  return np.asarray(rgb), 0.0, 1 / 255


def _read(path: str) -> tuple[np.ndarray, float, float]:
  """Step 1: file -> (raw [H, W, 1 | 3], offset, scale) with (raw - offset) * scale in [0, 1]."""
  with _open(path) as im:  # closes the file (multi-frame files keep it open otherwise)
    return _decode(im, path)


def _to_model(raw: np.ndarray, offset: float, scale: float) -> np.ndarray:
  """Step 5: raw values -> float32 [-1, 1], i.e. (raw - offset) * scale * 2 - 1 (clipped). For
  uint8 this is exactly ``generators.data.to_model_range``."""
  x = raw.astype(np.float32)
  if offset:
    x -= np.float32(offset)
  return np.clip(x * np.float32(2 * scale) - np.float32(1), -1, 1)


def _crop_resize(raw: np.ndarray, resolution: int, name: str) -> np.ndarray:
  """Steps 2-3: [H, W, C] raw -> float32 [R, R, C], same units."""
  h, w = raw.shape[:2]
  if h != w:
    _log_once("crop", "centre-cropped non-square images to squares (first: %s, %dx%d -> %dx%d)",
              name, w, h, min(h, w), min(h, w))
  square = center_crop(raw)
  s = square.shape[0]
  if s > resolution:
    _log_once("down", "resized images to %dx%d by area averaging (first: %s, %dx%d)",
              resolution, resolution, name, s, s)
  elif s < resolution:
    _log_once("up", "upscaled images smaller than %dx%d with a box filter (pixel replication, "
              "blocky) (first: %s, %dx%d); use larger images if you can", resolution, resolution,
              name, s, s, level=logging.WARNING)
  return square.astype(np.float32) if s == resolution else area_resize(square, resolution)


def _to_grey(x: np.ndarray) -> np.ndarray:
  """[..., 3] -> [..., 1] by BT.601 luma (weights sum to 1, so it commutes with [0,1] -> [-1,1])."""
  return x if x.shape[-1] == 1 else x @ np.asarray(LUMA, np.float32)[:, None]


def load_image(path: str, resolution: int, channels: int = 3,
               mask: str | np.ndarray | None = None,
               align: Callable[[np.ndarray, str], np.ndarray] | None = None) -> np.ndarray:
  """Read one image file for a generator of ``channels`` channels at ``resolution``.

  Args:
    path: image file (PNG, JPEG, WebP, TIFF, ...; any PIL mode, any size).
    resolution: output side R in pixels.
    channels: 1 (grey), 3 (RGB) or 4 (RGB + defect mask).
    mask: only for ``channels == 4``: a defect mask (file path, or array [H, W] of the image's
      size; non-zero / bright = defect). None = no defect: the 4th channel is -1.
    align: optional pre-processing of the decoded image before the centre crop and resize,
      ``align(image [H, W, 1 | 3] float32 in 0..255, file name) -> [h, w, 1 | 3]``, e.g. an
      ``inversion.align.FaceAligner`` (FFHQ face alignment with your landmark detector).

  Returns:
    float32 [R, R, channels] in [-1, 1] (a mask channel is exactly -1 or +1).

  Raises:
    ImageError: the file is missing, empty, corrupt, truncated, of an unsupported format or mode,
      has 0 pixels, or the mask does not match the image.
  """
  if channels not in CHANNELS:
    raise ValueError(f"channels must be one of {CHANNELS}, got {channels}")
  if resolution < 1:
    raise ValueError(f"resolution must be >= 1, got {resolution}")
  if mask is not None and channels != 4:
    raise ValueError(f"a mask needs a 4-channel (image + mask) generator, got channels={channels}")
  path = os.fspath(path)
  name = os.path.basename(path)
  raw, offset, scale = _read(path)
  if align is not None:
    if mask is not None:
      raise ValueError("align and mask together are not supported: the mask would need the "
                       "same warp. Align the image and its mask first, then invert without align.")
    raw = align((raw.astype(np.float32) - np.float32(offset)) * np.float32(255 * scale), name)
    offset, scale = 0.0, 1 / 255
  x = _to_model(_crop_resize(raw, resolution, name), offset, scale)
  # 4. channels.
  if channels == 1 and x.shape[-1] == 3:
    _log_once("to-grey", "converted RGB->grey by BT.601 luma 0.299 R + 0.587 G + 0.114 B "
              "(first: %s)", name)
    x = _to_grey(x)
  elif channels >= 3 and x.shape[-1] == 1:
    _log_once("to-rgb", "converted grey->RGB by copying (R = G = B) (first: %s)", name)
    x = np.repeat(x, 3, -1)
  if channels == 4:
    if mask is None:
      _log_once("no-mask", "4-channel generator: filled the mask channel with -1 (no defect) "
                "(first: %s)", name)
      m = np.full(x.shape[:2] + (1,), -1, np.float32)
    else:
      m = _load_mask(mask, path, raw.shape[:2], resolution)
    x = np.concatenate([x, m], -1)
  return x.astype(np.float32)


def _load_mask(mask, image_path: str, image_hw: tuple[int, int], resolution: int) -> np.ndarray:
  """Mask file or array of the image's size -> [R, R, 1] in {-1, +1}: +1 where the defect
  (mask >= half its range) covers at least MASK_COVERAGE of the output pixel."""
  if isinstance(mask, (str, os.PathLike)):
    mask_path = os.fspath(mask)
    m = _to_grey(_to_model(*_read(mask_path)))[..., 0] >= 0
    what = f"mask {mask_path}"
  else:
    m = np.asarray(mask)
    m = m >= (128 if m.dtype == np.uint8 else 0.5) if m.dtype != bool else m
    m = m.reshape(m.shape[:2]) if m.ndim == 3 and m.shape[-1] == 1 else m
    what = f"mask array {np.shape(mask)}"
  if m.shape != tuple(image_hw):
    raise ImageError(f"{what} is {m.shape[1] if m.ndim > 1 else '?'}x{m.shape[0]} but image "
                     f"{image_path} is {image_hw[1]}x{image_hw[0]}; give a mask of the image's "
                     "size")
  cover = _crop_resize(m[..., None], resolution, os.path.basename(image_path))
  out = cover >= MASK_COVERAGE
  if m.any() and not out.any():  # a tiny defect keeps its best-covered pixel
    out[np.unravel_index(np.argmax(cover), cover.shape)] = True
  return np.where(out, np.float32(1), np.float32(-1))


def load_weight_mask(path: str | os.PathLike, resolution: int) -> np.ndarray:
  """A loss-weight mask file (white = pixel counts, black = ignored) -> float32 [R, R, 1] in
  [0, 1], for images inverted at R x R.

  A square mask of another size is area-resized (logged with both sizes; border pixels get
  fractional weights); a non-square one is refused: it cannot be laid on the square crop the
  images are inverted at, and cropping or stretching it would move what it masks.
  """
  path = os.fspath(path)
  raw, offset, scale = _read(path)
  h, w = raw.shape[:2]
  if h != w:
    raise ImageError(f"mask {path} is {w}x{h}, but images are inverted as {resolution}x"
                     f"{resolution} squares; give a square mask ({resolution}x{resolution}, "
                     "white = pixel counts): a mask is not cropped or stretched")
  if h != resolution:
    log.info("mask %s is %dx%d: resized to %dx%d by area averaging", path, w, h, resolution,
             resolution)
  grey = _to_grey(_to_model(raw if h == resolution else area_resize(raw.astype(np.float32),
                                                                    resolution),
                            offset, scale))
  return (grey + 1.0) / 2.0


def read_grey(path: str | os.PathLike) -> np.ndarray:
  """A mask-like file's values as float32 [H, W] in [0, 1] (black 0, white 1; colour files by
  BT.601 luma), at the file's own size. ImageError if it cannot be read."""
  return (_to_grey(_to_model(*_read(os.fspath(path))))[..., 0] + 1.0) / 2.0


def check_images(paths: Sequence[str]) -> dict[str, str]:
  """Decodes every file; returns {path: what is wrong} for those that cannot be read (missing,
  empty, corrupt, unsupported: the ``ImageError`` message), {} when all can."""
  bad = {}
  for path in paths:
    try:
      _read(path)
    except ImageError as e:
      bad[path] = str(e)
  return bad


# ----------------------------------------------------------------------------------------------
# Many images.


def _unique_names(paths: Sequence[str]) -> list[str]:
  stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
  names, seen = [], {}
  for stem, p in zip(stems, paths):
    name = stem if stems.count(stem) == 1 else os.path.basename(p)
    if name in seen:
      seen[name] += 1
      name = f"{name}-{seen[name]}"
    else:
      seen[name] = 0
    names.append(name)
  return names


def list_images(paths_or_dir: str | Sequence[str]) -> list[str]:
  """The image files named by a folder (sorted; non-image files skipped and logged), a file, or
  a list of files."""
  if isinstance(paths_or_dir, (str, os.PathLike)):
    p = os.fspath(paths_or_dir)
    if not os.path.isdir(p):
      return [p]
    entries = sorted(os.listdir(p))
    files = [e for e in entries if os.path.isfile(os.path.join(p, e))]
    images = [e for e in files if e.lower().endswith(IMAGE_EXTENSIONS) and not e.startswith(".")]
    skipped = [e for e in entries if e not in images]
    if skipped:
      log.info("skipping %d non-image entries in %s: %s", len(skipped), p, ", ".join(skipped))
    if not images:
      raise ImageError(f"no images in folder {p} (looked for {', '.join(IMAGE_EXTENSIONS)}); "
                       "put PNG/JPEG/WebP/TIFF files there or pass the files themselves")
    return [os.path.join(p, e) for e in images]
  paths = [os.fspath(q) for q in paths_or_dir]
  if not paths:
    raise ImageError("the list of images is empty; pass at least one image file or a folder")
  return paths


def load_images(paths_or_dir: str | Sequence[str], resolution: int, channels: int = 3,
                align: Callable[[np.ndarray, str], np.ndarray] | None = None
                ) -> tuple[np.ndarray, list[str]]:
  """Read a folder, a file or a list of files with ``load_image``.

  A folder is read in sorted order; files whose extension is not in ``IMAGE_EXTENSIONS`` and
  subfolders are skipped with one log line naming them; a folder with no images is an error.
  Corrupt image files are errors, not skipped.

  Returns:
    (float32 [N, R, R, channels] in [-1, 1], names): names are unique, derived from the file names
    (the stem, e.g. "brick_y064_x384"; the full base name or a "-k" suffix where stems collide).
  """
  paths = list_images(paths_or_dir)
  batch = np.stack([load_image(p, resolution, channels, align=align) for p in paths])
  return batch, _unique_names(paths)


# ----------------------------------------------------------------------------------------------
# Writing.


def _to_uint8(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x)
  if x.dtype == np.uint8:
    return x
  x = x.astype(np.float32)
  if not np.isfinite(x).all():
    raise ValueError("image contains NaN or infinite values")
  if x.size and (x.min() < -1.001 or x.max() > 1.001):
    _log_once("clip", "clipped values outside [-1, 1] to [-1, 1] when writing images")
  return np.clip(np.rint((x + 1) * 127.5), 0, 255).astype(np.uint8)


def save_image(path: str, x: np.ndarray) -> list[str]:
  """Write an image in [-1, 1] (or uint8) as an 8-bit file (format from the extension).

  Args:
    path: output file, e.g. "out/rec.png"; parent folders are created.
    x: [H, W], [H, W, C] or [1, H, W, C] with C in {1, 3, 4}, float in [-1, 1] (clipped) or uint8.
      With C = 4 (image + mask) the RGB goes to ``path`` and the mask channel (> 0 = defect) to
      ``<path stem>_mask.png`` as 0 / 255 (the MVTec AD convention): it is never saved as alpha.

  Returns:
    The paths written.
  """
  x = np.asarray(x)
  if x.ndim == 4 and x.shape[0] == 1:
    x = x[0]
  if x.ndim == 2:
    x = x[..., None]
  if x.ndim != 3 or x.shape[-1] not in CHANNELS:
    raise ValueError(f"save_image expects [H, W, C] with C in {CHANNELS}, got {x.shape}")
  path = os.fspath(path)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  u = _to_uint8(x)
  written = [path]
  Image.fromarray(u[..., 0] if u.shape[-1] == 1 else u[..., :3]).save(path)
  if u.shape[-1] == 4:
    mask_path = os.path.splitext(path)[0] + "_mask.png"
    mask = (x[..., 3] > (127 if x.dtype == np.uint8 else 0)).astype(np.uint8) * 255
    Image.fromarray(mask).save(mask_path)
    written.append(mask_path)
  return written


def image_grid(arrays, rows: int = 1, pad: int = 2, pad_value: float = 1.0,
               mask: str = "overlay") -> np.ndarray:
  """Tile images into one uint8 picture, row-major.

  Args:
    arrays: one batch [N, H, W, C], or a sequence of [H, W, C] images or [n, H, W, C] batches
      (concatenated), float in [-1, 1] or uint8; C in {1, 3, 4}. E.g. ``[targets, recons]`` with
      ``rows=2`` puts the targets on the first row when both have the same length.
    rows: number of rows; columns = ceil(N / rows); empty cells get ``pad_value``.
    pad: pixels between cells (and none around the border).
    pad_value: colour of padding and empty cells, in [-1, 1] (1 = white).
    mask: for C = 4: "overlay" paints mask pixels (> 0) in ``MASK_OVERLAY`` colour over the RGB,
      "drop" shows the RGB only.

  Returns:
    uint8 [rows * (H + pad) - pad, cols * (W + pad) - pad, 1 or 3] (1 only for grey input).
  """
  if isinstance(arrays, np.ndarray) and arrays.ndim == 4:
    batch = arrays
  else:
    items = [np.asarray(a) for a in arrays]
    if not items:
      raise ValueError("image_grid needs at least one image")
    batch = np.concatenate([a[None] if a.ndim == 3 else a for a in items])
  if batch.ndim != 4 or batch.shape[-1] not in CHANNELS:
    raise ValueError(f"image_grid expects images [H, W, C] with C in {CHANNELS}, got "
                     f"{batch.shape[1:]}")
  if mask not in ("overlay", "drop"):
    raise ValueError(f"mask must be 'overlay' or 'drop', got {mask!r}")
  u = _to_uint8(batch)
  if u.shape[-1] == 4:
    rgb = u[..., :3].astype(np.float32)
    if mask == "overlay":
      colour, opacity = MASK_OVERLAY
      on = (u[..., 3:] > 127).astype(np.float32) * opacity
      rgb = rgb * (1 - on) + np.asarray(colour, np.float32) * on
    u = np.rint(rgb).astype(np.uint8)
  n, h, w, c = u.shape
  if rows < 1:
    raise ValueError(f"rows must be >= 1, got {rows}")
  cols = -(-n // rows)
  fill = _to_uint8(np.float32(pad_value))
  grid = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, c), fill, np.uint8)
  for i in range(n):
    r, k = divmod(i, cols)
    grid[r * (h + pad):r * (h + pad) + h, k * (w + pad):k * (w + pad) + w] = u[i]
  return grid
