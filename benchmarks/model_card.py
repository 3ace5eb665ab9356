"""Write generators/embedded/MODEL_CARD.md from an evaluation JSON (benchmarks.embedded_model).

    python -m benchmarks.embedded_model --workdir runs/embedded --invert 16 \
        --out out/bench/embedded_model.json
    python -m benchmarks.model_card out/bench/embedded_model.json [EARLIER_EVAL.json ...] \
        [--model conditional]

Earlier evaluations (of checkpoints along the way) add rows to the card's SWD-over-training table.
The card, samples.png, photos.png and training_curve.png go to the shipped model's directory
(`checkpoint.embedded_dir(--model)`).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil

import configs
from generators import augment, checkpoint, convert, train

REPO = pathlib.Path(__file__).resolve().parents[1]
PHOTOS_PNG = "photos.png"  # the per-photo grid of the evaluation, in the model's directory
INVERTED_CROPS = 16  # held-out crops the card's evaluation inverts (`embedded_model --invert`)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.model_card", description=__doc__)
  parser.add_argument("evaluations", nargs="+", metavar="EVAL_JSON",
                      help="the shipped snapshot's evaluation, then earlier ones")
  parser.add_argument("--model", default="default", choices=tuple(checkpoint.EMBEDDED_MODELS),
                      help="which shipped model the card describes")
  args = parser.parse_args(argv)
  model_dir = checkpoint.embedded_dir(args.model)
  evaluations = [json.loads(pathlib.Path(p).read_text()) for p in args.evaluations]
  evaluation = evaluations[0]
  pairs = [row["pair"] for row in evaluation["rows"]]
  if not all(any(p.startswith(b) for p in pairs) for b in ("real (train) vs", "untrained G")):
    raise SystemExit(f"{args.evaluations[0]} has no baseline rows (real vs real, untrained G), "
                     "which the card shows: evaluate the model without --no-baselines.")
  meta = evaluation["metadata"]
  cfg = meta["train_config"]
  samples = pathlib.Path(args.evaluations[0]).with_suffix(".png")
  shutil.copy(samples, model_dir / "samples.png")
  curve = ""
  # The loss curve of the training run, from whichever evaluation was given its workdir.
  curve_png = next((e["curve_png"] for e in evaluations if e.get("curve_png")), None)
  if curve_png:
    shutil.copy(curve_png, model_dir / "training_curve.png")
    curve = "\n![G and D losses over the last training run](training_curve.png)"
  if evaluation.get("photo_coverage"):
    shutil.copy(evaluation["photo_coverage"]["grid_png"], model_dir / PHOTOS_PNG)
  progress = "\n".join(
      f"| {_kimg_label(e['metadata'])} | "
      + " | ".join(f"{v:.1f}" for v in _swd_values(e, "G_ema")) + " |"
      for e in sorted(evaluations, key=lambda e: _total_kimg(e["metadata"])))
  # Later snapshots of the same run (fine-tuning runs from a snapshot are other lineages).
  later = [e for e in evaluations if _total_kimg(e["metadata"]) > _total_kimg(meta)
           and e["metadata"].get("init_from") == meta.get("init_from")]
  draws = len((evaluation.get("swd_draws") or {}).get("values", []))
  reproduce = _reproduce(meta, args.model, draws)
  if meta.get("init_from"):
    start = meta["init_from"]
    history = (f"Trained in two runs on 2 CPU cores: {start.get('kimg', 0):.1f} kimg "
               f"({start.get('training_steps')} steps) from scratch, then **{meta['kimg']:.1f} "
               f"kimg ({meta['training_steps']} steps)** from that model's G_ema and D with fresh "
               f"optimiser states (`--config.init_from`, as NVlabs' `--resume`)"
               + (f", both learning rates ramping to 0 along a cosine over the last "
                  f"{cfg['lr_rampdown']:.0%} of it" if cfg.get("lr_rampdown") else "")
               + (" and the EMA at its full half-life from the start (no ramp-up)"
                  if not cfg.get("ema_rampup") else "")
               + f": **{_total_kimg(meta):.1f} kimg** in all.")
  else:
    history = (f"Trained from scratch for **{meta['training_steps']} steps ({meta['kimg']:.1f} "
               "kimg)** on 2 CPU cores.")
    if later:
      tuned_from_it = ", and fine-tuning runs from it," if any(
          (e["metadata"].get("init_from") or {}).get("kimg") == meta["kimg"]
          for e in evaluations) else ""
      best = all(_swd_values(e, "G_ema")[-1] >= _swd_values(evaluation, "G_ema")[-1]
                 for e in evaluations)
      history += (f" The run went on to {max(_total_kimg(e['metadata']) for e in later):g} kimg"
                  + ("; this snapshot has the lowest average SWD of those evaluated (table "
                     f"below): later ones{tuned_from_it} were worse, as a small GAN's "
                     "quality oscillates."
                     if best else "; this is an earlier snapshot of it (table below).")
                  + f" `--config.total_kimg={meta['kimg']:g}` stops a new run there.")
    elif meta["kimg"] < cfg["total_kimg"]:
      history += (f" The run is set for {cfg['total_kimg']:g} kimg; this is its checkpoint so far, "
                  "and the command below resumes it.")
  if meta.get("averaged_steps"):
    history += (" Its G_ema is the mean of the run's G_ema weights at steps "
                + ", ".join(map(str, meta["averaged_steps"])) + " (snapshot averaging).")
  rows = "\n".join(
      f"| {r['pair']} | " + " | ".join(f"{r[k]:.1f}" for k in r if k != "pair") + " |"
      for r in evaluation["rows"])
  levels = [k for k in evaluation["rows"][0] if k != "pair"]
  title = "" if args.model == "default" else f": `{checkpoint.EMBEDDED_PREFIX}{args.model}`"
  card = f"""# Embedded model card{title}

