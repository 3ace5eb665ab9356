"""`pip install .` (not only `-e .`) must carry the files the commands read at run time."""

import filecmp
import pathlib
import subprocess
import sys

from generators import checkpoint
from inversion import demo

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _runtime_files() -> dict[str, list[pathlib.Path]]:
  """Per package, the data files its code opens: the demo's crops, every shipped model."""
  models = [f for name in checkpoint.EMBEDDED_MODELS
            for f in checkpoint.embedded_dir(name).rglob("*") if f.is_file()]
  return {"inversion": sorted(demo.EXAMPLES_DIR.glob("*.png")), "generators": models}


def test_build_ships_the_demo_examples_and_shipped_models(tmp_path):
  """setuptools' build_py (what a wheel is made of) copies every runtime file, unchanged."""
  # A fresh egg-info: setuptools would otherwise keep the files listed by an earlier build's.
  (tmp_path / "egg").mkdir()
  build = subprocess.run([sys.executable, "-c", "from setuptools import setup; setup()", "-q",
                          "egg_info", "--egg-base", str(tmp_path / "egg"),
                          "build_py", "--build-lib", str(tmp_path / "lib")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert build.returncode == 0, build.stderr
  for package, files in _runtime_files().items():
    assert files, f"no runtime files found for {package}"
    for path in files:
      built = tmp_path / "lib" / package / path.relative_to(ROOT / package)
      assert built.is_file(), f"{package}/{path.relative_to(ROOT / package)} is not package " \
                              "data: add it to [tool.setuptools.package-data] in pyproject.toml"
      assert filecmp.cmp(path, built, shallow=False), built
