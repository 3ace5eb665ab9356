"""The photo classifier behind the benchmark's mode-coverage report (photo_coverage.py)."""

import numpy as np
import pytest
from PIL import Image

from benchmarks import embedded_model, photo_coverage
from generators import data

SIZE = data.CROP_SIZE  # 32 px crops hold too little texture: 95% right instead of 99%


def _labelled_crops(num: int, region: str, seed: int, defect_fraction: float = 0.5):
  """Crops in [-1, 1] with their photo indices, `defect_fraction` of them with a defect."""
  crops, photos = embedded_model._crops(num, SIZE, region, seed=seed, rotations="quarter")
  return embedded_model._real(crops, defect_fraction, seed=seed), photos


@pytest.fixture(scope="module")
def classifier_and_heldout():
  training, training_photos = _labelled_crops(450, "train", seed=2)
  classifier = photo_coverage.fit(training, training_photos, len(data.SOURCES))
  return classifier, (training, training_photos), _labelled_crops(450, "heldout", seed=1)


def test_classifier_names_the_photo_of_held_out_crops(classifier_and_heldout):
  classifier, _, (heldout, photos) = classifier_and_heldout
  predicted = photo_coverage.predict(classifier, heldout)
  assert np.mean(predicted == photos) >= 0.97
  for index in range(len(data.SOURCES)):  # no photo is the classifier's blind spot
    assert np.mean(predicted[photos == index] == index) >= 0.95


def test_features_ignore_flips_and_quarter_turns():
  crops = data.to_model_range(data.heldout_crops(SIZE)[::7])
  features = photo_coverage.texture_features(crops)
  for op in range(1, data.NUM_OPS):
    np.testing.assert_allclose(photo_coverage.texture_features(data.dihedral(crops, op)),
                               features, rtol=1e-9, atol=1e-9)


def test_noise_is_unlike_any_photo(classifier_and_heldout, tmp_path):
  """Samples that look like none of the photos still get a nearest one, but are counted."""
  _, (training, training_photos), (heldout, heldout_photos) = classifier_and_heldout
  noise = np.random.default_rng(0).uniform(-1, 1, (60, SIZE, SIZE, 4)).astype(np.float32)
  report = embedded_model._photo_coverage(noise, training, training_photos, heldout,
                                          heldout_photos, tmp_path / "photos.png")
  assert report["unlike_any_photo"] == 1.0
  assert sum(p["share"] for p in report["photos"].values()) == pytest.approx(1.0)


def test_fit_refuses_a_photo_without_crops():
  crops = np.zeros((4, SIZE, SIZE, 3), np.float32)
  with pytest.raises(ValueError, match="at least 2 training crops"):
    photo_coverage.fit(crops, np.array([0, 0, 2, 2]), num_photos=3)


def test_coverage_report_shows_a_dropped_photo(classifier_and_heldout, tmp_path):
  """Samples that are real crops of brick and gravel only: grass gets no share and no SWD, the
  other two split the samples and score near their real-vs-real floor."""
  _, (training, training_photos), (heldout, heldout_photos) = classifier_and_heldout
  crops, photos = _labelled_crops(450, "heldout", seed=5, defect_fraction=0.0)
  kept = photos != data.SOURCES.index("grass")
  report = embedded_model._photo_coverage(crops[kept], training, training_photos, heldout,
                                          heldout_photos, tmp_path / "photos.png")
  shares = {name: p["share"] for name, p in report["photos"].items()}
  assert shares["grass"] <= 0.02 and "G_ema" not in report["photos"]["grass"]
  assert abs(shares["brick"] - 0.5) < 0.1 and abs(shares["gravel"] - 0.5) < 0.1
  for name in ("brick", "gravel"):
    photo = report["photos"][name]
    # real crops score near the floor; the shipped model scores 2.5-3.0 times it
    assert photo["G_ema"]["SWDx1e3_avg"] < 1.4 * photo["floor"]["SWDx1e3_avg"]
  assert report["classifier_accuracy"] >= 0.97
  assert report["unlike_any_photo"] <= 0.05  # real crops are in the classifier's domain
  rows = 2 * len(data.SOURCES)  # per photo: held-out crops, then its samples
  assert Image.open(tmp_path / "photos.png").size == (
      embedded_model.GRID_COLUMNS * SIZE, rows * SIZE)
