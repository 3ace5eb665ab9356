"""Tests of reading user images (every PIL mode, crop + area resize, errors) and writing results."""

import io
import logging
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from generators import data
from inversion import images
from inversion.images import ImageError

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)  # square, so no crop/resize by default


def model(u8):
  """uint8 -> [-1, 1] reference (the training data's mapping)."""
  return data.to_model_range(np.asarray(u8, np.uint8))


@pytest.fixture(autouse=True)
def _fresh_log_once():
  images.reset_log_once()
  yield
  images.reset_log_once()


def _read(path):
  """(pixels, mode) of a written file, closing it."""
  with Image.open(path) as im:
    return np.asarray(im), im.mode


def _save(path, im, **kw):
  im.save(path, **kw)
  return str(path)


# ----------------------------------------------------------------------------------------------
# Modes and formats.


def test_rgb_formats(tmp_path):
  ref = model(RGB)
  for ext, kw in [("png", {}), ("tif", {}), ("webp", {"lossless": True}), ("bmp", {})]:
    x = images.load_image(_save(tmp_path / f"a.{ext}", Image.fromarray(RGB), **kw), 16, 3)
    assert x.shape == (16, 16, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x, ref, atol=1e-6, err_msg=ext)
  smooth = np.repeat(np.repeat(RGB[:4, :4], 4, 0), 4, 1)  # JPEG is lossy: a smooth image
  x = images.load_image(_save(tmp_path / "a.jpg", Image.fromarray(smooth), quality=98,
                                        subsampling=0), 16, 3)
  assert np.abs(x - model(smooth)).mean() < 0.05


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_every_mode_gives_the_right_shape_and_range(tmp_path, channels):
  rgb = Image.fromarray(RGB)
  made = {
      "L": rgb.convert("L"), "LA": rgb.convert("LA"), "RGB": rgb, "RGBA": rgb.convert("RGBA"),
      "P": rgb.convert("P"), "CMYK": rgb.convert("CMYK"), "1": rgb.convert("1"),
      "I;16": Image.fromarray(RGB[..., 0].astype(np.uint16) * 257),
      "I": Image.fromarray(RGB[..., 0].astype(np.int32) * 257),
      "F": Image.fromarray(RGB[..., 0].astype(np.float32) / 255),
  }
  for mode, im in made.items():
    ext = "tif" if mode in ("CMYK", "I", "F") else "png"
    path = _save(tmp_path / f"{mode.replace(';', '')}.{ext}", im)
    assert _read(path)[1] == mode
    x = images.load_image(path, 8, channels)  # 16 -> 8: area resize too
    assert x.shape == (8, 8, channels) and x.dtype == np.float32, mode
    assert -1 <= x.min() and x.max() <= 1 and x[..., :3].std() > 0.05, mode
    if channels == 4:
      assert (x[..., 3] == -1).all(), mode  # no mask given: "no defect"


def test_rgba_and_la_composite_on_black(tmp_path):
  alpha = np.full((16, 16, 1), 255, np.uint8)
  opaque = _save(tmp_path / "opaque.png", Image.fromarray(np.concatenate([RGB, alpha], -1)))
  np.testing.assert_array_equal(images.load_image(opaque, 16, 3), model(RGB))  # alpha 255 = RGB
  alpha[:8] = 0
  alpha[8:, :8] = 128
  part = _save(tmp_path / "part.png", Image.fromarray(np.concatenate([RGB, alpha], -1)))
  x = images.load_image(part, 16, 3)
  assert (x[:8] == -1).all()                                         # transparent -> black
  np.testing.assert_allclose(x[8:, :8], model(np.rint(RGB[8:, :8] * (128 / 255))), atol=1 / 127)
  np.testing.assert_array_equal(x[8:, 8:], model(RGB[8:, 8:]))
  grey = RGB[..., 0]
  la = _save(tmp_path / "la.png", Image.fromarray(np.dstack([grey, np.full_like(grey, 255)]), "LA"))
  np.testing.assert_array_equal(images.load_image(la, 16, 1)[..., 0], model(grey))


