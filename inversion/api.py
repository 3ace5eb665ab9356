"""Inversion API: `invert` (arrays), `invert_folder` (resumable jobs), latent files, outputs.

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

Perceptual term: `config.loss.perceptual` ('vgg' = Image2StyleGAN's VGG16 layers, 'lpips',
'discriminator' = distance between the checkpoint's own discriminator features, 'none'). When
the VGG/LPIPS weight files are missing (no download happens), `config.loss.fallback` says what
to do: 'discriminator' (default: use D features, with a warning), 'none' (pixel terms only) or
'error'.

Output folder (`out_dir`):

    reconstructions/<name>.png   G(latent), 8-bit (RGB + mask generators also <name>_mask.png)
    grid.png                     one row per image: target | reconstruction (RGB + mask
                                 generators: the mask is overlaid only if the loss saw it)
    latents/<name>.npz           see LATENTS_LAYOUT
    metrics.csv, metrics.json    per image MSE, PSNR (dB), SSIM on the loss channels (LPIPS only
                                 where its weights exist), status; means
    losses.png                   per-step loss curves per term
    _work/state.npz              invert_folder's checkpoint of the running batch (removed when
                                 the batch is done)
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import json
import logging
import os
import pathlib
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from generators import networks
from inversion import engine as eng
from inversion import images as images_lib
from inversion import metrics as metrics_lib
from inversion import perceptual
from inversion import weights as weights_lib

log = logging.getLogger(__name__)

__all__ = [
    'LATENTS_FORMAT',
    'LATENTS_LAYOUT',
    'FolderResult',
    'InversionResult',
    'Inverter',
    'LatentRecord',
    'LatentsError',
    'as_config',
    'build_image_terms',
    'generator_fingerprint',
    'invert',
    'invert_folder',
    'load_latents',
    'save_latents',
    'save_result',
    'spec_from_config',
]

LATENTS_FORMAT = 'stylegan-inversion-jax/latents'
LATENTS_VERSION = 1
LATENTS_LAYOUT = """\
latents/<name>.npz (numpy .npz, no pickles), one image per file:
  format          str   'stylegan-inversion-jax/latents'
  version         int   1
  name            str   image name (file stem)
  space           str   'z' | 'w' | 'wplus': the optimised parametrisation
  latent          f32   the optimised variable: z [z_dim] | w [w_dim] | ws [num_ws, w_dim]
  ws              f32   [num_ws, w_dim]: what the synthesis network consumes
  noise/<layer>   f32   [r, r] optimised unit-variance noise maps ('b8.conv0', ...); absent when
                        the generator's stored maps were used
  loss/<term>     f32   [steps] unweighted per-step loss of each term ('total' = weighted sum)
  generator_id    str   fingerprint of the generator (sha256 of its config and weights)
  generator_json  str   generator config and source, for humans
  config_json     str   the inversion config
  metrics_json    str   {'mse', 'psnr', 'ssim'[, 'lpips']} of the reconstruction
  status          str   'ok' or 'non-finite loss at step k (kept the last finite latent)'
"""
PERCEPTUAL = ('vgg', 'lpips', 'discriminator', 'none')
FALLBACKS = ('discriminator', 'none', 'error')
INITS = ('mean', 'random', 'given')
MAX_GRID_ROWS = 32   # folder jobs: grid.png shows the first images only


class LatentsError(ValueError):
  """A latents file is unreadable, or does not belong to the generator it is used with."""


# ----------------------------------------------------------------------------------------------
# Config and generator identity.


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


def generator_fingerprint(model) -> str:
  """'sha256:<16 hex>' of the generator's config and every variable (params and buffers)."""
  h = hashlib.sha256()
  cfg = dataclasses.asdict(model.g_config)
  h.update(json.dumps(cfg, sort_keys=True, default=list).encode())
  leaves = jax.tree_util.tree_flatten_with_path(model.g_vars)[0]
  for path, leaf in sorted(leaves, key=lambda pl: jax.tree_util.keystr(pl[0])):
    a = np.ascontiguousarray(np.asarray(leaf, np.float32))
    h.update(jax.tree_util.keystr(path).encode())
    h.update(str(a.shape).encode())
    h.update(a.tobytes())
  return 'sha256:' + h.hexdigest()[:16]


