"""One compiled optimisation engine for StyleGAN2 inversion.

A method (Image2StyleGAN, the NVlabs projector, ...) is a bundle of small pure pieces: a latent
parametrisation (`space`), image loss terms (`ImageTerm`), optional latent terms (`LatentTerm`,
the hook for e.g. an encoder regulariser) and an optax optimiser. The engine owns the loop:

  1. every image has its own latents and optimiser state; one step is written for one image and
     `vmap`ped over the batch, so a batch of 8 computes what 8 single runs compute. The vmap
     runs over groups of `micro_batch` images, one group after another (`Engine.group_size`):
     on CPU one image at a time by default, which keeps activations in cache (256 px, batch 16:
     20.1 vs 27.1 s/step fully vectorised), on accelerators the whole batch;
  2. up to `chunk_size` steps run inside one compiled program (`lax.scan`; the steps are
     spread evenly over the chunks, `steps_per_chunk`: 5 steps are one scan of 5); between
     chunks the host updates the progress bar, reports non-finite losses and may checkpoint.
     What does not depend on the latents (work on the weights alone, the targets' features) is
     computed once per chunk, outside the scan (`hoist_invariants`), and kept for the chunk: the
     Image2StyleGAN VGG16 features of a 256 px target take 40 MB per image;
  3. everything that changes between batches (targets, masks, generator weights, loss-network
     weights, keys, w_std) is an *argument* of the compiled program, and the last chunk is
     padded with no-op steps, so a job compiles once per (spec, batch shape), never per image or
     per chunk (`Engine.trace_count` counts traces);
  4. a step whose loss or gradient is not finite is not applied: that image stops
     (`failed`, `failed_step`) and keeps `last_finite`, its latents at the last finite step; the
     other images go on;
  5. the batch axis can be sharded over devices (`batch_mesh`, `shard`): a 1-D mesh, images split
     across devices, networks replicated.

Parametrisations (`LATENT_SPACES`), per image:

  'z'      z [z_dim] through the mapping network (Image2StyleGAN's Z space);
  'w'      one w [w_dim] broadcast to all num_ws layers (NVlabs projector);
  'wplus'  ws [num_ws, w_dim], one w per layer (Image2StyleGAN's W+).
  Any of them can also optimise the noise maps (`optimize_noise`): one [r, r] map per noise layer
  (`GeneratorConfig.noise_layers`), unit-variance, replacing the generator's stored maps.

Objective per image (all terms unweighted in the loss curves; `total` is the weighted sum):

  total = sum_i weight_i * image_term_i(G(ws), target, mask)          # 1. reconstruction
        + noise_regularize_weight * noise_regularizer(noise maps)      # 2. NVlabs noise regulariser
        + sum_j weight_j * latent_term_j(params, LatentContext)        # 3. latent terms (hook)

Image channels: image terms see the first `loss_channels` channels of both images (the RGB of an
RGB + defect-mask generator: the mask channel is free). Terms flagged `all_channels` (networks that
need the full input, e.g. the discriminator) get all C channels, with the channels outside the
loss copied from the target into the generated image, so they add no difference and no gradient.

Masks ([H, W, M] per image, 1 = pixel counts, 0 = ignored): each image term reads one channel
(`ImageTerm.mask_channel`, default 0; M = 1 is the usual one mask for every term) and ignores
masked-out pixels exactly (see `inversion.perceptual`); pixels outside the mask have no influence
on that term. A term can also read its own channel range (`ImageTerm.channels`).

The NVlabs projector pieces (stylegan2-ada-pytorch `projector.py`): the cosine ramp-down / linear
ramp-up learning-rate schedule (`projector_schedule`), Gaussian noise added to w with std
`w_std * factor * max(0, 1 - t / ramp)^2` (`latent_noise_scale`), the multi-scale
autocorrelation noise regulariser (`noise_regularizer`) and the per-step noise re-normalisation
(`normalize_noise`).

Most users call `inversion.api.invert`; this module is the layer underneath.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from generators import cache
from generators import networks

log = logging.getLogger(__name__)

Array = jax.Array
PyTree = Any

__all__ = [
    'LATENT_SPACES',
    'ChunkInfo',
    'Data',
    'Engine',
    'EngineSpec',
    'EngineState',
    'ImageTerm',
    'LatentContext',
    'LatentTerm',
    'Latents',
    'OptimizerSpec',
    'WStats',
    'batch_mesh',
    'class_labels',
    'hoist_invariants',
    'image_terms_loss',
    'estimate_w_stats',
    'is_sharded',
    'final_latents',
    'latent_noise_scale',
    'latent_shape',
    'latent_to_ws',
    'make_engine',
    'make_optimizer',
    'noise_regularizer',
    'normalize_noise',
    'projector_schedule',
    'run',
    'shard',
    'stored_noise',
]

LATENT_SPACES = ('z', 'w', 'wplus')
SCHEDULES = ('constant', 'projector')
OPTIMIZERS = ('adam', 'sgd')
NOISE_MODES = ('const', 'none')   # noise of layers whose maps are not optimised
W_STATS_SEED = 123                 # NVlabs projector draws its w samples from RandomState(123)
NORMALIZE_EPS = 1e-8


# ----------------------------------------------------------------------------------------------
# Latent parametrisations.


def latent_shape(g_config: networks.GeneratorConfig, space: str) -> tuple[int, ...]:
  """Per-image shape of the optimised latent: z [z_dim], w [w_dim] or ws [num_ws, w_dim]."""
  shapes = {'z': (g_config.z_dim,), 'w': (g_config.w_dim,),
            'wplus': (g_config.num_ws, g_config.w_dim)}
  if space not in shapes:
    raise ValueError(f'space must be one of {LATENT_SPACES}, got {space!r}')
  return shapes[space]


def class_labels(g_config: networks.GeneratorConfig, label: Optional[int], batch: int,
                 keys: Optional[Array] = None) -> Optional[Array]:
  """Mapping labels c [batch, c_dim]: None for an unconditional generator; one-hot `label`;
  or, with no label, one class per sample drawn uniformly from its key in `keys` [batch, 2]
  (the mix `w_avg` is tracked over)."""
  if not g_config.c_dim:
    if label is not None:
      raise ValueError(f'This generator is unconditional: drop the class label {label}.')
    return None
  if label is None:
    if keys is None:
      raise ValueError(f'This generator is conditional (c_dim={g_config.c_dim}): give the '
                       'class label (config.label) to map z.')
    draw = lambda k: jax.random.randint(k, (), 0, g_config.c_dim)
    return jax.nn.one_hot(jax.vmap(draw)(keys), g_config.c_dim)
  return jnp.broadcast_to(jax.nn.one_hot(label, g_config.c_dim), (batch, g_config.c_dim))


def latent_to_ws(g_config: networks.GeneratorConfig, g_vars: PyTree, space: str,
                 latent: Array, label: Optional[int] = None) -> Array:
  """latent [B, *latent_shape] -> ws [B, num_ws, w_dim] (mapping for 'z', with class `label`
  if the generator is conditional; broadcast for 'w')."""
  if space == 'z':
    c = class_labels(g_config, label, latent.shape[0])
    return networks.mapping(g_config, g_vars, latent, c)
  if space == 'w':
    return jnp.broadcast_to(latent[:, None, :], (latent.shape[0], g_config.num_ws,
                                                 g_config.w_dim))
  if space == 'wplus':
    return latent
  raise ValueError(f'space must be one of {LATENT_SPACES}, got {space!r}')


def stored_noise(g_config: networks.GeneratorConfig, g_vars: PyTree) -> dict[str, Array]:
  """The generator's stored `noise_const` maps, {layer name ('b8.conv0'): [r, r]}."""
  synth = g_vars['buffers']['synthesis']
  out = {}
  for name in g_config.noise_layers:
    block, layer = name.split('.')
    out[name] = jnp.asarray(synth[block][layer]['noise_const'], jnp.float32)
  return out


