"""Our native model format, and the one `load` entry point that reads every supported format.

Native layout (a directory):

    model.json     {"format": "stylegan-inversion-jax", "version": 1, "generator": {config},
                    "discriminator": {config} | null, "metadata": {...}}
    state/         orbax-checkpoint of {"generator": variables, "discriminator": variables}

Everything else (NVlabs pickles, rosinality .pt, plain state dicts, TF pickles) goes through
`generators.formats.read_checkpoint` into official names, then `generators.convert`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import shutil
import sys
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from generators import convert, networks
from generators.torch_io import CheckpointError

log = logging.getLogger(__name__)

FORMAT_NAME = "stylegan-inversion-jax"
FORMAT_VERSION = 1
EMBEDDED_DIR = pathlib.Path(__file__).resolve().parent / "embedded"
# The models we train and ship, by name: `load("embedded:NAME")`, `load_embedded(NAME)`. Each
# directory holds model/, MODEL_CARD.md, samples.png; "default" is what a missing path means.
EMBEDDED_MODELS = {"default": ""}
EMBEDDED_PREFIX = "embedded:"
NATIVE_LAYOUT = ("A native model folder holds model.json (the architectures) and state/ (the "
                 "weights, an orbax checkpoint)")
MAKE_NATIVE = ("`python -m generators export --workdir RUN --out DIR` (from a training run) or "
               "`generators.checkpoint.save(DIR, generators.load(FILE))` (from a checkpoint "
               "file) writes one")
NO_DISCRIMINATOR = ("loaded the generator alone: inversion needs no more, but losses that need "
                    "D (config.loss.perceptual=discriminator, and the discriminator fallback "
                    "when the VGG/LPIPS weights are missing) are unavailable; load a file that "
                    "holds D for those")
NATIVE_ENTRIES = {"model.json", "state"}  # all a native model folder holds (`save`)
_CHECKPOINT_SUFFIXES = (".pkl", ".pt", ".pth", ".ckpt", ".bin", ".tar")


@dataclasses.dataclass
class Model:
  """A StyleGAN2 generator (and optionally its discriminator) with its variables.

  `mapping`/`synthesis`/`discriminator_features` are bound conveniences over the pure functions
  in `generators.networks`; pass `g_config`/`g_vars` to those for jit/vmap/grad.
  """

  g_config: networks.GeneratorConfig
  g_vars: dict[str, Any]
  d_config: Optional[networks.DiscriminatorConfig] = None
  d_vars: Optional[dict[str, Any]] = None
  metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def resolution(self) -> int:
    return self.g_config.img_resolution

  @property
  def channels(self) -> int:
    return self.g_config.img_channels

  def mapping(self, z, c=None, psi: float = 1.0, cutoff: Optional[int] = None):
    """z [B, z_dim] (and one-hot labels c [B, c_dim] of a conditional G, see `labels`) ->
    ws [B, num_ws, w_dim]."""
    return networks.mapping(self.g_config, self.g_vars, z, c, psi, cutoff)

  def synthesis(self, ws, noise_mode: str = "const", noise=None, key=None):
    """ws [B, num_ws, w_dim] -> images [B, H, W, C] in about [-1, 1]."""
    return networks.synthesis(self.g_config, self.g_vars, ws, noise_mode, noise, key)

  @property
  def class_names(self) -> list[str]:
    """Names of a conditional generator's classes (metadata, else their indices as text)."""
    names = self.metadata.get("class_names") or [str(i) for i in range(self.g_config.c_dim)]
    return [str(n) for n in names]

  def class_index(self, label: Optional[str | int]) -> Optional[int]:
    """A class name or index -> its index; None or '' -> None. Errors list the classes."""
    if label is None or label == "":
      return None
    if not self.g_config.c_dim:
      raise ValueError(f"This generator is unconditional; drop the class label {label!r}.")
    names = self.class_names
    if str(label) in names:
      return names.index(str(label))
    if str(label).lstrip("-").isdigit() and 0 <= int(label) < len(names):
      return int(label)
    raise ValueError(f"Unknown class {label!r}; this generator's classes are "
                     f"{', '.join(f'{i}={n}' for i, n in enumerate(names))}.")

  def labels(self, label: Optional[str | int], batch: int):
    """c [batch, c_dim] one-hot for `label`, or None for an unconditional generator; a
    conditional one needs a label, an unconditional one refuses it."""
    if not self.g_config.c_dim:
      self.class_index(label)  # rejects a label
      return None
    index = self.class_index(label)
    if index is None:
      raise ValueError(f"This generator is conditional: name a class (one of "
                       f"{', '.join(self.class_names)}).")
    return jnp.broadcast_to(jax.nn.one_hot(index, self.g_config.c_dim), (batch, self.g_config.c_dim))

  def sample(self, seeds, psi: float = 1.0, noise_mode: str = "const",
             label: Optional[str | int] = None):
    """Images for integer seeds (z drawn from `PRNGKey(seed)`), [len(seeds), H, W, C];
    `label`: the class of a conditional generator (name or index)."""
    z = jnp.stack([jax.random.normal(jax.random.PRNGKey(s), (self.g_config.z_dim,))
                   for s in seeds])
    return self.synthesis(self.mapping(z, self.labels(label, len(seeds)), psi=psi), noise_mode)

  def discriminator_features(self, img):
    """Every D block's activations, see `networks.Discriminator.features`."""
    if self.d_config is None:
      source = self.metadata.get("source")
      raise ValueError(f"This model{f' ({source})' if source else ''} has no discriminator; load "
                       "a file that holds D (an NVlabs network pickle, a rosinality .pt with "
                       "'d', a native model exported with D).")
    return networks.Discriminator(self.d_config).apply(
        self.d_vars, img, method=networks.Discriminator.features)


