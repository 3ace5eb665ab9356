"""The domain-guided encoder of In-Domain GAN Inversion (idinvert; Zhu et al., ECCV 2020), for
any StyleGAN2 generator that `generators.load` reads.

E: image [B, H, W, C] in [-1, 1] (C = the generator's channels, NHWC) -> W+ codes
[B, num_ws, w_dim]:

  stem       1x1 conv, C -> channels(H), lrelu (StyleGAN2's fromRGB)
  blocks     one residual block per resolution H, H/2, ..., 8: conv 3x3 -> norm -> conv 3x3
             down 2 -> norm, plus a 1x1 down-2 shortcut, summed with gain sqrt(1/2) (D's resnet
             block); the last one leaves 4x4
  head       flatten -> dense channels(4) (lrelu) -> dense num_ws * w_dim, zero-initialised
  output     w_avg + head: an untrained E returns the generator's mean code exactly, so
             training starts where W+ optimisation starts

Layers use StyleGAN2's equalised learning rate (`generators.networks` layers). Widths follow
the generator's rule: channels(res) = min(channel_base // res, channel_max).

Normalisation: GroupNorm (`norm_groups` groups) instead of the paper's batch norm. Batch norm
computes another function in training (batch statistics) than in inference (running
averages), and makes one image's code depend on the rest of its batch; GroupNorm normalises
each image alone, so E(x) is the same in a training batch, in a batch of 1 and under `vmap`.

Files: a native encoder is a folder with encoder.json (format, `EncoderConfig`, the fingerprint
of the generator it was trained for, training metadata) and state/ (orbax). An encoder is only
meaningful with its generator: `load_encoder(path, model)` refuses another one in one line.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
import shutil
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from generators import networks

FORMAT_NAME = 'stylegan-inversion-jax-encoder'
FORMAT_VERSION = 1
HEAD_BLOCK_RES = 4  # the blocks stop at 4x4, as StyleGAN2's D does
ENCODER_LAYOUT = ('a native encoder is a folder with encoder.json (architecture, generator '
                  'fingerprint) and state/ (orbax weights), written by `python -m inversion '
                  'export-encoder`')
TRAIN_HINT = ('train one for it: `python -m inversion train-encoder --config idinvert '
              '--checkpoint G --data DIR --workdir runs/enc`, then `python -m inversion '
              'export-encoder --workdir runs/enc --out ENCODER_DIR`')


class EncoderError(ValueError):
  """An encoder file is unreadable, or does not belong to the generator it is used with."""


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """Architecture of a domain-guided encoder (see the module docstring)."""
  img_resolution: int
  img_channels: int
  num_ws: int
  w_dim: int
  channel_base: int = 2048
  channel_max: int = 128
  norm_groups: int = 8  # GroupNorm groups (gcd with the channels); 0 = no normalisation

  def __post_init__(self):
    res = self.img_resolution
    if res < 8 or res & (res - 1):
      raise ValueError(f'the encoder needs a power-of-two resolution >= 8, got {res}')

  @property
  def block_resolutions(self) -> list[int]:
    return [2 ** i for i in range(int(math.log2(self.img_resolution)), 2, -1)]

  def channels(self, res: int) -> int:
    return min(self.channel_base // res, self.channel_max)

  @classmethod
  def for_generator(cls, g_config: networks.GeneratorConfig, **sizes) -> 'EncoderConfig':
    """The encoder of a generator's images and codes, with `sizes` (channel_base, ...)."""
    return cls(g_config.img_resolution, g_config.img_channels, g_config.num_ws, g_config.w_dim,
               **sizes)


class _Norm(nn.Module):
  groups: int

  @nn.compact
  def __call__(self, x):
    if not self.groups:
      return x
    # at most `groups` groups, as many as divide the channels (8 channels, groups 16: 8)
    return nn.GroupNorm(num_groups=math.gcd(self.groups, x.shape[-1]), epsilon=1e-5)(x)


