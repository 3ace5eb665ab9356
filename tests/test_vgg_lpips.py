"""VGG16 trunk, LPIPS and weight handling against the reference fixture (lpips 0.1.4).

Tolerance: 1e-5 relative under jax.default_matmul_precision('highest'); on CPU float32 we reach
about 1e-7 (LPIPS) and 1e-6 (VGG activations).
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inversion import lpips as lp
from inversion import vgg
from inversion import weights

RTOL = 1e-5  # of the max |ref|: 8e-7 seen (activations), so 12x; a wrong layer or weight: > 1e-2
I2S_LAYERS = ('conv1_1', 'conv1_2', 'conv3_2', 'conv4_2', 'conv4_3')
# Compiled once per shape; eager op-by-op dispatch is much slower than compiling here.
LPIPS = jax.jit(lp.lpips, static_argnames=('spatial', 'resize'))


def nhwc(a):
  return jnp.asarray(np.asarray(a).transpose(0, 2, 3, 1))


@pytest.fixture(scope='module')
def ref(lpips_ref):
  return lpips_ref


@pytest.fixture(scope='module')
def params(lpips_fixture_params):
  return lpips_fixture_params


def assert_rel(actual, expected, rtol=RTOL):
  actual, expected = np.asarray(actual), np.asarray(expected)
  np.testing.assert_allclose(actual, expected, rtol=rtol,
                             atol=rtol * float(np.abs(expected).max()))


# --- parity with the reference --------------------------------------------------------------


def test_vgg_activations_match_reference(ref, params):
  with jax.default_matmul_precision('highest'):
    feats = jax.jit(lambda p, x: vgg.vgg16_features(p, x, I2S_LAYERS, preprocess='lpips'))(
        params['trunk'], nhwc(ref['x0'][:2]))
  for name in I2S_LAYERS:
    assert_rel(feats[name], nhwc(ref[f'act_{name}']))


def test_lpips_scalar_and_spatial_match_reference(ref, params):
  x0, x1 = nhwc(ref['x0']), nhwc(ref['x1'])
  with jax.default_matmul_precision('highest'):
    d = LPIPS(params, x0, x1)
    m = LPIPS(params, x0, x1, spatial=True)
  assert d.shape == (6,) and m.shape == (6, 64, 64, 1)
  assert_rel(d, ref['lpips'])
  assert_rel(m, nhwc(ref['lpips_spatial']))


def test_imagenet_and_lpips_preprocessing_agree(ref, params):
  x = nhwc(ref['x0'][:2])
  a = vgg.normalize_input(x, 'lpips')
  b = vgg.normalize_input(x, 'imagenet')
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(vgg.LPIPS_SHIFT, ref['scaling_shift'], rtol=1e-6)
  np.testing.assert_allclose(vgg.LPIPS_SCALE, ref['scaling_scale'], rtol=1e-6)


# --- VGG16 trunk behaviour ------------------------------------------------------------------


def test_only_computes_up_to_deepest_layer(params):
  # Variables with only the first two convs suffice for conv1_2: deeper layers are not built.
  shallow = {'params': {k: params['trunk']['params'][k] for k in ('conv1_1', 'conv1_2')}}
  x = jnp.zeros((1, 8, 8, 3))
  out = vgg.vgg16_features(shallow, x, ('conv1_2', 'conv1_1_pre'))
  assert set(out) == {'conv1_2', 'conv1_1_pre'}
  with pytest.raises(Exception):
    vgg.vgg16_features(shallow, x, ('conv2_1',))


def test_pre_and_post_relu_names(params, ref):
  x = nhwc(ref['x0'][:1, :, :16, :16])
  out = jax.jit(vgg.vgg16_features, static_argnums=2)(params['trunk'], x,
                                                      ('conv3_2_pre', 'conv3_2'))
  np.testing.assert_array_equal(jax.nn.relu(out['conv3_2_pre']), out['conv3_2'])
  assert out['conv3_2'].shape == (1, 4, 4, 256)
  with pytest.raises(ValueError, match='allowed'):
    vgg.vgg16_features(params['trunk'], x, ('relu4_3',))


def test_channel_rule(params, ref, caplog):
  x = nhwc(ref['x0'][:1, :, :16, :16])
  grey = x[..., :1]
  f = lambda im: vgg.vgg16_features(params['trunk'], im, ('conv1_2',))['conv1_2']
  np.testing.assert_array_equal(f(grey), f(jnp.repeat(grey, 3, -1)))
  vgg._LOGGED.clear()
  with caplog.at_level(logging.WARNING, logger='inversion.vgg'):
    with_mask = jnp.concatenate([x, jnp.ones_like(grey)], -1)
    np.testing.assert_array_equal(f(with_mask), f(x))
    f(with_mask)
  assert sum('ignoring the rest' in r.message for r in caplog.records) == 1  # logged once
  with pytest.raises(ValueError, match='2 channels'):
    f(x[..., :2])


def test_area_resize_matches_adaptive_pooling():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 10, 7, 3)).astype(np.float32)
  out = np.asarray(vgg.area_resize(jnp.asarray(x), (4, 3)))
  ref = np.zeros((2, 4, 3, 3), np.float32)  # torch adaptive_avg_pool2d bins
  for i in range(4):
    for j in range(3):
      h0, h1 = (i * 10) // 4, -(-((i + 1) * 10) // 4)
      w0, w1 = (j * 7) // 3, -(-((j + 1) * 7) // 3)
      ref[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
  np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)  # means of <= 9 terms: 1.2e-7 seen
  y = np.asarray(vgg.area_resize(jnp.asarray(x[:, :8, :6]), 2))  # integer factor: block mean
  np.testing.assert_allclose(y, x[:, :8, :6].reshape(2, 2, 4, 2, 3, 3).mean((2, 4)), atol=1e-6)
  # prepare_images only shrinks images larger than the target (NVlabs projector rule).
  assert vgg.prepare_images(jnp.zeros((1, 300, 300, 3)), resize=256).shape == (1, 256, 256, 3)
  assert vgg.prepare_images(jnp.zeros((1, 64, 64, 3)), resize=256).shape == (1, 64, 64, 3)


@pytest.mark.parametrize('shape', [(2, 8, 6, 3), (1, 9, 7, 2)])  # even, and odd (VALID floor)
def test_max_pool_matches_reduce_window(shape):
  """The reshape max-pool equals a 2x2/2 reduce-window max-pool, values and gradient."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  cot = jax.random.normal(jax.random.PRNGKey(1), (shape[0], shape[1] // 2, shape[2] // 2, shape[3]))
  ref = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')
  np.testing.assert_array_equal(vgg.max_pool_2x2(x), ref(x))
  grad = lambda pool: jax.grad(lambda x: jnp.sum(pool(x) * cot))(x)
  np.testing.assert_array_equal(grad(vgg.max_pool_2x2), grad(ref))


