"""inversion.encoders.sfe against the official StyleFeatureEditor modules.

tests/fixtures/sfe_ref.npz holds random weights of the official modules (narrow widths) and
everything they computed, in float64, on a fixed image (tests/fixtures/make_sfe_fixture.py,
README there). Here the weights are written as the official files (same prefixes, by the
torch-free tests/torch_format_writer.py), read back by `load_official` / `generators.load` as a
user's file would be, and every module and the whole SFE forward pass must agree to 1e-4
(max |ours - official| / max |official|; seen: ~5e-7).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import sfe as sfe_config
from generators import checkpoint, networks
from inversion import metrics
from inversion.encoders import sfe
from tests import torch_format_writer as W
from tests.conftest import fixture_path

TOL = 1e-4
INPUT_SIZE = 64      # the fixture's inverter / e4e input side (the official 256)
FEATURE_INDEX = 5    # rosinality feature index of 'b16.conv1' (SFE's 9 = 'b64.conv1')
PARTS = ('inverter', 'editor', 'e4e', 'arcface', 'g')


def rel(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.abs(ours - ref).max() / np.abs(ref).max())


def unit(u8: np.ndarray) -> np.ndarray:
  return u8.astype(np.float32) / np.float32(127.5) - np.float32(1)


@pytest.fixture(scope='module')
def ref():
  with np.load(fixture_path('sfe_ref.npz')) as f:
    return dict(f)


def _part(ref, part: str, prefix: str = '') -> dict:
  return {prefix + k[len(part) + 1:]: v for k, v in ref.items() if k.startswith(part + '/')}


def _files(ref) -> dict:
  """The official files' objects, as torch.save wrote them (see make_sfe_fixture --pt-dir)."""
  inverter = _part(ref, 'inverter')
  opts = W.NewObj(W.Global('argparse', 'Namespace'), state={'stylegan_size': 64})
  return {
      'sfe_inverter_light.pt': {'state_dict': W.ordered_dict(
          {f'encoder.{k}': v for k, v in inverter.items()}.items())},
      'sfe_editor_light.pt': {'state_dict': W.ordered_dict({
          **_part(ref, 'editor', 'encoder.'), **_part(ref, 'inverter', 'inverter.'),
          'discriminator.b4.out.weight': np.zeros((1, 8), np.float32)}.items())},
      'e4e_ffhq_encode.pt': {'state_dict': W.ordered_dict({
          **_part(ref, 'e4e', 'encoder.'), **_part(ref, 'g', 'decoder.')}.items()),
          'latent_avg': ref['e4e_latent_avg'], 'opts': opts},
      'model_ir_se50.pth': W.ordered_dict(_part(ref, 'arcface').items()),
      'generator.pt': {'g_ema': W.ordered_dict(_part(ref, 'g').items()),
                       'latent_avg': ref['latent_avg']},
  }


@pytest.fixture(scope='module')
def files(ref, tmp_path_factory):
  folder = tmp_path_factory.mktemp('sfe_files')
  paths = {}
  for name, obj in _files(ref).items():
    paths[name] = folder / name
    W.write_torch_zip(obj, paths[name])
  return paths


@pytest.fixture(scope='module')
def loaded(files):
  return {name: sfe.load_official(files[name], INPUT_SIZE) for name in
          ('sfe_inverter_light.pt', 'sfe_editor_light.pt', 'e4e_ffhq_encode.pt',
           'model_ir_se50.pth')}


@pytest.fixture(scope='module')
def model(files):
  return checkpoint.load(files['generator.pt'])


@pytest.fixture(autouse=True)
def _highest():
  with jax.default_matmul_precision('highest'):
    yield


def test_kinds_configs_and_notes(loaded):
  inv, edit, e4e, arc = (loaded[n] for n in ('sfe_inverter_light.pt', 'sfe_editor_light.pt',
                                            'e4e_ffhq_encode.pt', 'model_ir_se50.pth'))
  assert [w.kind for w in (inv, edit, e4e, arc)] == list(sfe.KINDS)
  assert inv.inverter_config == edit.inverter_config == sfe.InverterConfig(
      INPUT_SIZE, (4, 8, 12, 16), (1, 2, 2, 1), 3, 10, 16, 16, 6)
  assert edit.editor_config == sfe.EditorConfig(16, 6) and inv.editor_vars is None
  assert e4e.e4e_config == sfe.E4EConfig(INPUT_SIZE, (4, 8, 12, 16), (3, 4, 14, 3), 10, 16, 4)
  assert arc.arcface_config == sfe.ArcFaceConfig((4, 8, 12, 16), (1, 1, 2, 1), 4, 16, True)
  assert e4e.latent_avg.shape == (10, 16)
  assert any('discriminator' in n for n in edit.notes)
  assert any('decoder' in n for n in e4e.notes)
  default = sfe.load_official(loaded['sfe_inverter_light.pt'].path)
  assert default.inverter_config.input_size == sfe.InverterConfig().input_size == 256


