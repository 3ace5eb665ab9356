"""generators.torch_io: torch's on-disk formats read without torch, and nothing executed.

Files come from tests/torch_format_writer.py (no torch at test time). The writer and reader were
checked once against real torch 2.13 outside this suite: `torch.load` (weights_only=True and
False) reads the writer's zip, legacy, big-endian and pickled-tensor files with identical
values, and this reader reads files made by real `torch.save` (zip and
`_use_new_zipfile_serialization=False`), `pickle.dumps` of a Parameter / tensor and
`torch.jit.save` of scripted and traced modules with identical values.
"""

import collections
import io
import zipfile

import numpy as np
import pytest

from generators import torch_io
from generators.torch_io import CheckpointError, RefusedGlobalError
from tests import torch_format_writer as W

from tests.conftest import fixture_path

FIXTURE = str(fixture_path('stylegan2_ref_32px.npz'))


@pytest.fixture(scope='module')
def nets():
  fx = np.load(FIXTURE)
  g = collections.OrderedDict((k[2:], fx[k]) for k in fx.files if k.startswith('G/'))
  d = collections.OrderedDict((k[2:], fx[k]) for k in fx.files if k.startswith('D/'))
  return g, d


EXTRA = {  # dtypes, layouts and wrappers a real state dict holds
    'int64': np.arange(10, dtype=np.int64).reshape(2, 5),
    'bool': np.array([True, False, True]),
    'uint8': np.arange(6, dtype=np.uint8),
    'half': np.linspace(-1, 1, 7).astype(np.float16),
    'double_transposed': np.arange(12.0).reshape(3, 4).T,
    'scalar': np.float32(3.5),
    'empty': np.zeros((0, 3), np.float32),
}


def _extra_obj():
  obj = dict(EXTRA)
  obj['param'] = W.Param(np.full((2, 2), 0.25, np.float32))
  obj['bf16'] = W.BFloat16(np.array([1.5, -2.25, 3.0, 1e30], np.float32))
  return obj


def _assert_same(a: dict, b: dict):
  assert list(a) == list(b)
  for k in b:
    assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _assert_extra(o):
  for k, v in EXTRA.items():
    ref = np.asarray(v)
    assert o[k].shape == ref.shape and o[k].dtype == ref.dtype, k
    np.testing.assert_array_equal(o[k], ref)
  np.testing.assert_array_equal(o['param'], np.full((2, 2), 0.25, np.float32))
  assert o['bf16'].dtype == np.float32  # bfloat16 widens to float32, exactly
  np.testing.assert_array_equal(o['bf16'][:3], [1.5, -2.25, 3.0])
  assert o['double_transposed'].flags.c_contiguous and o['double_transposed'].flags.writeable


# ------------------------------------------------------------------------------------------
# Formats.

@pytest.mark.parametrize('fmt', ['zip', 'legacy'])
def test_torch_save_formats_reproduce_fixture_exactly(tmp_path, nets, fmt):
  g, d = nets
  path = tmp_path / 'ckpt.pt'
  obj = {'G_ema': g, 'D': d, **_extra_obj()}
  (W.write_torch_zip if fmt == 'zip' else W.write_torch_legacy)(obj, path)
  out = torch_io.load(path)
  assert isinstance(out['G_ema'], collections.OrderedDict)
  _assert_same(out['G_ema'], g)
  _assert_same(out['D'], d)
  _assert_extra(out)


def test_zip_any_archive_name_big_endian_and_file_objects(tmp_path, nets):
  g, _ = nets
  buf = io.BytesIO()
  W.write_torch_zip({'G': g}, buf, archive='my_checkpoint-v2', big_endian=True)
  _assert_same(torch_io.load(io.BytesIO(buf.getvalue()))['G'], g)

  class Stream:  # not seekable: read into memory
    def __init__(self, data):
      self.data = data

    def read(self, n=-1):
      del n
      return self.data

  _assert_same(torch_io.load(Stream(buf.getvalue()))['G'], g)


def test_storage_offset_stride_and_shared_storage(tmp_path):
  base = np.arange(24, dtype=np.float32)
  storage = W.PersistentId(('storage', W.Global('torch', 'FloatStorage'), '0', 'cpu', 24))
  rebuild = W.Global('torch._utils', '_rebuild_tensor_v2')
  hooks = W.ordered_dict({})
  obj = {
      'view': W.Reduce(rebuild, (storage, 5, (2, 3), (1, 4), False, hooks)),  # column view
      'same': W.Reduce(rebuild, (storage, 0, (4, 6), (6, 1), False, hooks)),
      'size': W.Reduce(W.Global('torch', 'Size'), ((2, 3),)),
  }
  path = tmp_path / 'views.pt'
  with zipfile.ZipFile(path, 'w') as zf:
    zf.writestr('a/data.pkl', W.PickleWriter(2).dumps(obj))
    zf.writestr('a/data/0', base.tobytes())
  out = torch_io.load(path)
  np.testing.assert_array_equal(out['view'], base[5:].reshape(-1)[[0, 4, 8, 1, 5, 9]].reshape(
      2, 3))
  np.testing.assert_array_equal(out['same'], base.reshape(4, 6))
  assert out['size'] == (2, 3)
  out['view'][0, 0] = -1  # owned copies: views never alias each other
  assert out['same'][0, 5] == 5