class WStats(NamedTuple):
  """Statistics of the mapping network's output, for initialisation and the projector."""
  w_avg: Array   # [w_dim] mean w: the `w_avg` buffer, or the sample mean when it is all zero
  w_std: Array   # [] RMS distance of sampled w from their mean (NVlabs projector's w_std)
  z_mean: Array  # [z_dim] the sampled z whose w is nearest to w_avg ('mean' init in Z space)


def estimate_w_stats(g_config: networks.GeneratorConfig, g_vars: PyTree,
                     num_samples: int = 10_000, seed: int = W_STATS_SEED,
                     chunk: int = 2048, label: Optional[int] = None) -> WStats:
  """Maps `num_samples` random z (PRNGKey(seed)) and returns `WStats`.

  w_std = sqrt(sum_i ||w_i - mean(w)||^2 / N), as the NVlabs projector computes it from 10k
  samples. w_avg is the generator's tracked `w_avg` buffer unless that is all zero (e.g. a
  generator converted from a file without it), then the sample mean. A conditional generator
  maps z with class `label` (then w_avg is that class's sample mean: the buffer mixes all
  classes), or, with no label, with uniformly drawn classes.
  """
  if num_samples < 1:
    raise ValueError(f'num_samples must be >= 1, got {num_samples}')
  z = jax.random.normal(jax.random.PRNGKey(seed), (num_samples, g_config.z_dim))
  c = class_labels(g_config, label, num_samples,
                   jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), 1), num_samples))
  chunk = min(chunk, num_samples)
  pad = -num_samples % chunk
  padded = lambda a: None if a is None else (
      jnp.concatenate([a, jnp.zeros((pad,) + a.shape[1:])]) if pad else a)
  zp, cp = padded(z), padded(c)
  fn = _mapping_fn(g_config)
  w = jnp.concatenate([fn(g_vars, zp[i:i + chunk], None if cp is None else cp[i:i + chunk])
                       for i in range(0, len(zp), chunk)])
  w = w[:num_samples]
  sample_mean = jnp.mean(w, axis=0)
  w_std = jnp.sqrt(jnp.sum(jnp.square(w - sample_mean)) / num_samples)
  buf = jnp.asarray(g_vars['buffers']['mapping']['w_avg'], jnp.float32)
  w_avg = sample_mean if label is not None else jnp.where(jnp.any(buf != 0), buf, sample_mean)
  nearest = jnp.argmin(jnp.sum(jnp.square(w - w_avg), axis=1))
  return WStats(w_avg, w_std, z[nearest])


@functools.lru_cache(maxsize=16)
def _mapping_fn(g_config):
  return jax.jit(lambda v, z, c: networks.mapping(g_config, v, z, c)[:, 0])


# ----------------------------------------------------------------------------------------------
# Noise maps (NVlabs projector).


def noise_regularizer(noise: Mapping[str, Array]) -> Array:
  """NVlabs multi-scale autocorrelation penalty of noise maps {name: [r, r]} -> [].

  For each map n, at every scale (halving by 2x2 average pooling until the map is 8x8 or
  smaller): mean(n * roll(n, 1, x))^2 + mean(n * roll(n, 1, y))^2, summed.
  """
  total = jnp.zeros((), jnp.float32)
  for n in noise.values():
    while True:
      total = total + jnp.square(jnp.mean(n * jnp.roll(n, 1, axis=1)))
      total = total + jnp.square(jnp.mean(n * jnp.roll(n, 1, axis=0)))
      if n.shape[0] <= 8:
        break
      r = n.shape[0] // 2
      n = n.reshape(r, 2, r, 2).mean(axis=(1, 3))
  return total


def normalize_noise(noise: Mapping[str, Array]) -> dict[str, Array]:
  """Each map [r, r] -> zero mean, unit mean square (NVlabs: after every step)."""
  out = {}
  for name, n in noise.items():
    n = n - jnp.mean(n)
    out[name] = n * jax.lax.rsqrt(jnp.mean(jnp.square(n)) + NORMALIZE_EPS)
  return out


# ----------------------------------------------------------------------------------------------
# Schedules and optimisers.


