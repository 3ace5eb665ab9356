"""Shared test fixtures: the official reference arrays and small networks."""

import os
import pathlib

import jax
import numpy as np
import pytest

from tests.fixtures import shrink_lpips_fixture

# The suite runs without the user caches (compiled and traced programs, w statistics): each test
# traces and compiles what it runs, as the compile-count tests expect, and nothing is written to
# the home folder. tests/test_cache.py turns them on in a temporary folder.
os.environ["STYLEGAN_INV_NO_CACHE"] = "1"

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"


def fixture_path(name: str) -> pathlib.Path:
  """Path of a reference fixture in tests/fixtures (import-time safe: no pytest.fail)."""
  path = FIXTURES / name
  if not path.exists():
    raise FileNotFoundError(f"Reference fixture {path} is missing; it is tracked in git "
                            "(tests/fixtures/README.md says how it was made): restore it with "
                            f"'git checkout -- {path.relative_to(FIXTURES.parents[1])}'.")
  return path


@pytest.fixture(scope="session")
def stylegan2_ref():
  """Official stylegan2-ada-pytorch 32 px G/D arrays and outputs (see tests/fixtures/README.md)."""
  return dict(np.load(fixture_path("stylegan2_ref_32px.npz")))


@pytest.fixture(scope="session")
def official_g_state(stylegan2_ref):
  return {k[2:]: v for k, v in stylegan2_ref.items() if k.startswith("G/")}


@pytest.fixture(scope="session")
def official_d_state(stylegan2_ref):
  return {k[2:]: v for k, v in stylegan2_ref.items() if k.startswith("D/")}


@pytest.fixture(scope="session")
def lpips_ref():
  """LPIPS reference arrays (VGG16 trunk, v0.1 linear weights, inputs, distances, activations),
  float32 as lpips 0.1.4 wrote them (the file stores the ternary trunk as int8, exactly)."""
  with np.load(fixture_path("lpips_vgg_ref.npz")) as stored:
    return shrink_lpips_fixture.expand(dict(stored))


@pytest.fixture(scope="session")
def lpips_fixture_params(lpips_ref):
  """The fixture's LPIPS params through the same converter a user's file goes through."""
  from inversion import lpips

  sd = {k: v for k, v in lpips_ref.items() if k.startswith(("vgg/", "lpips/"))}
  return lpips.lpips_params_from_state_dicts(sd, sd, net="vgg",
                                             source=str(fixture_path("lpips_vgg_ref.npz")))


@pytest.fixture(scope="module", autouse=True)
def _fresh_jax_caches():
  """Drops JAX's compiled programs after each test module: the suite compiles hundreds of
  programs in one process, and XLA:CPU crashed compiling late in the run when they all stayed
  resident (tests/test_train.py's R1 step, which passes alone)."""
  yield
  jax.clear_caches()
