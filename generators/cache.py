"""The user cache folder, and JAX's persistent compilation cache inside it.

The folder is `$STYLEGAN_INV_CACHE`, else `~/.cache/stylegan_inversion`. It holds the network
weight files users put there (`inversion.weights`) and what makes a second run of the same job
start in seconds:
  xla/       programs XLA compiled (JAX's persistent compilation cache, keyed by the program,
             the JAX/XLA versions and the device), so they are not compiled again;
  programs/  traced programs (`cached_program`, `jax.export` files), so they are not traced
             again either.

  w_stats/   the w statistics of each generator (`inversion.api.w_stats`).

All are on by default; `STYLEGAN_INV_NO_CACHE=1` turns them off. Where the user already chose a
folder for JAX's compilation cache (`JAX_COMPILATION_CACHE_DIR` or
`jax.config.jax_compilation_cache_dir`), that setting is kept. Delete any of these folders at
any time to reclaim its space; it refills as programs are traced and compiled.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import logging
import os
import pathlib
from typing import Any, Callable, Mapping

import jax
from jax import export as jax_export
import jaxlib
import numpy as np

CACHE_ENV = "STYLEGAN_INV_CACHE"                              # overrides the cache folder
DEFAULT_CACHE = pathlib.Path("~/.cache/stylegan_inversion")   # used when CACHE_ENV is unset
NO_CACHE_ENV = "STYLEGAN_INV_NO_CACHE"                        # '1' turns every cache off
COMPILATION_CACHE_SUBDIR = "xla"
MIN_COMPILE_SECONDS = 0.0   # cache every program: the one-image job's 46 small ones load
                            # faster than they compile (warm run 3.8 vs 4.5 s; JAX default: 1 s)

_log = logging.getLogger(__name__)


def cache_dir() -> pathlib.Path:
  """The cache folder: `$STYLEGAN_INV_CACHE`, else `~/.cache/stylegan_inversion`."""
  env = os.environ.get(CACHE_ENV)
  return pathlib.Path(env).expanduser() if env else DEFAULT_CACHE.expanduser()


def enabled() -> bool:
  """Whether the caches are on (`STYLEGAN_INV_NO_CACHE` unset, empty or 0)."""
  return os.environ.get(NO_CACHE_ENV, "") in ("", "0")


def enable_compilation_cache() -> pathlib.Path | None:
  """Points JAX's persistent compilation cache at `<cache>/xla` unless the user chose otherwise
  (module docstring); returns the folder in use, or None when the cache is off."""
  if not enabled():
    return None
  chosen = jax.config.jax_compilation_cache_dir
  if chosen:
    return pathlib.Path(chosen)
  folder = cache_dir() / COMPILATION_CACHE_SUBDIR
  try:
    folder.mkdir(parents=True, exist_ok=True)
  except OSError as err:  # a read-only home: run without the cache, and say so
    _log.warning("JAX compilation cache off: cannot create %s (%s). Set %s to a writable "
                 "folder to keep compiled programs between runs.", folder, err, CACHE_ENV)
    return None
  jax.config.update("jax_compilation_cache_dir", str(folder))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  return folder


# ----------------------------------------------------------------------------------------------
# Traced programs: JAX's compilation cache skips compiling, but not tracing (for the inversion
# step, building the jaxpr of the loss, its gradient and the hoisted invariants in Python: about
# 2 s of a one-image, 5-step run on 2 CPU cores). `cached_program` stores the traced program as a
# `jax.export` artefact, so a later process calls it without tracing, and its compilation then
# hits the compilation cache.

PROGRAMS_SUBDIR = "programs"
CODE_PACKAGES = ("generators", "inversion", "configs")  # their sources key every program


@functools.lru_cache(maxsize=1)
def code_version() -> str:
  """sha256 of the sources of this toolkit's packages: any code change makes new programs."""
  digest = hashlib.sha256()
  root = pathlib.Path(__file__).resolve().parents[1]
  for package in CODE_PACKAGES:
    for path in sorted((root / package).rglob("*.py")):
      digest.update(str(path.relative_to(root)).encode())
      digest.update(path.read_bytes())
  return digest.hexdigest()


def describe(value: Any) -> str | None:
  """A text that identifies a static value across processes, or None when there is none.

  Data (numbers, strings, None, tuples, lists, dicts, dataclasses, named tuples) is described by
  its contents; functions and partials by module, qualified name and the values they close over,
  but only for this toolkit's own code (`CODE_PACKAGES`, whose sources `code_version` hashes):
  a user's function gives None, and its program is traced every time.
  """
  if value is None or isinstance(value, (bool, int, float, str)):
    return repr(value)
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    fields = [describe(getattr(value, f.name)) for f in dataclasses.fields(value)]
    return None if None in fields else f"{type(value).__qualname__}({','.join(fields)})"
  if isinstance(value, (tuple, list)):
    items = [describe(v) for v in value]
    return None if None in items else f"{type(value).__qualname__}[{','.join(items)}]"
  if isinstance(value, dict):
    items = [(describe(k), describe(v)) for k, v in sorted(value.items(), key=repr)]
    return None if any(None in kv for kv in items) else f"dict{items}"
  if isinstance(value, functools.partial):
    return _joined("partial", [value.func, value.args, value.keywords])
  if callable(value) and hasattr(value, "__code__"):
    if value.__module__.split(".")[0] not in CODE_PACKAGES:
      return None
    cells = [c.cell_contents for c in (value.__closure__ or ())]
    return _joined(f"{value.__module__}.{value.__qualname__}", [cells, value.__defaults__])
  return None


