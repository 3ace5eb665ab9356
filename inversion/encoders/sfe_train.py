"""Training StyleFeatureEditor's two stages (SFE; Bobkov et al., CVPR 2024) for any generator,
resumable, on the trainer skeleton every training here shares (`generators.trainer`).

Stage 1, the inverter (official `FSEInverterTrainingRunner`, `fse_inverter_train.yaml`), on real
images x, G frozen:

  ws, F_k = inverter(x)                         ws = latent_avg + W+ head, F_k = fuser(F_pred, F_w)
  y       = cat(G(ws, F_k at scale s), G(ws))   s = min(1, slope * step): F_k blends in
  L       = mse(y, x) + 0.8 F(y, x) + 0.1 ID(y, x) + 0.01 softplus(-D(y)) + 0.01 mse(F_k, F_w)

Stage 2, the feature editor (`FSEEditorTrainingRunner`, `fse_editor_train.yaml`), the inverter
frozen. Each step draws a random edit (a direction of the generator, a strength) per image:

  inversion   F' = editor(F_k(x), 0), target x
  editing     w_e = an encoder's code of x; X_E = G(w_e), X'_E = G(edit(w_e)); the inverter on
              X_E gives ws_E, F_k(X_E); F' = editor(F_k(X_E), F(w_e) - F(edit(w_e))); the image
              G(edit(ws_E), F') has target X'_E
  L           as stage 1 without the feature regulariser (D sees the inversions, as official)

F is the perceptual term inversion resolves (`api.build_image_terms`): LPIPS with the user's
weights, else the frozen model D's features (said once in the log). ID is ArcFace IR-SE-50 from
the user's `model_ir_se50.pth` (`metrics.feature_network('arcface')`): 1 - cos of the
embeddings; off, with a log line, without the file. D starts from the model's D and trains from
`d_start_step` (non-saturating, R1 on reals, lazy). Ranger (RAdam + Lookahead + gradient
centralisation, official) or Adam. w_e: e4e's codes where its file is given, else the domain-
guided encoder's (the embedded model ships one), else the inverter's own ws (`editor.codes`).
Directions: a directions file, or GANSpace PCA (+ the defect direction of an RGB + mask G),
computed once and kept in the workdir.

Resuming is exact: the state is an orbax checkpoint, every step's data and randomness are
functions of (seed, step), and the generator is checked against the one the run began with.

    python -m inversion train-sfe --stage inverter --config sfe:small,train_inverter,embedded \
        --data embedded --workdir runs/sfe1
    python -m inversion train-sfe --stage editor --config sfe:small,train_editor,embedded \
        --data embedded --workdir runs/sfe2 --inverter-workdir runs/sfe1
    python -m inversion export-sfe --workdir runs/sfe2 --out generators/embedded/sfe
"""

from __future__ import annotations

import functools
import json
import logging
import pathlib
import time
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from generators import checkpoint, distributed, networks, trainer
from inversion import engine as eng
from inversion.encoders import domain, sfe as nets
from inversion.encoders import train as enc_train
from inversion.encoders.train import TrainingImages

log = logging.getLogger(__name__)

STAGES = ('inverter', 'editor')
CODES = ('auto', 'e4e', 'domain', 'inverter')
OPTIMIZERS = ('ranger', 'adam')
DIRECTIONS_FILE = 'directions.npz'  # in a stage-2 workdir: the edits it draws from
RESUME_MAY_CHANGE = enc_train.RESUME_MAY_CHANGE + ('steps',)  # lr is constant: runs extend
RUN_LAYOUT = ('an SFE training workdir is the --workdir of `python -m inversion train-sfe`: it '
              'holds config.json, generator.json, checkpoints/, metrics.jsonl and samples/')
SAMPLE_IMAGES = 8


class SFETrainState(NamedTuple):
  step: jax.Array  # [] int32, completed steps
  params: Any      # the trained network's params: {'fast'} (Adam) or {'fast', 'slow'} (Ranger)
  batch_stats: Any  # its BatchNorm running statistics
  opt: Any
  d_params: Any    # {} without D, else as params
  d_opt: Any


