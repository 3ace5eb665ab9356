"""Adaptive discriminator augmentation (Karras et al. 2020, "Training Generative Adversarial
Networks with Limited Data"; NVlabs stylegan2-ada-pytorch `training/augment.py`).

D sees every image, real or generated, through the same random augmentations, each applied with
probability `p`; G is trained through them (they are differentiable in the pixels). Because
each one is applied with probability p < 1, D can still tell what the un-augmented
distribution is, so the augmentations do not leak into G's samples (the paper's condition,
safe up to p ~ 0.8 for these). `p` adapts during training: it rises while D is overconfident
on reals (the mean sign of its real logits, `r_t`, is above `target`) and falls otherwise.

The subset used here suits textures on a pixel grid: x-flip, 90-degree rotation and integer
translation (with wrap-around; the mask channel moves with the image) and brightness and
contrast (colour channels only). NVlabs' 'bgc' pipeline adds arbitrary rotation, scaling,
anisotropy and hue/saturation, which need the filtered geometric warp. `ops` picks a subset
(NVlabs' names): data that already comes in every flip, rotation and shift, as texture crops
do, gains nothing from the geometric ones, and they let G collapse to one orientation that D
sees rotated (a fine-tune of the embedded model drew every brick course horizontal).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

TRANSLATE_MAX = 0.125  # of the image size, as NVlabs' xint_max
BRIGHTNESS_STD = 0.2   # added to the colour channels, in the [-1, 1] image range
CONTRAST_STD = 0.5     # log2 of the contrast factor
COLOR_CHANNELS = 3     # the rest (a defect-mask channel) only moves with the geometry
OPS = ("xflip", "rotate90", "xint", "brightness", "contrast")  # in the order they are applied


def _augment_one(image: jax.Array, key: jax.Array, p: jax.Array, enabled: jax.Array
                 ) -> jax.Array:
  """One [H, W, C] image; each augmentation `enabled` (bool [len(OPS)]) applies with
  probability p."""
  keys = jax.random.split(key, 6)
  apply = (jax.random.uniform(keys[0], (len(OPS),)) < p) & enabled
  size = image.shape[0]

  flipped = jnp.where(apply[0], image[:, ::-1], image)
  turns = jax.random.randint(keys[1], (), 0, 4)
  rotations = jnp.stack([jnp.rot90(flipped, k) for k in range(4)])
  rotated = jnp.where(apply[1], rotations[turns], flipped)
  max_shift = int(round(TRANSLATE_MAX * size))
  shift = jax.random.randint(keys[2], (2,), -max_shift, max_shift + 1)
  moved = jnp.where(apply[2], jnp.roll(rotated, shift, axis=(0, 1)), rotated)

  color, rest = moved[..., :COLOR_CHANNELS], moved[..., COLOR_CHANNELS:]
  brightness = jax.random.normal(keys[3]) * BRIGHTNESS_STD
  color = color + jnp.where(apply[3], brightness, 0.0)
  contrast = jnp.exp2(jax.random.normal(keys[4]) * CONTRAST_STD)
  mean = jnp.mean(color)
  color = jnp.where(apply[4], mean + (color - mean) * contrast, color)
  return jnp.concatenate([color, rest], axis=-1)


def parse_ops(ops: str | Sequence[str]) -> tuple[str, ...]:
  """Augmentation names from a comma-separated string (a config field) or a sequence."""
  names = tuple(n.strip() for n in (ops.split(",") if isinstance(ops, str) else ops) if n.strip())
  unknown = [n for n in names if n not in OPS]
  if unknown or not names:
    raise ValueError(f"Unknown or no ADA augmentations {unknown or list(names)}: pick from "
                     f"{', '.join(OPS)} (comma-separated).")
  return names


def augment(images: jax.Array, key: jax.Array, p: jax.Array | float,
            ops: str | Sequence[str] = OPS) -> jax.Array:
  """[B, H, W, C] images in [-1, 1], each augmented independently with probability `p` by
  each augmentation named in `ops`."""
  if images.shape[1] != images.shape[2]:
    raise ValueError(f"augment needs square images (90-degree rotations), got {images.shape}.")
  enabled = jnp.asarray([name in parse_ops(ops) for name in OPS])
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(_augment_one, in_axes=(0, 0, None, None))(
      images, keys, jnp.asarray(p, images.dtype), enabled)


def adjust_p(p: jax.Array, real_logits: jax.Array, target: float, images_per_unit: float
             ) -> jax.Array:
  """NVlabs' ADA update after a batch: p moves by batch / `images_per_unit` (so from 0 to 1 in
  `images_per_unit` images at most) toward making the mean sign of D's real logits `target`."""
  r_t = jnp.mean(jnp.sign(real_logits))
  step = jnp.sign(r_t - target) * real_logits.shape[0] / images_per_unit
  return jnp.clip(p + step, 0.0, 1.0)


def ada_images_per_unit(ada_kimg: float) -> float:
  """Images over which p may change by 1 (NVlabs' `ada_kimg`, in thousands)."""
  if not ada_kimg > 0 or not math.isfinite(ada_kimg):
    raise ValueError(f"ada_kimg must be a positive number of kimg, got {ada_kimg}.")
  return ada_kimg * 1000