A 64x64 StyleGAN2 (`skip` generator, `resnet` discriminator) with 4 output channels: RGB and a
defect-mask channel (-1 = no defect, +1 = defect). Trained by `generators/train.py` with
`configs/embedded.py` on this repository's own data, so every command works offline.

![samples](samples.png)

## Data
Random 64x64 crops (with {_rotations(cfg)}) of the training regions of three CC0
texture photographs bundled in scikit-image (`brick`, `grass`, `gravel`; grayscale, R = G = B),
{_crops(cfg)};
{cfg['data']['defect_fraction']:.0%} of them carry one procedural defect (scratch, crack, hole or
stain, `generators/defects.py`) whose binary mask is the 4th channel. The right-most quarter of
every photo is held out: training never sees it; evaluation and `examples/` come from it.

## Recipe
StyleGAN2-ADA's loss {_ada(cfg)}: non-saturating logistic loss, lazy R1 ({_r1(cfg)},
every {cfg['r1_interval']} steps), style mixing {cfg['style_mixing_prob']},
G EMA (half-life {cfg['ema_kimg']} kimg, ramp-up {cfg['ema_rampup']}), Adam (lr {cfg['g_lr']},
betas 0/0.99), batch {cfg['batch_size']}. z = w = {cfg['model']['z_dim']},
{cfg['model']['mapping_layers']} mapping layers, channel_base {cfg['model']['channel_base']},
channel_max {cfg['model']['channel_max']}, conv_clamp {cfg['model']['conv_clamp']}.{_conditioning(cfg)}
{history} The commands at the end retrain it.
{curve}