def _config_to_json(config) -> Optional[dict]:
  if config is None:
    return None
  d = dataclasses.asdict(config)
  d["resample_taps"] = list(d["resample_taps"])
  return d


def _config_from_json(cls, d: Optional[dict]):
  if d is None:
    return None
  d = dict(d)
  d["resample_taps"] = tuple(d["resample_taps"])
  return cls(**d)


def save(path: str | os.PathLike, model: Model, overwrite: bool = False) -> pathlib.Path:
  """Write `model` in the native format (a directory); returns its path."""
  import orbax.checkpoint as ocp

  path = pathlib.Path(path).resolve()
  if path.exists():
    if not overwrite:
      raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.")
    entries = sorted(p.name for p in path.iterdir()) if path.is_dir() else None
    if entries and not (set(entries) <= NATIVE_ENTRIES and "model.json" in entries):
      raise ValueError(f"{path} exists and is not a native model folder (it holds "
                       f"{', '.join(entries[:6])}{' ...' if len(entries) > 6 else ''}), so it "
                       "is not replaced; pass a new folder, or a native model folder to "
                       "overwrite.")
    if entries is None:
      raise ValueError(f"{path} is a file; a native model is a folder: pass a folder path.")
    shutil.rmtree(path)
  path.mkdir(parents=True)
  tree = {"generator": model.g_vars}
  if model.d_vars is not None:
    tree["discriminator"] = model.d_vars
  tree = jax.tree_util.tree_map(np.asarray, tree)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path / "state", tree)
  meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION,
          "generator": _config_to_json(model.g_config),
          "discriminator": _config_to_json(model.d_config), "metadata": model.metadata}
  (path / "model.json").write_text(json.dumps(meta, indent=2))
  return path


def _not_native(path: pathlib.Path) -> CheckpointError:
  """The error for a folder without model.json: what it holds, and what it should."""
  entries = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
  files = [e for e in entries if e.lower().endswith(_CHECKPOINT_SUFFIXES)]
  holds = (f"it holds {', '.join(entries[:6])}{' ...' if len(entries) > 6 else ''}" if entries
           else "it is empty")
  if (path / "config.json").is_file() and (path / "checkpoints").is_dir():
    hint = (" It looks like a training workdir: export it first, `python -m generators export "
            f"--workdir {path} --out DIR`, and pass DIR.")
  elif files:
    hint = f" To load a checkpoint file, pass the file itself (e.g. {path / files[0]})."
  else:
    hint = " To load an NVlabs/rosinality/state-dict file, pass the file itself."
  return CheckpointError(f"{path} is a folder without model.json, so not a native model "
                         f"({holds}). {NATIVE_LAYOUT}; {MAKE_NATIVE}.{hint}")


def _corrupt_fix(path: pathlib.Path) -> str:
  """How to get an intact copy of the native model at `path` (a sentence)."""
  if path.is_relative_to(EMBEDDED_DIR):
    repo_path = path.relative_to(EMBEDDED_DIR.parents[1])
    return (f"It is a shipped embedded model: restore it with `git checkout -- {repo_path}` in a "
            "clone, or reinstall stylegan-inversion-jax.")
  return f"Copy or download the whole folder again, or write it anew: {MAKE_NATIVE}."


def _short(err: BaseException, limit: int = 240) -> str:
  """One line of an orbax/tensorstore error (they append a long JSON spec)."""
  text = " ".join(str(err).split("[tensorstore_spec=")[0].split()) or type(err).__name__
  return text if len(text) <= limit else text[:limit] + " ..."


