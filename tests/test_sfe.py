"""StyleFeatureEditor on the API and CLI: inversion writes F_k beside ws, edits go through the
editor, and bad SFE files or sizes are refused with the fix. (The networks' parity with the
official code is tests/test_sfe_networks.py.)"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import sfe as sfe_config
from generators import checkpoint, networks
from inversion import api, directions, images, latents, sfe
from inversion.encoders import sfe as sfe_nets
from inversion.__main__ import main

RES = 32


@pytest.fixture(scope='module')
def tiny():
  """A random 32 px RGB generator and untrained SFE networks sized for it."""
  g = networks.GeneratorConfig(z_dim=16, w_dim=16, img_resolution=RES, channel_base=128,
                               channel_max=16, mapping_layers=2)
  g_vars = networks.init_generator(g, jax.random.PRNGKey(0))
  g_vars = jax.tree_util.tree_map_with_path(  # a non-zero mean code, as a trained G has
      lambda p, x: jnp.full_like(x, 0.3) if 'w_avg' in jax.tree_util.keystr(p) else x, g_vars)
  model = checkpoint.Model(g, g_vars, None, None, {'source': 'tiny test generator'})
  return model, sfe.load(sfe.RANDOM, model)


def _images(model, n, seed=0):
  z = jax.random.normal(jax.random.PRNGKey(seed), (n, model.g_config.z_dim))
  return np.clip(np.asarray(model.synthesis(model.mapping(z))), -1, 1)


def test_untrained_sfe_fits_the_generator(tiny):
  model, nets = tiny
  assert nets.feature_layer == 'b8.conv1'  # the inverter's 32 px input / 4
  assert not nets.trained and nets.editor_config is not None and nets.e4e_config is None


def test_invert_writes_features_and_reconstructs_with_them(tiny, tmp_path):
  model, nets = tiny
  x = _images(model, 3)
  result = api.invert(x, model, 'sfe', encoder=nets, out_dir=tmp_path / 'out')
  g = model.g_config
  assert result.ws.shape == (3, g.num_ws, g.w_dim) and result.steps == 0
  assert result.features.shape == (3, 8, 8, g.channels(8))
  # No e4e file and no domain-guided encoder for this generator: w_e = the inverter's ws.
  assert result.encoder_source == 'inverter'
  np.testing.assert_array_equal(result.encoder_ws, result.ws)
  # The reconstruction is G(ws) with editor(F_k, 0) injected: not G(ws) alone.
  plain = np.asarray(model.synthesis(result.ws))
  assert np.abs(result.reconstructions - plain).max() > 1e-3
  np.testing.assert_allclose(sfe.render(nets, model, result.ws, result.features),
                             result.reconstructions, atol=1e-5)
  # Batched, jitted per batch: a batch of one gives the same image.
  one = sfe.invert(x[1:2], model, nets)
  np.testing.assert_allclose(one.reconstructions[0], result.reconstructions[1], atol=1e-4)
  rec = latents.load_latents(tmp_path / 'out' / 'latents' / 'image_001.npz', model)
  np.testing.assert_array_equal(rec.features, result.features[1])
  np.testing.assert_array_equal(rec.encoder_ws, result.encoder_ws[1])
  assert rec.feature_layer == 'b8.conv1' and rec.encoder_source == 'inverter'
  assert set(result.metrics) >= {'mse', 'psnr', 'ssim'}


def test_edit_moves_codes_and_features(tiny):
  model, nets = tiny
  e4e_config = sfe_config.networks_for(sfe_config.get_config('small'), model.g_config)[2]
  nets = dataclasses.replace(nets, e4e_config=e4e_config,
                             e4e_vars=sfe_nets.init_e4e(e4e_config, jax.random.PRNGKey(4)))
  x = _images(model, 2, seed=3)
  enc = sfe.encode(nets, model, x)
  assert enc.encoder_source == 'e4e'  # w_e = latent_avg + e4e(x), as the official runner
  w_avg = model.g_vars['buffers']['mapping']['w_avg']
  np.testing.assert_allclose(enc.encoder_ws, w_avg + sfe_nets.e4e_apply(
      e4e_config, nets.e4e_vars, jnp.asarray(x)), atol=1e-5)
  rest = sfe.render(nets, model, enc.ws, enc.features)
  same = sfe.edit(nets, model, enc.ws, enc.features, enc.encoder_ws, lambda w: w)
  np.testing.assert_allclose(same, rest, atol=1e-5)  # delta 0, same codes: the reconstruction
  rng = np.random.default_rng(0)
  d = directions.given(rng.normal(size=(1, model.g_config.w_dim)), ['d'],
                       generator_id='tiny', num_ws=model.g_config.num_ws)
  move = lambda w: directions.apply(w, d.direction('d'), 3.0)
  edited = sfe.edit(nets, model, enc.ws, enc.features, enc.encoder_ws, move)
  # The editor sees delta = F(w_e) - F(edit(w_e)) != 0: its output differs from F_k's render
  # with the edited codes alone.
  codes_only = sfe.render(nets, model, move(enc.ws), enc.features, enc.encoder_ws,
                          enc.encoder_ws)
  assert np.abs(edited - codes_only).max() > 1e-4


def test_cli_sfe_folder_job_is_resumable(tiny, tmp_path, monkeypatch):
  model, _ = tiny
  src = tmp_path / 'src'
  for i, im in enumerate(_images(model, 3, seed=5)):
    images.save_image(str(src / f'im{i}.png'), im)
  monkeypatch.setattr(checkpoint, 'load', lambda *a, **k: model)
  args = ['invert', '--method', 'sfe', '--encoder', 'random', '--images', str(src),
          '--out', str(tmp_path / 'out'), '--batch-size', '2', '--no-progress']
  assert main(args) == 0
  lat = tmp_path / 'out' / 'latents'
  assert sorted(p.name for p in lat.iterdir()) == ['im0.npz', 'im1.npz', 'im2.npz']
  assert latents.load_latents(lat / 'im2.npz').features.shape[:2] == (8, 8)
  assert (tmp_path / 'out' / 'metrics.csv').is_file() and (tmp_path / 'out' / 'grid.png').is_file()
  first = (lat / 'im0.npz').stat().st_mtime_ns
  assert main(args) == 0                       # rerun: every image is done, none rewritten
  assert (lat / 'im0.npz').stat().st_mtime_ns == first
  with pytest.raises(SystemExit, match='--steps'):
    main(args + ['--steps', '10'])
  # Edit an SFE latents file with an InterFaceGAN-style boundary [1, w_dim] as it is.
  boundary = tmp_path / 'boundary.npy'
  np.save(boundary, np.random.default_rng(1).normal(size=(1, model.g_config.w_dim)))
  edit = ['edit', 'direction', '--latents', str(lat / 'im0.npz'), '--direction', str(boundary),
          '--strength', '3', '--out', str(tmp_path / 'e.png')]
  with pytest.raises(SystemExit, match='--encoder'):
    main(edit)                                 # F_k needs the SFE networks
  assert main(edit + ['--encoder', 'random']) == 0
  assert images.load_image(str(tmp_path / 'e.png'), RES, 3).shape == (RES, RES, 3)


def test_bad_sfe_files_and_sizes_are_refused(tiny, tmp_path):
  model, nets = tiny
  with pytest.raises(FileNotFoundError, match='sfe_editor_light.pt'):
    sfe.load(tmp_path / 'missing.pt', model)
  with pytest.raises(sfe.SFEError, match='random'):
    api.invert(_images(model, 1), model, 'sfe')  # no networks given
  wrong = dataclasses.replace(nets, inverter_config=dataclasses.replace(
      nets.inverter_config, w_dim=32))  # e.g. official files with another generator
  with pytest.raises(sfe.SFEError, match='takes 8 x 16 codes'):
    wrong.check(model)