def test_grey_rgb_and_palette_conversions(tmp_path):
  grey = RGB[..., 0]
  x = images.load_image(_save(tmp_path / "l.png", Image.fromarray(grey)), 16, 3)
  for c in range(3):
    np.testing.assert_array_equal(x[..., c], model(grey))            # grey -> R = G = B
  y = images.load_image(_save(tmp_path / "rgb.png", Image.fromarray(RGB)), 16, 1)
  luma = RGB.astype(np.float32) @ np.float32([0.299, 0.587, 0.114])
  np.testing.assert_allclose(y[..., 0], luma / 127.5 - 1, atol=1e-5)  # RGB -> BT.601 luma
  pal = Image.fromarray(RGB).convert("P")
  p = images.load_image(_save(tmp_path / "p.png", pal), 16, 3)
  np.testing.assert_array_equal(p, model(np.asarray(pal.convert("RGB"))))  # palette expanded
  pal.info["transparency"] = int(np.asarray(pal)[0, 0])
  pt = images.load_image(_save(tmp_path / "pt.png", pal, transparency=pal.info["transparency"]),
                         16, 3)
  assert (pt[0, 0] == -1).all()                                      # transparent index -> black
  cmyk = Image.fromarray(RGB).convert("CMYK")
  c = images.load_image(_save(tmp_path / "c.tif", cmyk), 16, 3)
  np.testing.assert_array_equal(c, model(np.asarray(cmyk.convert("RGB"))))


def test_high_bit_depth_and_bilevel_scaling(tmp_path):
  v16 = np.array([[0, 32768], [65535, 65535]], np.uint16)
  x = images.load_image(_save(tmp_path / "i16.png", Image.fromarray(v16)), 2, 1)[..., 0]
  np.testing.assert_allclose(x, [[-1, 32768 / 65535 * 2 - 1], [1, 1]], atol=1e-6)  # 65535 -> +1
  xi = images.load_image(_save(tmp_path / "i.tif", Image.fromarray(v16.astype(np.int32))), 2, 1)
  np.testing.assert_allclose(xi[..., 0], x, atol=1e-6)                # I in [0, 65535]: 16-bit
  wide = np.array([[-100, 0], [100, 300]], np.int32)                  # not 16-bit: min-max
  xw = images.load_image(_save(tmp_path / "w.tif", Image.fromarray(wide)), 2, 1)[..., 0]
  np.testing.assert_allclose(xw, [[-1, -0.5], [0, 1]], atol=1e-6)
  f = np.array([[0, 0.25], [0.5, 1]], np.float32)
  xf = images.load_image(_save(tmp_path / "f.tif", Image.fromarray(f)), 2, 1)[..., 0]
  np.testing.assert_allclose(xf, f * 2 - 1, atol=1e-6)
  xf255 = images.load_image(_save(tmp_path / "f255.tif", Image.fromarray(f * 255)), 2, 1)
  np.testing.assert_allclose(xf255[..., 0], f * 2 - 1, atol=1e-6)
  nan = _save(tmp_path / "nan.tif", Image.fromarray(np.array([[0, np.nan]], np.float32)))
  with pytest.raises(ImageError, match="nan.tif.*NaN"):
    images.load_image(nan, 2, 1)
  bits = Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).convert("1")
  xb = images.load_image(_save(tmp_path / "b.png", bits), 2, 3)
  np.testing.assert_array_equal(xb[..., 0], [[-1, 1], [1, -1]])


# ----------------------------------------------------------------------------------------------
# Crop and resize.


def test_centre_crop_and_area_resize_on_a_known_pattern(tmp_path):
  # 96 wide x 64 high: 16-column red/blue bands either side of a 64x64 four-quadrant pattern.
  img = np.zeros((64, 96, 3), np.uint8)
  img[:, :16] = (255, 0, 0)
  img[:, 80:] = (0, 0, 255)
  for (r, c), v in zip([(0, 0), (0, 1), (1, 0), (1, 1)], [10, 60, 110, 160]):
    img[r * 32:(r + 1) * 32, 16 + c * 32:16 + (c + 1) * 32] = v
  path = _save(tmp_path / "pattern.png", Image.fromarray(img))
  x = images.load_image(path, 2, 3)  # bands cropped away, each quadrant averaged to one pixel
  np.testing.assert_allclose(x[..., 0], model([[10, 60], [110, 160]]), atol=1e-6)
  np.testing.assert_array_equal(x[..., 0], x[..., 2])
  y = images.load_image(path, 48, 3)  # non-integer factor 4/3: still exact on the quadrants
  np.testing.assert_allclose(y[:24, :24], model(10), atol=1e-6)
  np.testing.assert_allclose(y[24:, 24:], model(160), atol=1e-6)
  tall = np.zeros((9, 4), np.uint8)
  tall[2:6] = 200  # the centre 4x4 of a 9-high image starts at row (9 - 4) // 2 = 2
  z = images.load_image(_save(tmp_path / "tall.png", Image.fromarray(tall)), 4, 1)
  np.testing.assert_allclose(z, model(200), atol=1e-6)


