"""Training the domain-guided encoder (idinvert) against a frozen generator, resumable.

Objective 'real' (the paper's; genforce/idinvert `loss_encoder.py`), on real images x only, G
frozen, D trained beside E from the model's own D:

  L_E = ||x - G(E(x))||^2 + lambda_feat ||F(x) - F(G(E(x)))||^2
        + lambda_adv softplus(-D(G(E(x))))
  L_D = softplus(D(G(E(x)))) + softplus(-D(x)) + gamma / 2 ||grad_x D(x)||^2

F is the term inversion resolves (`api.build_image_terms`): VGG16 conv4_3 with the user's
weights, else the frozen model D's features (said once in the log). The pixel term sees
`loss.channels` ('all': the mask channel of an RGB + mask G too); F sees RGB, or every channel
where it is D. G renders with its stored noise maps, as the paper's `randomize_noise=False`.
D's step scores the fakes of the E step just before it (E one update older than the paper's
recomputation, one G pass cheaper). Lazy R1 (`r1_interval` > 1) scales the penalty by the
interval, as NVlabs does. A conditional D needs the reals' classes, which image folders do not
have: train with `adv_weight=0` there (D then is not trained), or on fakes.

Objective 'fakes' (the usual baseline): L_E = ||E(G(w)) - w||^2 for w = mapping(z), z ~ N(0, I);
no D. The codes stay where G's samples are; real images fall outside them.

Both: Adam (0.9, 0.99), lr * 0.8 ** (step / (steps / 4)) (the paper's continuous decay).
Resuming is exact: the state (E, D, both optimisers, step) is an orbax checkpoint, every step's
data and randomness are functions of (seed, step), and the generator is checked against the one
the run began with (`generator.json`). The loop is `generators.trainer`'s, as G's training.

    python -m inversion train-encoder --config idinvert --checkpoint G --data DIR --workdir runs/e
    python -m inversion export-encoder --workdir runs/e --out encoders/mine
"""

from __future__ import annotations

import functools
import json
import logging
import pathlib
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from generators import checkpoint, data as data_lib, defects, networks, trainer
from inversion import engine as eng
from inversion.encoders import domain

log = logging.getLogger(__name__)

OBJECTIVES = ('real', 'fakes')
EMBEDDED_DATA = 'embedded'     # --data: the embedded model's own photo crops (training region)
GENERATOR_FILE = 'generator.json'  # in a workdir: the fingerprint of the generator trained for
SAMPLE_IMAGES = 8              # columns of the periodic input | E(x) grid
ADAM_EPS = 1e-8
RESUME_MAY_CHANGE = ('log_every', 'sample_every', 'checkpoint_every', 'keep_checkpoints',
                     'keep_checkpoint_every')
RUN_LAYOUT = ('an encoder training workdir is the --workdir of `python -m inversion '
              'train-encoder`: it holds config.json, generator.json, checkpoints/, metrics.jsonl '
              'and samples/')


class EncoderTrainState(NamedTuple):
  step: jax.Array  # [] int32, completed steps
  e_params: Any
  e_opt: Any
  d_params: Any    # {} with objective 'fakes' or adv_weight 0
  d_opt: Any


def encoder_config(config: ml_collections.ConfigDict, g_config) -> domain.EncoderConfig:
  e = config.encoder
  return domain.EncoderConfig.for_generator(g_config, channel_base=e.channel_base,
                                            channel_max=e.channel_max, norm_groups=e.norm_groups)


def encoder_variables(e_params, g_vars) -> dict:
  """E's variables: its params and the generator's `w_avg` (the start of its head)."""
  return {'params': e_params, 'buffers': {'w_avg': g_vars['buffers']['mapping']['w_avg']}}


def trains_d(config) -> bool:
  return config.objective == 'real' and config.adv_weight > 0


def lr_at(config, step: int, total_steps: int) -> float:
  """The paper's continuous exponential decay: lr * rate ** (step / (fraction * steps))."""
  decay_steps = max(1.0, config.lr_decay_fraction * total_steps)
  return config.lr * config.lr_decay_rate ** (step / decay_steps)


def _adam(config):
  return optax.scale_by_adam(*config.betas, eps=ADAM_EPS)  # the lr is applied per step