class _HushClosedLoopReports:
  """A `sys.unraisablehook` that drops "Event loop is closed" reports, passing the rest on."""

  def __init__(self, previous):
    self.previous = previous

  def __call__(self, unraisable):
    exc, tb = unraisable.exc_value, unraisable.exc_traceback
    if (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed" and tb is not None
        and tb.tb_frame.f_code.co_name == "call_soon_threadsafe"):
      return
    self.previous(unraisable)


class _HushUnretrievedReads(logging.Filter):
  """Drops asyncio's "Task/Future exception was never retrieved" records about `state`."""

  def __init__(self, state: pathlib.Path):
    super().__init__()
    self.state = str(state)

  def filter(self, record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return not (str(record.msg).startswith(("Task exception was never retrieved",
                                            "Future exception was never retrieved"))
                and self.state in str(exc))


@contextlib.contextmanager
def _quiet_failed_restore(state: pathlib.Path):
  """Keeps a failed orbax read of `state` down to the one error we raise for it.

  On a corrupt state/, orbax's restore fails at the first bad read and closes its event loop
  while tensorstore still has other reads in flight. Each of those then reports, some after
  the restore has returned: a RuntimeError "Event loop is closed" through
  `sys.unraisablehook`, and asyncio's "Task (or Future) exception was never retrieved" (the
  same read error again) when its task is collected. Dozens of tracebacks around one error line; both kinds are
  dropped (the hook stays installed after a failure, as the reports come late; after a
  successful read it is removed again)."""
  hook = _HushClosedLoopReports(sys.unraisablehook)
  sys.unraisablehook = hook
  try:
    yield
  except BaseException:
    logging.getLogger("asyncio").addFilter(_HushUnretrievedReads(state))
    raise
  if sys.unraisablehook is hook:
    sys.unraisablehook = hook.previous


def _restore_state(path: pathlib.Path) -> dict[str, Any]:
  """The orbax tree in `path`/state; a CheckpointError naming the folder if it is corrupt."""
  import orbax.checkpoint as ocp

  state = path / "state"
  if not state.is_dir():
    raise FileNotFoundError(f"{state} (the weights) is missing: the model folder is incomplete. "
                            f"{NATIVE_LAYOUT}. {_corrupt_fix(path)}")
  try:
    with _quiet_failed_restore(state), ocp.StandardCheckpointer() as checkpointer:
      tree = checkpointer.restore(state)
  except MemoryError:
    raise
  except Exception as e:  # orbax/tensorstore raise many kinds (ValueError, OSError, JSON, ...)
    raise CheckpointError(f"{state}: the model's weights are corrupt or incomplete; orbax "
                          f"cannot read them ({_short(e)}). {_corrupt_fix(path)}") from e
  if not isinstance(tree, dict) or "generator" not in tree:
    held = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
    raise CheckpointError(f"{state} holds no generator weights (it holds {held}): the model "
                          f"folder is incomplete or corrupt. {_corrupt_fix(path)}")
  return tree


def _read_model_json(path: pathlib.Path) -> dict[str, Any]:
  try:
    meta = json.loads((path / "model.json").read_text())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{path}/model.json is corrupt: not JSON text ({e}). "
                          f"{_corrupt_fix(path)}") from None
  if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
    raise CheckpointError(f"{path}/model.json is not a {FORMAT_NAME} model description (its "
                          f"\"format\" is not {FORMAT_NAME!r}). {NATIVE_LAYOUT}; {MAKE_NATIVE}.")
  if meta.get("version", 0) > FORMAT_VERSION:
    raise CheckpointError(f"{path} was written by a newer version (format {meta['version']}); "
                          "upgrade stylegan-inversion-jax.")
  return meta


def _configs_from_json(path: pathlib.Path, meta: dict[str, Any]):
  if not meta.get("generator"):
    raise CheckpointError(f"{path}/model.json describes no generator (its \"generator\" field "
                          f"is {'missing' if 'generator' not in meta else 'empty'}), so there is "
                          f"nothing to load. {NATIVE_LAYOUT}; model.json describes the "
                          "generator (and the discriminator, if any). "
                          f"{_corrupt_fix(path)}")
  configs = []
  for field, cls in (("generator", networks.GeneratorConfig),
                     ("discriminator", networks.DiscriminatorConfig)):
    try:
      configs.append(_config_from_json(cls, meta.get(field)))
    except (TypeError, KeyError, ValueError) as e:
      raise CheckpointError(f"{path}/model.json: its \"{field}\" architecture is not valid "
                            f"({e}). {_corrupt_fix(path)}") from None
  return configs


