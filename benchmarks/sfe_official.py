"""The official StyleFeatureEditor modules on CPU, at any width, for parity checks against
`inversion.encoders.sfe` (torch needed; neither torch nor the official code is a dependency of
the toolkit).

    git clone https://github.com/AIRI-Institute/StyleFeatureEditor /tmp/sfe_official
    /work/torchenv/bin/python tests/fixtures/make_sfe_fixture.py --official-repo /tmp/sfe_official

`import_official(repo)` imports the clone's `models/psp` modules without compiling their CUDA
ops: `models/psp/stylegan2/op` calls `torch.utils.cpp_extension.load` at import, so a stand-in
package with pure-torch `fused_leaky_relu`, `FusedLeakyReLU` and `upfirdn2d` (written from
their documented maths, rosinality's CPU reference path) is put in `sys.modules` first; `PIL`
(imported, unused, by `model.py`) gets an empty stand-in when it is not installed.

The official classes hard-code their widths (512, 960 * 9, 'ir_se' 50 ...). The builders here
make the official classes with narrower official building blocks (IBasicBlock,
bottleneck_IR_SE, SEModule, GradualStyleBlock, FeatureEncoderBlock, rosinality
StyledConv / ToRGB / ConstantInput), set as the attributes the official `__init__` sets, so the
official `forward` methods run unchanged. `official_*` build them with the official
constructors (official widths). `randomize` gives every parameter and BatchNorm statistic
non-default random values, so a parity check can fail.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import types
import warnings
from argparse import Namespace
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

LRELU_SLOPE = 0.2           # rosinality FusedLeakyReLU defaults
LRELU_SCALE = math.sqrt(2)
OP_PACKAGE = 'models.psp.stylegan2.op'


# ----------------------------------------------------------------------------------------------
# Pure-torch stand-ins for models/psp/stylegan2/op.


def fused_leaky_relu(input, bias, negative_slope=LRELU_SLOPE, scale=LRELU_SCALE):
  """leaky_relu(input + bias (per channel, axis 1), slope) * scale."""
  shape = (1, bias.shape[0]) + (1,) * (input.ndim - 2)
  return F.leaky_relu(input + bias.view(shape), negative_slope) * scale


class FusedLeakyReLU(nn.Module):
  """`fused_leaky_relu` with a learned bias (zeros at init)."""

  def __init__(self, channel, negative_slope=LRELU_SLOPE, scale=LRELU_SCALE):
    super().__init__()
    self.bias = nn.Parameter(torch.zeros(channel))
    self.negative_slope = negative_slope
    self.scale = scale

  def forward(self, input):
    return fused_leaky_relu(input, self.bias, self.negative_slope, self.scale)


def upfirdn2d(input, kernel, up=1, down=1, pad=(0, 0)):
  """input [N, C, H, W]: 1. insert up - 1 zeros after each sample, 2. pad by pad[0] before and
  pad[1] after on both axes (negative = crop), 3. convolve with `kernel` (true convolution:
  the kernel flipped), 4. keep every down-th sample."""
  n, c, h, w = input.shape
  kh, kw = kernel.shape
  x = input.reshape(n * c, 1, h, 1, w, 1)
  x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
  x = x.reshape(n * c, 1, h * up, w * up)
  p0, p1 = pad
  x = F.pad(x, [max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
  x = x[:, :, max(-p0, 0):x.shape[2] - max(-p1, 0), max(-p0, 0):x.shape[3] - max(-p1, 0)]
  x = F.conv2d(x, torch.flip(kernel, [0, 1]).view(1, 1, kh, kw).to(x.dtype))
  x = x[:, :, ::down, ::down]
  return x.reshape(n, c, x.shape[2], x.shape[3])


def import_official(repo: str | os.PathLike) -> types.SimpleNamespace:
  """The clone's modules: psp_encoders, model_irse, helpers, feature_resnet, stylegan2 (model)."""
  repo = os.fspath(repo)
  if not os.path.isfile(os.path.join(repo, 'models', 'psp', 'encoders', 'psp_encoders.py')):
    raise FileNotFoundError(f'{repo} is not a StyleFeatureEditor checkout (no '
                            'models/psp/encoders/psp_encoders.py)')
  op = types.ModuleType(OP_PACKAGE)
  op.fused_leaky_relu, op.FusedLeakyReLU, op.upfirdn2d = fused_leaky_relu, FusedLeakyReLU, upfirdn2d
  op.__path__ = []  # a package: `from .fused_act import` is never reached
  sys.modules[OP_PACKAGE] = op
  try:
    import PIL  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    pil = types.ModuleType('PIL')
    pil.Image = types.ModuleType('PIL.Image')
    sys.modules['PIL'], sys.modules['PIL.Image'] = pil, pil.Image
  if repo not in sys.path:
    sys.path.insert(0, repo)
  # pylint: disable=import-outside-toplevel
  from models.psp.encoders import feature_resnet, helpers, model_irse, psp_encoders
  from models.psp.stylegan2 import model as stylegan2
  return types.SimpleNamespace(psp_encoders=psp_encoders, model_irse=model_irse,
                               helpers=helpers, feature_resnet=feature_resnet,
                               stylegan2=stylegan2)


