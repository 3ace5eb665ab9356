"""Writes small checkpoint files in the real on-disk formats, from numpy arrays, without torch.

Test helper for `generators.torch_io` / `generators.formats`. The files are byte-level what the
real writers produce (checked once against real torch 2.13, see tests/test_torch_io.py):

  write_torch_zip       torch.save (zip format): <archive>/data.pkl + data/<key> + byteorder
  write_torch_legacy    torch.save(..., _use_new_zipfile_serialization=False)
  write_pickle          pickle.dump of objects holding tensors (storages as _load_from_bytes)
  nvlabs_snapshot       the object of an NVlabs `network-snapshot-*.pkl` (persistent classes)
  official_to_rosinality / rosinality_checkpoint   a rosinality stylegan2-pytorch `.pt` dict
  official_to_tf / tf_pickle                       an original TensorFlow StyleGAN2 pickle

Objects are plain Python values plus the markers below; numpy arrays become torch tensors.

  Global('torch', 'FloatStorage')         a GLOBAL reference (never imported here)
  Reduce(func, args)                      func(*args) at load time
  NewObj(cls, state=..., items=...)       cls.__new__(cls); dict items; BUILD state
  Param(array)                            a torch.nn.Parameter
  Raw(bytes)                              opcodes spliced in verbatim (for hostile pickles)
"""

from __future__ import annotations

import collections
import dataclasses
import io
import re
import struct
import zipfile
from typing import Any, Callable

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

_STORAGE = {  # numpy dtype -> torch typed-storage class name
    'float32': 'FloatStorage', 'float64': 'DoubleStorage', 'float16': 'HalfStorage',
    'int64': 'LongStorage', 'int32': 'IntStorage', 'int16': 'ShortStorage',
    'int8': 'CharStorage', 'uint8': 'ByteStorage', 'bool': 'BoolStorage',
}


@dataclasses.dataclass(eq=False)
class Global:
  module: str
  name: str


@dataclasses.dataclass(eq=False)
class Reduce:
  func: Any
  args: tuple


@dataclasses.dataclass(eq=False)
class NewObj:
  cls: Any
  state: Any = None             # BUILD state (None: no BUILD)
  items: Any = None             # dict items for dict subclasses (SETITEMS)


@dataclasses.dataclass(eq=False)
class Param:
  data: np.ndarray


@dataclasses.dataclass(eq=False)
class Raw:
  opcodes: bytes


@dataclasses.dataclass(eq=False)
class BFloat16:
  """A bfloat16 tensor given by its float32 values (low 16 bits dropped on write)."""
  data: np.ndarray


@dataclasses.dataclass(eq=False)
class Built:
  """`obj` followed by a BUILD of `state` (what a reduce value with a state emits)."""
  obj: Any
  state: Any


@dataclasses.dataclass(eq=False)
class PersistentId:
  pid: Any


ORDERED_DICT = Global('collections', 'OrderedDict')
EASY_DICT = Global('dnnlib.util', 'EasyDict')


def ordered_dict(items) -> NewObj:
  """An OrderedDict as torch pickles it: OrderedDict() then SETITEMS."""
  return NewObj(None, items=collections.OrderedDict(items))


def easy_dict(items) -> NewObj:
  return NewObj(EASY_DICT, items=dict(items))


# ------------------------------------------------------------------------------------------
# A minimal pickle emitter (protocol 2, optionally BINBYTES from protocol 3).