def init_state(config, model, key=None) -> EncoderTrainState:
  key = jax.random.PRNGKey(config.seed) if key is None else key
  enc = encoder_config(config, model.g_config)
  w_avg = model.g_vars['buffers']['mapping']['w_avg']
  e_params = domain.init_encoder(enc, w_avg, key)['params']
  d_params = jax.tree_util.tree_map(jnp.array, model.d_vars['params']) if trains_d(config) else {}
  opt = _adam(config)
  return EncoderTrainState(jnp.zeros((), jnp.int32), e_params, opt.init(e_params), d_params,
                           opt.init(d_params))


def _check_model(config, model) -> None:
  if config.objective not in OBJECTIVES:
    raise ValueError(f'config.objective must be one of {OBJECTIVES}, got {config.objective!r}')
  if trains_d(config):
    if model.d_config is None:
      raise ValueError('the idinvert objective trains D beside E, starting from the model\'s D, '
                       'which this checkpoint does not hold: pass a file with D (an NVlabs '
                       "pickle, a rosinality .pt with 'd'), or train without the adversarial "
                       'term (--config.adv_weight=0) or on fakes (idinvert:train_fakes).')
    if model.d_config.c_dim:
      raise ValueError('this D is conditional, and real images come without classes: train with '
                       '--config.adv_weight=0 (no D), or on fakes (idinvert:train_fakes).')


def _feature_terms(config, model):
  """(F's image terms, their params): the perceptual term alone (the pixel term is apart)."""
  from inversion import api  # pylint: disable=import-outside-toplevel
  only_f = ml_collections.ConfigDict(config.to_dict())
  only_f.loss.mse = 0.0
  terms, params = api.build_image_terms(only_f, model)
  return tuple(terms.items()), params


def r1_penalty(d_fn, x):
  """(D's logits [B, 1], R1 = mean over the batch of ||grad_x sum(D(x))||^2, that gradient)."""
  logits, vjp = jax.vjp(d_fn, x)
  (grad,) = vjp(jnp.ones_like(logits))
  return logits, jnp.mean(jnp.sum(jnp.square(grad), axis=(1, 2, 3))), grad


def discriminator_loss(d_fn, x, fake, r1_gamma, r1_interval: int, with_r1: bool):
  """(D's loss, metrics): softplus(D(fake)) + softplus(-D(x)), + gamma / 2 R1 on the reals
  scaled by the lazy interval when `with_r1` (NVlabs' lazy regularisation)."""
  fake_logits = d_fn(fake)
  if with_r1:
    real_logits, r1, _ = r1_penalty(d_fn, x)
  else:
    real_logits, r1 = d_fn(x), jnp.zeros(())
  main = jnp.mean(jax.nn.softplus(fake_logits)) + jnp.mean(jax.nn.softplus(-real_logits))
  total = main + (r1_gamma / 2) * r1 * r1_interval
  return total, {'d_loss': main, 'r1': r1, 'real_score': jnp.mean(real_logits),
                 'fake_score': jnp.mean(fake_logits)}


@functools.lru_cache(maxsize=4)
def _cached_steps(config_json: str, g_config, d_config, feature_terms, batch_sharding):
  """make_steps, memoised so that resuming in the same process does not recompile."""
  return make_steps(ml_collections.ConfigDict(json.loads(config_json)), g_config, d_config,
                    feature_terms, batch_sharding)