def _generator_json(model) -> str:
  return json.dumps({'config': dataclasses.asdict(model.g_config),
                     'source': model.metadata.get('source', ''),
                     'metadata': {k: v for k, v in model.metadata.items()
                                  if isinstance(v, (str, int, float, bool))}},
                    default=list)


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
    return weights_lib.load_vgg16_params(path or None)
  return weights_lib.load_lpips_params('vgg', trunk_path=path or None)


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
  if kind in ('vgg', 'lpips') and loss.perceptual_weight and kind not in term_params:
    path = loss.vgg_weights if kind == 'vgg' else loss.lpips_weights
    try:
      params[kind] = _load_weights(kind, path)
    except weights_lib.WeightsNotFoundError as e:
      if loss.fallback == 'error':
        raise
      fallback = loss.fallback
      if fallback == 'discriminator' and model.d_config is None:
        raise weights_lib.WeightsNotFoundError(
            f'{e}\nThe fallback perceptual term (discriminator features) needs a checkpoint with '
            'a discriminator, and this one has none. Supply the weights, or run pixel-only with '
            '--config.loss.perceptual=none.') from None
      log.warning('%s perceptual weights not found, using %s instead (config.loss.fallback). '
                  'Details: %s', kind.upper(), 'discriminator features' if fallback ==
                  'discriminator' else 'no perceptual term', str(e).splitlines()[0])
      kind = fallback
  elif kind in term_params:
    params[kind] = term_params[kind]
  w = float(loss.perceptual_weight)
  if w and kind == 'vgg':
    terms['vgg'] = eng.ImageTerm(perceptual.image2stylegan_perceptual, w, 'vgg')
  elif w and kind == 'lpips':
    terms['lpips'] = eng.ImageTerm(perceptual.lpips_loss, w, 'lpips')
  elif w and kind == 'discriminator':
    if model.d_config is None:
      raise ValueError('config.loss.perceptual=discriminator needs a checkpoint with a '
                       'discriminator; this one has none (use vgg/lpips/none).')
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
  """`engine.estimate_w_stats`, cached per generator, sample count and class label."""
  key = (generator_id or generator_fingerprint(model), int(num_samples), label)
  if key not in _STATS_CACHE:
    _STATS_CACHE[key] = eng.estimate_w_stats(model.g_config, model.g_vars, int(num_samples),
                                             label=label)
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


# ----------------------------------------------------------------------------------------------
# Inputs.


def _check_images(images, model) -> np.ndarray:
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


def _check_mask(mask, b: int, res: int) -> Optional[np.ndarray]:
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
  """A mask image file -> [R, R, 1] in [0, 1] (white = pixel counts, black = ignored; area
  resampled, so border pixels get fractional weights)."""
  g = images_lib.load_image(os.fspath(path), resolution, channels=1)
  return (g + 1.0) / 2.0


