"""Image-quality metrics for inversion results, batched and jit-compiled.

All images are float [B, H, W, C] (NHWC) in [-1, 1]; every channel given is used (strip a mask
channel first if you do not want it measured). Per-image metrics return [B].

  mse, psnr             PSNR = 10 log10(data_range^2 / MSE), data_range = 2 for [-1, 1]
                        (skimage.metrics.peak_signal_noise_ratio with data_range=2).
  ssim                  Wang et al. 2004 as skimage.metrics.structural_similarity with
                        gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                        data_range=2: 11x11 Gaussian window (truncate 3.5), K1=0.01, K2=0.03,
                        mean of the SSIM map over the valid region (skimage crops 5 pixels per
                        side) and over channels.
  ms_ssim               Wang et al. 2003 as in tkarras/progressive_growing_of_gans
                        metrics/ms_ssim.py (from tensorflow/models msssim.py): 5 scales, weights
                        (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), 2x2 average pooling between
                        scales (odd sizes: the last row/column dropped), 'valid' Gaussian
                        filtering, negative ssim/cs clipped to 0, per-image value
                        prod_{s<S} cs_s^w_s * ssim_S^w_S.
                        Small images: every scale needs at least 11x11 pixels, i.e. 176x176 for
                        5 scales. `small_images='error'` (default) raises a ValueError naming
                        the minimum size; pass fewer `weights` (scales = len(weights)) for small
                        images, or `small_images='shrink'` for the ProGAN/tensorflow-models rule
                        (window shrunk to min(11, h, w) with sigma scaled by the same factor).
  lpips                 LPIPS v0.1 (inversion.lpips), [B].
  sliced_wasserstein    SWD on Laplacian-pyramid patches (ProGAN, see the function).
  fid, identity_similarity
                        need a user-supplied network (Inception / ArcFace): pass `features_fn`,
                        or register a loader for the file with `register_feature_network`.
                        Nothing is faked: without either, a clear error says which file is
                        needed and where to get it.
"""

from __future__ import annotations

import functools
import importlib
import pathlib
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from inversion import lpips as lpips_lib
from inversion import weights as weights_lib

__all__ = [
    'MS_SSIM_WEIGHTS',
    'FeatureNetworkUnavailableError',
    'feature_network',
    'fid',
    'frechet_distance',
    'identity_similarity',
    'laplacian_pyramid',
    'lpips',
    'ms_ssim',
    'mse',
    'psnr',
    'register_feature_network',
    'sliced_wasserstein',
    'ssim',
]

DATA_RANGE = 2.0                                              # [-1, 1] images
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)    # Wang et al. 2003
SSIM_WINDOW = 11                                              # 2 * int(3.5 * 1.5 + 0.5) + 1
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _check_pair(x, y):
  if x.ndim != 4 or x.shape != y.shape:
    raise ValueError(f'expected two [B, H, W, C] arrays of the same shape, got {x.shape} and '
                     f'{y.shape}')


# ---------------------------------------------------------------------------------------------
# MSE / PSNR.


@jax.jit
def mse(x: jax.Array, y: jax.Array) -> jax.Array:
  """Per-image mean squared error over H, W, C. [B]."""
  _check_pair(x, y)
  return jnp.mean(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)), axis=(1, 2, 3))


@functools.partial(jax.jit, static_argnames=('data_range',))
def psnr(x: jax.Array, y: jax.Array, data_range: float = DATA_RANGE) -> jax.Array:
  """Per-image PSNR in dB, 10 log10(data_range^2 / MSE); +inf for identical images. [B]."""
  return 10.0 * jnp.log10(data_range ** 2 / mse(x, y))


# ---------------------------------------------------------------------------------------------
# SSIM / MS-SSIM.


def _gaussian_1d(size: int, sigma: float) -> np.ndarray:
  t = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  g = np.exp(-0.5 * t * t / (sigma * sigma))
  return g / g.sum()


