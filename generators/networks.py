"""StyleGAN2 generator and discriminator in Flax, numerically the official NVlabs networks.

A port of NVlabs stylegan2-ada-pytorch `training/networks.py` (commit d72cc7d). Module and
parameter names are the official ones, so `synthesis.b8.conv0.affine.weight` lives at
`params['synthesis']['b8']['conv0']['affine']['weight']`; layouts are JAX's: dense weights
`[in, out]`, conv weights `[kh, kw, in, out]`, images and activations NHWC, the const input
`[4, 4, C]`. Non-trainable state (`mapping.w_avg`, the `noise_const` maps) is in the `buffers`
collection. The FIR `resample_filter` buffers are constants and not stored.

Images are float32 in [-1, 1] (the official range); latents are `z [B, z_dim]`,
`ws [B, num_ws, w_dim]`.

Modulated convolutions use the non-grouped form (scale activations by the styles, convolve with
the shared weight, scale by the demodulation coefficients), which is what NVlabs runs when
`fused_modconv=False`; it equals the grouped form up to float rounding and batches well.

Pure-function use (`G = Generator(config)`, `variables = G.init(...)` or from `generators.load`):

    ws = mapping(config, variables, z, psi=0.7)     # [B, num_ws, w_dim]
    img = synthesis(config, variables, ws)          # [B, H, W, C]
    logits = Discriminator(d_config).apply(d_variables, img)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from generators import upfirdn

Array = jax.Array
NoiseDict = Mapping[str, Array]  # layer name ('b8.conv0') -> [B, H, W] or [H, W] unit noise

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)  # bias_act's default gain for 'lrelu'
RESNET_GAIN = math.sqrt(0.5)  # residual branches are summed with this gain
NORMALIZE_EPS = 1e-8  # normalize_2nd_moment
DEMOD_EPS = 1e-8  # demodulation rsqrt
MBSTD_EPS = 1e-8  # minibatch-stddev sqrt
FEATURE_RESOLUTION_DIVISOR = 16  # default feature layer: the block at resolution / 16 (SFE)
NOISE_MODES = ("random", "const", "none")
ARCHITECTURES = ("orig", "skip", "resnet")


# ----------------------------------------------------------------------------------------------
# Configs.


def _check_resolution_and_architecture(resolution: int, architecture: str) -> None:
  log2 = math.log2(resolution)
  if not (log2.is_integer() and 2 <= log2 <= 12):
    raise ValueError(f"img_resolution must be a power of two in 4..4096, got {resolution}.")
  if architecture not in ARCHITECTURES:
    raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}.")


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
  """Architecture of a StyleGAN2 generator (the official `Generator` init kwargs)."""

  z_dim: int = 512  # input latent size (0 only with conditioning)
  w_dim: int = 512  # intermediate latent size
  img_resolution: int = 1024  # power of two, 4 ... 1024
  img_channels: int = 3  # 1, 3, 4 ...
  c_dim: int = 0  # conditioning label size, 0 = unconditional
  mapping_layers: int = 8
  mapping_lr_multiplier: float = 0.01
  embed_features: Optional[int] = None  # None = w_dim
  layer_features: Optional[int] = None  # None = w_dim
  w_avg_beta: float = 0.995  # decay of the tracked w_avg
  channel_base: int = 32768  # channels at resolution r = min(channel_base // r, channel_max)
  channel_max: int = 512
  conv_clamp: Optional[float] = None  # None = no clamping (NVlabs' configs with fp16 use 256)
  architecture: str = "skip"  # 'orig' | 'skip' | 'resnet'
  use_noise: bool = True
  resample_taps: tuple[int, ...] = upfirdn.DEFAULT_TAPS

  def __post_init__(self):
    _check_resolution_and_architecture(self.img_resolution, self.architecture)
    if self.z_dim <= 0 and self.c_dim <= 0:
      raise ValueError("A generator needs z_dim > 0 or c_dim > 0.")

  @property
  def block_resolutions(self) -> list[int]:
    return [2**i for i in range(2, int(math.log2(self.img_resolution)) + 1)]

  def channels(self, res: int) -> int:
    return min(self.channel_base // res, self.channel_max)

  @property
  def num_ws(self) -> int:
    """Number of w vectors synthesis consumes: one per conv layer plus the last toRGB."""
    return 2 * len(self.block_resolutions)

  @property
  def noise_layers(self) -> dict[str, int]:
    """Names of the noise inputs ('b8.conv0', ...) and their resolutions, in synthesis order."""
    if not self.use_noise:
      return {}
    names = {}
    for res in self.block_resolutions:
      if res > 4:
        names[f"b{res}.conv0"] = res
      names[f"b{res}.conv1"] = res
    return names


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
  """Architecture of a StyleGAN2 discriminator (the official `Discriminator` init kwargs)."""

  img_resolution: int = 1024
  img_channels: int = 3
  c_dim: int = 0
  architecture: str = "resnet"  # 'orig' | 'skip' | 'resnet'
  channel_base: int = 32768
  channel_max: int = 512
  conv_clamp: Optional[float] = None
  cmap_dim: Optional[int] = None  # None = channels at 4x4
  mbstd_group_size: Optional[int] = 4  # None = whole batch
  mbstd_num_channels: int = 1  # 0 = no minibatch-stddev layer
  mapping_layers: int = 8  # only with conditioning
  resample_taps: tuple[int, ...] = upfirdn.DEFAULT_TAPS

  def __post_init__(self):
    _check_resolution_and_architecture(self.img_resolution, self.architecture)

  @property
  def block_resolutions(self) -> list[int]:
    return [2**i for i in range(int(math.log2(self.img_resolution)), 2, -1)]

  def channels(self, res: int) -> int:
    return min(self.channel_base // res, self.channel_max)

  @property
  def resolved_cmap_dim(self) -> int:
    if self.c_dim == 0:
      return 0
    return self.channels(4) if self.cmap_dim is None else self.cmap_dim


# ----------------------------------------------------------------------------------------------
# Shared layers.


def bias_act(x: Array, bias: Optional[Array], activation: str, gain: float = 1.0,
             clamp: Optional[float] = None) -> Array:
  """Bias, activation, gain and clamp, in NVlabs `bias_act` order (bias on the last axis)."""
  if bias is not None:
    x = x + bias.astype(x.dtype)
  if activation == "lrelu":
    x = jnp.where(x >= 0, x, x * LRELU_SLOPE)
    gain = gain * LRELU_GAIN
  elif activation != "linear":
    raise ValueError(f"activation must be 'lrelu' or 'linear', got {activation!r}.")
  if gain != 1:
    x = x * gain
  if clamp is not None:
    x = jnp.clip(x, -clamp, clamp)
  return x


def normalize_2nd_moment(x: Array, axis: int = -1) -> Array:
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=axis, keepdims=True) + NORMALIZE_EPS)


def _normal_init(scale: float = 1.0):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.normal(key, shape, dtype) * scale
  return init


class FullyConnectedLayer(nn.Module):
  """Dense layer with equalised learning rate (`weight [in, out]`, runtime gains)."""

  in_features: int
  out_features: int
  activation: str = "linear"
  lr_multiplier: float = 1.0
  bias_init: float = 0.0
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    weight = self.param("weight", _normal_init(1.0 / self.lr_multiplier),
                        (self.in_features, self.out_features))
    weight_gain = self.lr_multiplier / math.sqrt(self.in_features)
    x = x @ (weight * weight_gain).astype(x.dtype)
    bias = None
    if self.use_bias:
      bias = self.param("bias", nn.initializers.constant(self.bias_init), (self.out_features,))
      bias = bias * self.lr_multiplier
    return bias_act(x, bias, self.activation)


class Conv2dLayer(nn.Module):
  """Convolution with equalised learning rate, optional FIR resampling, bias_act and clamp."""

  in_channels: int
  out_channels: int
  kernel_size: int
  activation: str = "linear"
  up: int = 1
  down: int = 1
  use_bias: bool = True
  conv_clamp: Optional[float] = None
  resample_taps: tuple[int, ...] = upfirdn.DEFAULT_TAPS

  @nn.compact
  def __call__(self, x: Array, gain: float = 1.0) -> Array:
    k = self.kernel_size
    weight = self.param("weight", _normal_init(), (k, k, self.in_channels, self.out_channels))
    weight_gain = 1.0 / math.sqrt(self.in_channels * k * k)
    x = upfirdn.conv2d_resample(
        x, weight * weight_gain, upfirdn.setup_filter(self.resample_taps), up=self.up,
        down=self.down, padding=k // 2, flip_weight=(self.up == 1))
    bias = self.param("bias", nn.initializers.zeros, (self.out_channels,)) if self.use_bias else None
    clamp = None if self.conv_clamp is None else self.conv_clamp * gain
    return bias_act(x, bias, self.activation, gain=gain, clamp=clamp)


@jax.custom_vjp
def scale_channels(x: Array, scales: Array) -> Array:
  """x [B, H, W, C] * scales [B, C], broadcast over H and W.

  Differentiated by hand: the scales' gradient, a sum over H x W of x * dy, is written as a
  matrix-vector product with a ones vector, which XLA:CPU runs as a GEMV about 3x faster than the
  column reduction that plain autodiff produces (the channel axis is the minor one).
  """
  return x * scales[:, None, None, :].astype(x.dtype)


def _scale_channels_fwd(x: Array, scales: Array):
  return scale_channels(x, scales), (x, scales)


def _scale_channels_bwd(residuals, dy: Array):
  x, scales = residuals
  b, h, w, c = x.shape
  products = (x * dy).reshape(b, h * w, c)
  ones = jnp.ones((b, h * w), products.dtype)
  # ones [B, HW] @ products [B, HW, C]: the canonical [M, K] x [K, N] matmul order, which XLA
  # keeps without transposing `products`, also inside loops.
  dscales = jax.lax.dot_general(ones, products, (((1,), (1,)), ((0,), (0,))))
  return dy * scales[:, None, None, :].astype(dy.dtype), dscales.astype(scales.dtype)


scale_channels.defvjp(_scale_channels_fwd, _scale_channels_bwd)


def modulated_conv2d(
    x: Array,  # [B, H, W, I]
    weight: Array,  # [k, k, I, O]
    styles: Array,  # [B, I]
    noise: Optional[Array] = None,  # broadcastable to [B, H', W', 1]
    up: int = 1,
    padding: int = 0,
    resample_taps: tuple[int, ...] = upfirdn.DEFAULT_TAPS,
    demodulate: bool = True,
    flip_weight: bool = True,
) -> Array:
  """Modulated convolution, non-grouped form: scale inputs, convolve, demodulate, add noise."""
  x = scale_channels(x, styles)
  x = upfirdn.conv2d_resample(x, weight, upfirdn.setup_filter(resample_taps), up=up,
                              padding=padding, flip_weight=flip_weight)
  if demodulate:
    # dcoefs[b, o] = 1 / ||weight[..., o] * styles[b]||, summed over kernel taps and inputs.
    dcoefs = jax.lax.rsqrt(jnp.square(styles) @ jnp.sum(jnp.square(weight), axis=(0, 1)) + DEMOD_EPS)
    x = scale_channels(x, dcoefs)
  if noise is not None:
    x = x + noise.astype(x.dtype)
  return x


# ----------------------------------------------------------------------------------------------
# Generator.


class MappingNetwork(nn.Module):
  """z (and c) -> w, broadcast to `num_ws`, with truncation toward the tracked `w_avg`."""

  z_dim: int
  c_dim: int
  w_dim: int
  num_ws: Optional[int]  # None = return [B, w_dim]
  num_layers: int = 8
  embed_features: Optional[int] = None
  layer_features: Optional[int] = None
  lr_multiplier: float = 0.01
  w_avg_beta: Optional[float] = 0.995  # None = no w_avg buffer (the D's conditioning mapping)

  @nn.compact
  def __call__(self, z: Optional[Array], c: Optional[Array] = None, psi: float | Array = 1.0,
               cutoff: Optional[int] = None, update_w_avg: bool = False,
               c_scale: float | Array = 1.0) -> Array:
    """`c_scale` weighs the normalised class embedding (1 = NVlabs; transitional conditioning
    ramps it from 0, where w depends on z alone, see `generators.train.transition`)."""
    embed = 0 if self.c_dim == 0 else (self.embed_features or self.w_dim)
    hidden = self.layer_features or self.w_dim
    features = [self.z_dim + embed] + [hidden] * (self.num_layers - 1) + [self.w_dim]
    parts = []
    if self.z_dim > 0:
      parts.append(normalize_2nd_moment(z.astype(jnp.float32)))
    if self.c_dim > 0:
      if c is None:
        raise ValueError(f"This network is conditional (c_dim={self.c_dim}): pass labels c.")
      y = FullyConnectedLayer(self.c_dim, embed, name="embed")(c.astype(jnp.float32))
      parts.append(normalize_2nd_moment(y) * c_scale)
    x = jnp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
    for i in range(self.num_layers):
      x = FullyConnectedLayer(features[i], features[i + 1], activation="lrelu",
                              lr_multiplier=self.lr_multiplier, name=f"fc{i}")(x)
    if self.w_avg_beta is None:
      return x
    w_avg = self.variable("buffers", "w_avg", jnp.zeros, (self.w_dim,))
    if update_w_avg:
      batch_mean = jax.lax.stop_gradient(jnp.mean(x, axis=0))
      w_avg.value = batch_mean + self.w_avg_beta * (w_avg.value - batch_mean)
    if self.num_ws is None:
      return x
    x = jnp.broadcast_to(x[:, None, :], (x.shape[0], self.num_ws, self.w_dim))
    if isinstance(psi, (int, float)) and psi == 1:  # exact pass-through, as NVlabs skips it
      return x
    return truncate(x, w_avg.value, psi, cutoff)


def truncate(ws: Array, w_avg: Array, psi: float | Array, cutoff: Optional[int] = None) -> Array:
  """Truncation trick: lerp(w_avg, ws, psi) on layers `< cutoff` (all layers if None)."""
  truncated = w_avg + psi * (ws - w_avg)
  if cutoff is None:
    return truncated
  layer = jnp.arange(ws.shape[1])[None, :, None]
  return jnp.where(layer < cutoff, truncated, ws)


class SynthesisLayer(nn.Module):
  """Modulated 3x3 conv (+ optional 2x up-sampling), noise, bias, lrelu, clamp."""

  in_channels: int
  out_channels: int
  w_dim: int
  resolution: int
  up: int = 1
  use_noise: bool = True
  conv_clamp: Optional[float] = None
  resample_taps: tuple[int, ...] = upfirdn.DEFAULT_TAPS
  kernel_size: int = 3

  @nn.compact
  def __call__(self, x: Array, w: Array, noise_mode: str = "const",
               noise: Optional[Array] = None, gain: float = 1.0) -> Array:
    styles = FullyConnectedLayer(self.w_dim, self.in_channels, bias_init=1.0, name="affine")(w)
    k = self.kernel_size
    weight = self.param("weight", _normal_init(), (k, k, self.in_channels, self.out_channels))
    layer_noise = None
    if self.use_noise:
      res = self.resolution
      noise_const = self.variable("buffers", "noise_const",
                                  lambda: jax.random.normal(self.make_rng("params"), (res, res)))
      strength = self.param("noise_strength", nn.initializers.zeros, ())
      if noise is not None:  # caller-supplied unit noise, [B, H, W] or [H, W]
        layer_noise = noise * strength
      elif noise_mode == "random":
        layer_noise = jax.random.normal(self.make_rng("noise"), (x.shape[0], res, res)) * strength
      elif noise_mode == "const":
        layer_noise = noise_const.value * strength
      elif noise_mode != "none":
        raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}.")
      if layer_noise is not None:
        layer_noise = layer_noise[..., None]
    x = modulated_conv2d(x, weight, styles, noise=layer_noise, up=self.up, padding=k // 2,
                         resample_taps=self.resample_taps, flip_weight=(self.up == 1))
    bias = self.param("bias", nn.initializers.zeros, (self.out_channels,))
    clamp = None if self.conv_clamp is None else self.conv_clamp * gain
    return bias_act(x, bias, "lrelu", gain=gain, clamp=clamp)


class ToRGBLayer(nn.Module):
  """Modulated 1x1 conv to image channels, no demodulation."""

  in_channels: int
  out_channels: int
  w_dim: int
  conv_clamp: Optional[float] = None

  @nn.compact
  def __call__(self, x: Array, w: Array) -> Array:
    weight_gain = 1.0 / math.sqrt(self.in_channels)
    styles = FullyConnectedLayer(self.w_dim, self.in_channels, bias_init=1.0, name="affine")(w)
    weight = self.param("weight", _normal_init(), (1, 1, self.in_channels, self.out_channels))
    x = modulated_conv2d(x, weight, styles * weight_gain, demodulate=False)
    bias = self.param("bias", nn.initializers.zeros, (self.out_channels,))
    return bias_act(x, bias, "linear", clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
  """One resolution of the synthesis network: (const | up-conv), conv, toRGB, skip/resnet."""

  in_channels: int  # 0 = the first block, which starts from the learned const
  out_channels: int
  w_dim: int
  resolution: int
  img_channels: int
  is_last: bool
  architecture: str = "skip"
  use_noise: bool = True
  conv_clamp: Optional[float] = None
  resample_taps: tuple[int, ...] = upfirdn.DEFAULT_TAPS

  @property
  def num_conv(self) -> int:
    return 1 if self.in_channels == 0 else 2

  @property
  def num_torgb(self) -> int:
    return 1 if (self.is_last or self.architecture == "skip") else 0

  @nn.compact
  def __call__(self, x: Optional[Array], img: Optional[Array], ws: Array,  # ws [B, n, w_dim]
               noise_mode: str = "const", noise: Optional[NoiseDict] = None,
               hook: Optional["FeatureHook"] = None):
    """-> (x, img, feature). With a `hook` on one of this block's layers ('const', 'conv0',
    'conv1'), `feature` is that layer's activation and the activation that goes on is blended
    with the hook's replacement; with `hook.stop` the block returns right after the layer."""
    noise = noise or {}

    def tap(layer: str, x: Array):
      if hook is None or hook.layer != layer:
        return x, None
      return hook.blend(x), x
    layer = dict(w_dim=self.w_dim, resolution=self.resolution, use_noise=self.use_noise,
                 conv_clamp=self.conv_clamp, resample_taps=self.resample_taps)
    prefix = f"b{self.resolution}"
    w_index = 0
    if self.in_channels == 0:
      const = self.param("const", _normal_init(),
                         (self.resolution, self.resolution, self.out_channels))
      x, feature = tap("const", jnp.broadcast_to(const[None], (ws.shape[0],) + const.shape))
      if feature is not None and hook.stop:
        return x, img, feature
      x = SynthesisLayer(self.out_channels, self.out_channels, name="conv1", **layer)(
          x, ws[:, 0], noise_mode, noise.get(f"{prefix}.conv1"))
      w_index = 1
    else:
      conv0 = SynthesisLayer(self.in_channels, self.out_channels, up=2, name="conv0", **layer)
      conv1 = SynthesisLayer(self.out_channels, self.out_channels, name="conv1", **layer)
      resnet = self.architecture == "resnet"
      if resnet:
        skip = Conv2dLayer(self.in_channels, self.out_channels, kernel_size=1, up=2,
                           use_bias=False, resample_taps=self.resample_taps, name="skip")
        y = skip(x, gain=RESNET_GAIN)
      x, feature = tap("conv0", conv0(x, ws[:, 0], noise_mode, noise.get(f"{prefix}.conv0")))
      if feature is not None and hook.stop:
        return x, img, feature
      x = conv1(x, ws[:, 1], noise_mode, noise.get(f"{prefix}.conv1"),
                gain=RESNET_GAIN if resnet else 1.0)
      x = y + x if resnet else x
      w_index = 2
    out = x  # what the next block reads: conv1's activation, or the hook's blend of it
    if hook is not None and hook.layer == "conv1":
      out, feature = hook.blend(x), x
      if hook.stop:
        return out, img, feature
    if img is not None:
      img = upfirdn.upsample2d(img, upfirdn.setup_filter(self.resample_taps))
    if self.num_torgb:
      y = ToRGBLayer(self.out_channels, self.img_channels, self.w_dim,
                     conv_clamp=self.conv_clamp, name="torgb")(x, ws[:, w_index])
      img = y.astype(jnp.float32) if img is None else img + y.astype(jnp.float32)
    return out, img, feature


