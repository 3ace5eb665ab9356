"""Defect synthesis (inversion/defects.py): each term's pixels and channels, the three spaces,
the MVTec AD export, bad masks, and placement on the embedded model."""

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from generators import checkpoint
from generators import mvtec
from generators import networks
from inversion import api
from inversion import defects
from inversion import engine as eng
from inversion import images as images_lib
from inversion.encoders import train as encoder_train

RES = 16


@pytest.fixture(scope='module')
def tiny():
  """A random RGB + mask generator with its discriminator, 16 px."""
  g = networks.GeneratorConfig(z_dim=8, w_dim=8, img_resolution=RES, img_channels=4,
                               channel_base=64, channel_max=16, mapping_layers=2)
  d = networks.DiscriminatorConfig(img_resolution=RES, img_channels=4, channel_base=64,
                                   channel_max=16)
  return checkpoint.Model(g, networks.init_generator(g, jax.random.PRNGKey(0)), d,
                          networks.init_discriminator(d, jax.random.PRNGKey(1)),
                          {'source': 'tiny test generator'})


def _disc(res, cy, cx, r):
  yy, xx = np.mgrid[:res, :res]
  return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _normals(n, res=RES, seed=0):
  x = np.random.default_rng(seed).uniform(-0.8, 0.8, (n, res, res, 3)).astype(np.float32)
  return np.concatenate([x, -np.ones((n, res, res, 1), np.float32)], -1)


def test_regions_dilate_feather_and_keep_the_mask():
  m = np.zeros((1, 16, 16), bool)
  m[0, 8, 8] = True
  r = defects.regions(m, dilation=2, feather=2)
  out, inside = r[0, ..., defects.OUTSIDE], r[0, ..., defects.INSIDE]
  np.testing.assert_array_equal(inside, m[0])
  assert out[6:11, 6:11].max() == 0                    # the mask grown by 2 px: not held
  assert np.isclose(out[8, 11], 1 / 3) and np.isclose(out[8, 12], 2 / 3)   # the feather ramp
  assert out[8, 13] == 1 and out[0, 0] == 1


def test_each_term_sees_only_its_pixels_and_channels(tiny):
  config = api.as_config('defect_synthesis:stitch', ['loss.perceptual=discriminator'])
  terms, params = defects.defect_terms(config, tiny)
  assert set(terms) == {'mask', 'outside', 'defect_mse', 'defect_discriminator'}
  m = _disc(RES, 7, 8, 3)[None]
  regions = jnp.asarray(defects.regions(m, 1, 1))
  target = jnp.asarray(_normals(1, seed=1))
  image = jnp.asarray(_normals(1, seed=2)).at[..., 3].set(0.3)
  for name, term in terms.items():
    value = jax.jit(lambda x, n=name, t=term: eng.image_terms_loss(
        [(n, t)], params, x, target, regions, 3)[0][0])
    g = np.asarray(jax.jit(jax.grad(value))(image))[0]
    per_pixel = np.abs(g).sum(-1)
    if name == 'mask':        # (a): the mask channel, every pixel
      assert np.abs(g[..., :3]).max() == 0 and (np.abs(g[..., 3]) > 0).all()
    elif name == 'outside':   # (b): RGB outside the dilated mask
      assert np.abs(g[..., 3]).max() == 0
      assert per_pixel[np.asarray(regions[0, ..., 0]) == 0].max() == 0
      assert per_pixel[np.asarray(regions[0, ..., 0]) == 1].min() > 0
    else:                     # (c): RGB inside the mask
      assert np.abs(g[..., 3]).max() == 0, name
      assert per_pixel[~m[0]].max() == 0, name
      assert per_pixel[m[0]].max() > 0, name
    # and so changing a pixel outside the term's region leaves it unchanged
    outside_term = (0, 0) if name != 'outside' else (7, 8)
    poked = image.at[0, outside_term[0], outside_term[1], :3].add(0.5)
    if name != 'mask':
      assert float(value(poked)) == float(value(image)), name


@pytest.mark.parametrize('space', ['z', 'w', 'wplus'])
def test_the_three_spaces_run_and_fit_the_mask(tiny, space):
  m = np.stack([_disc(RES, 5, 5, 3), _disc(RES, 10, 9, 4)])
  blend = space == 'wplus'
  result = defects.synthesize(_normals(2), m, tiny, space=space, defect='none',
                              progress=False,
                              overrides=['steps=30', 'chunk_size=15', f'blend={blend}'])
  mask_curve = result.inversion.losses['mask']
  assert result.images.shape == (2, RES, RES, 4) and np.isfinite(result.images).all()
  assert (mask_curve[:, -1] < mask_curve[:, 0]).all(), mask_curve[:, [0, -1]]
  assert result.metrics['iou'].shape == (2,) and np.isfinite(result.metrics['psnr_outside']).all()
  assert result.inversion.space == space
  if blend:  # the normal image outside the feathered region, G's drawing inside the mask
    far = defects.regions(m, 2, 2)[..., defects.OUTSIDE] == 1
    np.testing.assert_allclose(result.images[..., :3][far], _normals(2)[..., :3][far])
    raw = result.inversion.reconstructions
    np.testing.assert_array_equal(result.images[..., :3][m], raw[..., :3][m])


