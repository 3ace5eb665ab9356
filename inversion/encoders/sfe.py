"""StyleFeatureEditor's networks (SFE; Bobkov et al., CVPR 2024) in Flax, numerically the
official PyTorch modules, and a torch-free reader of the official `.pt` files.

A port of AIRI-Institute/StyleFeatureEditor (commit 258318c; ControlGenAI's successor repository
has the same files) `models/psp/encoders/psp_encoders.py`, `feature_resnet.py`, `helpers.py`,
`model_irse.py` and the forward passes of `models/methods.py`. Module names are the official
ones, Sequential indices included (`fs_backbone.block_3.0.conv2` lives at
`params['fs_backbone']['block_3.0']['conv2']`), so a variable's path joined with dots is its
official key. Layouts are JAX's: activations NHWC, conv kernels `[kh, kw, in, out]`, dense
kernels `[in, out]`; BatchNorm running statistics are the `batch_stats` collection (eval mode:
running averages, eps 1e-5; `train=True` in the modules uses batch statistics, for training).

  inverter    FSLikeBackbone: iResNet-50 trunk (stem 3x3 conv + BN + PReLU; IBasicBlock stages
              64/128/256/512 wide, 3/4/14/3 deep, strides 2/2/1/2: SFE removes stage 3's stride)
              -> W+ offsets: each stage's output adaptive-average-pooled to 3x3, concatenated,
              one Linear per code -> [B, num_ws, w_dim] (the caller adds latent_avg);
              content_layer on stage 3's output -> F_pred [B, 64, 64, 512].
              Fuser: ContentLayerDeepFast(6, 1024, 512): F_k = fuser(cat(F_pred, F_w)).
  editor      ContentLayerDeepFast(6, 1024, 512): F_k' = editor(cat(F_k, delta)), delta =
              F(w_e) - F(edit(w_e)) (`runners/inference_runners.py`).
  e4e         Encoder4Editing(50, 'ir_se'): IR-SE-50 trunk, FPN (bilinear align_corners=True up-
              sampling + 1x1 lateral convs) and GradualStyleBlocks; code 0 from the coarsest map
              is copied to all codes and codes i >= 1 add their block's output (the 'Inference'
              stage). Returns the offset from latent_avg.
  arcface     model_irse.Backbone(112, 50, 'ir_se') (pSp's ID loss network): the same trunk +
              BN2d, flatten, Linear(512*7*7, 512), BN1d, L2 normalisation.

Conventions that matter for parity: strided 3x3 convs pad 1 on both sides; the IR-SE identity
shortcut `MaxPool2d(1, stride)` is `x[:, ::s, ::s]`; PyTorch adaptive average pooling uses bins
[floor(i*n/m), ceil((i+1)*n/m)) (unequal bins when m does not divide n, 128 -> 3 for example);
the W+ head's and ArcFace's Linear read a (C, H, W) flatten, so their kernels' input rows are
permuted once at load to our (H, W, C) flatten; e4e's EqualLinear (lr_mul 1) keeps its raw
weight and applies 1/sqrt(in) at run time, as the official does. SFE resizes images with
`F.interpolate(bilinear, align_corners=False)` (no antialiasing): `resize_bilinear`.

Files (`load_official`, torch-free through `generators.torch_io`): kind is read from the keys.

  sfe-inverter     sfe_inverter_light.pt: {'state_dict': {'encoder.*': Inverter}}
  sfe-editor       sfe_editor_light.pt: 'encoder.*' = feature editor, 'inverter.*' = Inverter
  e4e              e4e_ffhq_encode.pt: 'encoder.*' = Encoder4Editing, top-level 'latent_avg'
                   ('decoder.*', the generator, is read by `generators.load`)
  arcface-ir-se50  model_ir_se50.pth: a bare Backbone state dict

`discriminator.*` tensors (SFE training) are ignored, with a note. Sizes are read from the
tensor shapes; the input sizes of the inverter (fully convolutional + adaptive pooling) cannot
be, and are the official 256. Our own files (`save` / `load`): one `.npz` holding the config as
JSON (`__config__`) and the variables flattened to 'collection/module/.../leaf' keys.

Example:
  >>> w = load_official('sfe_editor_light.pt')
  >>> x = resize_bilinear(images, w.inverter_config.input_size)        # [B, 256, 256, 3]
  >>> offset, f_pred = inverter_apply(w.inverter_config, w.inverter_vars, x)
  >>> ws = latent_avg + offset                                         # [B, 18, 512]
  >>> f_w = networks.synthesis_features(g_config, g_vars, ws, 'b64.conv1')
  >>> f_k = fuse(w.inverter_config, w.inverter_vars, f_pred, f_w)      # [B, 64, 64, 512]
  >>> img = networks.synthesis(g_config, g_vars, ws, feature_layer='b64.conv1', features=f_k)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import pathlib
import re
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from generators import networks
from generators import torch_io
from generators.torch_io import CheckpointError

log = logging.getLogger(__name__)

Array = jax.Array

BN_EPS = 1e-5                 # nn.BatchNorm2d / 1d default
BN_MOMENTUM = 0.9             # flax's decay = 1 - torch's momentum 0.1
PRELU_INIT = 0.25             # nn.PReLU default slope
GRADUAL_LRELU_SLOPE = 0.01    # nn.LeakyReLU() in GradualStyleBlock
FEATURE_STRIDE = 4            # inverter input side / F side (stem /1, stages /2, /2, /1)
INVERTER_STRIDES = (2, 2, 1, 2)  # iResNet stage strides with SFE's unstrided stage 3
CONTENT_STAGE = 2             # content_layer reads stage 3's output (index 2)
IRSE_STRIDE = 2               # every IR-SE stage halves the side (get_blocks)
ARCFACE_INPUT = 112           # Backbone(input_size=112)
ARCFACE_CROP_BASE = 256       # pSp's face_pool size, at which the crop below is defined
ARCFACE_CROP = (35, 223, 32, 220)  # id_loss.extract_feats: x[:, :, 35:223, 32:220]
NATIVE_FORMAT = 'stylegan-inversion-jax-sfe'
NATIVE_VERSION = 1
_LIST_LIMIT = 12              # keys listed in a mismatch message
# torch default init of Conv2d / Linear weights: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in))
TORCH_INIT = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')

KINDS = ('sfe-inverter', 'sfe-editor', 'e4e', 'arcface-ir-se50')
KNOWN_FILES = ("sfe_inverter_light.pt (SFE inverter), sfe_editor_light.pt (SFE feature editor + "
               "inverter), e4e_ffhq_encode.pt (e4e encoder) and model_ir_se50.pth (ArcFace "
               "IR-SE-50)")

__all__ = [
    'ArcFaceConfig', 'E4EConfig', 'EditorConfig', 'InverterConfig', 'OfficialFileError',
    'OfficialWeights', 'adaptive_avg_pool', 'arcface_apply', 'arcface_features', 'e4e_apply',
    'editor_apply', 'fuse', 'init_e4e', 'init_editor', 'init_inverter', 'inverter_apply',
    'load', 'load_official', 'resize_bilinear', 'save',
]


class OfficialFileError(CheckpointError):
  """An SFE / e4e / ArcFace file that is not one of the known kinds, or whose tensors do not
  fit the architecture (the message names the file, the part and the keys)."""


# ----------------------------------------------------------------------------------------------
# Configs.


def _check_stages(what: str, channels: Sequence[int], depths: Sequence[int]) -> None:
  if len(channels) != 4 or len(depths) != 4 or min(depths) < 1 or min(channels) < 1:
    raise ValueError(f'{what} needs 4 stages of >= 1 block, got channels {tuple(channels)}, '
                     f'depths {tuple(depths)}')


@dataclasses.dataclass(frozen=True)
class InverterConfig:
  """SFE's Inverter: FSLikeBackbone (W+ head + F_pred) and its fuser."""
  input_size: int = 256                                  # square input side (SFE resizes to it)
  stage_channels: tuple[int, ...] = (64, 128, 256, 512)  # iResNet stage widths
  stage_depths: tuple[int, ...] = (3, 4, 14, 3)          # IBasicBlocks per stage
  pooled_size: int = 3                                   # AdaptiveAvgPool2d side in the W+ head
  num_ws: int = 18                                       # codes (one Linear each)
  w_dim: int = 512
  feature_channels: int = 512                            # F channels (= G's at the layer)
  fuser_blocks: int = 6                                  # ContentLayerDeepFast(len=6)

  def __post_init__(self):
    _check_stages('InverterConfig', self.stage_channels, self.stage_depths)
    if self.input_size % FEATURE_STRIDE or self.input_size < 2 * FEATURE_STRIDE:
      raise ValueError(f'inverter input_size must be a multiple of {FEATURE_STRIDE} and >= '
                       f'{2 * FEATURE_STRIDE}, got {self.input_size}')

  @property
  def feature_size(self) -> int:
    """Side of F_pred / F_k: input_size / 4 (64 for SFE)."""
    return self.input_size // FEATURE_STRIDE

  @property
  def head_features(self) -> int:
    return sum(self.stage_channels) * self.pooled_size ** 2