@dataclasses.dataclass(frozen=True)
class FeatureHook:
  """Reads, and optionally replaces, the activation that leaves one synthesis layer.

  SFE's `return_features` / `new_features` / `feature_scale` / `early_stop` (rosinality
  `Generator.forward`): the activation that goes on from `layer` becomes
  `(1 - scale) * x + scale * features`. For a block's last conv ('conv1') the replacement
  feeds the next block only: the block's own toRGB, and so the RGB skip up to this resolution,
  still read `x` (as rosinality's `insert_feature` before the next block). `stop` ends
  synthesis right after the layer.
  """
  block: int                        # resolution of the block ('b64.conv1' -> 64)
  layer: str                        # 'const' | 'conv0' | 'conv1'
  features: Optional[Array] = None  # [B, h, w, C] replacement (NHWC), None = read only
  scale: float | Array = 1.0
  stop: bool = False

  def blend(self, x: Array) -> Array:
    if self.features is None:
      return x
    if self.features.shape[1:] != x.shape[1:]:
      raise ValueError(f"features for b{self.block}.{self.layer} must be [B, "
                       f"{', '.join(map(str, x.shape[1:]))}] (NHWC), got "
                       f"{list(self.features.shape)}.")
    return (1 - self.scale) * x + self.scale * self.features.astype(x.dtype)


