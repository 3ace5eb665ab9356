"""The inversion engine on the official 32 px fixture generator: quality, batching, compiles,
sharding, NaN handling, masks; and quality on the trained 64 px embedded model.

The fixture's weights are random (with randomised biases), so its images span about [-6, 8]
instead of [-1, 1]. PSNR assumes a range of 2, so the quality tests use the fixture with its
toRGB layers scaled by 1/4 (images then span about [-0.5, 1.4]); the optimisation problem is the
same up to that output scale (Adam is invariant to it). Targets are generated from known
latents z ~ N(0, I) with truncation psi = 0.5 (this random network's landscape is rough far from
w_avg: from the mean w, W+ stalls near 29 dB for psi = 1 targets in 3000 steps).
"""

import functools
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from generators import checkpoint, convert, networks
from inversion import api, engine, perceptual

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUALITY_STEPS = 600        # Image2StyleGAN preset (Adam, lr 0.01, mean-w init), fewer steps
TORGB_SCALE = 0.25


def scaled_fixture_model(g_state, d_state=None, scale=TORGB_SCALE):
  gc, gv = convert.generator_from_state(g_state, conv_clamp=256)
  gv = jax.tree_util.tree_map(jnp.asarray, gv)
  for block in gv['params']['synthesis'].values():
    if 'torgb' in block:
      block['torgb']['weight'] = block['torgb']['weight'] * scale
      block['torgb']['bias'] = block['torgb']['bias'] * scale
  dc = dv = None
  if d_state is not None:
    dc, dv = convert.discriminator_from_state(d_state, conv_clamp=256)
    dv = jax.tree_util.tree_map(jnp.asarray, dv)
  return checkpoint.Model(gc, gv, dc, dv, {'source': 'fixture x toRGB/4'})


@pytest.fixture(scope='module')
def model(official_g_state, official_d_state):
  return scaled_fixture_model(official_g_state, official_d_state)


@functools.lru_cache(maxsize=4)
def _synthesis(g_config):
  return jax.jit(functools.partial(networks.synthesis, g_config))


def generated(model, n, seed=5, psi=0.5):
  """n images of known latents: z ~ N(0, I) from PRNGKey(seed), truncation psi."""
  z = jax.random.normal(jax.random.PRNGKey(seed), (n, model.g_config.z_dim))
  ws = model.mapping(z, psi=psi)
  return np.asarray(_synthesis(model.g_config)(model.g_vars, ws)), np.asarray(ws)


def cfg(name, *overrides):
  return api.as_config(name, ['--config.loss.perceptual=none', '--config.metrics.lpips=off',
                              '--config.w_avg_samples=2000', *overrides])


# ----------------------------------------------------------------------------------------------
# 1. Quality: W+ >= 35 dB, Z >= W >= W+ in error, noise optimisation does not hurt.


def quality_config(space, *overrides):
  return cfg(f'image2stylegan:{space}', f'--config.steps={QUALITY_STEPS}',
             '--config.chunk_size=100', *overrides)


@pytest.fixture(scope='module')
def quality(model):
  x, _ = generated(model, 2)
  out = {'targets': x, 'after_chunk_0': []}
  for space in ('z', 'w', 'wplus', 'wplus_noise'):
    def keep(info, space=space):  # W+ latents after the first chunk (100 steps), for the NaN test
      if space == 'wplus' and info.chunk == 0:
        out['after_chunk_0'].append(np.asarray(info.state.latents.latent))
    out[space] = api.invert(x, model, quality_config(space), progress=False, callback=keep)
  return out


def test_wplus_reaches_35db(quality):
  psnr = quality['wplus'].metrics['psnr']
  print('W+ PSNR', psnr)  # measured 38.8, 36.3 dB
  assert np.all(psnr >= 35.0), psnr


