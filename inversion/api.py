"""Inversion API: `invert` (arrays in, latents out) and the `Inverter` it is built on.

    from generators import checkpoint
    from inversion import api
    model = checkpoint.load('network-snapshot.pkl')          # or checkpoint.load() = embedded
    result = api.invert(images, model, 'image2stylegan:wplus', out_dir='out/run')
    result.metrics['psnr']                                   # [B] dB

Images are float32 NHWC in [-1, 1] with the generator's channel count (`inversion.images.
load_images` reads files that way). Configs are `configs/<method>.py` presets (a name such as
'projector' or 'image2stylegan:w', or a ConfigDict); see configs/image2stylegan.py for the
fields.

Image terms and channels: the loss sees the RGB channels only (`config.loss.channels='rgb'`,
channels [:3]; a grey generator's single channel) unless `config.loss.channels='all'`. For the
embedded RGB + defect-mask generator the mask channel is thus free during ordinary inversion;
networks that need every channel (the discriminator) see the target's mask channel in place of
the generated one.

Perceptual term: `config.loss.perceptual` ('vgg' = Image2StyleGAN's VGG16 layers, 'idinvert' =
VGG16 conv4_3 (In-Domain GAN Inversion), 'lpips', 'discriminator' = distance between the
checkpoint's own discriminator features, 'none'). When the VGG/LPIPS weight files are
missing (no download happens), `config.loss.fallback` says what to do: 'discriminator'
(default: use D features, with a warning), 'none' (pixel terms only) or 'error'. A fallback
from VGG uses `config.loss.fallback_weight` where the config has one.

Encoders (configs/idinvert.py): config.init 'encoder' starts from E(targets), and
config.encoder.weight adds idinvert's in-domain term weight * mean((w - E(G(w)))^2) (a
`LatentTerm`); the encoder is config.encoder.path, or the embedded model's shipped one.

Output folder (`out_dir`):

    reconstructions/<name>.png   G(latent), 8-bit (RGB + mask generators also <name>_mask.png)
    grid.png                     one row per image: target | reconstruction (RGB + mask
                                 generators: the mask is overlaid only if the loss saw it)
    latents/<name>.npz           see `inversion.latents.LATENTS_LAYOUT`
    metrics.csv, metrics.json    per image MSE, PSNR (dB), SSIM on the loss channels (LPIPS only
                                 where its weights exist), status; means
    losses.png                   per-step loss curves per term
    _work/state.npz              `inversion.jobs.invert_folder`'s checkpoint of the running
                                 batch (removed when the batch is done)

Around it: `inversion.jobs` (folder jobs, resume), `inversion.latents` (the latents file),
`inversion.report` (grids, metrics files, plots), `inversion.demo`; encoders that predict the
start latents go in `inversion.encoders`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from generators import cache
from generators import networks
from inversion import encoders
from inversion import engine as eng
from inversion import images as images_lib
from inversion import latents as latents_lib
from inversion import lpips
from inversion import metrics as metrics_lib
from inversion import perceptual
from inversion import report
from inversion import vgg
from inversion import weights as weights_lib

log = logging.getLogger(__name__)

__all__ = [
    'InversionResult',
    'Inverter',
    'as_config',
    'build_image_terms',
    'check_images',
    'check_mask',
    'image_keys',
    'image_metrics',
    'invert',
    'is_sfe',
    'load_mask',
    'lpips_metric_params',
    'spec_from_config',
    'w_stats',
]
PERCEPTUAL = ('vgg', 'idinvert', 'lpips', 'discriminator', 'none')
FALLBACKS = ('discriminator', 'none', 'error')
INITS = ('mean', 'random', 'given', 'encoder')


# ----------------------------------------------------------------------------------------------
# Config.


def as_config(config: str | ml_collections.ConfigDict,
              overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """'projector', 'image2stylegan:w', a config file path, or a ConfigDict (copied)."""
  if isinstance(config, str):
    from configs import load_config  # pylint: disable=import-outside-toplevel
    return load_config(config, overrides)
  if isinstance(config, ml_collections.ConfigDict):
    config = ml_collections.ConfigDict(config.to_dict())
    if overrides:
      from configs import apply_overrides  # pylint: disable=import-outside-toplevel
      apply_overrides(config, overrides)
    return config
  raise TypeError(f'config must be a config name or a ConfigDict, got {type(config).__name__}')


def is_sfe(config: str | ml_collections.ConfigDict) -> bool:
  """Whether `config` names StyleFeatureEditor ('sfe', 'sfe:official', configs/sfe.py): an
  encoder pipeline run in one forward pass (`inversion.sfe`), not an optimisation."""
  name = config if isinstance(config, str) else str(config.get('method', ''))
  return name.split(':')[0] == 'sfe'


# ----------------------------------------------------------------------------------------------
# Objective from the config.


@functools.lru_cache(maxsize=8)
def _d_term(d_config: networks.DiscriminatorConfig, layers: tuple[str, ...]):
  def features(params, img):
    return networks.Discriminator(d_config).apply(params, img,
                                                  method=networks.Discriminator.features)
  return perceptual.make_discriminator_feature_loss(features, layers)


@functools.lru_cache(maxsize=4)
def _load_weights(kind: str, path: str):
  if kind == 'vgg':
    return vgg.load_vgg16_params(path or None)
  return lpips.load_lpips_params('vgg', trunk_path=path or None)


def _idinvert_feature(params, x, y, mask=None):
  """idinvert's conv4_3 term with the VGG16 weights `_load_weights` reads (torchvision's)."""
  return perceptual.idinvert_feature(params, x, y, mask, preprocess='imagenet')


def _source(model) -> str:
  """The checkpoint a model came from, for messages."""
  return model.metadata.get('source') or 'the checkpoint'


def _discriminator_layers(config, model) -> tuple[str, ...]:
  spec = config.loss.discriminator_layers
  if spec == 'auto':
    return tuple(f'b{r}' for r in model.d_config.block_resolutions)  # outputs above 4x4
  return tuple(s.strip() for s in str(spec).split(',') if s.strip())


def build_image_terms(config: ml_collections.ConfigDict, model,
                      term_params: Optional[Mapping[str, Any]] = None
                      ) -> tuple[dict[str, eng.ImageTerm], dict[str, Any]]:
  """config.loss -> ({name: ImageTerm}, {params_key: params}).

  `term_params` supplies parameters directly (e.g. {'vgg': variables}), skipping file lookup.
  """
  loss = config.loss
  term_params = dict(term_params or {})
  terms, params = {}, {}
  if loss.mse:
    terms['mse'] = eng.ImageTerm(perceptual.pixel_mse, float(loss.mse))
  kind = loss.perceptual
  if kind not in PERCEPTUAL:
    raise ValueError(f'config.loss.perceptual must be one of {PERCEPTUAL}, got {kind!r}')
  if loss.fallback not in FALLBACKS:
    raise ValueError(f'config.loss.fallback must be one of {FALLBACKS}, got {loss.fallback!r}')
  w = float(loss.perceptual_weight)
  weights_kind = 'lpips' if kind == 'lpips' else 'vgg'  # 'idinvert' is VGG16 conv4_3
  if kind in ('vgg', 'idinvert', 'lpips') and w and weights_kind not in term_params:
    path = loss.lpips_weights if kind == 'lpips' else loss.vgg_weights
    try:
      params[weights_kind] = _load_weights(weights_kind, path)
    except weights_lib.WeightsNotFoundError as e:
      if loss.fallback == 'error':
        raise
      fallback = loss.fallback
      if fallback == 'discriminator' and model.d_config is None:
        raise weights_lib.WeightsNotFoundError(
            f'config.loss.perceptual={kind} needs weights that are missing '
            f'({str(e).splitlines()[0]}), and the fallback, discriminator features '
            f'(config.loss.fallback), needs a discriminator, which {_source(model)} does not '
            'hold. Fix one of: put the weights where they are looked for (README, "Weights that '
            'cannot ship"); pass --checkpoint a file with D (an NVlabs network pickle, a '
            "rosinality .pt with 'd'); or invert with pixel terms only: "
            '--config.loss.perceptual=none.') from None
      log.warning('%s perceptual weights not found, using %s instead (config.loss.fallback). '
                  'Details: %s', kind.upper(), 'discriminator features' if fallback ==
                  'discriminator' else 'no perceptual term', str(e).splitlines()[0])
      kind = fallback
      w = float(loss.get('fallback_weight', w))
  elif weights_kind in term_params:
    params[weights_kind] = term_params[weights_kind]
  if w and kind == 'vgg':
    terms['vgg'] = eng.ImageTerm(perceptual.image2stylegan_perceptual, w, 'vgg')
  elif w and kind == 'idinvert':
    terms['vgg_conv4_3'] = eng.ImageTerm(_idinvert_feature, w, 'vgg')
  elif w and kind == 'lpips':
    terms['lpips'] = eng.ImageTerm(perceptual.lpips_loss, w, 'lpips')
  elif w and kind == 'discriminator':
    if model.d_config is None:
      raise ValueError(f'config.loss.perceptual=discriminator needs a discriminator, which '
                       f'{_source(model)} does not hold; pass --checkpoint a file with D (an '
                       "NVlabs network pickle, a rosinality .pt with 'd') or use "
                       '--config.loss.perceptual=vgg|lpips|none.')
    layers = _discriminator_layers(config, model)
    terms['discriminator'] = eng.ImageTerm(_d_term(model.d_config, layers), w, 'discriminator',
                                           all_channels=True)
    params['discriminator'] = term_params.get('discriminator', model.d_vars)
  for k, v in term_params.items():
    params.setdefault(k, v)
  return terms, params


def _loss_channels(config, g_config) -> int:
  channels = config.loss.channels
  if channels == 'rgb':
    return min(3, g_config.img_channels)
  if channels == 'all':
    return g_config.img_channels
  raise ValueError(f"config.loss.channels must be 'rgb' or 'all', got {channels!r}")


def spec_from_config(config: ml_collections.ConfigDict, g_config: networks.GeneratorConfig,
                     image_terms: Mapping[str, eng.ImageTerm],
                     latent_terms: Optional[Mapping[str, eng.LatentTerm]] = None,
                     label: Optional[int] = None) -> eng.EngineSpec:
  """The compiled program's description from a config, the terms and the class index of a
  conditional generator (`Model.class_index(config.label)`)."""
  o = config.optimizer
  return eng.EngineSpec(
      g_config=g_config, image_terms=tuple(image_terms.items()),
      latent_terms=tuple((latent_terms or {}).items()), space=config.space,
      num_steps=int(config.steps), chunk_size=int(config.chunk_size),
      optimizer=eng.OptimizerSpec(o.name, float(o.lr), float(o.b1), float(o.b2), float(o.eps),
                                  o.schedule, float(o.rampdown), float(o.rampup)),
      loss_channels=_loss_channels(config, g_config),
      optimize_noise=bool(config.noise.optimize), normalize_noise=bool(config.noise.normalize),
      noise_regularize_weight=float(config.noise.regularize_weight),
      latent_noise_factor=float(config.latent_noise.factor),
      latent_noise_ramp=float(config.latent_noise.ramp), noise_mode=config.noise.mode,
      micro_batch=int(config.micro_batch), label=label)


_STATS_CACHE: dict = {}


def w_stats(model, num_samples: int, generator_id: Optional[str] = None,
            label: Optional[int] = None) -> eng.WStats:
  """`engine.estimate_w_stats`, cached per generator fingerprint, sample count and class label:
  in memory, and in the user cache (`generators.cache`), so later runs skip the mapping of
  `num_samples` random z."""
  generator_id = generator_id or latents_lib.generator_fingerprint(model)
  key = (generator_id, int(num_samples), label)
  if key not in _STATS_CACHE:
    name = f'w_stats/{generator_id.replace(":", "_")}_{int(num_samples)}_{label}'
    arrays = cache.cached_arrays(name, lambda: eng.estimate_w_stats(
        model.g_config, model.g_vars, int(num_samples), label=label)._asdict())
    _STATS_CACHE[key] = eng.WStats(**{k: jnp.asarray(v) for k, v in arrays.items()})
  return _STATS_CACHE[key]


# ----------------------------------------------------------------------------------------------
# Results.


@dataclasses.dataclass
class InversionResult:
  """What `invert` returns (numpy arrays, batch first)."""
  names: list[str]                   # image names
  space: str                         # 'z' | 'w' | 'wplus'
  latents: np.ndarray                # optimised variable: [B, z_dim] | [B, w_dim] |
                                     # [B, num_ws, w_dim]
                                     # (the last finite one for failed images)
  ws: np.ndarray                     # [B, num_ws, w_dim]
  noise: dict[str, np.ndarray]       # {layer: [B, r, r]}; {} = the generator's stored maps
  reconstructions: np.ndarray        # [B, H, W, C], about [-1, 1]
  targets: np.ndarray                # [B, H, W, C]
  losses: dict[str, np.ndarray]      # {term: [B, steps]} unweighted; 'total' = weighted sum;
                                     # NaN after an image failed
  metrics: dict[str, np.ndarray]     # {'mse', 'psnr', 'ssim'[, 'lpips', 'masked_mse',
                                     #  'masked_psnr']: [B]} on the loss channels
  failed: np.ndarray                 # [B] bool: stopped by a non-finite loss/gradient
  failed_step: np.ndarray            # [B] int, -1 = not failed
  steps: int                         # optimisation steps configured
  generator_id: str = ''
  config_json: str = ''
  loss_channels: int = 0             # channels the image terms saw (0 = all)
  features: Optional[np.ndarray] = None     # SFE: F_k [B, h, w, C] injected at feature_layer
  feature_layer: str = ''                   # SFE: generator layer of `features` ('b64.conv1')
  encoder_ws: Optional[np.ndarray] = None   # SFE: editing codes w_e [B, num_ws, w_dim]
  encoder_source: str = ''                  # SFE: 'e4e' | 'domain-encoder' | 'inverter'

  def __len__(self):
    return len(self.names)

  def status(self, i: int) -> str:
    if self.failed[i]:
      return (f'non-finite loss at step {int(self.failed_step[i])} '
              '(kept the last finite latent)')
    return 'ok'

  def metric_rows(self) -> list[dict]:
    rows = []
    for i, name in enumerate(self.names):
      row = {'name': name}
      row.update({k: float(v[i]) for k, v in self.metrics.items()})
      row['status'] = self.status(i)
      rows.append(row)
    return rows


def image_metrics(recon: np.ndarray, targets: np.ndarray, channels: int,
                  lpips_params=None, masks: Optional[np.ndarray] = None
                  ) -> dict[str, np.ndarray]:
  """MSE, PSNR (dB, range 2), SSIM on the first `channels` channels; LPIPS with its params;
  masked_mse / masked_psnr inside the mask when one mask [B, H, W, 1] is given."""
  k = channels
  x, y = jnp.asarray(recon[..., :k]), jnp.asarray(targets[..., :k])
  out = {'mse': np.asarray(metrics_lib.mse(x, y)), 'psnr': np.asarray(metrics_lib.psnr(x, y))}
  if min(x.shape[1:3]) >= metrics_lib.SSIM_WINDOW:
    out['ssim'] = np.asarray(metrics_lib.ssim(x, y))
  if lpips_params is not None:
    out['lpips'] = np.asarray(metrics_lib.lpips(lpips_params, x, y, resize=256))
  if masks is not None and masks.shape[-1] == 1:
    m = masks.astype(np.float32)
    se = np.square(recon[..., :k] - targets[..., :k]) * m
    mmse = se.sum(axis=(1, 2, 3)) / (k * m.sum(axis=(1, 2, 3)))
    out['masked_mse'] = mmse
    with np.errstate(divide='ignore'):
      out['masked_psnr'] = 10 * np.log10(4.0 / mmse)
  return out


# ----------------------------------------------------------------------------------------------
# Inputs.


def check_images(images, model) -> np.ndarray:
  x = np.asarray(images, np.float32)
  res, ch = model.resolution, model.channels
  if x.ndim == 3:
    x = x[None]
  if x.ndim != 4 or x.shape[1:] != (res, res, ch):
    hint = ''
    if x.ndim == 4 and x.shape[1] in (1, 3, 4) and x.shape[-1] not in (1, 3, 4):
      hint = ' The array looks NCHW; transpose it to NHWC.'
    elif x.ndim == 4 and x.shape[-1] != ch:
      hint = (f' The generator has {ch} channels; inversion.images.load_images(paths, {res}, '
              f'{ch}) reads files with the right channels.')
    else:
      hint = (f' Resize/crop to {res}x{res} first (inversion.images.load_images(paths, {res}, '
              f'{ch}) does it).')
    raise ValueError(f'images must be [B, {res}, {res}, {ch}] (or one [{res}, {res}, {ch}]) '
                     f'float NHWC in [-1, 1] for this generator, got {x.shape}.{hint}')
  if x.shape[0] == 0:
    raise ValueError('images is an empty batch')
  finite = x[np.isfinite(x)]
  if finite.size and finite.max() > 32:
    raise ValueError(f'images must be in [-1, 1], got values in [{finite.min():.3g}, '
                     f'{finite.max():.3g}] (0..255 data?); use x / 127.5 - 1.')
  if finite.size and (finite.min() < -1.5 or finite.max() > 1.5):
    log.warning('images have values in [%.3g, %.3g], outside the usual [-1, 1]; inverting '
                'them as they are', finite.min(), finite.max())
  return x


def check_mask(mask, b: int, res: int) -> Optional[np.ndarray]:
  if mask is None:
    return None
  m = np.asarray(mask, np.float32)
  if m.ndim == 2:
    m = m[None, :, :, None]
  elif m.ndim == 3:
    m = m[None] if m.shape[-1] == 1 and m.shape[0] == res else m[..., None]
  if m.ndim != 4 or m.shape[1:] != (res, res, 1) or m.shape[0] not in (1, b):
    raise ValueError(f'mask must be [{res}, {res}], [{res}, {res}, 1], [B, {res}, {res}] or '
                     f'[B, {res}, {res}, 1] in [0, 1] (1 = pixel counts), got {np.shape(mask)}')
  if not np.isfinite(m).all() or m.min() < 0 or m.max() > 1:
    raise ValueError('mask values must be finite and in [0, 1] (1 = pixel counts, 0 = ignored)')
  if m.sum(axis=(1, 2, 3)).min() == 0:
    raise ValueError('mask is all zero for some image: nothing to fit')
  return np.broadcast_to(m, (b, res, res, 1)).copy()


def load_mask(path: str | os.PathLike, resolution: int) -> np.ndarray:
  """A mask image file -> [R, R, 1] in [0, 1] (white = pixel counts, black = ignored); see
  `images.load_weight_mask` (a square mask of another size is resized, logged; others refused)."""
  return images_lib.load_weight_mask(path, resolution)


def image_keys(key, b: int, indices: Optional[Sequence[int]] = None) -> jax.Array:
  """key: PRNG key (per image fold_in(key, index)) or [B] keys; -> [B, 2] uint32."""
  if jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  key = jnp.asarray(key, jnp.uint32)
  if key.shape == (2,):
    idx = range(b) if indices is None else indices
    return jnp.stack([jax.random.fold_in(key, int(i)) for i in idx])
  if key.shape == (b, 2):
    return key
  raise ValueError(f'key must be one PRNG key [2] or one per image [{b}, 2], got {key.shape}')


# ----------------------------------------------------------------------------------------------
# The inverter: a generator and a config made ready to run.


class Inverter:
  """Builds the objective, the engine and the w statistics once, for many batches.

  Args:
    generator: a `generators.checkpoint.Model`.
    config: config name ('image2stylegan:wplus', 'projector', ...) or ConfigDict.
    latent_terms: extra {name: engine.LatentTerm} (e.g. an encoder regulariser).
    term_params: parameters for terms, {params_key: params} (also skips weight-file lookup for
      'vgg' / 'lpips').
    encoder: the encoder of config.init 'encoder' / config.encoder.weight.
    image_terms: {name: engine.ImageTerm} instead of the ones config.loss describes (e.g.
      `inversion.defects`' terms, each with its channels and mask); term_params holds their
      parameters.
  """

  def __init__(self, generator, config, *, latent_terms=None, term_params=None, encoder=None,
               image_terms: Optional[Mapping[str, eng.ImageTerm]] = None):
    self.model = generator
    self.config = as_config(config)
    cfg = self.config
    if cfg.init not in INITS:
      raise ValueError(f'config.init must be one of {INITS}, got {cfg.init!r}')
    if cfg.noise.init not in ('const', 'random'):
      raise ValueError(f"config.noise.init must be 'const' or 'random', got {cfg.noise.init!r}")
    self.generator_id = latents_lib.generator_fingerprint(generator)
    self.encoder = self._encoder(encoder)
    latent_terms, term_params = dict(latent_terms or {}), dict(term_params or {})
    if self.encoder is not None and cfg.get('encoder') and cfg.encoder.weight:  # idinvert
      latent_terms['domain'] = eng.LatentTerm(encoders.domain_term(self.encoder.config),
                                              float(cfg.encoder.weight), 'encoder')
      term_params['encoder'] = self.encoder.variables
    if image_terms is None:
      image_terms, self.term_params = build_image_terms(cfg, generator, term_params)
    else:
      self.term_params = term_params
    self.spec = spec_from_config(cfg, generator.g_config, image_terms, latent_terms,
                                 generator.class_index(cfg.get('label', '')))
    self.engine = eng.make_engine(self.spec)
    self._stats = None
    self._lpips = None

  def _encoder(self, encoder) -> Optional['encoders.Encoder']:
    """The encoder the config asks for (config.init 'encoder', or a config.encoder.weight):
    `encoder` if given, else config.encoder.path, else the embedded model's; checked against
    the generator. None when the config needs none."""
    cfg = self.config
    section = cfg.get('encoder')
    if cfg.init != 'encoder' and not (section is not None and section.weight):
      return None
    if encoder is not None:
      encoder.check(self.model, generator_id=self.generator_id)
      return encoder
    return encoders.resolve_encoder(section.path if section is not None else '', self.model,
                                    self.generator_id)

  def encoder_latents(self, targets: np.ndarray) -> jax.Array:
    """E(targets) in this inversion's space: W+ codes [B, num_ws, w_dim]; in W their mean over
    the layers [B, w_dim]. Z has no encoder start."""
    if self.encoder is None:
      raise ValueError("config.init='encoder' needs an encoder (config.encoder.path / --encoder)")
    if self.spec.space == 'z':
      raise ValueError("config.init='encoder' gives W+ codes; Z space has no encoder start: "
                       "invert in W+ (or W) or use config.init='mean'")
    ws = jnp.asarray(self.encoder(targets))
    return ws.mean(1) if self.spec.space == 'w' else ws

  @property
  def stats(self) -> eng.WStats:
    if self._stats is None:
      self._stats = w_stats(self.model, self.config.w_avg_samples, self.generator_id,
                            self.spec.label)
    return self._stats

  def _needs_stats(self, mode: str) -> bool:
    if (self.spec.latent_noise_factor > 0 or (mode == 'mean' and self.spec.space == 'z')
        or (mode == 'mean' and self.spec.label is not None)):  # a class's mean w
      return True
    buf = np.asarray(self.model.g_vars['buffers']['mapping']['w_avg'])
    return mode == 'mean' and not buf.any()

  # 1. initial latents
  def initial_latents(self, keys: jax.Array, init=None) -> eng.Latents:
    """Per-image start values. init: None (config.init), or given latents [B, ...] / a dict
    {'latent': [B, ...], 'noise': {layer: [B, r, r]}} / a sequence of LatentRecords."""
    cfg, spec, model = self.config, self.spec, self.model
    gc = model.g_config
    b = keys.shape[0]
    shape = eng.latent_shape(gc, spec.space)
    mode = cfg.init if init is None else 'given'
    if mode == 'encoder':
      raise ValueError("config.init='encoder' starts from E(targets): call start(targets, ...), "
                       'or pass init=inverter.encoder_latents(targets)')
    if mode == 'given' and init is None:
      raise ValueError("config.init='given' needs latents: pass init=... (API) or --init DIR "
                       '(CLI: a folder of latents files named like the images)')
    given_noise = None
    if mode == 'given':
      latent, given_noise = self._given(init, b, shape)
    elif mode == 'mean':
      buf = jnp.asarray(model.g_vars['buffers']['mapping']['w_avg'], jnp.float32)
      w_avg = self.stats.w_avg if self._needs_stats('mean') else buf
      if spec.space == 'z':
        one = self.stats.z_mean
      elif spec.space == 'w':
        one = w_avg
      else:
        one = jnp.broadcast_to(w_avg, shape)
      latent = jnp.broadcast_to(one, (b,) + shape)
    else:  # random: z ~ N(0, I) per image; w = mapping(z)
      z = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 1), (gc.z_dim,)))(keys)
      if spec.space == 'z':
        latent = z
      else:
        # A conditional G: the label's class, or one drawn per image from its own key.
        c = eng.class_labels(gc, spec.label, b, jax.vmap(lambda k: jax.random.fold_in(k, 3))(keys))
        w = model.mapping(z, c)[:, 0]
        latent = w if spec.space == 'w' else jnp.broadcast_to(w[:, None], (b,) + shape)
    noise = {}
    if spec.optimize_noise:
      if given_noise:
        noise = given_noise
      elif cfg.noise.init == 'const':
        noise = {k: jnp.broadcast_to(v, (b,) + v.shape)
                 for k, v in eng.stored_noise(gc, model.g_vars).items()}
      else:
        noise = {}
        for j, (name, r) in enumerate(gc.noise_layers.items()):
          noise[name] = jax.vmap(lambda k, j=j, r=r: jax.random.normal(
              jax.random.fold_in(jax.random.fold_in(k, 2), j), (r, r)))(keys)
    return eng.Latents(jnp.asarray(latent, jnp.float32),
                       {k: jnp.asarray(v, jnp.float32) for k, v in noise.items()})

  def _check_label(self, records) -> None:
    """Z latents of a conditional generator must come from inversions with this class."""
    for r in records:
      label = json.loads(r.config_json or '{}').get('label', '')
      if self.model.class_index(label) != self.spec.label:
        raise latents_lib.LatentsError(
            f'{r.path or r.name}: its z was inverted with class {label!r}, not '
            f'{self.config.label!r}; set --config.label={label} or start from its ws in W+ space.')

  def _given(self, init, b, shape):
    gc, space = self.model.g_config, self.spec.space
    noise = None
    if isinstance(init, (list, tuple)) and init and isinstance(init[0], latents_lib.LatentRecord):
      for r in init:
        r.check(self.generator_id, getattr(r, 'path', ''))
      if all(r.space == space for r in init):
        if space == 'z' and gc.c_dim:  # a z means something only with its class
          self._check_label(init)
        lat = np.stack([r.latent for r in init])
      else:
        lat = np.stack([r.ws for r in init])
      if all(r.noise for r in init):
        noise = {k: np.stack([r.noise[k] for r in init]) for k in init[0].noise}
    elif isinstance(init, Mapping):
      lat, noise = np.asarray(init['latent'], np.float32), init.get('noise')
    else:
      lat = np.asarray(init, np.float32)
    if lat.ndim == len(shape) and b == 1:
      lat = lat[None]
    ws_shape = (gc.num_ws, gc.w_dim)
    if space == 'wplus' and lat.shape[1:] == (gc.w_dim,):
      lat = np.broadcast_to(lat[:, None], (lat.shape[0],) + ws_shape)
    if space == 'w' and lat.shape[1:] == ws_shape:
      if not np.allclose(lat, lat[:, :1], atol=1e-6):
        raise ValueError('W space needs one w per image, got per-layer ws [B, num_ws, w_dim] '
                         'whose layers differ; invert in W+ (--method wplus) instead')
      lat = lat[:, 0]
    if lat.shape != (b,) + shape:
      raise ValueError(f'init latents for space {space!r} must be [{b}, '
                       f'{", ".join(map(str, shape))}], got {lat.shape}'
                       + (' (Z space needs z, not w)' if space == 'z' else ''))
    if noise is not None:
      noise = {k: jnp.asarray(v, jnp.float32) for k, v in noise.items()}
      if set(noise) != set(gc.noise_layers):
        raise ValueError(f'init noise layers {sorted(noise)} do not match the generator\'s '
                         f'{sorted(gc.noise_layers)}')
    return jnp.asarray(lat), noise

  # 2. state and data
  def start(self, targets: np.ndarray, masks: Optional[np.ndarray], keys: jax.Array,
            init=None) -> tuple[eng.EngineState, eng.Data]:
    w_std = self.stats.w_std if self.spec.latent_noise_factor > 0 else jnp.zeros(())
    data = eng.Data(self.model.g_vars, self.term_params, jnp.asarray(targets),
                    None if masks is None else jnp.asarray(masks), jnp.asarray(w_std, jnp.float32))
    run_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
    if init is None and self.config.init == 'encoder':
      init = self.encoder_latents(targets)
    state = self.engine.init(self.initial_latents(keys, init), run_keys)
    return state, data

  # 3. result
  def result(self, state: eng.EngineState, curves: Mapping[str, np.ndarray], data: eng.Data,
             names: Sequence[str]) -> InversionResult:
    final = eng.final_latents(state)
    g_vars = self.model.g_vars
    recon = np.asarray(self.engine.render(final, g_vars))
    ws = np.asarray(self.engine.ws(final, g_vars))
    targets = np.asarray(data.targets)
    masks = None if data.masks is None else np.asarray(data.masks)
    return InversionResult(
        names=list(names), space=self.spec.space, latents=np.asarray(final.latent),
        ws=ws, noise={k: np.asarray(v) for k, v in final.noise.items()},
        reconstructions=recon, targets=targets,
        losses={k: np.asarray(v).T.copy() for k, v in curves.items()},
        metrics=self.metrics(recon, targets, masks),
        failed=np.asarray(state.failed), failed_step=np.asarray(state.failed_step),
        steps=self.spec.num_steps, generator_id=self.generator_id,
        config_json=self.config.to_json(), loss_channels=self.spec.loss_channels)

  def metrics(self, recon: np.ndarray, targets: np.ndarray,
              masks: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
    """`image_metrics` on the loss channels, with LPIPS where its weights exist."""
    return image_metrics(recon, targets, self.spec.loss_channels, self._lpips_params(), masks)

  def _lpips_params(self):
    if self._lpips is None:
      self._lpips = lpips_metric_params(self.config.metrics.lpips, self.spec.loss_channels,
                                        self.config.loss.lpips_weights) or False
    return self._lpips or None


def lpips_metric_params(mode: str, channels: int, path: str = ''):
  """LPIPS parameters for the metric, or None: mode 'off', channels other than 1 or 3, or no
  weights file under 'auto' (said in the log; 'on' raises WeightsNotFoundError)."""
  if mode == 'off' or channels not in (1, 3):
    return None
  try:
    return _load_weights('lpips', path)
  except weights_lib.WeightsNotFoundError:
    if mode == 'on':
      raise
    log.info('LPIPS metric skipped: LPIPS weights not found (config.metrics.lpips=auto).')
    return None


# ----------------------------------------------------------------------------------------------
# invert


def invert(images, generator, config='image2stylegan', *, mask=None, init=None, key=None,
           out_dir=None, names: Optional[Sequence[str]] = None,
           latent_terms: Optional[Mapping[str, eng.LatentTerm]] = None,
           term_params: Optional[Mapping[str, Any]] = None, progress: bool = True,
           callback: Optional[Callable[[eng.ChunkInfo], None]] = None,
           devices: Optional[Sequence[Any]] = None,
           encoder: Optional[encoders.Encoder] = None) -> InversionResult:
  """Inverts one image or a batch into the generator's latent space (compiled, per image).

  Args:
    images: float32 NHWC in [-1, 1], [H, W, C] or [B, H, W, C], with the generator's resolution
      and channel count (`inversion.images.load_images` reads files like that).
    generator: a `generators.checkpoint.Model`.
    config: a preset name ('image2stylegan', 'image2stylegan:z|w|wplus|wplus_noise',
      'projector', 'idinvert' (in-domain), 'idinvert:encoder' (E alone), optionally ':quick')
      or a ConfigDict (see configs/image2stylegan.py, configs/idinvert.py); or 'sfe':
      StyleFeatureEditor's one forward pass (`inversion.sfe.invert`; `encoder` is then an
      `inversion.sfe.SFE`, its files, or 'random').
    mask: optional [H, W] / [H, W, 1] / [B, H, W(, 1)] weights in [0, 1]: 1 = pixel counts,
      0 = ignored by every image term (inpainting: give the known pixels 1).
    init: start latents instead of config.init: [B, *latent_shape] (W+ also takes [B, w_dim]),
      a dict {'latent', 'noise'}, or a list of `LatentRecord`s (`load_latents`).
    key: PRNG key (image i uses fold_in(key, i)) or [B, 2] per-image keys; None =
      PRNGKey(config.seed).
    out_dir: if given, writes reconstructions, grid, latents, metrics and loss curves there.
    names: image names for outputs (default image_000, ...).
    latent_terms, term_params: see `Inverter`.
    progress: tqdm progress bar.
    callback: called after every chunk with an `engine.ChunkInfo`; raising stops the run.
    devices: devices to shard the batch over (default this process's; `engine.batch_mesh`).
    encoder: the encoder of config.init 'encoder' / config.encoder.weight (configs/idinvert.py),
      instead of config.encoder.path or the embedded model's; for 'sfe', the SFE networks.

  Returns:
    InversionResult: latents, ws, noise, reconstructions, per-step loss curves per term,
    per-image metrics (MSE, PSNR, SSIM; LPIPS where weights exist) and failure flags. An image
    whose loss becomes non-finite is stopped at its last finite latent and reported (warning
    and `failed`); the others continue.

  Example:
    >>> result = invert(x, model, 'image2stylegan:w', key=jax.random.PRNGKey(0))
    >>> result.metrics['psnr'], result.ws.shape
  """
  if is_sfe(config):
    from inversion import sfe  # pylint: disable=import-outside-toplevel
    return sfe.invert(images, generator, encoder, names=names, out_dir=out_dir,
                      devices=devices, config=as_config(config))
  if out_dir is not None:
    report.prepare_out_dir(out_dir)  # a folder that cannot be written fails before the work
  inv = Inverter(generator, config, latent_terms=latent_terms, term_params=term_params,
                 encoder=encoder)
  targets = check_images(images, generator)
  b = targets.shape[0]
  names = list(names) if names is not None else [f'image_{i:03d}' for i in range(b)]
  if len(names) != b:
    raise ValueError(f'{len(names)} names for {b} images')
  masks = check_mask(mask, b, generator.resolution)
  keys = image_keys(jax.random.PRNGKey(inv.config.seed) if key is None else key, b)
  state, data = inv.start(targets, masks, keys, init)
  state, data = eng.shard(state, data, eng.batch_mesh(b, devices))
  state, curves = eng.run(inv.engine, state, data, progress=progress, on_chunk=callback,
                          names=names, desc=f'invert {inv.config.method}:{inv.spec.space}')
  result = inv.result(state, curves, data, names)
  if out_dir is not None:
    report.save_result(result, out_dir, generator)
  return result