def test_pickled_tensors_load_from_bytes(tmp_path, nets):
  g, _ = nets
  path = tmp_path / 'plain.pkl'
  W.write_pickle({'G': g, **_extra_obj()}, path)
  out = torch_io.read_pickle(path)
  _assert_same(out['G'], g)
  _assert_extra(out)


def test_nvlabs_persistent_objects_never_run_module_src(tmp_path, nets):
  g, d = nets
  path = tmp_path / 'network-snapshot-000000.pkl'
  W.write_pickle(W.nvlabs_snapshot(g, d, {'z_dim': 64, 'mapping_kwargs': {'num_layers': 8}},
                                   {'c_dim': 0}), path)
  out = torch_io.read_pickle(path)
  g_ema = out['G_ema']
  assert isinstance(g_ema, torch_io.PersistentObject)
  assert g_ema.class_name == 'Generator' and g_ema.version == 6
  assert g_ema.module_src == W.MODULE_SRC           # kept as text
  assert isinstance(g_ema.init_kwargs, torch_io.EasyDict)
  assert g_ema.init_kwargs.mapping_kwargs.num_layers == 8
  assert g_ema.mapping.fc0.class_name == 'FullyConnectedLayer'
  np.testing.assert_array_equal(g_ema.mapping.fc0.weight, g['mapping.fc0.weight'])
  _assert_same(torch_io.state_dict_of(g_ema), g)
  _assert_same(torch_io.state_dict_of(out['D']), d)
  assert out['training_set_kwargs'].resolution is None


def test_torchscript_archive_generic_objects_and_constants(tmp_path):
  w = np.arange(6, dtype=np.float32).reshape(2, 3)
  lin = W.script_module('__torch__.torch.nn.modules.linear.Linear',
                        {'training': False, 'weight': w, 'bias': np.ones(2, np.float32)})
  seq = W.script_module('__torch__.torch.nn.modules.container.Sequential',
                        {'training': False, '0': lin})
  root = W.script_module('__torch__.Vgg', {'training': False, 'layers': seq,
                                           'mean': np.zeros(3, np.float32), 'name': 'vgg'})
  path = tmp_path / 'vgg16.pt'
  W.write_torchscript(root, (np.full(3, 7.0, np.float32),), path)
  net = torch_io.load(path)
  assert isinstance(net, torch_io.ScriptObject)
  assert net.qualified_name == '__torch__.Vgg'
  np.testing.assert_array_equal(net.layers.__dict__['0'].weight, w)
  sd = torch_io.state_dict_of(net)
  assert sorted(sd) == ['layers.0.bias', 'layers.0.weight', 'mean']
  np.testing.assert_array_equal(sd['layers.0.weight'], w)
  np.testing.assert_array_equal(net.__torchscript_constants__[0], np.full(3, 7.0))


def test_state_dict_of_follows_module_semantics():
  module = {
      '_parameters': collections.OrderedDict(weight=np.ones(2), bias=None),
      '_buffers': collections.OrderedDict(running=np.zeros(2), scratch=np.ones(1)),
      '_non_persistent_buffers_set': {'scratch'},
      '_modules': collections.OrderedDict(
          child={'_parameters': {'w': np.ones(1)}, '_buffers': {}, '_modules': {}}, gone=None),
      'training': True,
      'not_a_tensor': 'x',
  }
  assert list(torch_io.state_dict_of(module)) == ['weight', 'running', 'child.w']
  assert list(torch_io.state_dict_of({'a': {'b': np.ones(1)}, 'c': [np.ones(1)]})) == [
      'a.b', 'c.0']


def test_torch_nn_module_classes_load_as_generic_objects(tmp_path):
  conv = W.NewObj(W.Global('torch.nn.modules.conv', 'Conv2d'), state={
      'training': True, '_parameters': collections.OrderedDict(weight=W.Param(np.ones(
          (1, 1, 1, 1), np.float32))), '_buffers': collections.OrderedDict(),
      '_modules': collections.OrderedDict()})
  path = tmp_path / 'model.pt'
  W.write_torch_zip({'net': conv}, path)
  net = torch_io.load(path)['net']
  assert isinstance(net, torch_io.GenericObject)
  assert net.qualified_name == 'torch.nn.modules.conv.Conv2d'
  assert list(torch_io.state_dict_of(net)) == ['weight']


# ------------------------------------------------------------------------------------------
# Errors.

def _hostile(marker) -> bytes:
  """A protocol-0 pickle that runs `os.system('touch marker')` when unpickled naively."""
  return b'cos\nsystem\n(S\'touch ' + str(marker).encode() + b'\'\ntR.'


