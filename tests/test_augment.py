"""ADA augmentations: identity at p = 0, mask-preserving geometry, gradients, the p update."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from generators import augment


@pytest.fixture(scope="module")
def images():
  rng = np.random.default_rng(0)
  rgb = rng.uniform(-1, 1, (8, 16, 16, 3))
  mask = np.where(rng.uniform(size=(8, 16, 16, 1)) < 0.1, 1.0, -1.0)
  return jnp.asarray(np.concatenate([rgb, mask], -1), jnp.float32)


augment_jit = jax.jit(augment.augment)


def test_p_zero_is_the_identity(images):
  np.testing.assert_array_equal(augment_jit(images, jax.random.PRNGKey(0), 0.0), images)


def test_p_one_moves_pixels_and_mask_together_and_changes_colour(images):
  out = np.asarray(augment_jit(images, jax.random.PRNGKey(1), 1.0))
  # Flips, rotations and wrap-around shifts permute pixels: each mask keeps its defect count.
  np.testing.assert_array_equal(np.sum(out[..., 3] > 0, axis=(1, 2)),
                                np.sum(np.asarray(images)[..., 3] > 0, axis=(1, 2)))
  assert set(np.unique(out[..., 3])) <= {-1.0, 1.0}
  assert not np.allclose(out[..., :3], images[..., :3])
  # Different images get different draws.
  assert not np.allclose(out[0] - images[0], out[1] - images[1])


def test_colour_ops_alone_keep_every_pixel_in_place(images):
  out = np.asarray(augment.augment(images, jax.random.PRNGKey(1), 1.0, "brightness,contrast"))
  np.testing.assert_array_equal(out[..., 3], images[..., 3])  # no flip, rotation or shift
  # Each image's colour is an affine map of its own pixels: brightness and contrast only.
  for before, after in zip(np.asarray(images[..., :3]), out[..., :3]):
    slope, offset = np.polyfit(before.ravel(), after.ravel(), 1)
    np.testing.assert_allclose(after, slope * before + offset, atol=1e-5)
    assert not np.isclose(slope, 1.0) or not np.isclose(offset, 0.0)
  # Shifts alone move pixels without changing any value: each image keeps its sorted values.
  shifted = np.asarray(augment.augment(images, jax.random.PRNGKey(1), 1.0, ["xint"]))
  np.testing.assert_array_equal(np.sort(shifted.reshape(8, -1, 4), 1),
                                np.sort(np.asarray(images).reshape(8, -1, 4), 1))
  assert not np.array_equal(shifted, images)
  with pytest.raises(ValueError, match="rotate90"):
    augment.parse_ops("xflip,rotate")


def test_gradients_flow_through_the_augmentations(images):
  weights = jax.random.normal(jax.random.PRNGKey(2), images.shape)
  grad = jax.jit(jax.grad(lambda x: jnp.sum(augment.augment(x, jax.random.PRNGKey(3), 1.0)
                                            * weights)))(images)
  assert np.all(np.isfinite(grad)) and float(jnp.sum(jnp.abs(grad[..., :3]))) > 0


def test_adjust_p_follows_the_sign_of_real_logits():
  per_unit = augment.ada_images_per_unit(0.1)  # 100 images
  overconfident = jnp.ones((4,))
  assert float(augment.adjust_p(jnp.float32(0.5), overconfident, 0.6, per_unit)) == \
      pytest.approx(0.54)
  unsure = jnp.array([1.0, -1.0, -1.0, 1.0])
  assert float(augment.adjust_p(jnp.float32(0.5), unsure, 0.6, per_unit)) == pytest.approx(0.46)
  assert float(augment.adjust_p(jnp.float32(0.01), unsure, 0.6, per_unit)) == 0.0
  with pytest.raises(ValueError, match="ada_kimg"):
    augment.ada_images_per_unit(0.0)
