"""Metrics against scikit-image and small independent NumPy/SciPy references."""

import functools

import numpy as np
import pytest
import scipy.ndimage
import scipy.signal
import jax
import jax.numpy as jnp
from skimage import data as skdata
from skimage import transform as sktransform
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim

from inversion import metrics as M
from inversion import weights


def _images():
  """Random and structured [-1, 1] image pairs, NHWC float32."""
  rng = np.random.default_rng(0)
  rand = rng.uniform(-1, 1, (2, 40, 36, 3)).astype(np.float32)
  rand_noisy = np.clip(rand + 0.2 * rng.standard_normal(rand.shape), -1, 1)
  astro = sktransform.resize(skdata.astronaut(), (48, 48), anti_aliasing=True) * 2 - 1
  astro = np.stack([astro, astro[::-1]]).astype(np.float32)
  astro_blur = scipy.ndimage.gaussian_filter(astro, (0, 1, 1, 0))
  return [(rand, rand_noisy.astype(np.float32)), (astro, astro_blur.astype(np.float32)),
          (astro[..., :1], astro_blur[..., :1])]


@pytest.mark.parametrize('case', range(3))
def test_ssim_and_psnr_match_skimage(case):
  x, y = _images()[case]
  got_ssim = np.asarray(M.ssim(jnp.asarray(x), jnp.asarray(y)))
  got_psnr = np.asarray(M.psnr(jnp.asarray(x), jnp.asarray(y)))
  for i in range(x.shape[0]):
    ref = sk_ssim(x[i], y[i], data_range=2.0, channel_axis=-1, gaussian_weights=True,
                  sigma=1.5, use_sample_covariance=False)
    # float32 port vs skimage's float64: 6e-7 (SSIM) and 4.7e-6 dB (PSNR) seen; another window,
    # constant or data range is > 1e-3 off
    assert abs(got_ssim[i] - ref) < 1e-5, (got_ssim[i], ref)
    assert abs(got_psnr[i] - sk_psnr(x[i], y[i], data_range=2.0)) < 1e-4
  # float32 means of ~4000 terms vs NumPy's pairwise sums: 5e-7 rel seen
  np.testing.assert_allclose(M.mse(jnp.asarray(x), jnp.asarray(y)),
                             np.mean((x - y) ** 2, axis=(1, 2, 3)), rtol=1e-5)


def test_ssim_rejects_small_images():
  with pytest.raises(ValueError, match='11x11'):
    M.ssim(jnp.zeros((1, 10, 20, 3)), jnp.zeros((1, 10, 20, 3)))


# --- MS-SSIM --------------------------------------------------------------------------------


