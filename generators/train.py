"""StyleGAN2 training (NVlabs stylegan2-ada-pytorch `training/loss.py` recipe), resumable.

Losses: non-saturating logistic for G and D, lazy R1 on reals every `r1_interval` D steps
(scaled by the interval), style mixing, G EMA with ramp-up, `w_avg` tracking. One compiled step
for G and one for D (two variants: with and without R1). Data-parallel over all local devices:
the batch axis is sharded over a 1-D `jax.sharding.Mesh`, parameters are replicated, and XLA
inserts the gradient all-reduce. Path-length regularisation (optional in NVlabs' recipe for
small models) is not implemented. With `ada_target` > 0, D sees reals and fakes through
adaptive augmentation (`generators/augment.py`); its probability is part of the state.

With `data.defect_labels`, G and D are conditional (NVlabs' class conditioning, `c_dim` = 2):
each crop's label is one-hot "clean" / "defect" (`CLASS_NAMES`), read off its mask channel, and
fakes get labels drawn from the training set's, as NVlabs draws `gen_c`. An unconditional G
may draw fewer defects than the data holds without D being able to tell per image; a
conditional D sees which images must show one. With `data.photo_labels` the label is instead
the crop's photo (`data.SOURCES`, `c_dim` = 3): an unconditional G can draw one photo in three
quarters of its samples at the same SWD (`benchmarks/photo_coverage.py`); a conditional one is
asked for each photo as often as the data holds it. (Tried at 112 kimg: it collapsed each class
without transitional conditioning and scored SWD 54.6 with it; see
generators/embedded/TRAINING_NOTES.md.)

Transitional conditioning (`transition_end_kimg` > 0; Shahbazi et al., ICLR 2022, "Collapse
by Conditioning"): class-conditional training on little data can collapse a class onto a few
images; this starts unconditional and fades the classes in. G's class embedding is weighted
by `transition` (0 -> 1, linear in kimg between `transition_start_kimg` and
`transition_end_kimg`), and D gets an unconditional logit (`TRANSITION_HEAD`, a dense layer on
its epilogue's fc features) beside the projection one: loss = unconditional + transition x
conditional, R1 on the unconditional logit. At 1 the networks are NVlabs' conditional ones;
export drops the extra head. With `init_from` an unconditional model, the run starts from it:
at transition 0 the widened networks compute exactly what it did.

`init_from` (a native model path) starts a new run from a trained G_ema and D, with fresh
optimiser states, as NVlabs' `--resume=network.pkl` does (G and G_ema both start from G_ema).

Resuming is exact: the state (params, EMA, optimiser moments, step) is an orbax checkpoint, the
crop bank is a pure function of the seed, and every step's randomness (streamed crops
included) is derived from (seed, step).
So a branch (`branch`: a new workdir that continues another run from one of its kept
checkpoints under a changed config) computes what that run resumed with the change would.

    python -m generators train --config embedded --workdir runs/embedded
    python -m generators export --workdir runs/embedded --out generators/embedded/model
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import pathlib
import shutil
import time
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from generators import augment, checkpoint, data, defects, mvtec, networks, trainer

log = logging.getLogger(__name__)

ADAM_BETAS = (0.0, 0.99)  # StyleGAN2's Adam: no first-moment momentum
ADAM_EPS = 1e-8
GRID_SEEDS = 16  # images in the periodic sample grid (4 x 4)
INIT_FROM_FILE = "init_from.json"  # in a workdir: metadata of the model a fine-tuning run began at
BRANCH_FILE = "branched_from.json"  # in a workdir: the run and step a branch began at (`branch`)
CLASS_NAMES = ("clean", "defect")  # one-hot label order with data.defect_labels
# Config fields added after runs were started, with the value that means "off" (for ada_ops:
# all five, as before it existed): a run whose saved config lacks one ran without it (resume
# and the model card read it so).
FIELDS_ADDED_OFF = {"lr_rampdown": 0.0, "ada_target": 0.0, "ada_ops": ",".join(augment.OPS),
                    "data.defect_labels": False,
                    "transition_start_kimg": 0.0, "transition_end_kimg": 0.0,
                    "data.mvtec_root": "", "data.mvtec_category": "",
                    "data.mvtec_splits": "train,test", "data.mvtec_dihedral": "auto",
                    "data.rotations": "quarter", "data.photo_labels": False,
                    "r1_gamma_late": 0.0, "r1_gamma_late_kimg": 0.0}
MASK_ON = 127  # uint8 mask channel: a defect pixel is above this
MVTEC_DIHEDRAL = {"auto": None, "yes": True, "no": False}  # config -> mvtec.training_images
TRANSITION_HEAD = "transition_out"  # in d_params: D's unconditional logit while transitioning


class TrainState(NamedTuple):
  step: jax.Array  # [] int32, completed steps
  g_params: Any
  g_buffers: Any  # w_avg, noise_const
  ema: Any  # G_ema variables {'params', 'buffers'}
  d_params: Any
  g_opt: Any
  d_opt: Any
  augment_p: jax.Array  # [] float32, ADA's augmentation probability (0 while ADA is off)


def model_configs(config: ml_collections.ConfigDict, resolution: int, channels: int):
  m = config.model
  c_dim = len(class_names(config))
  g = networks.GeneratorConfig(
      z_dim=m.z_dim, c_dim=c_dim, w_dim=m.w_dim, img_resolution=resolution,
      img_channels=channels, mapping_layers=m.mapping_layers, channel_base=m.channel_base,
      channel_max=m.channel_max, conv_clamp=m.conv_clamp)
  d = networks.DiscriminatorConfig(
      img_resolution=resolution, img_channels=channels, c_dim=c_dim,
      channel_base=m.channel_base, channel_max=m.channel_max, conv_clamp=m.conv_clamp,
      mbstd_group_size=m.mbstd_group_size)
  return g, d


def class_names(config) -> tuple[str, ...]:
  """The classes of a conditional run, in one-hot order: `CLASS_NAMES` with
  `data.defect_labels`, the photos (`data.SOURCES`) with `data.photo_labels`, else none."""
  by_defect = bool(config.data.get("defect_labels"))
  by_photo = bool(config.data.get("photo_labels"))
  if by_defect and by_photo:
    raise ValueError("--config.data.defect_labels and --config.data.photo_labels both set; a run "
                     "has one kind of class label, choose one.")
  return CLASS_NAMES if by_defect else tuple(data.SOURCES) if by_photo else ()


def photo_labels(photos: np.ndarray) -> np.ndarray:
  """float32 [N, len(data.SOURCES)] one-hot of photo indices [N]."""
  return np.eye(len(data.SOURCES), dtype=np.float32)[np.asarray(photos)]


def defect_labels(images: np.ndarray) -> np.ndarray:
  """float32 [N, 2] one-hot (`CLASS_NAMES`) of uint8 [N, H, W, 4] crops: does the mask channel
  hold any defect pixel."""
  has_defect = (images[..., 3] > MASK_ON).any(axis=(1, 2))
  return np.eye(len(CLASS_NAMES), dtype=np.float32)[has_defect.astype(int)]


def _optimizers(config):
  g_opt = optax.adam(config.g_lr, *ADAM_BETAS, eps=ADAM_EPS)
  d_opt = optax.adam(config.d_lr, *ADAM_BETAS, eps=ADAM_EPS)
  return g_opt, d_opt


def transitional(config) -> bool:
  """Whether the run fades class conditioning in (see the module docstring)."""
  return bool(class_names(config)) and config.get("transition_end_kimg", 0.0) > 0


def transition(config, step: int) -> float:
  """Weight of the class conditioning at `step`: 0 until `transition_start_kimg`, linear to 1
  at `transition_end_kimg`; 1 without transitional conditioning."""
  if not transitional(config):
    return 1.0
  kimg = step * config.batch_size / 1000
  start, end = config.transition_start_kimg, config.transition_end_kimg
  return float(np.clip((kimg - start) / max(end - start, 1e-9), 0.0, 1.0))


def _transition_head(d_config) -> networks.FullyConnectedLayer:
  return networks.FullyConnectedLayer(d_config.channels(4), 1, name=TRANSITION_HEAD)


def _without_head(d_params: dict) -> dict:
  """D's params as NVlabs' Discriminator has them (without `TRANSITION_HEAD`)."""
  return {k: v for k, v in d_params.items() if k != TRANSITION_HEAD}


def _init_networks(config, g_config, d_config) -> tuple[dict, dict]:
  """Freshly initialised (G variables, D params), with D's transition head if the run has one."""
  g_key, d_key = jax.random.split(jax.random.PRNGKey(config.seed))
  g_vars = networks.init_generator(g_config, g_key)
  d_params = networks.init_discriminator(d_config, d_key)["params"]
  if transitional(config):
    head = _transition_head(d_config)
    d_params = {**d_params, TRANSITION_HEAD: head.init(
        jax.random.fold_in(d_key, 1), jnp.zeros((1, head.in_features)))["params"]}
  return g_vars, d_params


