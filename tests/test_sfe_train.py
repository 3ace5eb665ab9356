"""SFE training (inversion/encoders/sfe_train.py) on a tiny 32 px generator with a D: one step of
each stage lowers its loss, the blend ramp and D's schedule follow the config, resume is exact,
stage 2 leaves the inverter as it was, the identity loss is off without its file, and the
exported folder loads (and is refused for another generator)."""

import logging
import shutil

import jax
import numpy as np
import pytest

from configs import load_config
from generators import checkpoint, networks, trainer
from inversion import images, sfe
from inversion.__main__ import main
from inversion.encoders import sfe_train

RES = 32


def _model(seed=0):
  g = networks.GeneratorConfig(z_dim=16, w_dim=16, img_resolution=RES, channel_base=128,
                               channel_max=16, mapping_layers=2)
  d = networks.DiscriminatorConfig(img_resolution=RES, channel_base=128, channel_max=16)
  key_g, key_d = jax.random.split(jax.random.PRNGKey(seed))
  return checkpoint.Model(g, networks.init_generator(g, key_g), d,
                          networks.init_discriminator(d, key_d), {'source': f'tiny G {seed}'})


@pytest.fixture(scope='module')
def model():
  return _model()


@pytest.fixture(scope='module')
def image_dir(tmp_path_factory, model):  # pylint: disable=redefined-outer-name
  d = tmp_path_factory.mktemp('images')
  z = jax.random.normal(jax.random.PRNGKey(3), (4, model.g_config.z_dim))
  for i, im in enumerate(np.clip(np.asarray(model.synthesis(model.mapping(z))), -1, 1)):
    images.save_image(str(d / f'img{i}.png'), im)
  return d


def quick(stage, *overrides):
  return load_config(f'sfe:small,train_{stage},quick', ['--config.loss.perceptual=discriminator',
                                                        *overrides])


@pytest.fixture(scope='module')
def runs(tmp_path_factory, model, image_dir):  # pylint: disable=redefined-outer-name
  """Stage 1 straight, stage 1 resumed from its step-2 checkpoint, and stage 2 on stage 1."""
  base = tmp_path_factory.mktemp('sfe')
  config = quick('inverter')
  straight = sfe_train.train_sfe(config, model, str(image_dir), base / 'inv', progress=False)
  shutil.copytree(base / 'inv', base / 'resumed')
  shutil.rmtree(base / 'resumed' / 'checkpoints' / '4')
  resumed = sfe_train.train_sfe(config, model, str(image_dir), base / 'resumed', progress=False)
  inverter_before = sfe_train.load_networks(base / 'inv', model).inverter_vars
  editor_config = quick('editor', f'--config.editor.inverter={base / "inv"}',
                        '--config.loss.adv_weight=0')  # D's schedule: stage 1 (compiles less)
  editor = sfe_train.train_sfe(editor_config, model, str(image_dir), base / 'edit',
                               progress=False)
  return {'base': base, 'config': config, 'straight': straight, 'resumed': resumed,
          'inverter_before': inverter_before, 'editor': editor, 'editor_config': editor_config}


def _steps(config, model):  # pylint: disable=redefined-outer-name
  """The compiled steps the runs use (cached), their inputs, and a fresh state."""
  inv_cfg, edit_cfg, layer = sfe_train.network_configs(config, model.g_config)
  terms, term_params = sfe_train.enc_train._feature_terms(config, model)  # pylint: disable=protected-access
  _, replicated, batch = trainer.data_mesh(config.batch_size)
  return sfe_train._cached_steps(  # pylint: disable=protected-access
      sfe_train._step_config(config), model.g_config, model.d_config, inv_cfg,  # pylint: disable=protected-access
      edit_cfg, layer, terms, None, 'inverter', None), term_params, replicated, batch


@pytest.mark.parametrize('stage', ['inverter', 'editor'])
def test_one_step_lowers_the_loss(stage, model, runs):  # pylint: disable=redefined-outer-name
  config = runs['config'] if stage == 'inverter' else runs['editor_config']
  (steps, _), term_params, replicated, batch = _steps(config, model)
  frozen = None
  if stage == 'editor':
    frozen, _, _ = sfe_train._frozen(config, model, runs['base'] / 'edit',  # pylint: disable=protected-access
                                     sfe_train.network_configs(config, model.g_config)[0])
  z = jax.random.normal(jax.random.PRNGKey(7), (config.batch_size, model.g_config.z_dim))
  x = jax.device_put(np.asarray(model.synthesis(model.mapping(z, psi=0.7))), batch)
  shared = jax.device_put((model.g_vars, term_params,
                           model.g_vars['buffers']['mapping']['w_avg'], frozen), replicated)
  g_vars, term_params, latent_avg, frozen = shared
  args = (x, jax.random.PRNGKey(8), g_vars, term_params, latent_avg, frozen)  # as the loop's
  state = jax.device_put(sfe_train.init_state(config, model), replicated)
  step = steps[sfe_train.trains_d(config)]  # the variant the run compiled
  stepped, before, _ = step(state, *args)   # the loss at the initial weights, and a step
  _, after, _ = step(stepped, *args)        # the loss after it, on the same batch
  print(stage, float(before['loss']), '->', float(after['loss']))
  assert float(after['loss']) < float(before['loss'])


