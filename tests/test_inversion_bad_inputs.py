"""Bad inputs to `python -m inversion`: each ends in one `error:` line naming the file, the field
and the fix, before any optimisation step, or in a logged, documented conversion."""

import csv
import dataclasses
import logging

import numpy as np
import pytest
from PIL import Image

from generators import checkpoint
from inversion import __main__ as cli
from inversion import api, images, jobs, latents, weights
from tests.test_inversion_api import folder_config, image_dir, model  # noqa: F401  (fixtures)


def run_cli(argv, model, monkeypatch):  # pylint: disable=redefined-outer-name
  """The CLI on the fixture generator (no checkpoint file needed)."""
  monkeypatch.setattr(checkpoint, 'load', lambda path: model)
  return cli.main(argv + ['--no-progress'] if argv[0] == 'invert' else argv)


def invert_argv(images_arg, out, *extra):
  return ['invert', '--images', str(images_arg), '--out', str(out), '--method', 'w',
          '--steps', '2', '--config.loss.perceptual=none', '--config.metrics.lpips=off', *extra]


@pytest.fixture()
def mixed_dir(tmp_path, image_dir):  # pylint: disable=redefined-outer-name
  """Two good images, a truncated PNG and a text file named .jpg."""
  d = tmp_path / 'mixed'
  d.mkdir()
  for name in ('img0.png', 'img1.png'):
    (d / name).write_bytes((image_dir / name).read_bytes())
  (d / 'cut.png').write_bytes((image_dir / 'img2.png').read_bytes()[:200])
  (d / 'text.jpg').write_text('not a JPEG')
  return d


def test_unreadable_images_are_all_listed_before_any_step(tmp_path, mixed_dir, model,
                                                          monkeypatch):
  out = tmp_path / 'out'
  with pytest.raises(SystemExit) as e:
    run_cli(invert_argv(mixed_dir, out), model, monkeypatch)
  msg = str(e.value)
  assert msg.startswith('error: 2 of the 4 images to invert cannot be read')
  assert 'cut.png is corrupt or truncated' in msg and 'text.jpg: unsupported' in msg
  assert '--skip-bad' in msg
  assert not (out / 'latents').exists()  # nothing was inverted, not even the good ones


def test_skip_bad_inverts_the_rest_and_lists_the_skipped(tmp_path, mixed_dir, model,
                                                         monkeypatch, capsys):
  out = tmp_path / 'out'
  assert run_cli(invert_argv(mixed_dir, out, '--skip-bad'), model, monkeypatch) == 0
  assert '2 inverted, 0 already done, 0 failed, 2 unreadable (skipped)' in capsys.readouterr().out
  assert sorted(p.name for p in (out / 'latents').iterdir()) == ['img0.npz', 'img1.npz']
  with open(out / 'metrics.csv', newline='') as f:
    status = {row['name']: row['status'] for row in csv.DictReader(f)}
  assert status['img0'] == status['img1'] == 'ok'
  assert status['cut'].startswith('skipped: ') and 'cut.png is corrupt' in status['cut']
  assert status['text'].startswith('skipped: ') and 'text.jpg' in status['text']


def test_every_image_unreadable_with_skip_bad(tmp_path, mixed_dir, model):
  for name in ('img0.png', 'img1.png'):
    (mixed_dir / name).unlink()
  res = jobs.invert_folder(mixed_dir, model, folder_config(), tmp_path / 'out', skip_bad=True,
                           progress=False)
  assert not res.inverted and sorted(res.unreadable) == ['cut', 'text']
  assert [r['name'] for r in res.rows] == ['cut', 'text']


def test_out_that_cannot_be_a_writable_folder(tmp_path, image_dir, model, monkeypatch):
  a_file = tmp_path / 'taken'
  a_file.write_text('')
  with pytest.raises(SystemExit, match=f'^error: output folder {a_file} is an existing file'):
    run_cli(invert_argv(image_dir, a_file), model, monkeypatch)
  with pytest.raises(SystemExit, match=f'^error: cannot write to the output folder {a_file}/sub'):
    run_cli(invert_argv(image_dir, a_file / 'sub'), model, monkeypatch)

  def read_only(self, data):  # what a read-only folder does (the tests may run as root)
    raise PermissionError(13, 'Permission denied', str(self))
  monkeypatch.setattr(type(tmp_path), 'write_bytes', read_only)
  with pytest.raises(SystemExit, match='cannot write to the output folder .*Permission denied'):
    run_cli(invert_argv(image_dir, tmp_path / 'ro'), model, monkeypatch)


