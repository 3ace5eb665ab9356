"""Recognise a StyleGAN2 checkpoint from its bytes; return its weights under official names.

`read_checkpoint(path)` reads the files our users have, without torch, and returns a
`RawCheckpoint` whose state dicts use the names and layouts of NVlabs stylegan2-ada-pytorch
`training/networks.py` (`Generator.state_dict()` / `Discriminator.state_dict()`):

  source_format    what the file is                                   how it is recognised
  'nvlabs-pickle'  stylegan2-ada-pytorch / stylegan3 network pickle   a pickle (or torch.save)
                   (`network-snapshot-*.pkl`): G, D, G_ema as        holding G / D / G_ema
                   torch_utils.persistence objects                    persistent objects
  'rosinality'     rosinality/stylegan2-pytorch `.pt` (also e4e,      torch.save dict with
                   pSp, SFE): {'g_ema', 'g', 'd', 'latent_avg'}       `style.1.weight` names
  'state-dict'     torch.save of official state dicts, optionally     official names such as
                   prefixed (`G_ema.`, `D.`, ...) or nested dicts     `synthesis.b4.const`
  'tf-pickle'      original TensorFlow StyleGAN2 pickle (G, D, Gs)    dnnlib.tflib Networks

The container is recognised from the first bytes (zip archive, legacy torch magic number, or a
pickle), never from the file extension; the format from the object inside.

Two things are optional, as inversion needs neither. The `*.resample_filter` buffers are a
constant, the [1, 3, 3, 1] FIR filter (outer product, normalised; or the filter the file's init
kwargs name): a file without them loads with the constant filled in, and one that stores another
filter is refused (`CheckpointError`, naming the buffer). The discriminator: one whose tensors do
not fit (missing, unexpected or misshapen ones) is left out, `discriminator` is None and a note
starting with `DISCRIMINATOR_DROPPED` says why; the generator still loads.

Conversion conventions (verified, see the end of this docstring):

NVlabs pickles: each network's nested module state (`_parameters`, `_buffers`, `_modules`)
flattens to the state dict as-is; the kwargs are the recorded `_init_kwargs`. The StyleGAN2 of
NVlabs' stylegan3 repository (its `stylegan2-*.pkl` downloads, `--cfg=stylegan2` runs and
legacy.py conversions) has the same tensors; its flat synthesis kwargs are nested and its
conv_clamp default (256, not None) is written out.

TensorFlow pickles: as stylegan2-ada-pytorch `legacy.py` converts them: conv kernels
`[kh, kw, I, O] -> [O, I, kh, kw]`, dense `[I, O] -> [O, I]`, `mod_bias + 1` (TF adds the
affine bias init of 1 at run time, PyTorch stores it), `Conv0_up` (and G `Skip`) kernels flipped
in both spatial axes (TF's transposed-conv up-sampling flips, NVlabs PyTorch does not), const
`[1, C, 4, 4] -> [C, 4, 4]`, `noise<i>` `[1, 1, H, W] -> noise_const [H, W]`,
`dlatent_avg -> mapping.w_avg`; kwargs from the network's `static_kwargs` (TF `fmap_base` is
half of PyTorch `channel_base`).

rosinality stylegan2-pytorch (`model.py`) -> official:

  rosinality                                 official                              change
  style.{i+1}.weight / .bias (EqualLinear)   mapping.fc{i}.weight / .bias          none
  input.input [1, C, 4, 4] (ConstantInput)   synthesis.b4.const [C, 4, 4]          drop axis 0
  conv1.* / to_rgb1.*                        synthesis.b4.conv1.* / b4.torgb.*
  convs.{2k} (upsample=True) / convs.{2k+1}  synthesis.b{8*2^k}.conv0 / .conv1
  to_rgbs.{k}                                synthesis.b{8*2^k}.torgb
  <conv>.conv.weight [1, O, I, k, k]         <layer>.weight [O, I, k, k]           drop axis 0
  <conv>.conv.modulation.weight / .bias      <layer>.affine.weight / .bias         none (+1 is
                                                                                   stored in both)
  <conv>.noise.weight [1] (NoiseInjection)   <layer>.noise_strength []             reshape
  <conv>.activate.bias (FusedLeakyReLU)      <layer>.bias                          none
  to_rgb*.bias [1, 3, 1, 1]                  torgb.bias [3]                        reshape
  noises.noise_{i} [1, 1, H, W]              noise_const [H, W] of layer i in      reshape
                                             order b4.conv1, b8.conv0, b8.conv1, ...
  *.blur.kernel, *.upsample.kernel           *.resample_filter [4, 4]              / sum (1)
  latent_avg [w_dim] (convert_weight.py)     mapping.w_avg                         none
  D convs.0.0.weight / convs.0.1.bias        b{R}.fromrgb.weight / .bias
  D convs.{j}.conv1.0 / conv1.1 (bias)       b{R/2^(j-1)}.conv0.weight / .bias
  D convs.{j}.conv2.1 / conv2.2 (bias)       b{R/2^(j-1)}.conv1.weight / .bias     (conv2.0 is
  D convs.{j}.skip.1.weight                  b{R/2^(j-1)}.skip.weight              the Blur)
  D final_conv.0.weight / final_conv.1.bias  b4.conv.weight / .bias
  D final_linear.0 / final_linear.1          b4.fc / b4.out

  Nothing is rescaled. Both codebases store raw parameters and apply the same gains at run
  time: EqualLinear keeps `weight = randn / lr_mul` and multiplies by
  `scale = lr_mul / sqrt(fan_in)` and the bias by `lr_mul` (FullyConnectedLayer:
  `weight_gain = lr_multiplier / sqrt(in)`, `bias_gain = lr_multiplier`), lr_mul = 0.01 in
  the mapping in both; EqualConv2d's `1 / sqrt(in * k * k)` is Conv2dLayer's `weight_gain`;
  ModulatedConv2d's `scale` is cancelled by demodulation (as is its absence in SynthesisLayer;
  they differ only inside the 1e-8 epsilon), and in ToRGB it equals ToRGBLayer's
  `weight_gain`. FusedLeakyReLU is `lrelu(x + b, 0.2) * sqrt(2)` = bias_act 'lrelu'. Both
  converters from TF store `mod_bias + 1` and flip the `Conv0_up` kernel, and both run the
  up-sampling conv as `conv_transpose2d` of the unflipped stored kernel followed by the
  [1, 3, 3, 1] blur (rosinality `Blur(pad=(2, 1))`, x4 kernel; NVlabs `upfirdn2d`, gain 4),
  so kernels copy over unflipped. rosinality's ResBlock `(out + skip) / sqrt(2)` is NVlabs'
  `gain=sqrt(0.5)` on both branches; its minibatch-stddev (group 4, 1 feature) is NVlabs'.
  Differences: rosinality has no `conv_clamp` (we report `conv_clamp=None`) and no `w_avg`
  buffer: we take `latent_avg` when the file has it (first row of a per-layer [n, w_dim]
  copy), else estimate it as rosinality's `mean_latent` does (mapping of 10 000 fixed
  standard-normal z, recorded in `notes`).

  Verified: (1) in tests/test_formats.py the mapping is bit-exact on files written by
  tests/torch_format_writer.py (`official_to_rosinality`, its exact inverse); (2) once, outside
  the test suite, with torch 2.13: a plain-torch re-implementation of rosinality's `Generator`
  and `Discriminator` forward passes (the native upfirdn2d and CPU fused_leaky_relu paths of
  `model.py` / `op/`), run in float64 on the fixture's official weights stored in rosinality
  layout by that inverse mapping and read back with real `torch.load`, reproduces the fixture's
  official `img`, `img_trunc`, `img_mixed` (max abs error 2.7e-6 on values up to 5.6; no
  conv_clamp was active), `mapping(z)` (1.2e-6) and `d_logits_fake` / `d_logits_real`
  (2.7e-7). Negative controls in the same run: flipping the up-sampling kernels, swapping
  noise_1/noise_2 or storing the affine bias without its +1 each give errors of 1.3 to 1.9.

Example:
  >>> raw = read_checkpoint('stylegan2-ffhq-config-f.pt')
  >>> raw.source_format, raw.generator['synthesis.b4.const'].shape
  ('rosinality', (512, 4, 4))
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping

import numpy as np

from generators import torch_io
from generators.torch_io import CheckpointError

__all__ = [
    'RawCheckpoint',
    'read_checkpoint',
    'CheckpointError',
    'UnknownFormatError',
    'KeyMismatchError',
    'ShapeMismatchError',
    'SOURCE_FORMATS',
    'DISCRIMINATOR_DROPPED',
    'generator_spec',
    'discriminator_spec',
    'infer_generator_kwargs',
    'infer_discriminator_kwargs',
]

SOURCE_FORMATS = ('nvlabs-pickle', 'rosinality', 'state-dict', 'tf-pickle')
WHICH = ('G_ema', 'G')
DEFAULT_FILTER = [1, 3, 3, 1]
W_AVG_SAMPLES = 10_000      # z samples for a w_avg estimate (rosinality files without latent_avg)
W_AVG_SEED = 0
_LIST_LIMIT = 20            # names listed in a key-mismatch message
# The note (in RawCheckpoint.notes) when a file's discriminator does not fit and is left out.
DISCRIMINATOR_DROPPED = 'discriminator not loaded'


class UnknownFormatError(CheckpointError):
  """The file is readable but holds none of the supported checkpoint layouts."""


class KeyMismatchError(CheckpointError):
  """Missing or unexpected tensor names (both listed in the message)."""


class ShapeMismatchError(CheckpointError):
  """A tensor has another shape than the architecture needs (named in the message)."""


@dataclasses.dataclass
class RawCheckpoint:
  """A checkpoint's weights under official stylegan2-ada-pytorch names and layouts."""

  source_format: str                        # one of SOURCE_FORMATS
  generator: dict[str, np.ndarray]          # official G state_dict names + layouts
  discriminator: dict[str, np.ndarray] | None
  generator_kwargs: dict | None             # official init kwargs (z_dim, c_dim, w_dim,
  #                                           img_resolution, img_channels, mapping_kwargs,
  #                                           synthesis_kwargs) when the file determines them,
  #                                           always in stylegan2-ada-pytorch's layout
  discriminator_kwargs: dict | None
  path: str
  which: str = 'G_ema'                      # network taken where the file has several
  architecture: str = 'stylegan2'           # 'stylegan3' for alias-free NVlabs generators
  #                                           (their own official names; not validated here)
  notes: tuple[str, ...] = ()               # conversions applied / values estimated