def _image_keys(key, b: int, indices: Optional[Sequence[int]] = None) -> jax.Array:
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
  """

  def __init__(self, generator, config, *, latent_terms=None, term_params=None):
    self.model = generator
    self.config = as_config(config)
    cfg = self.config
    if cfg.init not in INITS:
      raise ValueError(f'config.init must be one of {INITS}, got {cfg.init!r}')
    if cfg.noise.init not in ('const', 'random'):
      raise ValueError(f"config.noise.init must be 'const' or 'random', got {cfg.noise.init!r}")
    self.generator_id = generator_fingerprint(generator)
    image_terms, self.term_params = build_image_terms(cfg, generator, term_params)
    self.spec = spec_from_config(cfg, generator.g_config, image_terms, latent_terms,
                                 generator.class_index(cfg.get('label', '')))
    self.engine = eng.make_engine(self.spec)
    self._stats = None
    self._lpips = None

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
        raise LatentsError(f'{r.path or r.name}: its z was inverted with class {label!r}, not '
                           f'{self.config.label!r}; set --config.label={label} or start from its '
                           'ws in W+ space.')

  def _given(self, init, b, shape):
    gc, space = self.model.g_config, self.spec.space
    noise = None
    if isinstance(init, (list, tuple)) and init and isinstance(init[0], LatentRecord):
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
    """MSE, PSNR (dB, range 2), SSIM on the loss channels; LPIPS where its weights exist;
    masked_mse / masked_psnr inside the mask when a mask is given."""
    k = self.spec.loss_channels
    x, y = jnp.asarray(recon[..., :k]), jnp.asarray(targets[..., :k])
    out = {'mse': np.asarray(metrics_lib.mse(x, y)), 'psnr': np.asarray(metrics_lib.psnr(x, y))}
    if min(x.shape[1:3]) >= metrics_lib.SSIM_WINDOW:
      out['ssim'] = np.asarray(metrics_lib.ssim(x, y))
    lp = self._lpips_params()
    if lp is not None:
      out['lpips'] = np.asarray(metrics_lib.lpips(lp, x, y, resize=256))
    if masks is not None:
      m = masks.astype(np.float32)
      se = np.square(recon[..., :k] - targets[..., :k]) * m
      mmse = se.sum(axis=(1, 2, 3)) / (k * m.sum(axis=(1, 2, 3)))
      out['masked_mse'] = mmse
      with np.errstate(divide='ignore'):
        out['masked_psnr'] = 10 * np.log10(4.0 / mmse)
    return out

  def _lpips_params(self):
    mode = self.config.metrics.lpips
    if mode == 'off' or self.spec.loss_channels not in (1, 3):
      return None
    if self._lpips is None:
      try:
        self._lpips = _load_weights('lpips', self.config.loss.lpips_weights)
      except weights_lib.WeightsNotFoundError:
        if mode == 'on':
          raise
        log.info('LPIPS metric skipped: LPIPS weights not found (config.metrics.lpips=auto).')
        self._lpips = False
    return self._lpips or None


# ----------------------------------------------------------------------------------------------
# invert


def invert(images, generator, config='image2stylegan', *, mask=None, init=None, key=None,
           out_dir=None, names: Optional[Sequence[str]] = None,
           latent_terms: Optional[Mapping[str, eng.LatentTerm]] = None,
           term_params: Optional[Mapping[str, Any]] = None, progress: bool = True,
           callback: Optional[Callable[[eng.ChunkInfo], None]] = None,
           devices: Optional[Sequence[Any]] = None) -> InversionResult:
  """Inverts one image or a batch into the generator's latent space (compiled, per image).

  Args:
    images: float32 NHWC in [-1, 1], [H, W, C] or [B, H, W, C], with the generator's resolution
      and channel count (`inversion.images.load_images` reads files like that).
    generator: a `generators.checkpoint.Model`.
    config: a preset name ('image2stylegan', 'image2stylegan:z|w|wplus|wplus_noise',
      'projector', optionally ':quick') or a ConfigDict (see configs/image2stylegan.py).
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
    devices: devices to shard the batch over (default all; see `engine.batch_mesh`).

  Returns:
    InversionResult: latents, ws, noise, reconstructions, per-step loss curves per term,
    per-image metrics (MSE, PSNR, SSIM; LPIPS where weights exist) and failure flags. An image
    whose loss becomes non-finite is stopped at its last finite latent and reported (warning
    and `failed`); the others continue.

  Example:
    >>> result = invert(x, model, 'image2stylegan:w', key=jax.random.PRNGKey(0))
    >>> result.metrics['psnr'], result.ws.shape
  """
  inv = Inverter(generator, config, latent_terms=latent_terms, term_params=term_params)
  targets = _check_images(images, generator)
  b = targets.shape[0]
  names = list(names) if names is not None else [f'image_{i:03d}' for i in range(b)]
  if len(names) != b:
    raise ValueError(f'{len(names)} names for {b} images')
  masks = _check_mask(mask, b, generator.resolution)
  keys = _image_keys(jax.random.PRNGKey(inv.config.seed) if key is None else key, b)
  state, data = inv.start(targets, masks, keys, init)
  state, data = eng.shard(state, data, eng.batch_mesh(b, devices))
  state, curves = eng.run(inv.engine, state, data, progress=progress, on_chunk=callback,
                          names=names, desc=f'invert {inv.config.method}:{inv.spec.space}')
  result = inv.result(state, curves, data, names)
  if out_dir is not None:
    save_result(result, out_dir, generator)
  return result


# ----------------------------------------------------------------------------------------------
# Latent files.


@dataclasses.dataclass
class LatentRecord:
  """One image's latents as read from a latents .npz file (see LATENTS_LAYOUT)."""
  name: str
  space: str
  latent: np.ndarray
  ws: np.ndarray                   # [num_ws, w_dim]
  noise: dict[str, np.ndarray]
  losses: dict[str, np.ndarray]
  generator_id: str
  generator_json: str
  config_json: str
  metrics: dict[str, float]
  status: str
  path: str = ''

  def check(self, generator_id: str, what: str = '') -> None:
    """Raises LatentsError unless these latents were made with `generator_id`."""
    if self.generator_id != generator_id:
      src = ''
      try:
        src = json.loads(self.generator_json).get('source', '')
      except ValueError:
        pass
      raise LatentsError(
          f'{what or self.path or self.name}: these latents were inverted with generator '
          f'{self.generator_id}{f" ({src})" if src else ""}, but the checkpoint given is '
          f'{generator_id}. Latents only mean something for the generator they were made '
          'with: pass that checkpoint (--checkpoint), or invert the image again with this one.')


