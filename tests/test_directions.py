"""inversion.directions: the directions file, GANSpace, InterFaceGAN, the defect direction of
the embedded RGB + mask model, `apply` and the CLI helpers."""

import dataclasses
import time

import jax
import numpy as np
import pytest
from PIL import Image

from generators import checkpoint, networks
from inversion import api
from inversion import directions as dirs
from inversion import latents as latents_lib


@pytest.fixture(scope='module')
def model():
  return checkpoint.load(None)  # 64 px, 4 channels (RGB + defect mask), num_ws 10, w_dim 128


@pytest.fixture(scope='module')
def model_id(model):
  return latents_lib.generator_fingerprint(model)


def _unit(rng, shape):
  v = rng.standard_normal(shape)
  return v / np.sqrt(np.square(v).sum())


def _some_directions(model_id, num_ws=10, w_dim=128):
  rng = np.random.default_rng(0)
  return dirs.given(rng.standard_normal((3, num_ws, w_dim)), ['a', 'b', 'c'],
                    generator_id=model_id, scales=[0.5, 1.0, 2.0],
                    info={'seed': 0, 'note': 'test', 'ratio': [0.5, 0.25]})


# ----------------------------------------------------------------------------------------------
# The file.


def test_save_load_round_trip_is_exact(tmp_path, model, model_id):
  d = _some_directions(model_id)
  path = dirs.save_directions(tmp_path / 'sub' / 'd.npz', d)
  assert sorted(p.name for p in (tmp_path / 'sub').iterdir()) == ['d.npz']  # no tmp left over
  back = dirs.load_directions(path, model)
  np.testing.assert_array_equal(back.vectors, d.vectors)  # float32 through .npz: bit-exact
  np.testing.assert_array_equal(back.scales, d.scales)
  assert back.vectors.dtype == np.float32 and back.scales.dtype == np.float32
  assert (back.names, back.method, back.generator_id, back.info) == (
      d.names, d.method, d.generator_id, d.info)
  np.testing.assert_allclose(np.sqrt(np.square(back.vectors).sum((1, 2))), 1, atol=1e-6)
  np.testing.assert_array_equal(back.get('b'), d.vectors[1])
  assert back.direction('c').scale == 2.0
  with pytest.raises(KeyError, match='a, b, c'):
    back.get('smile')


def test_load_refuses_another_generator(tmp_path, model, model_id):
  path = dirs.save_directions(tmp_path / 'd.npz', _some_directions(model_id))
  other = dataclasses.replace(model, g_vars=jax.tree_util.tree_map(lambda a: a * 1.001,
                                                                   model.g_vars))
  other_id = latents_lib.generator_fingerprint(other)
  with pytest.raises(latents_lib.LatentsError) as e:
    dirs.load_directions(path, other)
  msg = str(e.value)
  assert model_id in msg and other_id in msg and 'make directions for this generator' in msg
  assert '\n' not in msg
  dirs.load_directions(path, model_id)  # a fingerprint works as well as a model


@pytest.mark.parametrize('damage, match', [
    ('missing', 'does not exist'),
    ('truncated', 'not a readable .npz directions file'),
    ('no_scales', 'lacks the field.* scales'),
    ('other_npz', 'is not a stylegan-inversion-jax/directions file'),
    ('bad_norm', 'invalid directions: vectors must have unit norm'),
])
def test_load_damaged_files_say_what_is_wrong(tmp_path, model_id, damage, match):
  path = tmp_path / 'd.npz'
  dirs.save_directions(path, _some_directions(model_id))
  with np.load(path) as z:
    arrays = {k: z[k] for k in z.files}
  if damage == 'missing':
    path = tmp_path / 'nope.npz'
  elif damage == 'truncated':
    path.write_bytes(path.read_bytes()[:300])
  elif damage == 'no_scales':
    del arrays['scales']
    np.savez(path, **arrays)
  elif damage == 'other_npz':
    np.savez(path, ws=np.zeros((10, 128), np.float32))
  else:
    arrays['vectors'] = arrays['vectors'] * 2
    np.savez(path, **arrays)
  with pytest.raises(latents_lib.LatentsError, match=match) as e:
    dirs.load_directions(path)
  assert str(path) in str(e.value)


# ----------------------------------------------------------------------------------------------
# GANSpace.


def test_ganspace_components(model, model_id):
  d = dirs.ganspace(model, num_components=6, num_samples=2000, seed=0)
  gc = model.g_config
  assert d.vectors.shape == (6, gc.num_ws, gc.w_dim) and d.names[0] == 'pc0'
  assert d.method == 'ganspace' and d.generator_id == model_id
  flat = d.vectors.reshape(6, -1).astype(np.float64)
  np.testing.assert_allclose(flat @ flat.T, np.eye(6), atol=1e-5)  # unit and orthogonal
  np.testing.assert_array_equal(d.vectors, np.broadcast_to(d.vectors[:, :1], d.vectors.shape))
  ratio = np.asarray(d.info['explained_variance_ratio'])
  assert (np.diff(ratio) <= 0).all() and 0 < ratio.sum() <= 1
  # fresh codes: more spread along pc0 than pc3, and the scales are their std along each vector
  ws = dirs.sample_ws(model, 2000, seed=1)
  proj = ws.reshape(len(ws), -1).astype(np.float64) @ flat.T
  std = proj.std(0)
  print(f'ganspace: explained {np.round(ratio, 3)}; std along pc0..5 of fresh codes '
        f'{np.round(std, 3)} vs scales {np.round(d.scales, 3)}')
  assert std[0] > std[3]
  np.testing.assert_allclose(std, d.scales, rtol=0.15)  # two 2000-sample estimates of one std


