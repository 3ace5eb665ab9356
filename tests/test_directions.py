"""inversion.directions: the directions file, GANSpace, InterFaceGAN, the defect direction of
the embedded RGB + mask model, `apply` and the CLI helpers."""

import dataclasses
import pathlib
import time
import zipfile

import jax
import numpy as np
import pytest
from PIL import Image

from generators import checkpoint, networks, torch_io
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
  # a single official-format file and one strength: one frame
  np.save(tmp_path / 'attr.npy', _unit(np.random.default_rng(8), (1, model.g_config.w_dim)))
  png = dirs.run_direction_edit(model, lat, tmp_path / 'attr.npy', None, 3.0, tmp_path / 'a.png')
  assert np.asarray(Image.open(png)).shape == (64, 64, 3)


# ----------------------------------------------------------------------------------------------
# Official direction files (tests/fixtures/sfe_directions: SFE's own files, see its README).

SFE_FILES = pathlib.Path(__file__).parent / 'fixtures' / 'sfe_directions'
FFHQ = (18, 512)  # the W+ shape the official files are made for
# SFE editings/latent_editor.py, human_faces: name -> (pca_idx, start, end, strength)
SFE_GANSPACE = {'eye_openness': (54, 7, 8, 5), 'trimmed_beard': (58, 7, 9, 7),
                'lipstick': (34, 10, 11, 20), 'face_roundness': (37, 0, 5, 20.0),
                'nose_length': (51, 4, 5, -30.0), 'eyebrow_thickness': (37, 8, 9, 20.0),
                'head_angle_up': (11, 1, 4, -10.5), 'displeased': (36, 4, 7, 10.0)}


def _ffhq_ws(seed=0):
  """A W+ code whose layers differ (so layer-0 and per-layer conventions would show)."""
  return np.random.default_rng(seed).standard_normal(FFHQ).astype(np.float32)


def _read_ffhq(file_name, **kw):
  return dirs.read_direction_file(SFE_FILES / file_name, FFHQ, generator_id='sha256:ffhq', **kw)


@pytest.mark.parametrize('stem', ['age', 'smile', 'rotation'])
def test_sfe_interfacegan_tensors_match_sfe(stem):
  raw = torch_io.load(SFE_FILES / f'{stem}.pt')          # [1, 512]
  d = _read_ffhq(f'{stem}.pt')
  assert d.vectors.shape == (1, *FFHQ) and d.names == [stem] and d.method == 'given'
  assert d.info['format'] == 'sfe-interfacegan-pt' and d.info['file_shape'] == [1, 512]
  assert 'FFHQ' in d.info['generator'] and d.generator_id == 'sha256:ffhq'
  ws = _ffhq_ws()
  for degree in (-5.0, 3.0):
    sfe = ws[None] + degree / 2 * raw  # get_interface_gan_edits: start_w + factor / 2 * direction
    np.testing.assert_allclose(dirs.apply(ws, d.direction(stem), degree), sfe[0], atol=1e-5)


@pytest.mark.parametrize('stem', ['Eyeglasses', 'Smiling', 'Heavy_Makeup'])
def test_sfe_bound_boundaries_match_sfe(stem):
  raw = np.load(SFE_FILES / f'{stem}_boundary.npy')        # [1, 9216]
  d = _read_ffhq(f'{stem}_boundary.npy', name=stem.lower())
  assert d.vectors.shape == (1, *FFHQ) and d.names == [stem.lower()]
  assert d.info['file_shape'] == [1, 9216]
  ws = _ffhq_ws()
  for degree in (-8.0, 20.0):
    sfe = (ws.reshape(1, -1) + degree * raw).reshape(1, -1, 512)  # get_fs_edits
    np.testing.assert_allclose(dirs.apply(ws, d.direction(stem.lower()), degree), sfe[0],
                               atol=1e-5)


@pytest.mark.parametrize('shape', [(512,), (1, 512), (18, 512)])
def test_interfacegan_npy_boundaries_add_on_wplus(tmp_path, shape):
  v = _unit(np.random.default_rng(1), shape).astype(np.float32) * 3  # not unit: scale keeps it
  np.save(tmp_path / 'smile_w_boundary.npy', v)
  d = dirs.read_direction_file(tmp_path / 'smile_w_boundary.npy', FFHQ, generator_id='x')
  assert d.names == ['smile_w_boundary'] and d.info['file_shape'] == list(shape)
  ws = _ffhq_ws()
  # genforce linear_interpolate on a W+ code: latent + distance * boundary (per layer)
  np.testing.assert_allclose(dirs.apply(ws, d.direction('smile_w_boundary'), 2.5),
                             ws + 2.5 * np.broadcast_to(v, FFHQ), atol=1e-5)
  if len(shape) < 2 or shape[0] == 1:
    np.testing.assert_allclose(d.scales[0], np.sqrt(18) * 3, rtol=1e-6)