def feature_layers(config: GeneratorConfig) -> list[str]:
  """Synthesis layers whose activation a `FeatureHook` reads, in order; the position in this
  list is the index of rosinality / SFE's feature lists (`outs[i]`, `new_features[i]`):
  0 'b4.const', 1 'b4.conv1', 2 'b8.conv0', 3 'b8.conv1', ..., 9 'b64.conv1' (SFE's layer)."""
  names = ["b4.const", "b4.conv1"]
  for res in config.block_resolutions[1:]:
    names += [f"b{res}.conv0", f"b{res}.conv1"]
  return names


def feature_layer_index(config: GeneratorConfig, name: str) -> int:
  """rosinality / SFE feature index of layer `name` ('b64.conv1' -> 9)."""
  names = feature_layers(config)
  if name not in names:
    raise ValueError(f"{name!r} is not a feature layer of this {config.img_resolution} px "
                     f"generator; the layers are {', '.join(names)}.")
  return names.index(name)


def feature_layer_name(config: GeneratorConfig, index: int) -> str:
  """Layer name of rosinality / SFE feature index `index` (9 -> 'b64.conv1')."""
  names = feature_layers(config)
  if not 0 <= index < len(names):
    raise ValueError(f"feature index {index} is out of range for a {config.img_resolution} px "
                     f"generator (0 ... {len(names) - 1}).")
  return names[index]


