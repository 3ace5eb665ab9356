"""Bad input to the generators side ends in one `error:` line that names the file or field and
the fix, or in a logged, documented conversion (issue 31, section 4): a model folder without a
generator, corrupt native weights, a generator-only state dict, resample filters, `--seeds`,
config overrides and a missing training workdir; and `generators.cli.run_cli`, which both
command lines report errors through."""

import collections
import gc
import json
import logging
import os
import pathlib
import shutil
import sys
import time

import jax
import numpy as np
import pytest

import configs
from generators import checkpoint, cli, formats, train
from generators.__main__ import main as generators_main, parse_seeds
from tests import torch_format_writer as W

EMBEDDED_MODEL = checkpoint.EMBEDDED_DIR / "model"
FIXTURE_CLAMP = {"conv_clamp": 256}  # plain state dicts do not record it; the fixture used 256


def _cli_error(argv, main=generators_main) -> str:
  """The `error:` text a command line ends with (asserting it is one line plus the hint)."""
  with pytest.raises(SystemExit) as exc:
    main(argv)
  lines = str(exc.value.code).splitlines()
  assert lines[0].startswith("error: ") and lines[1:] == [
      f"(set {cli.TRACEBACK_ENV}=1 for the traceback)"], lines
  return lines[0]


def _native_copy(tmp_path, name="model") -> pathlib.Path:
  return pathlib.Path(shutil.copytree(EMBEDDED_MODEL, tmp_path / name))


# ----------------------------------------------------------------------------------------------
# The shared CLI error path.

def test_run_cli_turns_bad_input_into_one_error_line(monkeypatch):
  monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
  assert cli.run_cli(lambda a, b=0: a + b, 2, b=3) == 5

  def bad(kind):
    raise kind("data/x.png: not an image; give a PNG or JPEG file")

  for kind in (ValueError, FileNotFoundError, checkpoint.CheckpointError):
    with pytest.raises(SystemExit) as exc:
      cli.run_cli(bad, kind)
    assert exc.value.code == ("error: data/x.png: not an image; give a PNG or JPEG file\n"
                              f"(set {cli.TRACEBACK_ENV}=1 for the traceback)")
  with pytest.raises(KeyError):  # a bug is not bad input: it keeps its traceback
    cli.run_cli(bad, KeyError)
  monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
  with pytest.raises(ValueError, match="not an image"):
    cli.run_cli(bad, ValueError)


def test_malformed_command_lines_stay_argparse_errors(tmp_path, capsys):
  with pytest.raises(SystemExit) as exc:
    generators_main(["export", "--workdir", str(tmp_path), "--out", "x", "--bogus"])
  assert exc.value.code == 2 and "unrecognised arguments: ['--bogus']" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# 1. A native model folder with no generator in it.

NATIVE_FIX = ("A native model folder holds model.json", "state/",
              "python -m generators export --workdir RUN --out DIR",
              "generators.checkpoint.save(DIR, generators.load(FILE))")