def save_latents(path: str | os.PathLike, result: InversionResult, i: int, generator) -> str:
  """Writes image i of a result as one latents file (LATENTS_LAYOUT); returns the path."""
  path = os.fspath(path)
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  arrays = {
      'format': np.asarray(LATENTS_FORMAT), 'version': np.asarray(LATENTS_VERSION),
      'name': np.asarray(result.names[i]), 'space': np.asarray(result.space),
      'latent': result.latents[i].astype(np.float32), 'ws': result.ws[i].astype(np.float32),
      'generator_id': np.asarray(result.generator_id or generator_fingerprint(generator)),
      'generator_json': np.asarray(_generator_json(generator)),
      'config_json': np.asarray(result.config_json),
      'metrics_json': np.asarray(json.dumps({k: float(v[i]) for k, v in result.metrics.items()})),
      'status': np.asarray(result.status(i)),
  }
  arrays.update({f'noise/{k}': v[i].astype(np.float32) for k, v in result.noise.items()})
  arrays.update({f'loss/{k}': v[i].astype(np.float32) for k, v in result.losses.items()})
  tmp = path + '.tmp.npz'
  np.savez(tmp, **arrays)
  os.replace(tmp, path)
  return path


def load_latents(path: str | os.PathLike, generator=None) -> LatentRecord:
  """Reads a latents file; with `generator`, checks it was made with that generator.

  Raises:
    LatentsError: not a latents file (missing, corrupt, other format), or a generator mismatch
      (the message names both generators and the fix).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise LatentsError(f'latents file {path} does not exist (inversion writes them to '
                       '<out>/latents/<name>.npz)')
  try:
    with np.load(path, allow_pickle=False) as z:
      d = {k: z[k] for k in z.files}
  except Exception as e:  # zipfile / pickle / OS errors of a corrupt file
    raise LatentsError(f'{path} is not a readable .npz latents file ({type(e).__name__}: {e}); '
                       'rerun the inversion that wrote it') from None
  if str(d.get('format', '')) != LATENTS_FORMAT:
    raise LatentsError(f'{path} is not a {LATENTS_FORMAT} file (no "format" entry); it must be '
                       'a latents file written by `python -m inversion invert`')
  if int(d['version']) > LATENTS_VERSION:
    raise LatentsError(f'{path} has latents format version {int(d["version"])}; this toolkit '
                       f'reads up to {LATENTS_VERSION}. Upgrade stylegan-inversion-jax.')
  rec = LatentRecord(
      name=str(d['name']), space=str(d['space']), latent=d['latent'], ws=d['ws'],
      noise={k[6:]: v for k, v in d.items() if k.startswith('noise/')},
      losses={k[5:]: v for k, v in d.items() if k.startswith('loss/')},
      generator_id=str(d['generator_id']), generator_json=str(d['generator_json']),
      config_json=str(d['config_json']), metrics=json.loads(str(d['metrics_json'])),
      status=str(d['status']), path=path)
  if generator is not None:
    rec.check(generator_fingerprint(generator) if not isinstance(generator, str) else generator,
              path)
    gc = getattr(generator, 'g_config', None)
    if gc is not None and rec.ws.shape != (gc.num_ws, gc.w_dim):
      raise LatentsError(f'{path}: ws {rec.ws.shape} do not fit this generator '
                         f'[{gc.num_ws}, {gc.w_dim}]')
  return rec


# ----------------------------------------------------------------------------------------------
# Saving outputs.


def _grid_mask_mode(loss_channels: int, channels: int) -> str:
  """RGB + mask images: overlay the mask only when the loss saw it (else it is unconstrained)."""
  return 'drop' if 0 < loss_channels < channels else 'overlay'


def _grid_rows(targets, recons, mask: str = 'overlay') -> np.ndarray:
  pairs = []
  for t, r in zip(targets, recons):
    pairs += [np.nan_to_num(t, nan=0.0), np.nan_to_num(r, nan=0.0)]
  return images_lib.image_grid(pairs, rows=len(targets), mask=mask)


def _write_metrics(out_dir: pathlib.Path, rows: list[dict], extra: Mapping[str, Any]) -> None:
  keys = ['name'] + sorted({k for r in rows for k in r} - {'name', 'status'}) + ['status']
  with open(out_dir / 'metrics.csv', 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=keys)
    w.writeheader()
    for r in rows:
      w.writerow({k: (f'{r[k]:.6g}' if isinstance(r.get(k), float) else r.get(k, ''))
                  for k in keys})
  numeric = [k for k in keys if k not in ('name', 'status')]
  ok = [r for r in rows if r.get('status', 'ok') == 'ok']
  means = {k: float(np.nanmean([r[k] for r in ok if k in r])) if ok else float('nan')
           for k in numeric}
  doc = {'images': rows, 'mean_over_ok_images': means, **extra}
  (out_dir / 'metrics.json').write_text(json.dumps(doc, indent=2, default=float))


def plot_losses(path: str | os.PathLike, curves: Mapping[str, np.ndarray],
                labels: Optional[Sequence[str]] = None, title: str = '') -> str:
  """Loss curves {term: [N, steps]} -> PNG, one panel per term (log y); returns the path."""
  import matplotlib  # pylint: disable=import-outside-toplevel  (slow import, only when plotting)
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  terms = list(curves)
  fig, axes = plt.subplots(1, len(terms), figsize=(4 * len(terms), 3.2), squeeze=False)
  for ax, term in zip(axes[0], terms):
    c = np.atleast_2d(np.asarray(curves[term], np.float64))
    for i, row in enumerate(c):
      label = labels[i] if labels is not None and len(c) <= 10 else None
      ax.plot(np.arange(1, len(row) + 1), row, lw=1, label=label)
    ax.set_title(term)
    ax.set_xlabel('step')
    pos = c[np.isfinite(c) & (c > 0)]
    if pos.size and np.all(c[np.isfinite(c)] > 0):
      ax.set_yscale('log')
    if labels is not None and len(c) <= 10 and term == terms[0]:
      ax.legend(fontsize=7)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  path = os.fspath(path)
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def save_result(result: InversionResult, out_dir: str | os.PathLike, generator) -> pathlib.Path:
  """Writes every output of an `invert` result to out_dir (layout: module docstring)."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  for i, name in enumerate(result.names):
    images_lib.save_image(str(out / 'reconstructions' / f'{name}.png'),
                          np.nan_to_num(result.reconstructions[i]))
    save_latents(out / 'latents' / f'{name}.npz', result, i, generator)
  mask_mode = _grid_mask_mode(result.loss_channels, result.targets.shape[-1])
  images_lib.save_image(str(out / 'grid.png'),
                        _grid_rows(result.targets[:MAX_GRID_ROWS],
                                   result.reconstructions[:MAX_GRID_ROWS], mask_mode))
  _write_metrics(out, result.metric_rows(),
                 {'generator_id': result.generator_id, 'space': result.space,
                  'steps': result.steps, 'config': json.loads(result.config_json or '{}')})
  plot_losses(out / 'losses.png', result.losses, result.names,
              f'{result.space}, {result.steps} steps')
  return out