def test_resize_bilinear(ref):
  x = sfe.resize_bilinear(jnp.asarray(unit(ref['image_u8'])), INPUT_SIZE)
  assert rel(x, ref['x']) < TOL


def test_inverter_backbone(ref, loaded):
  w = loaded['sfe_editor_light.pt']  # the inverter inside the editor file: the same weights
  offset, f_pred = sfe.inverter_apply(w.inverter_config, w.inverter_vars, ref['x'])
  assert rel(offset, ref['ws_offset']) < TOL
  assert rel(ref['latent_avg'] + offset, ref['ws']) < TOL
  assert rel(f_pred, ref['f_pred']) < TOL


def test_fuser_and_editor(ref, loaded):
  w = loaded['sfe_editor_light.pt']
  assert rel(sfe.fuse(w.inverter_config, w.inverter_vars, ref['f_pred'], ref['f_w']),
             ref['f_k']) < TOL
  assert rel(sfe.editor_apply(w.editor_config, w.editor_vars, ref['f_k'], ref['delta']),
             ref['f_edit']) < TOL


def test_e4e(ref, loaded):
  w = loaded['e4e_ffhq_encode.pt']
  assert rel(sfe.e4e_apply(w.e4e_config, w.e4e_vars, ref['x']), ref['e4e_offset']) < TOL


def test_arcface(ref, loaded, files):
  w = loaded['model_ir_se50.pth']
  assert rel(sfe.arcface_apply(w.arcface_config, w.arcface_vars, ref['arcface_faces']),
             ref['arcface_embedding']) < TOL
  images = unit(ref['arcface_image_u8'])  # pSp's crop of a 256 px image, inside features_fn
  assert rel(sfe.arcface_crop(jnp.asarray(images)), ref['arcface_faces']) < TOL
  features_fn = metrics.feature_network('arcface', files['model_ir_se50.pth'])
  emb = features_fn(images)
  assert rel(emb, ref['arcface_embedding']) < TOL
  np.testing.assert_allclose(metrics.identity_similarity(images, images,
                                                         features_fn=features_fn), 1, atol=1e-5)


def test_generator_feature_hook(ref, model):
  """F_w (early stop) and G(ws, F_k) at feature_scale 1 and 0.5, on the rosinality file."""
  layer = networks.feature_layer_name(model.g_config, FEATURE_INDEX)
  assert layer == f'b{INPUT_SIZE // sfe.FEATURE_STRIDE}.conv1'
  cfg, gv = model.g_config, model.g_vars
  assert rel(networks.synthesis_features(cfg, gv, ref['ws'], layer), ref['f_w']) < TOL
  for scale, key in ((1.0, 'img_scale1'), (0.5, 'img_scale05')):
    img = networks.synthesis(cfg, gv, ref['ws'], feature_layer=layer, features=ref['f_k'],
                             feature_scale=scale)
    assert rel(img, ref[key]) < TOL


def test_whole_forward_pass(ref, loaded, model):
  """The user's image -> ws, F_k, reconstructions, an edit: SFE's forward passes on ours."""
  inv, edit = loaded['sfe_inverter_light.pt'], loaded['sfe_editor_light.pt']
  e4e = loaded['e4e_ffhq_encode.pt']
  cfg, gv = model.g_config, model.g_vars
  layer = networks.feature_layer_name(cfg, FEATURE_INDEX)
  latent_avg = jnp.asarray(ref['latent_avg'])

  @jax.jit
  def forward(images, direction):
    x = sfe.resize_bilinear(images, INPUT_SIZE)
    offset, f_pred = sfe.inverter_apply(inv.inverter_config, inv.inverter_vars, x)
    ws = latent_avg + offset
    f_w = networks.synthesis_features(cfg, gv, ws, layer)
    f_k = sfe.fuse(inv.inverter_config, inv.inverter_vars, f_pred, f_w)
    images = [networks.synthesis(cfg, gv, ws, feature_layer=layer, features=f_k,
                                 feature_scale=s) for s in (1.0, 0.5)]
    w_e = latent_avg + sfe.e4e_apply(e4e.e4e_config, e4e.e4e_vars, x)
    delta = (networks.synthesis_features(cfg, gv, w_e, layer)
             - networks.synthesis_features(cfg, gv, w_e + direction, layer))
    f_edit = sfe.editor_apply(edit.editor_config, edit.editor_vars, f_k, delta)
    edited = networks.synthesis(cfg, gv, ws + direction, feature_layer=layer, features=f_edit)
    return dict(ws=ws, f_k=f_k, img_scale1=images[0], img_scale05=images[1], delta=delta,
                f_edit=f_edit, img_edit=edited)

  out = forward(jnp.asarray(unit(ref['image_u8'])), jnp.asarray(ref['direction']))
  errors = {k: rel(v, ref[k]) for k, v in out.items()}
  assert max(errors.values()) < TOL, errors


