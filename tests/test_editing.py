"""inversion.editing: interpolation, layer crossover, expression transfer, strips and the
`python -m inversion edit` commands, on latents files of the fixture generator (no inversion
needed: the files are written from known latents)."""

import numpy as np
import pytest
from PIL import Image

from generators import checkpoint
from inversion import api, editing
from inversion import latents as latents_lib
from inversion import __main__ as cli
from tests.test_engine import generated, scaled_fixture_model


@pytest.fixture(scope='module')
def model(official_g_state):
  return scaled_fixture_model(official_g_state)


@pytest.fixture(scope='module')
def latents(tmp_path_factory, model):
  """Three latents files (a, b, c) written from known W+ codes, as `invert` writes them."""
  d = tmp_path_factory.mktemp('latents')
  x, ws = generated(model, 3, seed=31, psi=0.7)
  n = len(ws)
  result = api.InversionResult(
      names=['a', 'b', 'c'], space='wplus', latents=ws, ws=ws, noise={}, reconstructions=x,
      targets=x, losses={'total': np.zeros((n, 1), np.float32)},
      metrics={'mse': np.zeros(n)}, failed=np.zeros(n, bool), failed_step=-np.ones(n, int),
      steps=1, generator_id=latents_lib.generator_fingerprint(model), config_json='{}')
  paths = [latents_lib.save_latents(d / f'{k}.npz', result, i, model) for i, k in enumerate('abc')]
  return dict(paths=paths, ws=ws, images=x, dir=d)


def test_interpolate_crossover_expression_arithmetic():
  rng = np.random.default_rng(0)
  a, b, c = (rng.standard_normal((8, 4)).astype(np.float32) for _ in range(3))
  path = editing.interpolate(a, b, 5)
  assert path.shape == (5, 8, 4)
  np.testing.assert_array_equal(path[0], a)
  np.testing.assert_allclose(path[-1], b, atol=1e-6)
  np.testing.assert_allclose(path[2], (a + b) / 2, atol=1e-6)
  mixed = editing.crossover(a, b, cutoff=3)
  np.testing.assert_array_equal(mixed[:3], a[:3])
  np.testing.assert_array_equal(mixed[3:], b[3:])
  np.testing.assert_array_equal(editing.crossover(a, b), np.concatenate([a[:4], b[4:]]))
  np.testing.assert_allclose(editing.expression_transfer(a, b, c), a + c - b, atol=1e-6)
  np.testing.assert_allclose(editing.expression_transfer(a, b, c, 0.5), a + 0.5 * (c - b),
                             atol=1e-6)
  with pytest.raises(ValueError, match='cutoff'):
    editing.crossover(a, b, cutoff=9)
  with pytest.raises(ValueError, match='differ'):
    editing.interpolate(a, b[:4])


def test_render_and_morph_ends_are_the_inputs(model, latents):
  recs = [latents_lib.load_latents(p, model) for p in latents['paths']]
  frames = editing.morph(model, recs[0], recs[1], num=4)
  assert frames.shape == (4, 32, 32, 3)
  # frames rendered 4 at a time vs the files' batch of 3: convs may sum apart (0 seen, float32
  # noise ~1e-6); a wrong frame or end is > 1e-1 off
  np.testing.assert_allclose(frames[0], latents['images'][0], atol=1e-4)
  np.testing.assert_allclose(frames[-1], latents['images'][1], atol=1e-4)
  # crossover at 0 is the style image; at num_ws the content image
  ws = latents['ws']
  np.testing.assert_allclose(editing.render(model, editing.crossover(ws[0], ws[1], 0))[0],
                             latents['images'][1], atol=1e-4)


@pytest.mark.parametrize('kind, files, frames', [
    ('interpolate', ['--a', 0, '--b', 1, '--num', '5'], 5),
    ('crossover', ['--content', 0, '--style', 1, '--cutoff', '4'], 3),
    ('expression', ['--a', 0, '--b', 1, '--c', 2], 4),
])
def test_edit_cli_writes_strips(tmp_path, model, latents, kind, files, frames, capsys):
  ckpt = tmp_path / 'ckpt'
  if not ckpt.exists():
    checkpoint.save(ckpt, model)
  args = [str(latents['paths'][f]) if isinstance(f, int) else f for f in files]
  out = tmp_path / f'{kind}.png'
  assert cli.main(['edit', kind, '--checkpoint', str(ckpt), *args, '--out', str(out)]) == 0
  assert f'wrote {out}' in capsys.readouterr().out
  with Image.open(out) as im:
    assert im.size == (frames * 34 - 2, 32)


def test_edit_refuses_latents_of_another_generator(tmp_path, latents, official_g_state):
  other = scaled_fixture_model(official_g_state, scale=0.5)
  ckpt = checkpoint.save(tmp_path / 'other', other)
  with pytest.raises(SystemExit, match='inverted with generator'):
    cli.main(['edit', 'crossover', '--checkpoint', str(ckpt), '--content',
              str(latents['paths'][0]), '--style', str(latents['paths'][1]),
              '--out', str(tmp_path / 'x.png')])
  with pytest.raises(SystemExit, match='needs --content, --style'):
    cli.main(['edit', 'crossover', '--checkpoint', str(ckpt), '--content',
              str(latents['paths'][0]), '--out', str(tmp_path / 'x.png')])
