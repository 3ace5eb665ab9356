"""The domain-guided encoder (idinvert): its network, training steps, resume, files, and
in-domain inversion on the engine, on the 32 px official fixture generator."""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import load_config
from generators import checkpoint, trainer
from inversion import __main__ as cli
from inversion import encoders, engine as eng, images, latents
from inversion.encoders import domain, train as enc_train
from tests.test_inversion_api import image_dir, model  # noqa: F401  (fixtures)


def quick_train_config(*overrides):
  """4 steps of batch 4 with a narrow encoder; D features as F (no VGG weights in tests)."""
  return load_config('idinvert:train,quick', ['--config.loss.perceptual=discriminator',
                                               '--config.lr=1e-3', *overrides])


def random_encoder(model, scale=0.3):  # pylint: disable=redefined-outer-name
  """An encoder for `model` whose head is not zero (so E(x) depends on x)."""
  cfg = enc_train.encoder_config(quick_train_config(), model.g_config)
  variables = domain.init_encoder(cfg, model.g_vars['buffers']['mapping']['w_avg'],
                                  jax.random.PRNGKey(1))
  out = variables['params']['out']
  variables['params']['out']['weight'] = scale * jax.random.normal(
      jax.random.PRNGKey(2), out['weight'].shape)
  return domain.Encoder(cfg, variables, latents.generator_fingerprint(model),
                        {'generator_source': 'fixture'})


@pytest.mark.parametrize('channels,resolution', [(1, 32), (3, 64), (4, 256), (3, 32), (4, 64)])
def test_encoder_output_shape(channels, resolution):
  cfg = domain.EncoderConfig(resolution, channels, num_ws=7, w_dim=16, channel_base=512,
                             channel_max=32)
  img = jax.ShapeDtypeStruct((3, resolution, resolution, channels), jnp.float32)
  variables = jax.eval_shape(lambda: domain.init_encoder(cfg, jnp.zeros(16),
                                                         jax.random.PRNGKey(0)))
  out = jax.eval_shape(lambda v, x: domain.apply(cfg, v, x), variables, img)
  assert out.shape == (3, 7, 16)
  with pytest.raises(ValueError, match=r'encoder input must be \[B, 64, 64, 3\]'):
    bad = jax.ShapeDtypeStruct((1, 64, 64, 4), jnp.float32)
    jax.eval_shape(lambda v, x: domain.apply(dataclasses.replace(cfg, img_resolution=64,
                                                                   img_channels=3), v, x),
                   variables, bad)


def test_untrained_encoder_returns_w_avg():
  cfg = domain.EncoderConfig(32, 3, num_ws=8, w_dim=16, channel_base=512, channel_max=32)
  w_avg = jax.random.normal(jax.random.PRNGKey(3), (16,))
  variables = domain.init_encoder(cfg, w_avg, jax.random.PRNGKey(0))
  x = jax.random.uniform(jax.random.PRNGKey(4), (2, 32, 32, 3), minval=-1, maxval=1)
  # exact: the head's last layer starts at zero weights and bias, so w_avg + 0
  np.testing.assert_array_equal(domain.apply(cfg, variables, x),
                                np.broadcast_to(w_avg, (2, 8, 16)))


def test_r1_matches_finite_differences(model):  # pylint: disable=redefined-outer-name
  d = lambda img: model_d(model)(img)
  x = jax.random.uniform(jax.random.PRNGKey(5), (4, 32, 32, 3), minval=-1, maxval=1)
  _, r1, grad = jax.jit(lambda x: enc_train.r1_penalty(d, x))(x)
  np.testing.assert_allclose(r1, np.mean(np.sum(np.square(grad), axis=(1, 2, 3))), rtol=1e-5)
  total = jax.jit(lambda x: jnp.sum(d(x)))
  fd = lambda v, eps=1e-2: float((total(x + eps * v) - total(x - eps * v)) / (2 * eps))
  # Along the gradient's own direction the derivative is its norm; across it, 0. Central
  # differences in float32 over D's lrelu kinks: ~1% of the norm (a wrong or partial gradient
  # misses by far more)
  norm = float(jnp.linalg.norm(grad))
  np.testing.assert_allclose(fd(grad / norm), norm, rtol=3e-2)
  v = jax.random.normal(jax.random.PRNGKey(10), x.shape)
  v = v - jnp.sum(v * grad) / norm ** 2 * grad
  assert abs(fd(v / jnp.linalg.norm(v))) < 3e-2 * norm