class EncoderBlock(nn.Module):
  """conv -> norm -> down-conv -> norm, plus a 1x1 down shortcut (StyleGAN2 D's resnet block)."""
  in_channels: int
  out_channels: int
  norm_groups: int

  @nn.compact
  def __call__(self, x):
    conv = dict(activation='lrelu')
    y = networks.Conv2dLayer(self.in_channels, self.in_channels, 3, name='conv0', **conv)(x)
    y = _Norm(self.norm_groups, name='norm0')(y)
    y = networks.Conv2dLayer(self.in_channels, self.out_channels, 3, down=2, name='conv1',
                             **conv)(y, gain=networks.RESNET_GAIN)
    y = _Norm(self.norm_groups, name='norm1')(y)
    skip = networks.Conv2dLayer(self.in_channels, self.out_channels, 1, down=2, use_bias=False,
                                name='skip')(x, gain=networks.RESNET_GAIN)
    return skip + y


class _ZeroDense(nn.Module):
  """Equalised-lr dense layer whose weights start at 0 (the head's last layer)."""
  in_features: int
  out_features: int

  @nn.compact
  def __call__(self, x):
    weight = self.param('weight', nn.initializers.zeros, (self.in_features, self.out_features))
    bias = self.param('bias', nn.initializers.zeros, (self.out_features,))
    return x @ (weight / math.sqrt(self.in_features)) + bias


class DomainEncoder(nn.Module):
  """image [B, H, W, C] in [-1, 1] -> ws [B, num_ws, w_dim] (see the module docstring)."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, img: jax.Array) -> jax.Array:
    cfg = self.config
    expected = (cfg.img_resolution, cfg.img_resolution, cfg.img_channels)
    if img.ndim != 4 or img.shape[1:] != expected:
      raise ValueError(f'encoder input must be [B, {", ".join(map(str, expected))}] (NHWC, '
                       f'[-1, 1]), got {img.shape}')
    w_avg = self.variable('buffers', 'w_avg', jnp.zeros, (cfg.w_dim,))
    x = networks.Conv2dLayer(cfg.img_channels, cfg.channels(cfg.img_resolution), 1,
                             activation='lrelu', name='fromrgb')(img)
    for res in cfg.block_resolutions:
      x = EncoderBlock(cfg.channels(res), cfg.channels(res // 2), cfg.norm_groups,
                       name=f'b{res}')(x)
    x = x.reshape(x.shape[0], -1)
    width = cfg.channels(HEAD_BLOCK_RES)
    x = networks.FullyConnectedLayer(x.shape[-1], width, activation='lrelu', name='fc')(x)
    delta = _ZeroDense(width, cfg.num_ws * cfg.w_dim, name='out')(x)
    return w_avg.value + delta.reshape(-1, cfg.num_ws, cfg.w_dim)


@functools.lru_cache(maxsize=8)
def _init_fn(config: EncoderConfig):
  """The compiled init, once per architecture (every load builds its template with it)."""
  return jax.jit(DomainEncoder(config).init)


def init_encoder(config: EncoderConfig, w_avg: jax.Array, key: jax.Array) -> dict[str, Any]:
  """Fresh variables {'params', 'buffers': {'w_avg'}} with the generator's `w_avg`."""
  img = jnp.zeros((1, config.img_resolution, config.img_resolution, config.img_channels))
  with jax.threefry_partitionable(False):  # cheaper to compile; see networks._init
    variables = _init_fn(config)({'params': key}, img)
  return {'params': variables['params'],
          'buffers': {'w_avg': jnp.asarray(w_avg, jnp.float32).reshape(config.w_dim)}}


@functools.lru_cache(maxsize=8)
def encode_fn(config: EncoderConfig):
  """`apply` compiled once per architecture: (variables, images) -> ws."""
  return jax.jit(lambda variables, img: DomainEncoder(config).apply(variables, img))


def apply(config: EncoderConfig, variables: Any, images: jax.Array) -> jax.Array:
  """ws [B, num_ws, w_dim] of images [B, H, W, C] (traceable: use inside jit / grad too)."""
  return DomainEncoder(config).apply(variables, images)


