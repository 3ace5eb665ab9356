"""Shared test fixtures: the official reference arrays and small networks."""

import pathlib

import numpy as np
import pytest

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


def fixture_path(name: str) -> pathlib.Path:
  """Path of a reference fixture in ../shared/fixtures (import-time safe: no pytest.fail)."""
  path = SHARED / name
  if not path.exists():
    raise FileNotFoundError(f"Reference fixture {path} is missing; the tests expect the "
                            "repository checked out next to shared/ (as CI does).")
  return path


@pytest.fixture(scope="session")
def stylegan2_ref():
  """Official stylegan2-ada-pytorch 32 px G/D arrays and outputs (see shared/fixtures/README.md)."""
  return dict(np.load(fixture_path("stylegan2_ref_32px.npz")))


@pytest.fixture(scope="session")
def official_g_state(stylegan2_ref):
  return {k[2:]: v for k, v in stylegan2_ref.items() if k.startswith("G/")}


@pytest.fixture(scope="session")
def official_d_state(stylegan2_ref):
  return {k[2:]: v for k, v in stylegan2_ref.items() if k.startswith("D/")}