## Evaluation
Sliced Wasserstein distance (x1e3, ProGAN's Laplacian-pyramid patches, RGB channels) on
{evaluation['num']} images per set, {evaluation['device']}:

| pair | {' | '.join(levels)} |
|---|{'---|' * len(levels)}
{rows}
{_draws(evaluation)}{_spread(evaluation)}
Defect-mask pixels: {evaluation['mask_fraction_generated']:.4f} of generated pixels vs
{evaluation['mask_fraction_training']:.4f} in the training set.{_defect_images(evaluation)}
{_inversion(evaluation)}{_photo_coverage(evaluation)}

SWD (x1e3) of G_ema vs held-out crops along training:

| kimg | {' | '.join(levels)} |
|---|{'---|' * len(levels)}
{progress}

Reproduce (each step resumes after a kill):

```bash
{reproduce}
```
"""
  (model_dir / "MODEL_CARD.md").write_text(card)
  print(f"wrote {model_dir / 'MODEL_CARD.md'}")


def _flags(train_config: dict, stop_kimg: float) -> str:
  """`--config.*` flags that turn the default embedded config into `train_config`, stopped at
  `stop_kimg` (a snapshot before the end of its run is reproduced by ending a new run there)."""
  # A run from before a config field existed ran without it (`train.FIELDS_ADDED_OFF`).
  wanted = _flatten(train.with_added_fields(
      {**train_config, "total_kimg": stop_kimg, "init_from": ""}))
  defaults = _flatten(json.loads(configs.load_config("embedded").to_json()))
  return "".join(f" --config.{key}={_flag_value(value)}" for key, value in wanted.items()
                 if key in defaults and defaults[key] != value)


def _flatten(tree: dict) -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1}: config fields as `--config.a.b` names them."""
  return {".".join(path): value for path, value in convert._flat(tree).items()}


def _flag_value(value) -> str:
  return f"{value:g}" if isinstance(value, float) else str(value)


def _paths(model: str) -> dict[str, str]:
  """Where shipped model `model` is trained, fine-tuned, exported and evaluated (its card's
  commands); each model gets its own, as a run resumes whatever its workdir holds."""
  suffix = "" if model == "default" else f"_{model}"
  evaluation = f"out/bench/embedded_model{suffix}.json"
  return {"run": f"runs/embedded{suffix}", "base": f"runs/base_model{suffix}",
          "trunk": f"runs/trunk{suffix}",
          "finetune": f"runs/finetune{suffix}",
          "shipped": str((checkpoint.embedded_dir(model) / "model").relative_to(REPO)),
          "evaluation": evaluation,
          "card": f"python -m benchmarks.model_card {evaluation}"
                  + ("" if model == "default" else f" --model {model}")}


def _reproduce(meta: dict, model: str = "default", draws: int = 0) -> str:
  """The commands that retrain shipped model `model`: one run, a first run and a fine-tuning
  run, or a trunk run and a branch of it; then its evaluation, with `draws` repeated SWD draws
  if the card reports them."""
  train = "python -m generators train --config embedded --workdir "
  export = "python -m generators export --workdir "
  paths = _paths(model)
  start = meta.get("init_from")
  # A snapshot average (export's `--step a,b,c`) names its steps.
  steps = (" --step " + ",".join(map(str, meta["averaged_steps"]))
           if meta.get("averaged_steps") else "")
  trunk = meta.get("branched_from")  # the run continued another one from its checkpoint
  if start and trunk:
    raise ValueError("The card cannot yet write the commands for a branch of a fine-tuning run.")
  if start:
    first_config = start.get("train_config", meta["train_config"])
    commands = [train + paths["run"] + _flags(first_config, start["kimg"]),
                export + f"{paths['run']} --out {paths['base']}",
                train + f"{paths['finetune']} --config.init_from={paths['base']}"
                + _flags(meta["train_config"], meta["kimg"]),
                export + f"{paths['finetune']} --out {paths['shipped']}{steps}"]
  else:
    commands, branching = [], ""
    if trunk:
      trunk_kimg = trunk["step"] * trunk["train_config"]["batch_size"] / 1000
      commands.append(train + paths["trunk"] + _flags(trunk["train_config"], trunk_kimg))
      branching = f" --branch-from {paths['trunk']} --branch-step {trunk['step']}"
    commands += [train + paths["run"] + branching + _flags(meta["train_config"], meta["kimg"]),
                 export + f"{paths['run']} --out {paths['shipped']}{steps}"]
  workdir = paths["finetune"] if start else paths["run"]
  commands += [f"python -m benchmarks.embedded_model --workdir {workdir} "
               f"--invert {INVERTED_CROPS}" + (f" --draws {draws}" if draws > 1 else "")
               + f" --out {paths['evaluation']}", paths["card"]]
  return "\n".join(commands)


def _crops(train_config: dict) -> str:
  """How the training crops were drawn: a bank once, or fresh every step (`data.num_crops` 0)."""
  data = train_config["data"]
  if data["num_crops"]:
    return f"{data['num_crops']} crops drawn once from seed {train_config['seed']}"
  return (f"fresh crops with freshly painted defects every step (seed {train_config['seed']}, "
          "`data.num_crops` = 0)")


def _rotations(train_config: dict) -> str:
  rotations = train_config["data"].get("rotations", train.FIELDS_ADDED_OFF["data.rotations"])
  return {"quarter": "flips and 90-degree rotations",
          "half": "flips and 180-degree rotations: brick courses keep the photo's axis",
          "none": "left-right flips"}[rotations]


def _ada(train_config: dict) -> str:
  if not train_config.get("ada_target"):
    return "without ADA"
  ops = train_config.get("ada_ops", ",".join(augment.OPS)).replace(",", ", ")
  return (f"with ADA ({ops}; "
          f"p steered to r_t = {train_config['ada_target']:g}, at most 1 per "
          f"{train_config['ada_kimg']:g} kimg; `generators/augment.py`)")


def _r1(train_config: dict) -> str:
  text = f"gamma {train_config['r1_gamma']:g}"
  if train_config.get("r1_gamma_late"):
    text += (f", {train_config['r1_gamma_late']:g} from {train_config['r1_gamma_late_kimg']:g} "
             "kimg on")
  return text


def _conditioning(train_config: dict) -> str:
  if train_config["data"].get("photo_labels"):
    text = ("\nG and D are class-conditional (`data.photo_labels`, c_dim 3): a crop's one-hot "
            "label is its photo (`brick` / `grass` / `gravel`), and fakes get the labels of the "
            "step's real crops, shuffled. Pick the photo when sampling (`--class brick`) and, for "
            "Z-space inversion, with `--config.label`.")
  elif train_config["data"].get("defect_labels"):
    text = ("\nG and D are class-conditional (`data.defect_labels`, c_dim 2): a crop's one-hot "
            "label says whether its mask holds a defect (`clean` / `defect`), and fakes get the "
            "labels of random training crops. Pick the class when sampling (`--class defect`) and, "
            "for Z-space inversion, with `--config.label`.")
  else:
    return ""
  if train_config.get("transition_end_kimg"):
    text += (" The classes were faded in (transitional conditioning, Shahbazi et al. 2022): "
             f"their weight rose from 0 to 1 between {train_config['transition_start_kimg']:g} and "
             f"{train_config['transition_end_kimg']:g} kimg of this run.")
  return text


def _inversion(evaluation: dict) -> str:
  """How well the model redraws real crops (`benchmarks.embedded_model --invert`), if measured."""
  inv = evaluation.get("inversion")
  if not inv:
    return ""
  per_photo = inv.get("per_photo")  # evaluations from before it was reported
  photos = ("; PSNR per photo: " + ", ".join(
      f"{name} {photo['psnr']:.2f} dB ({photo['images']} crops)"
      for name, photo in per_photo.items())) if per_photo else ""
  return (f"\nW+ inversion of {inv['images']} held-out crops (the demo's Image2StyleGAN preset, "
          f"{inv['steps']} steps): MSE {inv['mse']:.4f}, PSNR {inv['psnr']:.2f} dB, SSIM "
          f"{inv['ssim']:.3f}{photos} (SWD does not measure how well the model redraws real "
          "images).\n")


def _photo_coverage(evaluation: dict) -> str:
  """Share of samples per photo and per-photo SWD (`embedded_model._photo_coverage`), if
  measured."""
  coverage = evaluation.get("photo_coverage")
  if not coverage:
    return ""
  rows = "\n".join(
      f"| {name} | {photo['share']:.1%} | {_percent(photo.get('unlike_any'))} | "
      f"{photo['images']} | "
      + " | ".join(f"{photo[key]['SWDx1e3_avg']:.1f}" if key in photo else "-"
                   for key in ("G_ema", "floor")) + " |"
      for name, photo in coverage["photos"].items())
  return f"""
Photo coverage: a texture classifier (`benchmarks/photo_coverage.py`; it names the photo of
{coverage['classifier_accuracy']:.1%} of held-out crops right) labels each sample with the photo it
looks most like; the data has a third of each. {_percent(coverage.get('unlike_any_photo'))} of
the samples look like none of them (farther from every photo than 99% of held-out crops).
Per photo, the SWD (x1e3, avg) of the samples it labelled against
held-out crops of that photo, beside training crops of that photo against the same (the floor),
on sets of the size given (SWD grows as sets shrink, so compare within a row). The grid shows
each photo's held-out crops above samples labelled with it.

| photo | share of samples | of those, unlike any photo | images per set | G_ema vs held-out | real (train) vs held-out |
|---|---|---|---|---|---|
{rows}

![per photo: held-out crops, then samples labelled with it]({PHOTOS_PNG})"""


def _draws(evaluation: dict) -> str:
  """The G_ema row's spread over repeated draws (`embedded_model --draws`), if measured."""
  draws = evaluation.get("swd_draws")
  if not draws:
    return ""
  return (f"\nOver {len(draws['values'])} draws of samples and random projections, G_ema vs "
          f"held-out scores {draws['mean']:.1f} +- {draws['std']:.1f} ({draws['min']:.1f} to "
          f"{draws['max']:.1f}): differences smaller than that are chance.\n")


def _spread(evaluation: dict) -> str:
  """The collapse measure (`embedded_model._spread`), if measured."""
  spread = evaluation.get("spread")
  if not spread:
    return ""
  return ("\nSpread, the per-pixel standard deviation over 32 z with the noise fixed (0: every z "
          "draws the same image): " + ", ".join(
              f"{'' if name == 'all' else f'class {name}: '}G_ema {v['G_ema']:.3f}, held-out "
              f"crops {v['real']:.3f}" for name, v in spread.items()) + ".\n")


def _percent(fraction: float | None) -> str:
  return "-" if fraction is None else f"{fraction:.1%}"


def _defect_images(evaluation: dict) -> str:
  if evaluation.get("defect_images_generated") is None:  # evaluations before it was measured
    return ""
  text = (f" Images with any defect pixel: {evaluation['defect_images_generated']:.1%} of "
          f"generated vs {evaluation['defect_images_training']:.1%} of training images.")
  per_class = evaluation.get("defect_images_per_class") or {}  # a conditional model
  if per_class:
    text += " Per class label: " + ", ".join(f"{name} {share:.1%}"
                                             for name, share in per_class.items()) + "."
  shapes = evaluation.get("mask_shapes") or {}
  if shapes.get("generated") and shapes.get("training"):
    gen, real = shapes["generated"], shapes["training"]
    text += (f" A generated defect mask has {gen['pieces_median']:g} separate pieces (median), "
             f"the largest {gen['largest_piece_px_median']:g} px; a painted one "
             f"{real['pieces_median']:g} piece(s), {real['largest_piece_px_median']:g} px.")
  return text


def _kimg_label(meta: dict) -> str:
  """Total kimg; for a fine-tuning run also where it started and its learning-rate schedule."""
  label = f"{_total_kimg(meta):.1f}"
  start = meta.get("init_from")
  if start:
    rampdown = meta["train_config"].get("lr_rampdown")
    label += (f" (fine-tuned from {start['kimg']:g}"
              + (f", lr cosine ramp-down over {rampdown:.0%}" if rampdown else "") + ")")
  return label


def _total_kimg(meta: dict) -> float:
  return float(meta.get("total_kimg_trained", meta.get("kimg", 0.0)))


def _swd_values(evaluation: dict, prefix: str) -> list[float]:
  """The SWD numbers of the evaluation row whose pair starts with `prefix`."""
  row = next(r for r in evaluation["rows"] if r["pair"].startswith(prefix))
  return [v for k, v in row.items() if k != "pair"]


if __name__ == "__main__":
  main()