# ------------------------------------------------------------------------------------------
# Official names and shapes (stylegan2-ada-pytorch training/networks.py).

def _channels(channel_base: int, channel_max: int, resolutions) -> dict[int, int]:
  return {res: min(channel_base // res, channel_max) for res in resolutions}


def _mapping_spec(prefix: str, z_dim: int, c_dim: int, w_dim: int, mk: Mapping,
                  with_w_avg: bool) -> dict[str, tuple]:
  """MappingNetwork: [w_avg], [embed], fc0 .. fc{n-1}."""
  num_layers = int(mk.get('num_layers', 8))
  embed = mk.get('embed_features')
  embed = w_dim if embed is None else int(embed)
  layer = mk.get('layer_features')
  layer = w_dim if layer is None else int(layer)
  if c_dim == 0:
    embed = 0
  features = [z_dim + embed] + [layer] * (num_layers - 1) + [w_dim]
  spec: dict[str, tuple] = {}
  if with_w_avg:
    spec[f'{prefix}w_avg'] = (w_dim,)
  if c_dim > 0:
    spec[f'{prefix}embed.weight'] = (embed, c_dim)
    spec[f'{prefix}embed.bias'] = (embed,)
  for i in range(num_layers):
    spec[f'{prefix}fc{i}.weight'] = (features[i + 1], features[i])
    spec[f'{prefix}fc{i}.bias'] = (features[i + 1],)
  return spec


def generator_spec(kwargs: Mapping[str, Any]) -> dict[str, tuple]:
  """Official `Generator(**kwargs).state_dict()` names -> shapes, in state_dict order."""
  z_dim, w_dim = int(kwargs['z_dim']), int(kwargs['w_dim'])
  c_dim = int(kwargs.get('c_dim', 0) or 0)
  res_max, img_channels = int(kwargs['img_resolution']), int(kwargs.get('img_channels', 3))
  mk = kwargs.get('mapping_kwargs') or {}
  sk = kwargs.get('synthesis_kwargs') or {}
  arch = sk.get('architecture', 'skip')
  use_noise = bool(sk.get('use_noise', True))
  taps = len(sk.get('resample_filter') or DEFAULT_FILTER)
  resolutions = [2 ** i for i in range(2, int(math.log2(res_max)) + 1)]
  ch = _channels(int(sk.get('channel_base', 32768)), int(sk.get('channel_max', 512)),
                 resolutions)
  spec: dict[str, tuple] = {}

  def layer(name, cin, cout, res):
    spec[f'{name}.weight'] = (cout, cin, 3, 3)
    if use_noise:
      spec[f'{name}.noise_strength'] = ()
    spec[f'{name}.bias'] = (cout,)
    spec[f'{name}.resample_filter'] = (taps, taps)
    if use_noise:
      spec[f'{name}.noise_const'] = (res, res)
    spec[f'{name}.affine.weight'] = (cin, w_dim)
    spec[f'{name}.affine.bias'] = (cin,)

  for res in resolutions:
    b = f'synthesis.b{res}'
    cin, cout = (ch[res // 2] if res > 4 else 0), ch[res]
    if cin == 0:
      spec[f'{b}.const'] = (cout, res, res)
    spec[f'{b}.resample_filter'] = (taps, taps)
    if cin:
      layer(f'{b}.conv0', cin, cout, res)
    layer(f'{b}.conv1', cout, cout, res)
    if res == res_max or arch == 'skip':
      spec[f'{b}.torgb.weight'] = (img_channels, cout, 1, 1)
      spec[f'{b}.torgb.bias'] = (img_channels,)
      spec[f'{b}.torgb.affine.weight'] = (cout, w_dim)
      spec[f'{b}.torgb.affine.bias'] = (cout,)
    if cin and arch == 'resnet':
      spec[f'{b}.skip.weight'] = (cout, cin, 1, 1)
      spec[f'{b}.skip.resample_filter'] = (taps, taps)
  with_w_avg = mk.get('w_avg_beta', 0.995) is not None
  spec.update(_mapping_spec('mapping.', z_dim, c_dim, w_dim, mk, with_w_avg))
  return spec


def discriminator_spec(kwargs: Mapping[str, Any]) -> dict[str, tuple]:
  """Official `Discriminator(**kwargs).state_dict()` names -> shapes, in state_dict order."""
  res_max, img_channels = int(kwargs['img_resolution']), int(kwargs.get('img_channels', 3))
  c_dim = int(kwargs.get('c_dim', 0) or 0)
  arch = kwargs.get('architecture', 'resnet')
  bk = kwargs.get('block_kwargs') or {}
  ek = kwargs.get('epilogue_kwargs') or {}
  taps = len(bk.get('resample_filter') or DEFAULT_FILTER)
  mbstd = int(ek.get('mbstd_num_channels', 1))
  resolutions = [2 ** i for i in range(int(math.log2(res_max)), 2, -1)]
  ch = _channels(int(kwargs.get('channel_base', 32768)), int(kwargs.get('channel_max', 512)),
                 resolutions + [4])
  cmap_dim = kwargs.get('cmap_dim')
  cmap_dim = ch[4] if cmap_dim is None else int(cmap_dim)
  if c_dim == 0:
    cmap_dim = 0
  spec: dict[str, tuple] = {}

  def conv(name, cin, cout, k, bias=True):
    spec[f'{name}.weight'] = (cout, cin, k, k)
    if bias:
      spec[f'{name}.bias'] = (cout,)
    spec[f'{name}.resample_filter'] = (taps, taps)

  for res in resolutions:
    b, tmp, cout = f'b{res}', ch[res], ch[res // 2]
    spec[f'{b}.resample_filter'] = (taps, taps)
    if res == res_max or arch == 'skip':
      conv(f'{b}.fromrgb', img_channels, tmp, 1)
    conv(f'{b}.conv0', tmp, tmp, 3)
    conv(f'{b}.conv1', tmp, cout, 3)
    if arch == 'resnet':
      conv(f'{b}.skip', tmp, cout, 1, bias=False)
  if c_dim > 0:
    spec.update(_mapping_spec('mapping.', 0, c_dim, cmap_dim,
                              kwargs.get('mapping_kwargs') or {}, with_w_avg=False))
  if arch == 'skip':
    conv('b4.fromrgb', img_channels, ch[4], 1)
  conv('b4.conv', ch[4] + mbstd, ch[4], 3)
  spec['b4.fc.weight'] = (ch[4], ch[4] * 16)
  spec['b4.fc.bias'] = (ch[4],)
  spec['b4.out.weight'] = (cmap_dim or 1, ch[4])
  spec['b4.out.bias'] = (cmap_dim or 1,)
  return spec


# ------------------------------------------------------------------------------------------
# Architecture from shapes (for validation when the file has no kwargs).

def _resolutions(sd: Mapping[str, Any], pattern: str) -> list[int]:
  return sorted({int(m.group(1)) for k in sd if (m := re.match(pattern, k))})


def channel_rule(channels: Mapping[int, int]) -> tuple[int, int] | None:
  """(channel_base, channel_max) with channels[res] = min(base // res, max), or None.

  Every res bounds base from below by res * channels[res] (below the maximum: base // res =
  channels[res]; at it: base // res >= max). The largest bound is the smallest base that can
  fit, then checked against all: a base that is not a multiple of every res (1000: 31
  channels at 32 px, 15 at 64 px) is found too."""
  channel_max = max(channels.values())
  channel_base = max(res * c for res, c in channels.items())
  ok = all(min(channel_base // r, channel_max) == c for r, c in channels.items())
  return (channel_base, channel_max) if ok else None


def _filter_error(name: str, value, taps, what: str, where: str) -> CheckpointError:
  """A stored resample filter that is not the constant `_setup_filter(taps)`."""
  value = np.asarray(value, np.float64)
  if value.ndim == 2 and np.isfinite(value).all() and value.sum() != 0:
    got = value.sum(axis=1) / value.sum() * sum(taps)
    held = f"the [{', '.join(f'{t:.3g}' for t in got)}] filter"
  elif not np.isfinite(value).all() or value.sum() == 0:
    held = 'no low-pass filter (non-finite values or a zero sum)'
  else:
    held = f'an array of shape {value.shape}'
  return CheckpointError(
      f'{where}: {what} buffer {name!r} holds {held}, not the resample filter the network '
      f'uses: a constant, the [{", ".join(map(str, taps))}] FIR filter (its outer product, '
      'normalised) in every up/down-sampling layer. A network built with another filter is '
      'not supported here, or the file is corrupt. (Files without these buffers load: the '
      'constant is filled in.)')


def _filter_taps(f: np.ndarray | None, name: str, what: str, where: str) -> list:
  """The taps of a stored resample filter, which must be the [1, 3, 3, 1] constant (a file
  without init kwargs cannot declare another); None (not stored) is the constant too."""
  if f is None:
    return list(DEFAULT_FILTER)
  f = np.asarray(f, np.float64)
  expected = _setup_filter(DEFAULT_FILTER)
  if f.shape != expected.shape or not np.allclose(f / (f.sum() or 1), expected, atol=1e-6):
    raise _filter_error(name, f, DEFAULT_FILTER, what, where)
  return list(DEFAULT_FILTER)


def _need(sd: Mapping[str, np.ndarray], names: list[str], what: str, where: str):
  missing = [n for n in names if n not in sd]
  if missing:
    raise KeyMismatchError(
        f'{where}: {what}: missing keys ({len(missing)}): {_listing(missing)}; the tensors '
        'needed to tell the architecture are absent.')


def infer_generator_kwargs(sd: Mapping[str, np.ndarray], where: str = 'state dict') -> dict:
  """Official Generator init kwargs that reproduce the shapes of `sd` (conv_clamp unknown)."""
  resolutions = _resolutions(sd, r'synthesis\.b(\d+)\.')
  num_layers = len(_resolutions(sd, r'mapping\.fc(\d+)\.weight$'))
  _need(sd, ['synthesis.b4.conv1.weight', 'synthesis.b4.conv1.affine.weight',
             'mapping.fc0.weight'], 'generator', where)
  res_max = max(resolutions)
  _need(sd, [f'synthesis.b{res_max}.torgb.weight']
        + [f'synthesis.b{r}.conv1.weight' for r in resolutions], 'generator', where)
  channels = {r: int(sd[f'synthesis.b{r}.conv1.weight'].shape[0]) for r in resolutions}
  rule = channel_rule(channels)
  if rule is None:
    raise ShapeMismatchError(
        f'{where}: generator channel counts {channels} do not follow '
        'min(channel_base // res, channel_max): not a StyleGAN2 generator.')
  w_dim = int(sd['synthesis.b4.conv1.affine.weight'].shape[1])
  c_dim = embed = 0
  if 'mapping.embed.weight' in sd:
    embed, c_dim = (int(s) for s in sd['mapping.embed.weight'].shape)
  fc0 = sd['mapping.fc0.weight'].shape
  if any(f'synthesis.b{r}.skip.weight' in sd for r in resolutions):
    arch = 'resnet'
  elif all(f'synthesis.b{r}.torgb.weight' in sd for r in resolutions):
    arch = 'skip'
  else:
    arch = 'orig'
  mk: dict[str, Any] = {'num_layers': num_layers}
  if c_dim:
    mk['embed_features'] = embed
  if num_layers > 1 and int(fc0[0]) != w_dim:
    mk['layer_features'] = int(fc0[0])
  if 'mapping.w_avg' not in sd:
    mk['w_avg_beta'] = None
  return {
      'z_dim': int(fc0[1]) - embed, 'c_dim': c_dim, 'w_dim': w_dim,
      'img_resolution': res_max,
      'img_channels': int(sd[f'synthesis.b{res_max}.torgb.weight'].shape[0]),
      'mapping_kwargs': mk,
      'synthesis_kwargs': {
          'channel_base': rule[0], 'channel_max': rule[1], 'architecture': arch,
          'use_noise': any(k.endswith('.noise_strength') for k in sd),
          'resample_filter': _filter_taps(sd.get('synthesis.b4.resample_filter'),
                                          'synthesis.b4.resample_filter', 'generator', where),
      },
  }


def infer_discriminator_kwargs(sd: Mapping[str, np.ndarray],
                               where: str = 'state dict') -> dict:
  """Official Discriminator init kwargs that reproduce the shapes of `sd`."""
  resolutions = _resolutions(sd, r'b(\d+)\.conv0\.weight$')
  _need(sd, ['b4.conv.weight', 'b4.out.weight'], 'discriminator', where)
  if not resolutions:
    _need(sd, ['b8.conv0.weight'], 'discriminator', where)
  res_max = max(resolutions)
  _need(sd, [f'b{res_max}.fromrgb.weight'], 'discriminator', where)
  channels = {r: int(sd[f'b{r}.conv0.weight'].shape[0]) for r in resolutions}
  channels[4] = int(sd['b4.conv.weight'].shape[0])
  rule = channel_rule(channels)
  if rule is None:
    raise ShapeMismatchError(
        f'{where}: discriminator channel counts {channels} do not follow '
        'min(channel_base // res, channel_max): not a StyleGAN2 discriminator.')
  if any(f'b{r}.skip.weight' in sd for r in resolutions):
    arch = 'resnet'
  elif 'b4.fromrgb.weight' in sd:
    arch = 'skip'
  else:
    arch = 'orig'
  c_dim = int(sd['mapping.embed.weight'].shape[1]) if 'mapping.embed.weight' in sd else 0
  kwargs: dict[str, Any] = {
      'c_dim': c_dim, 'img_resolution': res_max,
      'img_channels': int(sd[f'b{res_max}.fromrgb.weight'].shape[1]),
      'architecture': arch, 'channel_base': rule[0], 'channel_max': rule[1],
      'block_kwargs': {'resample_filter': _filter_taps(
          sd.get(f'b{res_max}.resample_filter'), f'b{res_max}.resample_filter', 'discriminator',
          where)},
      'epilogue_kwargs': {'mbstd_num_channels': int(sd['b4.conv.weight'].shape[1]) - channels[4]},
  }
  if c_dim:
    kwargs['cmap_dim'] = int(sd['b4.out.weight'].shape[0])
    mk: dict[str, Any] = {'num_layers': len(_resolutions(sd, r'mapping\.fc(\d+)\.weight$'))}
    mk['embed_features'] = int(sd['mapping.embed.weight'].shape[0])
    if mk['num_layers'] > 1 and int(sd['mapping.fc0.weight'].shape[0]) != kwargs['cmap_dim']:
      mk['layer_features'] = int(sd['mapping.fc0.weight'].shape[0])
    kwargs['mapping_kwargs'] = mk
  return kwargs


def _listing(names) -> str:
  names = list(names)
  shown = ', '.join(names[:_LIST_LIMIT])
  return shown + (f', ... ({len(names) - _LIST_LIMIT} more)' if len(names) > _LIST_LIMIT else '')


def _constant_filters(sd: Mapping[str, np.ndarray], spec: Mapping[str, tuple], taps,
                      what: str, where: str) -> dict[str, np.ndarray]:
  """`resample_filter` buffers are a constant, `_setup_filter(taps)`: the ones `sd` lacks are
  filled in, the ones it has must equal it."""
  expected = _setup_filter(taps)
  out = dict(sd)
  for name in spec:
    if not name.endswith('resample_filter'):
      continue
    if name not in sd:
      out[name] = expected
      continue
    value = np.asarray(sd[name])
    if value.shape != expected.shape or not np.allclose(value, expected, atol=1e-6):
      raise _filter_error(name, value, taps, what, where)
  return out


def _validate(sd: Mapping[str, np.ndarray], spec: Mapping[str, tuple], what: str,
              where: str, taps=DEFAULT_FILTER) -> dict[str, np.ndarray]:
  """Checks names and shapes against `spec` (resample filters: see `_constant_filters`);
  returns `sd` in the official order."""
  sd = _constant_filters(sd, spec, taps, what, where)
  missing = [k for k in spec if k not in sd]
  unexpected = [k for k in sd if k not in spec]
  if missing or unexpected:
    parts = []
    if missing:
      parts.append(f'missing keys ({len(missing)}): {_listing(missing)}')
    if unexpected:
      parts.append(f'unexpected keys ({len(unexpected)}): {_listing(unexpected)}')
    raise KeyMismatchError(
        f'{where}: the {what} does not match its architecture: ' + '; '.join(parts) + '.')
  for k, shape in spec.items():
    if tuple(sd[k].shape) != tuple(shape):
      raise ShapeMismatchError(
          f'{where}: {what} tensor {k!r} has shape {tuple(sd[k].shape)}, the architecture '
          f'needs {tuple(shape)}.')
  return {k: sd[k] for k in spec}


def _check_generator(sd, kwargs, where, what='generator'):
  kw = kwargs if kwargs else infer_generator_kwargs(sd, where)
  taps = (kw.get('synthesis_kwargs') or {}).get('resample_filter') or DEFAULT_FILTER
  return _validate(sd, generator_spec(kw), what, where, taps)


def _check_discriminator(sd, kwargs, where, what='discriminator'):
  kw = kwargs if kwargs else infer_discriminator_kwargs(sd, where)
  taps = (kw.get('block_kwargs') or {}).get('resample_filter') or DEFAULT_FILTER
  return _validate(sd, discriminator_spec(kw), what, where, taps)


def _optional_discriminator(read, where: str, notes: list[str]):
  """`read()` (the discriminator), or None with a note (`DISCRIMINATOR_DROPPED`) if its tensors
  do not fit a StyleGAN2 discriminator (missing, unexpected, misshapen): inversion needs only
  the generator, so such a file still loads. A wrong resample filter or a corrupt file still
  refuses the whole file."""
  try:
    return read()
  except (KeyMismatchError, ShapeMismatchError) as e:
    reason = str(e).removeprefix(f'{where}: ').rstrip('.')
    notes.append(f'{DISCRIMINATOR_DROPPED}: it does not fit a StyleGAN2 discriminator '
                 f'({reason})')
    return None


# ------------------------------------------------------------------------------------------
# Format readers.

def _plain(x):
  """EasyDict / OrderedDict trees -> plain dicts and lists (kwargs for the caller)."""
  if isinstance(x, Mapping):
    return {k: _plain(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return type(x)(_plain(v) for v in x)
  return x


def _is_stylegan3(obj: torch_io.PersistentObject, sd: Mapping[str, Any]) -> bool:
  return ('synthesis.input.affine.weight' in sd
          or 'class SynthesisInput' in (obj.module_src or ''))


# NVlabs' stylegan3 repository has its own StyleGAN2 (training/networks_stylegan2.py: the
# `stylegan2-*.pkl` files it publishes, its `--cfg=stylegan2` runs, its legacy.py conversions).
# Its Generator takes the synthesis options flat instead of in `synthesis_kwargs`, and its
# SynthesisBlock and Discriminator default conv_clamp to 256 where stylegan2-ada-pytorch has None.
_GENERATOR_TOP_KWARGS = ('z_dim', 'c_dim', 'w_dim', 'img_resolution', 'img_channels',
                         'mapping_kwargs')
_STYLEGAN3_REPO_MARK = 'fused_modconv_default'  # an option only that repo's source has
STYLEGAN3_REPO_CONV_CLAMP = 256


def _from_stylegan3_repo(g_obj: torch_io.PersistentObject, g_kwargs: dict | None) -> bool:
  """The defining source says which repository; without it, a flat synthesis option does."""
  if g_obj.module_src:
    return _STYLEGAN3_REPO_MARK in g_obj.module_src
  return g_kwargs is not None and 'synthesis_kwargs' not in g_kwargs and any(
      k not in _GENERATOR_TOP_KWARGS for k in g_kwargs)


def _ada_layout(g_kwargs: dict | None, d_kwargs: dict | None):
  """Init kwargs of the stylegan3 repository's StyleGAN2 -> the stylegan2-ada-pytorch layout,
  with that repository's conv_clamp default written out."""
  if g_kwargs is not None and 'synthesis_kwargs' not in g_kwargs:
    synthesis = {k: v for k, v in g_kwargs.items() if k not in _GENERATOR_TOP_KWARGS}
    synthesis.setdefault('conv_clamp', STYLEGAN3_REPO_CONV_CLAMP)
    g_kwargs = {**{k: g_kwargs[k] for k in _GENERATOR_TOP_KWARGS if k in g_kwargs},
                'synthesis_kwargs': synthesis}
  if d_kwargs is not None and 'conv_clamp' not in d_kwargs:
    d_kwargs = {**d_kwargs, 'conv_clamp': STYLEGAN3_REPO_CONV_CLAMP}
  return g_kwargs, d_kwargs


def _from_nvlabs(obj: Mapping, which: str, where: str) -> RawCheckpoint:
  if which not in obj or not isinstance(obj[which], torch_io.PersistentObject):
    present = [k for k in ('G_ema', 'G', 'D') if k in obj]
    raise KeyMismatchError(f'{where}: NVlabs pickle has no {which!r} network (it has {present}).')
  g_obj = obj[which]
  g = torch_io.state_dict_of(g_obj)
  g_kwargs = _plain(g_obj.init_kwargs) if g_obj.init_kwargs else None
  notes = [f'NVlabs {g_obj.class_name} ({which}), persistence version {g_obj.version}']
  arch = 'stylegan3' if _is_stylegan3(g_obj, g) else 'stylegan2'
  d = d_kwargs = None
  d_obj = obj.get('D')
  if isinstance(d_obj, torch_io.PersistentObject):
    d = torch_io.state_dict_of(d_obj)
    d_kwargs = _plain(d_obj.init_kwargs) if d_obj.init_kwargs else None
  if arch == 'stylegan2':
    if _from_stylegan3_repo(g_obj, g_kwargs):
      notes.append("the stylegan3 repository's StyleGAN2 (training/networks_stylegan2.py)")
      g_kwargs, d_kwargs = _ada_layout(g_kwargs, d_kwargs)
    g = _check_generator(g, g_kwargs, where, f'{which} generator')
    if d is not None:
      d = _optional_discriminator(lambda: _check_discriminator(d, d_kwargs, where), where, notes)
      d_kwargs = d_kwargs if d is not None else None
  else:
    notes.append('StyleGAN3 (alias-free) generator: names as in stylegan3 '
                 'training/networks_stylegan3.py, not validated here')
  return RawCheckpoint('nvlabs-pickle', g, d, g_kwargs, d_kwargs, where, which, arch,
                       tuple(notes))


# rosinality --------------------------------------------------------------------------------

class _Take:
  """Pops tensors out of a rosinality state dict, checking rank; leftovers are 'unexpected'."""

  def __init__(self, sd: Mapping[str, np.ndarray], where: str, what: str):
    self.sd = dict(sd)
    self.used: set[str] = set()
    self.missing: list[str] = []
    self.where, self.what = where, what

  def __call__(self, name: str, shape_fn=None):
    if name not in self.sd:
      self.missing.append(name)
      return None
    self.used.add(name)
    value = np.asarray(self.sd[name])
    if shape_fn is not None:
      ok, want = shape_fn(value.shape)
      if not ok:
        raise ShapeMismatchError(
            f'{self.where}: rosinality {self.what} tensor {name!r} has shape {value.shape}, '
            f'expected {want}.')
    return value

  def finish(self):
    unexpected = [k for k in self.sd if k not in self.used]
    if self.missing or unexpected:
      parts = []
      if self.missing:
        parts.append(f'missing keys ({len(self.missing)}): {_listing(self.missing)}')
      if unexpected:
        parts.append(f'unexpected keys ({len(unexpected)}): {_listing(unexpected)}')
      raise KeyMismatchError(
          f'{self.where}: rosinality {self.what}: ' + '; '.join(parts) + '.')


def _rank(n: int, lead1: bool = False):
  def check(shape):
    ok = len(shape) == n and (not lead1 or shape[0] == 1)
    return ok, f'{n} dims' + (' with a leading 1' if lead1 else '')
  return check


def _count(sd, pattern) -> int:
  return len({m.group(1) for k in sd if (m := re.match(pattern, k))})


def _rosinality_generator(sd: Mapping[str, np.ndarray], latent_avg, where: str):
  """rosinality Generator state dict -> (official state dict, kwargs, notes)."""
  take = _Take(sd, where, 'generator')
  n_mlp = _count(sd, r'style\.(\d+)\.weight$')
  n_rgb = _count(sd, r'to_rgbs\.(\d+)\.')
  res_max = 4 * 2 ** n_rgb
  g: dict[str, np.ndarray] = {}
  kernels: list[np.ndarray] = []

  def styled(src, dst):
    w = take(f'{src}.conv.weight', _rank(5, lead1=True))
    if w is not None:
      g[f'{dst}.weight'] = w[0]
    b = take(f'{src}.noise.weight')
    if b is not None:
      g[f'{dst}.noise_strength'] = b.reshape(())
    g[f'{dst}.bias'] = take(f'{src}.activate.bias', _rank(1))
    g[f'{dst}.affine.weight'] = take(f'{src}.conv.modulation.weight', _rank(2))
    g[f'{dst}.affine.bias'] = take(f'{src}.conv.modulation.bias', _rank(1))

  def torgb(src, dst):
    w = take(f'{src}.conv.weight', _rank(5, lead1=True))
    if w is not None:
      g[f'{dst}.weight'] = w[0]
    b = take(f'{src}.bias', _rank(4))
    if b is not None:
      g[f'{dst}.bias'] = b.reshape(-1)
    g[f'{dst}.affine.weight'] = take(f'{src}.conv.modulation.weight', _rank(2))
    g[f'{dst}.affine.bias'] = take(f'{src}.conv.modulation.bias', _rank(1))

  c = take('input.input', _rank(4, lead1=True))
  if c is not None:
    g['synthesis.b4.const'] = c[0]
  styled('conv1', 'synthesis.b4.conv1')
  torgb('to_rgb1', 'synthesis.b4.torgb')
  for k in range(n_rgb):
    res = 8 * 2 ** k
    styled(f'convs.{2 * k}', f'synthesis.b{res}.conv0')
    styled(f'convs.{2 * k + 1}', f'synthesis.b{res}.conv1')
    torgb(f'to_rgbs.{k}', f'synthesis.b{res}.torgb')
    for name in (f'convs.{2 * k}.conv.blur.kernel', f'to_rgbs.{k}.upsample.kernel'):
      if name in sd:
        kernels.append(take(name, _rank(2)))
  layer_names = ['synthesis.b4.conv1'] + [
      f'synthesis.b{8 * 2 ** k}.conv{j}' for k in range(n_rgb) for j in (0, 1)]
  for i, dst in enumerate(layer_names):
    n = take(f'noises.noise_{i}', _rank(4))
    if n is not None:
      g[f'{dst}.noise_const'] = n[0, 0]
  for i in range(n_mlp):
    g[f'mapping.fc{i}.weight'] = take(f'style.{i + 1}.weight', _rank(2))
    g[f'mapping.fc{i}.bias'] = take(f'style.{i + 1}.bias', _rank(1))
  take.finish()

  # Resample filters: the blur kernel, normalised (rosinality scales up-sampling ones by 4).
  f = kernels[0] if kernels else np.outer(DEFAULT_FILTER, DEFAULT_FILTER)
  f = (np.asarray(f, np.float64) / np.sum(f)).astype(np.float32)
  for k in kernels[1:]:
    if k.shape != f.shape or not np.allclose(k / k.sum(), f, atol=1e-6):
      raise ShapeMismatchError(f'{where}: rosinality generator blur kernels differ from '
                               'each other; NVlabs uses one resample filter.')
  for res in [4] + [8 * 2 ** k for k in range(n_rgb)]:
    g[f'synthesis.b{res}.resample_filter'] = f
    for j in (0, 1):
      if f'synthesis.b{res}.conv{j}.weight' in g:
        g[f'synthesis.b{res}.conv{j}.resample_filter'] = f

  notes = ['rosinality generator: names/axes mapped, no rescaling (see formats docstring)']
  w_dim = int(g['mapping.fc0.weight'].shape[1]) if n_mlp else int(
      g['synthesis.b4.conv1.affine.weight'].shape[1])
  if latent_avg is not None:
    latent_avg = np.asarray(latent_avg, np.float32)
    if latent_avg.ndim == 2:
      if not np.allclose(latent_avg, latent_avg[:1]):
        notes.append('latent_avg is per-layer and the rows differ; using row 0 as w_avg')
      latent_avg = latent_avg[0]
    g['mapping.w_avg'] = latent_avg.reshape(-1)
  else:
    g['mapping.w_avg'] = _estimate_w_avg(g, n_mlp, w_dim)
    notes.append(f'no latent_avg in the file: mapping.w_avg estimated as the mean of '
                 f'{W_AVG_SAMPLES} mapped z (seed {W_AVG_SEED}), as rosinality mean_latent does')

  channels = {r: int(g[f'synthesis.b{r}.conv1.weight'].shape[0])
              for r in [4] + [8 * 2 ** k for k in range(n_rgb)]}
  rule = channel_rule(channels)
  kwargs = None
  if rule is not None:
    kwargs = {
        'z_dim': w_dim, 'c_dim': 0, 'w_dim': w_dim, 'img_resolution': res_max,
        'img_channels': int(g[f'synthesis.b{res_max}.torgb.weight'].shape[0]),
        'mapping_kwargs': {'num_layers': n_mlp, 'lr_multiplier': 0.01},
        'synthesis_kwargs': {
            'channel_base': rule[0], 'channel_max': rule[1], 'num_fp16_res': 0,
            'conv_clamp': None, 'architecture': 'skip', 'use_noise': True,
            'resample_filter': _filter_taps(f, 'blur kernel', 'rosinality generator', where)},
    }
  g = _check_generator(g, kwargs, where, 'rosinality generator (converted)')
  return g, kwargs, notes


def _estimate_w_avg(g: Mapping[str, np.ndarray], n_mlp: int, z_dim: int,
                    lr_mul: float = 0.01) -> np.ndarray:
  """Mean of mapping(z) over fixed z ~ N(0, I): rosinality's `mean_latent`, in numpy."""
  z = np.random.default_rng(W_AVG_SEED).standard_normal((W_AVG_SAMPLES, z_dim))
  x = z / np.sqrt(np.mean(z ** 2, axis=1, keepdims=True) + 1e-8)   # PixelNorm
  for i in range(n_mlp):
    w = g[f'mapping.fc{i}.weight'].astype(np.float64) * (lr_mul / math.sqrt(x.shape[1]))
    x = x @ w.T + g[f'mapping.fc{i}.bias'].astype(np.float64) * lr_mul
    x = np.where(x >= 0, x, 0.2 * x) * math.sqrt(2)                 # fused_lrelu
  return x.mean(axis=0).astype(np.float32)


def _rosinality_discriminator(sd: Mapping[str, np.ndarray], where: str):
  take = _Take(sd, where, 'discriminator')
  n_blocks = _count(sd, r'convs\.(\d+)\.conv1\.')
  res_max = 4 * 2 ** n_blocks
  d: dict[str, np.ndarray] = {}
  kernels = []
  d[f'b{res_max}.fromrgb.weight'] = take('convs.0.0.weight', _rank(4))
  d[f'b{res_max}.fromrgb.bias'] = take('convs.0.1.bias', _rank(1))
  for j in range(1, n_blocks + 1):
    res = res_max // 2 ** (j - 1)
    d[f'b{res}.conv0.weight'] = take(f'convs.{j}.conv1.0.weight', _rank(4))
    d[f'b{res}.conv0.bias'] = take(f'convs.{j}.conv1.1.bias', _rank(1))
    d[f'b{res}.conv1.weight'] = take(f'convs.{j}.conv2.1.weight', _rank(4))
    d[f'b{res}.conv1.bias'] = take(f'convs.{j}.conv2.2.bias', _rank(1))
    d[f'b{res}.skip.weight'] = take(f'convs.{j}.skip.1.weight', _rank(4))
    for name in (f'convs.{j}.conv2.0.kernel', f'convs.{j}.skip.0.kernel'):
      if name in sd:
        kernels.append(take(name, _rank(2)))
  d['b4.conv.weight'] = take('final_conv.0.weight', _rank(4))
  d['b4.conv.bias'] = take('final_conv.1.bias', _rank(1))
  d['b4.fc.weight'] = take('final_linear.0.weight', _rank(2))
  d['b4.fc.bias'] = take('final_linear.0.bias', _rank(1))
  d['b4.out.weight'] = take('final_linear.1.weight', _rank(2))
  d['b4.out.bias'] = take('final_linear.1.bias', _rank(1))
  take.finish()
  f = kernels[0] if kernels else np.outer(DEFAULT_FILTER, DEFAULT_FILTER)
  f = (np.asarray(f, np.float64) / np.sum(f)).astype(np.float32)
  for name in list(d):
    if name.endswith('.weight') and not name.startswith(('b4.fc', 'b4.out')):
      d[name[:-len('weight')] + 'resample_filter'] = f
  for j in range(1, n_blocks + 1):
    d[f'b{res_max // 2 ** (j - 1)}.resample_filter'] = f
  channels = {res_max // 2 ** (j - 1): int(d[f'b{res_max // 2 ** (j - 1)}.conv0.weight'].shape[0])
              for j in range(1, n_blocks + 1)}
  channels[4] = int(d['b4.conv.weight'].shape[0])
  rule = channel_rule(channels)
  kwargs = None
  if rule is not None:
    kwargs = {
        'c_dim': 0, 'img_resolution': res_max,
        'img_channels': int(d[f'b{res_max}.fromrgb.weight'].shape[1]),
        'architecture': 'resnet', 'channel_base': rule[0], 'channel_max': rule[1],
        'num_fp16_res': 0, 'conv_clamp': None,
        'block_kwargs': {'resample_filter': _filter_taps(f, 'blur kernel',
                                                         'rosinality discriminator', where)},
        'epilogue_kwargs': {'mbstd_group_size': 4, 'mbstd_num_channels': 1},
    }
  return _check_discriminator(d, kwargs, where, 'rosinality discriminator (converted)'), kwargs


def _is_rosinality_g(sd) -> bool:
  return isinstance(sd, Mapping) and 'input.input' in sd and 'conv1.conv.weight' in sd


def _strip(sd: Mapping[str, Any], prefix: str) -> dict[str, Any]:
  return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _from_rosinality(obj: Mapping, which: str, where: str) -> RawCheckpoint:
  notes = []
  if 'g_ema' in obj or 'g' in obj:
    key = {'G_ema': 'g_ema', 'G': 'g'}[which]
    if key not in obj:
      raise KeyMismatchError(
          f'{where}: rosinality checkpoint has no {key!r} (which={which!r}); it has '
          f'{sorted(k for k in obj if isinstance(k, str))}.')
    g_sd, d_sd, latent_avg = obj[key], obj.get('d'), obj.get('latent_avg')
  elif isinstance(obj.get('state_dict'), Mapping):  # pSp / e4e: decoder.* is the generator
    g_sd = _strip(obj['state_dict'], 'decoder.')
    d_sd = None
    latent_avg = obj.get('latent_avg')
    notes.append("pSp/e4e checkpoint: generator taken from 'decoder.*'")
  else:  # a bare rosinality generator state dict
    g_sd, d_sd, latent_avg = obj, None, None
  g_sd = torch_io.state_dict_of(g_sd)
  g, g_kwargs, g_notes = _rosinality_generator(g_sd, latent_avg, where)
  d = d_kwargs = None
  if isinstance(d_sd, Mapping) and d_sd:
    d, d_kwargs = _optional_discriminator(
        lambda: _rosinality_discriminator(torch_io.state_dict_of(d_sd), where), where,
        notes) or (None, None)
  return RawCheckpoint('rosinality', g, d, g_kwargs, d_kwargs, where, which, 'stylegan2',
                       tuple(notes + g_notes))


# plain state dicts -------------------------------------------------------------------------

def _pick_prefix(candidates: list[str], preferred: tuple[str, ...], what: str, where: str):
  if not candidates:
    return None
  if len(candidates) == 1:
    return candidates[0]
  for p in preferred:
    if p in candidates:
      return p
  raise UnknownFormatError(
      f'{where}: several {what} state dicts under prefixes {candidates}; cannot tell which '
      'to use (keep one, or name them G_ema./G./D.).')


def _from_state_dict(flat: Mapping[str, np.ndarray], which: str, where: str) -> RawCheckpoint:
  g_prefixes = sorted({k[:-len('synthesis.b4.const')] for k in flat
                       if k.endswith('synthesis.b4.const')})
  preferred = (f'{which}.', 'G_ema.', 'G.', 'generator.', '') if which == 'G_ema' else (
      f'{which}.', 'generator.', '')
  g_prefix = _pick_prefix(g_prefixes, preferred, 'generator', where)
  notes = []
  if g_prefix is None:  # a bare synthesis network ('b4.const' ...)
    s_prefixes = sorted({k[:-len('b4.const')] for k in flat if k.endswith('b4.const')})
    s_prefix = _pick_prefix(s_prefixes, ('synthesis.', ''), 'synthesis', where)
    g = {'synthesis.' + k: v for k, v in _strip(flat, s_prefix).items()}
    notes.append(f'synthesis-only state dict (prefix {s_prefix!r})')
  else:
    g = _strip(flat, g_prefix)
    if g_prefix:
      notes.append(f'generator taken from prefix {g_prefix!r}')
  d_prefixes = sorted({k[:-len('b4.out.weight')] for k in flat if k.endswith('b4.out.weight')})
  d_prefix = _pick_prefix(d_prefixes, ('D.', 'discriminator.', ''), 'discriminator', where)
  d = None
  if d_prefix is not None and d_prefix != g_prefix:  # same prefix: G and D mixed, reported below
    d = _optional_discriminator(lambda: _check_discriminator(_strip(flat, d_prefix), None, where),
                                where, notes)
    if g_prefix == '':
      g = {k: v for k, v in g.items() if not k.startswith(d_prefix)}
    if d is not None:
      notes.append(f'discriminator taken from prefix {d_prefix!r}')
  g = _check_generator(g, None, where)
  return RawCheckpoint('state-dict', g, d, None, None, where, which, 'stylegan2', tuple(notes))


# TensorFlow --------------------------------------------------------------------------------

def _tf_params(net: torch_io.TFNetwork, prefix: str = '') -> dict[str, np.ndarray]:
  params: dict[str, np.ndarray] = {}
  for name, value in getattr(net, 'variables', None) or []:
    params[prefix + name] = np.asarray(value)
  for name, comp in (getattr(net, 'components', None) or {}).items():
    params.update(_tf_params(comp, f'{prefix}{name}/'))
  return params


def _tf_kwarg(static: Mapping, name: str, default=None, none=None):
  value = static.get(name, default)
  return none if value is None else value


def _tf_generator_kwargs(static: Mapping) -> dict:
  k = lambda name, default=None, none=None: _tf_kwarg(static, name, default, none)
  for act in ('mapping_nonlinearity', 'nonlinearity'):
    if k(act, 'lrelu') != 'lrelu':
      raise UnknownFormatError(f'TF generator uses {act}={k(act)!r}; only lrelu is supported.')
  return {
      'z_dim': k('latent_size', 512), 'c_dim': k('label_size', 0),
      'w_dim': k('dlatent_size', 512), 'img_resolution': k('resolution', 1024),
      'img_channels': k('num_channels', 3),
      'mapping_kwargs': {
          'num_layers': k('mapping_layers', 8), 'embed_features': k('label_fmaps'),
          'layer_features': k('mapping_fmaps'), 'lr_multiplier': k('mapping_lrmul', 0.01),
          'w_avg_beta': k('w_avg_beta', 0.995, none=1)},
      'synthesis_kwargs': {
          'channel_base': k('fmap_base', 16384) * 2, 'channel_max': k('fmap_max', 512),
          'num_fp16_res': k('num_fp16_res', 0), 'conv_clamp': k('conv_clamp'),
          'architecture': k('architecture', 'skip'),
          'resample_filter': list(k('resample_kernel', DEFAULT_FILTER)),
          'use_noise': k('use_noise', True)},
  }


def _tf_discriminator_kwargs(static: Mapping) -> dict:
  k = lambda name, default=None: _tf_kwarg(static, name, default)
  return {
      'c_dim': k('label_size', 0), 'img_resolution': k('resolution', 1024),
      'img_channels': k('num_channels', 3), 'architecture': k('architecture', 'resnet'),
      'channel_base': k('fmap_base', 16384) * 2, 'channel_max': k('fmap_max', 512),
      'num_fp16_res': k('num_fp16_res', 0), 'conv_clamp': k('conv_clamp'),
      'cmap_dim': k('mapping_fmaps'),
      'block_kwargs': {'resample_filter': list(k('resample_kernel', DEFAULT_FILTER))},
      'mapping_kwargs': {'num_layers': k('mapping_layers', 0),
                         'embed_features': k('mapping_fmaps'),
                         'layer_features': k('mapping_fmaps'),
                         'lr_multiplier': k('mapping_lrmul', 0.1)},
      'epilogue_kwargs': {'mbstd_group_size': k('mbstd_group_size'),
                          'mbstd_num_channels': k('mbstd_num_features', 1)},
  }


def _setup_filter(taps) -> np.ndarray:
  f = np.asarray(taps, np.float32)
  f = np.outer(f, f) if f.ndim == 1 else f
  return (f / f.sum()).astype(np.float32)


def _tf_convert(spec: Mapping[str, tuple], rules, params: Mapping[str, np.ndarray], taps,
                what: str, where: str) -> dict[str, np.ndarray]:
  """Fills each official name from the first matching (regex, fn(params, *groups)) rule."""
  out: dict[str, np.ndarray] = {}
  missing: list[str] = []
  f = _setup_filter(taps)
  for name in spec:
    if name.endswith('resample_filter'):
      out[name] = f
      continue
    for pattern, fn in rules:
      m = re.fullmatch(pattern, name)
      if m:
        try:
          out[name] = np.array(fn(params, *m.groups()), dtype=np.float32, order='C')
        except KeyError as e:
          missing.append(f'{e.args[0]} (for {name})')
        break
    else:
      missing.append(f'(no TF rule for {name})')
  if missing:
    raise KeyMismatchError(f'{where}: TF {what}: missing variables ({len(missing)}): '
                           f'{_listing(missing)}.')
  return _validate(out, spec, f'TF {what} (converted)', where, taps)


_CONV = lambda w: np.asarray(w).transpose(3, 2, 0, 1)      # [kh, kw, I, O] -> [O, I, kh, kw]
_FLIP = lambda w: np.asarray(w)[::-1, ::-1]

_TF_G_RULES = [
    (r'mapping\.w_avg', lambda p: p['dlatent_avg']),
    (r'mapping\.embed\.weight', lambda p: p['mapping/LabelEmbed/weight'].T),
    (r'mapping\.embed\.bias', lambda p: p['mapping/LabelEmbed/bias']),
    (r'mapping\.fc(\d+)\.weight', lambda p, i: p[f'mapping/Dense{i}/weight'].T),
    (r'mapping\.fc(\d+)\.bias', lambda p, i: p[f'mapping/Dense{i}/bias']),
    (r'synthesis\.b4\.const', lambda p: p['synthesis/4x4/Const/const'][0]),
    (r'synthesis\.b4\.conv1\.weight', lambda p: _CONV(p['synthesis/4x4/Conv/weight'])),
    (r'synthesis\.b4\.conv1\.bias', lambda p: p['synthesis/4x4/Conv/bias']),
    (r'synthesis\.b4\.conv1\.noise_const', lambda p: p['synthesis/noise0'][0, 0]),
    (r'synthesis\.b4\.conv1\.noise_strength', lambda p: p['synthesis/4x4/Conv/noise_strength']),
    (r'synthesis\.b4\.conv1\.affine\.weight', lambda p: p['synthesis/4x4/Conv/mod_weight'].T),
    (r'synthesis\.b4\.conv1\.affine\.bias', lambda p: p['synthesis/4x4/Conv/mod_bias'] + 1),
    (r'synthesis\.b(\d+)\.conv0\.weight',
     lambda p, r: _CONV(_FLIP(p[f'synthesis/{r}x{r}/Conv0_up/weight']))),
    (r'synthesis\.b(\d+)\.conv0\.bias', lambda p, r: p[f'synthesis/{r}x{r}/Conv0_up/bias']),
    (r'synthesis\.b(\d+)\.conv0\.noise_const',
     lambda p, r: p[f'synthesis/noise{int(math.log2(int(r))) * 2 - 5}'][0, 0]),
    (r'synthesis\.b(\d+)\.conv0\.noise_strength',
     lambda p, r: p[f'synthesis/{r}x{r}/Conv0_up/noise_strength']),
    (r'synthesis\.b(\d+)\.conv0\.affine\.weight',
     lambda p, r: p[f'synthesis/{r}x{r}/Conv0_up/mod_weight'].T),
    (r'synthesis\.b(\d+)\.conv0\.affine\.bias',
     lambda p, r: p[f'synthesis/{r}x{r}/Conv0_up/mod_bias'] + 1),
    (r'synthesis\.b(\d+)\.conv1\.weight', lambda p, r: _CONV(p[f'synthesis/{r}x{r}/Conv1/weight'])),
    (r'synthesis\.b(\d+)\.conv1\.bias', lambda p, r: p[f'synthesis/{r}x{r}/Conv1/bias']),
    (r'synthesis\.b(\d+)\.conv1\.noise_const',
     lambda p, r: p[f'synthesis/noise{int(math.log2(int(r))) * 2 - 4}'][0, 0]),
    (r'synthesis\.b(\d+)\.conv1\.noise_strength',
     lambda p, r: p[f'synthesis/{r}x{r}/Conv1/noise_strength']),
    (r'synthesis\.b(\d+)\.conv1\.affine\.weight',
     lambda p, r: p[f'synthesis/{r}x{r}/Conv1/mod_weight'].T),
    (r'synthesis\.b(\d+)\.conv1\.affine\.bias',
     lambda p, r: p[f'synthesis/{r}x{r}/Conv1/mod_bias'] + 1),
    (r'synthesis\.b(\d+)\.torgb\.weight', lambda p, r: _CONV(p[f'synthesis/{r}x{r}/ToRGB/weight'])),
    (r'synthesis\.b(\d+)\.torgb\.bias', lambda p, r: p[f'synthesis/{r}x{r}/ToRGB/bias']),
    (r'synthesis\.b(\d+)\.torgb\.affine\.weight',
     lambda p, r: p[f'synthesis/{r}x{r}/ToRGB/mod_weight'].T),
    (r'synthesis\.b(\d+)\.torgb\.affine\.bias',
     lambda p, r: p[f'synthesis/{r}x{r}/ToRGB/mod_bias'] + 1),
    (r'synthesis\.b(\d+)\.skip\.weight',
     lambda p, r: _CONV(_FLIP(p[f'synthesis/{r}x{r}/Skip/weight']))),
]

_TF_D_RULES = [
    (r'b(\d+)\.fromrgb\.weight', lambda p, r: _CONV(p[f'{r}x{r}/FromRGB/weight'])),
    (r'b(\d+)\.fromrgb\.bias', lambda p, r: p[f'{r}x{r}/FromRGB/bias']),
    (r'b(\d+)\.conv0\.weight', lambda p, r: _CONV(p[f'{r}x{r}/Conv0/weight'])),
    (r'b(\d+)\.conv0\.bias', lambda p, r: p[f'{r}x{r}/Conv0/bias']),
    (r'b(\d+)\.conv1\.weight', lambda p, r: _CONV(p[f'{r}x{r}/Conv1_down/weight'])),
    (r'b(\d+)\.conv1\.bias', lambda p, r: p[f'{r}x{r}/Conv1_down/bias']),
    (r'b(\d+)\.skip\.weight', lambda p, r: _CONV(p[f'{r}x{r}/Skip/weight'])),
    (r'mapping\.embed\.weight', lambda p: p['LabelEmbed/weight'].T),
    (r'mapping\.embed\.bias', lambda p: p['LabelEmbed/bias']),
    (r'mapping\.fc(\d+)\.weight', lambda p, i: p[f'Mapping{i}/weight'].T),
    (r'mapping\.fc(\d+)\.bias', lambda p, i: p[f'Mapping{i}/bias']),
    (r'b4\.conv\.weight', lambda p: _CONV(p['4x4/Conv/weight'])),
    (r'b4\.conv\.bias', lambda p: p['4x4/Conv/bias']),
    (r'b4\.fc\.weight', lambda p: p['4x4/Dense0/weight'].T),
    (r'b4\.fc\.bias', lambda p: p['4x4/Dense0/bias']),
    (r'b4\.out\.weight', lambda p: p['Output/weight'].T),
    (r'b4\.out\.bias', lambda p: p['Output/bias']),
]


def _tf_network_info(net) -> tuple[int, dict]:
  version = getattr(net, 'version', None)
  static = dict(getattr(net, 'static_kwargs', None) or {})
  if version is None or int(version) < 4:
    raise UnknownFormatError(
        f'TensorFlow network pickle version {version!r} is too old (StyleGAN1 or early '
        'StyleGAN2); convert it with the official tools first.')
  return int(version), static


def _from_tf(obj, which: str, where: str) -> RawCheckpoint:
  nets = obj if isinstance(obj, tuple) else (None, None, obj)
  g_net = {'G_ema': nets[2], 'G': nets[0]}[which]
  if g_net is None:
    raise KeyMismatchError(f'{where}: this TF pickle holds only Gs; use which="G_ema".')
  _, static = _tf_network_info(g_net)
  g_kwargs = _tf_generator_kwargs(static)
  params = _tf_params(g_net)
  for name, value in list(params.items()):  # 'orig' architecture names its ToRGB by lod
    m = re.fullmatch(r'synthesis/ToRGB_lod(\d+)/(.*)', name)
    if m:
      r = g_kwargs['img_resolution'] // 2 ** int(m.group(1))
      params[f'synthesis/{r}x{r}/ToRGB/{m.group(2)}'] = value
      g_kwargs['synthesis_kwargs']['architecture'] = 'orig'
  g = _tf_convert(generator_spec(g_kwargs), _TF_G_RULES, params,
                  g_kwargs['synthesis_kwargs']['resample_filter'], 'generator', where)
  d = d_kwargs = None
  notes = [f"TensorFlow {'Gs' if which == 'G_ema' else 'G'} converted as stylegan2-ada-pytorch "
           'legacy.py does']
  if nets[1] is not None:
    _, d_static = _tf_network_info(nets[1])
    d_kwargs = _tf_discriminator_kwargs(d_static)
    d_params = _tf_params(nets[1])
    for name, value in list(d_params.items()):
      m = re.fullmatch(r'FromRGB_lod(\d+)/(.*)', name)
      if m:
        r = d_kwargs['img_resolution'] // 2 ** int(m.group(1))
        d_params[f'{r}x{r}/FromRGB/{m.group(2)}'] = value
        d_kwargs['architecture'] = 'orig'
    d = _optional_discriminator(
        lambda: _tf_convert(discriminator_spec(d_kwargs), _TF_D_RULES, d_params,
                            d_kwargs['block_kwargs']['resample_filter'], 'discriminator', where),
        where, notes)
    d_kwargs = d_kwargs if d is not None else None
  return RawCheckpoint('tf-pickle', g, d, g_kwargs, d_kwargs, where, which, 'stylegan2',
                       tuple(notes))


# ------------------------------------------------------------------------------------------
# Entry point.

def _read_object(path: str) -> tuple[Any, str]:
  """(object, container) with container 'torch-zip' | 'torch-legacy' | 'pickle'."""
  try:
    with open(path, 'rb') as f:
      head = f.read(512)
  except OSError as e:
    raise CheckpointError(f'{path}: cannot open the file ({e.strerror}); check the path.') from e
  if not head:
    raise CheckpointError(f'{path}: the file is empty; download it again.')
  if torch_io.is_zip(head):
    return torch_io.load(path), 'torch-zip'
  if torch_io.is_legacy_torch(head):
    return torch_io.load(path), 'torch-legacy'
  if head[:1] == b'\x80':
    return torch_io.read_pickle(path), 'pickle'
  raise UnknownFormatError(
      f'{path}: unknown format (first bytes {head[:8].hex()}): not a pickle, not a torch.save '
      'zip or legacy file. Supported: NVlabs network pickles, rosinality .pt, torch.save '
      'state dicts, TensorFlow StyleGAN2 pickles.')


def _describe(obj) -> str:
  if isinstance(obj, Mapping):
    keys = [str(k) for k in list(obj)[:12]]
    return f'a {type(obj).__name__} with keys {keys}' + (' ...' if len(obj) > 12 else '')
  return f'a {type(obj).__name__}'


def read_checkpoint(path, which: str = 'G_ema') -> RawCheckpoint:
  """Reads a StyleGAN2 checkpoint of any supported format into official names.

  Args:
    path: the checkpoint file. Its format is recognised from its bytes, not its name.
    which: 'G_ema' (the moving-average generator used for sampling; default) or 'G' (the
      training generator) where the file holds both (NVlabs, rosinality `g`, TF `G`).

  Returns:
    A `RawCheckpoint`: `generator` / `discriminator` as official stylegan2-ada-pytorch
    state dicts (names, shapes and layouts checked against the architecture), the official
    init kwargs where the file determines them, the source format and notes.

  Raises:
    CheckpointError (a ValueError) or its subclasses: truncated / corrupt file
      (torch_io), `RefusedGlobalError` (the file asks for code), `UnknownFormatError`,
      `KeyMismatchError` (missing / unexpected keys, listed), `ShapeMismatchError`
      (the tensor named).
  """
  if which not in WHICH:
    raise ValueError(f'which={which!r}; expected one of {WHICH}.')
  where = str(path)
  obj, container = _read_object(where)

  if isinstance(obj, torch_io.ScriptObject):
    raise UnknownFormatError(
        f'{where}: a TorchScript archive (torch.jit.save), not a generator checkpoint. Use '
        'torch_io.load + torch_io.state_dict_of to pull tensors out of it.')
  if isinstance(obj, torch_io.TFNetwork) or (
      isinstance(obj, tuple) and len(obj) == 3
      and all(isinstance(n, torch_io.TFNetwork) for n in obj)):
    return _from_tf(obj, which, where)
  if isinstance(obj, Mapping):
    if any(isinstance(obj.get(k), torch_io.PersistentObject) for k in ('G_ema', 'G', 'D')):
      return _from_nvlabs(obj, which, where)
    inner = obj.get('state_dict')
    if ('g_ema' in obj or 'g' in obj or _is_rosinality_g(obj)
        or (isinstance(inner, Mapping) and 'decoder.input.input' in inner)):
      return _from_rosinality(obj, which, where)
    flat = torch_io.state_dict_of(obj)
    if any(k.endswith('b4.const') for k in flat):
      return _from_state_dict(flat, which, where)
  raise UnknownFormatError(
      f'{where}: a readable {container} file holding {_describe(obj)}, which is none of the '
      'supported StyleGAN2 checkpoints (NVlabs network pickle with G/D/G_ema, rosinality '
      "dict with 'g_ema', official state dict with 'synthesis.b4.const', TensorFlow "
      '(G, D, Gs) pickle).')