# ----------------------------------------------------------------------------------------------
# Official classes at given widths.


def _bare(cls):
  """An instance of official `cls` with nn.Module state only (its __init__ not run)."""
  module = cls.__new__(cls)
  nn.Module.__init__(module)
  return module


def _iresnet_stage(off, inplanes: int, planes: int, depth: int, stride: int) -> nn.Sequential:
  """IResNet._make_layer: the first block strided with a conv1x1 + BN downsample."""
  fr = off.feature_resnet
  downsample = nn.Sequential(fr.conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes))
  blocks = [fr.IBasicBlock(inplanes, planes, stride, downsample)]
  blocks += [fr.IBasicBlock(planes, planes) for _ in range(depth - 1)]
  return nn.Sequential(*blocks)


def backbone(off, channels: Sequence[int], depths: Sequence[int], n_styles: int, w_dim: int,
             feature_channels: int, pooled: int = 3):
  """FSLikeBackbone with stages `channels` x `depths` (stage 3 unstrided, as SFE's edit)."""
  m = _bare(off.psp_encoders.FSLikeBackbone)
  m.conv = nn.Sequential(nn.Conv2d(3, channels[0], 3, 1, 1, bias=False),
                         nn.BatchNorm2d(channels[0]), nn.PReLU(channels[0]))
  inplanes = channels[0]
  for s, (planes, depth, stride) in enumerate(zip(channels, depths, (2, 2, 1, 2))):
    setattr(m, f'block_{s + 1}', _iresnet_stage(off, inplanes, planes, depth, stride))
    inplanes = planes
  c3, fc = channels[2], feature_channels
  m.content_layer = nn.Sequential(
      nn.BatchNorm2d(c3), nn.Conv2d(c3, fc, 3, 1, 1, bias=False), nn.BatchNorm2d(fc),
      nn.PReLU(fc), nn.Conv2d(fc, fc, 3, 1, 1, bias=False), nn.BatchNorm2d(fc))
  m.avg_pool = nn.AdaptiveAvgPool2d((pooled, pooled))
  m.styles = nn.ModuleList([nn.Linear(sum(channels) * pooled ** 2, w_dim)
                            for _ in range(n_styles)])
  return m


def content_layer(off, blocks: int, channels: int):
  """ContentLayerDeepFast(blocks, 2 * channels, channels) (the official constructor)."""
  return off.psp_encoders.ContentLayerDeepFast(blocks, 2 * channels, channels)


def inverter(off, channels, depths, n_styles, w_dim, feature_channels, pooled=3, blocks=6):
  m = _bare(off.psp_encoders.Inverter)
  m.fs_backbone = backbone(off, channels, depths, n_styles, w_dim, feature_channels, pooled)
  m.fuser = content_layer(off, blocks, feature_channels)
  return m


def _irse_body(off, stem: int, channels, depths, se_reduction: int) -> nn.Sequential:
  """get_blocks-style body of bottleneck_IR_SE units, SEModule(depth, se_reduction)."""
  units, in_channel = [], stem
  for depth, n in zip(channels, depths):
    for j in range(n):
      with warnings.catch_warnings():  # SEModule(depth, 16) of a narrow unit has 0 channels
        warnings.simplefilter('ignore', UserWarning)
        unit = off.helpers.bottleneck_IR_SE(in_channel, depth, 2 if j == 0 else 1)
      unit.res_layer[5] = off.helpers.SEModule(depth, se_reduction)
      units.append(unit)
      in_channel = depth
  return nn.Sequential(*units)


def _input_layer(width: int) -> nn.Sequential:
  return nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                       nn.PReLU(width))


def e4e(off, channels, depths, se_reduction, num_ws, w_dim, input_size):
  """Encoder4Editing (Inference stage). Its forward taps units 6, 20 and 23: stage depths must
  end there (3, 4, 14, 3 as IR-SE-50)."""
  if (sum(depths[:2]) - 1, sum(depths[:3]) - 1, sum(depths) - 1) != (6, 20, 23):
    raise ValueError(f'Encoder4Editing.forward taps units 6, 20, 23; depths {depths} do not '
                     'end their stages there')
  pe = off.psp_encoders
  m = _bare(pe.Encoder4Editing)
  m.input_layer = _input_layer(channels[0])
  m.body = _irse_body(off, channels[0], channels, depths, se_reduction)
  m.style_count, m.coarse_ind, m.middle_ind = num_ws, 3, 7
  side = input_size // 16
  m.styles = nn.ModuleList([
      pe.GradualStyleBlock(channels[3], w_dim, side if i < 3 else 2 * side if i < 7 else 4 * side)
      for i in range(num_ws)])
  m.latlayer1 = nn.Conv2d(channels[2], channels[3], kernel_size=1, stride=1, padding=0)
  m.latlayer2 = nn.Conv2d(channels[1], channels[3], kernel_size=1, stride=1, padding=0)
  m.progressive_stage = pe.ProgressiveStage.Inference
  return m


