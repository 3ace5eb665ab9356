"""The user caches (generators/cache.py): a second run of a job neither traces nor compiles its
programs again, gives the same numbers, and anything the cache keys on makes a new entry."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from generators import cache
from inversion import api
from tests.test_engine import ROOT

EXAMPLE = pathlib.Path(ROOT) / 'inversion' / 'examples' / 'brick_y064_x384.png'


def invert_one(out, cache_dir, *extra):
  """`python -m inversion invert` of one example crop, 3 steps, in a fresh process."""
  env = {k: v for k, v in os.environ.items() if k != cache.NO_CACHE_ENV}
  env.update(STYLEGAN_INV_CACHE=str(cache_dir), JAX_PLATFORMS='cpu')
  cmd = [sys.executable, '-m', 'inversion', 'invert', '--images',
         str(EXAMPLE), '--out', str(out),
         '--steps', '3', '--no-progress', *extra]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
  assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
  with np.load(out / 'latents' / 'brick_y064_x384.npz') as z:
    return proc.stderr, z['latent'], json.loads(str(z['metrics_json']))


def test_second_run_loads_traced_and_compiled_programs(tmp_path):
  folder = tmp_path / 'cache'
  log1, latent1, metrics1 = invert_one(tmp_path / 'a', folder)
  programs = sorted(p.name for p in (folder / 'programs').iterdir())
  compiled = sorted(p.name for p in (folder / 'xla').iterdir())
  assert len(programs) == 2 and log1.count('traced ') == 2  # the chunk program and the render
  assert compiled  # at least the chunk program compiles for longer than MIN_COMPILE_SECONDS

  log2, latent2, metrics2 = invert_one(tmp_path / 'b', folder)
  assert 'traced ' not in log2  # nothing traced again
  assert sorted(p.name for p in (folder / 'programs').iterdir()) == programs
  assert sorted(p.name for p in (folder / 'xla').iterdir()) == compiled  # nothing compiled anew
  np.testing.assert_array_equal(latent2, latent1)  # the same stored program, the same numbers
  assert metrics2 == metrics1

  log3, latent3, _ = invert_one(tmp_path / 'c', folder, '--steps', '4')
  assert log3.count('traced ') == 1  # another chunk length: a new chunk program, the same render
  assert not np.array_equal(latent3, latent1)

  _, latent_plain, _ = invert_one_without_cache(tmp_path, tmp_path / 'off')
  # plain jit vs the stored jax.export program, compiled apart: sums may fuse in another order
  # (0 seen after 3 Adam steps); a stale or wrong program would differ by ~lr = 1e-2
  np.testing.assert_allclose(latent_plain, latent1, rtol=1e-5, atol=1e-5)


def invert_one_without_cache(tmp_path, out):
  """The same run with the caches off: nothing is written to the cache folder."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', STYLEGAN_INV_CACHE=str(tmp_path / 'unused'))
  env[cache.NO_CACHE_ENV] = '1'
  cmd = [sys.executable, '-m', 'inversion', 'invert', '--images',
         str(EXAMPLE), '--out', str(out),
         '--steps', '3', '--no-progress']
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert not (tmp_path / 'unused').exists()
  with np.load(out / 'latents' / 'brick_y064_x384.npz') as z:
    return proc.stderr, z['latent'], None


def test_describe_identifies_static_values():
  assert cache.describe(api.as_config).startswith('inversion.api.as_config<')
  assert cache.describe(lambda x: x) is None  # a user's function: never cached
  assert cache.describe(np.mean) is None
  assert cache.describe({'b': (1, 2.5), 'a': None}) == cache.describe({'a': None, 'b': (1, 2.5)})
  from inversion import perceptual
  two = perceptual.make_discriminator_feature_loss(len, ('b8', 'b16'))
  assert cache.describe(two) is None  # closes over a builtin: not ours
  feats = lambda layers: perceptual.make_discriminator_feature_loss(api.as_config, layers)
  assert cache.describe(feats(('b8',))) != cache.describe(feats(('b8', 'b16')))  # closures count


def test_cached_arrays(tmp_path, monkeypatch):
  monkeypatch.setenv('STYLEGAN_INV_CACHE', str(tmp_path))
  monkeypatch.delenv(cache.NO_CACHE_ENV)
  calls = []
  compute = lambda: calls.append(1) or {'x': np.arange(3.0)}
  first = cache.cached_arrays('w_stats/g_10', compute)
  again = cache.cached_arrays('w_stats/g_10', compute)
  assert len(calls) == 1 and np.array_equal(first['x'], again['x'])
  (tmp_path / 'w_stats' / 'g_10.npz').write_bytes(b'broken')
  assert np.array_equal(cache.cached_arrays('w_stats/g_10', compute)['x'], first['x'])
  assert len(calls) == 2  # an unreadable file is computed again (and logged)
  monkeypatch.setenv(cache.NO_CACHE_ENV, '1')
  cache.cached_arrays('w_stats/g_10', compute)
  assert len(calls) == 3


@pytest.mark.parametrize('value', ['1', 'yes'])
def test_caches_off(monkeypatch, value):
  monkeypatch.setenv(cache.NO_CACHE_ENV, value)
  assert not cache.enabled()
  assert cache.enable_compilation_cache() is None