def init_state(config, g_config, d_config) -> TrainState:
  return _fresh_state(config, *_init_networks(config, g_config, d_config))


def _fresh_state(config, g_vars, d_params) -> TrainState:
  """Step 0 with G = G_ema = `g_vars` and fresh optimiser states (each tree its own copy: the
  steps donate the state)."""
  g_opt, d_opt = _optimizers(config)
  copy = lambda tree: jax.tree_util.tree_map(jnp.array, tree)
  return TrainState(jnp.zeros((), jnp.int32), copy(g_vars["params"]), copy(g_vars["buffers"]),
                    copy(g_vars), copy(d_params), g_opt.init(g_vars["params"]),
                    d_opt.init(d_params), jnp.zeros((), jnp.float32))


def init_state_from(config, g_config, d_config,
                    path_or_model: str | pathlib.Path | checkpoint.Model) -> TrainState:
  """A fresh TrainState whose G, G_ema and D are a saved model's G_ema and D (fine-tuning)."""
  model = (path_or_model if isinstance(path_or_model, checkpoint.Model)
           else checkpoint.load(path_or_model))
  unconditional = dataclasses.replace(g_config, c_dim=0), dataclasses.replace(d_config, c_dim=0)
  if (transitional(config) and (model.g_config, model.d_config) == unconditional
      and model.d_vars is not None):
    return _fresh_state(config, *_widen_to_conditional(config, g_config, d_config, model))
  if model.g_config != g_config or model.d_config != d_config:
    raise ValueError("The init_from model does not match the config's networks:\n"
                     f"  model:  {model.g_config}\n          {model.d_config}\n"
                     f"  config: {g_config}\n          {d_config}\n"
                     "Set config.model (and data.resolution, data.defect_labels) to the "
                     "model's architecture; an unconditional model can start a conditional run "
                     "with transitional conditioning (transition_end_kimg > 0).")
  if transitional(config):
    raise ValueError("Transitional conditioning starts from an unconditional model (or from "
                     "scratch); this init_from model is already conditional.")
  return _fresh_state(config, model.g_vars, model.d_vars["params"])


