"""Official NVlabs state dicts <-> our Flax variables, with the architecture read off the shapes.

Every checkpoint format ends here: the readers in `generators.formats` turn a file into official
stylegan2-ada-pytorch names and layouts, and this module maps them onto `generators.networks`:

  official name                    Flax path                                  layout change
  mapping.fc0.weight [out, in]     params/mapping/fc0/weight [in, out]        transpose
  synthesis.b8.conv0.weight        params/synthesis/b8/conv0/weight           [O,I,kh,kw] -> [kh,kw,I,O]
  synthesis.b4.const [C, 4, 4]     params/synthesis/b4/const [4, 4, C]        CHW -> HWC
  mapping.w_avg, *.noise_const     buffers/...                                none
  D b4.fc.weight [out, C*4*4]      params/b4/fc/weight [4*4*C, out]           NCHW flatten -> NHWC
  *.resample_filter                (not stored)                               checked against ours

The architecture comes from the file's own init kwargs when it has them, otherwise from the
tensor shapes; what shapes cannot tell (conv_clamp, mapping lr multiplier, minibatch-stddev group
size) takes NVlabs' defaults unless the caller overrides it, and is logged.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from typing import Any, Mapping, Optional

import jax
import numpy as np

from generators import formats, networks, upfirdn

log = logging.getLogger(__name__)

StateDict = Mapping[str, np.ndarray]


class ConversionError(ValueError):
  """A state dict that does not fit the network: names the tensors and what was expected."""


# ----------------------------------------------------------------------------------------------
# Architecture from init kwargs or shapes.


def _resolutions(state: StateDict, pattern: str) -> list[int]:
  return sorted({int(m.group(1)) for k in state if (m := re.match(pattern, k))})


def _infer_channel_rule(channels: dict[int, int], what: str) -> tuple[int, int]:
  """(channel_base, channel_max) reproducing `channels[res] = min(base // res, max)`."""
  rule = formats.channel_rule(channels)
  if rule is None:
    raise ConversionError(
        f"{what}: channel counts {dict(sorted(channels.items()))} do not follow "
        "min(channel_base // res, channel_max); this is not a StyleGAN2 network.")
  return rule


def _require_lrelu(groups: Mapping[str, Mapping[str, Any]], what: str) -> None:
  """Our networks use leaky ReLU throughout, as every published StyleGAN2 does; refuse others."""
  for group, kwargs in groups.items():
    act = kwargs.get("activation", "lrelu")
    if act != "lrelu":
      raise ConversionError(f"{what}: {group}.activation={act!r} is not supported (only "
                            "'lrelu', the StyleGAN2 default).")


def generator_config_from_state(state: StateDict, kwargs: Optional[Mapping[str, Any]] = None,
                                **overrides) -> networks.GeneratorConfig:
  """GeneratorConfig from official init kwargs if given, else from the tensor shapes."""
  if kwargs:
    config = _generator_config_from_kwargs(kwargs)
  else:
    config = _generator_config_from_shapes(state)
  return dataclasses.replace(config, **overrides) if overrides else config


def _generator_config_from_kwargs(kwargs: Mapping[str, Any]) -> networks.GeneratorConfig:
  mapping_kwargs = dict(kwargs.get("mapping_kwargs") or {})
  synthesis_kwargs = dict(kwargs.get("synthesis_kwargs") or {})
  known = {"channel_base", "channel_max", "num_fp16_res", "conv_clamp", "architecture",
           "use_noise", "resample_filter", "fp16_channels_last", "activation",
           "fused_modconv_default"}
  unknown = set(synthesis_kwargs) - known
  if unknown:
    raise ConversionError(
        f"synthesis_kwargs {sorted(unknown)} are not StyleGAN2 options (a StyleGAN3 or other "
        "generator?); only NVlabs StyleGAN2 generators are supported.")
  _require_lrelu({"synthesis_kwargs": synthesis_kwargs, "mapping_kwargs": mapping_kwargs},
                 "generator")
  taps = synthesis_kwargs.get("resample_filter", upfirdn.DEFAULT_TAPS)
  return networks.GeneratorConfig(
      z_dim=int(kwargs["z_dim"]), w_dim=int(kwargs["w_dim"]),
      img_resolution=int(kwargs["img_resolution"]), img_channels=int(kwargs["img_channels"]),
      c_dim=int(kwargs.get("c_dim", 0)),
      mapping_layers=int(mapping_kwargs.get("num_layers", 8)),
      mapping_lr_multiplier=float(mapping_kwargs.get("lr_multiplier", 0.01)),
      embed_features=mapping_kwargs.get("embed_features"),
      layer_features=mapping_kwargs.get("layer_features"),
      w_avg_beta=float(mapping_kwargs.get("w_avg_beta", 0.995)),
      channel_base=int(synthesis_kwargs.get("channel_base", 32768)),
      channel_max=int(synthesis_kwargs.get("channel_max", 512)),
      conv_clamp=synthesis_kwargs.get("conv_clamp"),
      architecture=synthesis_kwargs.get("architecture", "skip"),
      use_noise=bool(synthesis_kwargs.get("use_noise", True)),
      resample_taps=tuple(int(t) for t in taps))


def _generator_config_from_shapes(state: StateDict) -> networks.GeneratorConfig:
  def shape(name):
    if name not in state:
      raise ConversionError(f"Generator state has no '{name}'; it is not a StyleGAN2 generator "
                            f"(first keys: {sorted(state)[:8]}).")
    return state[name].shape

  num_layers = len(_resolutions(state, r"mapping\.fc(\d+)\.weight$"))
  if num_layers == 0:
    shape("mapping.fc0.weight")
  resolutions = _resolutions(state, r"synthesis\.b(\d+)\.")
  img_resolution = max(resolutions)
  w_dim = shape(f"mapping.fc{num_layers - 1}.weight")[0]
  c_dim = embed = 0
  if "mapping.embed.weight" in state:
    embed, c_dim = shape("mapping.embed.weight")
  z_dim = shape("mapping.fc0.weight")[1] - embed
  channels = {res: shape(f"synthesis.b{res}.conv1.weight")[0] for res in resolutions}
  channel_base, channel_max = _infer_channel_rule(channels, "generator")
  has_torgb = [f"synthesis.b{res}.torgb.weight" in state for res in resolutions]
  if any(f"synthesis.b{res}.skip.weight" in state for res in resolutions):
    architecture = "resnet"
  elif all(has_torgb):
    architecture = "skip"
  else:
    architecture = "orig"
  log.info("Generator kwargs not in the file: inferred %d px, %d channels, z=%d, w=%d, %d mapping "
           "layers, '%s'; conv_clamp=None and lr_multiplier=0.01 assumed (pass overrides if "
           "the model was trained otherwise).", img_resolution,
           shape(f"synthesis.b{img_resolution}.torgb.weight")[0], z_dim, w_dim, num_layers,
           architecture)
  hidden = shape("mapping.fc0.weight")[0] if num_layers > 1 else None
  return networks.GeneratorConfig(
      z_dim=z_dim, w_dim=w_dim, img_resolution=img_resolution,
      img_channels=shape(f"synthesis.b{img_resolution}.torgb.weight")[0], c_dim=c_dim,
      mapping_layers=num_layers, embed_features=embed or None,
      layer_features=hidden if hidden != w_dim else None,
      channel_base=channel_base, channel_max=channel_max, architecture=architecture,
      use_noise="synthesis.b4.conv1.noise_strength" in state)


def discriminator_config_from_state(state: StateDict, kwargs: Optional[Mapping[str, Any]] = None,
                                    **overrides) -> networks.DiscriminatorConfig:
  """DiscriminatorConfig from official init kwargs if given, else from the tensor shapes."""
  if kwargs:
    epilogue = dict(kwargs.get("epilogue_kwargs") or {})
    mapping_kwargs = dict(kwargs.get("mapping_kwargs") or {})
    block = dict(kwargs.get("block_kwargs") or {})
    _require_lrelu({"block_kwargs": block, "epilogue_kwargs": epilogue,
                    "mapping_kwargs": mapping_kwargs}, "discriminator")
    taps = block.get("resample_filter", upfirdn.DEFAULT_TAPS)
    config = networks.DiscriminatorConfig(
        img_resolution=int(kwargs["img_resolution"]), img_channels=int(kwargs["img_channels"]),
        c_dim=int(kwargs.get("c_dim", 0)), architecture=kwargs.get("architecture", "resnet"),
        channel_base=int(kwargs.get("channel_base", 32768)),
        channel_max=int(kwargs.get("channel_max", 512)), conv_clamp=kwargs.get("conv_clamp"),
        cmap_dim=kwargs.get("cmap_dim"),
        mbstd_group_size=epilogue.get("mbstd_group_size", 4),
        mbstd_num_channels=int(epilogue.get("mbstd_num_channels", 1)),
        mapping_layers=int(mapping_kwargs.get("num_layers", 8)),
        resample_taps=tuple(int(t) for t in taps))
  else:
    resolutions = _resolutions(state, r"b(\d+)\.conv0\.weight$")
    if not resolutions or "b4.conv.weight" not in state:
      raise ConversionError(f"Discriminator state lacks 'b<res>.conv0.weight' / 'b4.conv.weight'; "
                            f"not a StyleGAN2 discriminator (first keys: {sorted(state)[:8]}).")
    img_resolution = max(resolutions)
    channels = {res: state[f"b{res}.conv0.weight"].shape[0] for res in resolutions}
    channels[4] = state["b4.conv.weight"].shape[0]
    channel_base, channel_max = _infer_channel_rule(channels, "discriminator")
    if any(f"b{res}.skip.weight" in state for res in resolutions):
      architecture = "resnet"
    elif "b4.fromrgb.weight" in state:
      architecture = "skip"
    else:
      architecture = "orig"
    c_dim = state["mapping.embed.weight"].shape[1] if "mapping.embed.weight" in state else 0
    mapping_layers = len(_resolutions(state, r"mapping\.fc(\d+)\.weight$")) or 8
    log.info("Discriminator kwargs not in the file: inferred %d px, '%s'; conv_clamp=None and "
             "mbstd_group_size=4 assumed.", img_resolution, architecture)
    config = networks.DiscriminatorConfig(
        img_resolution=img_resolution,
        img_channels=state[f"b{img_resolution}.fromrgb.weight"].shape[1], c_dim=c_dim,
        architecture=architecture, channel_base=channel_base, channel_max=channel_max,
        cmap_dim=state["b4.out.weight"].shape[0] if c_dim else None,
        mbstd_num_channels=state["b4.conv.weight"].shape[1] - channels[4],
        mapping_layers=mapping_layers)
  return dataclasses.replace(config, **overrides) if overrides else config


# ----------------------------------------------------------------------------------------------
# Names and layouts.


def _flat(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flat(value, prefix + (key,)))
    else:
      out[prefix + (key,)] = value
  return out


def _unflat(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


def _to_jax_layout(name: str, array: np.ndarray, fc_nchw_shape: Optional[tuple[int, int, int]]):
  """Official layout -> ours for one tensor (`fc_nchw_shape` for the D's flattening fc)."""
  leaf = name.rsplit(".", 1)[-1]
  if leaf == "weight" and array.ndim == 4:
    return array.transpose(2, 3, 1, 0)
  if leaf == "weight" and array.ndim == 2:
    if fc_nchw_shape is not None:
      c, h, w = fc_nchw_shape
      array = array.reshape(array.shape[0], c, h, w).transpose(0, 2, 3, 1).reshape(array.shape[0], -1)
    return array.T
  if leaf == "const":
    return array.transpose(1, 2, 0)
  return array


def _to_official_layout(name: str, array: np.ndarray, fc_nchw_shape):
  leaf = name.rsplit(".", 1)[-1]
  if leaf == "weight" and array.ndim == 4:
    return array.transpose(3, 2, 0, 1)
  if leaf == "weight" and array.ndim == 2:
    array = array.T
    if fc_nchw_shape is not None:
      c, h, w = fc_nchw_shape
      array = array.reshape(array.shape[0], h, w, c).transpose(0, 3, 1, 2).reshape(array.shape[0], -1)
    return array
  if leaf == "const":
    return array.transpose(2, 0, 1)
  return array


def _official_names(template: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
  """Official dotted name -> Flax path, for every leaf of a variables template."""
  return {".".join(path[1:]): path for path in _flat(template)}


def _check_filters(state: StateDict, taps: tuple[int, ...]) -> None:
  expected = upfirdn.filter_2d(upfirdn.setup_filter(taps))
  for name, value in state.items():
    if name.endswith("resample_filter") and not np.allclose(value, expected, atol=1e-6):
      raise ConversionError(f"'{name}' is not the [{','.join(map(str, taps))}] filter this "
                            "network was configured with.")


def _to_variables(state: StateDict, template: Mapping[str, Any], what: str,
                  fc_name: Optional[str] = None, fc_nchw_shape=None) -> dict[str, Any]:
  names = _official_names(template)
  given = {k for k in state if not k.endswith("resample_filter")}
  missing = sorted(set(names) - given)
  unexpected = sorted(given - set(names))
  if missing or unexpected:
    raise ConversionError(
        f"{what} state dict does not match the inferred architecture.\n"
        f"  missing keys ({len(missing)}): {missing[:20]}{' ...' if len(missing) > 20 else ''}\n"
        f"  unexpected keys ({len(unexpected)}): {unexpected[:20]}"
        f"{' ...' if len(unexpected) > 20 else ''}\n"
        "If the file is right, pass its architecture explicitly (config overrides).")
  flat = {}
  template_flat = _flat(template)
  for name, path in names.items():
    array = _to_jax_layout(name, np.asarray(state[name], dtype=np.float32),
                           fc_nchw_shape if name == fc_name else None)
    expected = template_flat[path].shape
    if array.shape != tuple(expected):
      raise ConversionError(f"{what} tensor '{name}' has shape {np.shape(state[name])}, the "
                            f"architecture needs {tuple(expected)} (in our layout).")
    flat[path] = array
  return _unflat(flat)


def _from_variables(variables: Mapping[str, Any], fc_name=None, fc_nchw_shape=None):
  out = {}
  for name, path in _official_names(variables).items():
    array = np.asarray(_flat(variables)[path], dtype=np.float32)
    out[name] = _to_official_layout(name, array, fc_nchw_shape if name == fc_name else None)
  return out


def _template(init_fn, config) -> Mapping[str, Any]:
  return jax.eval_shape(lambda: init_fn(config, jax.random.PRNGKey(0)))


def generator_from_state(state: StateDict, kwargs: Optional[Mapping[str, Any]] = None,
                         **overrides) -> tuple[networks.GeneratorConfig, dict[str, Any]]:
  """Official G state dict (+ optional init kwargs) -> (config, Flax variables)."""
  config = generator_config_from_state(state, kwargs, **overrides)
  _check_filters(state, config.resample_taps)
  template = _template(networks.init_generator, config)
  return config, _to_variables(state, template, "Generator")


def discriminator_from_state(state: StateDict, kwargs: Optional[Mapping[str, Any]] = None,
                             **overrides) -> tuple[networks.DiscriminatorConfig, dict[str, Any]]:
  """Official D state dict (+ optional init kwargs) -> (config, Flax variables)."""
  config = discriminator_config_from_state(state, kwargs, **overrides)
  _check_filters(state, config.resample_taps)
  template = _template(networks.init_discriminator, config)
  c4 = config.channels(4)
  return config, _to_variables(state, template, "Discriminator", "b4.fc.weight", (c4, 4, 4))


def generator_to_state(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Flax G variables -> official names and layouts (resample filters omitted)."""
  return _from_variables(variables)


def discriminator_to_state(config: networks.DiscriminatorConfig,
                           variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Flax D variables -> official names and layouts (resample filters omitted)."""
  return _from_variables(variables, "b4.fc.weight", (config.channels(4), 4, 4))


def num_params(variables: Mapping[str, Any]) -> int:
  return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(variables.get("params", {}))))
