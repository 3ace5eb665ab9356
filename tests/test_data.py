"""Tests of the training data: crop bank, held-out split, defects, MVTec AD loader."""

import logging
import os

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from generators import data, defects, mvtec
from inversion import demo

EXAMPLES = str(demo.EXAMPLES_DIR)


# ----------------------------------------------------------------------------------------------
# Crop bank and held-out split.


def test_crop_bank_is_deterministic_in_the_seed():
  a = data.crop_bank(300, seed=7)
  b = data.crop_bank(300, seed=np.random.default_rng(7))
  c = data.crop_bank(300, seed=8)
  np.testing.assert_array_equal(a, b)
  assert (a != c).any()


def test_crop_bank_shapes_dtypes_and_grey_channels():
  bank = data.crop_bank(64, size=32, seed=0)
  assert bank.shape == (64, 32, 32, 3) and bank.dtype == np.uint8
  np.testing.assert_array_equal(bank[..., 0], bank[..., 1])  # grayscale photos: R = G = B
  np.testing.assert_array_equal(bank[..., 0], bank[..., 2])
  grey = data.crop_bank(64, size=32, seed=0, channels=1)
  np.testing.assert_array_equal(grey[..., 0], bank[..., 0])
  assert bank.std() > 10  # real texture, not a constant


def test_crops_come_from_their_coordinates_with_the_dihedral_transform():
  crops, coords = data.crop_bank(200, seed=1, return_coords=True)
  assert set(np.unique(coords.op)) == set(range(8))  # all flips/rotations used
  for i in range(0, 200, 7):
    src = data.load_source(data.SOURCES[coords.source[i]])
    window = src[coords.y[i]:coords.y[i] + 64, coords.x[i]:coords.x[i] + 64]
    op = coords.op[i]
    expected = np.rot90(window[:, ::-1] if op >= 4 else window, op % 4)
    np.testing.assert_array_equal(crops[i, ..., :1], expected)
  _, plain = data.crop_bank(50, seed=1, flips=False, rotations="none", return_coords=True)
  assert (plain.op == 0).all()
  _, upright = data.crop_bank(200, seed=1, rotations="half", return_coords=True)
  assert set(np.unique(upright.op)) == {0, 2, 4, 6}  # flips and half turns: axes stay put
  with pytest.raises(ValueError, match="quarter, half, none"):
    data.sample_coords(4, rotations="90")


def test_training_crops_never_touch_the_heldout_strip():
  _, coords = data.crop_bank(5000, size=64, seed=2, return_coords=True)
  for i, name in enumerate(data.SOURCES):
    train, held = data.regions(data.load_source(name).shape)
    assert train.x1 == held.x0 == 384 and held.x1 == 512  # documented: columns [384, 512)
    sel = coords.source == i
    assert sel.any()
    assert (coords.x[sel] >= train.x0).all() and (coords.x[sel] + 64 <= train.x1).all()
    assert (coords.y[sel] >= 0).all() and (coords.y[sel] + 64 <= train.y1).all()
    # The bank reaches the strip's edge (uniform positions), so the bound above is the real one.
    assert coords.x[sel].max() + 64 > train.x1 - 16


def test_heldout_crops_tile_the_strip_without_overlap():
  crops, coords = data.heldout_crops(return_coords=True)
  assert crops.shape == (48, 64, 64, 3) and crops.dtype == np.uint8
  np.testing.assert_array_equal(crops, data.heldout_crops())  # deterministic
  for i, name in enumerate(data.SOURCES):
    _, held = data.regions(data.load_source(name).shape)
    sel = coords.source == i
    assert sel.sum() == 16 and (coords.x[sel] >= held.x0).all() and (coords.op == 0).all()
    cover = np.zeros(data.load_source(name).shape[:2], np.int32)
    for y, x in zip(coords.y[sel], coords.x[sel]):
      cover[y:y + 64, x:x + 64] += 1
    assert cover.max() == 1 and cover[:, held.x0:].all() and not cover[:, :held.x0].any()


def test_example_pngs_are_heldout_crops():
  crops, coords = data.heldout_crops(return_coords=True)
  files = sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".png"))
  assert 4 <= len(files) <= 6
  for f in files:
    name, y, x = f[:-4].split("_")
    idx = [i for i in range(len(crops)) if data.SOURCES[coords.source[i]] == name
           and coords.y[i] == int(y[1:]) and coords.x[i] == int(x[1:])]
    assert len(idx) == 1, f
    with Image.open(os.path.join(EXAMPLES, f)) as im:
      np.testing.assert_array_equal(np.asarray(im), crops[idx[0]])


