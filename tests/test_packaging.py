"""`pip install .` (not only `-e .`) must carry the files the commands read at run time."""

import glob
import os
import pathlib

import pytest

from generators import checkpoint
from inversion import api

ROOT = pathlib.Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


def _runtime_files() -> dict[str, list[pathlib.Path]]:
  """Per package, the data files its code opens: the demo's crops, every shipped model."""
  models = [f for name in checkpoint.EMBEDDED_MODELS
            for f in checkpoint.embedded_dir(name).rglob("*") if f.is_file()]
  return {"inversion": sorted(api.EXAMPLES_DIR.glob("*.png")), "generators": models}


def test_package_data_covers_the_demo_examples_and_shipped_models():
  patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
      "package-data"]
  for package, files in _runtime_files().items():
    assert files, f"no runtime files found for {package}"
    # What setuptools collects: each pattern globbed (recursively) inside the package.
    shipped = {os.path.normpath(f) for p in patterns.get(package, [])
               for f in glob.glob(p, root_dir=ROOT / package, recursive=True)}
    for path in files:
      relative = os.path.relpath(path, ROOT / package)  # through the examples link, unresolved
      assert not relative.startswith(".."), f"{path} lies outside package {package}"
      assert relative in shipped, (
          f"{package}/{relative} is not package data: `pip install .` would leave it out")