class PickleWriter:
  """Emits pickle opcodes for plain values and the markers above.

  `tensor_fn(array) -> marker` decides how numpy arrays are written (a torch tensor rebuild
  with a persistent-id storage, or a `_load_from_bytes` storage, or a numpy ndarray).
  """

  def __init__(self, protocol: int = 2, tensor_fn: Callable[[Any], Any] | None = None):
    self.protocol = protocol
    self.tensor_fn = tensor_fn
    self.out = io.BytesIO()
    self.memo: dict[int, int] = {}
    self.keep: list[Any] = []   # keeps memoised objects alive (ids stay unique)

  def dumps(self, obj) -> bytes:
    self.out.write(b'\x80' + bytes([self.protocol]))
    self.save(obj)
    self.out.write(b'.')
    return self.out.getvalue()

  # Memo.
  def _get(self, obj) -> bool:
    idx = self.memo.get(id(obj))
    if idx is None:
      return False
    self.out.write(b'h' + bytes([idx]) if idx < 256 else b'j' + struct.pack('<I', idx))
    return True

  def _put(self, obj):
    idx = len(self.memo)
    self.memo[id(obj)] = idx
    self.keep.append(obj)
    self.out.write(b'q' + bytes([idx]) if idx < 256 else b'r' + struct.pack('<I', idx))

  def save(self, obj):
    w = self.out.write
    if obj is None:
      w(b'N')
    elif obj is True:
      w(b'\x88')
    elif obj is False:
      w(b'\x89')
    elif isinstance(obj, int):
      if 0 <= obj < 256:
        w(b'K' + bytes([obj]))
      elif 0 <= obj < 65536:
        w(b'M' + struct.pack('<H', obj))
      elif -2**31 <= obj < 2**31:
        w(b'J' + struct.pack('<i', obj))
      else:
        n = (obj.bit_length() + 8) // 8
        w(b'\x8a' + bytes([n]) + obj.to_bytes(n, 'little', signed=True))
    elif isinstance(obj, float):
      w(b'G' + struct.pack('>d', obj))
    elif isinstance(obj, str):
      data = obj.encode('utf-8')
      w(b'X' + struct.pack('<I', len(data)) + data)
    elif isinstance(obj, (bytes, bytearray)):
      if self.protocol >= 3:
        w(b'B' + struct.pack('<I', len(obj)) + bytes(obj))
      else:  # protocol 2: _codecs.encode(latin-1 text, 'latin1')
        self.save(Reduce(Global('_codecs', 'encode'), (bytes(obj).decode('latin1'), 'latin1')))
    elif isinstance(obj, tuple):
      if not obj:
        w(b')')
        return
      w(b'(')
      for x in obj:
        self.save(x)
      w(b't')
    elif isinstance(obj, list):
      w(b']')
      if obj:
        w(b'(')
        for x in obj:
          self.save(x)
        w(b'e')
    elif isinstance(obj, collections.OrderedDict):
      self.save(ordered_dict(obj.items()))
    elif isinstance(obj, dict):
      w(b'}')
      self._setitems(obj)
    elif isinstance(obj, set):
      self.save(Reduce(Global('builtins', 'set'), (list(obj),)))
    elif isinstance(obj, Raw):
      w(obj.opcodes)
    elif isinstance(obj, (np.ndarray, np.generic, Param, BFloat16)):
      if self._get(obj):
        return
      self.save(self.tensor_fn(obj))
    elif isinstance(obj, Global):
      if self._get(obj):
        return
      w(b'c' + f'{obj.module}\n{obj.name}\n'.encode('ascii'))
      self._put(obj)
    elif isinstance(obj, Reduce):
      if self._get(obj):
        return
      self.save(obj.func)
      self.save(tuple(obj.args))
      w(b'R')
      self._put(obj)
    elif isinstance(obj, NewObj):
      if self._get(obj):
        return
      if obj.cls is None:  # OrderedDict: REDUCE with no args
        self.save(ORDERED_DICT)
        w(b')R')
      else:
        self.save(obj.cls)
        w(b')\x81')
      self._put(obj)
      if obj.items:
        self._setitems(obj.items)
      if obj.state is not None:
        self.save(obj.state)
        w(b'b')
    elif isinstance(obj, PersistentId):
      self.save(obj.pid)
      w(b'Q')
    elif isinstance(obj, Built):
      self.save(obj.obj)
      self.save(obj.state)
      w(b'b')
    else:
      raise TypeError(f'cannot write {type(obj).__name__}')

  def _setitems(self, items):
    if not items:
      return
    self.out.write(b'(')
    for k, v in items.items():
      self.save(k)
      self.save(v)
    self.out.write(b'u')


