"""Where pretrained network files come from, and how they are loaded.

This toolkit never downloads weights and never substitutes random ones: a loss or metric that
needs a network file either finds the user's file or raises `WeightsNotFoundError` saying which
file, where people normally get it, and where to put it. (Random-weight networks exist only in
tests and benchmarks, which say so.)

Lookup order for `resolve_weights(name, path)`:

  1. `path`, when given (an explicit path that does not exist is an error, not a fall-through);
  2. the environment variable of that file, e.g. `STYLEGAN_INV_VGG16` (same rule);
  3. the cache folder: `$STYLEGAN_INV_CACHE`, else `~/.cache/stylegan_inversion`, holding the
     file under its cache name (`WEIGHTS[name].filename`).

Reading goes through `generators.torch_io` (`load(path)` + `state_dict_of(obj)`), which reads
PyTorch `.pth` pickles and TorchScript archives without PyTorch; its errors derive from
`generators.torch_io.CheckpointError`. This module knows files, not networks: each network
module turns a state dict into its variables (`vgg.load_vgg16_params`,
`lpips.load_lpips_params`, ...) and raises `WeightsFormatError` (a `ValueError`) for arrays
whose names or shapes do not fit.

Example:

  >>> from inversion import lpips
  >>> params = lpips.load_lpips_params()            # finds vgg16 + LPIPS v0.1 linear layers
  >>> d = lpips.lpips(params, x, y)                 # [B]
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np

from generators.cache import CACHE_ENV, DEFAULT_CACHE, cache_dir  # one cache folder

__all__ = [
    'WEIGHTS',
    'WeightsFormatError',
    'WeightsNotFoundError',
    'WeightsSpec',
    'cache_dir',
    'load_state_dict',
    'resolve_weights',
]



class WeightsNotFoundError(FileNotFoundError):
  """A network file is missing; the message says which, where to get it, and where to put it."""


class WeightsFormatError(ValueError):
  """A loaded file does not hold the arrays (names/shapes) the network needs."""


@dataclasses.dataclass(frozen=True)
class WeightsSpec:
  """One network file this toolkit can use."""
  name: str          # registry key, e.g. 'vgg16'
  filename: str      # name of the file inside the cache folder
  env_var: str       # environment variable holding an explicit path
  description: str   # what the file is
  source: str        # where users normally get it (URL / package path)


WEIGHTS: dict[str, WeightsSpec] = {s.name: s for s in [
    WeightsSpec(
        name='vgg16', filename='vgg16-397923af.pth', env_var='STYLEGAN_INV_VGG16',
        description='torchvision VGG16 ImageNet weights (state_dict, features.N.weight/bias)',
        source='https://download.pytorch.org/models/vgg16-397923af.pth '
               '(torchvision.models.vgg16(weights="IMAGENET1K_V1"))'),
    WeightsSpec(
        name='lpips_vgg', filename='lpips_v0.1_vgg.pth', env_var='STYLEGAN_INV_LPIPS_VGG',
        description='LPIPS v0.1 linear-layer weights for the VGG trunk (lin0..lin4)',
        source='the `lpips` package file lpips/weights/v0.1/vgg.pth (pip install lpips), or '
               'https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/'
               'v0.1/vgg.pth'),
    WeightsSpec(
        name='alexnet', filename='alexnet-owt-7be5be79.pth', env_var='STYLEGAN_INV_ALEXNET',
        description='torchvision AlexNet ImageNet weights (state_dict, features.N.weight/bias)',
        source='https://download.pytorch.org/models/alexnet-owt-7be5be79.pth'),
    WeightsSpec(
        name='lpips_alex', filename='lpips_v0.1_alex.pth', env_var='STYLEGAN_INV_LPIPS_ALEX',
        description='LPIPS v0.1 linear-layer weights for the AlexNet trunk (lin0..lin4)',
        source='the `lpips` package file lpips/weights/v0.1/alex.pth (pip install lpips), or '
               'https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/'
               'v0.1/alex.pth'),
    WeightsSpec(
        name='nvlabs_vgg16', filename='vgg16.pt', env_var='STYLEGAN_INV_NVLABS_VGG16',
        description='NVlabs VGG16+LPIPS TorchScript module used by the stylegan2-ada projector '
                    '(layers.convK.*, lpipsK)',
        source='https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/'
               'vgg16.pt'),
    WeightsSpec(
        name='idinvert_vgg16', filename='idinvert_vgg16.pth',
        env_var='STYLEGAN_INV_IDINVERT_VGG16',
        description='idinvert perceptual model: Keras/Caffe VGG16 ported to PyTorch '
                    '(layerN.weight/bias; expects BGR, [0,255] minus mean)',
        source='the "Perceptual Model" link in the genforce/idinvert_pytorch README '
               '(https://drive.google.com/file/d/1qQ-r7MYZ8ZcjQQFe17eQfJbOAuE3eS0y), saved '
               'there as models/pretrain/vgg16.pth'),
    WeightsSpec(
        name='inception', filename='inception-2015-12-05.pt',
        env_var='STYLEGAN_INV_INCEPTION',
        description='Inception-v3 feature network for FID (NVlabs TorchScript port)',
        source='https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/'
               'inception-2015-12-05.pt'),
    WeightsSpec(
        name='arcface', filename='model_ir_se50.pth', env_var='STYLEGAN_INV_ARCFACE',
        description='ArcFace IR-SE50 face-identity network (as used by pSp/e4e ID loss)',
        source='the "IR-SE50 Model" link in the eladrich/pixel2style2pixel README '
               '(TreB1eN/InsightFace_Pytorch weights)'),
]}


def _missing_message(spec: WeightsSpec, looked: list[str]) -> str:
  cached = cache_dir() / spec.filename
  return (
      f'Network file for {spec.name!r} not found: {spec.description}.\n'
      f'  Looked at: {"; ".join(looked)}.\n'
      f'  Get it from: {spec.source}\n'
      f'  Then either put it at {cached} (cache folder: ${CACHE_ENV} or {DEFAULT_CACHE}), '
      f'set {spec.env_var}=/path/to/file, or pass path=... explicitly.\n'
      f'  (No weights are downloaded or substituted automatically.)')


def resolve_weights(name: str, path: str | os.PathLike | None = None) -> pathlib.Path:
  """Finds the file for network `name`: explicit path -> env variable -> cache folder.

  Args:
    name: a key of `WEIGHTS` ('vgg16', 'lpips_vgg', 'alexnet', 'lpips_alex', 'nvlabs_vgg16',
      'idinvert_vgg16', 'inception', 'arcface').
    path: explicit file path; when given it must exist (no fall-through to other places).

  Returns:
    The path of an existing file.

  Raises:
    WeightsNotFoundError: (a FileNotFoundError) naming the file, where users normally get it
      and where to put it.
    ValueError: unknown `name`.
  """
  if name not in WEIGHTS:
    raise ValueError(f'Unknown weights name {name!r}; known: {sorted(WEIGHTS)}')
  spec = WEIGHTS[name]
  if path is not None:
    p = pathlib.Path(path).expanduser()
    if p.is_file():
      return p
    raise WeightsNotFoundError(_missing_message(spec, [f'explicit path {p} (missing)']))
  env = os.environ.get(spec.env_var)
  if env:
    p = pathlib.Path(env).expanduser()
    if p.is_file():
      return p
    raise WeightsNotFoundError(
        _missing_message(spec, [f'${spec.env_var}={env} (missing)']))
  p = cache_dir() / spec.filename
  if p.is_file():
    return p
  raise WeightsNotFoundError(_missing_message(spec, [f'${spec.env_var} (unset)', str(p)]))


# ---------------------------------------------------------------------------------------------
# Loading.


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a PyTorch `.pth` / TorchScript `.pt` file into `{name: float32 ndarray}`.

  Uses `generators.torch_io.load` + `generators.torch_io.state_dict_of` (no PyTorch needed);
  their errors (`generators.torch_io.CheckpointError` subclasses) pass through unchanged.
  """
  from generators import torch_io  # pylint: disable=import-outside-toplevel
  obj = torch_io.load(path)
  sd = torch_io.state_dict_of(obj)
  out = {}
  for k, v in sd.items():
    a = np.asarray(v)
    if a.dtype.kind == 'f':
      a = a.astype(np.float32)
    out[str(k)] = a
  return out