def test_ganspace_pca_matches_sfe():
  pca = torch_io.load(SFE_FILES / 'ffhq_pca.pt')  # {'comp': [80, 1, 512], 'std', 'mean'}
  comp, std, mean = (pca[k].astype(np.float64) for k in ('comp', 'std', 'mean'))
  d = _read_ffhq('ffhq_pca.pt')
  assert d.vectors.shape == (88, *FFHQ) and d.method == 'given'
  assert d.names[:8] == list(SFE_GANSPACE) and d.names[8:] == [f'pc{i}' for i in range(80)]
  ws = _ffhq_ws(2).astype(np.float64)
  for name, (idx, start, end, power) in SFE_GANSPACE.items():
    # editings/ganspace.py get_delta / edit, in numpy
    coord = np.sum((ws - mean)[0] * comp[idx].reshape(-1)) / std[idx]
    sfe = ws.copy()
    sfe[start:end] += (power - coord) * comp[idx] * std[idx]
    strength = dirs.ganspace_strength(ws, d, name, power)
    np.testing.assert_allclose(dirs.apply(ws, d.direction(name), strength), sfe, atol=1e-4)
    # our strength is a step: s stds of the component on the edit's layers, nothing elsewhere
    step = np.zeros(FFHQ)
    step[start:end] = 1.5 * std[idx] * comp[idx]
    np.testing.assert_allclose(dirs.apply(ws, d.direction(name), 1.5) - ws, step, atol=1e-5)
  np.testing.assert_allclose(dirs.apply(ws, d.direction('pc3'), -2.0) - ws,
                             np.broadcast_to(-2 * std[3] * comp[3], FFHQ), atol=1e-5)
  assert dirs.ganspace_strength(ws, d, 'lipstick', [0, 20]).shape == (2,)
  # 10 layers: SFE's lipstick (layers 10:11) does not fit, and says so
  small = dirs.read_direction_file(SFE_FILES / 'ffhq_pca.pt', (10, 512), generator_id='x')
  assert 'lipstick' not in small.names and small.info['sfe_edits_left_out'] == ['lipstick']


def test_read_direction_file_round_trips_our_npz(tmp_path, model, model_id):
  path = dirs.save_directions(tmp_path / 'd.npz', _some_directions(model_id))
  d = dirs.read_direction_file(path, model)
  np.testing.assert_array_equal(d.vectors, _some_directions(model_id).vectors)
  with pytest.raises(latents_lib.LatentsError, match='made with generator'):
    dirs.read_direction_file(path, (10, 128), generator_id='sha256:other')


@pytest.mark.parametrize('stem, wplus, shapes', [
    ('age.pt', (10, 128), r'\[1, 512\].*\[10, 128\].*\[1, 128\]'),
    ('Smiling_boundary.npy', (16, 512), r'\[1, 9216\].*\[16, 512\].*\[1, 8192\]'),
    ('ffhq_pca.pt', (10, 128), r'\[\[80, 1, 512\], \[80\], \[1, 512\]\].*\[10, 128\]'),
])
def test_read_direction_file_shape_mismatch_names_the_shapes(stem, wplus, shapes):
  with pytest.raises(dirs.DirectionsError, match=shapes) as e:
    dirs.read_direction_file(SFE_FILES / stem, wplus, generator_id='x')
  assert str(SFE_FILES / stem) in str(e.value) and 'FFHQ 1024 px config-F' in str(e.value)


@pytest.mark.parametrize('damage, match', [
    ('truncated.npy', 'not a readable direction file'),
    ('strings.npy', 'must be a numeric array'),
    ('nan.npy', 'NaN or infinite'),
    ('truncated.pt', 'not a readable direction file'),
    ('garbage.pt', 'not a readable direction file'),
    ('no_mean.pt', "lacks mean"),
    ('missing.npy', 'does not exist'),
    ('d.txt', 'unknown direction file type'),
])
def test_read_direction_file_damaged_files_say_what_is_wrong(tmp_path, damage, match):
  path = tmp_path / damage
  if damage == 'truncated.npy':
    path.write_bytes((SFE_FILES / 'Smiling_boundary.npy').read_bytes()[:1000])
  elif damage == 'strings.npy':
    np.save(path, np.array(['a'] * 512))
  elif damage == 'nan.npy':
    np.save(path, np.full((1, 512), np.nan, np.float32))
  elif damage == 'truncated.pt':
    path.write_bytes((SFE_FILES / 'age.pt').read_bytes()[:1500])
  elif damage == 'garbage.pt':
    path.write_bytes(b'not a torch file' * 10)
  elif damage == 'no_mean.pt':  # ffhq_pca.pt with its 'mean' key renamed in the pickle
    with zipfile.ZipFile(SFE_FILES / 'ffhq_pca.pt') as src, zipfile.ZipFile(path, 'w') as dst:
      for item in src.infolist():
        data = src.read(item)
        dst.writestr(item, data.replace(b'mean', b'mEAN') if item.filename.endswith('.pkl')
                     else data)
  elif damage == 'd.txt':
    path.write_text('0.1 0.2')
  with pytest.raises(dirs.DirectionsError, match=match) as e:
    dirs.read_direction_file(path, FFHQ, generator_id='x')
  assert str(path) in str(e.value)


def test_direction_edit_takes_a_single_official_file(tmp_path, model, model_id):
  gc = model.g_config
  v = _unit(np.random.default_rng(8), (1, gc.w_dim)).astype(np.float32)
  np.save(tmp_path / 'attr.npy', v)
  ws = dirs.sample_ws(model, 1, seed=7)[0]
  one = dirs.direction_edit_ws(ws, tmp_path / 'attr.npy', model, None, 2.0)
  assert one.shape == (1, gc.num_ws, gc.w_dim)
  np.testing.assert_allclose(one[0], ws + 2.0 * v, atol=1e-5)
  both = dirs.direction_edit_ws(ws, tmp_path / 'attr.npy', model, 'attr', [-1.0, 2.0])
  np.testing.assert_allclose(both[1], one[0], atol=1e-6)
  assert dirs.read_direction_file(tmp_path / 'attr.npy', model).generator_id == model_id
  path = dirs.save_directions(tmp_path / 'd.npz', _some_directions(model_id))
  with pytest.raises(latents_lib.LatentsError, match='holds 3 directions: name one.*a, b, c'):
    dirs.direction_edit_ws(ws, path, model, None, 1.0)