def projector_schedule(lr: float, num_steps: int, rampdown: float = 0.25,
                       rampup: float = 0.05) -> optax.Schedule:
  """NVlabs projector learning rate at step count c, t = c / num_steps:

    lr * (0.5 - 0.5 cos(pi * min(1, (1 - t) / rampdown))) * min(1, t / rampup)
  (a ramp length <= 0 switches that ramp off).
  """
  def schedule(count):
    t = jnp.asarray(count, jnp.float32) / num_steps
    ramp = jnp.ones_like(t)
    if rampdown > 0:
      ramp = jnp.minimum(1.0, (1.0 - t) / rampdown)
      ramp = 0.5 - 0.5 * jnp.cos(ramp * jnp.pi)
    if rampup > 0:
      ramp = ramp * jnp.minimum(1.0, t / rampup)
    return lr * ramp
  return schedule


def latent_noise_scale(step: Array, num_steps: int, factor: float, ramp: float) -> Array:
  """NVlabs projector: std of the noise added to w, in units of w_std:
  factor * max(0, 1 - t / ramp)^2, t = step / num_steps."""
  t = jnp.asarray(step, jnp.float32) / num_steps
  return factor * jnp.square(jnp.maximum(0.0, 1.0 - t / max(ramp, 1e-12)))


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """An optax optimiser with a schedule (hashable, so engines can be cached)."""
  name: str = 'adam'           # 'adam' | 'sgd'
  lr: float = 0.01             # peak learning rate
  b1: float = 0.9              # Adam beta1 (sgd: momentum, 0 = none)
  b2: float = 0.999            # Adam beta2
  eps: float = 1e-8            # Adam epsilon
  schedule: str = 'constant'   # 'constant' | 'projector' (cosine ramp-down, linear ramp-up)
  rampdown: float = 0.25       # projector: fraction of steps of the cosine ramp-down
  rampup: float = 0.05         # projector: fraction of steps of the linear ramp-up


def make_optimizer(spec: OptimizerSpec, num_steps: int) -> optax.GradientTransformation:
  """OptimizerSpec -> optax transformation (the schedule reads the optimiser's step count)."""
  if spec.schedule == 'constant':
    lr = spec.lr
  elif spec.schedule == 'projector':
    lr = projector_schedule(spec.lr, num_steps, spec.rampdown, spec.rampup)
  else:
    raise ValueError(f'schedule must be one of {SCHEDULES}, got {spec.schedule!r}')
  if spec.name == 'adam':
    return optax.adam(lr, b1=spec.b1, b2=spec.b2, eps=spec.eps)
  if spec.name == 'sgd':
    return optax.sgd(lr, momentum=spec.b1 or None)
  raise ValueError(f'optimizer must be one of {OPTIMIZERS}, got {spec.name!r}')


# ----------------------------------------------------------------------------------------------
# Terms.


class ImageTerm(NamedTuple):
  """One weighted image term. fn has the `inversion.perceptual` signature.

  Each term reads its own channels and its own mask, so one objective can fit different
  channels in different regions (defect synthesis, `inversion.defects`: the mask channel
  everywhere, RGB outside the defect, RGB inside it)."""
  fn: Callable[..., Array]      # (params, x [1, H, W, C'], y, mask [1, H, W, 1] | None) -> [1]
  weight: float                 # multiplier in the total
  params_key: Optional[str] = None  # key of its parameters in `Data.term_params`; None = none
  all_channels: bool = False    # True: fn sees all C channels (outside `channels`: the target's)
  channels: Optional[tuple[int, int]] = None  # [start, stop) compared; None = [0, loss_channels)
  mask_channel: Optional[int] = 0  # channel of the masks [.., M] it is weighted by; None = none


class LatentContext(NamedTuple):
  """What a latent term sees, for one image (the hook for e.g. an encoder regulariser)."""
  latent: Array                 # optimised variable: [z_dim] | [w_dim] | [num_ws, w_dim]
  ws: Array                     # [num_ws, w_dim] before the projector's latent perturbation
  noise: dict                   # {layer: [r, r]} optimised noise maps ({} when not optimised)
  image: Array                  # [H, W, C] generated image, about [-1, 1]
  target: Array                 # [H, W, C] target image
  mask: Optional[Array]         # [H, W, 1] or None
  step: Array                   # [] int32 step index


class LatentTerm(NamedTuple):
  """One weighted latent term: fn(params, LatentContext) -> [] scalar."""
  fn: Callable[[Any, LatentContext], Array]
  weight: float
  params_key: Optional[str] = None


def image_terms_loss(image_terms: Sequence[tuple[str, ImageTerm]], term_params: Mapping[str, Any],
                     image: Array, target: Array, mask: Optional[Array],
                     loss_channels: Optional[int]) -> tuple[Array, dict[str, Array]]:
  """The weighted reconstruction terms of a batch: (total [B], {name: [B]}).

  A term sees channels `term.channels` (None: [:loss_channels], None = all) weighted by
  channel `term.mask_channel` of `mask` [B, H, W, M] (None: every pixel counts);
  `all_channels` terms see every channel, the generated image's channels outside the term's
  replaced by the target's (no difference, no gradient there)."""
  parts = {}
  total = jnp.zeros(image.shape[:1], jnp.float32)
  for name, t in image_terms:
    lo, hi = t.channels or (0, loss_channels or image.shape[-1])
    if t.all_channels:  # only non-empty pieces: the same program as a plain slice where it is
      pieces = [target[..., :lo], image[..., lo:hi], target[..., hi:]]
      xi = jnp.concatenate([x for x in pieces if x.shape[-1]], -1)
      yi = target
    else:
      xi, yi = image[..., lo:hi], target[..., lo:hi]
    m = None
    if mask is not None and t.mask_channel is not None:
      m = mask[..., t.mask_channel:t.mask_channel + 1]
    p = None if t.params_key is None else term_params[t.params_key]
    parts[name] = t.fn(p, xi, yi, m)
    total = total + t.weight * parts[name]
  return total, parts


# ----------------------------------------------------------------------------------------------
# State.


class Latents(NamedTuple):
  """The optimised variables of a batch."""
  latent: Array                 # [B, z_dim] | [B, w_dim] | [B, num_ws, w_dim]
  noise: dict                   # {layer: [B, r, r]}; {} when noise maps are not optimised


class EngineState(NamedTuple):
  """Everything the loop carries; every leaf has the batch axis first."""
  latents: Latents              # current values
  opt_state: Any                # optax state, leaves [B, ...]
  last_finite: Latents          # latents at the last step with a finite loss and gradient
  step: Array                   # [B] int32 steps applied
  failed: Array                 # [B] bool: a non-finite loss/gradient stopped this image
  failed_step: Array            # [B] int32 step of the failure, -1 = none
  key: Array                    # [B, 2] uint32 per-image PRNG keys (folded with the step)