@dataclasses.dataclass(frozen=True)
class EditorConfig:
  """SFE's feature editor ContentLayerDeepFast(blocks, 2 * channels, channels)."""
  channels: int = 512
  blocks: int = 6


@dataclasses.dataclass(frozen=True)
class E4EConfig:
  """Encoder4Editing(num_layers, 'ir_se'); styles from c3 (< coarse), p2 (< middle), p1."""
  input_size: int = 256
  stage_channels: tuple[int, ...] = (64, 128, 256, 512)  # IR-SE stage widths
  stage_depths: tuple[int, ...] = (3, 4, 14, 3)          # units per stage (get_blocks(50))
  num_ws: int = 18                                       # style_count = 2 log2(G size) - 2
  w_dim: int = 512
  se_reduction: int = 16
  coarse: int = 3                                        # coarse_ind
  middle: int = 7                                        # middle_ind

  def __post_init__(self):
    _check_stages('E4EConfig', self.stage_channels, self.stage_depths)
    side = self.input_size // IRSE_STRIDE ** 4
    if side < 1 or side * IRSE_STRIDE ** 4 != self.input_size or side & (side - 1):
      raise ValueError(f'e4e input_size must be 16 x a power of two, got {self.input_size}')

  @property
  def tap_sides(self) -> tuple[int, int, int]:
    """Sides of c3, p2, p1 (16, 32, 64 at 256 px): the GradualStyleBlocks' `spatial`."""
    s = self.input_size // IRSE_STRIDE ** 4
    return s, 2 * s, 4 * s


@dataclasses.dataclass(frozen=True)
class ArcFaceConfig:
  """model_irse.Backbone(112, num_layers, 'ir_se', affine)."""
  stage_channels: tuple[int, ...] = (64, 128, 256, 512)
  stage_depths: tuple[int, ...] = (3, 4, 14, 3)
  se_reduction: int = 16
  embedding: int = 512
  affine: bool = True                                    # BatchNorm1d(affine) at the end

  def __post_init__(self):
    _check_stages('ArcFaceConfig', self.stage_channels, self.stage_depths)


# ----------------------------------------------------------------------------------------------
# Resampling exactly as PyTorch's.