@dataclasses.dataclass
class Encoder:
  """A trained encoder: its architecture, variables, and the generator it belongs to."""
  config: EncoderConfig
  variables: Any
  generator_id: str
  metadata: dict = dataclasses.field(default_factory=dict)

  def __call__(self, images, batch_size: int = 64) -> np.ndarray:
    """ws [B, num_ws, w_dim] of images [B, H, W, C] (or one [H, W, C]) in [-1, 1]."""
    images = np.asarray(images, np.float32)
    one = images.ndim == 3
    images = images[None] if one else images
    fn = encode_fn(self.config)
    out = np.concatenate([np.asarray(fn(self.variables, jnp.asarray(images[i:i + batch_size])))
                          for i in range(0, len(images), batch_size)])
    return out[0] if one else out

  def check(self, model, what: str = 'the encoder', generator_id: str | None = None) -> None:
    """An EncoderError unless this encoder was trained for `model`'s generator (whose
    fingerprint `generator_id` is, when the caller has it already)."""
    from inversion import latents as latents_lib  # pylint: disable=import-outside-toplevel
    generator_id = generator_id or latents_lib.generator_fingerprint(model)
    if generator_id != self.generator_id:
      source = self.metadata.get('generator_source', '')
      raise EncoderError(
          f'{what} was trained for generator {self.generator_id}'
          f'{f" ({source})" if source else ""}, but the checkpoint given is {generator_id} '
          f'({model.metadata.get("source") or "no source recorded"}); an encoder only inverts '
          f'into the generator it was trained with: pass that checkpoint, or {TRAIN_HINT}.')


def save_encoder(path: str | os.PathLike, encoder: Encoder, overwrite: bool = False
                 ) -> pathlib.Path:
  """Writes a native encoder folder (encoder.json + state/); returns its path."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  path = pathlib.Path(path).resolve()
  if path.exists():
    if not overwrite or not (path / 'encoder.json').is_file():
      raise FileExistsError(f'{path} exists; pass a new folder'
                            + ('' if overwrite else ' (or overwrite=True)'))
    shutil.rmtree(path)
  path.mkdir(parents=True)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path / 'state', jax.tree_util.tree_map(np.asarray, encoder.variables))
  meta = {'format': FORMAT_NAME, 'version': FORMAT_VERSION,
          'encoder': dataclasses.asdict(encoder.config), 'generator_id': encoder.generator_id,
          'metadata': encoder.metadata}
  (path / 'encoder.json').write_text(json.dumps(meta, indent=2))
  return path


def load_encoder(path: str | os.PathLike, model=None, generator_id: str | None = None
                 ) -> Encoder:
  """Reads a native encoder folder (once per version of it: repeated inversions do not read it
  again); with `model`, checks that it belongs to that generator (see `Encoder.check`)."""
  path = pathlib.Path(path).resolve()
  card = path / 'encoder.json'
  if not path.exists():
    raise FileNotFoundError(f'encoder {path} does not exist; {ENCODER_LAYOUT}.')
  if not card.is_file():
    raise EncoderError(f'{path} is not a native encoder (no encoder.json); {ENCODER_LAYOUT}.')
  encoder = _read_encoder(path, card.stat().st_mtime_ns)
  if model is not None:
    encoder.check(model, f'encoder {path}', generator_id)
  return encoder


@functools.lru_cache(maxsize=4)
def _read_encoder(path: pathlib.Path, mtime_ns: int) -> Encoder:  # pylint: disable=unused-argument
  """The encoder folder at `path` as it was at `mtime_ns` (the cache key)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  card = path / 'encoder.json'
  try:
    meta = json.loads(card.read_text())
    config = EncoderConfig(**meta['encoder'])
    generator_id = meta['generator_id']
  except (ValueError, KeyError, TypeError) as e:
    raise EncoderError(f'{card} is corrupt or not an encoder description ({e}); '
                       f'{ENCODER_LAYOUT}.') from None
  if meta.get('format') != FORMAT_NAME or meta.get('version', 0) > FORMAT_VERSION:
    raise EncoderError(f'{card}: format {meta.get("format")!r} version {meta.get("version")} is '
                       f'not a {FORMAT_NAME} file this version reads.')
  template = init_encoder(config, jnp.zeros((config.w_dim,)), jax.random.PRNGKey(0))
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      variables = checkpointer.restore(path / 'state', jax.tree_util.tree_map(np.asarray,
                                                                              template))
  except Exception as e:  # orbax/tensorstore raise many kinds
    raise EncoderError(f'{path}/state: the encoder weights are missing or corrupt ({e}); copy '
                       'the whole folder again or export it anew.') from e
  return Encoder(config, jax.device_put(variables), generator_id, meta.get('metadata', {}))
