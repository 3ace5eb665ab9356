"""Perceptual loss terms: reference layers, masking rule, D-feature distance, composition."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inversion import lpips as lp
from inversion import perceptual as P
from inversion import vgg


@pytest.fixture(scope='module')
def ref(lpips_ref):
  return lpips_ref


@pytest.fixture(scope='module')
def lpips_params(lpips_fixture_params):
  return lpips_fixture_params


def nhwc(a):
  return jnp.asarray(np.asarray(a).transpose(0, 2, 3, 1))


def test_image2stylegan_and_idinvert_match_reference_activations(ref, lpips_params):
  # Fixture activations are for the LPIPS scaling (== ImageNet normalisation): image 0 vs 1.
  x, y = nhwc(ref['x0'][:1]), nhwc(ref['x0'][1:2])
  acts = {k[4:]: ref[k] for k in ref if k.startswith('act_')}
  want_i2s = sum(np.mean((acts[n][0] - acts[n][1]) ** 2) for n in P.IMAGE2STYLEGAN_LAYERS)
  want_idi = np.mean((acts['conv4_3'][0] - acts['conv4_3'][1]) ** 2)
  f = jax.jit(lambda p, a, b: (P.image2stylegan_perceptual(p, a, b, preprocess='lpips'),
                               P.idinvert_feature(p, a, b, preprocess='lpips')))
  with jax.default_matmul_precision('highest'):
    got_i2s, got_idi = f(lpips_params['trunk'], x, y)
  # our VGG vs the fixture's torch activations (~1e-6 of their max): squared differences double
  # that, 4 layers summed: 1.4e-6 seen (1e-5 left 7x); a layer left out or swapped moves it > 1%
  np.testing.assert_allclose(got_i2s, [want_i2s], rtol=3e-5)
  np.testing.assert_allclose(got_idi, [want_idi], rtol=1e-5)  # one layer: 1.9e-7 seen


def test_pixel_mse_mask():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
  y = jnp.asarray(rng.uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
  np.testing.assert_allclose(P.pixel_mse(None, x, y), jnp.mean((x - y) ** 2, (1, 2, 3)),
                             rtol=1e-6)
  # sum(m d) / sum(m) vs mean(d) over 192 terms, summed in another order: up to ~sqrt(192) ulps
  # = 2e-6 (1 ulp seen, rtol 1e-6 is 8 ulps); a wrong normaliser is off by > 30%
  np.testing.assert_allclose(P.pixel_mse(None, x, y, jnp.ones((2, 8, 8, 1))),
                             P.pixel_mse(None, x, y), rtol=1e-5)
  m = jnp.zeros((1, 8, 8, 1)).at[:, :4].set(1.0)  # top half only, broadcast over batch
  np.testing.assert_allclose(P.pixel_mse(None, x, y, m),
                             jnp.mean((x[:, :4] - y[:, :4]) ** 2, (1, 2, 3)), rtol=1e-5)
  y_changed = y.at[:, 4:].set(jnp.asarray(rng.standard_normal((2, 4, 8, 3)), jnp.float32))
  np.testing.assert_allclose(P.pixel_mse(None, x, y_changed, m), P.pixel_mse(None, x, y, m),
                             rtol=1e-6)
  with pytest.raises(ValueError, match='mask'):
    P.pixel_mse(None, x, y, jnp.ones((2, 8, 8, 3)))


def test_feature_terms_mask_before_network(ref, lpips_params):
  x, y = nhwc(ref['x0'][:2, :, :32, :32]), nhwc(ref['x1'][:2, :, :32, :32])
  m = jnp.zeros((2, 32, 32, 1)).at[:, 8:24, 8:24].set(1.0)
  y2 = jnp.where(m > 0, y, -y)  # differs from y only where the mask is 0
  # (parameters are jit arguments, never closed over: constant-folding them is slow)
  i2s = jax.jit(P.image2stylegan_perceptual)
  lpl = jax.jit(P.lpips_loss)
  for f, p in ((i2s, lpips_params['trunk']), (lpl, lpips_params)):
    # same program, inputs equal where the mask is 1: exact up to the masked-out zeros (0 seen)
    np.testing.assert_allclose(f(p, x, y2, m), f(p, x, y, m), rtol=1e-6)
    # the same jitted program: the network sees (x m) * 1 = x m (0 seen); other backends may
    # fuse the 1024-pixel means apart (~sqrt(1024) ulps); a leak through the mask is > 1e-2
    np.testing.assert_allclose(f(p, x * m, y * m, jnp.ones_like(m)), f(p, x, y, m), rtol=2e-5)
    assert np.all(np.asarray(f(p, x, y, m)) > 0)
  # with an all-ones mask, LPIPS loss is LPIPS
  # two programs of the same sums (x * 1 = x), which may fuse apart: 1024-pixel means (0 seen)
  np.testing.assert_allclose(lpl(lpips_params, x, y, jnp.ones_like(m)),
                             jax.jit(lp.lpips)(lpips_params, x, y), rtol=2e-5)


def test_discriminator_distance_is_unweighted_lpips(ref, lpips_params):
  # With VGG's LPIPS layers as "discriminator" features, the distance is LPIPS with all linear
  # weights 1 (lpips=False baseline), averaged over the five layers.
  x, y = nhwc(ref['x0'][:2, :, :32, :32]), nhwc(ref['x1'][:2, :, :32, :32])
  layers = lp.LPIPS_LAYERS['vgg']
  trunk = lpips_params['trunk']
  feats = lambda p, im: vgg.vgg16_features(p, im, layers, preprocess='lpips')
  term = P.make_discriminator_feature_loss(feats, layers)
  ones = {'trunk': trunk, 'lin': {k: jnp.ones_like(v) for k, v in lpips_params['lin'].items()}}
  d, want = jax.jit(lambda t, o: (term(t, x, y), lp.lpips(o, x, y) / len(layers)))(trunk, ones)
  # another formula (normalise, mean over channels) vs LPIPS's einsum: sums over up to 512
  # channels reordered, 1.8e-6 seen (1e-5 left 5x); another layer or weight is off by > 1e-2
  np.testing.assert_allclose(d, want, rtol=5e-5)


def test_discriminator_distance_properties():
  rng = np.random.default_rng(1)
  w1 = jnp.asarray(rng.standard_normal((3, 8)), jnp.float32)
  # toy "discriminator": leaky-relu 1x1 features at two resolutions + a dense output
  def features_fn(params, im):
    h = jax.nn.leaky_relu(im @ params['w1'], 0.2)
    h2 = h.reshape(h.shape[0], h.shape[1] // 2, 2, h.shape[2] // 2, 2, -1).mean((2, 4))
    return {'b16': h, 'b8': h2, 'out': h2.mean((1, 2))}
  params = {'w1': w1}
  x = jnp.asarray(rng.uniform(-1, 1, (3, 16, 16, 3)), jnp.float32)
  y = jnp.asarray(rng.uniform(-1, 1, (3, 16, 16, 3)), jnp.float32)
  term = jax.jit(P.make_discriminator_feature_loss(features_fn, ('b16', 'b8', 'out')))
  d = term(params, x, y)
  assert d.shape == (3,) and np.all(np.asarray(d) > 0) and np.all(np.asarray(d) <= 4)
  np.testing.assert_allclose(term(params, x, x), 0.0, atol=1e-7)
  np.testing.assert_allclose(term(params, y, x), d, rtol=1e-6)  # same program, (a-b)^2 = (b-a)^2
  # unit normalisation: scaling features by a positive constant changes nothing (up to 2.2e-7 seen)
  scaled = lambda p, im: {k: 7.0 * v for k, v in features_fn(p, im).items()}
  np.testing.assert_allclose(jax.jit(P.make_discriminator_feature_loss(
      scaled, ('b16', 'b8', 'out')))(params, x, y), d, rtol=1e-5)
  with pytest.raises(ValueError, match='available'):
    P.discriminator_feature_distance(lambda im: features_fn(params, im), x, y, ('b4_conv',))
  g = jax.jit(jax.grad(lambda p, a: term(p, a, y).sum(), argnums=1))(params, x)
  assert np.all(np.isfinite(g))


def test_combine_jit_vmap_and_grad(ref, lpips_params):
  x = nhwc(ref['x0'][:2, :, :16, :16])
  targets = jnp.stack([nhwc(ref['x1'][:2, :, :16, :16]), nhwc(ref['x1'][2:4, :, :16, :16])])
  terms = P.image2stylegan_terms(mse_weight=0.5)
  loss = P.combine(terms)
  params = {'vgg': lpips_params['trunk']}
  total, parts = jax.jit(loss)(params, x, targets[0])
  assert set(parts) == {'perceptual', 'mse'} and total.shape == (2,)
  np.testing.assert_allclose(total, parts['perceptual'] + 0.5 * parts['mse'], rtol=1e-6)
  # vmap over several targets (e.g. an engine optimising one latent per target set)
  tv, _ = jax.jit(jax.vmap(loss, in_axes=(None, None, 0)))(params, x, targets)
  assert tv.shape == (2, 2)
  np.testing.assert_allclose(tv[0], total, rtol=1e-5)  # vmapped convs may sum apart (0 seen)
  g = jax.jit(jax.grad(lambda p, a: loss(p, a, targets[0])[0].sum(), argnums=1))(params, x)
  assert g.shape == x.shape and np.all(np.isfinite(g))
  idi = P.combine(P.idinvert_terms(preprocess='imagenet'))
  t2, p2 = jax.jit(idi)(params, x, targets[0])
  np.testing.assert_allclose(t2, p2['mse'] + P.IDINVERT_FEATURE_WEIGHT * p2['feature'],
                             rtol=1e-6)


def test_with_stylegan2_discriminator(official_d_state):
  """The D-feature term on the lead's Flax Discriminator (official 32 px fixture weights)."""
  convert = pytest.importorskip('generators.convert')
  networks = pytest.importorskip('generators.networks')
  d_config, d_vars = convert.discriminator_from_state(official_d_state, conv_clamp=256)
  disc = networks.Discriminator(d_config)
  features = lambda params, img: disc.apply(params, img, method=networks.Discriminator.features)
  term = jax.jit(P.make_discriminator_feature_loss(features, ('b32', 'b16', 'b8')))
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.uniform(-1, 1, (4, 32, 32, 3)), jnp.float32)
  y = jnp.asarray(np.clip(np.asarray(x) + 0.3 * rng.standard_normal(x.shape), -1, 1),
                  jnp.float32)
  d = term(d_vars, x, y)
  assert d.shape == (4,) and np.all(np.asarray(d) > 0)
  np.testing.assert_allclose(term(d_vars, x, x), 0.0, atol=1e-7)
  # block outputs above 4x4 do not depend on the rest of the batch (no minibatch-std there)
  # batch 2 vs 4 through D's convs: sums may reorder (0 seen); another image would be > 1e-2 off
  np.testing.assert_allclose(term(d_vars, x[:2], y[:2]), d[:2], rtol=1e-5)
  g = jax.jit(jax.grad(lambda p, a: term(p, a, y).sum(), argnums=1))(d_vars, x)
  assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