def test_bank_moves_the_best_defect_onto_the_mask():
  images = _normals(3)[..., :3]
  masks = np.stack([_disc(RES, 4, 4, 1), _disc(RES, 4, 4, 3), np.zeros((RES, RES), bool)])
  bank = defects.DefectBank(images, masks)
  assert len(bank.masks) == 2                           # the empty one is dropped
  target = _disc(RES, 10, 11, 3)
  k, dy, dx, score = bank.match(target)
  assert (k, dy, dx, score) == (1, 6, 7, 1.0)
  pasted = bank.paste(_normals(1, seed=5), target[None])[0]
  np.testing.assert_array_equal(pasted[target], images[1][np.roll(np.roll(target, -6, 0), -7, 1)])
  np.testing.assert_array_equal(pasted[~target], _normals(1, seed=5)[0, ..., :3][~target])


def test_folder_job_exports_mvtec_layout_and_resumes(tiny, tmp_path):
  normals_dir, masks_dir = tmp_path / 'normals', tmp_path / 'masks'
  normals_dir.mkdir()
  masks_dir.mkdir()
  for i, x in enumerate(_normals(2)):
    images_lib.save_image(str(normals_dir / f'n{i}.png'), x[..., :3])
  Image.fromarray(np.uint8(_disc(RES, 6, 6, 3)) * 255).save(masks_dir / 'round.png')
  Image.fromarray(np.uint8(_disc(RES, 11, 10, 2)) * 255).save(masks_dir / 'small.png')
  out = tmp_path / 'mvtec' / 'tiles'
  config = api.as_config('defect_synthesis:w,stitch',
                         ['steps=4', 'chunk_size=2', 'loss.perceptual=none', 'defect.bank_size=8'])

  def killed(info):  # a kill after the second batch's first chunk
    if info.num_chunks and (out / 'latents' / '000.npz').exists() and info.chunk == 0:
      raise KeyboardInterrupt
  with pytest.raises(KeyboardInterrupt):
    defects.synthesize_folder(normals_dir, tiny, config, out, masks=masks_dir, batch_size=3,
                              progress=False, callback=killed)
  assert (out / '_work' / 'state.npz').exists() and not (out / 'latents' / '003.npz').exists()
  res = defects.synthesize_folder(normals_dir, tiny, config, out, masks=masks_dir, batch_size=3,
                                  progress=False)
  assert res.skipped == ['000', '001', '002'] and res.done == ['003']
  resumed = out
  out = tmp_path / 'mvtec' / 'uninterrupted'
  res = defects.synthesize_folder(normals_dir, tiny, config, out, masks=masks_dir, batch_size=3,
                                  progress=False)
  assert res.names == ['000', '001', '002', '003'] and res.done == res.names
  for name in res.names:  # the resumed job wrote what an uninterrupted one writes
    np.testing.assert_array_equal(np.load(resumed / 'latents' / f'{name}.npz')['ws'],
                                  np.load(out / 'latents' / f'{name}.npz')['ws'])
  assert [r['mask'] for r in res.rows] == ['round', 'small'] * 2
  assert {'iou', 'psnr_outside'} <= set(res.rows[0])
  back = mvtec.load_mvtec(str(out.parent), out.name, 'test', RES)  # read back as MVTec AD
  assert back.names == [f'synthetic/{n}' for n in res.names]
  for i, name in enumerate(res.names):
    rgb = np.asarray(Image.open(out / 'test' / 'synthetic' / f'{name}.png'))
    np.testing.assert_array_equal(back.images[i, ..., :3], rgb)
    gen = np.asarray(Image.open(out / 'ground_truth' / 'synthetic' / f'{name}_mask.png')) > 0
    np.testing.assert_array_equal(back.images[i, ..., 3] > 0, gen)
    assert gen.sum() == res.rows[i]['generated_pixels']
  assert (out / 'grid.png').exists() and (out / 'metrics.csv').exists()
  again = defects.synthesize_folder(normals_dir, tiny, config, out, masks=masks_dir,
                                    batch_size=3, progress=False)
  assert again.done == [] and again.skipped == res.names