def model_d(model):  # pylint: disable=redefined-outer-name
  from generators import networks  # pylint: disable=import-outside-toplevel
  return lambda img: networks.Discriminator(model.d_config).apply(model.d_vars, img)


@pytest.mark.parametrize('objective', ['real', 'fakes'])
def test_one_e_step_and_one_d_step_lower_their_losses(model, objective):  # noqa: F811
  config = quick_train_config(f'--config.objective={objective}', '--config.lr=1e-4')
  state = enc_train.init_state(config, model)
  feature_terms, term_params = ((), {}) if objective == 'fakes' else enc_train._feature_terms(
      config, model)
  _, replicated, batch = trainer.data_mesh(config.batch_size)
  # the steps (and input shardings) the `trained` runs compile too (lr is a step argument)
  e_step, _, d_r1 = enc_train._cached_steps(  # pylint: disable=protected-access
      enc_train._step_config(config).to_json(), model.g_config,  # pylint: disable=protected-access
      model.d_config, feature_terms, batch)
  g_vars, term_params = jax.device_put((model.g_vars, term_params), replicated)
  z = jax.random.normal(jax.random.PRNGKey(7), (4, model.g_config.z_dim))
  x = jax.device_put(model.synthesis(model.mapping(z, psi=0.7)), batch)
  e_x = x if objective == 'real' else None  # 'fakes' draws its own images
  key = jax.random.PRNGKey(8)
  # fresh copies: the steps donate the state
  copy = lambda s: jax.device_put(jax.tree_util.tree_map(jnp.array, s), replicated)
  # lr 0: the loss at the initial weights (the update is scaled to nothing)
  _, metrics0, fake = e_step(copy(state), e_x, key, g_vars, term_params, 0.0)
  stepped, _, _ = e_step(copy(state), e_x, key, g_vars, term_params, 1e-3)
  _, metrics2, _ = e_step(stepped, e_x, key, g_vars, term_params, 0.0)
  print(objective, float(metrics0['e_loss']), '->', float(metrics2['e_loss']))
  assert float(metrics2['e_loss']) < float(metrics0['e_loss'])
  if objective == 'real':
    d0, m0 = d_r1(copy(state), x, fake, 0.0, 10.0)
    d1, _ = d_r1(copy(state), x, fake, 1e-3, 10.0)
    _, m1 = d_r1(d1, x, fake, 0.0, 10.0)
    total = lambda m: float(m['d_loss']) + 5.0 * float(m['r1'])
    print('D', total(m0), '->', total(m1))
    assert total(m1) < total(m0)
    assert not np.array_equal(d0.d_params['b4']['out']['weight'],
                              d1.d_params['b4']['out']['weight'])


@pytest.fixture(scope='module')
def trained(tmp_path_factory, model, image_dir):  # noqa: F811
  """4 steps straight, and the same run resumed from its step-2 checkpoint."""
  base = tmp_path_factory.mktemp('enc')
  config = quick_train_config()
  straight = enc_train.train_encoder(config, model, str(image_dir), base / 'straight',
                                     progress=False)
  shutil.copytree(base / 'straight', base / 'resumed')
  shutil.rmtree(base / 'resumed' / 'checkpoints' / '4')
  resumed = enc_train.train_encoder(config, model, str(image_dir), base / 'resumed',
                                    progress=False)
  return {'base': base, 'config': config, 'straight': straight, 'resumed': resumed}


def test_resume_is_exact(trained):  # pylint: disable=redefined-outer-name
  assert int(trained['straight'].step) == int(trained['resumed'].step) == 4
  for a, b in zip(jax.tree_util.tree_leaves(trained['straight']),
                  jax.tree_util.tree_leaves(trained['resumed'])):
    # the same cached compiled steps on bit-identical restored state and data
    np.testing.assert_array_equal(a, b)
  records = trainer.read_records(trained['base'] / 'resumed')
  assert [r['step'] for r in records] == [2, 4]  # step 4's record was redone, not doubled
  assert (trained['base'] / 'resumed' / 'samples' / 'step000004.png').exists()


def test_resuming_with_another_config_is_refused(trained, model):  # noqa: F811
  with pytest.raises(ValueError, match='different config'):
    enc_train.train_encoder(quick_train_config('--config.adv_weight=0.5'), model, 'x',
                            trained['base'] / 'straight')