def _rebuild(storage, array: np.ndarray) -> Reduce:
  """torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())."""
  item = array.itemsize
  stride = tuple(s // item for s in array.strides)
  return Reduce(Global('torch._utils', '_rebuild_tensor_v2'),
                (storage, 0, tuple(array.shape), stride, False, ordered_dict({})))


def _wrap_param(x, tensor: Reduce) -> Reduce:
  if isinstance(x, Param):
    return Reduce(Global('torch._utils', '_rebuild_parameter'),
                  (tensor, False, ordered_dict({})))
  return tensor


def _array_and_type(x) -> tuple[np.ndarray, str, bytes]:
  """(contiguous array, storage class name, raw little-endian bytes)."""
  if isinstance(x, Param):
    x = x.data
  if isinstance(x, BFloat16):
    a = np.array(x.data, dtype='<f4', order='C')
    raw = (a.view('<u4') >> 16).astype('<u2')
    return raw, 'BFloat16Storage', raw.tobytes()
  a = np.array(x, order='C')
  le = a.astype(a.dtype.newbyteorder('<'))
  return a, _STORAGE[a.dtype.name], le.tobytes()


# ------------------------------------------------------------------------------------------
# torch.save: zip and legacy formats.

def write_torch_zip(obj, path_or_file, archive: str = 'archive', big_endian: bool = False,
                    drop_records: tuple[str, ...] = ()) -> None:
  """Writes `obj` like `torch.save(obj, f)` (zip format, pickle protocol 2)."""
  records: dict[str, bytes] = {}
  storages: list[bytes] = []

  def tensor(x):
    a, storage_type, raw = _array_and_type(x)
    if big_endian:
      raw = np.frombuffer(raw, a.dtype.newbyteorder('<')).astype(
          a.dtype.newbyteorder('>')).tobytes()
    key = str(len(storages))
    storages.append(raw)
    pid = PersistentId(('storage', Global('torch', storage_type), key, 'cpu', a.size))
    return _wrap_param(x, _rebuild(pid, a))

  records['data.pkl'] = PickleWriter(2, tensor).dumps(obj)
  records['byteorder'] = b'big' if big_endian else b'little'
  for key, raw in enumerate(storages):
    records[f'data/{key}'] = raw
  records['version'] = b'3\n'
  records['.data/serialization_id'] = b'0' * 40
  with zipfile.ZipFile(path_or_file, 'w', zipfile.ZIP_STORED) as zf:
    for name, data in records.items():
      if name not in drop_records:
        zf.writestr(f'{archive}/{name}', data)


def legacy_bytes(obj) -> bytes:
  """`obj` in the legacy torch.save format (storage keys sorted, int64 count + raw bytes)."""
  storages: dict[str, tuple[int, bytes]] = {}

  def storage_pid(x):
    a, storage_type, raw = _array_and_type(x)
    key = str(100000 + len(storages))  # torch uses the storage's address as its key
    storages[key] = (a.size, raw)
    return PersistentId(('storage', Global('torch', storage_type), key, 'cpu', a.size, None)), a

  def tensor(x):
    pid, a = storage_pid(x)
    return _wrap_param(x, _rebuild(pid, a))

  out = io.BytesIO()
  out.write(PickleWriter(2).dumps(MAGIC_NUMBER))
  out.write(PickleWriter(2).dumps(LEGACY_PROTOCOL_VERSION))
  out.write(PickleWriter(2).dumps(
      {'protocol_version': LEGACY_PROTOCOL_VERSION, 'little_endian': True,
       'type_sizes': {'short': 2, 'int': 4, 'long': 4}}))
  if isinstance(obj, StorageOnly):
    pid, _ = storage_pid(obj.array)
    out.write(PickleWriter(2).dumps(pid))
  else:
    out.write(PickleWriter(2, tensor).dumps(obj))
  keys = sorted(storages)
  out.write(PickleWriter(2).dumps(keys))
  for key in keys:
    numel, raw = storages[key]
    out.write(struct.pack('<q', numel) + raw)
  return out.getvalue()


@dataclasses.dataclass(eq=False)
class StorageOnly:
  """A bare storage (what `TypedStorage.__reduce__` saves inside `_load_from_bytes`)."""
  array: np.ndarray


def write_torch_legacy(obj, path_or_file) -> None:
  data = legacy_bytes(obj)
  if hasattr(path_or_file, 'write'):
    path_or_file.write(data)
  else:
    with open(path_or_file, 'wb') as f:
      f.write(data)


# ------------------------------------------------------------------------------------------
# Plain pickles (NVlabs network pickles, TensorFlow pickles).

def pickled_tensor(x) -> Reduce:
  """A tensor as `pickle.dumps(tensor)` writes it: storage = _load_from_bytes(legacy file)."""
  a, _, _ = _array_and_type(x)
  storage = Reduce(Global('torch.storage', '_load_from_bytes'),
                   (legacy_bytes(StorageOnly(x.data if isinstance(x, Param) else x)),))
  return _wrap_param(x, _rebuild(storage, a))


def numpy_array(x) -> NewObj:
  """A numpy array as numpy pickles it (`_reconstruct` + BUILD)."""
  a = np.array(x, order='C')
  dtype = Reduce(Global('numpy', 'dtype'), (a.dtype.str[1:], False, True))
  dtype_state = (3, a.dtype.str[0] if a.dtype.str[0] in '<>' else '|', None, None, None,
                 -1, -1, 0)
  arr = Reduce(Global('numpy.core.multiarray', '_reconstruct'),
               (Global('numpy', 'ndarray'), (0,), b'b'))
  return Built(arr, (1, tuple(a.shape), Built(dtype, dtype_state), False, a.tobytes()))


def write_pickle(obj, path_or_file, tensor_fn=pickled_tensor, protocol: int = 3) -> None:
  """`pickle.dump(obj)` where arrays are torch tensors (default) or numpy arrays."""
  data = PickleWriter(protocol, tensor_fn).dumps(obj)
  if hasattr(path_or_file, 'write'):
    path_or_file.write(data)
  else:
    with open(path_or_file, 'wb') as f:
      f.write(data)


# ------------------------------------------------------------------------------------------
# NVlabs network pickles (torch_utils.persistence).

_NVLABS_CLASSES = [  # (regex on the module path, class name) as in networks.py; later win
    (r'', 'Generator'),
    (r'mapping', 'MappingNetwork'),
    (r'mapping\.(fc\d+|embed)', 'FullyConnectedLayer'),
    (r'synthesis', 'SynthesisNetwork'),
    (r'synthesis\.b\d+', 'SynthesisBlock'),
    (r'synthesis\.b\d+\.(conv0|conv1)', 'SynthesisLayer'),
    (r'synthesis\.b\d+\.torgb', 'ToRGBLayer'),
    (r'synthesis\.b\d+\.skip', 'Conv2dLayer'),
    (r'.*\.affine', 'FullyConnectedLayer'),
]
_NVLABS_D_CLASSES = [  # later entries win
    (r'', 'Discriminator'),
    (r'b\d+', 'DiscriminatorBlock'),
    (r'b\d+\.\w+', 'Conv2dLayer'),
    (r'b4', 'DiscriminatorEpilogue'),
    (r'b4\.(fc|out)', 'FullyConnectedLayer'),
    (r'b4\.mbstd', 'MinibatchStdLayer'),
]
_BUFFERS = ('resample_filter', 'noise_const', 'w_avg')
MODULE_SRC = '# training/networks.py (stand-in source text; a reader must never run it)\n'
# The stylegan3 repository's training/networks_stylegan2.py: what tells it apart is an option
# stylegan2-ada-pytorch's networks.py does not have.
MODULE_SRC_STYLEGAN3_REPO = ('# training/networks_stylegan2.py of NVlabs/stylegan3 (stand-in)\n'
                             '# class SynthesisBlock: ... fused_modconv_default = True, ...\n')
PERSISTENCE = Global('torch_utils.persistence', '_reconstruct_persistent_obj')


def _module_tree(sd: dict[str, np.ndarray]) -> dict:
  tree: dict = {}
  for name, value in sd.items():
    *path, leaf = name.split('.')
    node = tree
    for p in path:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def persistent_module(sd: dict[str, np.ndarray], classes, init_kwargs=None,
                      path: str = '', extra_modules: tuple[str, ...] = (),
                      module_src: str = MODULE_SRC) -> Reduce:
  """A persistent NVlabs module: `_reconstruct_persistent_obj(dict(type='class', ...))`."""
  tree = _module_tree(sd)
  for m in extra_modules:  # modules without tensors, e.g. b4.mbstd
    node = tree
    for p in m.split('.'):
      node = node.setdefault(p, {})
  return _persistent(tree, classes, init_kwargs, path, module_src)


def _persistent(tree: dict, classes, init_kwargs, path: str, module_src: str) -> Reduce:
  params, buffers, modules = {}, {}, {}
  for k, v in tree.items():
    if isinstance(v, dict):
      modules[k] = _persistent(v, classes, None, f'{path}.{k}' if path else k, module_src)
    elif k in _BUFFERS:
      buffers[k] = v
    else:
      params[k] = Param(v)
  class_name = next((c for pattern, c in reversed(classes) if re.fullmatch(pattern, path)),
                    'Module')
  state = {
      'training': False,
      '_parameters': collections.OrderedDict(params),
      '_buffers': collections.OrderedDict(buffers),
      '_non_persistent_buffers_set': set(),
      '_backward_hooks': collections.OrderedDict(),
      '_forward_hooks': collections.OrderedDict(),
      '_forward_pre_hooks': collections.OrderedDict(),
      '_state_dict_hooks': collections.OrderedDict(),
      '_load_state_dict_pre_hooks': collections.OrderedDict(),
      '_modules': collections.OrderedDict(modules),
      '_init_args': (),
      '_init_kwargs': init_kwargs if init_kwargs is not None else easy_dict({}),
  }
  meta = {'type': 'class', 'version': 6, 'module_src': module_src, 'class_name': class_name,
          'state': state}
  return Reduce(PERSISTENCE, (meta,))


def _easy(x):
  if isinstance(x, dict):
    return easy_dict({k: _easy(v) for k, v in x.items()})
  return x


def nvlabs_snapshot(g: dict, d: dict, g_kwargs: dict, d_kwargs: dict,
                    g_train: dict | None = None, module_src: str = MODULE_SRC) -> dict:
  """The dict an NVlabs `network-snapshot-*.pkl` holds (G, D, G_ema, augment_pipe, ...)."""
  src = {'module_src': module_src}
  return {
      'G': persistent_module(g if g_train is None else g_train, _NVLABS_CLASSES, _easy(g_kwargs),
                             **src),
      'D': persistent_module(d, _NVLABS_D_CLASSES, _easy(d_kwargs), extra_modules=('b4.mbstd',),
                             **src),
      'G_ema': persistent_module(g, _NVLABS_CLASSES, _easy(g_kwargs), **src),
      'augment_pipe': None,
      'training_set_kwargs': easy_dict({'class_name': 'training.dataset.ImageFolderDataset',
                                        'resolution': g_kwargs.get('img_resolution')}),
  }


# ------------------------------------------------------------------------------------------
# rosinality stylegan2-pytorch checkpoints.

def _blocks(sd, pattern):
  return sorted({int(m.group(1)) for k in sd if (m := re.match(pattern, k))})


def official_to_rosinality(g: dict, d: dict | None = None) -> tuple[dict, dict | None]:
  """Official G/D state dicts -> rosinality `Generator` / `Discriminator` state dicts.

  The inverse of the reader's mapping (see generators/formats.py): same stored values, only
  names and singleton axes change; blur kernels are the normalised filter (x4 for up-sampling).
  """
  res_list = _blocks(g, r'synthesis\.b(\d+)\.')
  f = g['synthesis.b4.resample_filter']
  r: dict[str, np.ndarray] = collections.OrderedDict()
  i = 0
  while f'mapping.fc{i}.weight' in g:
    r[f'style.{i + 1}.weight'] = g[f'mapping.fc{i}.weight']
    r[f'style.{i + 1}.bias'] = g[f'mapping.fc{i}.bias']
    i += 1
  r['input.input'] = g['synthesis.b4.const'][None]

  def styled(dst, src, up):
    r[f'{dst}.conv.weight'] = g[f'{src}.weight'][None]
    if up:
      r[f'{dst}.conv.blur.kernel'] = f * 4
    r[f'{dst}.conv.modulation.weight'] = g[f'{src}.affine.weight']
    r[f'{dst}.conv.modulation.bias'] = g[f'{src}.affine.bias']
    r[f'{dst}.noise.weight'] = g[f'{src}.noise_strength'].reshape(1)
    r[f'{dst}.activate.bias'] = g[f'{src}.bias']

  def torgb(dst, src, up):
    if up:
      r[f'{dst}.upsample.kernel'] = f * 4
    r[f'{dst}.conv.weight'] = g[f'{src}.weight'][None]
    r[f'{dst}.conv.modulation.weight'] = g[f'{src}.affine.weight']
    r[f'{dst}.conv.modulation.bias'] = g[f'{src}.affine.bias']
    r[f'{dst}.bias'] = g[f'{src}.bias'].reshape(1, -1, 1, 1)

  styled('conv1', 'synthesis.b4.conv1', False)
  torgb('to_rgb1', 'synthesis.b4.torgb', False)
  for k, res in enumerate(res_list[1:]):
    styled(f'convs.{2 * k}', f'synthesis.b{res}.conv0', True)
    styled(f'convs.{2 * k + 1}', f'synthesis.b{res}.conv1', False)
  for k, res in enumerate(res_list[1:]):
    torgb(f'to_rgbs.{k}', f'synthesis.b{res}.torgb', True)
  r['noises.noise_0'] = g['synthesis.b4.conv1.noise_const'][None, None]
  for k, res in enumerate(res_list[1:]):
    r[f'noises.noise_{2 * k + 1}'] = g[f'synthesis.b{res}.conv0.noise_const'][None, None]
    r[f'noises.noise_{2 * k + 2}'] = g[f'synthesis.b{res}.conv1.noise_const'][None, None]
  if d is None:
    return r, None

  rd: dict[str, np.ndarray] = collections.OrderedDict()
  d_res = sorted(_blocks(d, r'b(\d+)\.conv0\.'), reverse=True)
  fd = d['b4.conv.resample_filter']
  rd['convs.0.0.weight'] = d[f'b{d_res[0]}.fromrgb.weight']
  rd['convs.0.1.bias'] = d[f'b{d_res[0]}.fromrgb.bias']
  for j, res in enumerate(d_res, start=1):
    rd[f'convs.{j}.conv1.0.weight'] = d[f'b{res}.conv0.weight']
    rd[f'convs.{j}.conv1.1.bias'] = d[f'b{res}.conv0.bias']
    rd[f'convs.{j}.conv2.0.kernel'] = fd
    rd[f'convs.{j}.conv2.1.weight'] = d[f'b{res}.conv1.weight']
    rd[f'convs.{j}.conv2.2.bias'] = d[f'b{res}.conv1.bias']
    rd[f'convs.{j}.skip.0.kernel'] = fd
    rd[f'convs.{j}.skip.1.weight'] = d[f'b{res}.skip.weight']
  rd['final_conv.0.weight'] = d['b4.conv.weight']
  rd['final_conv.1.bias'] = d['b4.conv.bias']
  rd['final_linear.0.weight'] = d['b4.fc.weight']
  rd['final_linear.0.bias'] = d['b4.fc.bias']
  rd['final_linear.1.weight'] = d['b4.out.weight']
  rd['final_linear.1.bias'] = d['b4.out.bias']
  return r, rd


def rosinality_checkpoint(g: dict, d: dict | None = None, latent_avg: bool = True,
                          args: bool = True) -> dict:
  """The dict rosinality's train.py / convert_weight.py save (g_ema, d, latent_avg, args)."""
  rg, rd = official_to_rosinality(g, d)
  ckpt: dict[str, Any] = {'g_ema': collections.OrderedDict(rg)}
  if rd is not None:
    ckpt['d'] = collections.OrderedDict(rd)
  if latent_avg:
    ckpt['latent_avg'] = g['mapping.w_avg']
  if args:
    ckpt['args'] = NewObj(Global('argparse', 'Namespace'),
                          state={'size': 32, 'latent': 64, 'n_mlp': 8, 'channel_multiplier': 2})
  return ckpt


# ------------------------------------------------------------------------------------------
# Original TensorFlow StyleGAN2 pickles (dnnlib.tflib.network.Network).

def official_to_tf(g: dict, d: dict) -> tuple[dict, dict]:
  """Official G/D -> TF variable dicts ('mapping/Dense0/weight', ...): the inverse of
  stylegan2-ada-pytorch legacy.py (transposes, `mod_bias - 1`, Conv0_up kernel flip)."""
  t: dict[str, np.ndarray] = {'dlatent_avg': g['mapping.w_avg']}
  i = 0
  while f'mapping.fc{i}.weight' in g:
    t[f'mapping/Dense{i}/weight'] = g[f'mapping.fc{i}.weight'].T.copy()
    t[f'mapping/Dense{i}/bias'] = g[f'mapping.fc{i}.bias']
    i += 1
  conv = lambda w: w.transpose(2, 3, 1, 0).copy()  # [O,I,kh,kw] -> [kh,kw,I,O]

  def layer(dst, src, flip=False):
    w = conv(g[f'{src}.weight'])
    t[f'{dst}/weight'] = w[::-1, ::-1].copy() if flip else w
    t[f'{dst}/mod_weight'] = g[f'{src}.affine.weight'].T.copy()
    t[f'{dst}/mod_bias'] = g[f'{src}.affine.bias'] - np.float32(1)
    t[f'{dst}/bias'] = g[f'{src}.bias']
    if f'{src}.noise_strength' in g:
      t[f'{dst}/noise_strength'] = g[f'{src}.noise_strength']

  t['synthesis/4x4/Const/const'] = g['synthesis.b4.const'][None]
  layer('synthesis/4x4/Conv', 'synthesis.b4.conv1')
  layer('synthesis/4x4/ToRGB', 'synthesis.b4.torgb')
  t['synthesis/noise0'] = g['synthesis.b4.conv1.noise_const'][None, None]
  for res in _blocks(g, r'synthesis\.b(\d+)\.conv0\.'):
    r = f'synthesis/{res}x{res}'
    layer(f'{r}/Conv0_up', f'synthesis.b{res}.conv0', flip=True)
    layer(f'{r}/Conv1', f'synthesis.b{res}.conv1')
    layer(f'{r}/ToRGB', f'synthesis.b{res}.torgb')
    n = int(np.log2(res)) * 2 - 5
    t[f'synthesis/noise{n}'] = g[f'synthesis.b{res}.conv0.noise_const'][None, None]
    t[f'synthesis/noise{n + 1}'] = g[f'synthesis.b{res}.conv1.noise_const'][None, None]

  td: dict[str, np.ndarray] = {}
  for res in _blocks(d, r'b(\d+)\.conv0\.'):
    r = f'{res}x{res}'
    if f'b{res}.fromrgb.weight' in d:
      td[f'{r}/FromRGB/weight'] = conv(d[f'b{res}.fromrgb.weight'])
      td[f'{r}/FromRGB/bias'] = d[f'b{res}.fromrgb.bias']
    td[f'{r}/Conv0/weight'] = conv(d[f'b{res}.conv0.weight'])
    td[f'{r}/Conv0/bias'] = d[f'b{res}.conv0.bias']
    td[f'{r}/Conv1_down/weight'] = conv(d[f'b{res}.conv1.weight'])
    td[f'{r}/Conv1_down/bias'] = d[f'b{res}.conv1.bias']
    td[f'{r}/Skip/weight'] = conv(d[f'b{res}.skip.weight'])
  td['4x4/Conv/weight'] = conv(d['b4.conv.weight'])
  td['4x4/Conv/bias'] = d['b4.conv.bias']
  td['4x4/Dense0/weight'] = d['b4.fc.weight'].T.copy()
  td['4x4/Dense0/bias'] = d['b4.fc.bias']
  td['Output/weight'] = d['b4.out.weight'].T.copy()
  td['Output/bias'] = d['b4.out.bias']
  return t, td


def _tf_network(name: str, variables: dict, static_kwargs: dict, components: dict) -> NewObj:
  state = {
      'version': 4,
      'name': name,
      'static_kwargs': static_kwargs,
      'components': easy_dict(components),
      'build_module_src': 'import os\nos.system("echo never run")\n',
      'build_func_name': f'training.networks_stylegan2.{name}',
      'variables': [(k, v) for k, v in variables.items()],
  }
  return NewObj(Global('dnnlib.tflib.network', 'Network'), state=state)


def tf_pickle(g: dict, d: dict, static_g: dict, static_d: dict) -> tuple:
  """(G, D, Gs) as a TensorFlow StyleGAN2 `network-*.pkl` holds them (G = Gs here)."""
  t, td = official_to_tf(g, d)

  def generator(name):
    mapping = {k[len('mapping/'):]: v for k, v in t.items() if k.startswith('mapping/')}
    synthesis = {k[len('synthesis/'):]: v for k, v in t.items() if k.startswith('synthesis/')}
    return _tf_network(name, {'dlatent_avg': t['dlatent_avg']}, static_g, {
        'mapping': _tf_network('G_mapping', mapping, static_g, {}),
        'synthesis': _tf_network('G_synthesis', synthesis, static_g, {}),
    })
  return (generator('G'), _tf_network('D', td, static_d, {}), generator('Gs'))


# ------------------------------------------------------------------------------------------
# TorchScript archives (torch.jit.save).

def script_module(qualified_name: str, attributes: dict) -> NewObj:
  """A TorchScript object: GLOBAL '__torch__.<path> <Class>', NEWOBJ, BUILD {attributes}."""
  module, _, name = qualified_name.rpartition('.')
  return NewObj(Global(module, name), state=dict(attributes))


def write_torchscript(root: NewObj, constants: tuple, path_or_file,
                      archive: str = 'model') -> None:
  """A `torch.jit.save`-style archive: data.pkl (+ data/), constants.pkl (+ constants/),
  code/ (TorchScript source: never read by a loader that must not run code)."""
  records: dict[str, bytes] = {}

  def writer(folder):
    def tensor(x):
      a, storage_type, raw = _array_and_type(x)
      key = str(sum(1 for r in records if r.startswith(folder)))
      records[f'{folder}{key}'] = raw
      pid = PersistentId(('storage', Global('torch', storage_type), key, 'cpu', a.size))
      return _rebuild(pid, a)
    return tensor

  records['data.pkl'] = PickleWriter(2, writer('data/')).dumps(root)
  records['constants.pkl'] = PickleWriter(2, writer('constants/')).dumps(tuple(constants))
  records['code/__torch__.py'] = b'class M(Module):\n  def forward(self, x):\n    return x\n'
  records['version'] = b'3\n'
  records['byteorder'] = b'little'
  with zipfile.ZipFile(path_or_file, 'w', zipfile.ZIP_STORED) as zf:
    for name, data in records.items():
      zf.writestr(f'{archive}/{name}', data)
