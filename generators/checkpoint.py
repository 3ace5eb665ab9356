"""Our native model format, and the one `load` entry point that reads every supported format.

Native layout (a directory):

    model.json     {"format": "stylegan-inversion-jax", "version": 1, "generator": {config},
                    "discriminator": {config} | null, "metadata": {...}}
    state/         orbax-checkpoint of {"generator": variables, "discriminator": variables}

Everything else (NVlabs pickles, rosinality .pt, plain state dicts, TF pickles) goes through
`generators.formats.read_checkpoint` into official names, then `generators.convert`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import shutil
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from generators import convert, networks

log = logging.getLogger(__name__)

FORMAT_NAME = "stylegan-inversion-jax"
FORMAT_VERSION = 1
EMBEDDED_DIR = pathlib.Path(__file__).resolve().parent / "embedded"
# The models we train and ship, by name: `load("embedded:NAME")`, `load_embedded(NAME)`. Each
# directory holds model/, MODEL_CARD.md, samples.png; "default" is what a missing path means.
EMBEDDED_MODELS = {"default": ""}
EMBEDDED_PREFIX = "embedded:"


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
      raise ValueError("This checkpoint holds no discriminator (load a file that has D).")
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


def _load_native(path: pathlib.Path) -> Model:
  import orbax.checkpoint as ocp

  path = path.resolve()  # orbax needs an absolute path

  meta = json.loads((path / "model.json").read_text())
  if meta.get("format") != FORMAT_NAME:
    raise ValueError(f"{path}/model.json is not a {FORMAT_NAME} model description.")
  if meta.get("version", 0) > FORMAT_VERSION:
    raise ValueError(f"{path} was written by a newer version (format {meta['version']}); "
                     "upgrade stylegan-inversion-jax.")
  g_config = _config_from_json(networks.GeneratorConfig, meta["generator"])
  d_config = _config_from_json(networks.DiscriminatorConfig, meta.get("discriminator"))
  if not (path / "state").exists():
    raise FileNotFoundError(f"{path}/state (the orbax weights) is missing; the model directory "
                            "is incomplete. Copy the whole directory.")
  with ocp.StandardCheckpointer() as checkpointer:
    tree = checkpointer.restore(path / "state")
  to_jax = lambda t: jax.tree_util.tree_map(jnp.asarray, t)
  return Model(g_config, to_jax(tree["generator"]), d_config,
               to_jax(tree["discriminator"]) if d_config is not None else None,
               meta.get("metadata", {}))


def load(path: Optional[str | os.PathLike] = None, which: str = "G_ema",
         **config_overrides) -> Model:
  """Load a generator (and discriminator, where the file has one) from any supported file.

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
      raise ValueError(f"{path} is a directory without model.json; it is not a native model. "
                       "Pass the checkpoint file itself for NVlabs/rosinality/state-dict files.")
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
  to_jax = lambda t: jax.tree_util.tree_map(jnp.asarray, t)
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
