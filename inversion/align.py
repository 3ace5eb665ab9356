"""FFHQ-style face alignment from 68 facial landmarks, as a pluggable pre-processing step.

Faces must be aligned the way the model's training set was before inversion: an FFHQ model
inverts an unaligned face badly (the latent space has no pose/scale/position freedom to absorb
a shifted or rotated face). FFHQ's recipe (NVlabs ffhq-dataset, `recreate_aligned_images`):

  1. eyes = mean of landmarks 36-41 and 42-47; mouth = midpoint of corners 48 and 54;
  2. an oriented square: x axis along eye-to-eye, bent by the eye-to-mouth direction, half side
     max(2 |eye_to_eye|, 1.8 |eye_to_mouth|); centre = eye midpoint + 0.1 eye_to_mouth;
  3. if the square is more than 2x the output, shrink the photo by an integer factor first;
  4. crop to the square plus a border of 10 %; where the square leaves the photo, reflect-pad it
     and blend the padding toward a blurred copy and the median colour (no hard edges);
  5. resample the square to `transform_size` (bilinear), then down to `output_size`.

Ours follows it with numpy only: the shrink and the final down-sampling average areas (FFHQ:
PIL's Lanczos "ANTIALIAS"), and the padding blur is our own Gaussian (FFHQ: scipy's), so pixels
differ slightly from FFHQ files while the geometry is the same.

No landmark detector ships (dlib and face-alignment are heavy and their weights cannot be
downloaded here): pass yours. `FaceAligner(landmarks_fn)` plugs into
`inversion.images.load_image(..., align=...)`, `jobs.invert_folder(..., align=...)` and the CLI
(`--align my_module:detect_landmarks`). Landmarks are [68, 2] (x, y) in pixel coordinates of the
image given to the detector (pixel (0, 0)'s centre is (0, 0)), iBUG 300-W order (dlib's).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from typing import Callable, Optional

import numpy as np

from inversion import images as images_lib

log = logging.getLogger(__name__)

NUM_LANDMARKS = 68
EYE_LEFT, EYE_RIGHT = slice(36, 42), slice(42, 48)
MOUTH_LEFT, MOUTH_RIGHT = 48, 54
EYE_DISTANCE_SCALE = 2.0  # half side >= 2 x eye distance ...
MOUTH_DISTANCE_SCALE = 1.8  # ... and >= 1.8 x eye-to-mouth distance
CENTRE_TOWARD_MOUTH = 0.1  # square centre: eye midpoint + 0.1 eye_to_mouth
BORDER_FRACTION = 0.1  # crop border, fraction of the square's side (at least MIN_BORDER px)
MIN_BORDER = 3
PAD_FRACTION = 0.3  # padding, where needed, is at least this fraction of the side
BLUR_FRACTION = 0.02  # sigma of the padding blur, fraction of the side
GAUSSIAN_TRUNCATE = 4.0  # Gaussian kernel radius in sigmas

LandmarksFn = Callable[[np.ndarray], Optional[np.ndarray]]


def face_square(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
  """Landmarks [68, 2] -> (corners [4, 2]: upper-left, lower-left, lower-right, upper-right in
  (x, y); side length) of FFHQ's oriented crop square."""
  lm = np.asarray(landmarks, np.float64)
  if lm.shape != (NUM_LANDMARKS, 2) or not np.isfinite(lm).all():
    raise ValueError(f"landmarks must be a finite [{NUM_LANDMARKS}, 2] array of (x, y) pixel "
                     f"coordinates (iBUG 300-W / dlib order), got shape {lm.shape}")
  eye_left, eye_right = lm[EYE_LEFT].mean(0), lm[EYE_RIGHT].mean(0)
  eye_mid = (eye_left + eye_right) / 2
  eye_to_eye = eye_right - eye_left
  eye_to_mouth = (lm[MOUTH_LEFT] + lm[MOUTH_RIGHT]) / 2 - eye_mid
  # x axis: eye-to-eye, averaged with the eye-to-mouth direction turned by -90 degrees.
  x_axis = eye_to_eye + np.array([eye_to_mouth[1], -eye_to_mouth[0]])
  norm = np.hypot(*x_axis)
  if norm == 0:
    raise ValueError("degenerate landmarks: the eyes and mouth give no face orientation")
  half = max(EYE_DISTANCE_SCALE * np.hypot(*eye_to_eye),
             MOUTH_DISTANCE_SCALE * np.hypot(*eye_to_mouth))
  x_axis = x_axis / norm * half
  y_axis = np.array([-x_axis[1], x_axis[0]])  # x turned by +90 degrees (image y points down)
  centre = eye_mid + CENTRE_TOWARD_MOUTH * eye_to_mouth
  corners = np.stack([centre - x_axis - y_axis, centre - x_axis + y_axis,
                      centre + x_axis + y_axis, centre + x_axis - y_axis])
  return corners, 2 * half