def test_area_resize_matches_a_brute_force_reference():
  x = RNG.uniform(size=(6, 10, 2)).astype(np.float32)
  out = images.area_resize(x, 4, 4)
  # Upsample by repetition to a common grid (lcm), then take block means: exact area averages.
  up = np.repeat(np.repeat(x, 2, 0), 2, 1)                            # [12, 20]
  ref = up.reshape(4, 3, 4, 5, 2).mean((1, 3))
  np.testing.assert_allclose(out, ref, atol=1e-6)
  np.testing.assert_allclose(images.area_resize(x, 3, 5), x.reshape(3, 2, 5, 2, 2).mean((1, 3)),
                             atol=1e-6)


def test_small_images_are_upscaled_with_a_warning(tmp_path, caplog):
  path = _save(tmp_path / "tiny.png", Image.fromarray(RGB[:4, :4]))
  with caplog.at_level(logging.INFO, logger="inversion.images"):
    x = images.load_image(path, 8, 3)
  np.testing.assert_array_equal(x[::2, ::2], model(RGB[:4, :4]))  # box = pixel replication
  assert any(r.levelno == logging.WARNING and "upscaled" in r.message for r in caplog.records)


# ----------------------------------------------------------------------------------------------
# Mask channel and logging.


def test_mask_channel(tmp_path):
  img = _save(tmp_path / "img.png", Image.fromarray(RGB))
  mask = np.zeros((16, 16), np.uint8)
  mask[4:8, 8:12] = 255
  m = _save(tmp_path / "img_mask.png", Image.fromarray(mask))
  x = images.load_image(img, 4, 4, mask=m)
  expected = -np.ones((4, 4), np.float32)
  expected[1, 2] = 1
  np.testing.assert_array_equal(x[..., 3], expected)
  np.testing.assert_array_equal(images.load_image(img, 4, 4, mask=mask > 0), x)
  np.testing.assert_array_equal(x[..., :3], images.load_image(img, 4, 3))
  with pytest.raises(ImageError, match="image's size"):
    images.load_image(img, 4, 4, mask=np.zeros((3, 3), bool))
  with pytest.raises(ValueError, match="4-channel"):
    images.load_image(img, 4, 3, mask=m)


def test_each_conversion_is_logged_once(tmp_path, caplog):
  rgba = Image.fromarray(RGB).convert("RGBA")
  paths = [_save(tmp_path / f"{i}.png", rgba) for i in range(3)]
  with caplog.at_level(logging.INFO, logger="inversion.images"):
    for p in paths:
      images.load_image(p, 8, 4)
  text = [r.getMessage() for r in caplog.records]
  for needle in ["RGBA->RGB by compositing on black", "by area averaging", "mask channel with -1"]:
    assert sum(needle in t for t in text) == 1, (needle, text)
  assert "0.png" in next(t for t in text if "compositing" in t)  # names the first file


# ----------------------------------------------------------------------------------------------
# Many files, writing.