def _bilinear_matrix(n_in: int, n_out: int, align_corners: bool) -> np.ndarray:
  """[n_out, n_in] weights of F.interpolate(mode='bilinear') along one axis (float32 maths, as
  PyTorch's CPU kernel: source index clamped at 0, neighbour clamped at the edge)."""
  i = np.arange(n_out, dtype=np.float32)
  if align_corners:
    scale = np.float32((n_in - 1) / (n_out - 1)) if n_out > 1 else np.float32(0)
    src = i * scale
  else:
    src = np.maximum((i + np.float32(0.5)) * np.float32(n_in / n_out) - np.float32(0.5), 0)
  i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  i1 = np.minimum(i0 + 1, n_in - 1)
  l1 = np.clip(src - i0, 0, 1).astype(np.float32)
  m = np.zeros((n_out, n_in), np.float32)
  np.add.at(m, (np.arange(n_out), i0), 1 - l1)
  np.add.at(m, (np.arange(n_out), i1), l1)
  return m


def _pool_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights of AdaptiveAvgPool along one axis: bins [floor(i n/m), ceil)."""
  m = np.zeros((n_out, n_in), np.float32)
  for i in range(n_out):
    start, end = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
    m[i, start:end] = 1.0 / (end - start)
  return m


def _separable(x: Array, mh: np.ndarray, mw: np.ndarray) -> Array:
  """x [B, H, W, C] -> [B, h, w, C] with row weights mh [h, H] and column weights mw [w, W]."""
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum('oh,bhwc->bowc', jnp.asarray(mh, x.dtype), x, precision=hi)
  return jnp.einsum('pw,bowc->bopc', jnp.asarray(mw, x.dtype), x, precision=hi)


def _size2(size: int | Sequence[int]) -> tuple[int, int]:
  return (int(size), int(size)) if np.ndim(size) == 0 else (int(size[0]), int(size[1]))


def resize_bilinear(images: Array, size: int | Sequence[int],
                    align_corners: bool = False) -> Array:
  """images [B, H, W, C] -> [B, h, w, C] as torch F.interpolate(mode='bilinear', align_corners,
  antialias=False) on NCHW: SFE's input resize (False) and e4e's FPN up-sampling (True)."""
  h, w = _size2(size)
  if images.shape[1:3] == (h, w) and not align_corners:
    return images
  return _separable(images, _bilinear_matrix(images.shape[1], h, align_corners),
                    _bilinear_matrix(images.shape[2], w, align_corners))


def adaptive_avg_pool(x: Array, size: int | Sequence[int]) -> Array:
  """x [B, H, W, C] -> [B, h, w, C] as nn.AdaptiveAvgPool2d(size) (PyTorch's bins)."""
  h, w = _size2(size)
  if x.shape[1:3] == (h, w):
    return x
  return _separable(x, _pool_matrix(x.shape[1], h), _pool_matrix(x.shape[2], w))


# ----------------------------------------------------------------------------------------------
# Building blocks (names are the official attribute names).


def _torch_bias_init(fan_in: int):
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                   bound)


def _conv(x: Array, features: int, kernel: int, name: str, stride: int = 1,
          bias: bool = False) -> Array:
  """nn.Conv2d(k, stride, padding=k // 2) on NHWC (symmetric padding, also when strided)."""
  pad = kernel // 2
  fan_in = x.shape[-1] * kernel * kernel
  return nn.Conv(features, (kernel, kernel), (stride, stride), ((pad, pad), (pad, pad)),
                 use_bias=bias, kernel_init=TORCH_INIT, bias_init=_torch_bias_init(fan_in),
                 name=name)(x)


def _bn(x: Array, name: str, train: bool, affine: bool = True) -> Array:
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS,
                      use_scale=affine, use_bias=affine, name=name)(x)


def _dense(x: Array, features: int, name: str) -> Array:
  """nn.Linear (torch init)."""
  return nn.Dense(features, kernel_init=TORCH_INIT, bias_init=_torch_bias_init(x.shape[-1]),
                  name=name)(x)


class PReLU(nn.Module):
  """nn.PReLU(num_parameters=C): one slope per channel."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    slope = self.param('weight', nn.initializers.constant(PRELU_INIT), (x.shape[-1],))
    return jnp.where(x >= 0, x, slope * x)


class IBasicBlock(nn.Module):
  """feature_resnet.IBasicBlock: BN, conv, BN, PReLU, conv(stride), BN + (downsampled) x."""
  planes: int
  stride: int
  downsample: bool

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    out = _bn(x, 'bn1', train)
    out = _conv(out, self.planes, 3, 'conv1')
    out = _bn(out, 'bn2', train)
    out = PReLU(name='prelu')(out)
    out = _conv(out, self.planes, 3, 'conv2', self.stride)
    out = _bn(out, 'bn3', train)
    if self.downsample:  # Sequential(conv1x1(stride), BN)
      x = _bn(_conv(x, self.planes, 1, 'downsample.0', self.stride), 'downsample.1', train)
    return out + x


class SEModule(nn.Module):
  """helpers.SEModule: x * sigmoid(fc2(relu(fc1(mean_hw(x))))) with 1x1 convs, no bias."""
  reduction: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = nn.relu(_conv(s, c // self.reduction, 1, 'fc1'))
    return x * jax.nn.sigmoid(_conv(s, c, 1, 'fc2'))


class BottleneckIRSE(nn.Module):
  """helpers.bottleneck_IR_SE: res_layer (BN, conv, PReLU, conv(stride), BN, SE) + shortcut
  (MaxPool2d(1, stride) when the width is kept, else conv1x1(stride) + BN)."""
  depth: int
  stride: int
  se_reduction: int

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    if x.shape[-1] == self.depth:
      shortcut = x[:, ::self.stride, ::self.stride]
    else:
      shortcut = _bn(_conv(x, self.depth, 1, 'shortcut_layer.0', self.stride),
                     'shortcut_layer.1', train)
    r = _bn(x, 'res_layer.0', train)
    r = _conv(r, self.depth, 3, 'res_layer.1')
    r = PReLU(name='res_layer.2')(r)
    r = _conv(r, self.depth, 3, 'res_layer.3', self.stride)
    r = _bn(r, 'res_layer.4', train)
    r = SEModule(self.se_reduction, name='res_layer.5')(r)
    return r + shortcut


def _irse_body(parent_input: Array, channels, depths, se_reduction: int, train: bool):
  """The IR-SE units 'body.0' ... (called inside a compact module); -> each stage's output."""
  x, unit, outs = parent_input, 0, []
  for width, depth in zip(channels, depths):
    for j in range(depth):
      x = BottleneckIRSE(width, IRSE_STRIDE if j == 0 else 1, se_reduction,
                         name=f'body.{unit}')(x, train)
      unit += 1
    outs.append(x)
  return outs