@pytest.fixture()
def nan_latents(tmp_path, image_dir, model):  # pylint: disable=redefined-outer-name
  """A folder with img0.npz, a real latents file whose `latent` was overwritten with NaN."""
  done = jobs.invert_folder(image_dir / 'img0.png', model, folder_config(), tmp_path / 'run',
                            progress=False)
  good = tmp_path / 'run' / 'latents' / 'img0.npz'
  with np.load(good) as z:
    arrays = dict(z)
  arrays['latent'] = np.full_like(arrays['latent'], np.nan)
  bad_dir = tmp_path / 'bad'
  bad_dir.mkdir()
  np.savez(bad_dir / 'img0.npz', **arrays)
  assert done.inverted == ['img0']
  return bad_dir / 'img0.npz', good


def test_nan_init_latents_are_refused_up_front(tmp_path, image_dir, model, monkeypatch,
                                              nan_latents):
  bad, _ = nan_latents
  out = tmp_path / 'out'
  with pytest.raises(SystemExit,
                     match=f'^error: {bad}: field "latent" holds NaN or infinite values'):
    run_cli(invert_argv(image_dir / 'img0.png', out, '--init', str(bad.parent)), model,
            monkeypatch)
  assert not (out / '_work').exists() and not (out / 'latents').exists()


def test_edit_names_the_latents_file_with_nan(tmp_path, model, monkeypatch, nan_latents):
  bad, good = nan_latents
  with pytest.raises(SystemExit, match=f'^error: {bad}: field "latent" holds NaN'):
    run_cli(['edit', 'interpolate', '--a', str(good), '--b', str(bad), '--out',
             str(tmp_path / 'e.png')], model, monkeypatch)


def test_latents_file_missing_fields(tmp_path, nan_latents):
  _, good = nan_latents
  with np.load(good) as z:
    arrays = {k: v for k, v in z.items() if k not in ('ws', 'status')}
  np.savez(tmp_path / 'cut.npz', **arrays)
  with pytest.raises(latents.LatentsError, match='lacks the field.*ws, status'):
    latents.load_latents(tmp_path / 'cut.npz')


def test_mask_sizes(tmp_path, image_dir, model, monkeypatch, caplog):
  """A non-square mask is refused; a square one of another size is resized, with a log line
  naming it and both sizes."""
  res = model.resolution
  wide = tmp_path / 'wide.png'
  Image.fromarray(np.full((res // 2, 2 * res), 255, np.uint8)).save(wide)
  with pytest.raises(SystemExit, match=f'^error: mask {wide} is {2 * res}x{res // 2}, but '
                     f'images are inverted as {res}x{res} squares'):
    run_cli(invert_argv(image_dir, tmp_path / 'o', '--mask', str(wide)), model, monkeypatch)
  half = np.zeros((2 * res, 2 * res), np.uint8)
  half[:, :res] = 255  # left half counts
  big = tmp_path / 'big.png'
  Image.fromarray(half).save(big)
  with caplog.at_level(logging.INFO, logger='inversion.images'):
    m = api.load_mask(big, res)
  assert f'mask {big} is {2 * res}x{2 * res}: resized to {res}x{res}' in caplog.text
  np.testing.assert_array_equal(m[:, :res // 2, 0], 1.0)  # area resize of a 2x mask: exact
  np.testing.assert_array_equal(m[:, res // 2:, 0], 0.0)
  (tmp_path / 'cut_mask.png').write_bytes(big.read_bytes()[:40])
  with pytest.raises(images.ImageError, match='cut_mask.png looks like a PNG file but is corrupt'):
    api.load_mask(tmp_path / 'cut_mask.png', res)


def test_generator_without_discriminator(tmp_path, image_dir, model, monkeypatch):
  """A G-only checkpoint inverts with pixel terms; the perceptual terms that need D say so."""
  g_only = dataclasses.replace(model, d_config=None, d_vars=None,
                               metadata={'source': 'g_only.pt'})
  monkeypatch.setenv('STYLEGAN_INV_CACHE', str(tmp_path / 'no_weights_here'))
  for spec in weights.WEIGHTS.values():
    monkeypatch.delenv(spec.env_var, raising=False)
  with pytest.raises(SystemExit, match=r"^error: config.loss.perceptual=vgg needs weights that "
                     r"are missing .* needs a discriminator, which g_only.pt does not hold.*"
                     r"--config.loss.perceptual=none"):
    run_cli(invert_argv(image_dir, tmp_path / 'o', '--config.loss.perceptual=vgg'), g_only,
            monkeypatch)
  with pytest.raises(ValueError, match='perceptual=discriminator needs a discriminator, which '
                     'g_only.pt does not hold'):
    api.Inverter(g_only, api.as_config('image2stylegan:w', ['--config.loss.perceptual='
                                                            'discriminator']))
  res = jobs.invert_folder(image_dir / 'img0.png', g_only, folder_config(), tmp_path / 'px',
                           progress=False)  # perceptual=none: no D needed
  assert res.inverted == ['img0']