def test_load_images_from_folder_file_and_list(tmp_path, caplog):
  for name in ["b", "a", "c"]:
    _save(tmp_path / f"{name}.png", Image.fromarray(RGB))
  (tmp_path / "notes.txt").write_text("not an image")
  (tmp_path / "sub").mkdir()
  with caplog.at_level(logging.INFO, logger="inversion.images"):
    x, names = images.load_images(tmp_path, 8, 3)
  assert x.shape == (3, 8, 8, 3) and names == ["a", "b", "c"]
  assert "notes.txt" in caplog.text and "sub" in caplog.text
  y, n1 = images.load_images(str(tmp_path / "a.png"), 8, 1)
  assert y.shape == (1, 8, 8, 1) and n1 == ["a"]
  (tmp_path / "sub" / "a.jpg").write_bytes((tmp_path / "a.png").read_bytes())  # PNG bytes
  _, n2 = images.load_images([tmp_path / "a.png", tmp_path / "sub" / "a.jpg"], 8)
  assert n2 == ["a.png", "a.jpg"]  # unique names


def test_save_image_and_grid(tmp_path):
  x = model(RGB)
  [p] = images.save_image(tmp_path / "out" / "x.png", x)
  np.testing.assert_array_equal(_read(p)[0], RGB)  # exact 8-bit round trip
  x4 = np.concatenate([x, -np.ones((16, 16, 1), np.float32)], -1)
  x4[2:5, 3:7, 3] = 1
  p_img, p_mask = images.save_image(tmp_path / "y.png", x4)
  assert p_mask.endswith("y_mask.png") and _read(p_img)[1] == "RGB"
  assert (_read(p_mask)[0] > 0).sum() == 12
  images.save_image(tmp_path / "g.png", x[..., :1])
  assert _read(tmp_path / "g.png")[1] == "L"
  with pytest.raises(ValueError, match="C in"):
    images.save_image(tmp_path / "bad.png", np.zeros((4, 4, 2)))

  grid = images.image_grid([x, x, x], rows=2, pad=2)
  assert grid.shape == (34, 34, 3) and grid.dtype == np.uint8
  np.testing.assert_array_equal(grid[18:, :16], RGB)    # third image: second row, first column
  assert (grid[18:, 18:] == 255).all()                   # empty cell: pad_value = white
  overlay = images.image_grid(x4[None], rows=1)
  assert tuple(overlay[3, 4]) != tuple(RGB[3, 4]) and tuple(overlay[0, 0]) == tuple(RGB[0, 0])
  np.testing.assert_array_equal(images.image_grid(x4[None], mask="drop"), RGB)


# ----------------------------------------------------------------------------------------------
# Bad inputs.


def _png_with_size(w, h):
  def chunk(tag, data):
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
  ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
          + chunk(b"IEND", b""))


def _encoded(fmt):
  buf = io.BytesIO()
  Image.fromarray(RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, fmt)
  return buf.getvalue()


@pytest.mark.parametrize("name,content,message", [
    ("empty.png", b"", "empty.png is empty .0 bytes.; re-export"),
    ("zero.png", _png_with_size(0, 5), "zero.png has 0 pixels"),
    ("cut.png", _encoded("PNG")[:300], "cut.png is corrupt or truncated"),
    ("cut.jpg", _encoded("JPEG")[:400], "cut.jpg is corrupt or truncated"),
    ("junk.png", b"\x89PNG\r\n\x1a\n" + b"junk" * 20, "junk.png is corrupt"),
    ("notes.txt", b"just some text", "notes.txt: unsupported .* convert it to PNG"),
    ("photo.heic", b"\x00\x00\x00\x18ftypheic" + bytes(40), "photo.heic: unsupported"),
])
def test_bad_files_raise_clear_errors(tmp_path, name, content, message):
  path = tmp_path / name
  path.write_bytes(content)
  with pytest.raises(ImageError, match=message):
    images.load_image(path, 8, 3)


def test_bad_paths_raise_clear_errors(tmp_path):
  with pytest.raises(ImageError, match="nope.png: no such file"):
    images.load_image(tmp_path / "nope.png", 8)
  with pytest.raises(ImageError, match="is a directory; use load_images"):
    images.load_image(tmp_path, 8)
  (tmp_path / "readme.md").write_text("no images here")
  with pytest.raises(ImageError, match="no images in folder"):
    images.load_images(tmp_path, 8)
  with pytest.raises(ImageError, match="list of images is empty"):
    images.load_images([], 8)
  assert issubclass(ImageError, ValueError)
  with pytest.raises(ValueError, match="channels"):
    images.load_image(tmp_path / "readme.md", 8, channels=2)