def make_steps(config, g_config, d_config, feature_terms, batch_sharding):
  """Compiled (E step, D step without R1, D step with R1) for this config and generator."""
  enc = domain.DomainEncoder(encoder_config(config, g_config))
  disc = None if d_config is None else networks.Discriminator(d_config)
  opt = _adam(config)
  channels = g_config.img_channels
  pixel_channels = channels if config.loss.channels == 'all' else min(3, channels)
  feature_channels = min(3, channels)
  shard = lambda x: jax.lax.with_sharding_constraint(x, batch_sharding)

  def apply_update(params, opt_state, grads, lr):
    updates, opt_state = opt.update(grads, opt_state, params)
    return jax.tree_util.tree_map(lambda p, u: p - lr * u, params, updates), opt_state

  def e_loss_real(e_params, g_vars, term_params, d_params, x):
    ws = enc.apply(encoder_variables(e_params, g_vars), x)
    rec = networks.synthesis(g_config, g_vars, ws, 'const')
    mse = jnp.mean(jnp.square(rec[..., :pixel_channels] - x[..., :pixel_channels]))
    feat, parts = eng.image_terms_loss(feature_terms, term_params, rec, x, None,
                                       feature_channels)
    loss = mse + jnp.mean(feat)
    metrics = {'mse': mse, **{f'f_{k}': jnp.mean(v) for k, v in parts.items()}}
    if trains_d(config):
      adv = jnp.mean(jax.nn.softplus(-disc.apply({'params': d_params}, rec)))
      loss = loss + config.adv_weight * adv
      metrics['e_adv'] = adv
    return loss, ({'e_loss': loss, **metrics}, rec)

  def e_loss_fakes(e_params, g_vars, key, batch):
    z_key, c_key = jax.random.split(key)
    z = shard(jax.random.normal(z_key, (batch, g_config.z_dim)))
    c = None
    if g_config.c_dim:
      c = jax.nn.one_hot(jax.random.randint(c_key, (batch,), 0, g_config.c_dim), g_config.c_dim)
    ws = networks.mapping(g_config, g_vars, z, c, psi=config.fakes_truncation)
    x = jax.lax.stop_gradient(networks.synthesis(g_config, g_vars, ws, 'const'))
    pred = enc.apply(encoder_variables(e_params, g_vars), x)
    loss = jnp.mean(jnp.square(pred - ws))
    return loss, ({'e_loss': loss}, x)

  def e_step(state, x, key, g_vars, term_params, lr):
    """One E step on reals `x` (objective 'fakes': None, it draws its own images)."""
    if config.objective == 'real':
      grad_fn = jax.grad(e_loss_real, has_aux=True)
      grads, (metrics, rec) = grad_fn(state.e_params, g_vars, term_params, state.d_params, x)
    else:
      grads, (metrics, rec) = jax.grad(e_loss_fakes, has_aux=True)(
          state.e_params, g_vars, key, config.batch_size)
    e_params, e_opt = apply_update(state.e_params, state.e_opt, grads, lr)
    state = state._replace(e_params=e_params, e_opt=e_opt, step=state.step + 1)
    return state, metrics, jax.lax.stop_gradient(rec)

  def d_step(state, x, fake, lr, r1_gamma, *, with_r1):
    def loss_fn(d_params):
      return discriminator_loss(lambda img: disc.apply({'params': d_params}, img), x, fake,
                                r1_gamma, config.r1_interval, with_r1)

    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.d_params)
    d_params, d_opt = apply_update(state.d_params, state.d_opt, grads, lr)
    return state._replace(d_params=d_params, d_opt=d_opt), metrics

  return (jax.jit(e_step, donate_argnums=0),
          jax.jit(functools.partial(d_step, with_r1=False), donate_argnums=0),
          jax.jit(functools.partial(d_step, with_r1=True), donate_argnums=0))


class TrainingImages:
  """Where the reals come from: the embedded model's photo crops (training region, freshly
  painted defects as G saw them) or an image folder.

  `batch(rng)` draws a step's global batch from rng (the same on every process) and returns it
  as a function of row indices: a folder's images are decoded only for the rows asked for, so
  each process decodes only its own share (`generators.trainer.place_rows`). The embedded crops
  are painted for the whole batch (cheap at 64 px)."""

  def __init__(self, source: str, config, model):
    from inversion import images as images_lib  # pylint: disable=import-outside-toplevel
    self.config, self.model = config, model
    res, channels = model.resolution, model.channels
    self.shape = (config.batch_size, res, res, channels)
    self.embedded = source == EMBEDDED_DATA
    if self.embedded:
      if channels != 4:
        raise ValueError(f"--data {EMBEDDED_DATA} holds RGB + defect-mask crops, for a 4-channel "
                         f'generator; this one has {channels}: pass --data a folder of images.')
      held = heldout_images(res)
      self.samples = held[np.linspace(0, len(held) - 1, SAMPLE_IMAGES).astype(int)]
    else:
      self.paths = images_lib.list_images(source)
      bad = images_lib.check_images(self.paths)  # every file decodes, before the first step
      if bad:
        raise images_lib.ImageError(f'{len(bad)} training image(s) cannot be read:\n' +
                                    '\n'.join(f'  {why}' for why in bad.values()) +
                                    '\nFix or remove them and rerun.')
      log.info('Training on %d images from %s.', len(self.paths), source)
      self.samples = self._load(self.paths[:SAMPLE_IMAGES])

  def _load(self, paths: list[str]) -> np.ndarray:
    from inversion import images as images_lib  # pylint: disable=import-outside-toplevel
    return images_lib.load_images(paths, self.model.resolution, self.model.channels)[0]

  def batch(self, rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray]:
    """The step's batch as rows(indices) -> float32 [len(indices), H, W, C] in [-1, 1]."""
    b = self.config.batch_size
    if self.embedded:
      crops = data_lib.to_model_range(defects.defect_dataset(
          b, size=self.model.resolution, seed=rng,
          defect_fraction=self.config.data.defect_fraction).images)
      make = lambda rows: crops[rows]
    else:
      index = rng.integers(0, len(self.paths), b)
      make = lambda rows: self._load([self.paths[i] for i in index[rows]])
    flip = rng.random(b) < 0.5 if self.config.data.mirror else np.zeros(b, bool)

    def rows(indices: np.ndarray) -> np.ndarray:
      x = make(indices)
      x = np.where(flip[indices][:, None, None, None], x[:, :, ::-1], x)
      return np.ascontiguousarray(x, np.float32)
    return rows


