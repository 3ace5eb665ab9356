"""Which training photo each image looks like: mode coverage of the embedded model.

The embedded model's crops come from three photos (`generators.data.SOURCES`) drawn with equal
odds, so a model that covers its data draws each about a third of the time. SWD over all three
barely notices a model that does not: a seed-1 run scored 40.0 where its seed-0 twin (the model
shipped before the current one) scored 41.1, yet drew gravel in 66% of its samples and brick in
15% (seed 0: 35% and 28%), 40% of its samples look like none of the photos (seed 0: 4.5%), and
it redrew held-out brick crops at 21.2-24.4 dB where seed 0 gets 26.9-32.4. So the benchmark
classifies the samples by photo and reports the shares and an SWD per photo.

The classifier is a Gaussian one with a shared covariance (linear discriminant analysis) on
rotation-invariant texture features: the grey level's mean and standard deviation and the log
power spectrum in `SPECTRUM_BINS` radial bands. The three textures differ at every scale (brick:
flat faces and mortar lines, grass: fine blades, gravel: pebbles), so this simple one is enough:
fitted on 1000 training crops with defects, it labels held-out crops with defects correctly
99.3% of the time; the benchmark measures and reports that accuracy with every use. A sample
that looks like none of the photos still gets the nearest one, so the benchmark also counts the
samples farther from every photo's mean (`distances`) than 99% of held-out crops are from
theirs: early in training, or for a model that draws mush, that is most of them and the shares
say little.

    clf = photo_coverage.fit(train_images, train_sources)   # [N, H, W, >=3] in [-1, 1], [N]
    photo = photo_coverage.predict(clf, fakes)               # [M] int, index into data.SOURCES
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

SPECTRUM_BINS = 10  # log-spaced radial frequency bands, from 1 cycle per crop to the corner
COVARIANCE_RIDGE = 1e-3  # added to the standardised features' covariance before inverting it


class PhotoClassifier(NamedTuple):
  """A linear discriminant on standardised texture features (F = 2 + SPECTRUM_BINS)."""
  feature_mean: np.ndarray  # [F] of the training features
  feature_std: np.ndarray   # [F]
  class_means: np.ndarray   # [K, F] standardised, one row per photo
  precision: np.ndarray     # [F, F] inverse of the pooled within-class covariance


def texture_features(images: np.ndarray) -> np.ndarray:
  """float64 [N, 2 + SPECTRUM_BINS]: mean and std of the grey level (mean of RGB) and the log of
  its mean power in each radial frequency band; unchanged by flips and 90-degree rotations.

  Args:
    images: [N, H, W, C >= 3] in [-1, 1] (a mask channel, if any, is ignored).
  """
  images = np.asarray(images, np.float64)
  if images.ndim != 4 or images.shape[-1] < 3:
    raise ValueError(f"expected [N, H, W, C >= 3] images, got shape {images.shape}")
  grey = images[..., :3].mean(-1)
  _, h, w = grey.shape
  mean, std = grey.mean((1, 2)), grey.std((1, 2))
  power = np.abs(np.fft.fft2(grey - mean[:, None, None])) ** 2
  radius = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :])
  edges = np.geomspace(1 / max(h, w), radius.max() * (1 + 1e-9), SPECTRUM_BINS + 1)
  bands = np.stack([power[:, (radius >= lo) & (radius < hi)].mean(1)
                    for lo, hi in zip(edges[:-1], edges[1:])], 1)
  return np.concatenate([mean[:, None], std[:, None], np.log(bands + 1e-12)], 1)


def fit(images: np.ndarray, sources: np.ndarray, num_photos: int | None = None) -> PhotoClassifier:
  """Fits the classifier to labelled crops: images [N, H, W, C >= 3] in [-1, 1], sources [N]
  int in [0, num_photos) (default: max + 1); every photo needs at least two crops."""
  sources = np.asarray(sources)
  num_photos = int(sources.max()) + 1 if num_photos is None else num_photos
  counts = np.bincount(sources, minlength=num_photos)
  if len(counts) != num_photos or counts.min() < 2:
    raise ValueError(f"every photo needs at least 2 training crops; got counts {counts.tolist()} "
                     f"for {num_photos} photos")
  features = texture_features(images)
  feature_mean, feature_std = features.mean(0), features.std(0) + 1e-12
  z = (features - feature_mean) / feature_std
  class_means = np.stack([z[sources == k].mean(0) for k in range(num_photos)])
  within = z - class_means[sources]
  covariance = within.T @ within / (len(z) - num_photos)
  precision = np.linalg.inv(covariance + COVARIANCE_RIDGE * np.eye(len(covariance)))
  return PhotoClassifier(feature_mean, feature_std, class_means, precision)


def distances(classifier: PhotoClassifier, images: np.ndarray) -> np.ndarray:
  """float [N, K]: squared Mahalanobis distance of each image's features to each photo's mean."""
  z = (texture_features(images) - classifier.feature_mean) / classifier.feature_std
  offsets = z[:, None, :] - classifier.class_means[None]  # [N, K, F]
  return np.einsum("nkf,fg,nkg->nk", offsets, classifier.precision, offsets)


def predict(classifier: PhotoClassifier, images: np.ndarray) -> np.ndarray:
  """int [N]: the photo whose class mean is nearest in Mahalanobis distance."""
  return distances(classifier, images).argmin(1)