def trains_d(config) -> bool:
  return config.loss.adv_weight > 0


def optimizer(config) -> optax.GradientTransformation:
  """Ranger (official: RAdam, gradient centralisation, Lookahead k / alpha) or Adam."""
  if config.optimizer not in OPTIMIZERS:
    raise ValueError(f'config.optimizer must be one of {OPTIMIZERS}, got {config.optimizer!r}')
  if config.optimizer == 'adam':
    return optax.adam(config.lr, *config.betas, eps=config.eps)
  steps = [optax.radam(config.lr, *config.betas, eps=config.eps)]
  if config.gradient_centralization:
    steps.insert(0, _centralize())
  return optax.lookahead(optax.chain(*steps), config.lookahead_k, config.lookahead_alpha)


def _centralize() -> optax.GradientTransformation:
  """Gradient centralisation (Ranger's use_gc): kernels' gradients less their mean over every
  axis but the output one."""
  def centre(g):
    return g - jnp.mean(g, axis=tuple(range(g.ndim - 1)), keepdims=True) if g.ndim > 1 else g
  return optax.stateless(lambda updates, _: jax.tree_util.tree_map(centre, updates))


def _opt_params(config, params) -> dict:
  """The optimiser's copy of params: {'fast', 'slow'} for Ranger's Lookahead, else {'fast'}."""
  if config.optimizer != 'ranger':
    return {'fast': params}
  return {'fast': params, 'slow': jax.tree_util.tree_map(jnp.array, params)}  # own buffers


def weights(params: dict):
  """The weights to evaluate and export: Lookahead's slow ones, else the only ones."""
  return params.get('slow', params['fast'])


def _update(opt, params: dict, opt_state, grads):
  """One optimiser update of {'fast'[, 'slow']} from the gradients wrt the fast params."""
  if 'slow' in params:
    p = optax.LookaheadParams(params['fast'], params['slow'])
    updates, opt_state = opt.update(grads, opt_state, p)
    p = optax.apply_updates(p, updates)
    return {'fast': p.fast, 'slow': p.slow}, opt_state
  updates, opt_state = opt.update(grads, opt_state, params['fast'])
  return {'fast': optax.apply_updates(params['fast'], updates)}, opt_state


def ramp(config, step):
  """The blend of F_k at `step`: stage 1 min(1, slope * step), stage 2 1 (the inverter done)."""
  if config.stage == 'editor':
    return jnp.ones(()) if isinstance(step, jax.Array) else 1.0
  return jnp.minimum(1.0, config.feature_ramp_slope * step)


def d_active(config, step: int) -> bool:
  """Whether D trains and the adversarial term counts at `step` (from `d_start_step`)."""
  return trains_d(config) and step >= config.d_start_step


def r1_due(config, step: int) -> bool:
  """Lazy R1: every `r1_interval` D steps, counted from D's first."""
  return (step - config.d_start_step) % config.r1_interval == 0


def identity_network(config):
  """ArcFace IR-SE-50 embeddings of the user's file, or None (the identity loss off, said in
  the log) without it or with `loss.id_weight` 0."""
  from inversion import metrics  # pylint: disable=import-outside-toplevel
  from inversion import weights as weights_lib  # pylint: disable=import-outside-toplevel
  if not config.loss.id_weight:
    return None
  try:
    return metrics.feature_network('arcface', config.loss.arcface_weights or None)
  except weights_lib.WeightsNotFoundError as e:
    log.warning('SFE identity loss off: no ArcFace IR-SE-50 weights (model_ir_se50.pth; '
                'config.loss.arcface_weights). Details: %s', str(e).splitlines()[0])
    return None