def heldout_images(resolution: int) -> np.ndarray:
  """The embedded data's held-out crops as the 4-channel generator's clean inputs: float32
  [N, H, W, 4] in [-1, 1], mask channel -1 (no defect)."""
  rgb = data_lib.to_model_range(data_lib.heldout_crops(size=resolution))
  return np.concatenate([rgb, -np.ones(rgb.shape[:3] + (1,), np.float32)], -1)


def _step_config(config) -> ml_collections.ConfigDict:
  """`config` less what the compiled steps do not read (bookkeeping, run length, lr)."""
  out = ml_collections.ConfigDict(config.to_dict())
  for field in RESUME_MAY_CHANGE + ('total_kimg', 'lr', 'seed'):
    out[field] = type(out[field])(0)
  return out


def _resumes(saved: dict, config, may_change=RESUME_MAY_CHANGE) -> bool:
  """Whether a run saved with config `saved` resumes under `config` (only `may_change` differ)."""
  keep = lambda tree: {k: v for k, v in tree.items() if k not in may_change}
  return keep(saved) == keep(json.loads(config.to_json()))


def _check_generator(workdir: pathlib.Path, model) -> str:
  """The model's fingerprint; an error if the run in `workdir` began with another generator."""
  from inversion import latents as latents_lib  # pylint: disable=import-outside-toplevel
  generator_id = latents_lib.generator_fingerprint(model)
  path = workdir / GENERATOR_FILE
  if path.exists():
    began = json.loads(path.read_text())
    if began['generator_id'] != generator_id:
      raise domain.EncoderError(
          f'{workdir} trains an encoder for generator {began["generator_id"]} '
          f'({began.get("source") or "no source"}), not for the checkpoint given '
          f'({generator_id}); pass that checkpoint to resume, or a new --workdir.')
  elif trainer.is_main():
    trainer.write_text_atomic(path, json.dumps({'generator_id': generator_id,
                                                'source': model.metadata.get('source', '')}))
  return generator_id