def test_model_range_conversion():
  u = np.arange(256, dtype=np.uint8)
  x = data.to_model_range(u)
  assert x.dtype == np.float32 and x[0] == -1 and x[-1] == 1
  np.testing.assert_array_equal(data.to_uint8(x), u)
  np.testing.assert_array_equal(data.to_uint8(np.array([-3.0, 0.0, 7.0])), [0, 128, 255])
  with pytest.raises(ValueError, match="uint8"):
    data.to_model_range(x)


def test_unknown_source_is_a_clear_error():
  with pytest.raises(ValueError, match="brick"):
    data.crop_bank(4, sources=("moon",))


# ----------------------------------------------------------------------------------------------
# Defects.

# Largest distance (px) from the mask at which a pixel may change: the soft edges (module doc).
_EDGE = {"scratch": 2, "crack": 2, "hole": 0, "stain": 4}


@pytest.mark.parametrize("kind", defects.KINDS)
def test_defect_masks_are_non_empty_and_the_image_changes_only_near_them(kind):
  crops = data.heldout_crops()
  rng = np.random.default_rng(0)
  for i in range(0, 48, 2):
    image, mask = defects.add_defect(crops[i], kind, rng)
    assert image.shape == crops[i].shape and image.dtype == np.uint8
    assert mask.shape == (64, 64) and mask.dtype == bool and mask.any()
    changed = (image != crops[i]).any(-1)
    assert changed[mask].mean() > 0.5, "the defect must be visible inside its mask"
    dist = ndimage.distance_transform_edt(~mask)
    assert dist[changed].max(initial=0) <= _EDGE[kind] + 1e-6


def test_add_defect_is_deterministic_and_checks_its_arguments():
  crop = data.heldout_crops()[0]
  a = defects.add_defect(crop, "crack", 5)
  b = defects.add_defect(crop, "crack", np.random.default_rng(5))
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  with pytest.raises(ValueError, match="scratch"):
    defects.add_defect(crop, "dent", 0)
  with pytest.raises(ValueError, match="uint8"):
    defects.add_defect(crop.astype(np.float32), "hole", 0)


def test_defect_dataset_mask_channel():
  ds = defects.defect_dataset(40, size=32, defect_fraction=0.25, seed=3)
  assert ds.images.shape == (40, 32, 32, 4) and ds.images.dtype == np.uint8
  assert (ds.kinds >= 0).sum() == 10  # exactly round(fraction * n) defective
  mask = ds.images[..., 3]
  assert set(np.unique(mask)) <= {0, 255}
  assert not mask[ds.kinds < 0].any()                        # good crops: all-zero mask
  assert mask[ds.kinds >= 0].reshape(10, -1).any(1).all()    # defective: non-empty mask
  x = data.to_model_range(ds.images)
  assert set(np.unique(x[..., 3])) == {-1.0, 1.0}            # {0, 1} -> {-1, +1}
  np.testing.assert_array_equal(defects.model_to_mask(x[..., 3]), mask > 0)
  np.testing.assert_array_equal(defects.mask_to_model(mask > 0), x[..., 3])
  again = defects.defect_dataset(40, size=32, defect_fraction=0.25, seed=3)
  np.testing.assert_array_equal(again.images, ds.images)
  # The RGB of a good crop is the plain crop bank's crop (same positions for the same seed).
  coords = data.sample_coords(40, 32, np.random.default_rng(3))
  good = np.flatnonzero(ds.kinds < 0)
  np.testing.assert_array_equal(ds.images[good, ..., :3], data.cut(coords, 32)[good])


def test_with_defects_on_heldout_crops():
  ds = defects.with_defects(data.heldout_crops()[:8], defect_fraction=1.0, kinds=("hole",), seed=0)
  assert (ds.kinds == defects.KINDS.index("hole")).all()
  with pytest.raises(ValueError, match="defect_fraction"):
    defects.with_defects(data.heldout_crops()[:2], defect_fraction=1.5)


# ----------------------------------------------------------------------------------------------
# MVTec AD loader on a tiny tree.


def _png(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


@pytest.fixture
def mvtec_root(tmp_path):
  rng = np.random.default_rng(0)
  root = tmp_path / "mvtec_ad"
  for i in range(3):
    _png(f"{root}/carpet/train/good/{i:03d}.png", rng.integers(0, 256, (32, 32, 3), np.uint8))
  _png(f"{root}/carpet/test/good/000.png", np.full((32, 32, 3), 200, np.uint8))
  _png(f"{root}/carpet/test/hole/000.png", np.full((32, 32, 3), 50, np.uint8))
  mask = np.zeros((32, 32), np.uint8)
  mask[8:16, 0:8] = 255  # fully covers output pixels (1..3, 0..1) at 8x8
  _png(f"{root}/carpet/ground_truth/hole/000_mask.png", mask)
  _png(f"{root}/grid/train/good/000.png", np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1)))
  return str(root)