def _check(config, model) -> None:
  if config.get('method') != 'sfe_train' or config.stage not in STAGES:
    raise ValueError("not an SFE training config: use sfe:small,train_inverter or "
                     "sfe:small,train_editor (configs/sfe.py)")
  if config.editor.codes not in CODES:
    raise ValueError(f'config.editor.codes must be one of {CODES}, got {config.editor.codes!r}')
  if trains_d(config):
    if model.d_config is None:
      raise ValueError("SFE's adversarial term trains D from the model's D, which this "
                       'checkpoint does not hold: pass a file with D, or train without it '
                       '(--config.loss.adv_weight=0).')
    if model.d_config.c_dim:
      raise ValueError('this D is conditional, and real images come without classes: train '
                       'with --config.loss.adv_weight=0.')
  if config.stage == 'editor' and not config.editor.inverter:
    raise ValueError('stage 2 (editor) trains on a trained inverter: pass --inverter-workdir '
                     '(the stage-1 workdir or an exported SFE folder; config.editor.inverter).')


def network_configs(config, g_config):
  """(InverterConfig, EditorConfig, feature layer) for the generator."""
  from configs import sfe as sfe_config  # pylint: disable=import-outside-toplevel
  inv, edit, _, layer = sfe_config.networks_for(config, g_config)
  return inv, edit, layer


def _identity_editor(variables):
  """Editor variables that pass F_k through at start: the 1x1 conv [I; 0] without bias, and
  every residual block's last BN scale 0 (an identity start for short runs)."""
  params = jax.tree_util.tree_map(jnp.array, variables['params'])
  kernel = params['conv']['kernel']  # [1, 1, 2C, C]
  c = kernel.shape[-1]
  params['conv']['kernel'] = jnp.concatenate([jnp.eye(c), jnp.zeros((c, c))])[None, None]
  params['conv']['bias'] = jnp.zeros_like(params['conv']['bias'])
  for name in params:
    if name.startswith('body.'):
      params[name]['body.5']['scale'] = jnp.zeros_like(params[name]['body.5']['scale'])
  return {'params': params, 'batch_stats': variables['batch_stats']}


def init_state(config, model, key=None) -> SFETrainState:
  key = jax.random.PRNGKey(config.seed) if key is None else key
  inv_cfg, edit_cfg, _ = network_configs(config, model.g_config)
  if config.stage == 'inverter':
    variables = nets.init_inverter(inv_cfg, key)
  else:
    variables = nets.init_editor(edit_cfg, key)
    if config.editor.get('identity_init', False):
      variables = _identity_editor(variables)
  opt = optimizer(config)
  params = _opt_params(config, variables['params'])
  d_params = (_opt_params(config, jax.tree_util.tree_map(jnp.array, model.d_vars['params']))
              if trains_d(config) else {})
  return SFETrainState(jnp.zeros((), jnp.int32), params, variables['batch_stats'],
                       _opt_init(opt, params), d_params, _opt_init(opt, d_params))


def _opt_init(opt, params: dict):
  if not params:
    return {}
  return opt.init(optax.LookaheadParams(params['fast'], params['slow']) if 'slow' in params
                  else params['fast'])


# ----------------------------------------------------------------------------------------------
# The compiled steps.


class Frozen(NamedTuple):
  """Stage 2's fixed inputs of every step (device arrays; None in stage 1)."""
  inverter: Any        # the trained inverter's variables
  codes: Any           # the editing encoder's variables (domain / e4e), or None ('inverter')
  moves: jax.Array     # [K, num_ws, w_dim] direction vectors times their scales
  low: jax.Array       # [K] strengths (sigmas) drawn uniformly in [low, high)
  high: jax.Array      # [K]
  logits: jax.Array    # [K] log-probabilities of drawing each direction