def _filter_valid(x: jax.Array, g: np.ndarray) -> jax.Array:
  """Separable 'valid' filtering of [B, H, W, C] with the 1-D kernel g along H and W."""
  k = len(g)
  h, w = x.shape[1] - k + 1, x.shape[2] - k + 1
  out = sum(float(g[i]) * x[:, i:i + h] for i in range(k))
  return sum(float(g[i]) * out[:, :, i:i + w] for i in range(k))


def _ssim_terms(x, y, g, data_range, k1, k2):
  """SSIM and contrast-structure maps (valid region), skimage / Wang et al. formulas."""
  c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
  mx, my = _filter_valid(x, g), _filter_valid(y, g)
  vx = _filter_valid(x * x, g) - mx * mx
  vy = _filter_valid(y * y, g) - my * my
  vxy = _filter_valid(x * y, g) - mx * my
  cs = (2 * vxy + c2) / (vx + vy + c2)
  ssim_map = (2 * mx * my + c1) / (mx * mx + my * my + c1) * cs
  return ssim_map, cs


@functools.partial(jax.jit, static_argnames=('data_range', 'win_size', 'sigma', 'k1', 'k2'))
def ssim(x: jax.Array, y: jax.Array, data_range: float = DATA_RANGE, *,
         win_size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA,
         k1: float = SSIM_K1, k2: float = SSIM_K2) -> jax.Array:
  """Per-image SSIM, as skimage `structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=2, channel_axis=-1)`. [B].

  Args:
    x, y: [B, H, W, C], H, W >= win_size.
  """
  _check_pair(x, y)
  if min(x.shape[1:3]) < win_size:
    raise ValueError(f'SSIM needs images of at least {win_size}x{win_size}, got '
                     f'{x.shape[1]}x{x.shape[2]}')
  g = _gaussian_1d(win_size, sigma)
  s, _ = _ssim_terms(x.astype(jnp.float32), y.astype(jnp.float32), g, data_range, k1, k2)
  return jnp.mean(s, axis=(1, 2, 3))


def _avg_pool_2x2(x):
  b, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def ms_ssim_min_size(num_scales: int = 5, win_size: int = SSIM_WINDOW) -> int:
  """Smallest side length for which every scale is at least win_size (176 for 5 scales)."""
  n = win_size
  for _ in range(num_scales - 1):
    n *= 2
  return n


def ms_ssim(x: jax.Array, y: jax.Array, data_range: float = DATA_RANGE, *,
            weights: Sequence[float] = MS_SSIM_WEIGHTS,
            small_images: str = 'error') -> jax.Array:
  """Per-image multi-scale SSIM (ProGAN / tensorflow-models msssim). [B].

  Args:
    x, y: [B, H, W, C].
    weights: per-scale exponents; the number of scales is len(weights) (a tuple).
    small_images: 'error' (every scale must be >= 11x11: `ms_ssim_min_size`) or 'shrink'
      (ProGAN rule: window min(11, h, w), sigma scaled alike).

  Returns:
    [B] values; with weights=(1.0,) this is `ssim` exactly.
  """
  _check_pair(x, y)
  weights = tuple(float(w) for w in weights)
  if not weights:
    raise ValueError('ms_ssim needs at least one scale weight')
  if small_images not in ('error', 'shrink'):
    raise ValueError(f"small_images must be 'error' or 'shrink', got {small_images!r}")
  need = ms_ssim_min_size(len(weights))
  if small_images == 'error' and min(x.shape[1:3]) < need:
    raise ValueError(
        f'MS-SSIM with {len(weights)} scales needs images of at least {need}x{need} (every '
        f'scale >= {SSIM_WINDOW}x{SSIM_WINDOW}); got {x.shape[1]}x{x.shape[2]}. Pass fewer '
        f"weights, e.g. weights={MS_SSIM_WEIGHTS[:3]}, or small_images='shrink' "
        f'(ProGAN/tensorflow-models rule).')
  return _ms_ssim(x, y, float(data_range), weights)