# ----------------------------------------------------------------------------------------------
# Folder jobs.


@dataclasses.dataclass
class FolderResult:
  """What `invert_folder` did."""
  out_dir: pathlib.Path
  names: list[str]                 # every image of the job, in order
  inverted: list[str]              # inverted in this call
  skipped: list[str]               # already done before this call (latents file present)
  failed: dict[str, str]           # name -> status, for images stopped by a non-finite loss
  rows: list[dict]                 # metrics rows of every finished image


def _flatten(tree) -> dict[str, np.ndarray]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(p): np.asarray(jax.device_get(v)) for p, v in leaves}


def _unflatten(template, arrays: Mapping[str, np.ndarray], what: str):
  leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
  out = []
  for p, v in leaves:
    k = jax.tree_util.keystr(p)
    if k not in arrays or arrays[k].shape != np.shape(v):
      raise ValueError(f'{what}: entry {k} missing or of the wrong shape')
    out.append(jnp.asarray(arrays[k], dtype=np.asarray(v).dtype))
  return jax.tree_util.tree_unflatten(treedef, out)


def _save_checkpoint(path: pathlib.Path, info: eng.ChunkInfo, meta: dict) -> None:
  arrays = {f'state{k}': v for k, v in _flatten(info.state).items()}
  arrays.update({f'curve/{k}': v for k, v in info.curves.items()})
  arrays['meta_json'] = np.asarray(json.dumps({**meta, 'next_chunk': info.chunk + 1}))
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + '.tmp.npz')
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def _load_checkpoint(path: pathlib.Path):
  try:
    with np.load(path, allow_pickle=False) as z:
      d = {k: z[k] for k in z.files}
    meta = json.loads(str(d.pop('meta_json')))
  except Exception as e:  # a checkpoint cut short by a kill during writing, etc.
    log.warning('ignoring unreadable checkpoint %s (%s: %s); the batch restarts', path,
                type(e).__name__, e)
    return None
  if 'names' not in meta:
    log.warning('ignoring %s: written by an older version (no image names); the batch restarts',
                path)
    return None
  state = {k[5:]: v for k, v in d.items() if k.startswith('state')}
  curves = {k[6:]: v for k, v in d.items() if k.startswith('curve/')}
  return meta, state, curves