def _widen_to_conditional(config, g_config, d_config, model: checkpoint.Model):
  """(G variables, D params) of the conditional networks that compute, at transition 0, exactly
  what the unconditional `model` does: its mapping's first layer gains fresh input rows for the
  class embedding (the z rows rescaled for the wider equalised-lr gain), D's old `out` layer
  becomes the unconditional `TRANSITION_HEAD`, and the class embedding, D's mapping and its
  projection `out` start fresh."""
  fresh_g, fresh_d = _init_networks(config, g_config, d_config)
  g_params = jax.tree_util.tree_map(jnp.asarray, model.g_vars["params"])
  fc0_old = g_params["mapping"]["fc0"]["weight"]
  fc0_new = fresh_g["params"]["mapping"]["fc0"]["weight"]
  gain_ratio = math.sqrt(fc0_new.shape[0] / fc0_old.shape[0])  # lr_mult / sqrt(in_features)
  mapping = {**g_params["mapping"], "embed": fresh_g["params"]["mapping"]["embed"],
             "fc0": {**g_params["mapping"]["fc0"], "weight": jnp.concatenate(
                 [fc0_old * gain_ratio, fc0_new[fc0_old.shape[0]:]], axis=0)}}
  g_vars = {"params": {**g_params, "mapping": mapping}, "buffers": model.g_vars["buffers"]}
  old_d = model.d_vars["params"]
  d_params = {**old_d, "mapping": fresh_d["mapping"],
              "b4": {**old_d["b4"], "out": fresh_d["b4"]["out"]},
              TRANSITION_HEAD: old_d["b4"]["out"]}
  return g_vars, d_params


def _generate(g_config, g_params, g_buffers, key, c, c_scale, batch, style_mixing_prob,
              batch_sharding):
  """Fakes (labels `c`, None if unconditional, weighted by `c_scale`) with style mixing and
  random noise; returns (images, updated buffers)."""
  z_key, z2_key, cut_key, mix_key, noise_key = jax.random.split(key, 5)
  shard = lambda x: jax.lax.with_sharding_constraint(x, batch_sharding)
  z = shard(jax.random.normal(z_key, (batch, g_config.z_dim)))
  gen = networks.Generator(g_config)
  variables = {"params": g_params, "buffers": g_buffers}
  ws, updates = gen.apply(variables, z, c, 1.0, None, True, c_scale, mutable=["buffers"],
                          method=lambda g, *a: g.mapping(*a))
  if style_mixing_prob > 0:
    z2 = shard(jax.random.normal(z2_key, z.shape))
    ws2 = gen.apply(variables, z2, c, 1.0, None, False, c_scale,
                    method=lambda g, *a: g.mapping(*a))
    num_ws = g_config.num_ws
    cutoff = jax.random.randint(cut_key, (), 1, num_ws)
    cutoff = jnp.where(jax.random.uniform(mix_key) < style_mixing_prob, cutoff, num_ws)
    ws = jnp.where(jnp.arange(num_ws)[None, :, None] < cutoff, ws, ws2)
  img = gen.apply(variables, ws, "random", None, rngs={"noise": noise_key},
                  method=lambda g, *a: g.synthesis(*a))
  return img, updates["buffers"]