@functools.partial(jax.jit, static_argnames=('data_range', 'weights'))
def _ms_ssim(x, y, data_range, weights):
  x, y = x.astype(jnp.float32), y.astype(jnp.float32)
  ssims, css = [], []
  for level in range(len(weights)):
    size = min(SSIM_WINDOW, x.shape[1], x.shape[2])
    g = _gaussian_1d(size, size * SSIM_SIGMA / SSIM_WINDOW)
    s, cs = _ssim_terms(x, y, g, data_range, SSIM_K1, SSIM_K2)
    ssims.append(jnp.mean(s, axis=(1, 2, 3)))
    css.append(jnp.mean(cs, axis=(1, 2, 3)))
    if level + 1 < len(weights):
      x, y = _avg_pool_2x2(x), _avg_pool_2x2(y)
  w = jnp.asarray(weights, jnp.float32)
  cs = jnp.maximum(jnp.stack(css[:-1]), 0.0) if len(weights) > 1 else jnp.ones((0, x.shape[0]))
  val = jnp.prod(cs ** w[:-1, None], axis=0)
  return val * jnp.maximum(ssims[-1], 0.0) ** w[-1]


# ---------------------------------------------------------------------------------------------
# LPIPS.

lpips = jax.jit(lpips_lib.lpips, static_argnames=('spatial', 'resize', 'return_layers',
                                                  'precision'))
lpips.__doc__ = ('Jit-compiled `inversion.lpips.lpips(params, x, y, *, spatial=False, '
                 'resize=None)` -> [B] LPIPS v0.1 distances.')


# ---------------------------------------------------------------------------------------------
# Sliced Wasserstein distance (Karras et al. 2018, ProGAN metrics/sliced_wasserstein.py).

_BINOMIAL5 = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0  # outer product = ProGAN 5x5 / 256


def _blur5_mirror(x, gain=1.0):
  """5x5 binomial filter, scipy.ndimage 'mirror' borders (numpy 'reflect'), NHWC."""
  h, w = x.shape[1], x.shape[2]
  x = jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode='reflect')
  x = sum(float(_BINOMIAL5[i]) * x[:, i:i + h] for i in range(5))
  x = sum(float(_BINOMIAL5[i]) * x[:, :, i:i + w] for i in range(5))
  return x * gain


def _pyr_down(x):  # cv2.pyrDown
  return _blur5_mirror(x)[:, ::2, ::2]


def _pyr_up(x):  # cv2.pyrUp
  b, h, w, c = x.shape
  up = jnp.zeros((b, 2 * h, 2 * w, c), x.dtype).at[:, ::2, ::2].set(x)
  return _blur5_mirror(up, gain=4.0)


def laplacian_pyramid(images: jax.Array, num_levels: int) -> list[jax.Array]:
  """Laplacian pyramid [finest band, ..., coarsest Gaussian level] of NHWC images."""
  pyramid = [images.astype(jnp.float32)]
  for _ in range(1, num_levels):
    down = _pyr_down(pyramid[-1])
    pyramid[-1] = pyramid[-1] - _pyr_up(down)
    pyramid.append(down)
  return pyramid


def _descriptors(level, ys, xs, nhood):
  """[N * P, nhood * nhood * C] patches at the shared positions, per-channel normalised."""
  r = nhood // 2

  def patch(img, yy, xx):
    return jax.lax.dynamic_slice(img, (yy - r, xx - r, 0), (nhood, nhood, img.shape[-1]))

  per_pos = jax.vmap(patch, in_axes=(None, 0, 0))         # P patches of one image
  desc = jax.vmap(per_pos, in_axes=(0, None, None))(level, ys, xs)  # [N, P, k, k, C]
  desc = desc.reshape(-1, nhood, nhood, level.shape[-1])
  mean = jnp.mean(desc, axis=(0, 1, 2), keepdims=True)
  std = jnp.std(desc, axis=(0, 1, 2), keepdims=True)
  desc = (desc - mean) / jnp.where(std > 0, std, 1.0)      # constant channel: left at 0
  return desc.reshape(desc.shape[0], -1)