def invert_folder(dir_or_files, generator, config, out_dir, batch_size: int = 8, *,
                  mask=None, key=None, checkpoint_every: Optional[int] = None,
                  progress: bool = True,
                  callback: Optional[Callable[[eng.ChunkInfo], None]] = None,
                  latent_terms=None, term_params=None, devices=None,
                  align: Optional[Callable[[np.ndarray, str], np.ndarray]] = None,
                  init: Optional[str | os.PathLike] = None) -> FolderResult:
  """Inverts every image of a folder (or a list of files) in batches; resumable.

  - Images whose latents file exists in out_dir/latents are skipped (it must belong to this
    generator, else a LatentsError says so).
  - The running batch's state (latents, optimiser state, keys, loss curves) is written to
    out_dir/_work/state.npz every `checkpoint_every` chunks (default config.checkpoint_every),
    and after its last chunk, so a killed job loses at most that many chunks (none while the
    batch's outputs are being written); rerunning the same command resumes it and gives the
    result an uninterrupted run gives.
  - An image whose loss becomes non-finite stops at its last finite latent; it is saved with its
    status, reported in the result and metrics, and the others continue.
  - The last batch is padded (repeating its last image) so every batch compiles the same
    program.

  Args:
    dir_or_files: folder (non-image files are skipped with a log line), file, or list of files.
    generator, config: as `invert`.
    out_dir: output folder (see the module docstring).
    batch_size: images per compiled batch.
    mask: optional mask for every image: a file (white = pixel counts) or an array as `invert`.
    key: PRNG key; image k of the job uses fold_in(key, k). None = PRNGKey(config.seed).
    callback: after every chunk (after the checkpoint), with an `engine.ChunkInfo`.
    align: optional image pre-processing, as `inversion.images.load_image` (e.g. an
      `inversion.align.FaceAligner` for FFHQ models).
    init: a folder of latents files named `<image name>.npz` (another job's `latents/`, an
      encoder's output) to start from instead of `config.init`; each must belong to this
      generator. A latents file of another space starts from its ws where that fits.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  out = pathlib.Path(out_dir)
  inv = Inverter(generator, config, latent_terms=latent_terms, term_params=term_params)
  every = int(checkpoint_every or inv.config.checkpoint_every)
  res, ch = generator.resolution, generator.channels
  paths = images_lib.list_images(dir_or_files)
  names = images_lib._unique_names(paths)  # pylint: disable=protected-access
  if isinstance(mask, (str, os.PathLike)):
    mask = load_mask(mask, res)
  base_key = jax.random.PRNGKey(inv.config.seed) if key is None else key
  lat_dir, work = out / 'latents', out / '_work' / 'state.npz'
  skipped = []
  for n in names:
    f = lat_dir / f'{n}.npz'
    if f.exists():
      load_latents(f, inv.generator_id)
      skipped.append(n)
  done = set(skipped)
  todo = [i for i, n in enumerate(names) if n not in done]
  if init is not None and not pathlib.Path(init).is_dir():
    raise FileNotFoundError(f'--init {init}: not a folder. It takes a folder of latents files '
                            "named like the images (e.g. another job's <out>/latents).")
  meta_base = {'generator_id': inv.generator_id, 'config': inv.config.to_json(),
               'batch_size': batch_size,
               'init': None if init is None else str(pathlib.Path(init).resolve())}
  resume = _load_checkpoint(work) if work.exists() else None
  batches = [todo[s:s + batch_size] for s in range(0, len(todo), batch_size)]
  if resume is not None:
    meta = resume[0]
    if any(meta.get(k) != v for k, v in meta_base.items()):
      raise ValueError(f'{work} is the checkpoint of a job with another generator, config, '
                       f'batch size or --init. Rerun with the same settings to resume it, or '
                       f'delete {work} to start this batch afresh.')
    # The batch's images by name (the folder may have changed); some may be saved already if
    # the job was killed while writing the batch's outputs.
    saved_names = meta['names']
    if not set(saved_names) <= set(names):
      log.warning('ignoring %s: its images are no longer all in this job', work)
      resume = None
    else:
      first = [names.index(n) for n in saved_names]
      rest = [i for i in todo if i not in first]
      batches = [first] + [rest[s:s + batch_size] for s in range(0, len(rest), batch_size)]
  inverted, failed = [], {}
  for bi, idx in enumerate(batches):
    padded = idx + [idx[-1]] * (batch_size - len(idx))
    targets = []
    for i in padded:
      try:
        targets.append(images_lib.load_image(paths[i], res, ch, align=align))
      except images_lib.ImageError as e:
        raise images_lib.ImageError(
            f'{e}\nFix or remove {paths[i]} and rerun the same command: finished images are '
            'kept and skipped.') from None
    targets = np.stack(targets)
    masks = _check_mask(mask, batch_size, res)
    keys = _image_keys(base_key, batch_size, padded)
    resumed = bi == 0 and resume is not None  # its start latents come from the checkpoint
    state, data = inv.start(targets, masks, keys, init=None if init is None or resumed else
                            _init_records(init, names, padded))
    start_chunk, curves = 0, None
    if resumed:
      meta, arrays, curves = resume
      state = _unflatten(state, arrays, str(work))
      start_chunk = meta['next_chunk']
      log.info('resuming %d images from %s at chunk %d', len(idx), work, start_chunk)
    state, data = eng.shard(state, data, eng.batch_mesh(batch_size, devices))
    meta = {**meta_base, 'names': [names[i] for i in idx]}

    def on_chunk(info, meta=meta):  # the last chunk too: a kill while saving loses nothing
      if (info.chunk + 1) % every == 0 or info.chunk + 1 == info.num_chunks:
        _save_checkpoint(work, info, meta)
      if callback is not None:
        callback(info)

    state, curves = eng.run(inv.engine, state, data, start_chunk=start_chunk, curves=curves,
                            progress=progress, on_chunk=on_chunk,
                            names=[names[i] for i in padded],
                            desc=f'batch {bi + 1}/{len(batches)}')
    result = inv.result(state, curves, data, [names[i] for i in padded])
    n = len(idx)
    result = _take(result, n)
    for i, name in enumerate(result.names):
      if name in done:  # saved before a kill interrupted this batch's saving
        continue
      images_lib.save_image(str(out / 'reconstructions' / f'{name}.png'),
                            np.nan_to_num(result.reconstructions[i]))
      save_latents(lat_dir / f'{name}.npz', result, i, generator)
      if result.failed[i]:
        failed[name] = result.status(i)
    inverted += [name for name in result.names if name not in done]
    if work.exists():
      work.unlink()
  rows = _summarise(out, paths, names, inv, generator, align)
  for name, status in failed.items():
    log.warning('%s: %s', name, status)
  return FolderResult(out, names, inverted, skipped, failed, rows)


def _init_records(init_dir, names: Sequence[str], indices: Sequence[int]) -> list[LatentRecord]:
  """The start latents of a folder job's batch: `init_dir/<name>.npz` for each image."""
  records = []
  for i in indices:
    f = pathlib.Path(init_dir) / f'{names[i]}.npz'
    if not f.is_file():
      raise FileNotFoundError(f'{f} does not exist: --init needs a latents file for every image '
                              f'(named like the image, {names[i]}.npz). Invert {names[i]} first, '
                              'or leave --init out to start it from config.init.')
    records.append(load_latents(f))
  return records