def arcface(off, channels, depths, se_reduction, embedding, affine=True):
  """model_irse.Backbone(112, ..., 'ir_se') with the given stages."""
  m = _bare(off.model_irse.Backbone)
  m.input_layer = _input_layer(channels[0])
  c = channels[3]
  m.output_layer = nn.Sequential(nn.BatchNorm2d(c), nn.Dropout(0.6), off.helpers.Flatten(),
                                 nn.Linear(c * 7 * 7, embedding),
                                 nn.BatchNorm1d(embedding, affine=affine))
  m.body = _irse_body(off, channels[0], channels, depths, se_reduction)
  return m


def generator(off, size: int, style_dim: int, n_mlp: int, channels: int):
  """rosinality Generator(size, style_dim, n_mlp) with `channels` at every resolution."""
  sg = off.stylegan2
  g = sg.Generator(size, style_dim, n_mlp)
  for name in ('input', 'conv1', 'to_rgb1', 'convs', 'to_rgbs'):
    delattr(g, name)  # the 512-wide layers, replaced below before any use
  g.input = sg.ConstantInput(channels)
  g.conv1 = sg.StyledConv(channels, channels, 3, style_dim)
  g.to_rgb1 = sg.ToRGB(channels, style_dim, upsample=False)
  g.convs = nn.ModuleList()
  g.to_rgbs = nn.ModuleList()
  for _ in range(3, g.log_size + 1):
    g.convs.append(sg.StyledConv(channels, channels, 3, style_dim, upsample=True))
    g.convs.append(sg.StyledConv(channels, channels, 3, style_dim))
    g.to_rgbs.append(sg.ToRGB(channels, style_dim))
  return g


def official_inverter(off, n_styles: int = 18):
  """psp_encoders.Inverter(n_styles) itself; FSLikeBackbone loads a random iresnet50 file (the
  ArcFace weights it starts from in training) through its own constructor."""
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'iresnet50.pth')
    torch.save(off.feature_resnet.iresnet50().state_dict(), path)
    return off.psp_encoders.Inverter(n_styles=n_styles, opts=Namespace(arcface_model_path=path))


def stylegan2_generator(off, size: int = 1024, style_dim: int = 512, n_mlp: int = 8):
  """rosinality Generator as SFE builds it (`Generator(1024, 512, 8)`)."""
  return off.stylegan2.Generator(size, style_dim, n_mlp)


def official_e4e(off, stylegan_size: int = 1024):
  return off.psp_encoders.Encoder4Editing(50, 'ir_se', Namespace(stylegan_size=stylegan_size))


def official_arcface(off):
  return off.model_irse.Backbone(input_size=112, num_layers=50, drop_ratio=0.6, mode='ir_se')


# ----------------------------------------------------------------------------------------------
# Random weights that a parity check can see.


@torch.no_grad()
def randomize(module: nn.Module, gen: torch.Generator) -> nn.Module:
  """Gives BatchNorm statistics and affine terms, PReLU slopes, biases (rosinality's zero or
  one ones included) and noise strengths random, non-default values; eval mode."""
  def uniform(t, lo, hi):
    t.copy_(torch.rand(t.shape, generator=gen) * (hi - lo) + lo)

  for m in module.modules():
    if isinstance(m, nn.modules.batchnorm._BatchNorm):  # pylint: disable=protected-access
      uniform(m.running_mean, -0.2, 0.2)
      uniform(m.running_var, 0.5, 1.5)
      if m.affine:
        uniform(m.weight, 0.6, 1.4)
        uniform(m.bias, -0.2, 0.2)
    elif isinstance(m, nn.PReLU):
      uniform(m.weight, 0.0, 0.5)
  for name, p in module.named_parameters():
    leaf = name.rsplit('.', 1)[-1]
    if leaf == 'bias' and ('activate' in name or 'linear' in name or 'to_rgb' in name
                           or 'style.' in name):
      uniform(p, -0.2, 0.2)
    elif name.endswith('modulation.bias'):
      uniform(p, 0.8, 1.2)
    elif name.endswith('noise.weight'):
      uniform(p, -0.3, 0.3)
  return module.eval()
