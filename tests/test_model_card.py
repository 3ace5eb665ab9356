"""The model card's reproduce commands rebuild the configs the shipped model was trained with."""

import json
import shlex

import numpy as np

import configs
from benchmarks import model_card


def _train_configs(commands: str) -> list[dict]:
  """The configs that the `generators train` lines of `commands` would run with."""
  runs = []
  for line in commands.splitlines():
    words = shlex.split(line)
    if words[:4] == ["python", "-m", "generators", "train"]:
      flags = [w for w in words if w.startswith("--config.")]
      runs.append(json.loads(configs.load_config("embedded", flags).to_json()))
  return runs


def _config(**overrides) -> dict:
  return json.loads(configs.load_config(
      "embedded", [f"--config.{k}={v}" for k, v in overrides.items()]).to_json())


def test_reproduce_a_snapshot_of_one_run_stops_at_its_kimg():
  meta = {"training_steps": 5100, "kimg": 163.2, "train_config": _config(r1_gamma=1.0)}
  (run,) = _train_configs(model_card._reproduce(meta))
  assert run == _config(r1_gamma=1.0, total_kimg=163.2)
  assert "--draws" not in model_card._reproduce(meta)
  assert "--invert 16 --draws 3 --out" in model_card._reproduce(meta, draws=3)


def test_reproduce_a_snapshot_average_exports_its_steps():
  meta = {"training_steps": 5000, "kimg": 160.0, "averaged_steps": [4000, 4500, 5000],
          "train_config": _config(keep_checkpoint_every=250)}
  commands = model_card._reproduce(meta)
  (run,) = _train_configs(commands)
  assert run == _config(keep_checkpoint_every=250, total_kimg=160.0)
  assert "--out generators/embedded/model --step 4000,4500,5000\n" in commands


def test_reproduce_a_model_from_before_a_feature_turns_it_off(monkeypatch):
  old = _config(r1_gamma=1.0)
  del old["ada_target"], old["lr_rampdown"]  # a config from before ADA and the lr ramp
  real_load = configs.load_config
  # Were ADA on by default today, the command must still turn it off for this model.
  monkeypatch.setattr(configs, "load_config", lambda name, overrides=(): real_load(
      name, ["--config.ada_target=0.6", *overrides]))
  (run,) = _train_configs(model_card._reproduce(
      {"training_steps": 8000, "kimg": 256.0, "train_config": old}))
  assert run["ada_target"] == 0.0 and run["lr_rampdown"] == 0.0 and run["r1_gamma"] == 1.0


def test_reproduce_a_fine_tuned_model_runs_both_stages():
  first = _config(total_kimg=256.0)
  second = _config(total_kimg=48.0, lr_rampdown=1.0, ema_rampup=0.0, init_from="runs/x")
  meta = {"training_steps": 1500, "kimg": 48.0, "train_config": second,
          "init_from": {"path": "runs/x", "kimg": 163.2, "train_config": first}}
  commands = model_card._reproduce(meta)
  stage1, stage2 = _train_configs(commands)
  assert stage1 == _config(total_kimg=163.2)
  assert stage2 == {**second, "init_from": "runs/base_model"}
  assert "--out runs/base_model" in commands and "--out generators/embedded/model" in commands


def test_reproduce_the_conditional_model_trains_with_labels_into_its_own_directory(monkeypatch):
  from generators import checkpoint
  monkeypatch.setitem(checkpoint.EMBEDDED_MODELS, "conditional", "conditional")
  labelled = _config(**{"data.defect_labels": True})
  commands = model_card._reproduce(
      {"training_steps": 5000, "kimg": 160.0, "train_config": labelled}, "conditional")
  (run,) = _train_configs(commands)
  assert run == _config(**{"data.defect_labels": True, "total_kimg": 160.0})
  assert "--workdir runs/embedded_conditional --out generators/embedded/conditional/model" \
      in commands and commands.endswith("--model conditional")
  # A fine-tuned one keeps out of the default model's runs (a run resumes what its workdir holds).
  tuned = model_card._reproduce({"training_steps": 500, "kimg": 16.0, "train_config": labelled,
                                 "init_from": {"kimg": 160.0, "train_config": labelled}},
                                "conditional")
  workdirs = [w.split()[0] for w in tuned.split("--workdir ")[1:]]
  assert workdirs and all(w.endswith("_conditional") for w in workdirs), workdirs
  assert "runs/base_model " not in tuned and "runs/base_model_conditional" in tuned


def test_mask_shapes_tell_one_defect_from_speckle():
  from benchmarks.embedded_model import mask_shapes

  masks = np.zeros((3, 16, 16), bool)
  masks[0, 2:6, 2:8] = True             # one 24 px defect
  masks[1, ::4, ::4] = True             # 16 one-pixel specks
  masks[1, 9:11, 9:11] = True           # a 2x2 piece, joined diagonally to the speck at (8, 8)
  # pieces: 1 and 16 (8-connected); largest: 24 and 5 px
  assert mask_shapes(masks) == {"images": 2, "pieces_median": 8.5,
                                "largest_piece_px_median": 14.5}
  assert mask_shapes(np.zeros((2, 8, 8), bool)) is None
  card = model_card._defect_images({
      "defect_images_generated": 0.2, "defect_images_training": 0.5,
      "mask_shapes": {"generated": {"pieces_median": 9.5, "largest_piece_px_median": 7.0},
                      "training": {"pieces_median": 1.0, "largest_piece_px_median": 90.0}}})
  assert "9.5 separate pieces (median), the largest 7 px; a painted one 1 piece(s), 90 px" in card