def _take(result: InversionResult, n: int) -> InversionResult:
  """The first n images of a result (drops the padding)."""
  cut = lambda v: v[:n]
  return dataclasses.replace(
      result, names=result.names[:n], latents=cut(result.latents), ws=cut(result.ws),
      noise={k: cut(v) for k, v in result.noise.items()},
      reconstructions=cut(result.reconstructions), targets=cut(result.targets),
      losses={k: cut(v) for k, v in result.losses.items()},
      metrics={k: cut(v) for k, v in result.metrics.items()}, failed=cut(result.failed),
      failed_step=cut(result.failed_step))


def _summarise(out: pathlib.Path, paths, names, inv: Inverter, generator, align=None
               ) -> list[dict]:
  """metrics.csv/json, grid.png and losses.png over every finished image of a folder job."""
  rows, curves, grid_t, grid_r, labels = [], {}, [], [], []
  res, ch = generator.resolution, generator.channels
  for p, n in zip(paths, names):
    f = out / 'latents' / f'{n}.npz'
    if not f.exists():
      continue
    rec = load_latents(f)
    rows.append({'name': n, **rec.metrics, 'status': rec.status})
    for k, v in rec.losses.items():
      curves.setdefault(k, []).append(v)
    labels.append(n)
    if len(grid_t) < MAX_GRID_ROWS:
      grid_t.append(images_lib.load_image(p, res, ch, align=align))
      r = images_lib.load_image(str(out / 'reconstructions' / f'{n}.png'), res, 3)
      if ch == 4:
        m = out / 'reconstructions' / f'{n}_mask.png'
        r = np.concatenate([r, load_mask(m, res) * 2 - 1 if m.exists() else
                            -np.ones_like(r[..., :1])], -1)
      elif ch == 1:
        r = r[..., :1]
      grid_r.append(r)
  if not rows:
    return rows
  _write_metrics(out, rows, {'generator_id': inv.generator_id, 'space': inv.spec.space,
                             'steps': inv.spec.num_steps, 'config': inv.config.to_dict()})
  images_lib.save_image(str(out / 'grid.png'), _grid_rows(
      np.stack(grid_t), np.stack(grid_r), _grid_mask_mode(inv.spec.loss_channels, ch)))
  lengths = {len(c) for v in curves.values() for c in v}
  if len(lengths) == 1:
    plot_losses(out / 'losses.png', {k: np.stack(v) for k, v in curves.items()}, labels,
                f'{inv.spec.space}, {inv.spec.num_steps} steps')
  else:
    log.info('%s: not drawn, the finished images ran different numbers of steps %s (earlier '
             'runs with other settings); their curves are in the latents files',
             out / 'losses.png', sorted(lengths))
  return rows


# ----------------------------------------------------------------------------------------------
# Demo.