def _input_layer(x: Array, width: int, train: bool) -> Array:
  """Sequential(Conv2d(3, 64, 3, 1, 1, bias=False), BatchNorm2d, PReLU)."""
  x = _conv(x, width, 3, 'input_layer.0')
  return PReLU(name='input_layer.2')(_bn(x, 'input_layer.1', train))


class FeatureEncoderBlock(nn.Module):
  """psp_encoders.FeatureEncoderBlock: BN, conv, BN, PReLU, conv, BN ('body.0' ... 'body.5')."""
  channels: int

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    x = _conv(_bn(x, 'body.0', train), self.channels, 3, 'body.1')
    x = PReLU(name='body.3')(_bn(x, 'body.2', train))
    return _bn(_conv(x, self.channels, 3, 'body.4'), 'body.5', train)


def _content_layer_deep_fast(x: Array, blocks: int, channels: int, train: bool) -> Array:
  """psp_encoders.ContentLayerDeepFast(blocks, 2C, C) ('conv', 'body.0' ...; called inside a
  compact module): 1x1 conv with bias, then x + block(x), blocks - 1 times."""
  x = _conv(x, channels, 1, 'conv', bias=True)
  for k in range(blocks - 1):
    x = x + FeatureEncoderBlock(channels, name=f'body.{k}')(x, train)
  return x


class ContentLayerDeepFast(nn.Module):
  """SFE's fuser: F_k = ContentLayerDeepFast(cat(F_pred, F_w))."""
  blocks: int
  channels: int

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    return _content_layer_deep_fast(x, self.blocks, self.channels, train)


class FSLikeBackbone(nn.Module):
  """psp_encoders.FSLikeBackbone: image [B, S, S, 3] -> (W+ offsets [B, num_ws, w_dim],
  F_pred [B, S/4, S/4, feature_channels])."""
  config: InverterConfig

  @nn.compact
  def __call__(self, x: Array, train: bool = False):
    cfg = self.config
    x = _conv(x, cfg.stage_channels[0], 3, 'conv.0')  # iresnet50 conv1, bn1, prelu
    x = PReLU(name='conv.2')(_bn(x, 'conv.1', train))
    pooled, content = [], None
    for s, (width, depth, stride) in enumerate(zip(cfg.stage_channels, cfg.stage_depths,
                                                   INVERTER_STRIDES)):
      for j in range(depth):  # every iResNet stage starts strided, so with a downsample
        x = IBasicBlock(width, stride if j == 0 else 1, j == 0, name=f'block_{s + 1}.{j}')(
            x, train)
      pooled.append(adaptive_avg_pool(x, cfg.pooled_size))
      if s == CONTENT_STAGE:
        c = _conv(_bn(x, 'content_layer.0', train), cfg.feature_channels, 3, 'content_layer.1')
        c = PReLU(name='content_layer.3')(_bn(c, 'content_layer.2', train))
        content = _bn(_conv(c, cfg.feature_channels, 3, 'content_layer.4'), 'content_layer.5',
                      train)
    h = jnp.concatenate(pooled, axis=-1).reshape(x.shape[0], -1)  # (H, W, C) flatten
    ws = jnp.stack([_dense(h, cfg.w_dim, f'styles.{i}') for i in range(cfg.num_ws)], axis=1)
    return ws, content


class Inverter(nn.Module):
  """psp_encoders.Inverter: `fs_backbone` and `fuser`."""
  config: InverterConfig

  def setup(self):
    self.fs_backbone = FSLikeBackbone(self.config)
    self.fuser = ContentLayerDeepFast(self.config.fuser_blocks, self.config.feature_channels)

  def __call__(self, images: Array, train: bool = False):
    ws, f_pred = self.fs_backbone(images, train)
    return ws, self.fuse(f_pred, f_pred, train)

  def backbone(self, images: Array, train: bool = False):
    return self.fs_backbone(images, train)

  def fuse(self, f_pred: Array, f_w: Array, train: bool = False) -> Array:
    return self.fuser(jnp.concatenate([f_pred, f_w], axis=-1), train)


class Editor(nn.Module):
  """SFE's feature editor: ContentLayerDeepFast(cat(F_k, delta))."""
  config: EditorConfig

  @nn.compact
  def __call__(self, f_k: Array, delta: Array, train: bool = False) -> Array:
    x = jnp.concatenate([f_k, delta], axis=-1)
    return _content_layer_deep_fast(x, self.config.blocks, self.config.channels, train)


