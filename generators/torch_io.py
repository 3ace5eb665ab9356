"""Read PyTorch checkpoint files with numpy only: no torch, no code from the file.

The files our users already have were written by `torch.save`, `torch.jit.save` or plain
`pickle.dump` of objects holding torch tensors. This module reads all three into plain Python
containers whose tensors are `numpy.ndarray`s, with a restricted unpickler that resolves globals
only from an explicit allow-list of data-only stand-ins. Nothing from the file is ever executed:
NVlabs' `module_src` is kept as a string, TorchScript `code/` is never read.

Formats (layouts as defined in PyTorch `torch/serialization.py`, `torch/_utils.py`,
`torch/storage.py`, `torch/jit/_pickle.py`):

1. zip format (`torch.save`, PyTorch >= 1.6): a zip archive with one top-level folder of any
   name holding `data.pkl` (the pickled object; each storage is a persistent id
   `('storage', <StorageType>, key, location, numel)`), `data/<key>` (raw storage bytes),
   `byteorder` (`little`/`big`; absent = little) and `version`.
2. legacy format (`torch.save(..., _use_new_zipfile_serialization=False)`, PyTorch < 1.6):
   consecutive pickles: magic number `0x1950a86a20f9469cfc6c`, protocol version 1001, a sys-info
   dict (`little_endian`, type sizes), the object (persistent ids
   `('storage', <StorageType>, key, location, numel, view_metadata)`), the sorted list of
   storage keys; then, per key, an int64 element count and the raw storage bytes.
3. TorchScript archives (`torch.jit.save`): the zip format plus `code/`, `constants.pkl`
   (its storages under `constants/<key>`) and objects pickled as `__torch__.<path>.<Class>`
   globals with a dict of attributes. They load into `ScriptObject`s (generic objects
   that hold the attributes) so that weights can be reached by name; see `state_dict_of`.
4. plain pickles (`read_pickle`), e.g. NVlabs `network-snapshot-*.pkl`: tensors pickled by
   `Tensor.__reduce_ex__` hold their storage as `torch.storage._load_from_bytes(bytes)`, where
   the bytes are a complete legacy-format file holding just that storage.

Tensors come back as C-contiguous, writable `numpy.ndarray`s with the storage offset, size and
stride applied. dtypes keep their numpy equivalent (float16 stays float16, int64, bool, uint8,
complex ...), except **bfloat16, which numpy lacks: it is widened to float32 (exactly)**.
`torch.nn.Parameter`s become plain arrays. Storage bytes are byte-swapped to native order when
the file says it was written big-endian.

Example:
  >>> sd = torch_io.load('vgg16-397923af.pth')          # OrderedDict name -> ndarray
  >>> sd['features.0.weight'].shape
  (64, 3, 3, 3)
  >>> net = torch_io.load('vgg16.pt')                   # TorchScript archive
  >>> weights = torch_io.state_dict_of(net)             # dotted names -> ndarray
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pathlib
import pickle
import pickletools
import struct
import zipfile
from typing import Any, BinaryIO, Callable, Iterable, Mapping

import numpy as np

__all__ = [
    'CheckpointError',
    'RefusedGlobalError',
    'EasyDict',
    'GenericObject',
    'ScriptObject',
    'PersistentObject',
    'TFNetwork',
    'TorchDtype',
    'MAGIC_NUMBER',
    'load',
    'read_pickle',
    'state_dict_of',
    'is_zip',
    'is_legacy_torch',
]

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # first pickle of a legacy-format torch.save file
LEGACY_PROTOCOL_VERSION = 1001          # second pickle of a legacy-format file

_RESAVE_HINT = ('re-download the file, or (where torch is available) re-save it with '
                '`torch.save(torch.load(path), path)`')


# ------------------------------------------------------------------------------------------
# Errors.

class CheckpointError(ValueError):
  """A checkpoint file could not be read; the message names the file and the fix."""


class RefusedGlobalError(CheckpointError):
  """The pickle asked for a global that is not on the data-only allow-list."""


def _with_name(name: str, err: CheckpointError) -> CheckpointError:
  """Returns `err` with its message prefixed by the file name (once)."""
  msg = str(err)
  if msg.startswith(name + ':'):
    return err
  return type(err)(f'{name}: {msg}')


# ------------------------------------------------------------------------------------------
# dtypes and storage types.

@dataclasses.dataclass(frozen=True)
class _DType:
  name: str       # torch name, e.g. 'float32'
  numpy: str      # little-endian numpy type string of the raw bytes
  storage: str    # legacy typed-storage class name, e.g. 'FloatStorage'

  @property
  def itemsize(self) -> int:
    return np.dtype(self.numpy).itemsize


_DTYPES = {d.name: d for d in [
    _DType('float32', '<f4', 'FloatStorage'),
    _DType('float64', '<f8', 'DoubleStorage'),
    _DType('float16', '<f2', 'HalfStorage'),
    _DType('bfloat16', '<u2', 'BFloat16Storage'),  # widened to float32 on read
    _DType('int64', '<i8', 'LongStorage'),
    _DType('int32', '<i4', 'IntStorage'),
    _DType('int16', '<i2', 'ShortStorage'),
    _DType('int8', '|i1', 'CharStorage'),
    _DType('uint8', '|u1', 'ByteStorage'),
    _DType('bool', '|b1', 'BoolStorage'),
    _DType('complex64', '<c8', 'ComplexFloatStorage'),
    _DType('complex128', '<c16', 'ComplexDoubleStorage'),
    _DType('uint16', '<u2', 'UInt16Storage'),
    _DType('uint32', '<u4', 'UInt32Storage'),
    _DType('uint64', '<u8', 'UInt64Storage'),
]}
_DTYPE_ALIASES = {
    'float': 'float32', 'double': 'float64', 'half': 'float16', 'long': 'int64',
    'int': 'int32', 'short': 'int16', 'cfloat': 'complex64', 'cdouble': 'complex128',
}
_STORAGE_TO_DTYPE = {d.storage: d for d in _DTYPES.values()}
_STORAGE_TO_DTYPE['UntypedStorage'] = _DTYPES['uint8']
_STORAGE_TO_DTYPE['ByteStorage'] = _DTYPES['uint8']


class TorchDtype:
  """Stand-in for a `torch.<dtype>` global (e.g. the dtype argument of `_rebuild_tensor_v3`)."""

  def __init__(self, name: str):
    self.name = name

  def __repr__(self):
    return f'torch.{self.name}'

  def __eq__(self, other):
    return isinstance(other, TorchDtype) and other.name == self.name

  def __hash__(self):
    return hash(('TorchDtype', self.name))


class _StorageType:
  """Stand-in for a storage class global such as `torch.FloatStorage`."""

  def __init__(self, qualname: str, dtype: _DType):
    self.qualname = qualname
    self.dtype = dtype

  def __repr__(self):
    return self.qualname


class _Storage:
  """Raw bytes of one torch storage, interpreted with a dtype when a tensor is rebuilt."""

  def __init__(self, key: str, dtype: _DType, numel: int, data: bytes | memoryview | None,
               big_endian: bool = False):
    self.key = key
    self.dtype = dtype
    self.numel = numel
    self.data = data            # None while a legacy file's storages are not read yet
    self.big_endian = big_endian

  def flat(self, dtype: _DType) -> np.ndarray:
    """The bytes as a read-only 1-D array of `dtype` (file byte order)."""
    np_dtype = np.dtype(dtype.numpy)
    if self.big_endian and np_dtype.itemsize > 1:
      np_dtype = np_dtype.newbyteorder('>')
    count = len(self.data) // np_dtype.itemsize
    return np.frombuffer(self.data, dtype=np_dtype, count=count)


class _Pending:
  """Placeholder for a tensor whose storage bytes are not read yet (legacy pass 1)."""


_PENDING = _Pending()


# ------------------------------------------------------------------------------------------
# Generic objects: data-only stand-ins for classes we refuse to import.

class EasyDict(dict):
  """Stand-in for `dnnlib.util.EasyDict`: a dict with attribute access."""

  def __getattr__(self, name):
    try:
      return self[name]
    except KeyError:
      raise AttributeError(name) from None

  def __setattr__(self, name, value):
    self[name] = value

  def __delattr__(self, name):
    del self[name]


class _ModuleLike:
  """Attribute access into an nn.Module-like state: `obj.mapping.fc0.weight`."""

  def _state_dict(self) -> Mapping[str, Any]:
    raise NotImplementedError

  def __getattr__(self, name):
    if name.startswith('__') or name in ('state', '_state'):
      raise AttributeError(name)
    state = self._state_dict()
    if isinstance(state, Mapping):
      if name in state:
        return state[name]
      for group in ('_parameters', '_buffers', '_modules'):
        members = state.get(group)
        if isinstance(members, Mapping) and name in members:
          return members[name]
    raise AttributeError(f'{type(self).__name__} has no attribute {name!r}')


class GenericObject(_ModuleLike):
  """An instance of a class that is only recorded, never imported (e.g. `torch.nn.Conv2d`).

  `qualified_name` (class attribute) is the `module.Class` the pickle asked for; the state the
  pickle set lands in `__dict__` (dict states) or in `_state` (any other state).
  """

  qualified_name = '?'

  def __setstate__(self, state):
    if isinstance(state, dict) and all(isinstance(k, str) for k in state):
      self.__dict__.update(state)
    else:
      self.__dict__['_state'] = state

  def _state_dict(self):
    return self.__dict__

  def __repr__(self):
    keys = [k for k in self.__dict__ if not k.startswith('_')][:6]
    return f'<{self.qualified_name} {keys}>'


class ScriptObject(GenericObject):
  """An object of a TorchScript class (`__torch__.*`), loaded from a `torch.jit.save` archive.

  Attributes are the TorchScript attributes (parameters, buffers, submodules, plain values).
  The root object of an archive also carries `__torchscript_constants__` (the tuple of
  tensors in `constants.pkl`).
  """


_generic_classes: dict[tuple[type, str], type] = {}


def _generic_class(base: type, qualified_name: str) -> type:
  key = (base, qualified_name)
  if key not in _generic_classes:
    short = qualified_name.rsplit('.', 1)[-1] or 'Object'
    _generic_classes[key] = type(short, (base,), {'qualified_name': qualified_name})
  return _generic_classes[key]


@dataclasses.dataclass
class PersistentObject(_ModuleLike):
  """What `torch_utils.persistence._reconstruct_persistent_obj(meta)` would have rebuilt.

  NVlabs network pickles store every network as `meta = dict(type='class', version,
  module_src, class_name, state)`. We record it; `module_src` (Python source) is never run.
  `state` is the module's `__dict__` (`_parameters`, `_buffers`, `_modules`, `_init_kwargs`...).
  """

  class_name: str                 # e.g. 'Generator'
  module_src: str                 # source of the defining module, kept as text only
  state: Any                      # usually a dict: the object's __dict__
  version: int | None = None      # persistence format version (6 for stylegan2-ada/3)

  def _state_dict(self):
    state = self.__dict__.get('state')
    return state if isinstance(state, Mapping) else {}

  @property
  def init_kwargs(self) -> dict | None:
    """The constructor keyword arguments NVlabs persistence recorded, or None."""
    return self._state_dict().get('_init_kwargs')

  def __repr__(self):
    return f'PersistentObject({self.class_name}, version={self.version})'


class TFNetwork(GenericObject):
  """Stand-in for `dnnlib.tflib.network.Network` (original TensorFlow StyleGAN/StyleGAN2).

  Its state holds `version`, `name`, `static_kwargs`, `components` (dict of sub-networks),
  `build_module_src` (never run), `build_func_name` and `variables` ([(name, ndarray)]).
  """

  qualified_name = 'dnnlib.tflib.network.Network'


class Namespace(GenericObject):
  """Stand-in for `argparse.Namespace` (training arguments stored in checkpoints)."""

  qualified_name = 'argparse.Namespace'

  def __init__(self, **kwargs):
    self.__dict__.update(kwargs)


# ------------------------------------------------------------------------------------------
# Allow-listed callables (stand-ins for torch internals).

def _as_dtype(dtype) -> _DType:
  if isinstance(dtype, TorchDtype):
    return _DTYPES[dtype.name]
  if isinstance(dtype, _DType):
    return dtype
  raise CheckpointError(f'expected a torch dtype, got {dtype!r}')


def _tensor_from_storage(storage, storage_offset, size, stride, dtype=None):
  """Materialises one tensor view of a storage as an owned numpy array."""
  if storage is _PENDING or isinstance(storage, _Pending):
    return _PENDING
  if not isinstance(storage, _Storage):
    raise CheckpointError(f'tensor rebuild expected a storage, got {type(storage).__name__}')
  if storage.data is None:
    return _PENDING
  dt = storage.dtype if dtype is None else _as_dtype(dtype)
  size = tuple(int(s) for s in size)
  stride = tuple(int(s) for s in stride)
  offset = int(storage_offset)
  if len(stride) != len(size):
    raise CheckpointError(f'tensor with size {size} has stride {stride} of another rank')
  if any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
    raise CheckpointError(f'tensor with negative size/stride/offset {size}/{stride}/{offset}')
  if 0 in size:
    out = np.zeros(size, dtype=np.dtype(dt.numpy))
  else:
    flat = storage.flat(dt)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= flat.size:
      raise CheckpointError(
          f'tensor of size {size} (stride {stride}, offset {offset}) reads element {last} of '
          f'storage {storage.key!r}, which holds {flat.size} elements: the file is corrupt')
    if size:
      view = np.lib.stride_tricks.as_strided(
          flat[offset:], shape=size, strides=[s * flat.itemsize for s in stride])
    else:  # 0-d (as_strided treats an empty shape as "keep the input's")
      view = flat[offset:offset + 1].reshape(())
    out = np.array(view, dtype=flat.dtype.newbyteorder('='), order='C')
  if dt.name == 'bfloat16':  # bfloat16 = top 16 bits of a float32
    out = (out.astype(np.uint32) << 16).view(np.float32)
  return out


def _rebuild_tensor(storage, storage_offset, size, stride):
  return _tensor_from_storage(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata
  return _tensor_from_storage(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
  del requires_grad, backward_hooks, metadata
  return _tensor_from_storage(storage, storage_offset, size, stride, dtype=dtype)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
  del requires_grad, backward_hooks, state
  return data


class _TensorType:
  """Stand-in for `torch.Tensor` / `torch.nn.Parameter` used as a class argument."""

  def __init__(self, qualname):
    self.qualname = qualname

  def __repr__(self):
    return self.qualname


_ALLOWED_REBUILD_FUNCS = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3,
                          _rebuild_parameter, _rebuild_parameter_with_state)


def _rebuild_from_type_v2(func, new_type, args, state):
  del new_type, state
  if func not in _ALLOWED_REBUILD_FUNCS:
    raise CheckpointError(f'tensor subclass rebuilt with unsupported function {func!r}')
  return func(*args)


def _rebuild_from_type(func, new_type, args, dict_):
  return _rebuild_from_type_v2(func, new_type, args, dict_)


def _rebuild_device_tensor_from_numpy(data, dtype, device, requires_grad):
  del device, requires_grad
  out = np.array(data)
  return out.astype(np.float32) if _as_dtype(dtype).name == 'bfloat16' else out


def _rebuild_device_tensor_from_cpu_tensor(data, dtype, device, requires_grad):
  del dtype, device, requires_grad
  return data


def _unsupported(what: str) -> Callable[..., Any]:
  def fn(*args, **kwargs):
    del args, kwargs
    raise CheckpointError(f'{what} are not supported by this reader (only dense tensors are)')
  return fn


def _torch_size(dims=()):
  return tuple(int(d) for d in dims)


def _torch_device(*args):
  return ':'.join(str(a) for a in args)


def _codecs_encode(text, encoding='utf-8'):
  """`_codecs.encode` as protocol-2 pickles use it for bytes: latin-1 text only."""
  if not isinstance(text, str) or encoding.replace('-', '').lower() not in ('latin1', 'utf8'):
    raise CheckpointError(f'_codecs.encode({type(text).__name__}, {encoding!r}) refused')
  return text.encode(encoding)


def _copyreg_reconstructor(cls, base, state):
  """`copyreg._reconstructor` (protocol 0/1 objects), for generic stand-in classes only."""
  if not (isinstance(cls, type) and issubclass(cls, GenericObject) and base is object
          and state is None):
    raise CheckpointError(f'copyreg._reconstructor({cls!r}, {base!r}) refused')
  return object.__new__(cls)


def _reconstruct_persistent_obj(meta):
  if not isinstance(meta, Mapping) or meta.get('type') != 'class':
    raise CheckpointError('torch_utils.persistence object with unknown meta data')
  return PersistentObject(class_name=str(meta.get('class_name')),
                          module_src=str(meta.get('module_src', '')),
                          state=meta.get('state'),
                          version=meta.get('version'))


def _restore_type_tag(value, type_str=None):
  del type_str
  return value


def _identity_list(data):
  return list(data)


def _numpy_allowed() -> dict[str, Any]:
  """numpy globals that ndarray / dtype / scalar pickles use (both numpy 1 and 2 paths)."""
  try:
    from numpy._core import multiarray  # numpy >= 2
  except ImportError:  # pragma: no cover - numpy 1
    from numpy.core import multiarray
  out = {'numpy.ndarray': np.ndarray, 'numpy.dtype': np.dtype}
  for mod in ('numpy.core.multiarray', 'numpy._core.multiarray'):
    out[f'{mod}._reconstruct'] = multiarray._reconstruct
    out[f'{mod}.scalar'] = multiarray.scalar
  for name in ('Float16DType', 'Float32DType', 'Float64DType', 'Int8DType', 'Int16DType',
               'Int32DType', 'Int64DType', 'UInt8DType', 'UInt16DType', 'UInt32DType',
               'UInt64DType', 'BoolDType', 'Complex64DType', 'Complex128DType'):
    dtype_cls = getattr(getattr(np, 'dtypes', None), name, None)
    if dtype_cls is not None:
      out[f'numpy.dtypes.{name}'] = dtype_cls
  return out


def _base_allowed() -> dict[str, Any]:
  allowed: dict[str, Any] = {
      # Python containers and builtins that only build data.
      'collections.OrderedDict': collections.OrderedDict,
      'builtins.set': set, 'builtins.frozenset': frozenset, 'builtins.slice': slice,
      'builtins.complex': complex, 'builtins.bytearray': bytearray, 'builtins.range': range,
      'builtins.object': object,
      '_codecs.encode': _codecs_encode,
      'copyreg._reconstructor': _copyreg_reconstructor,
      'argparse.Namespace': Namespace,
      'pathlib.PosixPath': pathlib.PurePosixPath,
      'pathlib.WindowsPath': pathlib.PureWindowsPath,
      'pathlib.PurePosixPath': pathlib.PurePosixPath,
      'pathlib.PureWindowsPath': pathlib.PureWindowsPath,
      # NVlabs dnnlib / torch_utils.
      'dnnlib.util.EasyDict': EasyDict,
      'dnnlib.EasyDict': EasyDict,
      'torch_utils.persistence._reconstruct_persistent_obj': _reconstruct_persistent_obj,
      'dnnlib.tflib.network.Network': TFNetwork,
      # torch tensor rebuilding.
      'torch._utils._rebuild_tensor': _rebuild_tensor,
      'torch._utils._rebuild_tensor_v2': _rebuild_tensor_v2,
      'torch._utils._rebuild_tensor_v3': _rebuild_tensor_v3,
      'torch._utils._rebuild_parameter': _rebuild_parameter,
      'torch._utils._rebuild_parameter_with_state': _rebuild_parameter_with_state,
      'torch._utils._rebuild_from_type_v2': _rebuild_from_type_v2,
      'torch._tensor._rebuild_from_type_v2': _rebuild_from_type_v2,
      'torch._tensor._rebuild_from_type': _rebuild_from_type,
      'torch._utils._rebuild_device_tensor_from_numpy': _rebuild_device_tensor_from_numpy,
      'torch._utils._rebuild_device_tensor_from_cpu_tensor':
          _rebuild_device_tensor_from_cpu_tensor,
      'torch._utils._rebuild_qtensor': _unsupported('quantized tensors'),
      'torch._utils._rebuild_sparse_tensor': _unsupported('sparse tensors'),
      'torch._utils._rebuild_nested_tensor': _unsupported('nested tensors'),
      'torch._utils._rebuild_wrapper_subclass': _unsupported('tensor wrapper subclasses'),
      'torch._utils._rebuild_meta_tensor_no_storage': _unsupported('meta tensors (no data)'),
      'torch.Tensor': _TensorType('torch.Tensor'),
      'torch._tensor.Tensor': _TensorType('torch.Tensor'),
      'torch.nn.parameter.Parameter': _TensorType('torch.nn.Parameter'),
      'torch.Size': _torch_size,
      'torch.device': _torch_device,
      # TorchScript pickles.
      'torch.jit._pickle.restore_type_tag': _restore_type_tag,
      'torch.jit._pickle.build_intlist': _identity_list,
      'torch.jit._pickle.build_doublelist': _identity_list,
      'torch.jit._pickle.build_boollist': _identity_list,
      'torch.jit._pickle.build_tensorlist': _identity_list,
  }
  for name, dt in _DTYPES.items():
    allowed[f'torch.{name}'] = TorchDtype(name)
  for alias, name in _DTYPE_ALIASES.items():
    allowed[f'torch.{alias}'] = TorchDtype(name)
  for storage, dt in _STORAGE_TO_DTYPE.items():
    for mod in ('torch', 'torch.cuda', 'torch.storage'):
      allowed[f'{mod}.{storage}'] = _StorageType(f'{mod}.{storage}', dt)
  allowed['__builtin__.set'] = set
  allowed['__builtin__.frozenset'] = frozenset
  allowed['__builtin__.slice'] = slice
  allowed['__builtin__.complex'] = complex
  allowed['__builtin__.object'] = object
  allowed['copy_reg._reconstructor'] = _copyreg_reconstructor
  allowed.update(_numpy_allowed())
  return allowed


_ALLOWED = _base_allowed()

# Module prefixes whose classes load as data-only `GenericObject`s (never imported).
_GENERIC_PREFIXES = ('torch.nn.modules.',)


# ------------------------------------------------------------------------------------------
# The restricted unpickler.

@dataclasses.dataclass
class _Options:
  name: str                                  # file name for messages
  generic_prefixes: tuple[str, ...] = _GENERIC_PREFIXES
  torchscript: bool = False                  # allow `__torch__.*` classes
  nested_pending: bool = False               # legacy pass 1: do not open nested files


class _Unpickler(pickle.Unpickler):
  """`pickle.Unpickler` whose globals come only from the allow-list."""

  def __init__(self, file, options: _Options,
               persistent_load: Callable[[Any], Any] | None = None):
    super().__init__(file, encoding='latin1')
    self._options = options
    self._persistent = persistent_load

  def find_class(self, module, name):
    qualified = f'{module}.{name}'
    if qualified == 'torch.storage._load_from_bytes':
      return self._load_from_bytes
    if qualified in _ALLOWED:
      return _ALLOWED[qualified]
    if self._options.torchscript and (module == '__torch__' or module.startswith('__torch__.')):
      return _generic_class(ScriptObject, qualified)
    if any(qualified.startswith(p) for p in self._options.generic_prefixes):
      return _generic_class(GenericObject, qualified)
    raise RefusedGlobalError(
        f'refused to load the global {qualified!r}: it is not on the allow-list of data-only '
        'types, and loading it could run code from the file. Only tensors, containers and '
        'the known checkpoint classes are read (see generators/torch_io.py). If you trust the '
        'file, load it with torch and save a plain state_dict: '
        '`torch.save(obj.state_dict(), "weights.pt")`.')

  def persistent_load(self, pid):
    if self._persistent is None:
      raise CheckpointError(
          f'a plain pickle cannot hold a persistent id ({pid!r}); this looks like the main '
          'pickle of a torch.save file: read the whole file with torch_io.load()')
    return self._persistent(pid)

  def _load_from_bytes(self, data):
    """`torch.storage._load_from_bytes`: a nested legacy-format file holding one storage."""
    if self._options.nested_pending:
      return _PENDING
    if not isinstance(data, (bytes, bytearray)):
      raise CheckpointError('torch.storage._load_from_bytes expects bytes')
    nested = dataclasses.replace(self._options, name=f'{self._options.name} (nested storage)')
    obj = _load_legacy(io.BytesIO(data), nested)
    if not isinstance(obj, _Storage):
      raise CheckpointError('torch.storage._load_from_bytes did not hold a storage')
    return obj


def _parse_storage_pid(pid) -> tuple[_DType, str, int, Any]:
  """('storage', StorageType, key, location, numel[, view_metadata]) -> (dtype, key, ...)."""
  if not isinstance(pid, tuple) or not pid:
    raise CheckpointError(f'unknown persistent id {pid!r}')
  kind = pid[0].decode('ascii') if isinstance(pid[0], bytes) else pid[0]
  if kind == 'module':
    raise CheckpointError(
        'the file pickles a whole nn.Module class by reference (torch.save(model)); that '
        'needs the original Python class. Save `model.state_dict()` instead')
  if kind != 'storage' or len(pid) not in (5, 6):
    raise CheckpointError(f'unknown persistent id {pid!r}')
  storage_type, key, _location, numel = pid[1:5]
  view = pid[5] if len(pid) == 6 else None
  if isinstance(storage_type, _StorageType):
    dtype = storage_type.dtype
  elif isinstance(storage_type, TorchDtype):
    dtype = _DTYPES[storage_type.name]
  else:
    raise CheckpointError(f'unknown storage type {storage_type!r}')
  key = key.decode('ascii') if isinstance(key, bytes) else str(key)
  return dtype, key, int(numel), view


def _unpickle(data_or_file, options: _Options, persistent_load=None):
  f = io.BytesIO(data_or_file) if isinstance(data_or_file, (bytes, bytearray)) else data_or_file
  return _Unpickler(f, options, persistent_load).load()


def _translate(name: str, err: BaseException) -> CheckpointError:
  """Maps low-level failures to a CheckpointError that names the file and the fix."""
  if isinstance(err, CheckpointError):
    return _with_name(name, err)
  text = str(err)
  if isinstance(err, EOFError) or 'truncated' in text or 'ran out of input' in text.lower():
    return CheckpointError(
        f'{name}: the file ends too early (truncated; {type(err).__name__}: {text}). It is '
        f'probably an incomplete download or copy: {_RESAVE_HINT}.')
  return CheckpointError(
      f'{name}: the file is corrupt or not a checkpoint ({type(err).__name__}: {text}); '
      f'{_RESAVE_HINT}.')


_READ_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
                AttributeError, struct.error, OverflowError, UnicodeDecodeError, MemoryError,
                RecursionError, zipfile.BadZipFile, NotImplementedError)


# ------------------------------------------------------------------------------------------
# Formats.

def _load_legacy(f: BinaryIO, options: _Options, *, check_magic: bool = True) -> Any:
  """Reads a legacy-format torch file from `f` (positioned at its start).

  1. magic number, protocol version and sys-info pickles;
  2. pass 1 over the object pickle: record each storage key's dtype (tensors pending);
  3. the storage-key list, then per key an int64 element count and the raw bytes;
  4. pass 2 over the object pickle with the storages filled in.
  """
  # 1. header.
  magic = _unpickle(f, options)
  if check_magic and magic != MAGIC_NUMBER:
    raise CheckpointError(
        f'unknown magic number {magic!r}: not a legacy torch.save file (expected '
        f'{MAGIC_NUMBER:#x}); {_RESAVE_HINT}')
  protocol = _unpickle(f, options)
  if protocol != LEGACY_PROTOCOL_VERSION:
    raise CheckpointError(
        f'unsupported legacy torch protocol version {protocol!r} (expected '
        f'{LEGACY_PROTOCOL_VERSION}); {_RESAVE_HINT}')
  sys_info = _unpickle(f, options)
  little = bool(sys_info.get('little_endian', True)) if isinstance(sys_info, dict) else True
  start = f.tell()

  # 2. pass 1: which storages, with which dtype.
  seen: dict[str, _DType] = {}

  def record(pid):
    dtype, key, numel, view = _parse_storage_pid(pid)
    seen.setdefault(key, dtype)
    if view is not None:
      seen.setdefault(str(view[0]), dtype)
    return _Storage(key, dtype, numel, None)

  _unpickle(f, dataclasses.replace(options, nested_pending=True), record)

  # 3. storage bytes.
  keys = _unpickle(f, options)
  raw: dict[str, bytes] = {}
  count_fmt = '<q' if little else '>q'
  for key in keys:
    key = key.decode('ascii') if isinstance(key, bytes) else str(key)
    if key not in seen:
      raise CheckpointError(
          f'storage record {key!r} is listed but no tensor refers to it; the file is '
          f'corrupt: {_RESAVE_HINT}')
    head = f.read(8)
    if len(head) != 8:
      raise EOFError(f'storage {key!r}: missing element count')
    (count,) = struct.unpack(count_fmt, head)
    nbytes = count * seen[key].itemsize
    data = f.read(nbytes)
    if len(data) != nbytes:
      raise EOFError(f'storage {key!r}: {len(data)} of {nbytes} bytes present')
    raw[key] = data

  # 4. pass 2: the object with real data.
  storages: dict[tuple[str, str], _Storage] = {}

  def resolve(pid):
    dtype, key, numel, view = _parse_storage_pid(pid)
    if key not in raw:
      raise CheckpointError(
          f'missing storage record {key!r}: the object refers to it but the file does not '
          f'hold its bytes; the file is incomplete: {_RESAVE_HINT}')
    if view is not None:
      view_key, offset, view_size = str(view[0]), int(view[1]), int(view[2])
      lo = offset * dtype.itemsize
      data = memoryview(raw[key])[lo:lo + view_size * dtype.itemsize]
      return _Storage(view_key, dtype, view_size, data, big_endian=not little)
    if (key, dtype.name) not in storages:
      storages[key, dtype.name] = _Storage(key, dtype, numel, raw[key], big_endian=not little)
    return storages[key, dtype.name]

  end = f.tell()
  f.seek(start)
  obj = _unpickle(f, options, resolve)
  f.seek(end)
  return obj


def _archive_prefix(names: list[str]) -> str:
  """'<folder>/' holding data.pkl (torch allows any folder name)."""
  for n in names:
    parts = n.split('/')
    if len(parts) == 2 and parts[1] == 'data.pkl':
      return parts[0] + '/'
  raise CheckpointError(
      'this zip archive has no <folder>/data.pkl record, so it is not a torch.save or '
      f'torch.jit.save file; {_RESAVE_HINT}')


def _read_record(zf: zipfile.ZipFile, record: str) -> bytes:
  """One zip record; records whose stored CRC is 0 (torch with CRC writing off) read unchecked."""
  try:
    return zf.read(record)
  except zipfile.BadZipFile as e:
    if zf.getinfo(record).CRC != 0 or 'CRC' not in str(e):
      raise CheckpointError(f'bad zip archive: record {record}: {e}; {_RESAVE_HINT}') from e
    with zf.open(record) as fh:
      fh._expected_crc = None  # pylint: disable=protected-access
      return fh.read()


def _load_zip(zf: zipfile.ZipFile, options: _Options) -> Any:
  """Reads the zip format (and TorchScript archives, which extend it)."""
  names = zf.namelist()
  prefix = _archive_prefix(names)
  name_set = set(names)
  big = False
  if prefix + 'byteorder' in name_set:
    order = _read_record(zf, prefix + 'byteorder').decode('ascii', 'replace').strip()
    if order not in ('little', 'big'):
      raise CheckpointError(f'unknown byteorder record {order!r}; {_RESAVE_HINT}')
    big = order == 'big'
  torchscript = (prefix + 'constants.pkl' in name_set
                 or any(n.startswith(prefix + 'code/') for n in names))
  options = dataclasses.replace(options, torchscript=torchscript)
  cache: dict[tuple[str, str], _Storage] = {}

  def loader(tensor_dirs: tuple[str, ...]):
    def persistent_load(pid):
      dtype, key, numel, _ = _parse_storage_pid(pid)
      for d in tensor_dirs:
        record = f'{prefix}{d}{key}'
        if record in name_set:
          break
      else:
        raise CheckpointError(
            f'missing storage record {prefix}{tensor_dirs[0]}{key} in the archive: the file '
            f'is incomplete or was modified; {_RESAVE_HINT}')
      if (record, dtype.name) in cache:
        return cache[record, dtype.name]
      data = _read_record(zf, record)
      if len(data) < numel * dtype.itemsize:
        raise CheckpointError(
            f'storage record {record} holds {len(data)} bytes, the tensor needs '
            f'{numel * dtype.itemsize}: the file is corrupt; {_RESAVE_HINT}')
      cache[record, dtype.name] = _Storage(key, dtype, numel, data, big_endian=big)
      return cache[record, dtype.name]
    return persistent_load

  obj = _unpickle(_read_record(zf, prefix + 'data.pkl'), options, loader(('data/', 'constants/')))
  if torchscript and prefix + 'constants.pkl' in name_set:
    constants = _unpickle(_read_record(zf, prefix + 'constants.pkl'), options,
                          loader(('constants/', 'data/')))
    if isinstance(obj, ScriptObject):
      obj.__dict__['__torchscript_constants__'] = constants
  return obj


# ------------------------------------------------------------------------------------------
# Public API.

def _open(path_or_file) -> tuple[BinaryIO, str, bool]:
  """(seekable binary file, display name, whether we opened it)."""
  if isinstance(path_or_file, (str, os.PathLike)):
    name = os.fspath(path_or_file)
    try:
      return open(name, 'rb'), name, True
    except OSError as e:
      raise CheckpointError(f'{name}: cannot open the file ({e.strerror}); check the path') from e
  f = path_or_file
  name = str(getattr(f, 'name', '<file object>'))
  seekable = getattr(f, 'seekable', None)
  if not (callable(seekable) and seekable()) or f.tell() != 0:
    f = io.BytesIO(f.read())  # our offsets are absolute: start the stream at 0
  return f, name, False


def is_zip(head: bytes) -> bool:
  """Whether the first bytes are a zip local-file header (torch zip / TorchScript)."""
  return head[:4] == b'PK\x03\x04'


def _first_pickle_int(head: bytes) -> int | None:
  """The int a pickle at the start of `head` holds when it is just an int, else None."""
  value = None
  try:
    for opcode, arg, _ in pickletools.genops(io.BytesIO(head)):
      if opcode.name in ('PROTO', 'FRAME'):
        continue
      if opcode.name == 'STOP':
        return value
      if value is None and opcode.name in ('LONG1', 'LONG4', 'BININT', 'BININT1', 'BININT2',
                                          'INT', 'LONG') and isinstance(arg, int):
        value = arg
        continue
      return None
  except Exception:  # pylint: disable=broad-except  # not a pickle / cut short: not an int
    return None
  return None


def is_legacy_torch(head: bytes) -> bool:
  """Whether the first bytes start a legacy-format torch.save file (its magic-number pickle)."""
  return _first_pickle_int(head) == MAGIC_NUMBER


def _looks_tar(head: bytes) -> bool:
  return len(head) >= 262 and head[257:262] == b'ustar'


def load(path_or_file, *, generic_classes: Iterable[str] = ()) -> Any:
  """Reads a `torch.save` (zip or legacy) or `torch.jit.save` file without torch.

  Args:
    path_or_file: a path, or a binary file object (non-seekable ones are read into memory).
    generic_classes: extra module prefixes (e.g. `'torchvision.models.'`) whose classes are
      rebuilt as data-only `GenericObject`s instead of being refused. `torch.nn.modules.` is
      always allowed this way. No class is ever imported.

  Returns:
    The saved object with every tensor as a `numpy.ndarray` (bfloat16 widened to float32,
    other dtypes kept). TorchScript archives return their root `ScriptObject`.

  Raises:
    CheckpointError: truncated file, corrupt zip, unknown magic number, missing storage
      record, or (as `RefusedGlobalError`) a global that is not on the allow-list.
  """
  f, name, close = _open(path_or_file)
  options = _Options(name=name, generic_prefixes=_GENERIC_PREFIXES + tuple(generic_classes))
  try:
    head = f.read(512)
    f.seek(0)
    if not head:
      raise CheckpointError(f'{name}: the file is empty; {_RESAVE_HINT}.')
    if is_zip(head):
      try:
        zf = zipfile.ZipFile(f)
      except zipfile.BadZipFile as e:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 65557))
        if b'PK\x05\x06' not in f.read():
          raise CheckpointError(
              f'{name}: truncated: the zip archive (torch.save format) has no end-of-archive '
              f'record, so the file was cut short; {_RESAVE_HINT}.') from e
        raise CheckpointError(
            f'{name}: bad zip archive (torch.save format): {e}; {_RESAVE_HINT}.') from e
      with zf:
        return _load_zip(zf, options)
    if _looks_tar(head):
      raise CheckpointError(
          f'{name}: a tar archive: the pre-0.4 torch.save tar format is not supported; load '
          'it with an old torch and save it again with torch.save.')
    magic = _first_pickle_int(head)
    if magic == MAGIC_NUMBER:
      return _load_legacy(f, options)
    if magic is not None:
      raise CheckpointError(
          f'{name}: unknown magic number {magic:#x} (a legacy torch.save file starts with '
          f'{MAGIC_NUMBER:#x}); {_RESAVE_HINT}.')
    if head[:1] == b'\x80':
      raise CheckpointError(
          f'{name}: a plain pickle, not a torch.save file; read it with '
          'torch_io.read_pickle() (or formats.read_checkpoint()).')
    raise CheckpointError(
        f'{name}: unknown format (first bytes {head[:8].hex()}): neither a torch.save zip '
        f'archive, a legacy torch.save file, nor a pickle; {_RESAVE_HINT}.')
  except _READ_ERRORS as e:
    raise _translate(name, e) from e
  finally:
    if close:
      f.close()


def read_pickle(path_or_file, *, generic_classes: Iterable[str] = ()) -> Any:
  """Reads a plain pickle (e.g. NVlabs `network-snapshot-*.pkl`) with the restricted unpickler.

  Tensors pickled by `Tensor.__reduce_ex__` come back as `numpy.ndarray`s (their storages are
  nested legacy-format files, `torch.storage._load_from_bytes`). NVlabs persistent classes
  come back as `PersistentObject`s, `dnnlib.util.EasyDict` as `EasyDict`, TensorFlow
  `dnnlib.tflib.network.Network`s as `TFNetwork`s. Arguments and errors as for `load`.
  """
  f, name, close = _open(path_or_file)
  options = _Options(name=name, generic_prefixes=_GENERIC_PREFIXES + tuple(generic_classes))
  try:
    head = f.read(64)
    f.seek(0)
    if not head:
      raise CheckpointError(f'{name}: the file is empty; {_RESAVE_HINT}.')
    if is_zip(head):
      raise CheckpointError(
          f'{name}: a zip archive (torch.save format), not a plain pickle; read it with '
          'torch_io.load().')
    if is_legacy_torch(head):
      raise CheckpointError(
          f'{name}: a legacy torch.save file, not a plain pickle; read it with '
          'torch_io.load().')
    return _unpickle(f, options)
  except _READ_ERRORS as e:
    raise _translate(name, e) from e
  finally:
    if close:
      f.close()


def state_dict_of(obj: Any, prefix: str = '') -> dict[str, np.ndarray]:
  """Flattens a loaded object tree into `{dotted.name: ndarray}`.

  Module-like objects (a `PersistentObject`'s state, a `GenericObject`, or a dict) holding
  `_parameters` / `_buffers` / `_modules` flatten like `nn.Module.state_dict()` (None entries
  and `_non_persistent_buffers_set` members skipped). Other objects (TorchScript modules,
  plain containers) flatten their attributes / items: arrays become entries, nested objects
  recurse, everything else (flags, strings, numbers) is skipped.

  Example:
    >>> state_dict_of(torch_io.load('vgg16.pt'))['layers.conv1.weight'].shape  # names vary
  """
  out: dict[str, np.ndarray] = {}
  _flatten(obj, prefix, out, set())
  return out


def _flatten(obj, prefix: str, out: dict, active: set) -> None:
  if isinstance(obj, np.ndarray):
    out[prefix[:-1] if prefix.endswith('.') else prefix] = obj
    return
  if id(obj) in active:
    return
  if isinstance(obj, PersistentObject):
    obj = obj._state_dict()
  elif isinstance(obj, GenericObject):
    obj = {k: v for k, v in obj.__dict__.items() if not k.startswith('__')}
  if isinstance(obj, Mapping):
    active.add(id(obj))
    if any(isinstance(obj.get(g), Mapping) for g in ('_parameters', '_buffers', '_modules')):
      skip = obj.get('_non_persistent_buffers_set') or set()
      for group in ('_parameters', '_buffers'):
        for k, v in (obj.get(group) or {}).items():
          if v is not None and not (group == '_buffers' and k in skip):
            _flatten(v, f'{prefix}{k}.', out, active)
      for k, v in (obj.get('_modules') or {}).items():
        if v is not None:
          _flatten(v, f'{prefix}{k}.', out, active)
    else:
      for k, v in obj.items():
        _flatten(v, f'{prefix}{k}.', out, active)
    active.discard(id(obj))
  elif isinstance(obj, (list, tuple)):
    active.add(id(obj))
    for i, v in enumerate(obj):
      _flatten(v, f'{prefix}{i}.', out, active)
    active.discard(id(obj))