def test_a_folder_without_a_model_says_what_a_model_folder_holds(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(checkpoint.CheckpointError) as err:
    checkpoint.load(empty)
  msg = str(err.value)
  assert f"{empty} is a folder without model.json" in msg and "(it is empty)" in msg
  assert all(part in msg for part in NATIVE_FIX), msg

  other = tmp_path / "downloads"
  other.mkdir()
  (other / "notes.txt").write_text("hi")
  (other / "ffhq.pkl").write_bytes(b"\x80")
  msg = str(pytest.raises(ValueError, checkpoint.load, other).value)
  assert "(it holds ffhq.pkl, notes.txt)" in msg
  assert f"pass the file itself (e.g. {other / 'ffhq.pkl'})" in msg

  run = tmp_path / "run"  # a training workdir passed for its exported model
  (run / "checkpoints").mkdir(parents=True)
  (run / "config.json").write_text("{}")
  msg = str(pytest.raises(ValueError, checkpoint.load, run).value)
  assert f"It looks like a training workdir: export it first, `python -m generators export " \
         f"--workdir {run} --out DIR`" in msg


def test_model_json_or_state_without_a_generator(tmp_path):
  nogen = _native_copy(tmp_path, "nogen")
  meta = json.loads((nogen / "model.json").read_text())
  del meta["generator"]
  (nogen / "model.json").write_text(json.dumps(meta))
  with pytest.raises(checkpoint.CheckpointError) as err:
    checkpoint.load(nogen)
  assert f'{nogen}/model.json describes no generator (its "generator" field is missing)' in str(
      err.value)
  assert "Copy or download the whole folder again, or write it anew" in str(err.value)

  meta["generator"] = {"z_dim": 8}  # not a whole architecture
  (nogen / "model.json").write_text(json.dumps(meta))
  with pytest.raises(checkpoint.CheckpointError, match='model.json: its "generator" '
                     "architecture is not valid"):
    checkpoint.load(nogen)

  d_only = _native_copy(tmp_path, "d_only")
  shutil.rmtree(d_only / "state")
  import orbax.checkpoint as ocp
  with ocp.StandardCheckpointer() as saver:
    saver.save(d_only.resolve() / "state", {"discriminator": {"w": np.zeros(2, np.float32)}})
  with pytest.raises(checkpoint.CheckpointError) as err:
    checkpoint.load(d_only)
  assert (f"{d_only}/state holds no generator weights (it holds ['discriminator'])"
          in str(err.value))

  no_state = _native_copy(tmp_path, "no_state")
  shutil.rmtree(no_state / "state")
  with pytest.raises(FileNotFoundError, match=f"{no_state}/state .* is missing"):
    checkpoint.load(no_state)


def test_both_command_lines_report_a_folder_without_a_model(tmp_path):
  from inversion.__main__ import main as inversion_main
  empty = tmp_path / "empty"
  empty.mkdir()
  line = _cli_error(["sample", "--checkpoint", str(empty), "--out", str(tmp_path / "s.png")])
  assert f"{empty} is a folder without model.json" in line and NATIVE_FIX[2] in line
  line = _cli_error(["invert", "--checkpoint", str(empty), "--images", str(tmp_path / "a.png"),
                     "--out", str(tmp_path / "out")], main=inversion_main)
  assert f"{empty} is a folder without model.json" in line
  assert not (tmp_path / "s.png").exists()


# ----------------------------------------------------------------------------------------------
# 2. Corrupt native weights.

def _overwrite(files, how):
  for f in files:
    if f.is_file():
      f.write_bytes(how(f.read_bytes()))


def test_corrupt_state_files_name_the_folder_and_the_fix(tmp_path, monkeypatch, caplog):
  garbage = _native_copy(tmp_path, "garbage")  # garbage bytes over every file under state/
  _overwrite((garbage / "state").rglob("*"), lambda b: os.urandom(max(len(b), 16)))
  with pytest.raises(checkpoint.CheckpointError) as err:
    checkpoint.load(garbage)
  msg = str(err.value)
  assert msg.startswith(f"{garbage}/state: the model's weights are corrupt or incomplete; "
                        "orbax cannot read them (")
  assert "Copy or download the whole folder again, or write it anew: `python -m generators " \
         "export" in msg and "\n" not in msg

  # Only the tensor data truncated: tensorstore's reads fail, and the ones still in flight when
  # orbax closes its event loop report too, some after load has returned: through
  # sys.unraisablehook (here a recorder) and asyncio's log. None of that may reach the user.
  reports = []
  monkeypatch.setattr(sys, "unraisablehook", reports.append)
  with caplog.at_level(logging.ERROR, logger="asyncio"):
    for i in range(3):  # the reports depend on timing; one try may have none
      truncated = _native_copy(tmp_path, f"truncated{i}")
      _overwrite((truncated / "state").glob("ocdbt.process_*/d/*"), lambda b: b[:len(b) // 2])
      line = _cli_error(["sample", "--checkpoint", str(truncated), "--out",
                         str(tmp_path / "s.png")])
      assert f"{truncated}/state: the model's weights are corrupt or incomplete" in line
    time.sleep(0.5)
    gc.collect()  # asyncio reports a task's unretrieved error when the task is collected
  assert [str(r.exc_value) for r in reports] == []
  assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


def test_a_corrupt_embedded_model_says_how_to_restore_it(tmp_path, monkeypatch):
  embedded = tmp_path / "generators" / "embedded"
  shutil.copytree(EMBEDDED_MODEL, embedded / "model")
  _overwrite([embedded / "model" / "state" / "_METADATA"], lambda b: b"\x81" + b[1:])
  monkeypatch.setattr(checkpoint, "EMBEDDED_DIR", embedded)
  with pytest.raises(checkpoint.CheckpointError) as err:
    checkpoint.load()
  assert "It is a shipped embedded model: restore it with `git checkout -- " \
         "generators/embedded/model`" in str(err.value)
  (embedded / "model" / "model.json").write_bytes(b"\x81 not json")
  with pytest.raises(checkpoint.CheckpointError, match="model.json is corrupt: not JSON text"):
    checkpoint.load("embedded:default")


# ----------------------------------------------------------------------------------------------
# 3. Generator-only files; resample filters are a constant.

def _without_filters(sd):
  return collections.OrderedDict((k, v) for k, v in sd.items()
                                 if not k.endswith("resample_filter"))


@pytest.fixture(scope="module")
def full_model(tmp_path_factory, official_g_state, official_d_state):
  path = tmp_path_factory.mktemp("full") / "G_ema_D.pt"
  W.write_torch_zip({"G_ema": official_g_state, "D": official_d_state}, path)
  model = checkpoint.load(path, **FIXTURE_CLAMP)
  assert model.d_config is not None
  return model


def _same_vars(a, b):
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize("filters", [True, False])
def test_a_generator_only_state_dict_loads_g_alone_with_one_info_line(
    tmp_path, caplog, official_g_state, full_model, filters):
  path = tmp_path / "G.pt"
  g = official_g_state if filters else _without_filters(official_g_state)
  W.write_torch_zip(collections.OrderedDict(g), path)
  with caplog.at_level(logging.INFO, logger="generators.checkpoint"):
    model = checkpoint.load(path, **FIXTURE_CLAMP)
  assert model.d_config is None and model.d_vars is None
  assert model.g_config == full_model.g_config
  _same_vars(model.g_vars, full_model.g_vars)
  lines = [r.getMessage() for r in caplog.records if r.name == "generators.checkpoint"]
  assert len(lines) == 1 and lines[0].startswith(f"{path}: the file has no discriminator; "
                                                 "loaded the generator alone")
  assert "config.loss.perceptual=discriminator" in lines[0]
  with pytest.raises(ValueError, match=r"has no discriminator; load a file that holds D"):
    model.discriminator_features(np.zeros((1, 32, 32, 3), np.float32))


def test_filters_left_out_are_filled_with_the_constant(tmp_path, official_g_state,
                                                       official_d_state, full_model):
  path = tmp_path / "no_filters.pt"  # NVlabs names, no resample_filter buffer in G or D
  W.write_torch_zip({"G_ema": _without_filters(official_g_state),
                     "D": _without_filters(official_d_state)}, path)
  raw = formats.read_checkpoint(path)
  for got, want in [(raw.generator, official_g_state), (raw.discriminator, official_d_state)]:
    assert list(got) == list(want)  # the official names and order, filters included
    for k, v in want.items():
      np.testing.assert_array_equal(got[k], v, err_msg=k)
  model = checkpoint.load(path, **FIXTURE_CLAMP)
  assert model.d_config == full_model.d_config
  _same_vars(model.d_vars, full_model.d_vars)

  rosinality = tmp_path / "rosinality_g_ema.pt"  # rosinality names, G only
  W.write_torch_zip(W.rosinality_checkpoint(official_g_state), rosinality)
  model = checkpoint.load(rosinality, **FIXTURE_CLAMP)
  assert model.d_config is None
  _same_vars(model.g_vars, full_model.g_vars)


def test_an_incomplete_discriminator_is_left_out_not_fatal(tmp_path, caplog, official_g_state,
                                                           official_d_state, full_model):
  path = tmp_path / "G_and_half_a_D.pt"
  d = {k: v for k, v in official_d_state.items() if k != "b8.conv0.weight"}
  W.write_torch_zip({"G_ema": official_g_state, "D": d}, path)
  raw = formats.read_checkpoint(path)
  assert raw.discriminator is None and raw.discriminator_kwargs is None
  assert any(n.startswith(formats.DISCRIMINATOR_DROPPED) for n in raw.notes)
  with caplog.at_level(logging.INFO, logger="generators.checkpoint"):
    model = checkpoint.load(path, **FIXTURE_CLAMP)
  assert model.d_config is None
  _same_vars(model.g_vars, full_model.g_vars)
  lines = [r.getMessage() for r in caplog.records if r.name == "generators.checkpoint"]
  assert len(lines) == 1 and "missing keys (1): b8.conv0.weight" in lines[0]
  assert "loaded the generator alone" in lines[0]

  # The same in the other formats that carry a D: an NVlabs pickle and a rosinality .pt.
  from tests.test_formats import D_KWARGS, G_KWARGS
  nvlabs = tmp_path / "snapshot.pkl"
  W.write_pickle(W.nvlabs_snapshot(official_g_state, d, G_KWARGS, D_KWARGS), nvlabs)
  assert formats.read_checkpoint(nvlabs).discriminator is None
  rg, rd = W.official_to_rosinality(official_g_state, official_d_state)
  del rd["final_linear.0.weight"]
  rosinality = tmp_path / "rosinality.pt"
  W.write_torch_zip({"g_ema": rg, "d": rd, "latent_avg": official_g_state["mapping.w_avg"]},
                    rosinality)
  raw = formats.read_checkpoint(rosinality)
  assert raw.discriminator is None and "final_linear.0.weight" in " ".join(raw.notes)


@pytest.mark.parametrize("net,name", [("G", "synthesis.b16.conv0.resample_filter"),
                                      ("G", "synthesis.b4.resample_filter"),
                                      ("D", "b8.conv0.resample_filter")])
def test_a_stored_filter_other_than_the_constant_is_refused(tmp_path, official_g_state,
                                                            official_d_state, net, name):
  g, d = dict(official_g_state), dict(official_d_state)
  (g if net == "G" else d)[name] = np.full((4, 4), 1 / 16, np.float32)  # a box filter
  path = tmp_path / "other_filter.pt"
  W.write_torch_zip({"G_ema": g, "D": d}, path)
  with pytest.raises(formats.CheckpointError) as err:
    checkpoint.load(path)
  msg = str(err.value)
  assert msg.startswith(f"{path}: {'generator' if net == 'G' else 'discriminator'} buffer "
                        f"{name!r} holds the [2, 2, 2, 2] filter, not the resample filter")
  assert "the [1, 3, 3, 1] FIR filter" in msg and "Files without these buffers load" in msg


# ----------------------------------------------------------------------------------------------
# 4. --seeds.

def test_seeds_accept_ranges_and_lists():
  assert parse_seeds("0-3") == [0, 1, 2, 3]
  assert parse_seeds("1,5,9") == [1, 5, 9]
  assert parse_seeds("0-2, 8") == [0, 1, 2, 8]
  assert parse_seeds("4-4") == [4]


@pytest.mark.parametrize("seeds,what", [("5-3", "the range 5-3 is empty"),
                                        ("1,,2", "'' is not a seed"),
                                        ("abc", "'abc' is not a seed"),
                                        ("-3", "'-3' is not a seed"),
                                        ("1-2-3", "'1-2-3' is not a seed")])
def test_bad_seeds_name_the_option_and_the_accepted_forms(tmp_path, seeds, what):
  line = _cli_error(["sample", "--seeds", seeds, "--out", str(tmp_path / "s.png")])
  assert line.startswith(f"error: --seeds {seeds}: {what}")
  assert "'0-7'" in line and "'1,5,9'" in line
  assert not (tmp_path / "s.png").exists()


# ----------------------------------------------------------------------------------------------
# 5. Config overrides (shared by `python -m generators train` and `python -m inversion invert`).

@pytest.mark.parametrize("override,parts", [
    ("--config.total_kimg=abc", ["--config.total_kimg=abc", "of type float", "'abc' is text",
                                 "give a float, e.g. --config.total_kimg="]),
    ("--config.data.num_crops=1.5", ["--config.data.num_crops=1.5", "of type int",
                                     "'1.5' is a float", "give an int"]),
    ("--config.seed=True", ["of type int", "'True' is a bool"]),
    ("--config.nope=1", ["Config has no field 'nope' (in --config.nope=1)", "top-level fields:",
                         "total_kimg"]),
    ("--config.totl_kimg=3", ["Config has no field 'totl_kimg'",
                              "Did you mean --config.total_kimg?"]),
    ("--config.num_crops=2", ["Did you mean --config.data.num_crops?"]),
    ("--config.data=3", ["data is a group of fields, not a value", "num_crops",
                         "e.g. --config.data.defect_fraction=0.5."]),
    ("--config.total_kimg", ["must look like --config.field=value"])])
def test_config_overrides_name_the_field_value_and_type(override, parts):
  with pytest.raises(ValueError) as err:
    configs.load_config("embedded", [override])
  assert all(p in str(err.value) for p in parts), str(err.value)


def test_train_cli_reports_a_bad_override_before_touching_the_workdir(tmp_path):
  workdir = tmp_path / "run"
  line = _cli_error(["train", "--config", "embedded", "--workdir", str(workdir),
                     "--config.total_kimg=abc"])
  assert "--config.total_kimg=abc: the field is of type float" in line
  assert not workdir.exists()


# ----------------------------------------------------------------------------------------------
# 6. export from a missing workdir.

def test_export_from_a_missing_or_empty_workdir(tmp_path):
  missing, out = tmp_path / "MISSING", tmp_path / "model"
  line = _cli_error(["export", "--workdir", str(missing), "--out", str(out)])
  assert f"{missing} does not exist, so there is no training run to export" in line
  assert "config.json, checkpoints/" in line and "python -m generators train" in line
  assert not out.exists() and not missing.exists()
  with pytest.raises(FileNotFoundError, match=f"{tmp_path} holds no training run "
                     r"\(no config.json\) to export"):
    train.export(tmp_path, out)


def test_saving_over_a_folder_that_is_not_a_model_is_refused(tmp_path):
  """export --out (checkpoint.save with overwrite) replaces a native model folder, never a
  folder of other files."""
  model = checkpoint.load()
  keep = tmp_path / "documents"
  keep.mkdir()
  (keep / "thesis.tex").write_text("precious")
  with pytest.raises(ValueError, match=f"{keep} exists and is not a native model folder "
                     r"\(it holds thesis.tex\), so it is not replaced"):
    checkpoint.save(keep, model, overwrite=True)
  assert (keep / "thesis.tex").read_text() == "precious"
  a_file = tmp_path / "model.txt"
  a_file.write_text("")
  with pytest.raises(ValueError, match="is a file; a native model is a folder"):
    checkpoint.save(a_file, model, overwrite=True)
  first = checkpoint.save(tmp_path / "m", model)
  again = checkpoint.save(first, model, overwrite=True)  # a model folder is replaced
  assert checkpoint.load(again).g_config == model.g_config