def test_card_reports_the_inversion_only_where_it_was_measured():
  measured = {"inversion": {"space": "wplus", "images": 16, "steps": 600, "mse": 0.02578,
                            "psnr": 23.931, "ssim": 0.61146}}
  line = model_card._inversion(measured)
  assert "16 held-out crops" in line and "600 steps" in line
  assert "MSE 0.0258, PSNR 23.93 dB, SSIM 0.611" in line
  assert model_card._inversion({}) == ""  # evaluations without --invert
  measured["inversion"]["per_photo"] = {"brick": {"images": 6, "psnr": 28.912},
                                        "grass": {"images": 10, "psnr": 20.5}}
  assert ("PSNR per photo: brick 28.91 dB (6 crops), grass 20.50 dB (10 crops)"
          in model_card._inversion(measured))


def test_card_reports_photo_coverage_only_where_it_was_measured():
  swd = lambda avg: {"SWDx1e3_64": avg, "SWDx1e3_32": avg, "SWDx1e3_16": avg, "SWDx1e3_avg": avg}
  measured = {"photo_coverage": {"classifier_accuracy": 0.993, "unlike_any_photo": 0.2934,
                                 "photos": {
      "brick": {"share": 0.279, "images": 279, "unlike_any": 0.215, "G_ema": swd(93.43),
                "floor": swd(38.31)},
      "grass": {"share": 0.004, "images": 4, "unlike_any": 0.5},  # too few for an SWD
      "gravel": {"share": 0.0, "images": 0, "unlike_any": None}}}}
  text = model_card._photo_coverage(measured)
  assert "99.3% of held-out crops" in text
  assert "29.3% of\nthe samples look like none of them" in text
  assert "| brick | 27.9% | 21.5% | 279 | 93.4 | 38.3 |" in text
  assert "| grass | 0.4% | 50.0% | 4 | - | - |" in text
  assert "| gravel | 0.0% | - | 0 | - | - |" in text
  assert model_card._photo_coverage({}) == ""  # evaluations from before it existed


def test_card_reports_swd_draws_and_spread_only_where_they_were_measured():
  draws = {"values": [41.1, 42.3, 43.9], "mean": 42.43, "std": 1.146, "min": 41.1, "max": 43.9}
  assert "3 draws" in model_card._draws({"swd_draws": draws})
  assert "42.4 +- 1.1 (41.1 to 43.9)" in model_card._draws({"swd_draws": draws})
  spread = {"clean": {"G_ema": 0.0812, "real": 0.27}, "defect": {"G_ema": 0.0, "real": 0.3}}
  text = model_card._spread({"spread": spread})
  assert "class clean: G_ema 0.081, held-out crops 0.270" in text
  assert "class defect: G_ema 0.000" in text
  assert "): G_ema 0.158, held-out crops 0.266." in model_card._spread(
      {"spread": {"all": {"G_ema": 0.158, "real": 0.266}}})
  for empty in ({}, {"swd_draws": None, "spread": None}):  # evaluations from before, no --draws
    assert model_card._draws(empty) == "" and model_card._spread(empty) == ""


def test_card_names_the_photo_labels_of_a_photo_conditional_model():
  text = model_card._conditioning(_config(**{"data.photo_labels": True}))
  assert "`data.photo_labels`, c_dim 3" in text and "`--class brick`" in text
  assert model_card._conditioning(_config()) == ""


def test_loss_curve_marks_the_snapshot_and_the_r1_switch():
  from benchmarks.embedded_model import _curve_marks
  switched = _config(r1_gamma=0.5, r1_gamma_late=2.0, r1_gamma_late_kimg=80)
  assert _curve_marks(switched, 112.0) == [(112.0, ":", "this model (112)"),
                                           (80.0, "--", "R1 gamma 0.5 -> 2")]
  before_the_switch = {k: v for k, v in switched.items() if not k.startswith("r1_gamma_late")}
  assert _curve_marks(before_the_switch, None) == []


def test_reproduce_a_branch_trains_its_trunk_then_branches_at_its_step():
  trunk = _config(r1_gamma=0.5)
  meta = {"training_steps": 5000, "kimg": 160.0, "train_config": _config(r1_gamma=2.0),
          "branched_from": {"path": "runs/x", "step": 2500, "train_config": trunk}}
  commands = model_card._reproduce(meta)
  first, second = _train_configs(commands)
  assert first == _config(r1_gamma=0.5, total_kimg=80.0)
  assert second == _config(r1_gamma=2.0, total_kimg=160.0)
  assert "--workdir runs/embedded --branch-from runs/trunk --branch-step 2500 " in commands
  assert "export --workdir runs/embedded --out generators/embedded/model" in commands
