"""A user's file, in each real on-disk format, loads through `generators.load` and redraws the
official fixture outputs; the native format round-trips; the sample CLI writes a grid."""

import collections
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from generators import checkpoint
from tests import torch_format_writer as W
from tests.test_formats import (D_KWARGS, D_KWARGS_SG3_REPO, G_KWARGS, G_KWARGS_SG3_REPO, TF_D,
                                TF_G)
from tests.test_networks import PARITY_RTOL, nchw, rel_err


@pytest.fixture(scope="module")
def nets(official_g_state, official_d_state):
  return (collections.OrderedDict(official_g_state), collections.OrderedDict(official_d_state))


def _write(kind, path, g, d):
  if kind == "nvlabs":
    W.write_pickle(W.nvlabs_snapshot(g, d, G_KWARGS, D_KWARGS), path)
  elif kind == "stylegan3-repo":
    W.write_pickle(W.nvlabs_snapshot(g, d, G_KWARGS_SG3_REPO, D_KWARGS_SG3_REPO,
                                     module_src=W.MODULE_SRC_STYLEGAN3_REPO), path)
  elif kind == "rosinality":
    W.write_torch_zip(W.rosinality_checkpoint(g, d), path)
  elif kind == "state-dict":
    W.write_torch_legacy(collections.OrderedDict(g), path)
  elif kind == "tf":
    W.write_pickle(W.tf_pickle(g, d, TF_G, TF_D), path, tensor_fn=W.numpy_array)


@pytest.mark.parametrize("kind,name", [
    ("nvlabs", "network-snapshot-000100.pkl"), ("stylegan3-repo", "stylegan2-tiny.pkl"),
    ("rosinality", "550000.pt"),
    ("state-dict", "G_ema.pth"), ("tf", "stylegan2-tiny.pkl")])
def test_every_format_redraws_the_fixture(tmp_path, nets, stylegan2_ref, kind, name):
  path = tmp_path / name
  _write(kind, path, *nets)
  # rosinality and bare state dicts do not record conv_clamp; the fixture was made with 256.
  overrides = {} if kind in ("nvlabs", "stylegan3-repo", "tf") else {"conv_clamp": 256}
  model = checkpoint.load(path, **overrides)
  assert model.g_config.conv_clamp == 256
  with jax.default_matmul_precision("highest"):
    img = model.synthesis(jnp.asarray(stylegan2_ref["ws"]))
    assert rel_err(nchw(img), stylegan2_ref["img"]) < PARITY_RTOL
    if model.d_config is not None:
      logits = model.discriminator_features(jnp.asarray(stylegan2_ref["img"]).transpose(0, 2, 3, 1))
      assert rel_err(logits["logits"], stylegan2_ref["d_logits_fake"]) < PARITY_RTOL
  assert (model.d_config is None) == (kind == "state-dict")


def test_native_round_trip_and_sample_cli(tmp_path, nets, stylegan2_ref, monkeypatch):
  source = tmp_path / "snapshot.pkl"
  _write("nvlabs", source, *nets)
  model = checkpoint.load(source)
  saved = checkpoint.save(tmp_path / "native", model)
  with pytest.raises(FileExistsError, match="overwrite=True"):
    checkpoint.save(tmp_path / "native", model)
  monkeypatch.chdir(tmp_path)
  back = checkpoint.load("native")  # a relative path (orbax itself needs absolute ones)
  assert back.g_config == model.g_config and back.d_config == model.d_config
  for a, b in [(model.g_vars, back.g_vars), (model.d_vars, back.d_vars)]:
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
  assert back.metadata["source_format"] == "nvlabs-pickle"

  out = tmp_path / "grid.png"
  run = subprocess.run([sys.executable, "-m", "generators", "sample", "--checkpoint", str(saved),
                        "--seeds", "0-3", "--psi", "0.7", "--out", str(out)],
                       capture_output=True, text=True)
  assert run.returncode == 0, run.stderr
  grid = np.asarray(Image.open(out))
  assert grid.shape == (64, 64, 3)  # 2x2 grid of 32 px samples
  expected = np.asarray(back.sample([0, 1, 2, 3], psi=0.7))
  top_left = np.clip(np.rint((expected[0] + 1) * 127.5), 0, 255)
  np.testing.assert_allclose(grid[:32, :32], top_left, atol=1)


def test_unsupported_networks_are_refused_by_name(tmp_path, nets):
  g, d = nets
  relu = tmp_path / "relu.pkl"
  W.write_pickle(W.nvlabs_snapshot(g, d, dict(G_KWARGS_SG3_REPO, activation="relu"),
                                   D_KWARGS_SG3_REPO, module_src=W.MODULE_SRC_STYLEGAN3_REPO),
                 relu)
  with pytest.raises(ValueError, match="synthesis_kwargs.activation='relu' is not supported"):
    checkpoint.load(relu)
  alias_free = tmp_path / "stylegan3-t.pkl"
  sg3 = {"synthesis.input.affine.weight": np.ones((4, 64), np.float32),
         "mapping.fc0.weight": g["mapping.fc0.weight"]}
  W.write_pickle(W.nvlabs_snapshot(sg3, d, {"z_dim": 64}, D_KWARGS), alias_free)
  with pytest.raises(ValueError, match="stylegan3 \\(alias-free\\) generator"):
    checkpoint.load(alias_free)


def test_load_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    checkpoint.load(tmp_path / "nope.pkl")
  (tmp_path / "folder").mkdir()
  with pytest.raises(ValueError, match="without model.json"):
    checkpoint.load(tmp_path / "folder")
  junk = tmp_path / "junk.pkl"
  junk.write_bytes(b"\x00\x01 not a checkpoint at all")
  with pytest.raises(ValueError, match="junk.pkl"):
    checkpoint.load(junk)


@pytest.mark.parametrize('name', list(checkpoint.EMBEDDED_MODELS))
def test_shipped_embedded_models_load_by_name(name):
  """Every shipped model loads as `embedded:NAME`, with the architecture its training config
  asks for, its D, and class names exactly when it was trained with defect labels."""
  from generators import train
  model = checkpoint.load(f'{checkpoint.EMBEDDED_PREFIX}{name}')
  cfg = model.metadata['train_config']
  assert (model.resolution, model.channels) == (cfg['data']['resolution'], 4)
  assert model.g_config.channel_max == cfg['model']['channel_max'] and model.d_vars is not None
  conditional = cfg['data'].get('defect_labels', False)
  assert model.g_config.c_dim == model.d_config.c_dim == (len(train.CLASS_NAMES) if conditional
                                                          else 0)
  assert model.metadata.get('class_names', []) == (list(train.CLASS_NAMES) if conditional else [])
  assert (checkpoint.embedded_dir(name) / 'MODEL_CARD.md').is_file()


def test_unknown_embedded_model_lists_the_shipped_ones():
  with pytest.raises(ValueError, match='the shipped ones are embedded:default'):
    checkpoint.load('embedded:textures')


def test_every_shipped_model_directory_is_registered():
  """A model directory under generators/embedded/ that no `embedded:NAME` reaches is a mistake."""
  found = {p.parent.parent for p in checkpoint.EMBEDDED_DIR.glob("**/model/model.json")}
  assert found == {checkpoint.embedded_dir(n) for n in checkpoint.EMBEDDED_MODELS}