def default_feature_layer(config: GeneratorConfig) -> str:
  """The last conv of the block at resolution/16: SFE's 'b64.conv1' (index 9) at 1024 px."""
  return f"b{max(4, config.img_resolution // FEATURE_RESOLUTION_DIVISOR)}.conv1"


def feature_hook(config: GeneratorConfig, layer: str, features: Optional[Array] = None,
                 scale: float | Array = 1.0, stop: bool = False) -> FeatureHook:
  """A checked `FeatureHook` on layer `layer` ('b64.conv1') of `config`'s synthesis."""
  feature_layer_index(config, layer)
  block, name = layer.split(".")
  return FeatureHook(int(block[1:]), name, features, scale, stop)


class SynthesisNetwork(nn.Module):
  """ws [B, num_ws, w_dim] -> image [B, H, W, C] (and the hooked layer's activation)."""

  config: GeneratorConfig

  @nn.compact
  def __call__(self, ws: Array, noise_mode: str = "const",
               noise: Optional[NoiseDict] = None, hook: Optional[FeatureHook] = None):
    """-> img; with a `hook`, (img, feature); with `hook.stop`, the feature alone."""
    cfg = self.config
    if ws.ndim != 3 or ws.shape[1:] != (cfg.num_ws, cfg.w_dim):
      raise ValueError(f"ws must be [B, {cfg.num_ws}, {cfg.w_dim}], got {ws.shape}.")
    ws = ws.astype(jnp.float32)
    x = img = feature = None
    w_index = 0
    for res in cfg.block_resolutions:
      block = SynthesisBlock(
          in_channels=cfg.channels(res // 2) if res > 4 else 0, out_channels=cfg.channels(res),
          w_dim=cfg.w_dim, resolution=res, img_channels=cfg.img_channels,
          is_last=(res == cfg.img_resolution), architecture=cfg.architecture,
          use_noise=cfg.use_noise, conv_clamp=cfg.conv_clamp, resample_taps=cfg.resample_taps,
          name=f"b{res}")
      # A block reads its conv ws and the next one (its toRGB shares it with the next conv0).
      block_ws = ws[:, w_index:w_index + block.num_conv + block.num_torgb]
      block_hook = hook if hook is not None and hook.block == res else None
      x, img, block_feature = block(x, img, block_ws, noise_mode, noise, block_hook)
      if block_hook is not None:
        feature = block_feature
        if hook.stop:
          return feature
      w_index += block.num_conv
    return img if hook is None else (img, feature)


class Generator(nn.Module):
  """Mapping + synthesis; the halves are the submodules `mapping` and `synthesis`.

  Use the module-level `mapping(...)` and `synthesis(...)` functions for the halves.
  """

  config: GeneratorConfig

  def setup(self):
    cfg = self.config
    self.mapping = MappingNetwork(
        z_dim=cfg.z_dim, c_dim=cfg.c_dim, w_dim=cfg.w_dim, num_ws=cfg.num_ws,
        num_layers=cfg.mapping_layers, embed_features=cfg.embed_features,
        layer_features=cfg.layer_features, lr_multiplier=cfg.mapping_lr_multiplier,
        w_avg_beta=cfg.w_avg_beta)
    self.synthesis = SynthesisNetwork(cfg)

  def __call__(self, z: Array, c: Optional[Array] = None, psi: float | Array = 1.0,
               cutoff: Optional[int] = None, noise_mode: str = "const",
               noise: Optional[NoiseDict] = None, update_w_avg: bool = False) -> Array:
    ws = self.mapping(z, c, psi, cutoff, update_w_avg)
    return self.synthesis(ws, noise_mode, noise)


def mapping(config: GeneratorConfig, variables: Mapping[str, Any], z: Array,
            c: Optional[Array] = None, psi: float | Array = 1.0,
            cutoff: Optional[int] = None, c_scale: float | Array = 1.0) -> Array:
  """z [B, z_dim] (and labels c [B, c_dim], their embedding weighted by `c_scale`) -> ws
  [B, num_ws, w_dim], truncated by `psi` on layers `< cutoff` (all layers when None)."""
  return Generator(config).apply(
      variables, z, c, psi, cutoff, False, c_scale, method=lambda g, *a: g.mapping(*a))


def synthesis(config: GeneratorConfig, variables: Mapping[str, Any], ws: Array,
              noise_mode: str = "const", noise: Optional[NoiseDict] = None,
              key: Optional[Array] = None, *, feature_layer: Optional[str] = None,
              features: Optional[Array] = None, feature_scale: float | Array = 1.0,
              return_features: bool = False):
  """ws [B, num_ws, w_dim] -> image [B, H, W, C] in about [-1, 1].

  noise_mode: 'const' uses the stored noise maps, 'random' draws a distinct map per layer
  from `key`, 'none' adds none. `noise` (layer name -> [B, H, W] or [H, W] unit-variance maps,
  see `GeneratorConfig.noise_layers`) overrides the mode for the layers it names.

  Feature hook (SFE): with `feature_layer` (a `feature_layers` name, e.g. 'b64.conv1') and
  `features` [B, h, w, C] (NHWC), the activation leaving that layer becomes
  `(1 - feature_scale) * x + feature_scale * features` (see `FeatureHook`);
  `return_features=True` returns (image, the layer's own activation). Without a hook the
  traced program is the plain synthesis.
  """
  if noise_mode == "random" and key is None:
    raise ValueError("noise_mode='random' needs a PRNG key.")
  if (features is not None or return_features) and feature_layer is None:
    raise ValueError("features / return_features need a feature_layer (e.g. "
                     f"{default_feature_layer(config)!r}).")
  hook = None
  if feature_layer is not None:
    hook = feature_hook(config, feature_layer, features, feature_scale)
  rngs = {"noise": key} if key is not None else None
  out = Generator(config).apply(
      variables, ws, noise_mode, noise, hook, rngs=rngs, method=lambda g, *a: g.synthesis(*a))
  return out if hook is None or return_features else out[0]


def synthesis_features(config: GeneratorConfig, variables: Mapping[str, Any], ws: Array,
                       layer: str, noise_mode: str = "const",
                       noise: Optional[NoiseDict] = None, key: Optional[Array] = None) -> Array:
  """The activation [B, h, w, C] leaving synthesis layer `layer`, computing nothing after it
  (SFE's `early_stop`): what `synthesis(..., return_features=True)` returns, cheaper."""
  if noise_mode == "random" and key is None:
    raise ValueError("noise_mode='random' needs a PRNG key.")
  hook = feature_hook(config, layer, stop=True)
  rngs = {"noise": key} if key is not None else None
  return Generator(config).apply(
      variables, ws, noise_mode, noise, hook, rngs=rngs, method=lambda g, *a: g.synthesis(*a))


# ----------------------------------------------------------------------------------------------
# Discriminator.


class DiscriminatorBlock(nn.Module):
  """fromRGB (first block or 'skip'), conv, down-conv, and the resnet shortcut."""

  in_channels: int  # 0 = the first block, which reads the image
  tmp_channels: int
  out_channels: int
  img_channels: int
  architecture: str = "resnet"
  conv_clamp: Optional[float] = None
  resample_taps: tuple[int, ...] = upfirdn.DEFAULT_TAPS

  @nn.compact
  def __call__(self, x: Optional[Array], img: Optional[Array]):
    conv = dict(activation="lrelu", conv_clamp=self.conv_clamp, resample_taps=self.resample_taps)
    if self.in_channels == 0 or self.architecture == "skip":
      y = Conv2dLayer(self.img_channels, self.tmp_channels, 1, name="fromrgb", **conv)(img)
      x = y if x is None else x + y
      img = (upfirdn.downsample2d(img, upfirdn.setup_filter(self.resample_taps))
             if self.architecture == "skip" else None)
    conv0 = Conv2dLayer(self.tmp_channels, self.tmp_channels, 3, name="conv0", **conv)
    conv1 = Conv2dLayer(self.tmp_channels, self.out_channels, 3, down=2, name="conv1", **conv)
    if self.architecture == "resnet":
      skip = Conv2dLayer(self.tmp_channels, self.out_channels, 1, down=2, use_bias=False,
                         resample_taps=self.resample_taps, name="skip")
      y = skip(x, gain=RESNET_GAIN)
      x = conv1(conv0(x), gain=RESNET_GAIN)
      x = y + x
    else:
      x = conv1(conv0(x))
    return x, img


def minibatch_stddev(x: Array, group_size: Optional[int], num_channels: int) -> Array:
  """Append the stddev over groups of samples (strided groups, as NVlabs reshapes) as channels."""
  n, h, w, c = x.shape
  g = n if group_size is None else min(group_size, n)
  if n % g:
    raise ValueError(f"Batch size {n} must be divisible by the minibatch-stddev group size {g}.")
  y = x.reshape(g, n // g, h, w, num_channels, c // num_channels)
  y = y - jnp.mean(y, axis=0)
  y = jnp.sqrt(jnp.mean(jnp.square(y), axis=0) + MBSTD_EPS)  # [n/g, H, W, F, c/F]
  y = jnp.mean(y, axis=(1, 2, 4))  # [n/g, F]
  y = jnp.tile(y, (g, 1))[:, None, None, :]
  return jnp.concatenate([x, jnp.broadcast_to(y, (n, h, w, num_channels))], axis=-1)


class DiscriminatorEpilogue(nn.Module):
  """4x4 head: (fromRGB for 'skip'), minibatch-stddev, conv, fc, out (and projection on c)."""

  in_channels: int
  cmap_dim: int
  resolution: int
  img_channels: int
  architecture: str = "resnet"
  mbstd_group_size: Optional[int] = 4
  mbstd_num_channels: int = 1
  conv_clamp: Optional[float] = None

  @nn.compact
  def __call__(self, x: Array, img: Optional[Array], cmap: Optional[Array] = None):
    """Returns (logits [B, 1], features dict)."""
    if self.architecture == "skip":
      x = x + Conv2dLayer(self.img_channels, self.in_channels, 1, activation="lrelu",
                          name="fromrgb")(img)
    if self.mbstd_num_channels > 0:
      x = minibatch_stddev(x, self.mbstd_group_size, self.mbstd_num_channels)
    x = Conv2dLayer(self.in_channels + self.mbstd_num_channels, self.in_channels, 3,
                    activation="lrelu", conv_clamp=self.conv_clamp, name="conv")(x)
    features = {"b4_conv": x}
    # NHWC flatten; the converter permutes NVlabs' NCHW-flattened fc weight to match.
    x = FullyConnectedLayer(self.in_channels * self.resolution**2, self.in_channels,
                            activation="lrelu", name="fc")(x.reshape(x.shape[0], -1))
    features["b4_fc"] = x
    if self.cmap_dim > 0 and cmap is None:  # conditional D without labels: features only
      return None, features
    x = FullyConnectedLayer(self.in_channels, 1 if self.cmap_dim == 0 else self.cmap_dim,
                            name="out")(x)
    if self.cmap_dim > 0:
      x = jnp.sum(x * cmap, axis=1, keepdims=True) / math.sqrt(self.cmap_dim)
    return x, features


class Discriminator(nn.Module):
  """image [B, H, W, C] (and c) -> logits [B, 1]; `features` returns every block's output."""

  config: DiscriminatorConfig

  def __call__(self, img: Array, c: Optional[Array] = None) -> Array:
    if self.config.c_dim > 0 and c is None:
      raise ValueError(f"This discriminator is conditional (c_dim={self.config.c_dim}): pass "
                       "labels c.")
    return self.features(img, c)["logits"]

  @nn.compact
  def features(self, img: Array, c: Optional[Array] = None) -> dict[str, Array]:
    """Every block's output (`b64` = the 64x64 block's [B, 32, 32, C] output), the epilogue's
    conv and fc activations (`b4_conv`, `b4_fc`) and `logits` [B, 1]. A conditional D
    without labels `c` returns no `logits`: only they depend on the class."""
    cfg = self.config
    expected = (cfg.img_resolution, cfg.img_resolution, cfg.img_channels)
    if img.ndim != 4 or img.shape[1:] != expected:
      raise ValueError(f"Discriminator input must be [B, {', '.join(map(str, expected))}] "
                       f"(NHWC, [-1, 1]), got {img.shape}.")
    features = {}
    x = None
    for res in cfg.block_resolutions:
      block = DiscriminatorBlock(
          in_channels=cfg.channels(res) if res < cfg.img_resolution else 0,
          tmp_channels=cfg.channels(res), out_channels=cfg.channels(res // 2),
          img_channels=cfg.img_channels, architecture=cfg.architecture,
          conv_clamp=cfg.conv_clamp, resample_taps=cfg.resample_taps, name=f"b{res}")
      x, img = block(x, img)
      features[f"b{res}"] = x
    cmap = None
    if cfg.c_dim > 0 and c is not None:
      cmap = MappingNetwork(z_dim=0, c_dim=cfg.c_dim, w_dim=cfg.resolved_cmap_dim, num_ws=None,
                            num_layers=cfg.mapping_layers, w_avg_beta=None, name="mapping")(None, c)
    logits, head = DiscriminatorEpilogue(
        cfg.channels(4), cmap_dim=cfg.resolved_cmap_dim, resolution=4,
        img_channels=cfg.img_channels, architecture=cfg.architecture,
        mbstd_group_size=cfg.mbstd_group_size, mbstd_num_channels=cfg.mbstd_num_channels,
        conv_clamp=cfg.conv_clamp, name="b4")(x, img, cmap)
    features.update(head)
    if logits is not None:
      features["logits"] = logits
    return features


@functools.lru_cache(maxsize=None)
def _compiled_init(module_cls: type[nn.Module], config) -> Callable[..., dict[str, Any]]:
  return jax.jit(module_cls(config).init)


def _init(module_cls: type[nn.Module], config, key: Array, *inputs: Optional[Array]):
  """Random variables of `module_cls(config)`, compiled once per config: run eagerly, init
  compiles each op of the forward pass on its own. Each differently shaped threefry draw still
  takes XLA:CPU ~1.4 s to compile in jax's default 'partitionable' form, ~0.25 s without it; the
  draws only initialise weights, so the cheaper form is used (it changes which numbers are
  drawn, not their distribution)."""
  with jax.threefry_partitionable(False):
    return _compiled_init(module_cls, config)({"params": key}, *inputs)


def init_generator(config: GeneratorConfig, key: Array) -> dict[str, Any]:
  """Official random initialisation of a generator's variables (params + buffers)."""
  z = jnp.zeros((1, config.z_dim))
  c = jnp.zeros((1, config.c_dim)) if config.c_dim else None
  return _init(Generator, config, key, z, c)


def init_discriminator(config: DiscriminatorConfig, key: Array) -> dict[str, Any]:
  """Official random initialisation of a discriminator's variables."""
  size = config.img_resolution
  batch = config.mbstd_group_size or 1
  img = jnp.zeros((batch, size, size, config.img_channels))
  c = jnp.zeros((batch, config.c_dim)) if config.c_dim else None
  return _init(Discriminator, config, key, img, c)