def _np_ms_ssim(x, y, weights, data_range=2.0):
  """Independent float64 reference, written from Wang et al. 2003 / tensorflow-models msssim:
  full 2-D 'valid' FFT convolution with an 11x11 Gaussian, 2x2 mean pooling, shrink rule."""
  x, y = x.astype(np.float64), y.astype(np.float64)
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  ssims, css = [], []
  for level in range(len(weights)):
    size = min(11, x.shape[1], x.shape[2])
    sigma = size * 1.5 / 11
    t = np.arange(size) - (size - 1) / 2
    win = np.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2 * sigma ** 2))
    win = (win / win.sum())[None, :, :, None]
    f = lambda a: scipy.signal.fftconvolve(a, win, mode='valid')
    mx, my = f(x), f(y)
    vx, vy, vxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
    cs = (2 * vxy + c2) / (vx + vy + c2)
    ssims.append(np.mean((2 * mx * my + c1) / (mx ** 2 + my ** 2 + c1) * cs, axis=(1, 2, 3)))
    css.append(np.mean(cs, axis=(1, 2, 3)))
    h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
    pool = lambda a: a[:, :h, :w].reshape(a.shape[0], h // 2, 2, w // 2, 2, -1).mean((2, 4))
    x, y = pool(x), pool(y)
  ssims, css = np.clip(ssims, 0, None), np.clip(css, 0, None)
  w = np.asarray(weights)
  return np.prod(css[:-1] ** w[:-1, None], axis=0) * ssims[-1] ** w[-1]


def test_ms_ssim_matches_numpy_reference():
  x, y = _images()[1]  # 48x48 structured
  for scale_w, small in [(M.MS_SSIM_WEIGHTS[:3], 'error'), (M.MS_SSIM_WEIGHTS, 'shrink')]:
    got = M.ms_ssim(jnp.asarray(x), jnp.asarray(y), weights=scale_w, small_images=small)
    # float32 vs the float64 reference: 1.5e-7 seen; a wrong scale weight or pooling is > 1e-3
    np.testing.assert_allclose(got, _np_ms_ssim(x, y, scale_w), rtol=2e-5, atol=2e-6)


def test_ms_ssim_properties():
  x, y = _images()[1]
  x, y = jnp.asarray(x), jnp.asarray(y)
  w3 = M.MS_SSIM_WEIGHTS[:3]
  # single scale is SSIM (skimage's definition)
  np.testing.assert_allclose(M.ms_ssim(x, y, weights=[1.0]), M.ssim(x, y), rtol=1e-6)
  np.testing.assert_allclose(M.ms_ssim(x, x, weights=w3), 1.0, rtol=1e-6)
  np.testing.assert_allclose(M.ms_ssim(x, y, weights=w3), M.ms_ssim(y, x, weights=w3),
                             rtol=1e-6)
  noise = jnp.asarray(np.random.default_rng(0).standard_normal(x.shape), jnp.float32)
  vals = [float(M.ms_ssim(x, x + s * noise, weights=w3)[0]) for s in (0.05, 0.1, 0.3)]
  assert 1.0 > vals[0] > vals[1] > vals[2]
  with pytest.raises(ValueError, match='176x176'):
    M.ms_ssim(x, y)
  assert M.ms_ssim_min_size(5) == 176 and M.ms_ssim_min_size(3) == 44


# --- SWD ------------------------------------------------------------------------------------


def _np_laplacian_pyramid(nchw, levels):
  """ProGAN's pyramid (scipy.ndimage.convolve, mode='mirror'), NCHW, float32."""
  g = np.float32([[1, 4, 6, 4, 1], [4, 16, 24, 16, 4], [6, 24, 36, 24, 6],
                  [4, 16, 24, 16, 4], [1, 4, 6, 4, 1]]) / 256.0
  down = lambda m: scipy.ndimage.convolve(m, g[None, None], mode='mirror')[:, :, ::2, ::2]

  def up(m):
    res = np.zeros((m.shape[0], m.shape[1], m.shape[2] * 2, m.shape[3] * 2), m.dtype)
    res[:, :, ::2, ::2] = m
    return scipy.ndimage.convolve(res, g[None, None] * 4.0, mode='mirror')

  pyr = [np.float32(nchw)]
  for _ in range(1, levels):
    pyr.append(down(pyr[-1]))
    pyr[-2] -= up(pyr[-1])
  return pyr


def test_laplacian_pyramid_matches_progan_scipy():
  x = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  ours = M.laplacian_pyramid(jnp.asarray(x), 3)
  ref = _np_laplacian_pyramid(x.transpose(0, 3, 1, 2), 3)
  for a, r in zip(ours, ref):
    np.testing.assert_allclose(np.asarray(a).transpose(0, 3, 1, 2), r, atol=1e-5)


def test_swd_properties():
  rng = np.random.default_rng(2)
  a = jnp.asarray(_images()[1][0][:, :32, :32])  # structured
  a = jnp.concatenate([a, jnp.asarray(rng.uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)])
  key = jax.random.PRNGKey(0)
  swd = lambda u, v: M.sliced_wasserstein(u, v, key, dir_repeats=2, dirs_per_repeat=64)
  same = swd(a, a)
  assert set(same) == {'SWDx1e3_32', 'SWDx1e3_16', 'SWDx1e3_avg'}
  assert all(float(v) == 0.0 for v in same.values())
  blur = lambda s: jnp.asarray(scipy.ndimage.gaussian_filter(np.asarray(a), (0, s, s, 0)))
  d1, d2 = swd(a, blur(0.7)), swd(a, blur(1.5))
  assert 0 < float(d1['SWDx1e3_32']) < float(d2['SWDx1e3_32'])
  assert 0 < float(d1['SWDx1e3_avg']) < float(d2['SWDx1e3_avg'])
  b = blur(1.0)
  ab, ba = swd(a, b), swd(b, a)
  perm = jnp.asarray([2, 0, 3, 1])
  ab_perm = swd(a[perm], b[perm[::-1]])
  for k in ab:
    assert float(ab[k]) == float(ba[k])                      # symmetric
    np.testing.assert_allclose(ab_perm[k], ab[k], rtol=1e-4)  # order-invariant (9e-7 seen)
  np.testing.assert_allclose(ab['SWDx1e3_avg'], (ab['SWDx1e3_32'] + ab['SWDx1e3_16']) / 2,
                             rtol=1e-6)
  # range convention does not matter: [0, 255] data gives the same numbers
  ab255 = swd((a + 1) * 127.5, (b + 1) * 127.5)
  # the same numbers scaled in float32 (4.8e-6 rel seen); without the range rule 127.5x off
  np.testing.assert_allclose(ab255['SWDx1e3_avg'], ab['SWDx1e3_avg'], rtol=1e-3)


def test_swd_host_sort_equals_xla_sort():
  """On CPU SWD sorts its projections with NumPy in a host callback; it must agree exactly with
  XLA's sort (which GPU and TPU use), ties and repeated values included."""
  x = jnp.round(jax.random.normal(jax.random.PRNGKey(3), (4, 3000)) * 8) / 8
  on_host = jax.jit(functools.partial(M._sort_rows, on_host=True))(x)
  np.testing.assert_array_equal(on_host, M._sort_rows(x, on_host=False))
  assert bool(jnp.all(jnp.diff(on_host, axis=-1) >= 0))


def test_swd_input_checks():
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match='16x16'):
    M.sliced_wasserstein(jnp.zeros((2, 8, 8, 3)), jnp.zeros((2, 8, 8, 3)), key)
  with pytest.raises(ValueError, match='divisible'):
    M.sliced_wasserstein(jnp.zeros((2, 66, 66, 3)), jnp.zeros((2, 66, 66, 3)), key)
  with pytest.raises(ValueError, match='same shape'):
    M.sliced_wasserstein(jnp.zeros((2, 32, 32, 3)), jnp.zeros((3, 32, 32, 3)), key)


