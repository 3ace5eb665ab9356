"""VGG16 feature trunk (torchvision layout) in Flax, plus the input handling around it.

The trunk is `torchvision.models.vgg16().features`: thirteen 3x3 convolutions (padding 1), each
followed by ReLU, with 2x2/stride-2 max-pools after conv1_2, conv2_2, conv3_3, conv4_3 and
conv5_3. Torchvision index of each conv (`features.N`):

  conv1_1 0   conv1_2 2 | conv2_1 5   conv2_2 7 | conv3_1 10  conv3_2 12  conv3_3 14 |
  conv4_1 17  conv4_2 19  conv4_3 21 | conv5_1 24  conv5_2 26  conv5_3 28

Activation names: `conv4_3` is the ReLU output (what LPIPS, Image2StyleGAN and idinvert use),
`conv4_3_pre` the convolution output before ReLU. Only the layers up to the deepest requested
one are computed.

Input handling (`prepare_images` then `normalize_input`), images NHWC in [-1, 1]:
  1. channels: 1 channel -> repeated to RGB; 3 -> as is; more than 3 -> the first three are
     used and the rest (e.g. a mask channel) ignored, logged once per process; 2 -> error.
  2. optional resize: `resize=256` area-averages images larger than 256 down to 256x256
     (`F.interpolate(..., size=(256, 256), mode='area')`, as the NVlabs projector does);
     smaller images are left alone.
  3. normalisation `preprocess`:
     'lpips'    (x - shift) / scale with LPIPS's ScalingLayer constants;
     'imagenet' ((x + 1) / 2 - mean) / std with ImageNet mean/std -- the same numbers as
                'lpips' (shift = 2 * mean - 1, scale = 2 * std), kept as a separate name;
     'caffe'    idinvert / Keras VGG16: (x + 1) * 127.5, RGB -> BGR, minus the BGR mean
                (103.939, 116.779, 123.68);
     None       no normalisation (the input is already what the weights expect).

Example:

  >>> variables = load_vgg16_params()                            # torchvision file
  >>> feats = vgg16_features(variables, x, ('conv1_2', 'conv4_3'), preprocess='imagenet')
  >>> feats['conv4_3'].shape                                     # [B, H/8, W/8, 512]
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from inversion import weights
from inversion.weights import WeightsFormatError

__all__ = [
    'LAYER_NAMES',
    'VGG16',
    'VGG16_CONVS',
    'area_resize',
    'bilinear_resize',
    'init_random_params',
    'load_idinvert_vgg16_params',
    'load_vgg16_params',
    'normalize_input',
    'prepare_images',
    'vgg16_features',
    'vgg16_params_from_state_dict',
]

_log = logging.getLogger(__name__)

# (name, torchvision features index, in channels, out channels)
VGG16_CONVS: tuple[tuple[str, int, int, int], ...] = (
    ('conv1_1', 0, 3, 64), ('conv1_2', 2, 64, 64),
    ('conv2_1', 5, 64, 128), ('conv2_2', 7, 128, 128),
    ('conv3_1', 10, 128, 256), ('conv3_2', 12, 256, 256), ('conv3_3', 14, 256, 256),
    ('conv4_1', 17, 256, 512), ('conv4_2', 19, 512, 512), ('conv4_3', 21, 512, 512),
    ('conv5_1', 24, 512, 512), ('conv5_2', 26, 512, 512), ('conv5_3', 28, 512, 512),
)
POOL_AFTER = frozenset({'conv1_2', 'conv2_2', 'conv3_3', 'conv4_3', 'conv5_3'})
_CONV_NAMES = tuple(c[0] for c in VGG16_CONVS)
LAYER_NAMES: tuple[str, ...] = _CONV_NAMES + tuple(n + '_pre' for n in _CONV_NAMES)

# LPIPS ScalingLayer (lpips/lpips.py), for images in [-1, 1].
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
PREPROCESS_MODES = ('lpips', 'imagenet', 'caffe', None)

_HIGHEST = jax.lax.Precision.HIGHEST


# ---------------------------------------------------------------------------------------------
# Resampling (PyTorch semantics), NHWC.


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] averaging weights of adaptive average pooling (mode='area')."""
  m = np.zeros((n_out, n_in), np.float64)
  for i in range(n_out):
    start = (i * n_in) // n_out
    end = -(-((i + 1) * n_in) // n_out)
    m[i, start:end] = 1.0 / (end - start)
  return m


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights of bilinear resizing, align_corners=False (torch Upsample)."""
  m = np.zeros((n_out, n_in), np.float64)
  ratio = n_in / n_out
  for i in range(n_out):
    src = max((i + 0.5) * ratio - 0.5, 0.0)
    i0 = min(int(np.floor(src)), n_in - 1)
    i1 = min(i0 + 1, n_in - 1)
    lam = src - i0
    m[i, i0] += 1.0 - lam
    m[i, i1] += lam
  return m


def _resize_separable(x: jax.Array, mh: np.ndarray, mw: np.ndarray) -> jax.Array:
  x = jnp.einsum('oh,bhwc->bowc', jnp.asarray(mh, x.dtype), x, precision=_HIGHEST)
  return jnp.einsum('pw,bowc->bopc', jnp.asarray(mw, x.dtype), x, precision=_HIGHEST)


def _as_hw(size: int | Sequence[int]) -> tuple[int, int]:
  if isinstance(size, int):
    return size, size
  h, w = size
  return int(h), int(w)


def area_resize(x: jax.Array, size: int | Sequence[int]) -> jax.Array:
  """Area (adaptive average pooling) resize of NHWC images: `F.interpolate(mode='area')`."""
  b, h, w, c = x.shape
  oh, ow = _as_hw(size)
  if (oh, ow) == (h, w):
    return x
  if h % oh == 0 and w % ow == 0:  # integer factors: plain block means
    return x.reshape(b, oh, h // oh, ow, w // ow, c).mean(axis=(2, 4))
  return _resize_separable(x, _area_matrix(h, oh), _area_matrix(w, ow))


def bilinear_resize(x: jax.Array, size: int | Sequence[int]) -> jax.Array:
  """Bilinear resize of NHWC images, `nn.Upsample(mode='bilinear', align_corners=False)`."""
  _, h, w, _ = x.shape
  oh, ow = _as_hw(size)
  if (oh, ow) == (h, w):
    return x
  return _resize_separable(x, _bilinear_matrix(h, oh), _bilinear_matrix(w, ow))


# ---------------------------------------------------------------------------------------------
# Input handling.

_LOGGED: set[str] = set()


def _log_once(msg: str) -> None:
  if msg not in _LOGGED:
    _LOGGED.add(msg)
    _log.warning(msg)


def prepare_images(images: jax.Array, *, resize: int | None = None) -> jax.Array:
  """Channel rule and optional area downsizing; NHWC in, NHWC RGB out.

  Args:
    images: [B, H, W, C] in [-1, 1]; C = 1 (repeated to RGB), 3, or > 3 (channels after the
      third, e.g. a mask, are ignored; logged once). C = 2 is an error.
    resize: None = keep the size; an int S = area-average to SxS when H or W is larger than S
      (the NVlabs projector's `F.interpolate(size=(256, 256), mode='area')` for S = 256).

  Returns:
    [B, H', W', 3].
  """
  if images.ndim != 4:
    raise ValueError(f'images must be [B, H, W, C] (NHWC), got shape {images.shape}')
  c = images.shape[-1]
  if c == 1:
    images = jnp.repeat(images, 3, axis=-1)
  elif c == 2:
    raise ValueError('images with 2 channels are ambiguous; give 1 (grey), 3 (RGB) or '
                     '>3 (RGB + extra channels, which are ignored)')
  elif c > 3:
    _log_once(f'VGG/LPIPS input has {c} channels: using the first 3 as RGB and ignoring the '
              f'rest (e.g. a mask channel). Pass mask= to the loss to use a mask.')
    images = images[..., :3]
  if resize is not None and (images.shape[1] > resize or images.shape[2] > resize):
    images = area_resize(images, resize)
  return images


def normalize_input(images: jax.Array, preprocess: str | None) -> jax.Array:
  """Maps RGB [-1, 1] images to what the weights expect (see module docstring)."""
  if preprocess == 'lpips':
    return (images - jnp.asarray(LPIPS_SHIFT, images.dtype)) / jnp.asarray(LPIPS_SCALE,
                                                                           images.dtype)
  if preprocess == 'imagenet':
    x = (images + 1) / 2
    return (x - jnp.asarray(IMAGENET_MEAN, images.dtype)) / jnp.asarray(IMAGENET_STD,
                                                                        images.dtype)
  if preprocess == 'caffe':
    x = (images + 1) * 127.5
    return x[..., ::-1] - jnp.asarray(CAFFE_BGR_MEAN, images.dtype)
  if preprocess is None:
    return images
  raise ValueError(f'preprocess must be one of {PREPROCESS_MODES}, got {preprocess!r}')


# ---------------------------------------------------------------------------------------------
# Network.


def _check_layers(layers: Sequence[str]) -> tuple[str, ...]:
  if isinstance(layers, str):
    layers = (layers,)
  layers = tuple(layers)
  bad = [n for n in layers if n not in LAYER_NAMES]
  if bad or not layers:
    raise ValueError(f'Unknown VGG16 layer name(s) {bad or layers}; allowed: {LAYER_NAMES}')
  return layers


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 / stride-2 max-pool of NHWC activations (VALID: an odd last row or column is dropped,
  as torch's MaxPool2d(2, 2) does).

  Written as a reshape and a max rather than `nn.max_pool` (a reduce-window): the values are the
  same, and the gradient is elementwise comparisons instead of the select-and-scatter that
  reduce-window's gradient becomes, which XLA:CPU runs as slow gathers and scatters. Ties share
  the gradient equally; after a ReLU the only ties are zeros, whose gradient the ReLU zeroes.
  """
  b, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class VGG16(nn.Module):
  """VGG16 convolutional trunk returning named activations (NHWC).

  Input: normalised RGB images [B, H, W, 3] (see `normalize_input`). Output: dict name ->
  activation for the requested `layers` (e.g. 'conv4_3' post-ReLU, 'conv4_3_pre' pre-ReLU).
  """
  precision: Any = None  # jax.lax.Precision for the convolutions; None = default

  @nn.compact
  def __call__(self, x: jax.Array, layers: Sequence[str] = _CONV_NAMES) -> dict[str, jax.Array]:
    layers = _check_layers(layers)
    wanted = set(layers)
    deepest = max(_CONV_NAMES.index(n.removesuffix('_pre')) for n in layers)
    out = {}
    for i, (name, _, _, cout) in enumerate(VGG16_CONVS[:deepest + 1]):
      x = nn.Conv(cout, (3, 3), padding=((1, 1), (1, 1)), precision=self.precision,
                  name=name)(x)
      if name + '_pre' in wanted:
        out[name + '_pre'] = x
      x = nn.relu(x)
      if name in wanted:
        out[name] = x
      if name in POOL_AFTER and i < deepest:
        x = max_pool_2x2(x)
    return {n: out[n] for n in layers}


def vgg16_features(variables: Mapping[str, Any],
                   images: jax.Array,
                   layers: Sequence[str],
                   *,
                   preprocess: str | None = 'lpips',
                   resize: int | None = None,
                   precision: Any = None) -> dict[str, jax.Array]:
  """Named VGG16 activations of [-1, 1] images; a pure, jit/vmap-able function.

  Args:
    variables: `{'params': ...}` from `vgg16_params_from_state_dict` / `weights.load_*`.
    images: [B, H, W, C] in [-1, 1] (channel rule as in `prepare_images`).
    layers: names from `LAYER_NAMES`, e.g. ('conv1_1', 'conv4_3', 'conv4_3_pre').
    preprocess: 'lpips' | 'imagenet' | 'caffe' | None, matching the weights.
    resize: None, or S to area-downsample images larger than SxS (NVlabs: 256).
    precision: convolution precision (None = default / `jax.default_matmul_precision`).

  Returns:
    dict name -> [B, h, w, C_layer] activations.
  """
  if 'params' not in variables:
    raise ValueError("variables must be {'params': {...}} as returned by "
                     f'vgg16_params_from_state_dict; got keys {sorted(variables)}')
  x = normalize_input(prepare_images(images, resize=resize), preprocess)
  return VGG16(precision=precision).apply(variables, x, layers)


# ---------------------------------------------------------------------------------------------
# Weights conversion.

# Name patterns of the files people have; each maps a match to a torchvision features index.
_NAME_PATTERNS = (
    # torchvision / lpips-package trunk / fixtures: [prefix.]features.N.weight
    ('torchvision', re.compile(r'(?:^|[./])features\.(\d+)\.(weight|bias)$'), lambda n: n),
    # lpips.LPIPS whole-model state_dict: net.sliceK.N.weight (N keeps the global index)
    ('lpips_slices', re.compile(r'(?:^|[./])slice\d+\.(\d+)\.(weight|bias)$'), lambda n: n),
    # idinvert perceptual model: layerN.weight
    ('idinvert', re.compile(r'(?:^|[./])layer(\d+)\.(weight|bias)$'), lambda n: n),
    # NVlabs vgg16.pt TorchScript: layers.convK.weight, K = 1..13 in order
    ('nvlabs', re.compile(r'(?:^|[./])layers\.conv(\d+)\.(weight|bias)$'),
     lambda k: VGG16_CONVS[k - 1][1] if 1 <= k <= 13 else -1),
)


def vgg16_params_from_state_dict(state_dict: Mapping[str, Any],
                                 source: str = '<arrays>') -> dict[str, Any]:
  """Converts PyTorch-layout VGG16 conv arrays into `VGG16` variables.

  Recognised names (any leading prefix, e.g. 'vgg/' or 'module.'): torchvision
  `features.N.{weight,bias}`, lpips `net.sliceK.N.*`, idinvert `layerN.*`, NVlabs
  `layers.convK.*`. Weights `[O, I, 3, 3]` become kernels `[3, 3, I, O]`. Extra arrays
  (classifier, LPIPS linear layers) are ignored.

  Raises:
    WeightsFormatError: missing convolutions, wrong shapes, or several naming schemes at once.
  """
  by_index = {c[1]: c for c in VGG16_CONVS}
  found: dict[str, dict[tuple[str, str], np.ndarray]] = {}
  for key, value in state_dict.items():
    for scheme, pattern, to_index in _NAME_PATTERNS:
      m = pattern.search(key)
      if m and to_index(int(m.group(1))) in by_index:
        conv = by_index[to_index(int(m.group(1)))][0]
        found.setdefault(scheme, {})[(conv, m.group(2))] = np.asarray(value)
        break
  if not found:
    raise WeightsFormatError(
        f'{source}: no VGG16 convolution arrays found (expected names like '
        f"'features.0.weight', 'layer0.weight' or 'layers.conv1.weight'); "
        f'keys: {_describe(state_dict)}')
  complete = [s for s, d in found.items() if len(d) == 2 * len(VGG16_CONVS)]
  if len(complete) != 1:
    counts = {s: len(d) for s, d in found.items()}
    raise WeightsFormatError(
        f'{source}: expected one complete set of 13 VGG16 convolutions (26 arrays); '
        f'found per naming scheme {counts}. Missing: '
        f'{_missing(found[max(found, key=lambda s: len(found[s]))])}')
  arrays = found[complete[0]]
  params = {}
  for name, _, cin, cout in VGG16_CONVS:
    w, b = arrays[(name, 'weight')], arrays[(name, 'bias')]
    if w.shape != (cout, cin, 3, 3) or b.shape != (cout,):
      raise WeightsFormatError(
          f'{source}: {name} has weight {w.shape} / bias {b.shape}; expected '
          f'{(cout, cin, 3, 3)} / {(cout,)}')
    params[name] = {'kernel': jnp.asarray(np.transpose(w, (2, 3, 1, 0)), jnp.float32),
                    'bias': jnp.asarray(b, jnp.float32)}
  return {'params': params}


def _missing(arrays: Mapping[tuple[str, str], Any]) -> list[str]:
  return [f'{n}.{k}' for n, *_ in VGG16_CONVS for k in ('weight', 'bias')
          if (n, k) not in arrays]


def _describe(sd: Mapping[str, Any], limit: int = 12) -> str:
  keys = sorted(sd)
  more = f', ... ({len(keys)} in all)' if len(keys) > limit else ''
  return ', '.join(keys[:limit]) + more


def init_random_params(seed: int = 0) -> dict[str, Any]:
  """Random He-normal VGG16 variables. FOR TESTS AND BENCHMARKS ONLY.

  Nothing in the library calls this: losses and metrics that need VGG16 load real weights
  (`inversion.weights`) or fail loudly. (NumPy RNG: no per-shape XLA compiles.)
  """
  rng = np.random.default_rng(seed)
  params = {}
  for name, _, cin, cout in VGG16_CONVS:
    std = np.sqrt(2.0 / (9 * cin))
    params[name] = {'kernel': jnp.asarray(std * rng.standard_normal((3, 3, cin, cout)),
                                          jnp.float32),
                    'bias': jnp.zeros((cout,), jnp.float32)}
  return {'params': params}


def load_vgg16_params(path: str | os.PathLike | None = None,
                      name: str = 'vgg16') -> dict[str, Any]:
  """Loads torchvision-layout VGG16 weights into `inversion.vgg.VGG16` variables.

  Args:
    path: explicit file; None = resolve `name` (env variable / cache folder).
    name: registry key used for resolution and messages ('vgg16' or 'idinvert_vgg16').

  Returns:
    `{'params': {'conv1_1': {'kernel', 'bias'}, ...}}`. Pair torchvision weights with
    preprocess='imagenet' (== 'lpips'); idinvert weights with preprocess='caffe'.
  """
  p = weights.resolve_weights(name, path)
  return vgg16_params_from_state_dict(weights.load_state_dict(p), source=str(p))


def load_idinvert_vgg16_params(path: str | os.PathLike | None = None) -> dict[str, Any]:
  """Loads idinvert's perceptual VGG16 (`layerN.*` names); use it with preprocess='caffe'."""
  return load_vgg16_params(path, name='idinvert_vgg16')
