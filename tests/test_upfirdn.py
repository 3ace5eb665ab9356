"""The fast separable FIR path agrees with the literal four-step reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from generators import upfirdn


@pytest.mark.parametrize("up,down,padding,gain", [
    (1, 1, (1, 2), 1.0), (2, 1, (2, 1), 4.0), (1, 2, (1, 1), 1.0), (2, 1, (-1, 3), 4.0),
    (1, 2, (2, 2), 1.0), (4, 1, (0, 0), 16.0), (1, 1, (-1, -1), 2.0),
])
def test_fast_matches_reference(up, down, padding, gain):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 9, 3))
  f = upfirdn.setup_filter((1, 2, 5, 1))  # asymmetric: catches a missing flip
  fast = upfirdn.upfirdn2d(x, f, up, down, padding, gain)
  ref = upfirdn.upfirdn2d_reference(x, upfirdn.filter_2d(f), up, down, padding, gain)
  assert fast.shape == ref.shape
  # separable vs 2-D FIR, sums reordered: 9.5e-7 abs seen on |x| <= 16; a missing flip is O(1)
  np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-5)


def test_resampling_keeps_constants_and_sizes():
  x = np.ones((1, 8, 8, 2), np.float32)
  f = upfirdn.setup_filter()
  up = upfirdn.upsample2d(x, f)
  down = upfirdn.downsample2d(x, f)
  assert up.shape == (1, 16, 16, 2) and down.shape == (1, 4, 4, 2)
  # Away from the zero-padded border a constant stays constant (unit DC gain).
  np.testing.assert_allclose(up[0, 2:-2, 2:-2], 1.0, rtol=1e-6)
  np.testing.assert_allclose(down[0, 1:-1, 1:-1], 1.0, rtol=1e-6)


@pytest.mark.parametrize("kernel,up,height,width", [(3, 2, 6, 5), (2, 2, 4, 4), (5, 2, 3, 7),
                                                    (3, 3, 4, 4), (4, 2, 5, 5)])
def test_sub_pixel_transposed_conv_equals_zero_insertion(kernel, up, height, width):
  """The phase-decomposed transposed conv equals XLA's zero-inserting one, values and grads."""
  key1, key2 = jax.random.split(jax.random.PRNGKey(kernel * 10 + up))
  x = jax.random.normal(key1, (2, height, width, 3))
  w = jax.random.normal(key2, (kernel, kernel, 3, 4))
  fast = upfirdn.conv_transpose2d(x, w, up)
  slow = upfirdn.conv_transpose2d_reference(x, w, up)
  assert fast.shape == slow.shape == (2, (height - 1) * up + kernel, (width - 1) * up + kernel, 4)
  # phase-decomposed vs zero-inserting conv, sums reordered: 1.9e-6 abs seen on |x| <= 14
  np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-5)
  cotangent = jax.random.normal(jax.random.PRNGKey(3), fast.shape)
  grads = [jax.jit(jax.grad(lambda x, w: jnp.sum(f(x, w, up) * cotangent), argnums=(0, 1)))(x, w)
           for f in (upfirdn.conv_transpose2d, upfirdn.conv_transpose2d_reference)]
  for a, b in zip(*grads):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)  # gradients: 7.6e-6 abs seen


@pytest.mark.parametrize("kernel,stride,height,width", [(3, 2, 9, 9), (3, 2, 8, 7), (4, 2, 10, 9),
                                                        (3, 3, 10, 8), (2, 2, 6, 6)])
def test_strided_conv_gradients_equal_autodiff(kernel, stride, height, width):
  """strided_conv2d's hand-written VJP equals XLA autodiff of the strided conv: values, first-
  order gradients, and the R1-style second order (the weight gradient of an input gradient)."""
  key1, key2, key3 = jax.random.split(jax.random.PRNGKey(kernel * 10 + stride + height), 3)
  x = jax.random.normal(key1, (2, height, width, 3))
  w = jax.random.normal(key2, (kernel, kernel, 3, 4))
  ours = lambda x, w: upfirdn.strided_conv2d(x, w, stride)
  plain = lambda x, w: upfirdn.conv2d(x, w, stride=stride)
  np.testing.assert_allclose(ours(x, w), plain(x, w), rtol=1e-5, atol=1e-5)  # the same conv: 0 seen
  cotangent = jax.random.normal(key3, plain(x, w).shape)
  for order in (1, 2):
    def loss(f):
      first = lambda x, w: jnp.sum(jnp.tanh(f(x, w)) * cotangent)
      if order == 1:
        return first
      return lambda x, w: jnp.sum(jnp.square(jax.grad(first)(x, w)))  # R1: |d out / d x|^2
    # One compiled program per gradient: eager dispatch would compile every small op separately.
    expected = jax.jit(jax.grad(loss(plain), argnums=(0, 1)))(x, w)
    got = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(x, w)
    for a, b in zip(got, expected):
      # hand-written VJP vs autodiff, sums reordered: 1.8e-4 abs seen on values up to 713
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(b))))


def test_up_conv_equals_upsample_then_conv():
  """conv2d_resample(up=2) equals zero insertion, all padding, FIR, then a VALID conv."""
  key1, key2 = jax.random.split(jax.random.PRNGKey(1))
  x = jax.random.normal(key1, (1, 6, 6, 4))
  w = jax.random.normal(key2, (3, 3, 4, 5))
  f = upfirdn.setup_filter()
  fast = upfirdn.conv2d_resample(x, w, f, up=2, padding=1, flip_weight=True)
  # Total padding of the 6-tap combined kernel: upsample2d's (2, 1) plus the conv's (1, 1).
  up = upfirdn.upfirdn2d(x, f, up=2, padding=(3, 2), gain=4)
  slow = upfirdn.conv2d(up, w)
  np.testing.assert_allclose(fast, slow, rtol=1e-4, atol=1e-4)  # fused 6-tap kernel: 3.8e-6 seen