def _joined(head: str, parts: list) -> str | None:
  described = [describe(p) for p in parts]
  return None if None in described else f"{head}<{';'.join(described)}>"


# XLA:CPU options for the programs `cached_program` compiles: the older LLVM fusion emitters and
# LLVM optimisation level 1 halve the compile time of the inversion step (64 px embedded model,
# one image: 6.0 -> 3.0 s) and leave its speed as it was (64 px and 256 px, batch 1 and 4, within
# 3%; benchmarks/inversion_speed.py). Where the convolutions run in Eigen, as here, the generated
# code is only the glue around them. Other backends compile with their defaults.
FAST_CPU_COMPILE = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 1}


def compiler_options() -> dict | None:
  """`FAST_CPU_COMPILE` on the CPU backend, None (XLA's defaults) elsewhere."""
  return dict(FAST_CPU_COMPILE) if jax.default_backend() == "cpu" else None


def signature(args: Any) -> tuple:
  """What a jitted function's program depends on in its arguments: their tree, and each leaf's
  shape, dtype and sharding."""
  leaves, tree = jax.tree_util.tree_flatten(args)
  return (str(tree),) + tuple((np.shape(x), str(getattr(x, "dtype", None) or np.result_type(x)),
                               str(getattr(x, "sharding", ""))) for x in leaves)


def cached_program(fn: Callable, args: tuple, *, key: str | None, out_tree: Any,
                   donate_argnums: tuple[int, ...] = (), out_shardings: Any = None) -> Callable:
  """`jax.jit(fn, donate_argnums, out_shardings)` for arguments like `args`, traced at most once
  per machine and compiled with `compiler_options()`.

  Args:
    fn: a pure function of `args`; it must depend on nothing else than `key` describes.
    args: example arguments (their `signature` is keyed).
    key: what else determines the program (e.g. `describe(spec)`); None = not cacheable, plain
      `jax.jit`.
    out_tree: the PyTreeDef of `fn`'s output (the program file stores flat outputs).

  The file `<cache>/programs/<digest>.jaxexp` is keyed by `key`, the arguments, `code_version`,
  the JAX version, its numerics settings and the backend; a missing or unreadable file is
  (re)written.
  """
  options = compiler_options()
  plain = jax.jit(fn, donate_argnums=donate_argnums, out_shardings=out_shardings,
                  compiler_options=options)
  if key is None or not enabled():
    return plain
  leaves, in_tree = jax.tree_util.tree_flatten(args)
  environment = (code_version(), jax.__version__, jaxlib.__version__, jax.default_backend(),
                 jax.config.jax_enable_x64, str(jax.config.jax_default_matmul_precision))
  digest = hashlib.sha256(repr((key, signature(args), environment)).encode())
  path = cache_dir() / PROGRAMS_SUBDIR / f"{digest.hexdigest()[:40]}.jaxexp"
  exported = _read_program(path)
  if exported is None:
    flat = lambda *xs: jax.tree_util.tree_leaves(fn(*jax.tree_util.tree_unflatten(in_tree, xs)))
    try:
      exported = jax_export.export(jax.jit(flat))(*leaves)
      _write_atomically(path, exported.serialize())
      name = getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__", "")
      _log.info("traced %s and stored it in %s", name or "a program", path)
    except Exception as err:  # pylint: disable=broad-except  (export is an optimisation only)
      _log.info("not caching the traced program %s (%s: %s)", path.name, type(err).__name__, err)
      return plain

  def call(*xs):
    return jax.tree_util.tree_unflatten(out_tree, exported.call(*jax.tree_util.tree_leaves(xs)))
  return jax.jit(call, donate_argnums=donate_argnums, out_shardings=out_shardings,
                 compiler_options=options)


def _read_program(path: pathlib.Path):
  if not path.is_file():
    return None
  try:
    return jax_export.deserialize(bytearray(path.read_bytes()))
  except Exception as err:  # pylint: disable=broad-except  (a truncated or foreign file)
    _log.warning("ignoring unreadable cached program %s (%s); tracing again", path, err)
    return None


def _write_atomically(path: pathlib.Path, data: bytes) -> None:
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
  except OSError as err:  # a read-only cache: the work is done again next time
    _log.info("cannot store %s in the cache (%s)", path, err)


# ----------------------------------------------------------------------------------------------
# Arrays: results that are deterministic functions of what their name encodes.


def cached_arrays(name: str, compute: Callable[[], Mapping[str, np.ndarray]]
                  ) -> dict[str, np.ndarray]:
  """`compute()` once per machine: read from `<cache>/<name>.npz`, else computed and stored.
  `name` (e.g. 'w_stats/<fingerprint>_10000') must determine the result; with the caches off
  it is computed every time."""
  path = cache_dir() / f"{name}.npz"
  if enabled() and path.is_file():
    try:
      with np.load(path, allow_pickle=False) as stored:
        return dict(stored)
    except Exception as err:  # pylint: disable=broad-except  (a truncated or foreign file)
      _log.warning("ignoring unreadable cache file %s (%s); computing it again", path, err)
  arrays = {k: np.asarray(v) for k, v in compute().items()}
  if enabled():
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    _write_atomically(path, buffer.getvalue())
  return arrays
