"""LPIPS v0.1 (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric", CVPR 2018) in JAX, VGG16 and AlexNet trunks.

Algorithm (the `lpips` package 0.1.4, `LPIPS.forward`):
  1. inputs in [-1, 1]; ScalingLayer (x - shift) / scale;
  2. trunk activations at five layers (VGG: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3;
     AlexNet: relu1..relu5);
  3. per layer, unit-normalise over channels: f / (sqrt(sum_c f^2) + 1e-10);
  4. squared difference of the two normalised maps;
  5. 1x1 linear layer (non-negative weights, no bias) -> one channel;
  6. spatial mean per layer (or, with spatial=True, bilinear upsampling of each layer's map to
     the input size, align_corners=False) and the sum over layers.

Deviation (gradients only): step 3 uses a square root whose gradient is 0 rather than NaN where
a pixel's features are all zero (possible after ReLU); forward values are unchanged.

Parameters are a pytree `{'trunk': {'params': ...}, 'lin': {'lin0': [C0], ..., 'lin4': [C4]}}`;
the trunk kind is read from its parameter names. Get them with `load_lpips_params` or
`load_nvlabs_vgg16_lpips_params` (files found by `inversion.weights`), or convert arrays with
`lpips_params_from_state_dicts`.

Example:

  >>> params = load_lpips_params('vgg')
  >>> d = jax.jit(lpips)(params, x, y)                # [B], x, y: [B, H, W, 3] in [-1, 1]
  >>> m = lpips(params, x, y, spatial=True)           # [B, H, W, 1]
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from inversion import vgg as vgg_lib
from inversion import weights
from inversion.weights import WeightsFormatError

__all__ = [
    'AlexNet',
    'LPIPS_CHANNELS',
    'LPIPS_LAYERS',
    'load_lpips_params',
    'load_nvlabs_vgg16_lpips_params',
    'lpips',
    'lpips_params_from_state_dicts',
    'normalize_channels',
    'random_lpips_params',
]

LPIPS_LAYERS = {
    'vgg': ('conv1_2', 'conv2_2', 'conv3_3', 'conv4_3', 'conv5_3'),
    'alex': ('relu1', 'relu2', 'relu3', 'relu4', 'relu5'),
}
LPIPS_CHANNELS = {'vgg': (64, 128, 256, 512, 512), 'alex': (64, 192, 384, 256, 256)}
EPS = 1e-10  # lpips.normalize_tensor

# AlexNet (torchvision `alexnet().features`): (name, features index, cin, cout, kernel, stride,
# padding, max-pool 3x3/2 before this conv).
ALEXNET_CONVS = (
    ('conv1', 0, 3, 64, 11, 4, 2, False),
    ('conv2', 3, 64, 192, 5, 1, 2, True),
    ('conv3', 6, 192, 384, 3, 1, 1, True),
    ('conv4', 8, 384, 256, 3, 1, 1, False),
    ('conv5', 10, 256, 256, 3, 1, 1, False),
)


class AlexNet(nn.Module):
  """AlexNet convolutional trunk (torchvision layout) returning 'relu1'..'relu5' (NHWC)."""
  precision: Any = None  # jax.lax.Precision for the convolutions; None = default

  @nn.compact
  def __call__(self, x: jax.Array, layers: Sequence[str] = LPIPS_LAYERS['alex']):
    names = [f'relu{i + 1}' for i in range(5)]
    bad = [n for n in layers if n not in names]
    if bad:
      raise ValueError(f'Unknown AlexNet layer(s) {bad}; allowed: {names}')
    deepest = max(names.index(n) for n in layers)
    out = {}
    for i, (name, _, _, cout, k, s, p, pool) in enumerate(ALEXNET_CONVS[:deepest + 1]):
      if pool:
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')
      x = nn.Conv(cout, (k, k), strides=(s, s), padding=((p, p), (p, p)),
                  precision=self.precision, name=name)(x)
      x = nn.relu(x)
      out[names[i]] = x
    return {n: out[n] for n in layers}


def _net_of(params: Mapping[str, Any]) -> str:
  trunk = params['trunk']['params']
  if 'conv1_1' in trunk:
    return 'vgg'
  if 'conv1' in trunk:
    return 'alex'
  raise ValueError(f'Unrecognised LPIPS trunk parameters: {sorted(trunk)}')


def normalize_channels(f: jax.Array, eps: float = EPS) -> jax.Array:
  """f / (||f||_channels + eps) over the last axis, with a zero (not NaN) gradient at f = 0."""
  s = jnp.sum(jnp.square(f), axis=-1, keepdims=True)
  pos = s > 0
  norm = jnp.where(pos, jnp.sqrt(jnp.where(pos, s, 1.0)), 0.0)
  return f / (norm + eps)


def trunk_features(params: Mapping[str, Any], x: jax.Array,
                   precision: Any = None) -> list[jax.Array]:
  """The five LPIPS trunk activations of scaled inputs x [B, H, W, 3]."""
  net = _net_of(params)
  layers = LPIPS_LAYERS[net]
  module = vgg_lib.VGG16(precision=precision) if net == 'vgg' else AlexNet(precision=precision)
  feats = module.apply(params['trunk'], x, layers)
  return [feats[n] for n in layers]


def lpips(params: Mapping[str, Any],
          x: jax.Array,
          y: jax.Array,
          *,
          spatial: bool = False,
          resize: int | None = None,
          return_layers: bool = False,
          precision: Any = None):
  """LPIPS v0.1 distance between image batches.

  Args:
    params: `{'trunk': ..., 'lin': ...}` (see module docstring).
    x, y: [B, H, W, C] in [-1, 1]; C = 1 / 3 / >3 as in `vgg.prepare_images`.
    spatial: False -> [B]; True -> per-pixel map [B, H', W', 1] (each layer's map bilinearly
      upsampled to the network input size H' x W', then summed).
    resize: None, or S to area-downsample inputs larger than SxS first (NVlabs projector: 256).
    return_layers: also return the list of the five per-layer terms.
    precision: convolution precision (None = default / `jax.default_matmul_precision`).

  Returns:
    [B] distances (or [B, H', W', 1] maps); with return_layers, (value, [per-layer values]).
  """
  x = vgg_lib.prepare_images(x, resize=resize)
  y = vgg_lib.prepare_images(y, resize=resize)
  if x.shape != y.shape:
    raise ValueError(f'x and y must have the same shape, got {x.shape} and {y.shape}')
  _, h, w, _ = x.shape
  # 1. scaling layer; 2. trunk, one call per image batch (the target's features are then
  # loop-invariant: the engine computes them once per chunk, and backward skips them)
  feats_x, feats_y = (trunk_features(params, vgg_lib.normalize_input(im, 'lpips'), precision)
                      for im in (x, y))
  per_layer = []
  for k, (fx, fy) in enumerate(zip(feats_x, feats_y)):
    # 3. unit-normalise channels; 4. squared difference
    d = jnp.square(normalize_channels(fx) - normalize_channels(fy))
    # 5. 1x1 linear layer
    wk = params['lin'][f'lin{k}']
    m = jnp.einsum('bhwc,c->bhw', d, wk.astype(d.dtype), precision=precision)[..., None]
    # 6. spatial mean, or upsampling to the input size
    per_layer.append(vgg_lib.bilinear_resize(m, (h, w)) if spatial else m.mean(axis=(1, 2, 3)))
  val = per_layer[0]
  for t in per_layer[1:]:
    val = val + t
  return (val, per_layer) if return_layers else val


# ---------------------------------------------------------------------------------------------
# Weights conversion.

_LIN_PATTERNS = (
    re.compile(r'(?:^|[./])lin(\d)\.model\.1\.weight$'),   # lpips package v0.1 (with dropout)
    re.compile(r'(?:^|[./])lin(\d)\.model\.0\.weight$'),   # lpips package, use_dropout=False
    re.compile(r'(?:^|[./])lins\.(\d)\.model\.1\.weight$'),
    re.compile(r'(?:^|[./])lins\.(\d)\.model\.0\.weight$'),
    re.compile(r'(?:^|[./])lpips(\d)$'),                   # NVlabs vgg16.pt
)


def _lin_from_state_dict(sd: Mapping[str, Any], net: str, source: str) -> dict[str, jax.Array]:
  chans = LPIPS_CHANNELS[net]
  for pattern in _LIN_PATTERNS:
    found = {}
    for key, value in sd.items():
      m = pattern.search(key)
      if m:
        found[int(m.group(1))] = np.asarray(value, np.float32)
    if found:
      break
  else:
    raise WeightsFormatError(
        f'{source}: no LPIPS linear-layer weights found (expected lin0.model.1.weight ... '
        f'or lpips0 ...); keys: {vgg_lib._describe(sd)}')
  lin = {}
  for k, c in enumerate(chans):
    if k not in found:
      raise WeightsFormatError(f'{source}: LPIPS linear layer {k} missing (found {sorted(found)})')
    a = found[k]
    if a.size != c:
      raise WeightsFormatError(
          f'{source}: LPIPS linear layer {k} has shape {a.shape}; the {net} trunk needs {c} '
          f'channels {chans}')
    lin[f'lin{k}'] = jnp.asarray(a.reshape(c))
  return lin


def _alexnet_params_from_state_dict(sd: Mapping[str, Any], source: str) -> dict[str, Any]:
  by_index = {c[1]: c for c in ALEXNET_CONVS}
  pat = re.compile(r'(?:^|[./])(?:features|slice\d+)\.(\d+)\.(weight|bias)$')
  arrays = {}
  for key, value in sd.items():
    m = pat.search(key)
    if m and int(m.group(1)) in by_index:
      arrays[(by_index[int(m.group(1))][0], m.group(2))] = np.asarray(value)
  params = {}
  for name, _, cin, cout, k, *_ in ALEXNET_CONVS:
    w, b = arrays.get((name, 'weight')), arrays.get((name, 'bias'))
    if w is None or b is None:
      raise WeightsFormatError(f'{source}: AlexNet {name} weight/bias missing; keys: '
                               f'{vgg_lib._describe(sd)}')
    if w.shape != (cout, cin, k, k) or b.shape != (cout,):
      raise WeightsFormatError(f'{source}: AlexNet {name} has weight {w.shape} / bias '
                               f'{b.shape}; expected {(cout, cin, k, k)} / {(cout,)}')
    params[name] = {'kernel': jnp.asarray(np.transpose(w, (2, 3, 1, 0)), jnp.float32),
                    'bias': jnp.asarray(b, jnp.float32)}
  return {'params': params}


def lpips_params_from_state_dicts(trunk_state_dict: Mapping[str, Any],
                                  lin_state_dict: Mapping[str, Any],
                                  net: str = 'vgg',
                                  source: str = '<arrays>') -> dict[str, Any]:
  """Builds LPIPS params from PyTorch-layout arrays.

  Args:
    trunk_state_dict: torchvision VGG16 / AlexNet arrays (`features.N.*`; other schemes as in
      `vgg.vgg16_params_from_state_dict`).
    lin_state_dict: LPIPS linear layers, `lin{k}.model.1.weight` [1, C, 1, 1] (the lpips
      package's v0.1 file), `lins.{k}.model.1.weight`, or NVlabs `lpips{k}`.
    net: 'vgg' or 'alex'.
  """
  if net == 'vgg':
    trunk = vgg_lib.vgg16_params_from_state_dict(trunk_state_dict, source=source)
  elif net == 'alex':
    trunk = _alexnet_params_from_state_dict(trunk_state_dict, source)
  else:
    raise ValueError(f"net must be 'vgg' or 'alex', got {net!r}")
  return {'trunk': trunk, 'lin': _lin_from_state_dict(lin_state_dict, net, source)}


def random_lpips_params(seed: int = 0, net: str = 'vgg') -> dict[str, Any]:
  """Random LPIPS params. FOR TESTS AND BENCHMARKS ONLY (never used as a fallback)."""
  rng = np.random.default_rng(seed)
  if net == 'vgg':
    trunk = vgg_lib.init_random_params(seed)
  elif net == 'alex':
    trunk = {'params': {}}
    for name, _, cin, cout, k, *_ in ALEXNET_CONVS:
      std = np.sqrt(2.0 / (k * k * cin))
      trunk['params'][name] = {
          'kernel': jnp.asarray(std * rng.standard_normal((k, k, cin, cout)), jnp.float32),
          'bias': jnp.zeros((cout,), jnp.float32)}
  else:
    raise ValueError(f"net must be 'vgg' or 'alex', got {net!r}")
  lin = {f'lin{i}': jnp.asarray(rng.uniform(size=c), jnp.float32)
         for i, c in enumerate(LPIPS_CHANNELS[net])}
  return {'trunk': trunk, 'lin': lin}


def load_lpips_params(net: str = 'vgg',
                      trunk_path: str | os.PathLike | None = None,
                      lin_path: str | os.PathLike | None = None) -> dict[str, Any]:
  """Loads LPIPS v0.1 parameters: trunk (torchvision file) + linear layers (lpips file).

  Args:
    net: 'vgg' or 'alex'.
    trunk_path: torchvision VGG16 / AlexNet weights; None = resolve 'vgg16' / 'alexnet'.
    lin_path: LPIPS v0.1 `vgg.pth` / `alex.pth`; None = resolve 'lpips_vgg' / 'lpips_alex'.

  Returns:
    `{'trunk': variables, 'lin': {'lin0': [C0], ...}}` for `inversion.lpips.lpips`.
  """
  if net not in ('vgg', 'alex'):
    raise ValueError(f"net must be 'vgg' or 'alex', got {net!r}")
  trunk_name, lin_name = ('vgg16', 'lpips_vgg') if net == 'vgg' else ('alexnet', 'lpips_alex')
  tp = weights.resolve_weights(trunk_name, trunk_path)
  lp = weights.resolve_weights(lin_name, lin_path)
  return lpips_params_from_state_dicts(weights.load_state_dict(tp), weights.load_state_dict(lp),
                                       net=net, source=f'{tp} + {lp}')


def load_nvlabs_vgg16_lpips_params(path: str | os.PathLike | None = None) -> dict[str, Any]:
  """Loads the NVlabs `vgg16.pt` TorchScript file (trunk and LPIPS weights in one file).

  Its state_dict names are `layers.conv1..conv13.{weight,bias}` (= torchvision `features.N`
  in order), `layers.fc1..fc3.*` (ignored) and `lpips0..lpips4` (one weight per channel).
  Its input normalisation (ImageNet mean/std, i.e. the LPIPS scaling layer on [-1,1] images)
  is done by `inversion.lpips.lpips`. Note NVlabs' own forward takes [0,255] images; ours
  takes [-1,1] like everything else here.

  Provenance: the names and the preprocessing follow genforce's port of this file
  (`_convert_weights` in genforce's perceptual model); the TorchScript code inside the file is
  never executed here, so its own preprocessing has not been checked against ours.
  """
  p = weights.resolve_weights('nvlabs_vgg16', path)
  sd = weights.load_state_dict(p)
  return lpips_params_from_state_dicts(sd, sd, net='vgg', source=str(p))
