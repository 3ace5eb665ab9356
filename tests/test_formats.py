"""generators.formats: every supported checkpoint layout -> the fixture's official state dicts.

Each file is written from the fixture's official arrays by tests/torch_format_writer.py in the
real on-disk format (NVlabs persistence pickle, rosinality `.pt`, torch.save state dicts,
TensorFlow pickle); reading it back must give the fixture's names, order, shapes and values.
That the rosinality mapping is also *semantically* right (a rosinality forward pass on the
converted weights reproduces the fixture's official images) was checked once with torch, see
the generators/formats.py docstring.
"""

import collections
import json

import numpy as np
import pytest

from generators import formats, torch_io
from generators.formats import (CheckpointError, KeyMismatchError, ShapeMismatchError,
                                UnknownFormatError)
from generators.torch_io import RefusedGlobalError
from tests import torch_format_writer as W

from tests.conftest import fixture_path

FIXTURE = str(fixture_path('stylegan2_ref_32px.npz'))

G_KWARGS = dict(z_dim=64, c_dim=0, w_dim=64, img_resolution=32, img_channels=3,
                mapping_kwargs=dict(num_layers=8),
                synthesis_kwargs=dict(channel_base=2048, channel_max=64, num_fp16_res=0,
                                      conv_clamp=256, architecture='skip'))
D_KWARGS = dict(c_dim=0, img_resolution=32, img_channels=3, architecture='resnet',
                channel_base=2048, channel_max=64, num_fp16_res=0, conv_clamp=256,
                block_kwargs={}, mapping_kwargs={}, epilogue_kwargs=dict(mbstd_group_size=4))
# The same networks as NVlabs' stylegan3 repository pickles its StyleGAN2
# (training/networks_stylegan2.py): synthesis options flat, conv_clamp left at its default (256).
G_KWARGS_SG3_REPO = dict(z_dim=64, c_dim=0, w_dim=64, img_resolution=32, img_channels=3,
                         mapping_kwargs=dict(num_layers=8), channel_base=2048, channel_max=64,
                         num_fp16_res=0, architecture='skip', activation='lrelu',
                         fused_modconv_default='inference_only')
D_KWARGS_SG3_REPO = {k: v for k, v in D_KWARGS.items() if k != 'conv_clamp'}
TF_G = dict(latent_size=64, dlatent_size=64, resolution=32, num_channels=3, fmap_base=1024,
            fmap_max=64, mapping_layers=8, conv_clamp=256)
TF_D = dict(resolution=32, num_channels=3, fmap_base=1024, fmap_max=64, mbstd_group_size=4)


@pytest.fixture(scope='module')
def nets():
  fx = np.load(FIXTURE)
  g = collections.OrderedDict((k[2:], fx[k]) for k in fx.files if k.startswith('G/'))
  d = collections.OrderedDict((k[2:], fx[k]) for k in fx.files if k.startswith('D/'))
  meta = json.loads(str(fx['meta_json']))
  assert meta['state_dict_naming'] == 'NVlabs stylegan2-ada-pytorch'
  return g, d


def _assert_state(got, want, atol=0.0):
  assert list(got) == list(want)  # names and official state_dict order
  for k, v in want.items():
    assert got[k].shape == v.shape and got[k].dtype == np.float32, k
    if atol:
      np.testing.assert_allclose(got[k], v, rtol=0, atol=atol, err_msg=k)
    else:
      np.testing.assert_array_equal(got[k], v, err_msg=k)


# ------------------------------------------------------------------------------------------
# Official layout.

def test_specs_reproduce_the_fixture_names_order_and_shapes(nets):
  g, d = nets
  assert {k: tuple(v.shape) for k, v in g.items()} == formats.generator_spec(G_KWARGS)
  assert list(formats.generator_spec(G_KWARGS)) == list(g)
  assert list(formats.discriminator_spec(D_KWARGS)) == list(d)
  assert {k: tuple(v.shape) for k, v in d.items()} == formats.discriminator_spec(D_KWARGS)
  inferred = formats.infer_generator_kwargs(g)
  assert formats.generator_spec(inferred) == formats.generator_spec(G_KWARGS)
  assert inferred['synthesis_kwargs']['channel_base'] == 2048
  assert formats.discriminator_spec(formats.infer_discriminator_kwargs(d)) == (
      formats.discriminator_spec(D_KWARGS))


# ------------------------------------------------------------------------------------------
# Formats.

def test_nvlabs_pickle(tmp_path, nets):
  g, d = nets
  g_train = {k: v if k.endswith('resample_filter') else v * 2 for k, v in g.items()}  # a constant
  path = tmp_path / 'network-snapshot-000123.pt'  # the extension is not what decides
  W.write_pickle(W.nvlabs_snapshot(g, d, G_KWARGS, D_KWARGS, g_train=g_train), path)
  raw = formats.read_checkpoint(path)
  assert raw.source_format == 'nvlabs-pickle' and raw.which == 'G_ema'
  _assert_state(raw.generator, g)
  _assert_state(raw.discriminator, d)
  assert raw.generator_kwargs == G_KWARGS and raw.discriminator_kwargs == D_KWARGS
  assert type(raw.generator_kwargs['mapping_kwargs']) is dict  # EasyDicts become dicts
  assert raw.path == str(path) and raw.architecture == 'stylegan2'
  _assert_state(formats.read_checkpoint(path, which='G').generator, g_train)


