"""Composable reconstruction losses for inversion: pixel, VGG feature, LPIPS, D-feature terms.

Every term has the same shape, so an optimisation engine can weight, sum, jit and vmap them:

    term(params, x, y, mask=None) -> [B] per-image losses

  x, y    [B, H, W, C] images in [-1, 1] (x: generated, y: target);
  mask    None or [B, H, W, 1] (or [1, H, W, 1]) in [0, 1]: 1 = pixel counts, 0 = ignored;
  params  the network parameters the term needs (None for `pixel_mse`).

Options are keyword-only after `mask`, so `functools.partial(term, resize=None)` keeps the
signature. `combine` sums weighted terms and returns every part for logging.

Masks (masked inversion, e.g. inpainting or defect regions):
  - pixel_mse: mask-weighted mean, sum(m (x - y)^2) / (C sum(m)); with m = 1 the plain MSE.
    (idinvert's `diffuse` divides by all pixels instead; the two differ by a per-image factor.)
  - feature terms (VGG, LPIPS, D features): both images are multiplied by the mask *before* the
    network, as idinvert's masked inversion (`diffuse`) does: F(x * m) vs F(y * m). Masked-out
    pixels become 0 = mid-grey in [-1, 1] for both images, so they add no difference, but they
    do shape the receptive fields near the mask border. We chose this over masking feature
    maps (which needs a mask per layer resolution and leaks context through receptive fields
    in the other direction) because it is what the reference method does.

Terms:
  pixel_mse                  mean squared error.
  image2stylegan_perceptual  Abdal et al. 2019 (Image2StyleGAN), Eq. 3:
                             sum_j (lambda_j / N_j) ||F_j(x) - F_j(y)||^2 over VGG16 conv1_1,
                             conv1_2, conv3_2, conv4_2 (post-ReLU), lambda_j = 1, N_j = number
                             of scalars of F_j -> the sum of per-layer MSEs. The paper pairs it
                             with pixel MSE at weight 1 (`image2stylegan_terms`). Inputs are
                             ImageNet-normalised; images larger than 256 are area-downsampled
                             to 256 first (NVlabs projector rule; the paper does not say).
  idinvert_feature           Zhu et al. 2020 (idinvert_pytorch): mean((F(x) - F(y))^2) on
                             conv4_3 (post-ReLU, before pool4), weight 5e-5 next to pixel MSE
                             at 1 (`idinvert_terms`). idinvert's weights are Caffe/Keras VGG16:
                             preprocess='caffe' (BGR, [0, 255] minus mean); with torchvision
                             weights use preprocess='imagenet' (the loss scale then differs).
  lpips_loss                 LPIPS v0.1 (inversion.lpips), as the NVlabs projector
                             (inputs > 256 area-downsampled to 256).
  discriminator_feature_distance / make_discriminator_feature_loss
                             distance between StyleGAN2 discriminator activations, normalised
                             like LPIPS without learned weights (see the function).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from inversion import lpips as lpips_lib
from inversion import vgg as vgg_lib

__all__ = [
    'IMAGE2STYLEGAN_LAYERS',
    'IDINVERT_LAYER',
    'LossFn',
    'Term',
    'apply_mask',
    'combine',
    'discriminator_feature_distance',
    'idinvert_feature',
    'idinvert_terms',
    'image2stylegan_perceptual',
    'image2stylegan_terms',
    'lpips_loss',
    'make_discriminator_feature_loss',
    'pixel_mse',
    'vgg_feature_mse',
]

LossFn = Callable[..., jax.Array]  # (params, x, y, mask=None) -> [B]

IMAGE2STYLEGAN_LAYERS = ('conv1_1', 'conv1_2', 'conv3_2', 'conv4_2')
IDINVERT_LAYER = 'conv4_3'
IDINVERT_FEATURE_WEIGHT = 5e-5   # idinvert_pytorch StyleGANInverter perceptual_loss_weight
_EPS = 1e-8                      # guards an all-zero mask in pixel_mse


def _check(x, y, mask):
  if x.ndim != 4 or x.shape != y.shape:
    raise ValueError(f'x and y must be [B, H, W, C] of the same shape, got {x.shape} and '
                     f'{y.shape}')
  if mask is not None:
    if mask.ndim != 4 or mask.shape[-1] != 1 or mask.shape[1:3] != x.shape[1:3] or \
        mask.shape[0] not in (1, x.shape[0]):
      raise ValueError(f'mask must be [B, H, W, 1] or [1, H, W, 1] matching images '
                       f'{x.shape}, got {mask.shape}')


def apply_mask(images: jax.Array, mask: jax.Array | None) -> jax.Array:
  """images * mask (mask [B|1, H, W, 1] in [0, 1]); None = unchanged."""
  return images if mask is None else images * mask.astype(images.dtype)


# ---------------------------------------------------------------------------------------------
# 1. pixel


def pixel_mse(params: Any, x: jax.Array, y: jax.Array, mask: jax.Array | None = None
              ) -> jax.Array:
  """Per-image (mask-weighted) mean squared error over all channels given. `params` is
  ignored. [B]. (Unlike the VGG terms, extra channels are not dropped: pass RGB only.)"""
  del params
  _check(x, y, mask)
  sq = jnp.square(x - y)
  if mask is None:
    return jnp.mean(sq, axis=(1, 2, 3))
  m = jnp.broadcast_to(mask.astype(sq.dtype), (x.shape[0], *x.shape[1:3], 1))
  num = jnp.sum(sq * m, axis=(1, 2, 3))
  return num / (x.shape[-1] * jnp.sum(m, axis=(1, 2, 3)) + _EPS)


# ---------------------------------------------------------------------------------------------
# 2. VGG feature losses


def vgg_feature_mse(params: Any, x: jax.Array, y: jax.Array, mask: jax.Array | None = None,
                    *,
                    layers: Sequence[str] = IMAGE2STYLEGAN_LAYERS,
                    layer_weights: Sequence[float] | None = None,
                    preprocess: str | None = 'imagenet',
                    resize: int | None = 256,
                    precision: Any = None) -> jax.Array:
  """sum_j w_j * mean((F_j(x m) - F_j(y m))^2) over VGG16 layers. [B].

  Args:
    params: VGG16 variables (`vgg.load_vgg16_params`).
    layers: VGG16 activation names (`vgg.LAYER_NAMES`).
    layer_weights: one weight per layer (None = all 1).
    preprocess, resize: as `vgg.vgg16_features`.
  """
  _check(x, y, mask)
  layers = tuple(layers)
  w = (1.0,) * len(layers) if layer_weights is None else tuple(layer_weights)
  if len(w) != len(layers):
    raise ValueError(f'{len(layers)} layers but {len(w)} layer_weights')
  # Two trunk calls, not one on [x; y]: the target's features are then loop-invariant, so the
  # engine computes them once per chunk (`engine.hoist_invariants`), and backward skips them.
  features = lambda im: vgg_lib.vgg16_features(params, apply_mask(im, mask), layers,
                                               preprocess=preprocess, resize=resize,
                                               precision=precision)
  fx, fy = features(x), features(y)
  total = 0.0
  for wj, name in zip(w, layers):
    total = total + wj * jnp.mean(jnp.square(fx[name] - fy[name]), axis=(1, 2, 3))
  return total


def image2stylegan_perceptual(params: Any, x: jax.Array, y: jax.Array,
                              mask: jax.Array | None = None, *,
                              preprocess: str | None = 'imagenet',
                              resize: int | None = 256,
                              precision: Any = None) -> jax.Array:
  """Image2StyleGAN perceptual loss: sum of MSEs at conv1_1, conv1_2, conv3_2, conv4_2. [B]."""
  return vgg_feature_mse(params, x, y, mask, layers=IMAGE2STYLEGAN_LAYERS,
                         preprocess=preprocess, resize=resize, precision=precision)


def idinvert_feature(params: Any, x: jax.Array, y: jax.Array, mask: jax.Array | None = None,
                     *,
                     preprocess: str | None = 'caffe',
                     resize: int | None = None,
                     precision: Any = None) -> jax.Array:
  """idinvert's perceptual loss: MSE of VGG16 conv4_3 (post-ReLU) activations. [B].

  Default preprocessing matches idinvert's own weights (`vgg.load_idinvert_vgg16_params`);
  pass preprocess='imagenet' with torchvision weights.
  """
  return vgg_feature_mse(params, x, y, mask, layers=(IDINVERT_LAYER,), preprocess=preprocess,
                         resize=resize, precision=precision)


# ---------------------------------------------------------------------------------------------
# 3. LPIPS


def lpips_loss(params: Any, x: jax.Array, y: jax.Array, mask: jax.Array | None = None, *,
               resize: int | None = 256, precision: Any = None) -> jax.Array:
  """LPIPS v0.1 of masked images, LPIPS(x m, y m). [B]."""
  _check(x, y, mask)
  return lpips_lib.lpips(params, apply_mask(x, mask), apply_mask(y, mask), resize=resize,
                         precision=precision)


# ---------------------------------------------------------------------------------------------
# 4. discriminator features


def _as_map(f):
  if f.ndim == 2:  # [B, C] (e.g. a dense layer): one "pixel"
    return f[:, None, None, :]
  if f.ndim != 4:
    raise ValueError(f'feature arrays must be [B, H, W, C] or [B, C], got {f.shape}')
  return f


def discriminator_feature_distance(features_fn: Callable[[jax.Array], Mapping[str, jax.Array]],
                                   x: jax.Array, y: jax.Array, layers: Sequence[str],
                                   mask: jax.Array | None = None) -> jax.Array:
  """LPIPS-style distance between activations of any feature network (e.g. StyleGAN2 D). [B].

  For each layer l in `layers` (names of `features_fn`'s dict, NHWC activations):
    1. unit-normalise each pixel's channel vector: f / (||f||_2 + 1e-10) (as LPIPS);
    2. d_l = spatial mean of sum_c (f_x - f_y)^2, in [0, 4] whatever the channel count;
  then average d_l over layers. This is LPIPS with all linear weights set to 1 (the `lpips`
  package's `lpips=False` baseline), averaged instead of summed over layers.

  Why: this is the offline fallback for our embedded generators, for which no ImageNet VGG
  weights exist on the machine: the discriminator trained with the generator is the one
  feature network we always have. How it differs from LPIPS: the features come from a network
  trained to tell real from generated images of one domain (not ImageNet classification);
  there are no learned per-channel weights calibrated on human judgements; activations are
  leaky-ReLU outputs (can be negative); D's input is the raw [-1, 1] image (no ImageNet
  scaling). Treat it as a perceptual-ish feature loss, not as an LPIPS score: numbers are not
  comparable with published LPIPS. Layers after StyleGAN2's minibatch-std layer ('b4...')
  depend on the other images in the batch; prefer block outputs above 4x4 (e.g. 'b32',
  'b16', 'b8'). x and y are passed to features_fn in separate calls, so they never share a
  minibatch-std group.

  Args:
    features_fn: img [B, H, W, C] -> {name: [B, h, w, c] or [B, c]}; e.g.
      `lambda im: discriminator_features(d_params, im)`.
    x, y: [B, H, W, C] in [-1, 1].
    layers: names to use (at least one).
    mask: optional [B, H, W, 1] in [0, 1], applied to both images before the network.
  """
  _check(x, y, mask)
  layers = tuple(layers)
  if not layers:
    raise ValueError('discriminator_feature_distance needs at least one layer name')
  fx, fy = features_fn(apply_mask(x, mask)), features_fn(apply_mask(y, mask))
  missing = [n for n in layers if n not in fx]
  if missing:
    raise ValueError(f'feature layer(s) {missing} not produced; available: {sorted(fx)}')
  total = 0.0
  for name in layers:
    a = lpips_lib.normalize_channels(_as_map(fx[name]))
    b = lpips_lib.normalize_channels(_as_map(fy[name]))
    total = total + jnp.mean(jnp.sum(jnp.square(a - b), axis=-1), axis=(1, 2))
  return total / len(layers)


def make_discriminator_feature_loss(
    features_fn: Callable[[Any, jax.Array], Mapping[str, jax.Array]],
    layers: Sequence[str]) -> LossFn:
  """Turns `features_fn(params, img) -> dict` (e.g. the StyleGAN2 `discriminator_features`)
  into a term `(params, x, y, mask=None) -> [B]` using `discriminator_feature_distance`."""
  layers = tuple(layers)

  def term(params, x, y, mask=None):
    return discriminator_feature_distance(lambda im: features_fn(params, im), x, y, layers,
                                          mask)

  term.__name__ = 'discriminator_feature_loss'
  return term


# ---------------------------------------------------------------------------------------------
# 5. composition


class Term(NamedTuple):
  """One weighted loss term for `combine`."""
  fn: LossFn                   # (params, x, y, mask=None) -> [B]
  weight: float                # multiplier in the total
  params_key: str | None = None  # key of this term's params in combine's params dict; None =
                                 # the term needs none (pixel_mse)


def combine(terms: Mapping[str, Term]) -> Callable[..., tuple[jax.Array, dict[str, jax.Array]]]:
  """Weighted sum of terms.

  Returns `loss(params, x, y, mask=None) -> (total [B], {name: unweighted [B]})` where `params`
  maps each term's `params_key` to its parameters (several terms may share one key).

  Example:
    >>> loss = combine(image2stylegan_terms())
    >>> total, parts = jax.jit(loss)({'vgg': vgg_vars}, x, y)
  """
  terms = dict(terms)
  if not terms:
    raise ValueError('combine needs at least one term')

  def loss(params, x, y, mask=None):
    parts = {}
    total = 0.0
    for name, t in terms.items():
      p = None if t.params_key is None else params[t.params_key]
      parts[name] = t.fn(p, x, y, mask)
      total = total + t.weight * parts[name]
    return total, parts

  return loss


def image2stylegan_terms(vgg_key: str = 'vgg', mse_weight: float = 1.0,
                         perceptual_weight: float = 1.0) -> dict[str, Term]:
  """Image2StyleGAN objective: perceptual (conv1_1/1_2/3_2/4_2) + pixel MSE, weights 1, 1."""
  return {'perceptual': Term(image2stylegan_perceptual, perceptual_weight, vgg_key),
          'mse': Term(pixel_mse, mse_weight, None)}


def idinvert_terms(vgg_key: str = 'vgg', preprocess: str = 'caffe') -> dict[str, Term]:
  """idinvert objective without the encoder term: pixel MSE (1) + conv4_3 feature (5e-5)."""
  def feat(params, x, y, mask=None):
    return idinvert_feature(params, x, y, mask, preprocess=preprocess)
  return {'mse': Term(pixel_mse, 1.0, None),
          'feature': Term(feat, IDINVERT_FEATURE_WEIGHT, vgg_key)}