# ----------------------------------------------------------------------------------------------
# InterFaceGAN.


def test_interfacegan_recovers_a_known_boundary():
  rng = np.random.default_rng(3)
  n, num_ws, w_dim = 2000, 4, 16
  codes = (rng.standard_normal((n, num_ws, w_dim)) * rng.uniform(0.3, 2.0, (num_ws, w_dim))
           + 0.2).astype(np.float32)
  u = _unit(rng, (num_ws, w_dim))
  labels = (codes.reshape(n, -1) @ u.reshape(-1)) > 0
  d = dirs.interfacegan(codes, labels, 'attr', generator_id='sha256:test', seed=0)
  cos = float((d.get('attr') * u).sum())
  print(f'interfacegan: cos(direction, u) = {cos:.4f}, info {d.info}')
  assert cos > 0.95 and d.info['heldout_accuracy'] > 0.9
  assert d.info['num_true'] + d.info['num_false'] == n and not d.info['layer_broadcast_codes']
  proj = codes.reshape(n, -1).astype(np.float64) @ d.vectors[0].reshape(-1)
  np.testing.assert_allclose(d.scales[0], proj.std(), rtol=1e-5)
  # it points toward True: flipping the labels flips it
  flipped = dirs.interfacegan(codes, ~labels, 'attr', generator_id='sha256:test', seed=0)
  assert float((flipped.get('attr') * u).sum()) < -0.95


def test_interfacegan_broadcast_codes_shortcut_equals_the_full_fit():
  rng = np.random.default_rng(4)
  w = rng.standard_normal((300, 8)) * rng.uniform(0.2, 2, 8)
  labels = w @ rng.standard_normal(8) + 0.5 * rng.standard_normal(300) > 0.3
  ws = np.repeat(w[:, None], 3, 1).astype(np.float32)
  fast = dirs.interfacegan(ws, labels, 'a', generator_id='x')
  ws[0, 1, 0] += 1e-6  # no longer layer-broadcast: the general W+ fit
  full = dirs.interfacegan(ws, labels, 'a', generator_id='x')
  assert fast.info['layer_broadcast_codes'] and not full.info['layer_broadcast_codes']
  assert float((fast.vectors * full.vectors).sum()) > 1 - 1e-6
  assert fast.info['heldout_accuracy'] == full.info['heldout_accuracy']
  # space 'w' on the same codes: the same boundary up to the regulariser's weight
  w_space = dirs.interfacegan(ws, labels, 'a', generator_id='x', space='w')
  assert float((fast.vectors * w_space.vectors).sum()) > 0.99


def test_interfacegan_refuses_too_few_of_a_class():
  rng = np.random.default_rng(5)
  codes = rng.standard_normal((200, 2, 4)).astype(np.float32)
  labels = np.zeros(200, bool)
  labels[:9] = True
  with pytest.raises(ValueError, match='need labelled codes of both classes.*9 True'):
    dirs.interfacegan(codes, labels, 'x', generator_id='x')
  with pytest.raises(ValueError, match=r'labels must be \[N\]'):
    dirs.interfacegan(codes, labels[:10], 'x', generator_id='x')


# ----------------------------------------------------------------------------------------------
# The defect direction.


def test_defect_direction_adds_and_removes_defects(tmp_path, model, model_id):
  t0 = time.perf_counter()
  summary = dirs.run_directions_command('defect', model, str(tmp_path / 'defect.npz'),
                                        num_components=0, num_samples=2000, seed=0)
  fit_s = time.perf_counter() - t0
  d = dirs.load_directions(tmp_path / 'defect.npz', model)
  info = d.info
  print(f'{summary} [{fit_s:.1f} s]')
  assert d.names == ['defect'] and d.method == 'interfacegan' and d.generator_id == model_id
  assert info['heldout_accuracy'] > 0.8  # measured 0.97 (2000 codes, 400 held out)
  # fresh codes: clean ones at +3 sigma, defective ones at -3 sigma
  ws = dirs.sample_ws(model, 600, seed=1)
  count = dirs.defect_pixels(model, ws)
  clean, dirty = ws[count == 0], ws[count > 0]
  assert len(clean) > 100 and len(dirty) > 50  # ~70% / 30% of samples
  direction = d.direction('defect')
  up = dirs.defect_pixels(model, dirs.apply(clean, direction, 3.0))
  down = dirs.defect_pixels(model, dirs.apply(dirty, direction, -3.0))
  print(f'defect: share of clean codes with defect pixels 0 at 0 sigma -> {np.mean(up > 0):.3f} '
        f'at +3 sigma ({len(clean)} codes); defective codes: mean defect pixels '
        f'{count[count > 0].mean():.1f} at 0 -> {down.mean():.1f} at -3 sigma, share with any '
        f'{np.mean(down > 0):.3f} ({len(dirty)} codes)')
  assert np.mean(up > 0) > 0.5            # measured 0.99
  assert down.mean() < 0.25 * count[count > 0].mean()  # measured 89.5 -> 0.0