def test_error_ordering_z_w_wplus(quality):
  mse = {s: quality[s].metrics['mse'] for s in ('z', 'w', 'wplus')}
  print({s: v.tolist() for s, v in mse.items()})  # measured means 8.6e-3 >= 4.7e-3 >= 7.4e-4
  assert np.all(mse['z'] >= mse['w']) and np.all(mse['w'] >= mse['wplus']), mse


def test_noise_optimisation_does_not_increase_error(quality):
  with_noise, without = quality['wplus_noise'].metrics['mse'], quality['wplus'].metrics['mse']
  print('W+ + noise', with_noise, 'W+', without)  # measured PSNR 44.9, 40.7 vs 38.8, 36.3 dB
  assert np.all(with_noise <= without)
  assert set(quality['wplus_noise'].noise) == set(quality['wplus_noise'].noise)
  for v in quality['wplus_noise'].noise.values():  # re-normalised every step
    np.testing.assert_allclose(v.mean(axis=(1, 2)), 0, atol=1e-4)
    np.testing.assert_allclose((v ** 2).mean(axis=(1, 2)), 1, atol=1e-3)


def test_quality_on_the_trained_64px_embedded_model():
  """The same proof on a trained generator: the shipped 64 px model (RGB + mask channel)."""
  model = checkpoint.load()
  x, _ = generated(model, 2)
  runs = {space: api.invert(x, model, quality_config(space, '--config.steps=300'),
                            progress=False) for space in ('z', 'w', 'wplus')}
  mse = {s: r.metrics['mse'] for s, r in runs.items()}
  print({s: r.metrics['psnr'].tolist() for s, r in runs.items()})  # measured 31.2/30.2,
  assert np.all(runs['wplus'].metrics['psnr'] >= 35.0)               # 45.5/40.5, 49.3/46.3 dB
  assert np.all(mse['z'] >= mse['w']) and np.all(mse['w'] >= mse['wplus']), mse


def test_result_layout(quality, model):
  r = quality['wplus']
  gc = model.g_config
  assert r.latents.shape == r.ws.shape == (2, gc.num_ws, gc.w_dim)
  assert quality['w'].latents.shape == (2, gc.w_dim)
  assert quality['z'].latents.shape == (2, gc.z_dim)
  assert r.reconstructions.shape == r.targets.shape == (2, 32, 32, 3)
  assert set(r.losses) == {'total', 'mse'} and r.losses['total'].shape == (2, QUALITY_STEPS)
  assert set(r.metrics) == {'mse', 'psnr', 'ssim'}  # no LPIPS weights on this machine
  assert r.losses['total'][:, -1].max() < r.losses['total'][:, 0].min()
  # the recorded loss is the loss of the latents before each step: the last one is close to
  # the final reconstruction's MSE
  np.testing.assert_allclose(r.losses['mse'][:, -1], r.metrics['mse'], rtol=0.05)


# ----------------------------------------------------------------------------------------------
# 2. Batching, compiles.

# W+ and random noise maps with the projector's w noise and lr schedule: every random and
# per-image piece. Adam eps is 1e-3 here, not 1e-8: batch, single and sharded runs differ only by
# float rounding inside the convolutions (batch size and thread count change the summation
# order; measured ~1e-6 relative on the loss curves), but with a small eps Adam divides a
# gradient that is at rounding level (a few coordinates) by its own size, which turns that
# rounding into +-lr steps (measured after 10 steps: 4e-3 on one noise pixel with eps 1e-8,
# 3e-5 on one w coordinate with eps 1e-5; 6e-8 everywhere with eps 1e-3). That is Adam, not
# batching or sharding.
BATCH_CFG = ('--config.steps=10', '--config.chunk_size=4', '--config.noise.init=random',
             '--config.latent_noise.factor=0.05', '--config.optimizer.schedule=projector',
             '--config.optimizer.lr=0.01', '--config.optimizer.eps=1e-3')