def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
  """Separable Gaussian over H and W of [H, W, C] float32, edges mirrored (scipy 'reflect')."""
  radius = int(GAUSSIAN_TRUNCATE * sigma + 0.5)
  if radius < 1:
    return x
  taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  taps = (taps / taps.sum()).astype(np.float32)
  for axis in (0, 1):
    pad = [(0, 0)] * 3
    pad[axis] = (radius, radius)
    padded = np.pad(x, pad, mode="symmetric")
    n = x.shape[axis]
    x = sum(t * np.take(padded, np.arange(k, k + n), axis=axis) for k, t in enumerate(taps))
  return x


def _pad_and_soften(x: np.ndarray, pad: tuple[int, int, int, int], side: float) -> np.ndarray:
  """Reflect-pad [H, W, C] by (left, top, right, bottom), all > 0; blend the padding toward a
  blur and the median colour, fading in over the outer band (FFHQ's step 4)."""
  left, top, right, bottom = pad
  x = np.pad(x, ((top, bottom), (left, right), (0, 0)), mode="reflect")
  h, w = x.shape[:2]
  ys, xs = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
  inside_x = np.minimum(xs / left, (w - 1 - xs) / right)  # >= 1 beyond the padding band
  inside_y = np.minimum(ys / top, (h - 1 - ys) / bottom)
  outside = np.maximum(1 - inside_x, 1 - inside_y)[..., None]  # > 0 in the padding
  x = x + (_gaussian_blur(x, BLUR_FRACTION * side) - x) * np.clip(outside * 3 + 1, 0, 1)
  return x + (np.median(x, axis=(0, 1)) - x) * np.clip(outside, 0, 1)


def _warp_square(x: np.ndarray, corners: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resampling of the quadrilateral `corners` (as `face_square`) to [size, size, C].
  Output pixel (i, j) reads the source at UL + u (UR - UL) + v (LL - UL), u = (j + 0.5) / size,
  v = (i + 0.5) / size (PIL's QUAD transform); outside the source is 0."""
  upper_left, lower_left, _, upper_right = corners
  t = (np.arange(size, dtype=np.float64) + 0.5) / size
  src = (upper_left + t[None, :, None] * (upper_right - upper_left)
         + t[:, None, None] * (lower_left - upper_left))  # [size, size, (x, y)]
  h, w = x.shape[:2]
  x0, y0 = np.floor(src[..., 0]), np.floor(src[..., 1])
  fx, fy = (src[..., 0] - x0)[..., None], (src[..., 1] - y0)[..., None]
  padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))  # zeros outside the source
  read = lambda yy, xx: padded[np.clip(yy + 1, 0, h + 1).astype(int),
                               np.clip(xx + 1, 0, w + 1).astype(int)]
  top = read(y0, x0) * (1 - fx) + read(y0, x0 + 1) * fx
  bottom = read(y0 + 1, x0) * (1 - fx) + read(y0 + 1, x0 + 1) * fx
  return (top * (1 - fy) + bottom * fy).astype(np.float32)