def test_bilinear_upsampling_matches_half_pixel_reference():
  # For upsampling, torch's align_corners=False bilinear equals jax.image.resize('bilinear').
  x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 4, 8, 2)), jnp.float32)
  for size in [(16, 32), (64, 64), (5, 9)]:
    np.testing.assert_allclose(vgg.bilinear_resize(x, size),
                               jax.image.resize(x, (1, *size, 2), 'bilinear'), atol=1e-5)


# --- LPIPS behaviour ------------------------------------------------------------------------


def test_lpips_properties_and_gradient(params, ref):
  x, y = nhwc(ref['x0'][:2, :, :16, :16]), nhwc(ref['x1'][:2, :, :16, :16])
  d = LPIPS(params, x, y)
  np.testing.assert_allclose(d, LPIPS(params, y, x), rtol=1e-5)
  grad = jax.jit(jax.grad(lambda p, a, b: lp.lpips(p, a, b).sum(), argnums=1))
  g = grad(params, x, x)  # identical inputs: distance 0, finite zero gradient (no NaN)
  assert np.all(np.isfinite(g)) and np.abs(g).max() < 1e-8
  np.testing.assert_allclose(LPIPS(params, x, x), 0.0, atol=1e-7)
  g = grad(params, x, y)
  assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
  # resize=8 equals LPIPS of the area-downsampled inputs
  xs, ys = vgg.area_resize(x, 8), vgg.area_resize(y, 8)
  np.testing.assert_allclose(LPIPS(params, x, y, resize=8), LPIPS(params, xs, ys), rtol=1e-6)


def test_alexnet_lpips_shapes_and_identity():
  # No reference numbers for AlexNet here: shapes, identity and the converter only.
  p = lp.random_lpips_params(0, net='alex')
  x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 64, 64, 3)), jnp.float32)
  feats = jax.eval_shape(lp.trunk_features, p, x)
  assert [f.shape[-1] for f in feats] == list(lp.LPIPS_CHANNELS['alex'])
  assert [f.shape[1] for f in feats] == [15, 7, 3, 3, 3]  # torchvision AlexNet at 64 px
  np.testing.assert_allclose(LPIPS(p, x, x), 0.0, atol=1e-7)
  assert jax.eval_shape(lambda: lp.lpips(p, x, x, spatial=True)).shape == (2, 64, 64, 1)
  # round trip through torch-layout arrays
  sd = {}
  for name, idx, *_ in lp.ALEXNET_CONVS:
    sd[f'features.{idx}.weight'] = np.transpose(p['trunk']['params'][name]['kernel'], (3, 2, 0, 1))
    sd[f'features.{idx}.bias'] = np.asarray(p['trunk']['params'][name]['bias'])
  for k in range(5):
    sd[f'lin{k}.model.1.weight'] = np.asarray(p['lin'][f'lin{k}'])[None, :, None, None]
  q = lp.lpips_params_from_state_dicts(sd, sd, net='alex')
  np.testing.assert_allclose(LPIPS(q, x, x[::-1]), LPIPS(p, x, x[::-1]), rtol=1e-6)