# The demo's held-out crops: package data, so `pip install .` ships them (examples/ links here).
EXAMPLES_DIR = pathlib.Path(__file__).resolve().parent / 'examples'
DEMO_SPACES = ('z', 'w', 'wplus')
DEMO_STEPS = 600   # Image2StyleGAN uses 5000; 600 keeps Z + W + W+ of 6 images under 5 min
                   # on 2 CPU cores (about 65 ms per step for the batch of 6 at 64 px)
EXAMPLES_CLASS = 'clean'  # the committed examples are defect-free held-out crops
SPACE_LABELS = {'z': 'Z', 'w': 'W', 'wplus': 'W+'}


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
  """Rows of dicts -> a fixed-width text table (floats with 4 significant digits)."""
  cells = [[f'{r[c]:.4g}' if isinstance(r.get(c), float) else str(r.get(c, '')) for c in columns]
           for r in rows]
  widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
  line = lambda vals: '  '.join(v.ljust(w) for v, w in zip(vals, widths))
  return '\n'.join([line(columns), line(['-' * w for w in widths])] + [line(r) for r in cells])


def demo(out_dir: str | os.PathLike = 'out/demo', generator=None, *, steps: int = DEMO_STEPS,
         examples: str | os.PathLike | Sequence[str] = EXAMPLES_DIR,
         spaces: Sequence[str] = DEMO_SPACES, overrides: Sequence[str] = (),
         progress: bool = True) -> dict:
  """Inverts the held-out example crops with Z, W and W+ (Image2StyleGAN presets, `steps`
  steps) and writes out_dir/: grid.png (target | Z | W | W+ per row), metrics.csv/json (MSE,
  PSNR, SSIM; LPIPS only where its weights exist), losses.png, and per method <space>/ (latents,
  reconstructions, per-method metrics).

  generator: a Model; None = the embedded default model (FileNotFoundError if it is missing).
    A conditional one with a 'clean' class inverts them as that class unless overrides set
    `--config.label`.
  Returns {'table': text table, 'rows': metric rows, 'results': {space: InversionResult}}.
  """
  if generator is None:
    from generators import checkpoint  # pylint: disable=import-outside-toplevel
    generator = checkpoint.load(None)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  targets, names = images_lib.load_images(examples, generator.resolution, generator.channels)
  results, rows = {}, []
  for space in spaces:
    cfg = as_config(f'image2stylegan:{space}', [f'--config.steps={int(steps)}', *overrides])
    if not cfg.label and EXAMPLES_CLASS in generator.class_names:
      if space == spaces[0]:
        log.info('Conditional generator: inverting the examples as class %r (set '
                 '--config.label for another).', EXAMPLES_CLASS)
      cfg.label = EXAMPLES_CLASS
    res = invert(targets, generator, cfg, names=names, out_dir=out / space, progress=progress)
    results[space] = res
    for r in res.metric_rows():
      rows.append({'method': SPACE_LABELS.get(space, space), **r})
  # 1. grid: target | Z | W | W+
  cells = []
  for i in range(len(names)):
    cells.append(targets[i])
    cells += [np.nan_to_num(results[s].reconstructions[i]) for s in spaces]
  mask_mode = _grid_mask_mode(results[spaces[0]].loss_channels, generator.channels)
  images_lib.save_image(str(out / 'grid.png'),
                        images_lib.image_grid(cells, rows=len(names), mask=mask_mode))
  # 2. metrics: per image and method, then means per method
  metric_cols = [c for c in ('mse', 'psnr', 'ssim', 'lpips') if any(c in r for r in rows)]
  means = []
  for space in spaces:
    label = SPACE_LABELS.get(space, space)
    mine = [r for r in rows if r['method'] == label]
    means.append({'method': label, 'name': 'mean',
                  **{c: float(np.nanmean([r[c] for r in mine])) for c in metric_cols}})
  columns = ['method', 'name'] + metric_cols + ['status']
  with open(out / 'metrics.csv', 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=columns, extrasaction='ignore')
    w.writeheader()
    for r in rows + means:
      w.writerow({k: (f'{r[k]:.6g}' if isinstance(r.get(k), float) else r.get(k, ''))
                  for k in columns})
  (out / 'metrics.json').write_text(json.dumps(
      {'images': rows, 'means': means, 'steps': int(steps), 'names': names,
       'generator_id': results[spaces[0]].generator_id,
       'note': 'MSE/PSNR (data range 2)/SSIM on RGB; LPIPS only where its weights exist'},
      indent=2, default=float))
  # 3. loss curves: total loss per method
  plot_losses(out / 'losses.png',
              {SPACE_LABELS.get(s, s): results[s].losses['total'] for s in spaces}, names,
              f'total loss, {int(steps)} steps')
  table = format_table(rows + means, ['method', 'name'] + metric_cols)
  return {'table': table, 'rows': rows + means, 'results': results, 'out_dir': out}