def make_steps(config, g_config, d_config, inv_cfg, edit_cfg, layer: str, feature_terms,
               identity_fn, codes: str, codes_cfg):
  """(train step(with_adv), D step(with_r1)) for the stage of `config`, jitted, state donated.

  train step: (state, x, key, g_vars, term_params, latent_avg, frozen) -> (state, metrics,
  fakes for D); D step: (state, x, fakes) -> (state, metrics).
  """
  inverter = nets.Inverter(inv_cfg)
  editor = nets.Editor(edit_cfg)
  disc = networks.Discriminator(d_config) if trains_d(config) else None
  opt = optimizer(config)
  channels = g_config.img_channels
  pixel_channels = channels if config.loss.channels == 'all' else min(3, channels)
  feature_channels = min(3, channels)
  loss_cfg = config.loss
  sg = jax.lax.stop_gradient

  def render(g_vars, ws, features=None, scale=1.0):
    if features is None:
      return networks.synthesis(g_config, g_vars, ws, 'const')
    return networks.synthesis(g_config, g_vars, ws, 'const', feature_layer=layer,
                              features=features, feature_scale=scale)

  def invert(inv_vars, g_vars, latent_avg, images, train: bool):
    """(ws, F_w, F_k), and the updated batch stats when training."""
    def fn(m, xe):
      offset, f_pred = m.backbone(xe, train)
      ws = latent_avg + offset
      f_w = networks.synthesis_features(g_config, g_vars, ws, layer)
      return ws, f_w, m.fuse(f_pred, f_w, train)
    xe = nets.resize_bilinear(images[..., :3], inv_cfg.input_size)
    if train:
      out, updated = inverter.apply(inv_vars, xe, method=fn, mutable=['batch_stats'])
      return out, updated['batch_stats']
    return inverter.apply(inv_vars, xe, method=fn), None

  def image_loss(rec, target, term_params, d_params, adv_rec, with_adv):
    """The losses of both stages on images (rec vs target): (loss, metrics)."""
    mse = jnp.mean(jnp.square(rec[..., :pixel_channels] - target[..., :pixel_channels]))
    feat, parts = eng.image_terms_loss(feature_terms, term_params, rec, target, None,
                                       feature_channels)
    loss = loss_cfg.mse * mse + jnp.mean(feat)
    metrics = {'mse': mse, **{f'f_{k}': jnp.mean(v) for k, v in parts.items()}}
    if identity_fn is not None:
      cos = jnp.sum(identity_fn(rec[..., :3]) * sg(identity_fn(target[..., :3])), axis=-1)
      metrics['id'] = jnp.mean(1 - cos)
      loss = loss + loss_cfg.id_weight * metrics['id']
    if with_adv:
      metrics['adv'] = jnp.mean(jax.nn.softplus(-disc.apply({'params': d_params}, adv_rec)))
      loss = loss + loss_cfg.adv_weight * metrics['adv']
    return loss, metrics

  def editing_codes(frozen, x, ws_x, latent_avg):
    """w_e of x: e4e's, the domain-guided encoder's or the inverter's own."""
    if codes == 'e4e':
      xe = nets.resize_bilinear(x[..., :3], codes_cfg.input_size)
      return latent_avg + nets.e4e_apply(codes_cfg, frozen.codes, xe)
    if codes == 'domain':
      return domain.apply(codes_cfg, frozen.codes, x)
    return ws_x

  def inverter_loss(fast, state, x, key, g_vars, term_params, latent_avg, frozen, with_adv):
    del key, frozen
    (ws, f_w, f_k), stats = invert({'params': fast, 'batch_stats': state.batch_stats}, g_vars,
                                   latent_avg, x, train=True)
    scale = ramp(config, state.step)
    rec = jnp.concatenate([render(g_vars, ws, f_k, scale), render(g_vars, ws)])
    loss, metrics = image_loss(rec, jnp.concatenate([x, x]), term_params,
                               state.d_params.get('fast'), rec, with_adv)
    metrics['feature_reg'] = jnp.mean(jnp.square(f_k - f_w))
    loss = loss + loss_cfg.feature_reg * metrics['feature_reg']
    return loss, ({'loss': loss, 'scale': scale, **metrics}, stats, rec)

  def editor_loss(fast, state, x, key, g_vars, term_params, latent_avg, frozen, with_adv):
    b = x.shape[0]
    # 1. inversion: the frozen inverter on x, delta 0
    ws_x, _, f_x = sg(invert(frozen.inverter, g_vars, latent_avg, x, train=False)[0])
    # 2. an edit per image: X_E = G(w_e), X'_E = G(edit(w_e)), delta = F(w_e) - F(edit(w_e))
    k_dir, k_str = jax.random.split(key)
    which = jax.random.categorical(k_dir, frozen.logits, shape=(b,))
    strength = jax.random.uniform(k_str, (b,), minval=frozen.low[which],
                                  maxval=frozen.high[which])
    move = strength[:, None, None] * frozen.moves[which]
    w_e = sg(editing_codes(frozen, x, ws_x, latent_avg))
    x_e, f_e = networks.synthesis(g_config, g_vars, w_e, 'const', feature_layer=layer,
                                  return_features=True)
    target_e, f_e2 = networks.synthesis(g_config, g_vars, w_e + move, 'const',
                                        feature_layer=layer, return_features=True)
    ws_e, _, f_xe = invert(frozen.inverter, g_vars, latent_avg, x_e, train=False)[0]
    f_in = sg(jnp.concatenate([f_x, f_xe]))
    delta = sg(jnp.concatenate([jnp.zeros_like(f_x), f_e - f_e2]))
    f_out, updated = editor.apply({'params': fast, 'batch_stats': state.batch_stats}, f_in, delta,
                                  True, mutable=['batch_stats'])
    ws_all = sg(jnp.concatenate([ws_x, ws_e + move]))
    rec = render(g_vars, ws_all, f_out)
    loss, metrics = image_loss(rec, sg(jnp.concatenate([x, target_e])), term_params,
                               state.d_params.get('fast'), rec[:b], with_adv)
    metrics['mse_inversion'] = jnp.mean(jnp.square(rec[:b, ..., :3] - x[..., :3]))
    metrics['mse_edit'] = jnp.mean(jnp.square(rec[b:, ..., :3] - target_e[..., :3]))
    return loss, ({'loss': loss, **metrics}, updated['batch_stats'], rec[:b])

  loss_fn = inverter_loss if config.stage == 'inverter' else editor_loss

  def train_step(state, x, key, g_vars, term_params, latent_avg, frozen, *, with_adv):
    grads, (metrics, stats, rec) = jax.grad(loss_fn, has_aux=True)(
        state.params['fast'], state, x, key, g_vars, term_params, latent_avg, frozen, with_adv)
    params, opt_state = _update(opt, state.params, state.opt, grads)
    state = state._replace(step=state.step + 1, params=params, batch_stats=stats, opt=opt_state)
    return state, metrics, sg(rec)

  def d_step(state, x, fake, *, with_r1):
    def d_loss(fast):
      return enc_train.discriminator_loss(lambda img: disc.apply({'params': fast}, img), x,
                                          fake, config.r1_gamma, config.r1_interval, with_r1)
    grads, metrics = jax.grad(d_loss, has_aux=True)(state.d_params['fast'])
    d_params, d_opt = _update(opt, state.d_params, state.d_opt, grads)
    return state._replace(d_params=d_params, d_opt=d_opt), metrics

  jit = lambda f, **kw: jax.jit(functools.partial(f, **kw), donate_argnums=0)
  return ({flag: jit(train_step, with_adv=flag) for flag in (False, True)},
          {flag: jit(d_step, with_r1=flag) for flag in (False, True)})