def _sort_rows(x: jax.Array, on_host: bool | None = None) -> jax.Array:
  """Sorts each row of a 2-D array. XLA:CPU's comparator sort ran 44x slower than NumPy's on
  128 rows of 128k values (5.4 s against 0.12 s, 2 cores), and SWD is mostly sorting, so on
  CPU (`on_host=None` decides by the backend) the sort is a host callback; the result is the
  same either way."""
  if on_host is None:
    on_host = jax.default_backend() == 'cpu'
  if not on_host:
    return jnp.sort(x, axis=-1)
  return jax.pure_callback(lambda v: np.sort(np.asarray(v), axis=-1),
                           jax.ShapeDtypeStruct(x.shape, x.dtype), x)


def _sliced_wasserstein_1(a, b, key, dir_repeats, dirs_per_repeat):
  dists = []
  for k in jax.random.split(key, dir_repeats):
    dirs = jax.random.normal(k, (a.shape[1], dirs_per_repeat), jnp.float32)
    dirs = dirs / jnp.sqrt(jnp.sum(jnp.square(dirs), axis=0, keepdims=True))
    # [directions, descriptors]: each projection sorted along a contiguous row.
    project = lambda d: _sort_rows(jnp.matmul(dirs.T, d.T, precision=jax.lax.Precision.HIGHEST))
    dists.append(jnp.mean(jnp.abs(project(a) - project(b))))
  return jnp.mean(jnp.stack(dists))


def swd_resolutions(height: int, width: int, min_resolution: int = 16) -> list[int]:
  """Pyramid level resolutions used by SWD: H, H/2, ... while >= min_resolution (ProGAN)."""
  res, out = min(height, width), []
  while res >= min_resolution:
    out.append(res)
    res //= 2
  return out


@functools.partial(jax.jit, static_argnames=('num_levels', 'nhood_size', 'nhoods_per_image',
                                             'dir_repeats', 'dirs_per_repeat'))
def _swd_levels(a, b, key, num_levels, nhood_size, nhoods_per_image, dir_repeats,
                dirs_per_repeat):
  pa, pb = laplacian_pyramid(a, num_levels), laplacian_pyramid(b, num_levels)
  out = []
  r = nhood_size // 2
  for level, (la, lb) in enumerate(zip(pa, pb)):
    kpos, kdir = jax.random.split(jax.random.fold_in(key, level))
    h, w = la.shape[1], la.shape[2]
    if nhoods_per_image is None:  # every patch position
      yy, xx = jnp.meshgrid(jnp.arange(r, h - r), jnp.arange(r, w - r), indexing='ij')
      ys, xs = yy.reshape(-1), xx.reshape(-1)
    else:  # ProGAN: centres uniform in [r, size - r)
      ky, kx = jax.random.split(kpos)
      ys = jax.random.randint(ky, (nhoods_per_image,), r, h - r)
      xs = jax.random.randint(kx, (nhoods_per_image,), r, w - r)
    da = _descriptors(la, ys, xs, nhood_size)
    db = _descriptors(lb, ys, xs, nhood_size)
    out.append(_sliced_wasserstein_1(da, db, kdir, dir_repeats, dirs_per_repeat))
  return jnp.stack(out) * 1e3