def test_export_load_and_wrong_generator(trained, model, tmp_path):  # noqa: F811
  path = enc_train.export_encoder(trained['base'] / 'straight', tmp_path / 'enc', model)
  enc = encoders.load_encoder(path, model)
  assert enc.metadata['training_steps'] == 4
  x = jax.random.uniform(jax.random.PRNGKey(9), (2, 32, 32, 3), minval=-1, maxval=1)
  want = domain.apply(enc.config, {'params': trained['straight'].e_params,
                                   'buffers': enc.variables['buffers']}, x)
  # the restored weights through the jitted encoder vs the trained ones eagerly: sums may fuse
  # apart (3e-8 seen); other weights (another step) differ by > 1e-3
  np.testing.assert_allclose(enc(np.asarray(x)), want, rtol=1e-5, atol=1e-6)
  other = checkpoint.Model(model.g_config, jax.tree_util.tree_map(lambda a: a * 1.01,
                                                                  model.g_vars),
                           model.d_config, model.d_vars, {'source': 'other.pkl'})
  with pytest.raises(encoders.EncoderError) as err:
    encoders.load_encoder(path, other)
  message = str(err.value)
  assert enc.generator_id in message and latents.generator_fingerprint(other) in message
  assert '\n' not in message
  (path / 'encoder.json').write_text('{"format": ')
  with pytest.raises(encoders.EncoderError, match='encoder.json is corrupt'):
    encoders.load_encoder(path)


def test_domain_term_gradient_flows_through_the_encoder(model):  # noqa: F811
  enc = random_encoder(model)
  term = encoders.domain_term(enc.config)
  synth = lambda ws: model.synthesis(ws[None])[0]
  z = jax.random.normal(jax.random.PRNGKey(11), (1, model.g_config.z_dim))
  ws0 = np.asarray(model.mapping(z))[0]

  def loss(ws, through_encoder=True):
    image = synth(ws)
    ctx = eng.LatentContext(ws, ws, {}, image, image, None, jnp.zeros((), jnp.int32))
    if through_encoder:
      return term(enc.variables, ctx)
    recoded = jax.lax.stop_gradient(domain.apply(enc.config, enc.variables, image[None])[0])
    return jnp.mean(jnp.square(ws - recoded))

  g_full = jax.jit(jax.grad(loss))(ws0)
  g_direct = jax.jit(jax.grad(lambda w: loss(w, False)))(ws0)
  through_e = float(jnp.linalg.norm(g_full - g_direct) / jnp.linalg.norm(g_direct))
  print('share of the gradient through E(G(w)):', through_e)
  assert through_e > 1e-2
  # along the gradient, a step of 1e-2 in w (|w| ~ 1): the derivative is the gradient's norm
  # (central differences over the lrelu kinks of G and E; without E the gradient is 5x off)
  norm = float(jnp.linalg.norm(g_full))
  eps = 1e-2
  full = jax.jit(loss)
  fd = (full(ws0 + eps * g_full / norm) - full(ws0 - eps * g_full / norm)) / (2 * eps)
  print('derivative along the gradient: autodiff', norm, 'finite differences', float(fd))
  np.testing.assert_allclose(float(fd), norm, rtol=2e-2)  # 0.2% seen