def test_pickle_asking_for_os_system_is_refused_without_running(tmp_path):
  marker = tmp_path / 'pwned'
  path = tmp_path / 'evil.pkl'
  path.write_bytes(_hostile(marker))
  with pytest.raises(RefusedGlobalError, match=r'os\.system.*could run code') as err:
    torch_io.read_pickle(path)
  assert str(path) in str(err.value)
  assert not marker.exists()


@pytest.mark.parametrize('module,name', [('builtins', 'eval'), ('builtins', 'getattr'),
                                         ('subprocess', 'Popen'), ('posix', 'system'),
                                         ('__torch__', 'M'), ('torch_utils.misc', 'x')])
def test_globals_off_the_allow_list_are_refused_inside_torch_files(tmp_path, module, name):
  marker = tmp_path / 'pwned'
  path = tmp_path / 'evil.pt'
  call = W.Reduce(W.Global(module, name), (f'touch {marker}',))
  W.write_torch_zip({'x': call}, path)  # a zip without code/: not TorchScript
  with pytest.raises(RefusedGlobalError, match=f'{module}.{name}'):
    torch_io.load(path)
  assert not marker.exists()


def test_hostile_storage_bytes_are_refused_too(tmp_path):
  marker = tmp_path / 'pwned'
  path = tmp_path / 'evil.pkl'
  storage = W.Reduce(W.Global('torch.storage', '_load_from_bytes'), (_hostile(marker),))
  W.write_pickle({'t': storage}, path)
  with pytest.raises(RefusedGlobalError, match='os.system'):
    torch_io.read_pickle(path)
  assert not marker.exists()


@pytest.mark.parametrize('fmt', ['zip', 'legacy', 'pickle'])
def test_truncated_files(tmp_path, nets, fmt):
  g, _ = nets
  path = tmp_path / 'ckpt'
  writer = {'zip': W.write_torch_zip, 'legacy': W.write_torch_legacy, 'pickle': W.write_pickle}
  writer[fmt]({'G': g}, path)
  data = path.read_bytes()
  path.write_bytes(data[:len(data) * 2 // 3])
  reader = torch_io.read_pickle if fmt == 'pickle' else torch_io.load
  with pytest.raises(CheckpointError, match='truncated') as err:
    reader(path)
  assert str(path) in str(err.value)


def test_random_bytes_and_empty_file(tmp_path):
  path = tmp_path / 'noise.pt'
  path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes()[1:])
  with pytest.raises(CheckpointError, match='unknown format'):
    torch_io.load(path)
  path.write_bytes(b'')
  with pytest.raises(CheckpointError, match='empty'):
    torch_io.load(path)


def test_bad_zip_and_missing_storage_record(tmp_path, nets):
  g, _ = nets
  path = tmp_path / 'ckpt.pt'
  W.write_torch_zip({'G': g}, path, drop_records=('data/3',))
  with pytest.raises(CheckpointError, match=r'missing storage record archive/data/3'):
    torch_io.load(path)
  W.write_torch_zip({'G': g}, path)
  data = bytearray(path.read_bytes())
  cd = data.rfind(b'PK\x01\x02')      # corrupt the central directory, keep the end record
  data[cd:cd + 4] = b'XXXX'
  path.write_bytes(bytes(data))
  with pytest.raises(CheckpointError, match='bad zip'):
    torch_io.load(path)
  with zipfile.ZipFile(path, 'w') as zf:
    zf.writestr('readme.txt', 'not torch')
  with pytest.raises(CheckpointError, match='no <folder>/data.pkl'):
    torch_io.load(path)


def test_unknown_magic_and_wrong_entry_point(tmp_path, nets):
  g, _ = nets
  path = tmp_path / 'ckpt.pt'
  data = W.legacy_bytes({'G': g})
  path.write_bytes(W.PickleWriter(2).dumps(0x1234567890ABCDEF1234) + data[24:])
  with pytest.raises(CheckpointError, match='unknown magic number 0x1234567890abcdef1234'):
    torch_io.load(path)
  W.write_pickle({'G': g}, path)
  with pytest.raises(CheckpointError, match='read_pickle'):
    torch_io.load(path)
  W.write_torch_zip({'G': g}, path)
  with pytest.raises(CheckpointError, match=r'torch_io\.load'):
    torch_io.read_pickle(path)
  with pytest.raises(CheckpointError, match='cannot open'):
    torch_io.load(tmp_path / 'missing.pt')


def test_whole_module_saved_by_class_reference_is_refused(tmp_path):
  """torch.save(model) in the legacy format pickles the model's class by reference."""
  path = tmp_path / 'model.pt'
  pid = W.PersistentId(('module', W.Global('models', 'Net'), 'models.py', 'class Net: ...'))
  header = b''.join(W.PickleWriter(2).dumps(x) for x in (
      W.MAGIC_NUMBER, W.LEGACY_PROTOCOL_VERSION, {'little_endian': True}))
  path.write_bytes(header + W.PickleWriter(2).dumps({'net': pid}) + W.PickleWriter(2).dumps([]))
  with pytest.raises(RefusedGlobalError, match='models.Net'):
    torch_io.load(path)