class Data(NamedTuple):
  """Inputs of the compiled program that are not optimised."""
  g_vars: PyTree                # generator variables (replicated)
  term_params: dict             # {params_key: params} of the loss networks (replicated)
  targets: Array                # [B, H, W, C] in [-1, 1]
  masks: Optional[Array]        # [B, H, W, M] in [0, 1] or None (all pixels count); image
                                # terms read channel `ImageTerm.mask_channel` (M = 1: the mask)
  w_std: Array                  # [] for the projector's latent perturbation


def final_latents(state: EngineState) -> Latents:
  """The result latents: the current ones, or the last finite ones for failed images."""
  def pick(cur, good):
    f = state.failed.reshape(state.failed.shape + (1,) * (cur.ndim - 1))
    return jnp.where(f, good, cur)
  return jax.tree_util.tree_map(pick, state.latents, state.last_finite)


def _tree_where(cond, a, b):
  return jax.tree_util.tree_map(lambda x, y: jnp.where(cond, x, y), a, b)


def _all_finite(tree) -> Array:
  leaves = jax.tree_util.tree_leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


# ----------------------------------------------------------------------------------------------
# XLA:CPU workaround: canonical convolutions inside loops.
#
# Inside a while loop (lax.scan), XLA:CPU runs convolutions whose kernel is not in HWIO order with
# a slow generic loop instead of its Eigen kernel (jax-ml/jax#12868; outside loops its layout
# passes fix the order). Autodiff produces exactly such convolutions (the input gradient uses the
# kernel as [H, W, O, I], reversed), which made a scanned inversion step 3-5x slower than the same
# step jitted alone. `hoist_invariants(..., canonicalize=True)` re-evaluates the step's jaxpr with
# every 2-D convolution written as transpose(inputs) -> conv(NHWC, HWIO -> NHWC) ->
# transpose(output); the kernel transpose sits behind an optimization_barrier so XLA cannot fold
# it back into the convolution (and, depending on the weights only, it is hoisted out of the
# loop). Convolutions inside sub-jits are rewritten too; those inside other higher-order
# primitives (scan, cond) are left as they are. The arithmetic is unchanged (same convolution,
# same order of sums). Only used on CPU.

_NHWC = (0, 3, 1, 2)   # lax.ConvDimensionNumbers spec of NHWC: (batch, feature, H, W) axes
_HWIO = (3, 2, 0, 1)   # (out feature, in feature, H, W) axes of an HWIO kernel


def _canonical_conv(lhs, rhs, **params):
  """One conv_general_dilated, rewritten to NHWC/HWIO/NHWC with explicit transposes."""
  dn = params['dimension_numbers']
  if len(dn.lhs_spec) != 4 or (dn.lhs_spec == _NHWC and dn.rhs_spec == _HWIO
                               and dn.out_spec == _NHWC):
    return jax.lax.conv_general_dilated_p.bind(lhs, rhs, **params)
  ls, rs, os_ = dn.lhs_spec, dn.rhs_spec, dn.out_spec
  lhs_perm = (ls[0], ls[2], ls[3], ls[1])  # -> N, H, W, C
  rhs_perm = (rs[2], rs[3], rs[1], rs[0])  # -> H, W, I, O
  if lhs_perm != (0, 1, 2, 3):
    lhs = jnp.transpose(lhs, lhs_perm)
  if rhs_perm != (0, 1, 2, 3):
    rhs = jax.lax.optimization_barrier(jnp.transpose(rhs, rhs_perm))
  params = dict(params, dimension_numbers=jax.lax.ConvDimensionNumbers(_NHWC, _HWIO, _NHWC))
  out = jax.lax.conv_general_dilated_p.bind(lhs, rhs, **params)  # [N, H, W, C]
  # Output axis os_[k] holds N, C, H, W for k = 0..3; our axes are N=0, H=1, W=2, C=3.
  src = {os_[0]: 0, os_[1]: 3, os_[2]: 1, os_[3]: 2}
  out_perm = tuple(src[i] for i in range(4))
  return out if out_perm == (0, 1, 2, 3) else jnp.transpose(out, out_perm)


def _bind(eqn, invals: list, canonicalize: bool) -> list:
  """Applies one jaxpr equation to values (a convolution in canonical form if asked)."""
  name = eqn.primitive.name
  if canonicalize and name == 'conv_general_dilated':
    return [_canonical_conv(*invals, **eqn.params)]
  if name in ('pjit', 'jit') and 'jaxpr' in eqn.params:  # inlined, so its equations are visible
    sub = eqn.params['jaxpr']
    return _eval_jaxpr(sub.jaxpr, sub.consts, invals, canonicalize)
  bind_params = eqn.primitive.get_bind_params(eqn.params)
  subfuns = []
  if isinstance(bind_params, tuple):  # older jax: (subfuns, params)
    subfuns, bind_params = bind_params
  with eqn.ctx.manager:
    outs = eqn.primitive.bind(*subfuns, *invals, **bind_params)
  return outs if eqn.primitive.multiple_results else [outs]


def _is_literal(v) -> bool:
  from jax.extend import core as jcore  # pylint: disable=import-outside-toplevel
  return isinstance(v, jcore.Literal)


def _read(env: dict, v):
  return v.val if _is_literal(v) else env[v]


def _run_eqns(eqns, env: dict, canonicalize: bool) -> dict:
  for eqn in eqns:
    env.update(zip(eqn.outvars, _bind(eqn, [_read(env, v) for v in eqn.invars], canonicalize)))
  return env