DEVICES_SCRIPT = textwrap.dedent('''
    # Runs with 8 fake CPU devices; prints one JSON line of measurements.
    import dataclasses, json, os, sys
    sys.path.insert(0, {root!r})
    import jax, jax.numpy as jnp, numpy as np
    from tests import test_engine as t
    from tests.conftest import fixture_path
    ref = dict(np.load(fixture_path('stylegan2_ref_32px.npz')))
    model = t.scaled_fixture_model({{k[2:]: v for k, v in ref.items() if k.startswith('G/')}})
    x, _ = t.generated(model, 8, seed=11)
    c = t.cfg('image2stylegan:wplus_noise', *t.BATCH_CFG)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(3), i))(jnp.arange(8))
    seen = []
    cb = lambda info: seen.append(len(info.state.latents.latent.sharding.device_set))
    one = jax.devices()[:1]
    sharded = t.api.invert(x, model, c, key=keys, progress=False, callback=cb)
    batch = t.api.invert(x, model, c, key=keys, progress=False, devices=one)  # CPU: 1 at a time
    c4 = t.cfg('image2stylegan:wplus_noise', *t.BATCH_CFG, '--config.micro_batch=4')
    grouped = t.api.invert(x, model, c4, key=keys, progress=False, devices=one)  # 2 vmaps of 4
    c8 = t.cfg('image2stylegan:wplus_noise', *t.BATCH_CFG, '--config.micro_batch=8')
    whole = t.api.invert(x, model, c8, key=keys, progress=False, devices=one)  # 1 vmap of 8
    eng = t.api.Inverter(model, c).engine
    traces, compiled = eng.trace_count, eng.compiled_count()
    singles = [t.api.invert(x[i:i + 1], model, c, key=keys[i:i + 1], progress=False, devices=one)
               for i in range(8)]
    def diff(a, b):
      return {{'latents': float(np.abs(a.latents - b.latents).max()),
              'noise': max(float(np.abs(a.noise[k] - b.noise[k]).max()) for k in a.noise),
              'images': float(np.abs(a.reconstructions - b.reconstructions).max()),
              'loss_rel': float((np.abs(a.losses['total'] - b.losses['total'])
                                 / np.abs(b.losses['total'])).max())}}
    cat = lambda rs: dataclasses.replace(
        rs[0], latents=np.concatenate([r.latents for r in rs]),
        noise={{k: np.concatenate([r.noise[k] for r in rs]) for k in rs[0].noise}},
        reconstructions=np.concatenate([r.reconstructions for r in rs]),
        losses={{k: np.concatenate([r.losses[k] for r in rs]) for k in rs[0].losses}})
    print('RESULT', json.dumps({{
        'devices': jax.device_count(), 'sharded_device_sets': seen,
        'sharded_vs_one_device': diff(sharded, batch),
        'batch_vs_singles': diff(batch, cat(singles)),
        'groups_of_4_vs_batch': diff(grouped, batch),
        'groups_of_8_vs_batch': diff(whole, batch),
        'traces_added_by_singles': eng.trace_count - traces,
        'compiled_after_singles': eng.compiled_count(), 'compiled_before_singles': compiled}}))
''')