@functools.lru_cache(maxsize=4)
def _cached_steps(config_json: str, *args):
  """make_steps, memoised so that resuming in the same process does not recompile."""
  return make_steps(ml_collections.ConfigDict(json.loads(config_json)), *args)


def _step_config(config) -> str:
  """The config as the compiled steps read it (bookkeeping and run length zeroed)."""
  out = ml_collections.ConfigDict(config.to_dict())
  for field in RESUME_MAY_CHANGE + ('seed',):
    out[field] = type(out[field])(0)
  return out.to_json()


# ----------------------------------------------------------------------------------------------
# Stage 2's fixed inputs.


def edit_directions(config, model, workdir: pathlib.Path):
  """The directions stage 2 draws edits from: `editor.directions`, else GANSpace PCA (+ the
  defect direction of an RGB + mask generator), computed once (by the main process) and kept in
  the workdir, from which every process reads them."""
  from inversion import directions  # pylint: disable=import-outside-toplevel
  kept = workdir / DIRECTIONS_FILE
  if config.editor.directions:
    return directions.load_directions(config.editor.directions, model)
  if not kept.exists() and trainer.is_main():
    found = directions.ganspace(model, config.editor.ganspace_components, seed=config.seed)
    parts = [found]
    if model.channels == 4:
      parts.append(directions.defect_direction(model, seed=config.seed))
    directions.save_directions(kept, directions.Directions(
        np.concatenate([p.vectors for p in parts]), sum((p.names for p in parts), []),
        np.concatenate([p.scales for p in parts]), 'given', found.generator_id,
        {'sources': [p.method for p in parts]}))
  distributed.barrier('train-sfe: edit directions written')
  d = directions.load_directions(kept, model)
  log.info('SFE stage 2: edits along %s (%s)', ', '.join(d.names), kept)
  return d