def align_face(image: np.ndarray, landmarks: np.ndarray, output_size: int = 1024,
               transform_size: Optional[int] = None, padding: bool = True) -> np.ndarray:
  """FFHQ-align a face. image: [H, W, C] (any real dtype, any units); landmarks [68, 2] (x, y).

  Returns float32 [output_size, output_size, C] in the image's units. `transform_size`
  (default 4 x output_size, as FFHQ's 4096 for 1024) is the supersampled warp size.
  """
  x = np.asarray(image, np.float32)
  if x.ndim == 2:
    x = x[..., None]
  corners, side = face_square(landmarks)
  transform_size = transform_size or 4 * output_size
  # 3. Shrink by an integer factor when the square is over twice the output.
  shrink = int(np.floor(side / output_size * 0.5))
  if shrink > 1:
    h, w = x.shape[:2]
    x = images_lib.area_resize(x, int(np.rint(h / shrink)), int(np.rint(w / shrink)))
    corners, side = corners / shrink, side / shrink
  # 4. Crop to the square plus a border; pad where the square leaves the image.
  border = max(int(np.rint(side * BORDER_FRACTION)), MIN_BORDER)
  lo, hi = np.floor(corners.min(0)).astype(int), np.ceil(corners.max(0)).astype(int)
  h, w = x.shape[:2]
  left, top = max(lo[0] - border, 0), max(lo[1] - border, 0)
  right, bottom = min(hi[0] + border, w), min(hi[1] + border, h)
  if right - left < w or bottom - top < h:
    x = x[top:bottom, left:right]
    corners = corners - (left, top)
  h, w = x.shape[:2]
  lo, hi = np.floor(corners.min(0)).astype(int), np.ceil(corners.max(0)).astype(int)
  pad = (max(border - lo[0], 0), max(border - lo[1], 0), max(hi[0] - w + border, 0),
         max(hi[1] - h + border, 0))
  if padding and max(pad) > border - 4:
    pad = tuple(max(p, int(np.rint(side * PAD_FRACTION))) for p in pad)
    x = _pad_and_soften(x, pad, side)
    corners = corners + pad[:2]
  # 5. Warp the square, then area-average down to the output size.
  x = _warp_square(x, corners, transform_size)
  return x if transform_size == output_size else images_lib.area_resize(x, output_size)


@dataclasses.dataclass
class FaceAligner:
  """`align` hook for `inversion.images.load_image`: detects landmarks with the user's
  `landmarks_fn(image [H, W, 3] float32 in 0..255) -> [68, 2] or None` and aligns."""

  landmarks_fn: LandmarksFn
  output_size: int = 1024

  def __call__(self, image: np.ndarray, name: str = "image") -> np.ndarray:
    rgb = np.repeat(image, 3, -1) if image.shape[-1] == 1 else image[..., :3]
    landmarks = self.landmarks_fn(rgb)
    if landmarks is None:
      raise images_lib.ImageError(
          f"{name}: the landmark detector found no face. Remove the image, crop it closer to "
          "the face, or run without --align.")
    return align_face(image, landmarks, self.output_size)


def aligner_from_spec(spec: str, output_size: int = 1024) -> FaceAligner:
  """'package.module:function' (a landmark detector, see the module docstring) -> FaceAligner."""
  module_name, sep, attr = spec.partition(":")
  if not sep or not module_name or not attr:
    raise ValueError(f"--align must look like my_module:detect_landmarks, got {spec!r}")
  try:
    fn = getattr(importlib.import_module(module_name), attr)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"--align {spec}: cannot import the landmark detector ({e}). Put the "
                     "module on PYTHONPATH; it must define a function image -> [68, 2].") from None
  return FaceAligner(fn, output_size)