@pytest.fixture(scope='module')
def devices_run():
  """One subprocess with 8 fake CPU devices: the same batch of 8 sharded over 8 devices, on one
  device, and as 8 single-image runs (one process keeps the test set fast)."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', DEVICES_SCRIPT.format(root=ROOT)], env=env,
                        capture_output=True, text=True, timeout=600, cwd=ROOT)
  lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
  assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
  return json.loads(lines[-1][len('RESULT '):])


def test_batch_equals_single_runs_and_compiles_once(devices_run):
  """8 images in one batch == 8 single runs (own latents, optimiser state, keys), and the
  chunk program is traced once per batch shape, not per image or per chunk."""
  d = devices_run['batch_vs_singles']
  print(d)  # measured (2 CPU cores): latents, noise maps and loss curves 0 apart, images 2e-7
  # both run batch-1 chunk programs, only the render differs (50x margin); a mixed image is >1e-2
  assert d['latents'] < 1e-5 and d['noise'] < 1e-5 and d['images'] < 1e-5
  assert d['loss_rel'] < 1e-5
  # 8 single runs x 3 chunks each: one new trace and one new compiled program (batch size 1)
  assert devices_run['traces_added_by_singles'] == 1
  assert devices_run['compiled_after_singles'] == devices_run['compiled_before_singles'] + 1


@pytest.mark.parametrize('group', [4, 8])
def test_vectorised_groups_equal_one_image_at_a_time(devices_run, group):
  """micro_batch=4 (a loop over two vmaps of 4 images) and 8 (one vmap of the whole batch, the
  GPU/TPU default) == the CPU default (one image at a time, as single runs).

  Looser than batch-vs-singles (both run batch-1 convolutions there): Eigen blocks a batch-4
  convolution differently, so sums run in another order; after 10 Adam steps that is measured
  ~2e-5 on latents and images, 9e-6 on the loss curves.
  """
  d = devices_run[f'groups_of_{group}_vs_batch']
  print(d)  # measured (2 CPU cores): 1.7e-6 latents and images, 1.2e-6 loss; a mixed image >1e-2
  assert d['latents'] < 1e-4 and d['noise'] < 1e-4 and d['images'] < 1e-4
  assert d['loss_rel'] < 5e-5


def test_group_size_policy(model):
  mse = {'mse': engine.ImageTerm(perceptual.pixel_mse, 1.0)}
  spec = lambda micro: api.spec_from_config(
      cfg('image2stylegan:wplus', f'--config.micro_batch={micro}'), model.g_config, mse)
  auto, four = engine.make_engine(spec(0)), engine.make_engine(spec(4))
  assert auto.canonicalize_convs  # these tests run on CPU: auto = one image at a time
  assert [auto.group_size(b, sharded=False) for b in (1, 8)] == [1, 1]
  assert [four.group_size(b, sharded=False) for b in (2, 6, 8, 12)] == [2, 2, 4, 4]
  assert four.group_size(8, sharded=True) == 8  # each device vectorises its own shard
  with pytest.raises(ValueError, match='micro_batch'):
    spec(-1)


def test_sharded_over_8_devices_equals_single_device(devices_run):
  assert devices_run['devices'] == 8
  assert devices_run['sharded_device_sets'] == [8, 8, 8]  # the batch stays split every chunk
  d = devices_run['sharded_vs_one_device']
  print(d)  # measured (2 CPU cores): 1.3e-6 images, 1.2e-6 loss curves, 9e-7 latents
  # the 8 devices split the threads, so convs may be blocked and summed in another order, as in
  # the groups test (2e-5 seen there): its bounds; a shard with another image's key is > 1e-2 off
  assert d['latents'] < 1e-4 and d['noise'] < 1e-4 and d['images'] < 1e-4
  assert d['loss_rel'] < 5e-5


def test_canonical_convs_preserve_values():
  """The XLA:CPU loop workaround is the same arithmetic: grads agree with plain autodiff, and
  every convolution left is NHWC / HWIO."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 4))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 4, 5))

  def f(x, w):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    y = jax.lax.conv_transpose(y, w.transpose(0, 1, 3, 2), (2, 2), 'SAME',
                               dimension_numbers=('NHWC', 'HWIO', 'NHWC'))  # [2, 16, 16, 4]
    y = jax.lax.conv_general_dilated(y.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1), (2, 1),
                                     'VALID', dimension_numbers=('NCHW', 'OIHW', 'NCHW'))
    return jnp.sum(jnp.sin(y))

  g = jax.jit(jax.grad(f))
  _, apply = engine.hoist_invariants(lambda x, _, w: jax.grad(f)(x, w), x, (), w,
                                     canonicalize=True)
  # canonical vs XLA's own layouts: 36-45-term sums reordered (0 seen); a wrong flip is off O(1)
  np.testing.assert_allclose(jax.jit(apply)(x, []), g(x, w), rtol=1e-5, atol=1e-5)
  specs = {str(e.params['dimension_numbers'])
           for e in jax.make_jaxpr(apply)(x, []).jaxpr.eqns
           if e.primitive.name == 'conv_general_dilated'}
  assert specs == {str(jax.lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2)))}