# --- FID / identity -------------------------------------------------------------------------


def test_frechet_distance_closed_form():
  rng = np.random.default_rng(3)
  f = rng.standard_normal((500, 4))
  assert abs(M.frechet_distance(f.mean(0), np.cov(f, rowvar=False),
                                f.mean(0), np.cov(f, rowvar=False))) < 1e-8
  # diagonal Gaussians: |m1 - m2|^2 + sum (s1 - s2)^2
  m1, m2, s1, s2 = np.zeros(3), np.ones(3), np.array([1., 2., 3.]), np.array([2., 2., 1.])
  want = 3.0 + np.sum((s1 - s2) ** 2)
  assert abs(M.frechet_distance(m1, np.diag(s1 ** 2), m2, np.diag(s2 ** 2)) - want) < 1e-9


def test_fid_and_identity_with_supplied_network():
  rng = np.random.default_rng(4)
  a = jnp.asarray(rng.uniform(-1, 1, (16, 8, 8, 3)), jnp.float32)
  feats = lambda im: jnp.concatenate([im.mean((1, 2)), im.std((1, 2))], -1)  # toy network
  assert abs(M.fid(a, a, features_fn=feats, batch_size=5)) < 1e-8
  assert M.fid(a, a * 0.5, features_fn=feats) > 0
  # cos(e, e) through two norms and a dot: a few ulps (2 seen, 2.4e-7; rtol 1e-6 is only 8)
  np.testing.assert_allclose(M.identity_similarity(a, a, features_fn=feats), 1.0, rtol=1e-5)


def test_fid_and_identity_need_a_network(tmp_path, monkeypatch):
  monkeypatch.setenv('STYLEGAN_INV_CACHE', str(tmp_path))
  for spec in weights.WEIGHTS.values():
    monkeypatch.delenv(spec.env_var, raising=False)
  a = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (8, 8, 8, 3)), jnp.float32)
  with pytest.raises(weights.WeightsNotFoundError, match='inception-2015-12-05'):
    M.fid(a, a)
  with pytest.raises(weights.WeightsNotFoundError, match='model_ir_se50.pth'):
    M.identity_similarity(a, a)
  (tmp_path / 'inception-2015-12-05.pt').write_bytes(b'x')
  with pytest.raises(M.FeatureNetworkUnavailableError, match='register_feature_network'):
    M.fid(a, a)
  monkeypatch.setattr(M, '_FEATURE_LOADERS', {})
  M.register_feature_network('inception', lambda path: (lambda im: im.mean((1, 2))))
  assert abs(M.fid(a, a)) < 1e-8