def _editing_codes(config, model, inverter_cfg):
  """(kind, config, variables) of w_e's encoder (`editor.codes`; 'auto': e4e if given, else
  the domain-guided encoder if one exists for the generator, else the inverter)."""
  from inversion import encoders  # pylint: disable=import-outside-toplevel
  kind = config.editor.codes
  if kind in ('auto', 'e4e') and config.editor.e4e:
    weights = nets.load_official(config.editor.e4e, inverter_cfg.input_size)
    if weights.e4e_config is None:
      raise ValueError(f'{config.editor.e4e} holds no e4e encoder ({weights.kind})')
    return 'e4e', weights.e4e_config, weights.e4e_vars
  if kind == 'e4e':
    raise ValueError("config.editor.codes='e4e' needs config.editor.e4e (e4e_ffhq_encode.pt)")
  if kind in ('auto', 'domain'):
    try:
      enc = encoders.resolve_encoder(config.editor.encoder, model)
      return 'domain', enc.config, enc.variables
    except (encoders.EncoderError, FileNotFoundError):
      if kind == 'domain':
        raise
  return 'inverter', None, None


def _frozen(config, model, workdir, inv_cfg):
  """Stage 2's Frozen inputs and the codes' (kind, config)."""
  nets_in = load_networks(config.editor.inverter, model)
  if nets_in.inverter_config != inv_cfg or nets_in.feature_layer != network_configs(
      config, model.g_config)[2]:
    raise ValueError(f'{config.editor.inverter}: its inverter ({nets_in.inverter_config}, '
                     f'{nets_in.feature_layer}) is not the one this config sizes ({inv_cfg}); '
                     'train the editor with the config of the inverter\'s stage.')
  kind, codes_cfg, codes_vars = _editing_codes(config, model, inv_cfg)
  log.info('SFE stage 2: editing codes w_e from the %s.', {
      'e4e': 'e4e encoder', 'domain': 'domain-guided encoder',
      'inverter': "inverter's own W+ head"}[kind])
  d = edit_directions(config, model, workdir)
  defect = np.array([n == 'defect' for n in d.names])
  low, high = np.where(defect[:, None], config.editor.defect_strength,
                       (-config.editor.strength, config.editor.strength)).astype(np.float32).T
  share = np.full(len(d), 1.0 / len(d))  # official: every direction alike
  if defect.any() and config.editor.defect_share:
    share = np.where(defect, config.editor.defect_share,
                     (1 - config.editor.defect_share) / max(len(d) - 1, 1))
  moves = d.vectors * d.scales[:, None, None]
  return Frozen(nets_in.inverter_vars, codes_vars, jnp.asarray(moves),
                jnp.asarray(low), jnp.asarray(high), jnp.log(jnp.asarray(share, jnp.float32))
                ), kind, codes_cfg


# ----------------------------------------------------------------------------------------------
# The loop.