def test_stylegan3_repository_stylegan2_pickle(tmp_path, nets):
  g, d = nets
  path = tmp_path / 'stylegan2-tiny-32x32.pkl'
  W.write_pickle(W.nvlabs_snapshot(g, d, G_KWARGS_SG3_REPO, D_KWARGS_SG3_REPO,
                                   module_src=W.MODULE_SRC_STYLEGAN3_REPO), path)
  raw = formats.read_checkpoint(path)
  _assert_state(raw.generator, g)
  _assert_state(raw.discriminator, d)
  # nested as stylegan2-ada-pytorch has them, with that repository's conv_clamp default written
  extra = dict(activation='lrelu', fused_modconv_default='inference_only')
  assert raw.generator_kwargs == dict(
      G_KWARGS, synthesis_kwargs=dict(G_KWARGS['synthesis_kwargs'], **extra))
  assert raw.discriminator_kwargs == D_KWARGS
  assert any('stylegan3 repository' in n for n in raw.notes)
  # The source decides: a stylegan2-ada-pytorch G built with default arguments (no
  # synthesis_kwargs saved) keeps that repository's conv_clamp default, None.
  ada_default = torch_io.PersistentObject('Generator', W.MODULE_SRC, {})
  assert not formats._from_stylegan3_repo(ada_default, {'z_dim': 512, 'w_dim': 512})
  assert formats._from_stylegan3_repo(torch_io.PersistentObject('Generator', '', {}),
                                      {'z_dim': 512, 'channel_base': 16384})