def _eval_jaxpr(jaxpr, consts, args, canonicalize: bool) -> list:
  env = dict(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  _run_eqns(jaxpr.eqns, env, canonicalize)
  return [_read(env, v) for v in jaxpr.outvars]


# ----------------------------------------------------------------------------------------------
# Loop-invariant hoisting.
#
# Much of a step does not depend on the latents: everything computed from the network weights
# alone (the flipped and transposed kernels of the input gradients, the sub-pixel phase kernels,
# the demodulation norms, the canonical convolutions' kernel transposes) and everything computed
# from an image's target (its VGG features). XLA:CPU did not move that work out of the scan (it sits in
# nested loops and behind optimisation barriers) and redid it every step: 18% of a 64 px W+ step.
# `hoist_invariants` splits the step's jaxpr by data dependence into three parts: what depends on
# the shared inputs only (run once per chunk), what also depends on a group's fixed per-image
# inputs (run once per group and chunk) and the rest (run every step, reading the other two's
# results). The arithmetic is unchanged; only where it runs moves.

# Equations that make arrays from (almost) nothing: recomputed wherever they are needed, so that a
# large broadcast constant is not materialised and carried through the loop.
_RECOMPUTED = frozenset({'broadcast_in_dim', 'iota'})


def hoist_invariants(fn: Callable, variant: PyTree, fixed: PyTree, shared: PyTree,
                     canonicalize: bool) -> tuple[Callable, Callable]:
  """Splits `fn(variant, fixed, shared)` into work done once and work done every call.

  Args:
    fn: a pure function of three pytrees of arrays.
    variant, fixed: pytrees of `jax.ShapeDtypeStruct` (or arrays): the inputs that change every
      call, and those that are fixed per group of images (targets, masks).
    shared: the arrays fixed for the whole loop (weights). What depends on them alone is
      computed here, now: call this where the loop is built, outside it.
    canonicalize: also write convolutions in canonical form (the XLA:CPU workaround above).

  Returns:
    (prepare, apply): `prepare(fixed)` computes the per-group invariants (outside the loop,
    once per group); `apply(variant, prepared)` == `fn(variant, fixed, shared)`.
  """
  leaves, trees = zip(*(jax.tree_util.tree_flatten(t) for t in (variant, fixed, shared)))
  n_var, n_fixed = len(leaves[0]), len(leaves[1])

  def flat_fn(*args):
    groups = (args[:n_var], args[n_var:n_var + n_fixed], args[n_var + n_fixed:])
    return fn(*(jax.tree_util.tree_unflatten(t, list(g)) for t, g in zip(trees, groups)))

  abstract = [jax.ShapeDtypeStruct(np.shape(x), x.dtype) for x in sum(leaves, [])]
  inner, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(*abstract)
  # Re-trace through `_eval_jaxpr`: one flat jaxpr (sub-jits inlined, convs canonical if asked).
  closed = jax.make_jaxpr(
      lambda *a: _eval_jaxpr(inner.jaxpr, inner.consts, a, canonicalize))(*abstract)
  jaxpr = closed.jaxpr

  # Level of every variable: 0 shared only, 1 also the fixed inputs, 2 the variant inputs.
  level = dict(zip(jaxpr.constvars, [0] * len(jaxpr.constvars)))
  level.update((v, 2 if i < n_var else 1 if i < n_var + n_fixed else 0)
               for i, v in enumerate(jaxpr.invars))
  parts = ([], [], [])
  for eqn in jaxpr.eqns:
    ins = [level[v] for v in eqn.invars if not _is_literal(v)]
    lvl = 2 if eqn.effects else max(ins, default=0)
    level.update((v, lvl) for v in eqn.outvars)
    if eqn.primitive.name in _RECOMPUTED and lvl < 2:
      for later in range(lvl, 3):
        parts[later].append(eqn)
    else:
      parts[lvl].append(eqn)

  def used(eqns, outs=()):
    """Variables a part reads that it does not define itself."""
    defined = {v for e in eqns for v in e.outvars}
    read = [v for e in eqns for v in e.invars if not _is_literal(v)]
    read += [v for v in outs if not _is_literal(v)]
    return [v for v in dict.fromkeys(read) if v not in defined]

  needs_step = used(parts[2], jaxpr.outvars)
  needs_group = used(parts[1])
  from_shared = [v for v in dict.fromkeys(needs_group + needs_step) if level[v] == 0]
  from_group = [v for v in needs_step if level[v] == 1]

  env = dict(zip(jaxpr.constvars, closed.consts))
  env.update(zip(jaxpr.invars[n_var + n_fixed:], leaves[2]))
  env = _run_eqns(parts[0], env, canonicalize)
  shared_values = {v: env[v] for v in from_shared}

  def prepare(fixed_values: PyTree) -> list:
    env = dict(shared_values)
    env.update(zip(jaxpr.invars[n_var:n_var + n_fixed], jax.tree_util.tree_leaves(fixed_values)))
    env = _run_eqns(parts[1], env, canonicalize)
    return [env[v] for v in from_group]

  def apply(variant_values: PyTree, prepared: list) -> PyTree:
    env = dict(shared_values)
    env.update(zip(from_group, prepared))
    env.update(zip(jaxpr.invars[:n_var], jax.tree_util.tree_leaves(variant_values)))
    env = _run_eqns(parts[2], env, canonicalize)
    out = [_read(env, v) for v in jaxpr.outvars]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), out)

  return prepare, apply


# ----------------------------------------------------------------------------------------------
# The engine.


