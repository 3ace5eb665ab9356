"""Experiment configs (ml-collections), one file per experiment, and command-line overrides.

`load_config('embedded')`, `load_config('configs/embedded.py:quick')` or a file path, then
`--config.a.b=value` overrides (values parsed as Python literals when they parse, else strings).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pathlib
from typing import Optional, Sequence

import ml_collections

CONFIG_DIR = pathlib.Path(__file__).resolve().parent


def _module(name_or_path: str):
  path = pathlib.Path(name_or_path)
  if path.suffix == ".py":
    if not path.exists():
      path = CONFIG_DIR / path.name
    if not path.exists():
      raise FileNotFoundError(f"Config file {name_or_path} not found.")
    spec = importlib.util.spec_from_file_location(f"configs._file_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
  try:
    return importlib.import_module(f"configs.{name_or_path}")
  except ModuleNotFoundError:
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem != "__init__")
    raise ValueError(f"Unknown config {name_or_path!r}; known: {known}.") from None


def _parse(value: str):
  try:
    return ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
  """Apply `--config.a.b=value` (or `a.b=value`) strings in place; unknown fields are errors."""
  for item in overrides:
    key, sep, value = item.removeprefix("--").removeprefix("config.").partition("=")
    if not sep:
      raise ValueError(f"Override {item!r} must look like --config.field=value.")
    node = config
    *parents, leaf = key.split(".")
    for depth, part in enumerate(parents + [leaf]):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        fields = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        raise ValueError(f"Config has no field {key!r}; fields here: {fields}.")
      if depth < len(parents):
        node = node[part]
    old = node[leaf]
    new = _parse(value)
    if isinstance(old, str) and not isinstance(new, str):  # e.g. a class label given as 1
      new = value
    if isinstance(old, float) and isinstance(new, int) and not isinstance(new, bool):
      new = float(new)
    if isinstance(old, tuple) and isinstance(new, list):
      new = tuple(new)
    wrong_type = ValueError(f"--config.{key}={value}: the field is of type "
                            f"{type(old).__name__} (now {old!r}); give a value of that type.")
    if old is not None and isinstance(new, bool) != isinstance(old, bool):
      raise wrong_type  # ml_collections would quietly turn True into 1.0, 1 into True
    try:
      node[leaf] = new
    except TypeError:  # ml_collections keeps each field's type
      raise wrong_type from None


def load_config(name_or_path: str, overrides: Optional[Sequence[str]] = None
                ) -> ml_collections.ConfigDict:
  """`name[:arg]` or `path.py[:arg]` -> ConfigDict with overrides applied."""
  name, _, arg = name_or_path.partition(":")
  config = _module(name).get_config(arg or None)
  apply_overrides(config, overrides or ())
  return config