def test_encoder_and_idinvert_methods_from_the_cli(model, image_dir, tmp_path,  # noqa: F811
                                                   monkeypatch):
  enc = random_encoder(model)
  path = encoders.save_encoder(tmp_path / 'enc', enc)
  monkeypatch.setattr(checkpoint, 'load', lambda path: model)
  common = ['--images', str(image_dir), '--config.loss.perceptual=none',
            '--config.metrics.lpips=off', '--no-progress', '--encoder', str(path)]
  assert cli.main(['invert', '--method', 'encoder', '--out', str(tmp_path / 'e')] + common) == 0
  targets, names = images.load_images(str(image_dir), 32, 3)
  for name, ws in zip(names, enc(targets)):
    rec = latents.load_latents(tmp_path / 'e' / 'latents' / f'{name}.npz', model)
    # E alone: zero steps; the engine's batch of 3 vs the encoder's: convs may sum apart
    np.testing.assert_allclose(rec.ws, ws, rtol=1e-5, atol=1e-5)
  assert cli.main(['invert', '--method', 'idinvert', '--steps', '2', '--out',
                   str(tmp_path / 'i')] + common) == 0
  meta = json.loads((tmp_path / 'i' / 'metrics.json').read_text())
  assert meta['config']['encoder']['path'] == str(path)
  for name, start in zip(names, enc(targets)):  # the engine ran the in-domain term from E(x)
    rec = latents.load_latents(tmp_path / 'i' / 'latents' / f'{name}.npz', model)
    assert rec.losses['domain'].shape == (2,) and np.all(rec.losses['domain'] > 0)
    assert not np.allclose(rec.ws, start, atol=1e-4)  # the codes moved from E(x)
  # another generator's encoder: one error line naming both generators
  other_id = 'sha256:0123456789abcdef'
  encoders.save_encoder(tmp_path / 'other', dataclasses.replace(enc, generator_id=other_id))
  with pytest.raises(SystemExit) as exit_info:
    cli.main(['invert', '--method', 'idinvert', '--out', str(tmp_path / 'x')]
             + common[:-1] + [str(tmp_path / 'other')])
  line = str(exit_info.value).splitlines()[0]  # the second line: how to see the traceback
  assert line.startswith('error: encoder ') and 'trained for generator' in line
  assert other_id in line and latents.generator_fingerprint(model) in line
  assert not (tmp_path / 'x' / 'latents').exists()


def test_diffuse_and_inpaint_fit_only_their_region(model):  # noqa: F811
  from inversion import editing  # pylint: disable=import-outside-toplevel
  enc = random_encoder(model, scale=0.05)
  z = jax.random.normal(jax.random.PRNGKey(13), (2, model.g_config.z_dim))
  context, source = np.asarray(model.synthesis(model.mapping(z, psi=0.7)))
  region = np.zeros((32, 32), np.float32)
  region[8:24, 8:24] = 1
  overrides = ['--config.steps=8', '--config.loss.perceptual=none', '--config.metrics.lpips=off']
  composite, result = editing.diffuse(model, context, source, region, encoder=enc,
                                      overrides=overrides)
  inside = region.astype(bool)
  np.testing.assert_array_equal(composite[inside], source[inside])  # exact: a copy of pixels
  np.testing.assert_array_equal(composite[~inside], context[~inside])
  start = np.asarray(model.synthesis(jnp.asarray(enc(composite[None]))))[0]
  region_mse = lambda img: float(np.mean(np.square(img - composite)[inside]))
  print('region MSE from E(x):', region_mse(start), 'after 8 steps:',
        region_mse(result.reconstructions[0]))
  assert region_mse(result.reconstructions[0]) < 0.8 * region_mse(start)
  # the reported metric is the region's (float32 sums in another order)
  np.testing.assert_allclose(result.metrics['masked_mse'][0], region_mse(
      result.reconstructions[0]), rtol=1e-4)
  filled = editing.inpaint(model, context, 1 - region, encoder=enc, overrides=overrides)
  assert filled.reconstructions.shape == (1, 32, 32, 3)
  with pytest.raises(ValueError, match='marks no pixel'):
    editing.inpaint(model, context, np.zeros((32, 32)), encoder=enc, overrides=overrides)


def test_shipped_encoder_belongs_to_the_embedded_model(model):  # noqa: F811
  """The committed encoder loads for the embedded model, reconstructs held-out crops better
  than its start (the mean code), and refuses another generator in one line."""
  embedded = checkpoint.load(None)
  enc = encoders.default_encoder(embedded)
  x = enc_train.heldout_images(embedded.resolution)[::6]  # 8 clean held-out crops
  rgb_mse = lambda ws: float(np.mean(np.square(
      np.asarray(embedded.synthesis(jnp.asarray(ws)))[..., :3] - x[..., :3])))
  mean_code = np.broadcast_to(embedded.g_vars['buffers']['mapping']['w_avg'],
                              (len(x), embedded.g_config.num_ws, embedded.g_config.w_dim))
  print('held-out RGB MSE: E(x)', rgb_mse(enc(x)), 'mean code', rgb_mse(mean_code))
  assert rgb_mse(enc(x)) < 0.7 * rgb_mse(mean_code)
  with pytest.raises(encoders.EncoderError, match='belongs to the embedded model'):
    encoders.default_encoder(model)