@dataclasses.dataclass(frozen=True)
class EngineSpec:
  """Everything that shapes the compiled program (hashable: engines are cached by it)."""
  g_config: networks.GeneratorConfig
  image_terms: tuple[tuple[str, ImageTerm], ...]   # (name, term) pairs, in order
  space: str = 'wplus'                 # 'z' | 'w' | 'wplus'
  num_steps: int = 1000                # optimisation steps
  chunk_size: int = 50                 # at most this many steps per compiled chunk (see
                                       # `steps_per_chunk`)
  optimizer: OptimizerSpec = OptimizerSpec()
  latent_terms: tuple[tuple[str, LatentTerm], ...] = ()
  loss_channels: Optional[int] = None  # image terms see channels [:loss_channels]; None = all
  optimize_noise: bool = False         # also optimise the noise maps
  normalize_noise: bool = False        # re-normalise noise maps after each step (NVlabs)
  noise_regularize_weight: float = 0.0  # weight of `noise_regularizer` (NVlabs: 1e5)
  latent_noise_factor: float = 0.0     # projector: initial std of w noise, x w_std (0.05)
  latent_noise_ramp: float = 0.75      # projector: fraction of steps until the w noise is 0
  noise_mode: str = 'const'            # noise of layers not optimised: 'const' | 'none'
  micro_batch: int = 0                 # images vectorised together per step (see `group_size`)
  label: Optional[int] = None          # class of a conditional generator (maps z in 'z' space)

  def __post_init__(self):
    latent_shape(self.g_config, self.space)
    c_dim = self.g_config.c_dim
    if self.label is not None and not c_dim:
      raise ValueError(f'This generator is unconditional: drop the class label {self.label}.')
    if self.label is not None and not 0 <= self.label < c_dim:
      raise ValueError(f'label {self.label} is not a class of this generator (c_dim={c_dim})')
    if c_dim and self.space == 'z' and self.label is None:
      raise ValueError(f"This generator is conditional (c_dim={c_dim}): inverting in Z space "
                       "maps z with a class; set config.label (W and W+ need none).")
    if self.num_steps < 0 or self.chunk_size < 1 or self.micro_batch < 0:
      raise ValueError(f'need num_steps >= 0, chunk_size >= 1 and micro_batch >= 0, got '
                       f'{self.num_steps}, {self.chunk_size}, {self.micro_batch}')
    if self.noise_mode not in NOISE_MODES:
      raise ValueError(f'noise_mode must be one of {NOISE_MODES}, got {self.noise_mode!r}')
    if not self.image_terms and not self.latent_terms:
      raise ValueError('the objective has no terms; give at least one image term')
    if self.optimize_noise and not self.g_config.noise_layers:
      raise ValueError('optimize_noise: this generator has no noise inputs (use_noise=False)')
    names = [n for n, _ in self.image_terms + self.latent_terms]
    if len(set(names)) != len(names) or {'total', 'noise_reg'} & set(names):
      raise ValueError(f'term names must be unique and not total/noise_reg, got {names}')

  @property
  def num_chunks(self) -> int:
    return max(1, math.ceil(self.num_steps / self.chunk_size))

  @property
  def steps_per_chunk(self) -> int:
    """The scan's length: num_steps spread evenly over num_chunks (5 steps: one chunk of 5, not
    of chunk_size; 250 steps at chunk_size 100: three of 84), so fewer than num_chunks steps
    are padding."""
    return max(1, math.ceil(self.num_steps / self.num_chunks))

  @property
  def term_names(self) -> tuple[str, ...]:
    """Names of the recorded loss curves, 'total' first."""
    names = ['total'] + [n for n, _ in self.image_terms]
    if self.optimize_noise and self.noise_regularize_weight:
      names.append('noise_reg')
    return tuple(names + [n for n, _ in self.latent_terms])