# --- converters -----------------------------------------------------------------------------


def _vgg_arrays(ref):
  return {k[len('vgg/'):]: v for k, v in ref.items() if k.startswith('vgg/')}


def test_converter_name_schemes_agree(ref):
  tv = _vgg_arrays(ref)
  base = vgg.vgg16_params_from_state_dict(tv)
  idx = [c[1] for c in vgg.VGG16_CONVS]
  schemes = {
      'idinvert': {f'layer{k.split(".")[1]}.{k.split(".")[2]}': v for k, v in tv.items()},
      'nvlabs': {f'layers.conv{idx.index(int(k.split(".")[1])) + 1}.{k.split(".")[2]}': v
                 for k, v in tv.items()},
      'lpips_model': {f'net.slice1.{k.split(".")[1]}.{k.split(".")[2]}': v
                      for k, v in tv.items()},
  }
  for name, sd in schemes.items():
    conv = vgg.vgg16_params_from_state_dict(sd)
    for a, b in zip(jax.tree_util.tree_leaves(conv), jax.tree_util.tree_leaves(base)):
      np.testing.assert_array_equal(a, b, err_msg=name)
  nv_lin = {f'lpips{k}': ref[f'lpips/lin{k}.model.1.weight'].reshape(-1) for k in range(5)}
  p = lp.lpips_params_from_state_dicts(schemes['nvlabs'], nv_lin)
  q = lp.lpips_params_from_state_dicts(tv, {k[6:]: v for k, v in ref.items()
                                            if k.startswith('lpips/')})
  for a, b in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(q)):
    np.testing.assert_array_equal(a, b)


def test_converter_errors(ref):
  tv = _vgg_arrays(ref)
  with pytest.raises(weights.WeightsFormatError, match='features.28.bias|conv5_3.bias'):
    vgg.vgg16_params_from_state_dict({k: v for k, v in tv.items() if k != 'features.28.bias'})
  bad = dict(tv)
  bad['features.0.weight'] = bad['features.0.weight'][:, :1]
  with pytest.raises(weights.WeightsFormatError, match='conv1_1'):
    vgg.vgg16_params_from_state_dict(bad)
  with pytest.raises(weights.WeightsFormatError, match='no VGG16'):
    vgg.vgg16_params_from_state_dict({'foo': np.zeros(3)})
  with pytest.raises(weights.WeightsFormatError, match='linear'):
    lp.lpips_params_from_state_dicts(tv, {'foo': np.zeros(3)})


# --- weights resolver -----------------------------------------------------------------------


def test_resolve_weights_order(tmp_path, monkeypatch):
  monkeypatch.setenv('STYLEGAN_INV_CACHE', str(tmp_path / 'cache'))
  monkeypatch.delenv('STYLEGAN_INV_VGG16', raising=False)
  with pytest.raises(weights.WeightsNotFoundError) as e:
    weights.resolve_weights('vgg16')
  msg = str(e.value)
  assert isinstance(e.value, FileNotFoundError)
  assert 'https://download.pytorch.org/models/vgg16-397923af.pth' in msg
  assert str(tmp_path / 'cache' / 'vgg16-397923af.pth') in msg and 'STYLEGAN_INV_VGG16' in msg
  cached = tmp_path / 'cache' / 'vgg16-397923af.pth'
  cached.parent.mkdir()
  cached.write_bytes(b'x')
  assert weights.resolve_weights('vgg16') == cached
  env_file = tmp_path / 'env.pth'
  env_file.write_bytes(b'x')
  monkeypatch.setenv('STYLEGAN_INV_VGG16', str(env_file))
  assert weights.resolve_weights('vgg16') == env_file
  explicit = tmp_path / 'explicit.pth'
  explicit.write_bytes(b'x')
  assert weights.resolve_weights('vgg16', explicit) == explicit
  # An explicit path or env variable that points nowhere is an error, not a fall-through.
  with pytest.raises(weights.WeightsNotFoundError, match='nope.pth'):
    weights.resolve_weights('vgg16', tmp_path / 'nope.pth')
  monkeypatch.setenv('STYLEGAN_INV_VGG16', str(tmp_path / 'gone.pth'))
  with pytest.raises(weights.WeightsNotFoundError, match='gone.pth'):
    weights.resolve_weights('vgg16')
  with pytest.raises(ValueError, match='known'):
    weights.resolve_weights('resnet')