class GradualStyleBlock(nn.Module):
  """psp_encoders.GradualStyleBlock(in, out, spatial): log2(spatial) x (3x3 conv stride 2 with
  bias, LeakyReLU 0.01), then EqualLinear(out, out, lr_mul=1)."""
  out_channels: int
  spatial: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    for k in range(int(math.log2(self.spatial))):
      x = _conv(x, self.out_channels, 3, f'convs.{2 * k}', stride=2, bias=True)
      x = nn.leaky_relu(x, GRADUAL_LRELU_SLOPE)
    x = x.reshape(-1, self.out_channels)
    return networks.FullyConnectedLayer(self.out_channels, self.out_channels, name='linear')(x)


class Encoder4Editing(nn.Module):
  """psp_encoders.Encoder4Editing (Inference stage): image -> W+ offsets [B, num_ws, w_dim]."""
  config: E4EConfig

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    cfg = self.config
    x = _input_layer(x, cfg.stage_channels[0], train)
    _, c1, c2, c3 = _irse_body(x, cfg.stage_channels, cfg.stage_depths, cfg.se_reduction, train)
    sides = cfg.tap_sides
    width = cfg.stage_channels[-1]

    def style(i, features):
      spatial = sides[0] if i < cfg.coarse else sides[1] if i < cfg.middle else sides[2]
      return GradualStyleBlock(cfg.w_dim, spatial, name=f'styles.{i}')(features)

    def upsample_add(features, lateral, name):  # helpers._upsample_add(x, latlayer(y))
      return (resize_bilinear(features, lateral.shape[1:3], True)
              + _conv(lateral, width, 1, name, bias=True))

    w0 = style(0, c3)
    codes, features = [w0], c3
    for i in range(1, cfg.num_ws):
      if i == cfg.coarse:  # FPN's middle features p2
        features = upsample_add(features, c2, 'latlayer1')
      elif i == cfg.middle:  # FPN's fine features p1
        features = upsample_add(features, c1, 'latlayer2')
      codes.append(w0 + style(i, features))
    if cfg.num_ws <= cfg.coarse:  # the lateral layers exist (unused) in the official module
      _conv(c2, width, 1, 'latlayer1', bias=True)
    if cfg.num_ws <= cfg.middle:
      _conv(c1, width, 1, 'latlayer2', bias=True)
    return jnp.stack(codes, axis=1)


class ArcFace(nn.Module):
  """model_irse.Backbone(112, 50, 'ir_se'): faces [B, 112, 112, 3] -> L2-normalised [B, D]."""
  config: ArcFaceConfig

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    cfg = self.config
    x = _input_layer(x, cfg.stage_channels[0], train)
    x = _irse_body(x, cfg.stage_channels, cfg.stage_depths, cfg.se_reduction, train)[-1]
    x = _bn(x, 'output_layer.0', train)  # Dropout (output_layer.1) is identity in eval
    x = _dense(x.reshape(x.shape[0], -1), cfg.embedding, 'output_layer.3')
    x = _bn(x, 'output_layer.4', train, affine=cfg.affine)
    return x / jnp.linalg.norm(x, axis=1, keepdims=True)


# ----------------------------------------------------------------------------------------------
# Pure functions.


def _check_images(images: Array, size: int, what: str) -> None:
  if images.ndim != 4 or images.shape[1:] != (size, size, 3):
    raise ValueError(f'{what} input must be [B, {size}, {size}, 3] (NHWC, [-1, 1]; resize with '
                     f'resize_bilinear), got {tuple(images.shape)}')


def inverter_apply(config: InverterConfig, variables: Mapping[str, Any],
                   images: Array) -> tuple[Array, Array]:
  """images [B, S, S, 3] in [-1, 1] (S = input_size) -> (W+ offsets [B, num_ws, w_dim] to add
  to latent_avg, F_pred [B, S/4, S/4, feature_channels])."""
  _check_images(images, config.input_size, 'inverter')
  return Inverter(config).apply(variables, images, method=Inverter.backbone)


def fuse(config: InverterConfig, variables: Mapping[str, Any], f_pred: Array,
         f_w: Array) -> Array:
  """F_k [B, h, w, C] = fuser(cat(F_pred, F_w)); F_w is G's feature at the layer for ws."""
  if f_pred.shape != f_w.shape:
    raise ValueError(f'F_pred {tuple(f_pred.shape)} and F_w {tuple(f_w.shape)} must match')
  return Inverter(config).apply(variables, f_pred, f_w, method=Inverter.fuse)


def editor_apply(config: EditorConfig, variables: Mapping[str, Any], f_k: Array,
                 delta: Array) -> Array:
  """F_k' [B, h, w, C] = editor(cat(F_k, delta)), delta = F(w_e) - F(edit(w_e)) (0: inversion)."""
  if f_k.shape != delta.shape or f_k.shape[-1] != config.channels:
    raise ValueError(f'F_k {tuple(f_k.shape)} and delta {tuple(delta.shape)} must both be '
                     f'[B, h, w, {config.channels}]')
  return Editor(config).apply(variables, f_k, delta)


def e4e_apply(config: E4EConfig, variables: Mapping[str, Any], images: Array) -> Array:
  """images [B, S, S, 3] in [-1, 1] -> e4e's W+ offsets [B, num_ws, w_dim] (add latent_avg)."""
  _check_images(images, config.input_size, 'e4e')
  return Encoder4Editing(config).apply(variables, images)


def arcface_apply(config: ArcFaceConfig, variables: Mapping[str, Any], faces: Array) -> Array:
  """faces [B, 112, 112, 3] in [-1, 1] -> L2-normalised identity embeddings [B, D]."""
  _check_images(faces, ARCFACE_INPUT, 'ArcFace')
  return ArcFace(config).apply(variables, faces)