class Engine:
  """The compiled pieces for one `EngineSpec`: `init`, `run_chunk`, `render`.

  Get one with `make_engine(spec)` (cached), so repeated jobs reuse its compiled programs.
  `trace_count` counts traces of the chunk program (one per distinct input shape/sharding).
  """

  def __init__(self, spec: EngineSpec):
    self.spec = spec
    self.optimizer = make_optimizer(spec.optimizer, max(spec.num_steps, 1))
    self.trace_count = 0
    # XLA:CPU runs non-HWIO convolutions inside loops slowly (see `_canonical_conv`).
    self.canonicalize_convs = jax.default_backend() == 'cpu'
    self._chunk_fns = {}  # (signature of the inputs, group) -> compiled chunk program
    self._key = cache.describe(spec)  # None: a user's term function, traced every time
    self.render = _render_fn(spec.g_config, spec.space, spec.noise_mode, spec.label)
    self.init = jax.jit(self._init)

  # 1. initial state
  def _init(self, latents: Latents, keys: Array) -> EngineState:
    """latents (batch-first) and keys [B, 2] -> the state before step 0."""
    if self.spec.optimize_noise and self.spec.normalize_noise:
      latents = latents._replace(noise=jax.vmap(normalize_noise)(latents.noise))
    b = latents.latent.shape[0]
    # Fresh buffers (jnp.copy): the state is donated to run_chunk, and jit would otherwise
    # forward the caller's arrays (or one array twice) into it.
    copy = lambda t: jax.tree_util.tree_map(jnp.copy, t)
    return EngineState(
        latents=copy(latents), opt_state=jax.vmap(self.optimizer.init)(latents),
        last_finite=copy(latents), step=jnp.zeros((b,), jnp.int32),
        failed=jnp.zeros((b,), bool), failed_step=jnp.full((b,), -1, jnp.int32),
        key=jnp.copy(keys.astype(jnp.uint32)))

  # 2. objective for one image
  def loss(self, latents: Latents, step: Array, key: Array, target: Array,
           mask: Optional[Array], data: Data) -> tuple[Array, tuple[dict, Array]]:
    """One image: latents (no batch axis) -> (total [], ({term: []}, image [H, W, C]))."""
    spec = self.spec
    cfg = spec.g_config
    ws = latent_to_ws(cfg, data.g_vars, spec.space, latents.latent[None],
                      spec.label)[0]  # [num_ws, w_dim]
    ws_in = ws
    if spec.latent_noise_factor > 0:
      scale = data.w_std * latent_noise_scale(step, spec.num_steps, spec.latent_noise_factor,
                                              spec.latent_noise_ramp)
      shape = (cfg.w_dim,) if spec.space in ('z', 'w') else ws.shape  # 'w': one draw, broadcast
      ws_in = ws + scale * jax.random.normal(jax.random.fold_in(key, step), shape)
    noise = {k: v[None] for k, v in latents.noise.items()} or None
    image = networks.synthesis(cfg, data.g_vars, ws_in[None], spec.noise_mode, noise)  # [1,H,W,C]
    # 1. reconstruction
    total, parts = image_terms_loss(spec.image_terms, data.term_params, image, target[None],
                                    None if mask is None else mask[None], spec.loss_channels)
    total, parts = total[0], {name: v[0] for name, v in parts.items()}
    # 2. noise regulariser
    if spec.optimize_noise and spec.noise_regularize_weight:
      parts['noise_reg'] = noise_regularizer(latents.noise)
      total = total + spec.noise_regularize_weight * parts['noise_reg']
    # 3. latent terms
    if spec.latent_terms:
      ctx = LatentContext(latents.latent, ws, dict(latents.noise), image[0], target, mask, step)
      for name, t in spec.latent_terms:
        p = None if t.params_key is None else data.term_params[t.params_key]
        parts[name] = t.fn(p, ctx)
        total = total + t.weight * parts[name]
    return total, (parts, image[0])

  # 3. one optimisation step for one image
  def _image_step(self, latents, opt_state, last_finite, step, failed, failed_step, key,
                  target, mask, data):
    spec = self.spec
    grad_fn = jax.value_and_grad(self.loss, has_aux=True)
    (total, (parts, _)), grads = grad_fn(latents, step, key, target, mask, data)
    ok = jnp.isfinite(total) & _all_finite(grads)
    active = (step < spec.num_steps) & ~failed
    go = active & ok
    updates, new_opt = self.optimizer.update(grads, opt_state, latents)
    new_latents = optax.apply_updates(latents, updates)
    if spec.optimize_noise and spec.normalize_noise:
      new_latents = new_latents._replace(noise=normalize_noise(new_latents.noise))
    newly_failed = active & ~ok
    record = {'total': total, **parts}
    record = {n: jnp.where(active, record[n], jnp.nan) for n in spec.term_names}
    return (_tree_where(go, new_latents, latents), _tree_where(go, new_opt, opt_state),
            _tree_where(go, latents, last_finite), step + go.astype(jnp.int32),
            failed | newly_failed, jnp.where(newly_failed, step, failed_step), record)

  def group_size(self, batch: int, sharded: bool = False) -> int:
    """Images per vectorised group in a step of `batch` images.

    A step runs `vmap` of the per-image step over groups of this many images, one group after
    another (`lax.map`); every image keeps its own latent and optimiser state either way.
    `spec.micro_batch` 0 (auto) means 1 on CPU, where a whole batch's activations spill out
    of the caches and the step runs memory-bound (1 image at a time: 256 px batch-8 synthesis
    fwd+bwd 7.2 s vs 9.2 s vectorised), and the whole batch on accelerators. A batch sharded
    over several devices is always vectorised whole (each device runs its own shard).
    """
    group = self.spec.micro_batch or (1 if self.canonicalize_convs else batch)
    if sharded or group >= batch:
      return batch
    return math.gcd(batch, group)  # groups must tile the batch

  def _step_program(self, state: EngineState, data: Data, group: int):
    """(prepare, apply) of the step of `group` images vectorised (`hoist_invariants`): the
    variant inputs are the state's per-image arrays, the fixed ones targets and masks."""
    mask_axis = None if data.masks is None else 0
    fn = jax.vmap(self._image_step, in_axes=(0, 0, 0, 0, 0, 0, 0, 0, mask_axis, None))
    one_group = lambda tree: jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct((group,) + x.shape[1:], x.dtype), tree)
    return hoist_invariants(
        lambda variant, fixed, shared: fn(*variant, *fixed, shared),
        one_group(_variant(state)), one_group((data.targets, data.masks)),
        data._replace(targets=None, masks=None), canonicalize=self.canonicalize_convs)

  # 4. a chunk of steps, compiled
  def run_chunk(self, state: EngineState, data: Data) -> tuple[EngineState, dict]:
    """`steps_per_chunk` steps in one compiled call (state is donated). Outputs keep the batch
    split over the mesh the state lives on, so the next call hits the same compiled program.

    On one device the traced program is kept in the user cache (`generators.cache.
    cached_program`): a later process with the same spec and shapes neither traces nor (with
    the compilation cache) compiles it. Sharded batches are traced in every process."""
    sharded = is_sharded(state)
    group = self.group_size(state.step.shape[0], sharded)
    key = (cache.signature((state, data)), group)
    if key not in self._chunk_fns:
      mesh = getattr(state.step.sharding, 'mesh', None)
      out = None
      if mesh is not None:
        P = jax.sharding.PartitionSpec
        out = (jax.sharding.NamedSharding(mesh, P('batch')),
               jax.sharding.NamedSharding(mesh, P(None, 'batch')))
      out_tree = jax.tree_util.tree_structure((state, dict.fromkeys(self.spec.term_names, 0)))
      self._chunk_fns[key] = cache.cached_program(
          functools.partial(self._chunk, group=group), (state, data),
          key=None if sharded or self._key is None else f'{self._key} group={group}',
          out_tree=out_tree, donate_argnums=(0,),
          out_shardings=out)
    return self._chunk_fns[key](state, data)

  def compiled_count(self) -> int:
    """Number of compiled chunk programs (one per batch shape and mesh)."""
    # pylint: disable-next=protected-access
    return sum(f._cache_size() for f in self._chunk_fns.values())

  def _chunk(self, state: EngineState, data: Data, group: int) -> tuple[EngineState, dict]:
    """`steps_per_chunk` steps; each runs the batch `group` images vectorised at a time
    (`group_size`), one group after another (`lax.map`). Records {term: [steps_per_chunk, B]}."""
    self.trace_count += 1  # Python side effect: runs once per trace, not per call
    prepare, apply = self._step_program(state, data, group)  # shared invariants: once
    fixed = (data.targets, data.masks)
    batch = state.step.shape[0]
    if group >= batch:
      prepared = prepare(fixed)
      step = lambda s: apply(_variant(s), prepared)
    else:  # [B, ...] <-> [B // group, group, ...]
      split = lambda t: jax.tree_util.tree_map(
          lambda x: x.reshape(batch // group, group, *x.shape[1:]), t)
      merge = lambda t: jax.tree_util.tree_map(lambda x: x.reshape(batch, *x.shape[2:]), t)
      prepared = jax.lax.map(prepare, split(fixed))  # per-group invariants: once per chunk
      step = lambda s: merge(jax.lax.map(lambda a: apply(*a), (split(_variant(s)), prepared)))

    def body(s: EngineState, _):
      *new, record = step(s)
      return EngineState(*new, key=s.key), record

    return jax.lax.scan(body, state, None, length=self.spec.steps_per_chunk)

  def ws(self, latents: Latents, g_vars: PyTree) -> Array:
    """Latents -> ws [B, num_ws, w_dim]."""
    return latent_to_ws(self.spec.g_config, g_vars, self.spec.space, latents.latent,
                        self.spec.label)


def _variant(state: EngineState) -> tuple:
  """The per-image arrays a step reads from the state, in `_image_step`'s argument order."""
  return (state.latents, state.opt_state, state.last_finite, state.step, state.failed,
          state.failed_step, state.key)


def is_sharded(state: EngineState) -> bool:
  """Whether the state's batch is split over more than one device."""
  mesh = getattr(state.step.sharding, 'mesh', None)
  return mesh is not None and mesh.size > 1


@functools.lru_cache(maxsize=32)
def _render_fn(g_config, space, noise_mode, label):
  """Compiled latents (batch-first) -> images [B, H, W, C], shared by specs that differ only in
  their objective or optimiser; traced once per machine and shape (`cached_program`)."""
  def render(latents: Latents, g_vars: PyTree) -> Array:
    ws = latent_to_ws(g_config, g_vars, space, latents.latent, label)
    return networks.synthesis(g_config, g_vars, ws, noise_mode, latents.noise or None)
  key = cache.describe(('render', g_config, space, noise_mode, label))
  programs = {}

  def run(latents: Latents, g_vars: PyTree) -> Array:
    sig = cache.signature((latents, g_vars))
    if sig not in programs:
      programs[sig] = cache.cached_program(render, (latents, g_vars), key=key,
                                           out_tree=jax.tree_util.tree_structure(0))
    return programs[sig](latents, g_vars)
  return run


@functools.lru_cache(maxsize=32)
def make_engine(spec: EngineSpec) -> Engine:
  """The (cached) engine of a spec: equal specs share compiled programs."""
  return Engine(spec)


# ----------------------------------------------------------------------------------------------
# Devices.


def batch_mesh(batch_size: int, devices: Optional[Sequence[Any]] = None) -> jax.sharding.Mesh:
  """A 1-D mesh ('batch',) over the largest number of `devices` (default: this process's) that
  divides batch_size, so no padding is needed. Inversion never spans processes: each process
  inverts its own images (`generators.distributed`)."""
  devices = list(jax.local_devices() if devices is None else devices)
  n = max(k for k in range(1, len(devices) + 1) if batch_size % k == 0)
  return jax.sharding.Mesh(np.asarray(devices[:n]), ('batch',))


def shard(state: EngineState, data: Data, mesh: jax.sharding.Mesh) -> tuple[EngineState, Data]:
  """Places batch-first arrays split over the mesh and the networks replicated."""
  P = jax.sharding.PartitionSpec
  split = jax.sharding.NamedSharding(mesh, P('batch'))
  repl = jax.sharding.NamedSharding(mesh, P())
  put = lambda tree, s: jax.tree_util.tree_map(lambda x: jax.device_put(x, s), tree)
  state = put(state, split)
  data = Data(g_vars=put(data.g_vars, repl), term_params=put(data.term_params, repl),
              targets=put(data.targets, split),
              masks=None if data.masks is None else put(data.masks, split),
              w_std=put(data.w_std, repl))
  return state, data


# ----------------------------------------------------------------------------------------------
# The host loop.


class ChunkInfo(NamedTuple):
  """What `run` tells `on_chunk` after each chunk (host values)."""
  chunk: int                    # index of the chunk just finished (0-based)
  num_chunks: int
  steps_done: int               # steps finished so far (<= num_steps)
  state: EngineState            # device state after this chunk (do not keep: it is donated)
  curves: dict                  # {term: np [steps_done, B]} recorded so far
  newly_failed: np.ndarray      # [B] bool: images that failed in this chunk


def run(engine: Engine, state: EngineState, data: Data, *, start_chunk: int = 0,
        curves: Optional[Mapping[str, np.ndarray]] = None, progress: bool = True,
        on_chunk: Optional[Callable[[ChunkInfo], None]] = None,
        names: Optional[Sequence[str]] = None, desc: str = 'invert'
        ) -> tuple[EngineState, dict[str, np.ndarray]]:
  """Runs chunks `start_chunk .. num_chunks-1`; returns (state, curves {term: [steps, B]}).

  Between chunks: progress bar, a loud log line for every image whose loss or gradient became
  non-finite (that image stops at its last finite latents; the others go on), then `on_chunk`
  (checkpointing, user callbacks; an exception there stops the run after this chunk).
  `curves` are those of a resumed run's earlier chunks.
  """
  spec = engine.spec
  b = state.step.shape[0]
  names = list(names) if names is not None else [str(i) for i in range(b)]
  curves = {n: np.asarray(v) for n, v in (curves or {}).items()}
  if not curves:
    curves = {n: np.zeros((0, b), np.float32) for n in spec.term_names}
  bar = None
  if progress:
    from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
    bar = tqdm(total=spec.num_steps, desc=desc, unit='step',
               initial=min(start_chunk * spec.steps_per_chunk, spec.num_steps))
  failed_before = np.asarray(jax.device_get(state.failed))
  try:
    for c in range(start_chunk, spec.num_chunks):
      state, rec = engine.run_chunk(state, data)
      rec = jax.device_get(rec)
      done = min((c + 1) * spec.steps_per_chunk, spec.num_steps)
      keep = done - c * spec.steps_per_chunk
      curves = {n: np.concatenate([curves[n], np.asarray(rec[n][:keep], np.float32)])
                for n in spec.term_names}
      failed = np.asarray(jax.device_get(state.failed))
      newly = failed & ~failed_before
      failed_before = failed
      if newly.any():
        fstep = np.asarray(jax.device_get(state.failed_step))
        for i in np.flatnonzero(newly):
          log.warning('image %s: non-finite loss or gradient at step %d; stopped it and kept '
                      'its last finite latent (the other images go on). Check the target for '
                      'NaN/inf pixels, or lower the learning rate.', names[i], fstep[i])
      if bar is not None:
        last = curves['total'][-1] if len(curves['total']) else np.full(b, np.nan)
        ok = last[~failed] if (~failed).any() else last
        bar.set_postfix(loss=f'{float(np.nanmean(ok)):.4g}', failed=int(failed.sum()))
        bar.update(done - bar.n)
      if on_chunk is not None:
        on_chunk(ChunkInfo(c, spec.num_chunks, done, state, curves, newly))
  finally:
    if bar is not None:
      bar.close()
  return state, curves