def _load_native(path: pathlib.Path) -> Model:
  path = path.resolve()  # orbax needs an absolute path
  meta = _read_model_json(path)
  g_config, d_config = _configs_from_json(path, meta)
  tree = _restore_state(path)
  to_jax = jax.device_put  # numpy -> device arrays: unlike jnp.asarray, compiles nothing
  d_vars = None
  if d_config is None:
    log.info("%s has no discriminator; %s.", path, NO_DISCRIMINATOR)
  elif "discriminator" not in tree:
    d_config = None
    log.info("%s: model.json describes a discriminator, but state/ holds no weights for it; %s.",
             path, NO_DISCRIMINATOR)
  else:
    d_vars = to_jax(tree["discriminator"])
  return Model(g_config, to_jax(tree["generator"]), d_config, d_vars, meta.get("metadata", {}))


def load(path: Optional[str | os.PathLike] = None, which: str = "G_ema",
         **config_overrides) -> Model:
  """Load a generator (and discriminator, where the file has one) from any supported file.

  A file without a (usable) discriminator loads the generator alone, with `d_config` and
  `d_vars` None and one INFO log line saying so: inversion needs only G (the losses that need D
  say so when they are asked for). Errors about the file are `ValueError`s (most of them
  `CheckpointError`) or `FileNotFoundError`s that name the file and the fix.

  Args:
    path: a native model directory, an NVlabs `.pkl`, a rosinality `.pt`, a plain state-dict
      file or a TF StyleGAN2 pickle. None = the embedded default model; "embedded:NAME" = a
      shipped model by name (`EMBEDDED_MODELS`).
    which: for NVlabs pickles, 'G_ema' (default) or 'G'.
    **config_overrides: architecture fields the file cannot tell (e.g. `conv_clamp=256`).
  """
  if path is None:
    return load_embedded()
  if str(path).startswith(EMBEDDED_PREFIX):
    if config_overrides or which != "G_ema":
      raise ValueError(f"{path} is a shipped native model: `which` and architecture overrides "
                       "apply only to other formats; leave them out.")
    return load_embedded(str(path)[len(EMBEDDED_PREFIX):])
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"Checkpoint {path} does not exist.")
  if path.is_dir():
    if not (path / "model.json").exists():
      raise _not_native(path)
    model = _load_native(path)
    if config_overrides:
      model.g_config = dataclasses.replace(model.g_config, **config_overrides)
    return model
  from generators import formats  # the torch-free readers

  raw = formats.read_checkpoint(path, which=which)
  if raw.architecture != "stylegan2":
    raise ValueError(f"{path} holds a {raw.architecture} (alias-free) generator; this toolkit "
                     "runs StyleGAN2 only. `formats.read_checkpoint` still gives its weights; "
                     "for inversion use a StyleGAN2 file (e.g. NVlabs' stylegan2-*.pkl).")
  g_config, g_vars = convert.generator_from_state(raw.generator, raw.generator_kwargs,
                                                  **config_overrides)
  d_config = d_vars = None
  if raw.discriminator is not None:
    d_overrides = {k: v for k, v in config_overrides.items() if k == "conv_clamp"}
    d_config, d_vars = convert.discriminator_from_state(raw.discriminator,
                                                        raw.discriminator_kwargs, **d_overrides)
  else:
    dropped = [n for n in raw.notes if n.startswith(formats.DISCRIMINATOR_DROPPED)]
    log.info("%s: %s; %s.", path, dropped[0] if dropped else "the file has no discriminator",
             NO_DISCRIMINATOR)
  to_jax = jax.device_put  # numpy -> device arrays: unlike jnp.asarray, compiles nothing
  return Model(g_config, to_jax(g_vars), d_config, to_jax(d_vars) if d_vars else None,
               {"source": str(path), "source_format": raw.source_format})


def embedded_dir(name: str = "default") -> pathlib.Path:
  """Directory of the shipped model `name` (its model/, MODEL_CARD.md and samples.png)."""
  if name not in EMBEDDED_MODELS:
    raise ValueError(f"No embedded model {name!r}; the shipped ones are "
                     + ", ".join(EMBEDDED_PREFIX + n for n in EMBEDDED_MODELS) + ".")
  return EMBEDDED_DIR / EMBEDDED_MODELS[name]


def load_embedded(name: str = "default") -> Model:
  """A small StyleGAN2 we train and ship, by name (see its MODEL_CARD.md)."""
  path = embedded_dir(name) / "model"
  if not (path / "model.json").exists():
    raise FileNotFoundError(
        f"The embedded model is missing at {path}. It ships with the repository; reinstall, or "
        "train it with `python -m generators train` (see README), or pass --checkpoint.")
  return _load_native(path)