def test_defect_direction_needs_a_mask_channel():
  rgb = networks.GeneratorConfig(z_dim=8, w_dim=8, img_resolution=16, channel_base=64,
                                 channel_max=16, mapping_layers=2)
  tiny = checkpoint.Model(rgb, networks.init_generator(rgb, jax.random.PRNGKey(0)))
  with pytest.raises(ValueError, match='RGB \\+ defect-mask generator.*interfacegan'):
    dirs.defect_direction(tiny, num_samples=50)
  # and a directions file of the embedded model does not fit it
  with pytest.raises(latents_lib.LatentsError, match='made with generator'):
    dirs.check_generator(_some_directions('sha256:0000'), tiny)


# ----------------------------------------------------------------------------------------------
# apply, and the edit command.


def test_apply_shapes_and_linearity():
  rng = np.random.default_rng(6)
  ws = rng.standard_normal((5, 3, 4)).astype(np.float32)
  v = _unit(rng, (3, 4)).astype(np.float32)
  d = dirs.Direction('v', v, 2.5)
  assert dirs.apply(ws[0], d, 1.0).shape == (3, 4)
  assert dirs.apply(ws[0], d, [-1, 0, 1, 2]).shape == (4, 3, 4)
  assert dirs.apply(ws, d, 0.5).shape == (5, 3, 4)
  assert dirs.apply(ws, d, [0.0, 1.0]).shape == (2, 5, 3, 4)
  np.testing.assert_array_equal(dirs.apply(ws, d, 0.0), ws)
  step = lambda s: dirs.apply(ws, d, s) - ws
  np.testing.assert_allclose(step(1.5), step(0.5) + step(1.0), atol=1e-5)
  np.testing.assert_allclose(step(-2.0), -2 * step(1.0), atol=1e-5)
  np.testing.assert_allclose(step(1.0), np.broadcast_to(2.5 * v, ws.shape), atol=1e-6)
  # a strength of s moves the projection on the vector by s * scale
  np.testing.assert_allclose(((dirs.apply(ws, d, 2.0) - ws) * v).sum((1, 2)), 5.0, rtol=1e-5)
  np.testing.assert_allclose(dirs.apply(ws, v, 1.0), ws + v, atol=1e-6)  # a bare vector: scale 1
  with pytest.raises(ValueError, match='num_ws, w_dim'):
    dirs.apply(ws[:, :2], d, 1.0)


def test_direction_edit_command_writes_a_strip(tmp_path, model, model_id):
  summary = dirs.run_directions_command('ganspace', model, str(tmp_path / 'pcs.npz'),
                                        num_components=4, num_samples=1000, seed=0)
  assert summary.startswith(f'wrote {tmp_path / "pcs.npz"}: 4 GANSpace directions pc0..pc3')
  ws = dirs.sample_ws(model, 1, seed=7)
  n = 1
  result = api.InversionResult(
      names=['a'], space='wplus', latents=ws, ws=ws, noise={}, reconstructions=None,
      targets=None, losses={'total': np.zeros((n, 1), np.float32)},
      metrics={'mse': np.zeros(n)}, failed=np.zeros(n, bool), failed_step=-np.ones(n, int),
      steps=1, generator_id=model_id, config_json='{}')
  lat = latents_lib.save_latents(tmp_path / 'a.npz', result, 0, model)
  png = dirs.run_direction_edit(model, lat, tmp_path / 'pcs.npz', 'pc0', [-3, 0, 3],
                                tmp_path / 'strip.png')
  strip = np.asarray(Image.open(png))
  assert strip.shape == (64, 3 * 64 + 2 * 2, 3)
  left, mid, right = strip[:, :64], strip[:, 66:130], strip[:, 132:]
  assert np.abs(left.astype(int) - right).mean() > 1  # pc0 +-3 sigma changes the image
  assert np.abs(mid.astype(int) - left).mean() > 1
  with pytest.raises(latents_lib.LatentsError, match="no direction 'smile'.*pc0, pc1"):
    dirs.run_direction_edit(model, lat, tmp_path / 'pcs.npz', 'smile', [1], tmp_path / 'x.png')
  with pytest.raises(ValueError, match='ganspace'):
    dirs.run_directions_command('pca', model, str(tmp_path / 'x.npz'), num_components=2,
                                num_samples=10, seed=0)