def test_native_save_load(tmp_path, loaded):
  w = loaded['sfe_editor_light.pt']
  path = sfe.save(tmp_path / 'inverter.npz', w.inverter_config, w.inverter_vars)
  config, variables = sfe.load(path)
  assert config == w.inverter_config
  jax.tree_util.tree_map(np.testing.assert_array_equal, variables, w.inverter_vars)
  small = sfe.EditorConfig(channels=8, blocks=3)
  sfe.save(tmp_path / 'editor.npz', small, sfe.init_editor(small, jax.random.PRNGKey(0)))
  assert sfe.load(tmp_path / 'editor.npz')[0] == small


# ----------------------------------------------------------------------------------------------
# Bad files.


def _write(tmp_path, name, obj):
  path = tmp_path / name
  W.write_torch_zip(obj, path)
  return path


def test_key_errors_name_the_file_part_and_keys(ref, tmp_path):
  sd = dict(_files(ref)['sfe_inverter_light.pt']['state_dict'].items)
  sd.pop('encoder.fuser.body.2.body.4.weight')
  sd['encoder.fuser.extra.weight'] = np.zeros(3, np.float32)
  sd['encoder.fs_backbone.conv.1.running_var'] = np.ones(5, np.float32)
  sd['encoder.fs_backbone.styles.3.weight'] = np.ones((16, 100), np.float32)  # not (C, 3, 3)
  path = _write(tmp_path, 'broken.pt', {'state_dict': W.ordered_dict(sd.items())})
  with pytest.raises(sfe.OfficialFileError) as err:
    sfe.load_official(path, INPUT_SIZE)
  msg = str(err.value)
  assert str(path) in msg and 'inverter' in msg
  for key in ('missing keys (1): fuser.body.2.body.4.weight',
              'unexpected keys (1): fuser.extra.weight',
              'misshapen keys (2): fs_backbone.conv.1.running_var (5,), '
              'fs_backbone.styles.3.weight (16, 100)'):
    assert key in msg, msg


def test_unknown_file_lists_the_known_ones(ref, tmp_path):
  path = _write(tmp_path, 'other.pt', {'state_dict': W.ordered_dict(
      {'net.conv.weight': np.zeros((2, 3, 3, 3), np.float32)}.items())})
  with pytest.raises(sfe.OfficialFileError) as err:
    sfe.load_official(path)
  msg = str(err.value)
  assert str(path) in msg and "'net'" in msg
  for name in ('sfe_inverter_light.pt', 'sfe_editor_light.pt', 'e4e_ffhq_encode.pt',
               'model_ir_se50.pth'):
    assert name in msg
  with pytest.raises(FileNotFoundError, match='model_ir_se50.pth'):
    sfe.load_official(tmp_path / 'absent.pt')
  arc = _write(tmp_path, 'arc.pth', _files(ref)['sfe_inverter_light.pt'])
  with pytest.raises(sfe.OfficialFileError, match='not ArcFace'):
    sfe.arcface_features(arc)


def test_untrained_presets_run():
  g = dataclasses.replace(networks.GeneratorConfig(), z_dim=32, w_dim=32, img_resolution=32,
                          channel_base=512, channel_max=32)
  inv = sfe_config.networks_for(sfe_config.get_config('small'), g)[0]  # configs/sfe.py
  assert (inv.input_size, inv.feature_size, inv.feature_channels, inv.num_ws) == (32, 8, 32, 8)
  variables = sfe.init_inverter(inv, jax.random.PRNGKey(0))
  offset, f_pred = sfe.inverter_apply(inv, variables, jnp.zeros((1, 32, 32, 3)))
  assert offset.shape == (1, 8, 32) and f_pred.shape == (1, 8, 8, 32)
  with pytest.raises(ValueError, match=r'\[B, 32, 32, 3\]'):
    sfe.inverter_apply(inv, variables, jnp.zeros((1, 64, 64, 3)))