def sliced_wasserstein(a: jax.Array, b: jax.Array, key: jax.Array, *,
                       nhood_size: int = 7,
                       nhoods_per_image: int | None = 128,
                       dir_repeats: int = 4,
                       dirs_per_repeat: int = 128,
                       min_resolution: int = 16) -> dict[str, jax.Array]:
  """Sliced Wasserstein distance between two image sets (ProGAN, Karras et al. 2018).

  Algorithm (tkarras/progressive_growing_of_gans metrics/sliced_wasserstein.py):
    1. Laplacian pyramid of each image (5x5 binomial filter, mirror borders, as cv2.pyrDown /
       pyrUp), one level per resolution H, H/2, ... >= 16;
    2. per level, 128 random 7x7 neighbourhoods per image -> descriptors (7*7*C values);
    3. per level and set, normalise each colour channel of the descriptors to zero mean and
       unit standard deviation over all descriptors of that set;
    4. per level, 4 repeats x 128 random unit directions: project, sort, mean |difference|
       (1-D Wasserstein-1 between sorted projections), averaged over directions and repeats;
    5. x1e3 per level, plus the average over levels.

  Deviations from ProGAN, all deliberate:
    - patch positions are drawn once per level from `key` and shared by every image of both
      sets (ProGAN draws them independently per image and per set). Marginally each patch is
      still uniform; in exchange the result is exactly 0 for identical sets, symmetric in
      (a, b), and invariant to image order. `nhoods_per_image=None` uses every position.
    - randomness comes from `key` (deterministic) instead of numpy's global RNG;
    - images are float [-1, 1] instead of uint8 [0, 255]: step 3 makes the distance invariant
      to a per-channel affine change of range, so the numbers are comparable;
    - a constant colour channel (std 0) is left at 0 instead of producing NaN;
    - both sets must hold the same number of images (ProGAN asserts the same).

  Args:
    a, b: [N, H, W, C] image sets, same shape; H, W divisible by 2^(levels - 1).
    key: PRNG key for positions and directions.

  Returns:
    {'SWDx1e3_<res>': scalar per level (finest first), 'SWDx1e3_avg': average}.
  """
  if a.ndim != 4 or a.shape != b.shape:
    raise ValueError(f'expected two [N, H, W, C] sets of the same shape, got {a.shape} and '
                     f'{b.shape}')
  res = swd_resolutions(a.shape[1], a.shape[2], min_resolution)
  if not res:
    raise ValueError(f'SWD needs images of at least {min_resolution}x{min_resolution}, '
                     f'got {a.shape[1]}x{a.shape[2]}')
  f = 2 ** (len(res) - 1)
  if a.shape[1] % f or a.shape[2] % f:
    raise ValueError(f'SWD with {len(res)} pyramid levels needs H and W divisible by {f}, '
                     f'got {a.shape[1]}x{a.shape[2]}')
  d = _swd_levels(a, b, key, len(res), nhood_size, nhoods_per_image, dir_repeats,
                  dirs_per_repeat)
  out = {f'SWDx1e3_{r}': d[i] for i, r in enumerate(res)}
  out['SWDx1e3_avg'] = jnp.mean(d)
  return out


# ---------------------------------------------------------------------------------------------
# Networks supplied by the user: FID (Inception) and identity similarity (ArcFace).

FeaturesFn = Callable[[jax.Array], jax.Array]  # [B, H, W, 3] in [-1, 1] -> [B, D]
_FEATURE_LOADERS: dict[str, Callable[[pathlib.Path], FeaturesFn]] = {}
# Networks this toolkit implements: their module registers the loader when imported.
_BUILTIN_LOADER_MODULES = {'arcface': 'inversion.encoders.sfe'}  # IR-SE-50 (model_ir_se50.pth)


class FeatureNetworkUnavailableError(RuntimeError):
  """The network file exists but no JAX implementation is registered to load it."""


def register_feature_network(name: str, loader: Callable[[pathlib.Path], FeaturesFn]) -> None:
  """Plugs in a loader: `loader(path) -> features_fn`, for name 'inception' or 'arcface'.

  features_fn maps [B, H, W, 3] images in [-1, 1] to [B, D] features and does its own
  resizing / cropping / range conversion (e.g. Inception: 299x299, [0, 255]; ArcFace: face
  crop to 112x112).
  """
  if name not in weights_lib.WEIGHTS:
    raise ValueError(f'unknown network {name!r}; known: {sorted(weights_lib.WEIGHTS)}')
  _FEATURE_LOADERS[name] = loader


