"""FFHQ face alignment: exact geometry on known squares, rotation equivariance, the load hook."""

import numpy as np
import pytest
from PIL import Image

from inversion import align, images

SIZE = 64


def face_landmarks(centre, half, angle_deg=0.0):
  """68 landmarks whose FFHQ square has this centre (x, y), half side and rotation.

  Eyes 2 * 8 = 16 px apart per 32 px of half side, mouth 16 px below the eyes: the eye term
  2 |eye_to_eye| sets the size (1.8 |eye_to_mouth| is smaller), and the x axis is exact.
  """
  scale = half / 32.0
  eye_to_eye, eye_to_mouth = 16.0 * scale, 16.0 * scale
  local = np.zeros((68, 2))  # in the face frame: x right, y down, origin at the square centre
  eye_y = -align.CENTRE_TOWARD_MOUTH * eye_to_mouth
  local[align.EYE_LEFT] = (-eye_to_eye / 2, eye_y)
  local[align.EYE_RIGHT] = (eye_to_eye / 2, eye_y)
  local[align.MOUTH_LEFT] = (-4 * scale, eye_y + eye_to_mouth)
  local[align.MOUTH_RIGHT] = (4 * scale, eye_y + eye_to_mouth)
  a = np.deg2rad(angle_deg)
  rotation = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
  return local @ rotation.T + np.asarray(centre)


def test_square_geometry():
  corners, side = align.face_square(face_landmarks((40.0, 30.0), 20.0, angle_deg=90))
  assert side == pytest.approx(40.0)
  # Rotated by 90 degrees: the upper-left corner sits at centre + (+half, -half).
  np.testing.assert_allclose(corners[0], (60.0, 10.0), atol=1e-9)
  np.testing.assert_allclose(corners.mean(0), (40.0, 30.0), atol=1e-9)


def test_a_square_covering_the_image_is_the_identity():
  rng = np.random.default_rng(0)
  image = rng.uniform(50, 200, (SIZE, SIZE, 3)).astype(np.float32)  # black would show
  lm = face_landmarks(((SIZE - 1) / 2, (SIZE - 1) / 2), SIZE / 2)  # edges at -0.5 and 63.5
  out = align.align_face(image, lm, SIZE, transform_size=SIZE, padding=False)
  np.testing.assert_allclose(out, image, atol=1e-3)
  # With padding the border band is softened; the middle is untouched and nothing is black.
  padded = align.align_face(image, lm, SIZE, transform_size=SIZE)
  np.testing.assert_allclose(padded[16:48, 16:48], image[16:48, 16:48], atol=1e-3)
  assert padded.min() > 49.0 and np.abs(padded[:4] - image[:4]).max() > 1.0


def test_aligning_a_rotated_photo_gives_the_same_face():
  rng = np.random.default_rng(1)
  photo = rng.uniform(0, 255, (128, 128, 3)).astype(np.float32)
  lm = face_landmarks((60.0, 66.0), 28.0, angle_deg=25)
  reference = align.align_face(photo, lm, 32, transform_size=64)
  # The same photo turned by 90 degrees (np.rot90: pixel (x, y) -> (y, W - 1 - x)).
  turned_lm = np.stack([lm[:, 1], photo.shape[1] - 1 - lm[:, 0]], axis=1)
  turned = align.align_face(np.rot90(photo).copy(), turned_lm, 32, transform_size=64)
  np.testing.assert_allclose(turned, reference, atol=1e-3)
  # A 25-degree face is not the axis-aligned crop: alignment did rotate it.
  upright = align.align_face(photo, face_landmarks((60.0, 66.0), 28.0), 32, transform_size=64)
  assert np.abs(upright - reference).mean() > 10


def test_shrink_and_far_outside_squares_still_give_the_output_size():
  photo = np.full((300, 200, 3), 100.0, np.float32)
  out = align.align_face(photo, face_landmarks((20.0, 280.0), 90.0, angle_deg=10), 32)
  assert out.shape == (32, 32, 3) and np.isfinite(out).all()
  np.testing.assert_allclose(out, 100.0, atol=1e-2)  # padding of a flat photo stays flat


def test_bad_landmarks_are_clear_errors():
  with pytest.raises(ValueError, match=r"\[68, 2\]"):
    align.face_square(np.zeros((5, 2)))
  with pytest.raises(ValueError, match="degenerate"):
    align.face_square(np.zeros((68, 2)))


def test_load_hook_and_cli_spec(tmp_path, monkeypatch):
  ramp = np.arange(SIZE, dtype=np.uint8) * 3  # linear: bilinear supersampling is exact on it
  pixels = np.stack([ramp[:, None] + 0 * ramp[None, :], ramp[None, :] + 0 * ramp[:, None],
                     np.full((SIZE, SIZE), 90, np.uint8)], axis=-1)
  path = tmp_path / "face.png"
  Image.fromarray(pixels).save(path)
  lm = face_landmarks(((SIZE - 1) / 2, (SIZE - 1) / 2), SIZE / 2)
  seen = []

  def detector(image):
    seen.append(image.shape)
    return lm

  aligned = images.load_image(str(path), 32, 3, align=align.FaceAligner(detector, SIZE))
  plain = images.load_image(str(path), 32, 3)
  assert seen == [(SIZE, SIZE, 3)]
  # Same pixels in the middle (the identity square); the soft border differs only at the edge.
  np.testing.assert_allclose(aligned[8:24, 8:24], plain[8:24, 8:24], atol=1e-4)

  with pytest.raises(images.ImageError, match="face.png: the landmark detector found no face"):
    images.load_image(str(path), 32, 3, align=align.FaceAligner(lambda im: None))
  with pytest.raises(ValueError, match="align and mask"):
    images.load_image(str(path), 32, 4, mask=np.zeros((SIZE, SIZE)),
                      align=align.FaceAligner(detector))

  (tmp_path / "my_detector.py").write_text("def landmarks(image):\n  return None\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  assert align.aligner_from_spec("my_detector:landmarks", 256).output_size == 256
  with pytest.raises(ValueError, match="cannot import"):
    align.aligner_from_spec("my_detector:nothing")
  with pytest.raises(ValueError, match="MODULE:FUNCTION|my_module:detect_landmarks"):
    align.aligner_from_spec("no_colon")