def test_mvtec_loader_format(mvtec_root, caplog):
  caplog.set_level(logging.INFO, logger="generators.mvtec")
  train = mvtec.load_mvtec(mvtec_root, "carpet", "train", resolution=8)
  assert train.images.shape == (3, 8, 8, 4) and train.images.dtype == np.uint8
  assert train.names == ["good/000", "good/001", "good/002"] and not train.images[..., 3].any()
  assert "32x32 images to 8x8 by area averaging" in caplog.text
  test = mvtec.load_mvtec(mvtec_root, "carpet", "test", resolution=8)
  assert test.defects == ["good", "hole"]
  assert not test.images[0, ..., 3].any() and (test.images[0, ..., :3] == 200).all()
  expected = np.zeros((8, 8), np.uint8)
  expected[2:4, 0:2] = 255
  np.testing.assert_array_equal(test.images[1, ..., 3], expected)
  assert mvtec.list_categories(mvtec_root) == ["carpet", "grid"]


def test_mvtec_area_resize_and_grey_category(mvtec_root):
  grid = mvtec.load_mvtec(mvtec_root, "grid", resolution=8).images[0]
  ramp = np.arange(32) * 8.0
  np.testing.assert_allclose(grid[0, :, 0], ramp.reshape(8, 4).mean(1), atol=0.5)  # box average
  np.testing.assert_array_equal(grid[..., 0], grid[..., 2])  # grey -> R = G = B


def test_mvtec_tiny_defect_keeps_a_mask_pixel(mvtec_root):
  mask = np.zeros((32, 32), np.uint8)
  mask[5, 9] = 255  # 1/16 of an output pixel at 8x8: below MASK_COVERAGE
  _png(f"{mvtec_root}/carpet/ground_truth/hole/000_mask.png", mask)
  img = mvtec.load_mvtec(mvtec_root, "carpet", "test", 8, defects=["hole"]).images[0]
  assert (img[..., 3] > 0).sum() == 1 and img[1, 2, 3] == 255


def test_mvtec_errors(mvtec_root, tmp_path):
  with pytest.raises(FileNotFoundError, match="not a directory"):
    mvtec.load_mvtec(str(tmp_path / "nope"), "carpet")
  with pytest.raises(FileNotFoundError, match="categories found there: carpet, grid"):
    mvtec.load_mvtec(mvtec_root, "bottle")
  with pytest.raises(FileNotFoundError, match="single category folder"):
    mvtec.load_mvtec(os.path.join(mvtec_root, "carpet"), "carpet")
  with pytest.raises(ValueError, match="split"):
    mvtec.load_mvtec(mvtec_root, "carpet", "val")
  with pytest.raises(ValueError, match="available"):
    mvtec.load_mvtec(mvtec_root, "carpet", "test", defects=["crack"])
  os.remove(f"{mvtec_root}/carpet/ground_truth/hole/000_mask.png")
  with pytest.raises(FileNotFoundError, match="missing MVTec AD mask .*000_mask.png"):
    mvtec.load_mvtec(mvtec_root, "carpet", "test")
  _png(f"{mvtec_root}/carpet/ground_truth/hole/000_mask.png", np.zeros((16, 16), np.uint8))
  with pytest.raises(mvtec.MVTecError, match="16x16 but its image"):
    mvtec.load_mvtec(mvtec_root, "carpet", "test")
  bad = f"{mvtec_root}/carpet/train/good/001.png"
  with open(bad, "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\nnot really")
  with pytest.raises(mvtec.MVTecError, match="001.png.*corrupt"):
    mvtec.load_mvtec(mvtec_root, "carpet")
  open(bad, "wb").close()
  with pytest.raises(mvtec.MVTecError, match="001.png.*empty"):
    mvtec.load_mvtec(mvtec_root, "carpet")


def test_heldout_random_crops_stay_in_the_heldout_strip():
  coords = data.sample_coords(500, size=64, seed=3, region="heldout")
  for i, name in enumerate(data.SOURCES):
    _, held = data.regions(data.load_source(name).shape)
    sel = coords.source == i
    assert sel.any()
    assert (coords.x[sel] >= held.x0).all() and (coords.x[sel] + 64 <= held.x1).all()
  with pytest.raises(ValueError, match="region"):
    data.sample_coords(2, region="test")