def arcface_crop(images: Array) -> Array:
  """pSp's ID-loss input: images [B, H, W, C] -> [B, 112, 112, 3]. Pooled to 256 first (pSp's
  face_pool of 1024 px outputs), cropped to [35:223, 32:220], adaptive-pooled to 112."""
  x = adaptive_avg_pool(images[..., :3], ARCFACE_CROP_BASE)
  top, bottom, left, right = ARCFACE_CROP
  return adaptive_avg_pool(x[:, top:bottom, left:right], ARCFACE_INPUT)


@functools.partial(jax.jit, static_argnums=0)
def _arcface_embed(config: ArcFaceConfig, variables, images: Array) -> Array:
  return arcface_apply(config, variables, arcface_crop(images))


def arcface_features(path: str | os.PathLike):
  """features_fn of `model_ir_se50.pth`: images [B, H, W, 3] in [-1, 1] (aligned faces, any
  size; pSp's crop at 256) -> L2-normalised ArcFace embeddings [B, 512]. Registered as
  `inversion.metrics` feature network 'arcface' when this module is imported."""
  weights = load_official(path)
  if weights.kind != 'arcface-ir-se50':
    raise OfficialFileError(f'{path} is a {weights.kind} file, not ArcFace IR-SE-50 '
                            '(model_ir_se50.pth).')
  config, variables = weights.arcface_config, weights.arcface_vars
  return lambda images: _arcface_embed(config, variables, jnp.asarray(images, jnp.float32))


def _with_threefry(fn, *args):
  with jax.threefry_partitionable(False):  # cheaper to compile; see networks._init
    return fn(*args)


@functools.lru_cache(maxsize=8)
def _init_fn(module_cls, config):
  return jax.jit(module_cls(config).init)


def _dummy_inputs(config) -> tuple[Array, ...]:
  if isinstance(config, InverterConfig):
    return (jnp.zeros((1, config.input_size, config.input_size, 3)),)
  if isinstance(config, EditorConfig):
    f = jnp.zeros((1, 4, 4, config.channels))
    return f, f
  if isinstance(config, E4EConfig):
    return (jnp.zeros((1, config.input_size, config.input_size, 3)),)
  return (jnp.zeros((1, ARCFACE_INPUT, ARCFACE_INPUT, 3)),)


_MODULES = {InverterConfig: Inverter, EditorConfig: Editor, E4EConfig: Encoder4Editing,
            ArcFaceConfig: ArcFace}


def _init(config, key: Array) -> dict[str, Any]:
  """Untrained variables {'params', 'batch_stats'} (torch's default init; BN mean 0, var 1)."""
  return _with_threefry(_init_fn(_MODULES[type(config)], config), key, *_dummy_inputs(config))


def init_inverter(config: InverterConfig, key: Array) -> dict[str, Any]:
  return _init(config, key)


def init_editor(config: EditorConfig, key: Array) -> dict[str, Any]:
  return _init(config, key)


def init_e4e(config: E4EConfig, key: Array) -> dict[str, Any]:
  return _init(config, key)


def _template(config) -> dict[str, Any]:
  """Shapes of a config's variables, computing nothing."""
  module = _MODULES[type(config)](config)
  return jax.eval_shape(module.init, jax.random.PRNGKey(0), *_dummy_inputs(config))


# ----------------------------------------------------------------------------------------------
# Official files.


@dataclasses.dataclass
class OfficialWeights:
  """What `load_official` read from one file: its kind, and for each part it holds the config
  (from the tensor shapes) and variables in our layout."""
  kind: str                                         # one of KINDS
  path: str
  inverter_config: Optional[InverterConfig] = None
  inverter_vars: Any = None
  editor_config: Optional[EditorConfig] = None
  editor_vars: Any = None
  e4e_config: Optional[E4EConfig] = None
  e4e_vars: Any = None
  arcface_config: Optional[ArcFaceConfig] = None
  arcface_vars: Any = None
  latent_avg: Optional[np.ndarray] = None           # e4e's: [num_ws, w_dim] or [w_dim]
  notes: tuple[str, ...] = ()


_LEAVES = {('params', 'kernel'): 'weight', ('params', 'bias'): 'bias',
           ('params', 'scale'): 'weight', ('params', 'weight'): 'weight',
           ('batch_stats', 'mean'): 'running_mean', ('batch_stats', 'var'): 'running_var'}
_IGNORED_SUFFIX = '.num_batches_tracked'


def _flat(tree: Mapping[str, Any]) -> dict[tuple[str, ...], Any]:
  return traverse_util.flatten_dict(dict(tree))