def feature_network(name: str, path: str | pathlib.Path | None = None) -> FeaturesFn:
  """Resolves the network file (explicit path / env / cache) and builds its features_fn.

  Raises:
    WeightsNotFoundError: the file is missing (message says where to get it).
    FeatureNetworkUnavailableError: the file exists but no loader is registered.
  """
  p = weights_lib.resolve_weights(name, path)
  if name not in _FEATURE_LOADERS and name in _BUILTIN_LOADER_MODULES:
    importlib.import_module(_BUILTIN_LOADER_MODULES[name])  # registers its loader
  if name not in _FEATURE_LOADERS:
    raise FeatureNetworkUnavailableError(
        f'Found {p} for {name!r}, but this toolkit ships no JAX implementation of that '
        f'network. Pass features_fn=... (a function [B, H, W, 3] in [-1, 1] -> [B, D]), or '
        f'register a loader with inversion.metrics.register_feature_network({name!r}, loader).')
  return _FEATURE_LOADERS[name](p)


def _features(images, features_fn, batch_size):
  feats = [np.asarray(features_fn(images[i:i + batch_size]), np.float64)
           for i in range(0, images.shape[0], batch_size)]
  return np.concatenate(feats, axis=0)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray,
                     mu2: np.ndarray, sigma2: np.ndarray) -> float:
  """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)), float64 (NVlabs metrics/frechet_...)."""
  import scipy.linalg  # pylint: disable=import-outside-toplevel
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  m = np.square(mu1 - mu2).sum()
  s = scipy.linalg.sqrtm(np.dot(sigma1, sigma2))
  s = s[0] if isinstance(s, tuple) else s
  return float(np.real(m + np.trace(sigma1 + sigma2 - s * 2)))


def fid(images_a: jax.Array, images_b: jax.Array, *,
        features_fn: FeaturesFn | None = None,
        weights_path: str | pathlib.Path | None = None,
        batch_size: int = 64) -> float:
  """Fréchet Inception distance between two image sets (any sizes, [N, H, W, 3]).

  Args:
    features_fn: [B, H, W, 3] in [-1, 1] -> [B, D] (e.g. Inception pool3, 2048-D). None =
      `feature_network('inception', weights_path)`, which needs the NVlabs
      `inception-2015-12-05.pt` file and a registered loader (see module docstring).
  """
  fn = features_fn if features_fn is not None else feature_network('inception', weights_path)
  fa, fb = _features(images_a, fn, batch_size), _features(images_b, fn, batch_size)
  return frechet_distance(fa.mean(0), np.cov(fa, rowvar=False),
                          fb.mean(0), np.cov(fb, rowvar=False))


def identity_similarity(x: jax.Array, y: jax.Array, *,
                        features_fn: FeaturesFn | None = None,
                        weights_path: str | pathlib.Path | None = None) -> jax.Array:
  """Per-image cosine similarity of face-identity embeddings (as pSp/e4e ID metrics). [B].

  Args:
    features_fn: [B, H, W, 3] in [-1, 1] -> [B, D] identity embeddings (ArcFace IR-SE50,
      including its face crop/resize). None = `feature_network('arcface', weights_path)`.
  """
  _check_pair(x, y)
  fn = features_fn if features_fn is not None else feature_network('arcface', weights_path)
  ex, ey = fn(x), fn(y)
  ex = ex / jnp.linalg.norm(ex, axis=-1, keepdims=True)
  ey = ey / jnp.linalg.norm(ey, axis=-1, keepdims=True)
  return jnp.sum(ex * ey, axis=-1)