def train_sfe(config: ml_collections.ConfigDict, model: checkpoint.Model, data_source: str,
              workdir: str | pathlib.Path, progress: bool = True) -> SFETrainState:
  """Train (or resume) SFE's stage `config.stage` for `model` on `data_source` (a folder, or
  'embedded') in `workdir`."""
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel

  _check(config, model)
  workdir = trainer.prepare_workdir(
      workdir, config, lambda saved: enc_train._resumes(saved, config, RESUME_MAY_CHANGE),  # pylint: disable=protected-access
      RESUME_MAY_CHANGE)
  enc_train._check_generator(workdir, model)  # pylint: disable=protected-access
  images = TrainingImages(data_source, config, model)
  _, replicated, batch_sharding = trainer.data_mesh(config.batch_size)
  feature_terms, term_params = enc_train._feature_terms(config, model)  # pylint: disable=protected-access
  identity_fn = identity_network(config)
  inv_cfg, edit_cfg, layer = network_configs(config, model.g_config)
  frozen, kind, codes_cfg = (_frozen(config, model, workdir, inv_cfg)
                             if config.stage == 'editor' else (None, 'inverter', None))
  steps, d_steps = _cached_steps(_step_config(config), model.g_config, model.d_config, inv_cfg,
                                 edit_cfg, layer, feature_terms, identity_fn, kind, codes_cfg)

  manager = trainer.checkpoint_manager(workdir, config)
  state = init_state(config, model)
  if manager.latest_step() is not None:
    state = trainer.restore(manager, state)
    log.info('Resumed %s at step %d.', workdir, manager.latest_step())
  latent_avg = model.g_vars['buffers']['mapping']['w_avg']
  state, g_vars, term_params, latent_avg, frozen = jax.device_put(
      (state, model.g_vars, term_params, latent_avg, frozen), replicated)
  start, total = int(state.step), int(config.steps)
  records = trainer.Records(workdir, start)
  bar = tqdm(total=total, initial=start, unit='step', dynamic_ncols=True,
             desc=f'train-sfe {config.stage} {workdir.name}',
             disable=not progress or not trainer.is_main())
  t0 = time.time()
  last_r1 = float('nan')
  for step in range(start, total):
    rng = np.random.default_rng([config.seed, step])
    x = trainer.place_rows(images.batch(rng), images.shape, batch_sharding)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), step)
    adv = d_active(config, step)
    if adv and step == config.d_start_step:
      log.info('SFE: D starts training at step %d.', step)
    state, metrics, fake = steps[adv](state, x, key, g_vars, term_params, latent_avg, frozen)
    if adv:
      with_r1 = r1_due(config, step)
      state, d_metrics = d_steps[with_r1](state, x, fake)
      r1 = d_metrics.pop('r1')
      last_r1 = r1 if with_r1 else last_r1
      metrics = {**metrics, **d_metrics}
    done = step + 1
    bar.update(1)
    if trainer.due(done, config.log_every, total):
      record = enc_train.write_record(records, metrics, last_r1 if trains_d(config) else None,
                                      done, config.batch_size, t0)
      bar.set_postfix(loss=f"{record['loss']:.4f}")
    if trainer.grid_due(done, config.sample_every, total):
      sample_grid(config, state, model, images.samples, frozen,
                  workdir / 'samples' / f'step{done:06d}.png')
    if trainer.due(done, config.checkpoint_every, total):
      trainer.save(manager, done, state)
  trainer.finish(manager, bar, records)
  return state


def networks_of(config, model, state: SFETrainState, frozen_inverter=None):
  """The `inversion.sfe.SFE` of a training state (stage 2: with its frozen inverter)."""
  from inversion import sfe  # pylint: disable=import-outside-toplevel
  inv_cfg, edit_cfg, layer = network_configs(config, model.g_config)
  variables = {'params': weights(state.params), 'batch_stats': state.batch_stats}
  if config.stage == 'inverter':
    return sfe.SFE(inv_cfg, variables, layer, sources=('training',))
  return sfe.SFE(inv_cfg, frozen_inverter, layer, edit_cfg, variables, sources=('training',))