def _unflat(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
  return traverse_util.unflatten_dict(dict(flat))


def _torch_name(path: tuple[str, ...]) -> str:
  return '.'.join(path[1:-1] + (_LEAVES[(path[0], path[-1])],))


def _to_ours(array: np.ndarray, path: tuple[str, ...], nchw: Optional[tuple[int, int, int]]):
  """One official tensor -> our layout (conv OIHW -> HWIO, Linear [out, in] -> [in, out], the
  (C, H, W) flatten of `nchw` permuted to (H, W, C))."""
  if array.ndim == 4:
    return array.transpose(2, 3, 1, 0)
  if array.ndim == 2:
    if nchw is not None:
      c, h, w = nchw
      array = array.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(array.shape[0], -1)
    return array.T
  return array


def _to_variables(sd: Mapping[str, np.ndarray], config, where: str, part: str,
                  nchw: Optional[Mapping[str, tuple[int, int, int]]] = None) -> dict[str, Any]:
  """State dict `sd` (prefix stripped) -> variables of `config`'s module, every key checked."""
  template = _flat(_template(config))
  names = {_torch_name(path): path for path in template}
  given = {k for k in sd if not k.endswith(_IGNORED_SUFFIX)}
  missing, unexpected = sorted(set(names) - given), sorted(given - set(names))
  flat, problems = {}, []
  for name in sorted(set(names) & given):
    array = np.asarray(sd[name], np.float32)
    try:
      flat[names[name]] = _to_ours(array, names[name],
                                   (nchw or {}).get(name.rsplit('.', 1)[0]))
    except ValueError:  # a head weight that does not reshape to its (C, H, W) input
      flat[names[name]] = array
    if flat[names[name]].shape != tuple(template[names[name]].shape):
      problems.append(f'{name} {tuple(array.shape)}')
  if missing or unexpected or problems:
    def listing(keys):
      return ', '.join(keys[:_LIST_LIMIT]) + (' ...' if len(keys) > _LIST_LIMIT else '')
    lines = [f'{where}: the {part} tensors do not fit its architecture as read from the file '
             f'({config})']
    for what, keys in (('missing', missing), ('unexpected', unexpected),
                       ('misshapen', problems)):
      if keys:
        lines.append(f'  {what} keys ({len(keys)}): {listing(keys)}')
    raise OfficialFileError('\n'.join(lines))
  return jax.device_put(_unflat(flat))


def _strip(sd: Mapping[str, Any], prefix: str) -> dict[str, Any]:
  return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _count(sd: Mapping[str, Any], pattern: str) -> int:
  return len({m.group(1) for k in sd if (m := re.fullmatch(pattern, k))})


def _shape(sd: Mapping[str, Any], name: str, where: str, part: str) -> tuple[int, ...]:
  if name not in sd:
    raise OfficialFileError(f'{where}: the {part} has no tensor {name!r}, which every '
                            f'{part} has; the file is damaged or not an official one.')
  return tuple(np.shape(sd[name]))


def _irse_stages(sd, where: str, part: str) -> tuple[tuple[int, ...], tuple[int, ...], int]:
  """(stage widths, depths, SE reduction) of an IR-SE body: stages start where width changes,
  and the first one where the first unit keeps the stem's width (get_blocks)."""
  units = _count(sd, r'body\.(\d+)\.res_layer\.1\.weight')
  widths = [_shape(sd, f'body.{i}.res_layer.1.weight', where, part)[0] for i in range(units)]
  channels, depths = [], []
  for w in widths:
    if channels and channels[-1] == w:
      depths[-1] += 1
    else:
      channels.append(w)
      depths.append(1)
  if len(channels) != 4:
    raise OfficialFileError(f'{where}: the {part} body has unit widths {widths}, not 4 stages '
                            'of distinct widths (IR-SE-50 has 64 x3, 128 x4, 256 x14, 512 x3).')
  se = _shape(sd, 'body.0.res_layer.5.fc1.weight', where, part)[0]
  return tuple(channels), tuple(depths), channels[0] // se


def _inverter_config(sd, where: str, input_size: int) -> InverterConfig:
  part = 'inverter'
  b = 'fs_backbone.'
  channels = tuple(_shape(sd, f'{b}block_{s}.0.conv1.weight', where, part)[0]
                   for s in range(1, 5))
  depths = tuple(_count(sd, rf'{re.escape(b)}block_{s}\.(\d+)\.conv1\.weight')
                 for s in range(1, 5))
  num_ws = _count(sd, rf'{re.escape(b)}styles\.(\d+)\.weight')
  w_dim, head = _shape(sd, f'{b}styles.0.weight', where, part)
  pooled = math.isqrt(head // sum(channels))
  feature = _shape(sd, f'{b}content_layer.1.weight', where, part)[0]
  blocks = _count(sd, r'fuser\.body\.(\d+)\.body\.1\.weight') + 1
  return InverterConfig(input_size, channels, depths, pooled, num_ws, w_dim, feature, blocks)


def _editor_config(sd, where: str) -> EditorConfig:
  channels = _shape(sd, 'conv.weight', where, 'feature editor')[0]
  return EditorConfig(channels, _count(sd, r'body\.(\d+)\.body\.1\.weight') + 1)


def _e4e_config(sd, where: str) -> E4EConfig:
  part = 'e4e encoder'
  channels, depths, se = _irse_stages(sd, where, part)
  num_ws = _count(sd, r'styles\.(\d+)\.linear\.weight')
  convs = [_count(sd, rf'styles\.{i}\.convs\.(\d+)\.weight') for i in range(num_ws)]
  w_dim = _shape(sd, 'styles.0.linear.weight', where, part)[0]
  coarse = sum(c == convs[0] for c in convs)
  middle = coarse + sum(c == convs[0] + 1 for c in convs)  # beyond num_ws: unused
  return E4EConfig(IRSE_STRIDE ** 4 * 2 ** convs[0], channels, depths, num_ws, w_dim, se,
                   coarse, max(middle, E4EConfig.middle) if middle == num_ws else middle)


def _arcface_config(sd, where: str) -> ArcFaceConfig:
  channels, depths, se = _irse_stages(sd, where, 'ArcFace network')
  embedding = _shape(sd, 'output_layer.3.weight', where, 'ArcFace network')[0]
  return ArcFaceConfig(channels, depths, se, embedding, 'output_layer.4.weight' in sd)


def _kind(sd: Mapping[str, Any]) -> Optional[str]:
  if any(k.startswith('inverter.fs_backbone.') for k in sd) and 'encoder.conv.weight' in sd:
    return 'sfe-editor'
  if any(k.startswith('encoder.fs_backbone.') for k in sd):
    return 'sfe-inverter'
  if 'encoder.latlayer1.weight' in sd and 'encoder.styles.0.linear.weight' in sd:
    return 'e4e'
  if 'input_layer.0.weight' in sd and 'output_layer.3.weight' in sd:
    return 'arcface-ir-se50'
  return None


def _describe(sd: Mapping[str, Any]) -> str:
  prefixes = sorted({k.split('.', 1)[0] for k in sd})
  return f'{len(sd)} tensors under {", ".join(repr(p) for p in prefixes[:_LIST_LIMIT])}'


def load_official(path: str | os.PathLike,
                  inverter_input_size: int = InverterConfig.input_size) -> OfficialWeights:
  """Reads an official SFE, e4e or ArcFace file (torch-free): kind, configs, variables.

  The inverter's input side cannot be read from its weights (fully convolutional, adaptive
  pooling): it is `inverter_input_size`, the official 256 unless given; e4e's is read (from
  the number of convs in its GradualStyleBlocks).

  Raises:
    FileNotFoundError: no such file.
    OfficialFileError: not one of the four known files, or tensors that do not fit (the
      message names the file, the part and the keys).
  """
  where = os.fspath(path)
  if not os.path.isfile(where):
    raise FileNotFoundError(f'{where} does not exist; the known files are {KNOWN_FILES}.')
  obj = torch_io.load(where)
  if not isinstance(obj, Mapping):
    raise OfficialFileError(f'{where} holds a {type(obj).__name__}, not a state dict; the '
                            f'known files are {KNOWN_FILES}.')
  sd = obj.get('state_dict', obj)
  sd = torch_io.state_dict_of(sd) if isinstance(sd, Mapping) else {}
  kind = _kind(sd)
  if kind is None:
    raise OfficialFileError(f'{where} is none of the known files ({_describe(sd)}); the known '
                            f'files are {KNOWN_FILES}.')
  notes = []
  if any(k.startswith('discriminator.') for k in sd):
    notes.append('discriminator.* (SFE training) ignored')
  out = OfficialWeights(kind, where)
  if kind in ('sfe-inverter', 'sfe-editor'):
    inv = _strip(sd, 'encoder.' if kind == 'sfe-inverter' else 'inverter.')
    cfg = _inverter_config(inv, where, inverter_input_size)
    nchw = {f'fs_backbone.styles.{i}': (sum(cfg.stage_channels), cfg.pooled_size,
                                        cfg.pooled_size) for i in range(cfg.num_ws)}
    out.inverter_config = cfg
    out.inverter_vars = _to_variables(inv, cfg, where, 'inverter', nchw)
    notes.append(f'inverter input size {cfg.input_size} (not stored in the file)')
  if kind == 'sfe-editor':
    ed = _strip(sd, 'encoder.')
    out.editor_config = _editor_config(ed, where)
    out.editor_vars = _to_variables(ed, out.editor_config, where, 'feature editor')
  if kind == 'e4e':
    enc = _strip(sd, 'encoder.')
    out.e4e_config = _e4e_config(enc, where)
    out.e4e_vars = _to_variables(enc, out.e4e_config, where, 'e4e encoder')
    if obj.get('latent_avg') is not None:
      out.latent_avg = np.asarray(obj['latent_avg'], np.float32)
    if any(k.startswith('decoder.') for k in sd):
      notes.append('decoder.* (the generator) not read here: generators.load(path) reads it')
  if kind == 'arcface-ir-se50':
    out.arcface_config = _arcface_config(sd, where)
    c = out.arcface_config.stage_channels[-1]
    side = ARCFACE_INPUT // IRSE_STRIDE ** 4
    out.arcface_vars = _to_variables(sd, out.arcface_config, where, 'ArcFace network',
                                     {'output_layer.3': (c, side, side)})
  out.notes = tuple(notes)
  log.info('%s: %s%s', where, kind, f' ({"; ".join(notes)})' if notes else '')
  return out


# ----------------------------------------------------------------------------------------------
# Our own files.

_CONFIGS = {cls.__name__: cls for cls in _MODULES}


def save(path: str | os.PathLike, config, variables: Mapping[str, Any]) -> pathlib.Path:
  """Writes one network (any config here + its variables) as a native `.npz`."""
  path = pathlib.Path(path)
  meta = {'format': NATIVE_FORMAT, 'version': NATIVE_VERSION, 'class': type(config).__name__,
          'config': dataclasses.asdict(config)}
  arrays = {'/'.join(p): np.asarray(v) for p, v in _flat(variables).items()}
  with open(path, 'wb') as f:
    np.savez(f, __config__=np.asarray(json.dumps(meta)), **arrays)
  return path


def load(path: str | os.PathLike):
  """(config, variables) of a native `.npz` written by `save`, checked against the config."""
  with np.load(path) as f:
    if '__config__' not in f.files:
      raise OfficialFileError(f'{path} is not a native SFE network file (no __config__); '
                              'official files load with load_official.')
    meta = json.loads(str(f['__config__']))
    if meta.get('format') != NATIVE_FORMAT or meta.get('version', 0) > NATIVE_VERSION:
      raise OfficialFileError(f'{path}: format {meta.get("format")!r} version '
                              f'{meta.get("version")} is not one this version reads.')
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in meta['config'].items()}
    config = _CONFIGS[meta['class']](**fields)
    flat = {tuple(k.split('/')): f[k] for k in f.files if k != '__config__'}
  template = _flat(_template(config))
  if set(template) != set(flat) or any(flat[p].shape != template[p].shape for p in template):
    raise OfficialFileError(f'{path}: the stored variables do not match its {config}.')
  return config, jax.device_put(_unflat(flat))


def _register_arcface() -> None:
  from inversion import metrics  # pylint: disable=import-outside-toplevel
  metrics.register_feature_network('arcface', arcface_features)


_register_arcface()