def train_encoder(config: ml_collections.ConfigDict, model: checkpoint.Model,
                  data_source: str, workdir: str | pathlib.Path,
                  progress: bool = True) -> EncoderTrainState:
  """Train (or resume) E for `model` on `data_source` (a folder, or 'embedded') in `workdir`."""
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel

  _check_model(config, model)
  workdir = trainer.prepare_workdir(workdir, config, lambda saved: _resumes(saved, config),
                                    RESUME_MAY_CHANGE)
  _check_generator(workdir, model)
  images = TrainingImages(data_source, config, model)
  _, replicated, batch_sharding = trainer.data_mesh(config.batch_size)
  feature_terms, term_params = ((), {}) if config.objective == 'fakes' else _feature_terms(
      config, model)
  e_step, d_plain, d_r1 = _cached_steps(_step_config(config).to_json(), model.g_config,
                                        model.d_config, feature_terms, batch_sharding)
  enc_cfg = encoder_config(config, model.g_config)

  manager = trainer.checkpoint_manager(workdir, config)
  state = init_state(config, model)
  if manager.latest_step() is not None:
    state = trainer.restore(manager, state)
    log.info('Resumed %s at step %d.', workdir, manager.latest_step())
  state, g_vars, term_params = jax.device_put((state, model.g_vars, term_params), replicated)
  total_steps = int(round(config.total_kimg * 1000 / config.batch_size))
  start = int(state.step)
  records = trainer.Records(workdir, start)
  bar = tqdm(total=total_steps, initial=start, unit='step', dynamic_ncols=True,
             desc=f'train-encoder {workdir.name}', disable=not progress or not trainer.is_main())
  t0 = time.time()
  last_r1 = float('nan')
  for step in range(start, total_steps):
    rng = np.random.default_rng([config.seed, step])
    x = (trainer.place_rows(images.batch(rng), images.shape, batch_sharding)
         if config.objective == 'real' else None)  # 'fakes' draws its own images
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), step)
    lr = lr_at(config, step, total_steps)
    state, metrics, fake = e_step(state, x, key, g_vars, term_params, lr)
    if trains_d(config):
      with_r1 = step % config.r1_interval == 0
      state, d_metrics = (d_r1 if with_r1 else d_plain)(state, x, fake, lr, config.r1_gamma)
      r1 = d_metrics.pop('r1')
      last_r1 = r1 if with_r1 else last_r1
      metrics = {**metrics, **d_metrics}
    done = step + 1
    bar.update(1)
    if trainer.due(done, config.log_every, total_steps):
      record = write_record(records, metrics, last_r1 if trains_d(config) else None, done,
                            config.batch_size, t0, lr=lr)
      bar.set_postfix(e=f"{record['e_loss']:.4f}")
    if trainer.grid_due(done, config.sample_every, total_steps):
      _sample_grid(enc_cfg, state, model, images.samples,
                   workdir / 'samples' / f'step{done:06d}.png')
    if trainer.due(done, config.checkpoint_every, total_steps):
      trainer.save(manager, done, state)
  trainer.finish(manager, bar, records)
  return state


def write_record(records, metrics, r1, done: int, batch_size: int, t0: float,
                 **extra) -> dict:
  """One metrics.jsonl record of an encoder training step: the step's metrics, the last R1
  (None: no D), the step, kimg, wall seconds and `extra`; returns it."""
  record = {k: float(v) for k, v in metrics.items()}
  if r1 is not None:
    record['r1'] = float(r1)
  record.update(step=done, kimg=done * batch_size / 1000, **extra,
                seconds=round(time.time() - t0, 1))
  records.write(record, may_be_nan=('r1',))
  return record


def _sample_grid(enc_cfg, state, model, samples, path) -> None:
  """Two rows: the sample inputs, and G(E(x))."""
  ws = domain.encode_fn(enc_cfg)(encoder_variables(jax.device_get(state.e_params), model.g_vars),
                                jnp.asarray(samples))
  rec = np.asarray(model.synthesis(ws))
  trainer.grid_png(np.concatenate([samples, rec]), path, columns=len(samples))


def export_encoder(workdir: str | pathlib.Path, out: str | pathlib.Path, model,
                   step: int | None = None) -> pathlib.Path:
  """Writes the encoder of `workdir`'s checkpoint at `step` (default: the latest) as a native
  encoder folder at `out` (`inversion.encoders.domain`), for `model` (checked)."""
  workdir = pathlib.Path(workdir)
  trainer.require_run(workdir, 'to export', RUN_LAYOUT)
  config = ml_collections.ConfigDict(json.loads((workdir / 'config.json').read_text()))
  generator_id = _check_generator(workdir, model)
  manager = trainer.checkpoint_manager(workdir, config)
  kept = manager.all_steps()
  if not kept:
    raise FileNotFoundError(f'No checkpoint in {workdir}/checkpoints to export.')
  step = max(kept) if step is None else int(step)
  trainer.require_kept(workdir, kept, [step])
  state = trainer.restore(manager, init_state(config, model), step)
  records = trainer.read_records(workdir)
  meta = {'training_steps': step, 'kimg': step * config.batch_size / 1000,
          'train_config': json.loads(config.to_json()),
          'generator_source': model.metadata.get('source', ''),
          'last_record': next((r for r in reversed(records) if r['step'] <= step), None)}
  encoder = domain.Encoder(encoder_config(config, model.g_config),
                           encoder_variables(state.e_params, model.g_vars),
                           generator_id, meta)
  return domain.save_encoder(out, encoder, overwrite=True)