def _primitives(fn, *args) -> set:
  return {e.primitive.name for e in jax.make_jaxpr(fn)(*args).jaxpr.eqns}


def test_hoist_invariants_splits_by_dependence():
  """Shared-only work runs once at hoisting, fixed-input work in `prepare`, the rest in `apply`;
  values equal the plain function's, and broadcast constants are not carried as residuals."""
  variant = {'a': jnp.arange(3.0)}
  fixed = (jnp.linspace(0.0, 1.0, 3), None)       # (targets, masks=None) as the engine passes
  shared = {'w': jnp.ones((3, 3)) * 0.5}

  def fn(v, f, s):
    weights = jax.jit(jnp.sin)(s['w'])              # inside a sub-jit: inlined, then hoisted
    return v['a'] @ weights * jnp.exp(f[0]) + jnp.ones(3), jnp.cos(s['w']).sum()

  prepare, apply = engine.hoist_invariants(fn, variant, fixed, shared, canonicalize=False)
  prepared = prepare(fixed)
  for got, want in zip(apply(variant, prepared), fn(variant, fixed, shared)):
    # hoisted vs inline: elementwise ops and 3-term sums, a few ulps (1.2e-7) at most; 0 seen
    np.testing.assert_allclose(got, want, rtol=1e-6)
  assert len(prepared) == 1                          # exp(targets) only, not the ones broadcast
  assert 'exp' in _primitives(prepare, fixed)
  step = _primitives(apply, variant, prepared)
  assert not step & {'sin', 'cos', 'exp'} and 'dot_general' in step