def sample_grid(config, state, model, samples, frozen, path) -> None:
  """Rows: the inputs, G(ws) (the W+ head alone), SFE's reconstruction; stage 2 also the
  first direction's edit at +strength by SFE."""
  from inversion import sfe  # pylint: disable=import-outside-toplevel
  nets_now = networks_of(config, model, jax.device_get(state),
                         None if frozen is None else jax.device_get(frozen.inverter))
  enc = sfe.encode(nets_now, model, samples)
  rows = [samples, np.asarray(model.synthesis(jnp.asarray(enc.ws))),
          sfe.render(nets_now, model, enc.ws, enc.features)]
  if frozen is not None:
    move = jax.device_get(frozen.moves)[0] * config.editor.strength
    rows.append(sfe.edit(nets_now, model, enc.ws, enc.features, enc.ws, lambda w: w + move))
  trainer.grid_png(np.concatenate(rows), path, columns=len(samples))


# ----------------------------------------------------------------------------------------------
# Trained networks out of a run.


def _restored(workdir: pathlib.Path, model, step: Optional[int] = None):
  """(config, state at `step` (default: the latest kept)) of an SFE training workdir."""
  trainer.require_run(workdir, 'to read', RUN_LAYOUT)
  config = ml_collections.ConfigDict(json.loads((workdir / 'config.json').read_text()))
  if config.get('method') != 'sfe_train':
    raise ValueError(f'{workdir} is not an SFE training run (its config.method is '
                     f'{config.get("method")!r})')
  enc_train._check_generator(workdir, model)  # pylint: disable=protected-access
  manager = trainer.checkpoint_manager(workdir, config)
  kept = manager.all_steps()
  if not kept:
    raise FileNotFoundError(f'No checkpoint in {workdir}/checkpoints.')
  step = max(kept) if step is None else int(step)
  trainer.require_kept(workdir, kept, [step])
  return config, trainer.restore(manager, init_state(config, model), step)


def load_networks(path: str | pathlib.Path, model, step: Optional[int] = None):
  """`inversion.sfe.SFE` of a training workdir (its latest checkpoint, or `step`) or of an
  exported SFE folder; checked against `model`."""
  from inversion import sfe  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(path)
  if (path / sfe.NATIVE_FILE).is_file():
    return sfe.load_native(path, model)
  config, state = _restored(path, model, step)
  frozen = None
  if config.stage == 'editor':
    frozen = load_networks(config.editor.inverter, model).inverter_vars
  nets_out = networks_of(config, model, state, frozen)
  nets_out.sources = (str(path),)
  return nets_out


def export_sfe(workdir: str | pathlib.Path, out: str | pathlib.Path, model,
               step: Optional[int] = None) -> pathlib.Path:
  """Writes a run's networks (stage 2: inverter + editor) as a native SFE folder at `out`
  (`inversion.sfe.save_native`: sfe.json, inverter.npz[, editor.npz])."""
  from inversion import sfe  # pylint: disable=import-outside-toplevel
  workdir = pathlib.Path(workdir)
  config, state = _restored(workdir, model, step)
  nets_out = load_networks(workdir, model, int(state.step))
  records = trainer.read_records(workdir)
  meta = {'stage': config.stage, 'training_steps': int(state.step),
          'train_config': json.loads(config.to_json()),
          'last_record': next((r for r in reversed(records) if r['step'] <= int(state.step)),
                              None)}
  if config.stage == 'editor':
    meta['inverter_run'] = config.editor.inverter
    inverter = pathlib.Path(config.editor.inverter)
    if (inverter / sfe.NATIVE_FILE).is_file():
      meta['inverter'] = json.loads((inverter / sfe.NATIVE_FILE).read_text())['meta']
    else:
      inv_config, inv_state = _restored(inverter, model)
      meta['inverter'] = {'stage': 'inverter', 'training_steps': int(inv_state.step),
                          'train_config': json.loads(inv_config.to_json())}
  return sfe.save_native(out, nets_out, model, meta)