def step_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` less what the compiled steps do not depend on, so that runs differing only there
  share one compilation."""
  out = config.copy_and_resolve_references()
  out.total_kimg = 0.0  # the run length
  out.init_from = None  # the initialisation
  out.lr_rampdown = 0.0  # the schedules (per-step arguments)
  out.r1_gamma = out.r1_gamma_late = out.r1_gamma_late_kimg = 0.0
  out.data = ml_collections.ConfigDict(  # the data, beyond the class labels
      {key: bool(config.data.get(key)) for key in ("defect_labels", "photo_labels")})
  return out


@functools.lru_cache(maxsize=4)
def _cached_steps(config_json: str, g_config, d_config, devices: tuple):
  """make_steps, memoised so that resuming in the same process does not recompile."""
  config = ml_collections.ConfigDict(json.loads(config_json))
  return make_steps(config, g_config, d_config, Mesh(np.array(devices), ("data",)))


def make_steps(config, g_config, d_config, mesh: Mesh):
  """Compiled G step and D steps (without / with R1) for this mesh."""
  batch = config.batch_size
  batch_sharding = NamedSharding(mesh, P("data"))
  disc = networks.Discriminator(d_config)
  g_opt, d_opt = _optimizers(config)
  generate = functools.partial(_generate, g_config, batch=batch,
                               style_mixing_prob=config.style_mixing_prob,
                               batch_sharding=batch_sharding)

  ada_target = config.get("ada_target") or 0.0
  if ada_target:
    images_per_unit = augment.ada_images_per_unit(config.ada_kimg)
    ada_ops = augment.parse_ops(config.get("ada_ops", augment.OPS))

  def seen_by_d(images, key, p):  # D's view: ADA-augmented when ADA is on
    return augment.augment(images, key, p, ada_ops) if ada_target else images

  head = _transition_head(d_config) if transitional(config) else None

  def logits(d_params, images, c):
    """D's logits [B, 1]: (the loss's first term, R1's and ADA's; the conditional logits that
    transitional conditioning weighs in, else None)."""
    if head is None:
      return disc.apply({"params": d_params}, images, c), None
    feats = disc.apply({"params": _without_head(d_params)}, images, c,
                       method=networks.Discriminator.features)
    return head.apply({"params": d_params[TRANSITION_HEAD]}, feats["b4_fc"]), feats["logits"]

  def softplus_loss(scores, sign, c_scale):
    """mean softplus(sign * logits), the conditional term (if any) weighted by `c_scale`."""
    first, conditional = scores
    loss = jnp.mean(jax.nn.softplus(sign * first))
    return loss if conditional is None else loss + c_scale * jnp.mean(
        jax.nn.softplus(sign * conditional))

  def g_step(state: TrainState, key, ema_beta, lr_scale, gen_c=None, c_scale=1.0):
    """One G step; `gen_c`: the fakes' labels (None: unconditional), `c_scale`: `transition`."""
    gen_key, aug_key = jax.random.split(key)

    def loss_fn(g_params):
      img, buffers = generate(g_params, state.g_buffers, gen_key, gen_c, c_scale)
      scores = logits(state.d_params, seen_by_d(img, aug_key, state.augment_p), gen_c)
      return softplus_loss(scores, -1.0, c_scale), buffers

    (loss, buffers), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.g_params)
    updates, g_opt_state = g_opt.update(grads, state.g_opt, state.g_params)
    g_params = optax.apply_updates(state.g_params, _scaled(updates, lr_scale))
    ema_params = jax.tree_util.tree_map(lambda e, p: p + ema_beta * (e - p),
                                        state.ema["params"], g_params)
    ema = {"params": ema_params, "buffers": buffers}
    state = state._replace(g_params=g_params, g_buffers=buffers, ema=ema, g_opt=g_opt_state)
    return state, {"g_loss": loss}

  def d_step(state: TrainState, real, key, lr_scale, r1_gamma, real_c=None, gen_c=None,
             c_scale=1.0, *, with_r1: bool):
    """One D step; `r1_gamma`: R1's weight (`r1_gamma_at`), `real_c`, `gen_c`: the reals' and
    the fakes' labels (None: unconditional), `c_scale`: `transition`."""
    gen_key, fake_aug_key, real_aug_key = jax.random.split(key, 3)
    fake, _ = generate(state.g_params, state.g_buffers, gen_key, gen_c, c_scale)
    fake = jax.lax.stop_gradient(fake)

    def loss_fn(d_params):
      d = lambda x, k, c: logits(d_params, seen_by_d(x, k, state.augment_p), c)
      fake_scores = d(fake, fake_aug_key, gen_c)
      if with_r1:  # R1 on the reals before augmentation, as NVlabs does
        real_scores, vjp = jax.vjp(lambda x: d(x, real_aug_key, real_c), real)
        (real_grad,) = vjp((jnp.ones_like(real_scores[0]),
                            None if real_scores[1] is None else jnp.zeros_like(real_scores[1])))
        r1 = jnp.mean(jnp.sum(jnp.square(real_grad), axis=(1, 2, 3)))
      else:
        real_scores, r1 = d(real, real_aug_key, real_c), jnp.zeros(())
      main = softplus_loss(fake_scores, 1.0, c_scale) + softplus_loss(real_scores, -1.0, c_scale)
      total = main + (r1_gamma / 2) * r1 * config.r1_interval
      return total, ({"d_loss": main, "r1": r1, "real_score": jnp.mean(real_scores[0]),
                      "fake_score": jnp.mean(fake_scores[0])}, real_scores[0])

    grads, (metrics, real_logits) = jax.grad(loss_fn, has_aux=True)(state.d_params)
    updates, d_opt_state = d_opt.update(grads, state.d_opt, state.d_params)
    d_params = optax.apply_updates(state.d_params, _scaled(updates, lr_scale))
    augment_p = state.augment_p
    if ada_target:
      augment_p = augment.adjust_p(augment_p, real_logits, ada_target, images_per_unit)
    metrics["augment_p"] = augment_p
    return state._replace(d_params=d_params, d_opt=d_opt_state, step=state.step + 1,
                          augment_p=augment_p), metrics

  g_step = jax.jit(g_step, donate_argnums=0)
  d_plain = jax.jit(functools.partial(d_step, with_r1=False), donate_argnums=0)
  d_r1 = jax.jit(functools.partial(d_step, with_r1=True), donate_argnums=0)
  return g_step, d_plain, d_r1


def _scaled(updates, scale):
  """Adam's step is linear in its learning rate: scaling the update scales the rate."""
  return jax.tree_util.tree_map(lambda u: u * scale, updates)


def lr_scale(config, step: int, total_steps: int) -> float:
  """Learning-rate factor at `step`: 1, then a cosine ramp to 0 over the last `lr_rampdown`
  fraction of the run (the NVlabs projector's ramp-down, applied to G and D alike)."""
  rampdown = config.get("lr_rampdown", 0.0)
  if not rampdown:
    return 1.0
  ramp = min(1.0, (1.0 - step / total_steps) / rampdown)
  return 0.5 - 0.5 * math.cos(math.pi * ramp)


def r1_gamma_at(config, step: int) -> float:
  """R1's weight at `step`: `r1_gamma`, then `r1_gamma_late` from `r1_gamma_late_kimg` on (when
  set). A stronger penalty once G draws the textures keeps D's logits from running away from
  G's (generators/embedded/TRAINING_NOTES.md: from scratch it slows G down)."""
  late = config.get("r1_gamma_late", 0.0)
  if late and step * config.batch_size / 1000 >= config.r1_gamma_late_kimg:
    return late
  return config.r1_gamma


def ema_beta(config, step: int) -> float:
  """G EMA decay per step, with NVlabs' ramp-up (half-life <= ema_rampup * images seen)."""
  ema_nimg = config.ema_kimg * 1000
  if config.ema_rampup:
    ema_nimg = min(ema_nimg, step * config.batch_size * config.ema_rampup)
  return 0.5 ** (config.batch_size / max(ema_nimg, 1e-8))


def streams_crops(config) -> bool:
  """`data.num_crops` = 0 on the skimage textures: fresh crops, with freshly painted defects,
  every step instead of a bank drawn once (the photos hold ~10^6 distinct crops). The
  default since the fresh-crops model shipped (the same
  quality in two thirds of the training of the bank-trained model before it;
  generators/embedded/TRAINING_NOTES.md). That
  model's D had not memorised its 20k bank (mean logit +3.9 on 500 of its crops, +4.2 on 500
  new crops painted alike); what it scored was defects (-1.1 on new clean crops)."""
  return not config.data.get("mvtec_root") and config.data.num_crops == 0


def training_set(config, resolution: int) -> np.ndarray:
  """uint8 [N, H, W, 4]: RGB + mask channel (0/255). The skimage texture crops with procedural
  defects (a pure function of the seed), or a real MVTec AD category when
  `config.data.mvtec_root` is set."""
  if config.data.get("mvtec_root"):
    if not config.data.get("mvtec_category"):
      raise ValueError("--config.data.mvtec_root needs --config.data.mvtec_category (e.g. "
                       f"carpet; one of {', '.join(mvtec.CATEGORIES)}).")
    if config.data.mvtec_dihedral not in MVTEC_DIHEDRAL:
      raise ValueError(f"--config.data.mvtec_dihedral must be one of {', '.join(MVTEC_DIHEDRAL)}"
                       f", got {config.data.mvtec_dihedral!r}.")
    return mvtec.training_images(config.data.mvtec_root, config.data.mvtec_category,
                                 resolution, config.data.mvtec_splits.split(","),
                                 MVTEC_DIHEDRAL[config.data.mvtec_dihedral])
  return _defect_crops(config, config.data.num_crops, resolution, config.seed).images


def _defect_crops(config, num: int, resolution: int, seed) -> defects.DefectDataset:
  """`num` skimage texture crops (uint8 [num, H, W, 4] and their photos), a
  `data.defect_fraction` of them with a defect."""
  return defects.defect_dataset(num, size=resolution, defect_fraction=config.data.defect_fraction,
                                rotations=config.data.rotations, seed=seed)


def real_batch(config, bank: np.ndarray | None, bank_labels: np.ndarray | None,
               conditional: bool, resolution: int, rng: np.random.Generator):
  """One step's reals, uint8 [B, H, W, 4], and for a conditional run their labels and two
  draws of fakes' labels (G's and D's step), each [B, c_dim] (else None). Reals are rows of
  `bank` (labels `bank_labels`), or fresh crops when it is None (`streams_crops`). Fakes'
  labels are those of random training crops (NVlabs' gen_c); for fresh crops, shuffles of the
  reals' labels, which hold the training set's number of defects (`_defect_crops` paints
  exactly round(fraction x B)), or of each photo (`data.photo_labels`)."""
  if bank is None:
    crops = _defect_crops(config, config.batch_size, resolution, rng)
    real = crops.images
    if not conditional:
      return real, None, None, None
    real_c = (photo_labels(crops.photos) if config.data.get("photo_labels")
              else defect_labels(real))
    return real, real_c, rng.permutation(real_c), rng.permutation(real_c)
  index = rng.integers(0, len(bank), config.batch_size)
  if not conditional:
    return bank[index], None, None, None
  return bank[index], *(bank_labels[i] for i in (
      index, rng.integers(0, len(bank), config.batch_size),
      rng.integers(0, len(bank), config.batch_size)))


# Fields a resumed run may change: how long it runs (to extend a run past its planned end) and
# its bookkeeping; neither changes a step's result. Not the length with `lr_rampdown` set: the
# learning-rate schedule is a function of it.
RESUME_MAY_CHANGE = ("total_kimg", "log_every", "sample_every", "checkpoint_every",
                     "keep_checkpoints", "keep_checkpoint_every")


def _resumes(saved: dict, config: ml_collections.ConfigDict) -> bool:
  """Whether a run saved with config `saved` (JSON) can go on under `config`."""
  may_change = set(RESUME_MAY_CHANGE) - ({"total_kimg"} if config.get("lr_rampdown") else set())
  keep = lambda tree: {k: v for k, v in tree.items() if k not in may_change}
  return keep(with_added_fields(saved)) == keep(json.loads(config.to_json()))


def with_added_fields(saved: dict) -> dict:
  """A saved run config (JSON) with the `FIELDS_ADDED_OFF` it lacks set to their off values."""
  out = json.loads(json.dumps(saved))
  for dotted, off in FIELDS_ADDED_OFF.items():
    *parents, leaf = dotted.split(".")
    node = out
    for part in parents:
      node = node.setdefault(part, {})
    node.setdefault(leaf, off)
  return out


RUN_LAYOUT = ("a training workdir is the --workdir of `python -m generators train`: it holds "
              "config.json, checkpoints/ (one folder per kept step), metrics.jsonl and samples/")


def _checkpoint_manager(workdir: pathlib.Path, config: ml_collections.ConfigDict):
  return trainer.checkpoint_manager(workdir, config)


def branch(source: str | pathlib.Path, step: int, workdir: str | pathlib.Path,
           config: ml_collections.ConfigDict) -> None:
  """Start `workdir` as a branch of the run in `source` at its kept checkpoint `step`: that
  checkpoint and the metrics up to it are copied, so `train(config, workdir)` continues the run
  from there under `config`, which may change anything but the networks (another R1 weight or
  learning-rate schedule from that step on). `BRANCH_FILE` records the source and its config;
  `export` puts it in the model's metadata. Called again for the same branch, it does nothing,
  so that the branching command also resumes."""
  source, workdir = pathlib.Path(source), pathlib.Path(workdir)
  if (workdir / BRANCH_FILE).exists():  # the same command again, after a kill: resume the branch
    done = json.loads((workdir / BRANCH_FILE).read_text())
    if (done["path"], done["step"]) == (str(source), step):
      return
  trainer.require_run(source, "to branch from", RUN_LAYOUT)
  checkpoints = workdir / "checkpoints"
  if checkpoints.exists() and any(checkpoints.iterdir()):
    raise ValueError(f"{workdir} already holds a run; branch into a new --workdir.")
  saved = json.loads((source / "config.json").read_text())
  source_config = ml_collections.ConfigDict(with_added_fields(saved))
  if (model_configs(source_config, source_config.data.resolution, 4)
      != model_configs(config, config.data.resolution, 4)):
    raise ValueError(f"The config's networks differ from those of the run in {source}; a branch "
                     "continues the same networks (to start new ones from a trained model, use "
                     "--config.init_from with an exported model).")
  trainer.require_kept(source, _checkpoint_manager(source, source_config).all_steps(), [step])
  shutil.copytree(source / "checkpoints" / str(step), checkpoints / str(step))
  if (source / "metrics.jsonl").exists():
    shutil.copy(source / "metrics.jsonl", workdir / "metrics.jsonl")
    trainer.drop_records_after(workdir / "metrics.jsonl", step)
  if (source / INIT_FROM_FILE).exists():  # a branch of a fine-tuning run starts where it did
    shutil.copy(source / INIT_FROM_FILE, workdir / INIT_FROM_FILE)
  (workdir / BRANCH_FILE).write_text(json.dumps(
      {"path": str(source), "step": step, "train_config": saved}))
  log.info("Branched %s from %s at step %d.", workdir, source, step)


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> TrainState:
  """Train (or resume) in `workdir`: checkpoints/, samples/, metrics.jsonl, config.json."""
  from tqdm import tqdm

  if config.data.get("photo_labels") and not streams_crops(config):
    raise ValueError("--config.data.photo_labels needs fresh skimage crops (data.num_crops=0, no "
                     "data.mvtec_root): the photo of a bank or MVTec image is not recorded.")
  class_names(config)  # one kind of label at most
  may_change = RESUME_MAY_CHANGE if not config.get("lr_rampdown") else tuple(
      f for f in RESUME_MAY_CHANGE if f != "total_kimg")  # the schedule depends on the length
  workdir = trainer.prepare_workdir(workdir, config, lambda saved: _resumes(saved, config),
                                    may_change)

  resolution = config.data.resolution
  g_config, d_config = model_configs(config, resolution, channels=4)
  mesh, replicated, batch_sharding = trainer.data_mesh(config.batch_size)
  devices = tuple(mesh.devices.flat)

  manager = _checkpoint_manager(workdir, config)
  if config.get("init_from") and manager.latest_step() is None:
    start_model = checkpoint.load(config.init_from)
    state = init_state_from(config, g_config, d_config, start_model)
    # What export records about the starting model, kept here in case that model moves.
    start = start_model.metadata
    if trainer.is_main():
      trainer.write_text_atomic(workdir / INIT_FROM_FILE, json.dumps({
          "path": str(config.init_from), **{k: start[k] for k in (
              "training_steps", "kimg", "total_kimg_trained", "train_config") if k in start}}))
  else:
    state = init_state(config, g_config, d_config)  # a fresh start, or the restore template
  if manager.latest_step() is not None:
    state = trainer.restore(manager, state)
    log.info("Resumed %s at step %d.", workdir, manager.latest_step())
  state = jax.device_put(state, replicated)
  g_step, d_plain, d_r1 = _cached_steps(step_config(config).to_json(), g_config, d_config,
                                        devices)

  bank = None if streams_crops(config) else training_set(config, resolution)
  conditional = bool(g_config.c_dim)
  bank_labels = defect_labels(bank) if conditional and bank is not None else None
  total_steps = int(round(config.total_kimg * 1000 / config.batch_size))
  grid_z = jax.random.normal(jax.random.PRNGKey(config.seed + 1), (GRID_SEEDS, g_config.z_dim))
  grid_c = None  # conditional: the grid's rows split evenly over the classes, in order
  if conditional:
    grid_c = np.eye(g_config.c_dim, dtype=np.float32)[
        np.arange(GRID_SEEDS) * g_config.c_dim // GRID_SEEDS]
  start = int(state.step)
  bar = tqdm(total=total_steps, initial=start, unit="step", dynamic_ncols=True,
             desc=f"train {workdir.name}", disable=not trainer.is_main())
  records = trainer.Records(workdir, start)
  t0 = time.time()
  last_r1 = jnp.full((), jnp.nan)  # the latest R1 penalty (it runs every r1_interval steps)
  for step in range(start, total_steps):
    rng = np.random.default_rng([config.seed, step])
    real, *classes = real_batch(config, bank, bank_labels, conditional, resolution, rng)
    real, real_c, g_gen_c, d_gen_c = trainer.place_batch(
        (data.to_model_range(real), *classes), batch_sharding)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), step)
    g_key, d_key = jax.random.split(key)
    scale = lr_scale(config, step, total_steps)
    gamma = r1_gamma_at(config, step)
    c_scale = transition(config, step)
    state, g_metrics = g_step(state, g_key, ema_beta(config, step), scale, g_gen_c, c_scale)
    if step % config.r1_interval == 0:
      state, d_metrics = d_r1(state, real, d_key, scale, gamma, real_c, d_gen_c, c_scale)
      last_r1 = d_metrics.pop("r1")  # logged with the next record
    else:
      state, d_metrics = d_plain(state, real, d_key, scale, gamma, real_c, d_gen_c, c_scale)
      d_metrics.pop("r1")
    done = step + 1
    bar.update(1)
    if trainer.due(done, config.log_every, total_steps):
      record = {k: float(v) for k, v in {**g_metrics, **d_metrics, "r1": last_r1}.items()}
      record.update(step=done, kimg=done * config.batch_size / 1000, lr_scale=scale,
                    r1_gamma=gamma, seconds=round(time.time() - t0, 1))
      if transitional(config):
        record["transition"] = c_scale
      records.write(record, may_be_nan=("r1",))  # NaN r1: no R1 step since (re)starting
      bar.set_postfix(g=f"{record['g_loss']:.3f}", d=f"{record['d_loss']:.3f}")
    if trainer.grid_due(done, config.sample_every, total_steps):
      ema = jax.device_get(state.ema)
      images = networks.synthesis(g_config, ema, networks.mapping(
          g_config, ema, grid_z, grid_c, c_scale=transition(config, done)))
      trainer.grid_png(np.asarray(images), workdir / "samples" / f"step{done:06d}.png")
    if trainer.due(done, config.checkpoint_every, total_steps):
      trainer.save(manager, done, state)
  trainer.finish(manager, bar, records)
  return state


def export(workdir: str | pathlib.Path, out: str | pathlib.Path,
           metadata: dict | None = None,
           step: int | Sequence[int] | None = None) -> pathlib.Path:
  """Write G_ema and D of `workdir`'s checkpoint at `step` (default: the latest) as a native
  model at `out`.

  Several steps: their G_ema weights (buffers included) are averaged uniformly (snapshot
  averaging, the "SWA" of Izmailov et al., 2018): on a small dataset the snapshots swing from
  one to the next, and their mean sits inside the swing (on the channel_max 128 run it matched
  the best snapshot's SWD) but fades what the snapshots draw in different places (that run's
  defect masks: generators/embedded/TRAINING_NOTES.md). D and the metadata's step are the latest
  step's; the metadata lists every averaged step.
  """
  workdir = pathlib.Path(workdir)
  trainer.require_run(workdir, "to export", RUN_LAYOUT)
  config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  g_config, d_config = model_configs(config, config.data.resolution, channels=4)
  manager = _checkpoint_manager(workdir, config)
  kept = manager.all_steps()
  if not kept:
    raise FileNotFoundError(f"No checkpoint in {workdir}/checkpoints to export.")
  steps = sorted({max(kept)} if step is None else set(map(int, np.atleast_1d(step))))
  trainer.require_kept(workdir, kept, steps)
  template = init_state(config, g_config, d_config)
  restore = lambda s: trainer.restore(manager, template, s)
  step = steps[-1]
  state = restore(step)
  emas = [restore(s).ema for s in steps[:-1]] + [state.ema]
  ema = jax.tree_util.tree_map(lambda *leaves: sum(leaves) / len(leaves), *emas)
  meta = {"training_steps": step, "kimg": step * config.batch_size / 1000,
          "train_config": json.loads(config.to_json()), **(metadata or {})}
  if len(steps) > 1:
    meta["averaged_steps"] = steps
  if g_config.c_dim:
    meta["class_names"] = list(class_names(config))
  if (workdir / INIT_FROM_FILE).exists():  # a fine-tuning run: add the starting model's kimg
    start = json.loads((workdir / INIT_FROM_FILE).read_text())
    meta["total_kimg_trained"] = start.pop("total_kimg_trained", start.get("kimg", 0.0)) \
        + meta["kimg"]
    meta["init_from"] = start
  if (workdir / BRANCH_FILE).exists():  # the run was branched from another one (`branch`)
    meta["branched_from"] = json.loads((workdir / BRANCH_FILE).read_text())
  if transition(config, min(steps)) < 1:
    log.warning("Step %d is %.0f%% through the run's transitional conditioning; the exported G "
                "weighs the classes fully (NVlabs' conditional networks have no such weight).",
                min(steps), 100 * transition(config, min(steps)))
  model = checkpoint.Model(g_config, ema, d_config,
                           {"params": _without_head(state.d_params)}, meta)
  return checkpoint.save(out, model, overwrite=True)