def test_chunk_equals_plain_steps(model):
  """The compiled chunk (hoisted invariants, canonical convs, scan) computes what the per-image
  step computes when simply jitted and called step by step."""
  mse = {'mse': engine.ImageTerm(perceptual.pixel_mse, 1.0)}
  spec = api.spec_from_config(cfg('image2stylegan:wplus', '--config.steps=6',
                                  '--config.chunk_size=3'), model.g_config, mse)
  eng = engine.make_engine(spec)
  x, _ = generated(model, 2, seed=7)
  latents = engine.Latents(jnp.broadcast_to(model.g_vars['buffers']['mapping']['w_avg'],
                                            (2, model.g_config.num_ws, model.g_config.w_dim)), {})
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(0), i))(jnp.arange(2))
  data = engine.Data(model.g_vars, {}, jnp.asarray(x), None, jnp.ones(()))
  state, _ = eng.run_chunk(eng.init(latents, keys), data)

  plain = jax.jit(jax.vmap(eng._image_step, in_axes=(0,) * 8 + (None, None)))
  ref = eng.init(latents, keys)
  for _ in range(3):
    *new, _ = plain(*engine._variant(ref), data.targets, None, data)
    ref = engine.EngineState(*new, key=ref.key)
  # scanned + hoisted chunk vs plain jitted steps, fused apart: 1.9e-7 seen after 3 Adam steps
  # (atol 1e-6 left only 5x); a skipped or doubled step moves latents by ~lr = 1e-2
  np.testing.assert_allclose(state.latents.latent, ref.latents.latent, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(state.step, [3, 3])  # integer counters: exact


# ----------------------------------------------------------------------------------------------
# 3. Non-finite losses, latent terms, masks.


def test_nan_stops_only_that_image_and_keeps_last_finite_latent(model, quality):
  """A latent term that turns NaN from step 101 for image 1 only: image 1 stops with the last
  latents whose loss was finite (after 100 steps); image 0 runs on and matches the run without
  the term. (Reuses the quality W+ run, same targets and schedule.)"""
  x = quality['targets']

  def nan_from_step_101(params, ctx):
    del params
    bad = (ctx.step >= 101) & (ctx.target[0, 0, 0] == x[1, 0, 0, 0])
    return jnp.where(bad, jnp.nan, 0.0)

  hooked = api.invert(x, model, quality_config('wplus'), progress=False,
                      latent_terms={'trap': engine.LatentTerm(nan_from_step_101, 1.0)})
  assert hooked.failed.tolist() == [False, True]
  assert hooked.failed_step.tolist() == [-1, 101]
  assert 'non-finite loss at step 101' in hooked.status(1)
  # with the extra (zero) term the step is another program that may fuse apart over 100-600 Adam
  # steps (0 seen here); a step too many or too few moves a latent by ~1e-2
  np.testing.assert_allclose(hooked.latents[1], quality['after_chunk_0'][0][1], rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(hooked.latents[0], quality['wplus'].latents[0], rtol=1e-5,
                             atol=1e-5)
  assert np.isfinite(hooked.reconstructions).all()
  assert np.isnan(hooked.losses['total'][1, 101:]).all()
  assert np.isfinite(hooked.losses['total'][1, :101]).all()
  assert np.isfinite(hooked.losses['total'][0]).all()
  assert np.all(hooked.losses['trap'][0] == 0)


def test_masked_inversion_ignores_pixels_outside_the_mask(model):
  """Exact equality: changing target pixels where the mask is 0 changes nothing (pixel MSE and
  discriminator-feature terms both see the mask)."""
  x, _ = generated(model, 2, seed=9)
  mask = np.zeros((32, 32), np.float32)
  mask[:, :20] = 1.0
  y = x.copy()
  y[:, :, 20:] = np.random.default_rng(0).uniform(-1, 1, y[:, :, 20:].shape)
  c = cfg('image2stylegan:wplus', '--config.steps=6', '--config.chunk_size=3',
          '--config.loss.perceptual=discriminator', '--config.loss.discriminator_layers=b32,b16')
  a = api.invert(x, model, c, mask=mask, progress=False)
  b = api.invert(y, model, c, mask=mask, progress=False)
  assert set(a.losses) == {'total', 'mse', 'discriminator'}
  # exact: one compiled program on inputs equal wherever the mask lets them through
  np.testing.assert_array_equal(a.latents, b.latents)
  np.testing.assert_array_equal(a.reconstructions, b.reconstructions)
  np.testing.assert_array_equal(a.losses['total'], b.losses['total'])
  assert 'masked_psnr' in a.metrics
  # and the mask matters: with an all-ones mask (same program) the changed pixels do count
  d = api.invert(y, model, c, mask=np.ones((32, 32), np.float32), progress=False)
  assert not np.allclose(a.latents, d.latents)


def test_noise_regularizer_and_schedule():
  """NVlabs pieces: the regulariser is 0-ish for white noise and large for smooth maps; the
  projector lr ramps up, holds, and ramps down to 0."""
  white = {'a': jax.random.normal(jax.random.PRNGKey(0), (32, 32))}
  smooth = {'a': jnp.outer(jnp.linspace(-1, 1, 32), jnp.ones(32))}
  assert float(engine.noise_regularizer(white)) < 0.01
  assert float(engine.noise_regularizer(smooth)) > 0.5
  n = engine.normalize_noise(smooth)['a']
  assert abs(float(n.mean())) < 1e-6 and abs(float((n ** 2).mean()) - 1) < 1e-5
  sched = engine.projector_schedule(0.1, 1000)
  lrs = np.asarray([sched(c) for c in (0, 25, 50, 500, 875, 1000)])
  np.testing.assert_allclose(lrs, [0, 0.05, 0.1, 0.1, 0.05, 0], atol=1e-6)
  scale = [float(engine.latent_noise_scale(s, 1000, 0.05, 0.75)) for s in (0, 375, 750, 900)]
  np.testing.assert_allclose(scale, [0.05, 0.0125, 0, 0], atol=1e-7)