def test_channel_rule_with_a_base_that_is_not_a_power_of_two():
  channels = {res: min(1000 // res, 64) for res in (4, 8, 16, 32, 64)}  # 62 at 16, 31 at 32
  assert formats.channel_rule(channels) == (992, 64)  # the smallest base giving these counts
  assert formats.channel_rule({4: 64, 8: 64, 16: 20, 32: 31}) is None
  # At the maximum a res bounds base too: 504 // 8 = 63 (not 504 // 16 * 2 = 62)
  assert formats.channel_rule({res: min(504 // res, 63) for res in (4, 8, 16, 32)}) == (504, 63)


def test_rosinality_checkpoint(tmp_path, nets):
  g, d = nets
  path = tmp_path / 'stylegan2-32px.pkl'
  W.write_torch_zip(W.rosinality_checkpoint(g, d), path)
  raw = formats.read_checkpoint(path)
  assert raw.source_format == 'rosinality'
  _assert_state(raw.generator, g)
  _assert_state(raw.discriminator, d)
  kw = raw.generator_kwargs
  assert kw['synthesis_kwargs']['conv_clamp'] is None  # rosinality never clamps
  assert formats.generator_spec(kw) == formats.generator_spec(G_KWARGS)
  assert formats.discriminator_spec(raw.discriminator_kwargs) == (
      formats.discriminator_spec(D_KWARGS))


def test_rosinality_latent_avg_variants_and_psp(tmp_path, nets):
  g, _ = nets
  path = tmp_path / 'ckpt.pt'
  ckpt = W.rosinality_checkpoint(g, None, latent_avg=False, args=False)
  W.write_torch_legacy(ckpt, path)
  raw = formats.read_checkpoint(path)
  w_avg = raw.generator['mapping.w_avg']
  assert w_avg.shape == (64,) and np.all(np.isfinite(w_avg))
  assert any('estimated' in n for n in raw.notes)
  assert raw.discriminator is None

  # pSp / e4e: {'state_dict': {'encoder.*', 'decoder.*'}, 'latent_avg': [n_styles, w_dim]}.
  rg, _ = W.official_to_rosinality(g)
  sd = {'encoder.conv.weight': np.ones((2, 3, 1, 1), np.float32),
        **{'decoder.' + k: v for k, v in rg.items()}}
  W.write_torch_zip({'state_dict': sd, 'opts': {'stylegan_size': 32},
                     'latent_avg': np.tile(g['mapping.w_avg'], (8, 1))}, path)
  raw = formats.read_checkpoint(path)
  assert raw.source_format == 'rosinality'
  _assert_state(raw.generator, g)


@pytest.mark.parametrize('layout', ['nested', 'prefixed-legacy', 'bare'])
def test_state_dicts(tmp_path, nets, layout):
  g, d = nets
  path = tmp_path / 'weights.bin'
  if layout == 'nested':
    W.write_torch_zip({'G': {k: v * 2 for k, v in g.items()}, 'G_ema': g, 'D': d,
                       'step': 1000}, path)
  elif layout == 'prefixed-legacy':
    W.write_torch_legacy({**{'G_ema.' + k: v for k, v in g.items()},
                          **{'D.' + k: v for k, v in d.items()}}, path)
  else:
    W.write_torch_zip(collections.OrderedDict(g), path)
  raw = formats.read_checkpoint(path)
  assert raw.source_format == 'state-dict' and raw.generator_kwargs is None
  _assert_state(raw.generator, g)
  if layout == 'bare':
    assert raw.discriminator is None
  else:
    _assert_state(raw.discriminator, d)


def test_tf_pickle(tmp_path, nets):
  g, d = nets
  path = tmp_path / 'stylegan2-tiny-config-f.pkl'
  W.write_pickle(W.tf_pickle(g, d, TF_G, TF_D), path, tensor_fn=W.numpy_array)
  raw = formats.read_checkpoint(path)
  assert raw.source_format == 'tf-pickle'
  # TF keeps `mod_bias - 1`: adding 1 back rounds in float32 (<= 1 ulp of values near 1).
  _assert_state(raw.generator, g, atol=2e-7)
  _assert_state(raw.discriminator, d)
  assert formats.generator_spec(raw.generator_kwargs) == formats.generator_spec(G_KWARGS)
  assert raw.generator_kwargs['synthesis_kwargs']['channel_base'] == 2048  # 2 x fmap_base


# ------------------------------------------------------------------------------------------
# Errors.

def test_missing_and_unexpected_keys_are_listed(tmp_path, nets):
  g, _ = nets
  path = tmp_path / 'ckpt.pt'
  broken = {k: v for k, v in g.items() if k != 'synthesis.b16.conv0.affine.bias'}
  broken['synthesis.b16.conv0.extra'] = np.ones(1, np.float32)
  W.write_torch_zip({'G_ema': broken}, path)
  with pytest.raises(KeyMismatchError) as err:
    formats.read_checkpoint(path)
  msg = str(err.value)
  assert str(path) in msg
  assert 'missing keys (1): synthesis.b16.conv0.affine.bias' in msg
  assert 'unexpected keys (1): synthesis.b16.conv0.extra' in msg

  rg, _ = W.official_to_rosinality(g)
  del rg['to_rgbs.1.conv.modulation.weight']
  W.write_torch_zip({'g_ema': rg, 'latent_avg': g['mapping.w_avg']}, path)
  with pytest.raises(KeyMismatchError, match=r'missing keys \(1\): to_rgbs\.1\.conv\.modulation'):
    formats.read_checkpoint(path)


def test_shape_mismatch_names_the_tensor(tmp_path, nets):
  g, d = nets
  path = tmp_path / 'ckpt.pt'
  bad = dict(g)
  bad['synthesis.b8.conv1.affine.weight'] = np.zeros((64, 32), np.float32)
  W.write_torch_zip(bad, path)
  with pytest.raises(ShapeMismatchError, match=r"'synthesis\.b8\.conv1\.affine\.weight'.*"
                     r'\(64, 32\).*\(64, 64\)'):
    formats.read_checkpoint(path)
  W.write_pickle(W.nvlabs_snapshot(g, d, dict(G_KWARGS, w_dim=128), D_KWARGS), path)
  with pytest.raises(ShapeMismatchError, match='affine.weight'):
    formats.read_checkpoint(path)


def test_hostile_and_broken_files(tmp_path, nets):
  g, _ = nets
  marker = tmp_path / 'pwned'
  path = tmp_path / 'ckpt.pkl'
  evil = W.Reduce(W.Global('os', 'system'), (f'touch {marker}',))
  W.write_pickle({'G_ema': evil}, path)
  with pytest.raises(RefusedGlobalError, match='os.system'):
    formats.read_checkpoint(path)
  assert not marker.exists()

  W.write_torch_zip(W.rosinality_checkpoint(g), path)
  path.write_bytes(path.read_bytes()[:5000])
  with pytest.raises(CheckpointError, match='truncated'):
    formats.read_checkpoint(path)

  path.write_bytes(b'GIF89a' + bytes(range(256)) * 4)
  with pytest.raises(UnknownFormatError, match='unknown format'):
    formats.read_checkpoint(path)

  W.write_torch_zip({'model': {'fc.weight': np.ones((2, 2), np.float32)}, 'epoch': 3}, path)
  with pytest.raises(UnknownFormatError, match=r"keys \['model', 'epoch'\]"):
    formats.read_checkpoint(path)

  W.write_torchscript(W.script_module('__torch__.M', {'w': np.ones(2, np.float32)}), (), path)
  with pytest.raises(UnknownFormatError, match='TorchScript'):
    formats.read_checkpoint(path)

  with pytest.raises(ValueError, match='which'):
    formats.read_checkpoint(path, which='D')


def test_stylegan3_generators_are_passed_through_unvalidated(tmp_path, nets):
  g, d = nets
  sg3 = {'synthesis.input.affine.weight': np.ones((4, 64), np.float32),
         'mapping.fc0.weight': g['mapping.fc0.weight']}
  path = tmp_path / 'stylegan3-t.pkl'
  W.write_pickle(W.nvlabs_snapshot(sg3, d, {'z_dim': 64}, D_KWARGS), path)
  raw = formats.read_checkpoint(path)
  assert raw.architecture == 'stylegan3' and set(raw.generator) == set(sg3)