def test_bad_masks_and_generators_get_clear_errors(tiny, tmp_path, caplog):
  with pytest.raises(defects.DefectError, match='marks no pixel'):
    defects.check_masks(np.zeros((RES, RES)), RES)
  with pytest.raises(defects.DefectError, match='covers the whole image'):
    defects.check_masks(np.ones((2, RES, RES)), RES)
  with pytest.raises(defects.DefectError, match='must be 16x16.*nearest'):
    defects.check_masks(np.ones((32, 32)), RES)
  with pytest.raises(defects.DefectError, match='NaN'):
    defects.check_masks(np.full((RES, RES), np.nan), RES)
  soft = _disc(RES, 8, 8, 4) * 0.9
  soft[0, 0] = 0.2
  with caplog.at_level(logging.INFO, logger='inversion.defects'):
    hard = defects.check_masks(soft, RES)
  assert 'thresholded at 0.5' in caplog.text
  np.testing.assert_array_equal(hard[0], _disc(RES, 8, 8, 4))
  np.testing.assert_array_equal(defects.check_masks(np.uint8(_disc(RES, 8, 8, 4)) * 255, RES)[0],
                                _disc(RES, 8, 8, 4))
  big = tmp_path / 'big.png'
  Image.fromarray(np.full((32, 32), 255, np.uint8)).save(big)
  with pytest.raises(defects.DefectError, match=f'mask {big} must be 16x16'):
    defects.load_masks(str(big), RES)
  broken = tmp_path / 'broken.png'
  broken.write_bytes(b'\x89PNG\r\n\x1a\n not really')
  with pytest.raises(images_lib.ImageError, match='broken.png'):
    defects.load_masks(str(broken), RES)
  rgb_only = checkpoint.Model(dataclasses.replace(tiny.g_config, img_channels=3), tiny.g_vars)
  with pytest.raises(defects.DefectError, match='RGB \\+ defect-mask generator'):
    defects.synthesize(_normals(1)[..., :3], _disc(RES, 8, 8, 3), rgb_only, progress=False)
  with pytest.raises(defects.DefectError, match="defect.mode must be one of.*'paste'"):
    defects.synthesize(_normals(1), _disc(RES, 8, 8, 3), tiny, defect='paste', progress=False)
  with pytest.raises(defects.DefectError, match='2 normal images for 3 masks'):
    defects.synthesize(_normals(2), np.stack([_disc(RES, 8, 8, 3)] * 3), tiny, progress=False)


def test_embedded_model_places_a_hole_and_a_stain_in_wplus():
  """End to end on the real model: two held-out crops, two procedural masks it never saw."""
  model = checkpoint.load()
  normals = encoder_train.heldout_images(model.resolution)[[0, 20]]
  masks, painted = defects.random_masks(normals, 1, seed=11, kinds=('hole', 'stain'))
  result = defects.synthesize(normals, masks, model, 'defect_synthesis:wplus,stitch',
                              sources=painted, progress=False,
                              overrides=['steps=100', 'loss.perceptual=none'])
  print('IoU', result.metrics['iou'], 'PSNR outside', result.metrics['psnr_outside'])
  assert (result.metrics['iou'] > 0.8).all()           # measured 0.97, 1.0
  assert (result.metrics['psnr_outside'] > 20).all()   # measured 25.5, 27.9


def test_mvtec_ground_truth_gives_masks_and_stitch_sources(tmp_path):
  cat = tmp_path / 'mvtec' / 'carpet'
  rng = np.random.default_rng(3)
  for kind, (cy, cx, r) in {'cut': (5, 5, 2), 'hole': (10, 9, 3)}.items():
    (cat / 'test' / kind).mkdir(parents=True)
    (cat / 'ground_truth' / kind).mkdir(parents=True)
    photo = Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8))
    photo.save(cat / 'test' / kind / '000.png')
    big = np.kron(_disc(RES, cy, cx, r), np.ones((2, 2), bool))  # 32 px, as MVTec's are larger
    Image.fromarray(np.uint8(big) * 255).save(cat / 'ground_truth' / kind / '000_mask.png')
  (cat / 'test' / 'good').mkdir()
  Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(cat / 'test' / 'good' / '1.png')
  masks, names = defects.load_masks(str(cat), RES)
  assert names == ['cut_000', 'hole_000']
  np.testing.assert_array_equal(masks[1], _disc(RES, 10, 9, 3))
  bank = defects.DefectBank.from_mvtec(cat, RES)
  assert len(bank.masks) == 2 and bank.images.shape == (2, RES, RES, 3)
  assert bank.match(_disc(RES, 3, 12, 3))[0] == 1       # the hole, moved