@pytest.mark.parametrize('name,needle', [
    ('lpips_vgg', 'weights/v0.1/vgg.pth'),
    ('nvlabs_vgg16', 'nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/'
                     'vgg16.pt'),
])
def test_missing_messages_name_sources(tmp_path, monkeypatch, name, needle):
  monkeypatch.setenv('STYLEGAN_INV_CACHE', str(tmp_path))
  monkeypatch.delenv(weights.WEIGHTS[name].env_var, raising=False)
  with pytest.raises(weights.WeightsNotFoundError, match=needle.replace('.', r'\.')):
    weights.resolve_weights(name)


def test_loaders_raise_when_missing(tmp_path, monkeypatch):
  monkeypatch.setenv('STYLEGAN_INV_CACHE', str(tmp_path))
  for spec in weights.WEIGHTS.values():
    monkeypatch.delenv(spec.env_var, raising=False)
  with pytest.raises(weights.WeightsNotFoundError):
    lp.load_lpips_params('vgg')
  with pytest.raises(weights.WeightsNotFoundError):
    lp.load_nvlabs_vgg16_lpips_params()


# --- loading real file formats (files written by tests/torch_format_writer.py) --------------


def _lpips_reference_check(params, ref):
  with jax.default_matmul_precision('highest'):
    d = LPIPS(params, nhwc(ref['x0']), nhwc(ref['x1']))
  assert_rel(d, ref['lpips'])


@pytest.mark.parametrize('fmt', ['zip', 'legacy'])
def test_torch_files_load_through_cache_folder(tmp_path, monkeypatch, ref, fmt):
  """torchvision vgg16-397923af.pth (a legacy-format file) + lpips vgg.pth, found in the cache."""
  W = pytest.importorskip('tests.torch_format_writer')
  write = W.write_torch_zip if fmt == 'zip' else W.write_torch_legacy
  monkeypatch.setenv('STYLEGAN_INV_CACHE', str(tmp_path))
  for spec in weights.WEIGHTS.values():
    monkeypatch.delenv(spec.env_var, raising=False)
  trunk = W.ordered_dict((k, W.Param(v)) for k, v in _vgg_arrays(ref).items())
  write(trunk, tmp_path / weights.WEIGHTS['vgg16'].filename)
  lin = W.ordered_dict((f'lin{k}.model.1.weight', ref[f'lpips/lin{k}.model.1.weight'])
                       for k in range(5))
  write(lin, tmp_path / weights.WEIGHTS['lpips_vgg'].filename)
  _lpips_reference_check(lp.load_lpips_params('vgg'), ref)
  variables = vgg.load_vgg16_params()
  with jax.default_matmul_precision('highest'):
    act = jax.jit(vgg.vgg16_features, static_argnums=2)(variables, nhwc(ref['x0'][:2]),
                                                        ('conv1_2',))['conv1_2']
  assert_rel(act, nhwc(ref['act_conv1_2']))


def test_nvlabs_torchscript_file_loads(tmp_path, ref):
  """NVlabs vgg16.pt: TorchScript, layers.conv1..13 + lpips0..4 (names as genforce maps them)."""
  W = pytest.importorskip('tests.torch_format_writer')
  conv = lambda w, b: W.script_module('__torch__.torch.nn.modules.conv.Conv2d',
                                      {'training': False, 'weight': w, 'bias': b})
  tv = _vgg_arrays(ref)
  layers = {'training': False}
  for k, (_, idx, *_) in enumerate(vgg.VGG16_CONVS):
    layers[f'conv{k + 1}'] = conv(tv[f'features.{idx}.weight'], tv[f'features.{idx}.bias'])
  layers['fc1'] = conv(np.zeros((4, 3), np.float32), np.zeros(4, np.float32))
  root = {'training': False,
          'layers': W.script_module('__torch__.torch.nn.modules.container.Sequential', layers)}
  for k in range(5):
    root[f'lpips{k}'] = ref[f'lpips/lin{k}.model.1.weight'].reshape(-1, 1, 1)
  path = tmp_path / 'vgg16.pt'
  W.write_torchscript(W.script_module('__torch__.VGG16', root), (), path)
  _lpips_reference_check(lp.load_nvlabs_vgg16_lpips_params(path), ref)


def test_corrupt_file_raises_checkpoint_error(tmp_path):
  torch_io = pytest.importorskip('generators.torch_io')
  bad = tmp_path / 'vgg16.pth'
  bad.write_bytes(b'not a checkpoint at all')
  with pytest.raises(torch_io.CheckpointError):
    vgg.load_vgg16_params(bad)
