"""Experiment configs (ml-collections), one file per experiment, and command-line overrides.

`load_config('embedded')`, `load_config('configs/embedded.py:quick')` or a file path, then
`--config.a.b=value` overrides (values parsed as Python literals when they parse, else strings;
each field keeps its type, and a wrong type or an unknown field is a ValueError that names it).
"""

from __future__ import annotations

import ast
import difflib
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


def _paths(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Every value field's dotted path ('data.resolution'; groups such as 'data' are not)."""
  out = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.extend(_paths(value, f"{prefix}{key}."))
    else:
      out.append(prefix + key)
  return out


def _a(noun: str) -> str:
  return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def _unknown_field(config: ml_collections.ConfigDict, item: str, key: str, depth: int,
                   node) -> ValueError:
  """The error for `--config.<key>=...` whose part `depth` does not exist: the close matches
  (difflib) among all fields, and the fields at that level."""
  parts = key.split(".")
  here = ".".join(parts[:depth])
  paths = _paths(config)
  # Close to the whole path, or to the last part alone (a field given at the wrong level).
  close = difflib.get_close_matches(key, paths, n=3, cutoff=0.6)
  by_leaf = {p.rsplit(".", 1)[-1]: p for p in paths}
  close += [by_leaf[m] for m in difflib.get_close_matches(parts[-1], list(by_leaf), n=3,
                                                          cutoff=0.75)]
  close = list(dict.fromkeys(close))[:3]
  hint = f" Did you mean {' or '.join(f'--config.{c}' for c in close)}?" if close else ""
  if isinstance(node, ml_collections.ConfigDict):
    where = f"fields of {here}" if here else "top-level fields"
    listing = f" The {where}: {', '.join(sorted(node.keys()))}."
  else:
    listing = f" {here} is a value ({type(node).__name__}), not a group of fields."
  return ValueError(f"Config has no field {key!r} (in {item}).{hint}{listing}")


def _example(old) -> str:
  """A value of `old`'s type, for an error message."""
  if isinstance(old, bool):
    return "True or False"
  if isinstance(old, (int, float)):
    return repr(old)
  if isinstance(old, tuple):
    return repr(old).replace(" ", "")
  return repr(old)


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
  """Apply `--config.a.b=value` (or `a.b=value`) strings in place.

  Raises a ValueError naming the field, the value given and the type expected when the value is
  of another type (a field keeps its type; an int field takes no 1.5, a bool no 1), and the
  close matches when there is no such field."""
  for item in overrides:
    key, sep, value = item.removeprefix("--").removeprefix("config.").partition("=")
    if not sep or not key:
      raise ValueError(f"Override {item!r} must look like --config.field=value.")
    node = config
    *parents, leaf = key.split(".")
    for depth, part in enumerate(parents + [leaf]):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        raise _unknown_field(config, item, key, depth, node)
      if depth < len(parents):
        node = node[part]
    old = node[leaf]
    if isinstance(old, ml_collections.ConfigDict):
      first = sorted(old.keys())[0]
      raise ValueError(f"--config.{key}={value}: {key} is a group of fields, not a value; set "
                       f"one of its fields ({', '.join(sorted(old.keys()))}), e.g. "
                       f"--config.{key}.{first}={_example(old[first])}.")
    new = _parse(value)
    if isinstance(old, str) and not isinstance(new, str):  # e.g. a class label given as 1
      new = value
    if isinstance(old, float) and isinstance(new, int) and not isinstance(new, bool):
      new = float(new)
    if isinstance(old, tuple) and isinstance(new, list):
      new = tuple(new)
    wrong_type = ValueError(f"--config.{key}={value}: the field is of type "
                            f"{type(old).__name__} (now {old!r}), and {value!r} is "
                            f"{'text' if isinstance(new, str) else _a(type(new).__name__)}; "
                            f"give {_a(type(old).__name__)}, e.g. --config.{key}={_example(old)}.")
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