def test_ramp_and_d_schedule_follow_the_config(runs):  # pylint: disable=redefined-outer-name
  config = quick('inverter', '--config.feature_ramp_slope=0.3', '--config.d_start_step=3',
                 '--config.r1_interval=2')
  assert [float(sfe_train.ramp(config, s)) for s in (0, 1, 3, 4)] == pytest.approx(
      [0, 0.3, 0.9, 1.0])
  assert [sfe_train.d_active(config, s) for s in range(5)] == [False] * 3 + [True] * 2
  assert [sfe_train.r1_due(config, s) for s in (3, 4, 5)] == [True, False, True]
  assert not sfe_train.d_active(quick('inverter', '--config.loss.adv_weight=0'), 10)
  assert float(sfe_train.ramp(quick('editor'), 0)) == 1.0  # stage 2: the inverter is done
  # The runs' records: the blend used at steps 1 and 3 (records at 2 and 4); D from step 0 in
  # stage 1 (R1 every step), none in stage 2 (adv_weight 0).
  records = trainer.read_records(runs['base'] / 'inv')
  slope = runs['config'].feature_ramp_slope
  assert [r['scale'] for r in records] == pytest.approx([slope * 1, slope * 3])
  assert all('adv' in r and 'd_loss' in r and np.isfinite(r['r1']) for r in records)
  assert not any('adv' in r or 'd_loss' in r for r in trainer.read_records(runs['base'] / 'edit'))


def test_resume_is_exact(model, runs):  # pylint: disable=redefined-outer-name
  assert int(runs['straight'].step) == int(runs['resumed'].step) == 4
  for a, b in zip(jax.tree_util.tree_leaves(runs['straight']),
                  jax.tree_util.tree_leaves(runs['resumed'])):
    np.testing.assert_array_equal(a, b)
  assert [r['step'] for r in trainer.read_records(runs['base'] / 'resumed')] == [2, 4]
  with pytest.raises(ValueError, match='different config'):
    sfe_train.train_sfe(quick('inverter', '--config.lr=0.5'), model, 'x', runs['base'] / 'inv')


def test_stage_two_leaves_the_inverter_unchanged(model, runs, tmp_path):  # pylint: disable=redefined-outer-name
  after = sfe_train.load_networks(runs['base'] / 'inv', model).inverter_vars
  exported = sfe_train.export_sfe(runs['base'] / 'edit', tmp_path / 'sfe', model)
  nets = sfe.load(str(exported), model)
  for tree in (after, nets.inverter_vars):
    for a, b in zip(jax.tree_util.tree_leaves(runs['inverter_before']),
                    jax.tree_util.tree_leaves(tree)):
      np.testing.assert_array_equal(a, b)
  assert nets.editor_config is not None and nets.trained
  # The editor did train, and the exported folder inverts through the pipeline.
  init = sfe_train.init_state(runs['editor_config'], model).params['fast']
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree_util.tree_leaves(init), jax.tree_util.tree_leaves(nets.editor_vars['params'])))
  z = jax.random.normal(jax.random.PRNGKey(5), (4, model.g_config.z_dim))  # the grids' batch
  result = sfe.invert(np.asarray(model.synthesis(model.mapping(z))), model, nets)
  assert np.isfinite(result.reconstructions).all()
  with pytest.raises(sfe.SFEError, match='trained for generator'):
    sfe.load(str(exported), _model(seed=1))


def test_identity_loss_is_off_with_a_log_line_without_its_file(tmp_path, caplog):
  config = quick('inverter', f'--config.loss.arcface_weights={tmp_path / "model_ir_se50.pth"}')
  with caplog.at_level(logging.WARNING):
    assert sfe_train.identity_network(config) is None
  assert 'identity loss off' in caplog.text
  assert sfe_train.identity_network(quick('inverter', '--config.loss.id_weight=0')) is None


def test_train_and_export_from_the_cli(model, image_dir, tmp_path, monkeypatch):  # pylint: disable=redefined-outer-name
  monkeypatch.setattr(checkpoint, 'load', lambda *a, **k: model)
  work = tmp_path / 'run'
  args = ['train-sfe', '--stage', 'inverter', '--config', 'sfe:small,train_inverter,quick',
          '--data', str(image_dir), '--workdir', str(work), '--no-progress',
          '--config.loss.perceptual=discriminator']
  assert main(args) == 0
  assert main(args) == 0  # rerun: done, nothing to do
  assert main(['export-sfe', '--workdir', str(work), '--out', str(tmp_path / 'sfe')]) == 0
  assert sfe.load(str(tmp_path / 'sfe'), model).editor_config is None
  with pytest.raises(SystemExit, match='inverter-workdir'):
    main(['train-sfe', '--stage', 'inverter', '--data', 'x', '--workdir', str(work),
          '--inverter-workdir', str(work)])
