"""Evaluate the embedded model: SWD of its samples against held-out crops, with baselines.

    python -m benchmarks.embedded_model --out out/bench/embedded_model.json \
        [--workdir runs/embedded]     # also plots the training curve from metrics.jsonl

Rows (RGB channels, 1k images each unless --num says otherwise):
  real vs real      random held-out crops vs random training crops: the floor to aim for;
  G_ema vs held-out the shipped model (truncation off, random noise);
  untrained G       the same architecture at its random initialisation;
  real, blurred     the training crops under a Gaussian blur of 0.5 and 1 px: a scale for the
                    numbers (SWD weighs fine detail: a 1 px blur of real photos scores 51,
                    about three times real vs real).
The held-out crops are clean photos, so a model that leaves out defects scores better there;
the "with defects" rows paint the training set's share of defects on the held-out (and, for
the floor, the training) crops with the training recipe, which is what G learns to draw. A
conditional model also gets one row per class against held-out crops of that class (a
photo-conditional one: that photo's, about a third of the images).
(--no-baselines keeps only the G_ema row: for a sweep over training snapshots.)
--draws N repeats the G_ema vs held-out row with N-1 fresh sets of samples and random projections
and reports the mean, standard deviation and range: the SWD's own noise (for the model shipped
before, 41.3 +- 0.5 over 5 draws, 40.4 to 42.0: a point between snapshots can be chance).
--invert N also inverts N held-out crops in W+ with the demo's preset and reports their mean
MSE, PSNR and SSIM, overall and per photo: how well the model redraws real images, which SWD
does not see (a run with the same SWD as the model shipped before redrew them 2.7 dB worse). Its
grid and metrics go to <out>_inversion/.
Photo coverage: the share of samples that look like each of the three photos (a texture
classifier, `benchmarks.photo_coverage`, whose accuracy on held-out crops is reported with it,
beside the share of samples that look like none of them) and an SWD per photo beside its
real-vs-real floor; a model can drop most of one photo at the same average SWD. Its grid,
<out>_photos.png, shows held-out crops over samples, per photo.
Spread, the collapse measure: the per-pixel standard deviation over 32 samples of one class (of
the model, for an unconditional one) with the noise fixed, beside that of 32 held-out crops of
the class; a class drawn as one image whatever its z scores 0.
Also reports the mask channel: the fraction of generated pixels marked as defect and of images
with any defect pixel, beside the training set's. A conditional model (`data.defect_labels`)
samples with the classes of random training crops (as in training), and the defect share is
also reported per class. Writes a sample grid PNG next to the JSON.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common, photo_coverage
from generators import checkpoint, data, defects, networks, train, trainer

SWD_KEY = 7
BLUR_SIGMAS = (0.5, 1.0)  # px, the Gaussian blurs of the "real, blurred" reference rows
MIN_PHOTO_SWD_IMAGES = 16  # a photo with fewer samples gets its share but no SWD
GRID_COLUMNS = 8  # images per row of the per-photo grid
# A sample is unlike any photo when it is farther from every photo's mean (texture features)
# than this percentile of held-out crops are from theirs.
UNLIKE_ANY_PERCENTILE = 99.0
DRAW_SEED = 100  # sample seeds of the extra draws (--draws) start here
SPREAD_SAMPLES = 32  # images per class for the collapse measure (sample_spread)


def _samples(model: checkpoint.Model, variables, num: int, seed: int,
             labels: np.ndarray | None = None, noise_mode: str = "random") -> np.ndarray:
  """`num` samples (truncation off); `labels` [num, c_dim] for a conditional G."""
  config = model.g_config
  out = []
  sample = jax.jit(lambda z, c, k: networks.synthesis(
      config, variables, networks.mapping(config, variables, z, c), noise_mode, key=k))
  for start in range(0, num, 100):
    key = jax.random.fold_in(jax.random.PRNGKey(seed), start)
    z = jax.random.normal(key, (min(100, num - start), config.z_dim))
    c = None if labels is None else labels[start:start + len(z)]
    out.append(np.asarray(sample(z, c, jax.random.fold_in(key, 1))))
  return np.concatenate(out)


def _defect_share(images: np.ndarray) -> float:
  """Fraction of images (mask channel in [-1, 1]) with any defect pixel."""
  return float(np.mean(np.any(images[..., 3] > 0, axis=(1, 2))))


def sample_spread(images: np.ndarray) -> float:
  """Mean over pixels and RGB channels of the standard deviation across `images` [N, H, W, C]:
  how much a set of images differs from image to image; 0 when they are all one image."""
  return float(np.mean(np.std(images[..., :3], axis=0)))


def _spread(model: checkpoint.Model, labels: np.ndarray | None, real: np.ndarray) -> dict:
  """sample_spread of SPREAD_SAMPLES samples with the noise fixed (`labels`: one class's
  [N, c_dim], or None) beside that of as many real images of the class, `real`: z alone sets
  the spread, and a G that ignores z scores 0 (mode collapse)."""
  fakes = _samples(model, model.g_vars, SPREAD_SAMPLES, seed=6, noise_mode="const",
                   labels=None if labels is None else labels[:SPREAD_SAMPLES])
  return {"G_ema": sample_spread(fakes), "real": sample_spread(real[:SPREAD_SAMPLES])}


def mask_shapes(masks: np.ndarray) -> dict | None:
  """How defect-like the masks of images with a defect are: the median number of separate
  pieces (8-connected) per image and the median size of each image's largest piece, in pixels.
  A painted defect is one shape (cracks: a few branches); many small pieces are speckle.
  masks: bool [N, H, W]. None when no image has a defect."""
  from scipy import ndimage

  pieces, largest = [], []
  for m in masks[masks.any(axis=(1, 2))]:
    labelled, count = ndimage.label(m, structure=np.ones((3, 3)))
    pieces.append(count)
    largest.append(int(np.bincount(labelled.ravel())[1:].max()))
  if not pieces:
    return None
  return {"images": len(pieces), "pieces_median": float(np.median(pieces)),
          "largest_piece_px_median": float(np.median(largest))}


def _row(pair: str, a: np.ndarray, b: np.ndarray, key: int = SWD_KEY) -> dict:
  """One table row: the SWD of image sets a and b (`key`: its random projections), with the
  seconds it took."""
  from inversion import metrics

  start = time.perf_counter()
  result = metrics.sliced_wasserstein(jnp.asarray(a[..., :3]), jnp.asarray(b[..., :3]),
                                      jax.random.PRNGKey(key))
  row = {"pair": pair, **{k: float(v) for k, v in result.items()}}
  print(f"  {pair}: SWD x1e3 avg {row['SWDx1e3_avg']:.1f} ({time.perf_counter() - start:.0f} s)",
        flush=True)
  return row


def _crops(num: int, size: int, region: str, seed: int,
           rotations: str) -> tuple[np.ndarray, np.ndarray]:
  """uint8 [num, size, size, 3] random crops of a region, rotated as the model's training
  crops were (`data.rotations`), and the index of each one's photo in `data.SOURCES` [num]."""
  coords = data.sample_coords(num, size, seed=seed, region=region, rotations=rotations)
  return data.cut(coords, size), coords.source


def _draws(model: checkpoint.Model, heldout: np.ndarray, labels: np.ndarray | None,
           first: dict, count: int) -> dict:
  """SWD (avg) of G_ema vs held-out over `count` draws: the table's row (`first`), then fresh
  samples and fresh random projections each time. How far one number moves by chance alone:
  a snapshot (or model) that beats another by less than this spread has not shown it is better."""
  values = [first["SWDx1e3_avg"]] + [
      _row(f"G_ema vs held-out, draw {draw}", _samples(model, model.g_vars, len(heldout),
                                                      seed=DRAW_SEED + draw, labels=labels),
           heldout, key=SWD_KEY + draw)["SWDx1e3_avg"] for draw in range(1, count)]
  summary = {"values": values, "mean": float(np.mean(values)), "std": float(np.std(values)),
             "min": float(np.min(values)), "max": float(np.max(values))}
  print(f"G_ema vs held-out over {count} draws: SWD x1e3 avg {summary['mean']:.1f} "
        f"+- {summary['std']:.1f} ({summary['min']:.1f} to {summary['max']:.1f})")
  return summary


def _real(crops: np.ndarray, defect_fraction: float = 0.0, seed: int = 0) -> np.ndarray:
  """Crops in the model's range, a `defect_fraction` of them with a painted defect (+ mask)."""
  if defect_fraction:
    crops = defects.with_defects(crops, defect_fraction, seed=seed).images
  return data.to_model_range(crops)


def _inversion(model: checkpoint.Model, crops: np.ndarray, out_dir: pathlib.Path,
               photos: np.ndarray, steps: int | None = None) -> dict:
  """Mean MSE, PSNR and SSIM of the demo's W+ inversion of `crops` (uint8 [N, H, W, 3]), which
  are written to out_dir/targets/ as PNGs (lossless) so the demo reads them as it reads files;
  also per photo (`photos` [N]: index into `data.SOURCES`), as the photos redraw differently."""
  from inversion import demo, images

  files = [str(out_dir / "targets" / f"heldout_{index:03d}.png") for index in range(len(crops))]
  for file, crop in zip(files, crops):
    images.save_image(file, crop)
  space, steps = "wplus", steps or demo.DEMO_STEPS
  result = demo.demo(out_dir, model, steps=steps, examples=files, spaces=(space,))
  metrics = {name: np.asarray(values) for name, values in result["results"][space].metrics.items()}
  means = {name: float(np.mean(values)) for name, values in metrics.items()}
  per_photo = {data.SOURCES[index]: {"images": int(np.sum(photos == index)),
                                     **{name: float(np.mean(values[photos == index]))
                                        for name, values in metrics.items()}}
               for index in np.unique(photos)}
  print(f"W+ inversion of {len(files)} held-out crops ({steps} steps): "
        + ", ".join(f"{name} {value:.4g}" for name, value in means.items()) + "; PSNR per photo: "
        + ", ".join(f"{name} {photo['psnr']:.2f}" for name, photo in per_photo.items()))
  return {"space": space, "images": len(files), "steps": steps, **means, "per_photo": per_photo}


def _photo_coverage(fakes: np.ndarray, training: np.ndarray, training_photos: np.ndarray,
                    heldout: np.ndarray, heldout_photos: np.ndarray, grid_png: pathlib.Path
                    ) -> dict:
  """How evenly the samples cover the three photos (`benchmarks.photo_coverage`).

  A classifier fitted to the training crops (with defects, as G draws them) labels the samples;
  its accuracy on the held-out crops says how far to trust the labels, and the fraction of
  samples unlike any photo (`UNLIKE_ANY_PERCENTILE`) how far the samples are in its domain at
  all: each sample still counts for its nearest photo. For each photo: the
  share of samples it got (the data has a third each) and the SWD of those samples against
  held-out crops of that photo, beside the same SWD of training crops of that photo (the floor).
  Each pair of sets has the size of the smallest of the three, so both rows of a photo are
  comparable with each other (not with the 1k-image rows: SWD grows as sets shrink). The grid
  shows, per photo, a row of held-out crops above a row of samples labelled with it.
  """
  classifier = photo_coverage.fit(training, training_photos, len(data.SOURCES))
  heldout_distances = photo_coverage.distances(classifier, heldout)
  accuracy = float(np.mean(heldout_distances.argmin(1) == heldout_photos))
  limit = np.percentile(heldout_distances.min(1), UNLIKE_ANY_PERCENTILE)
  fake_distances = photo_coverage.distances(classifier, fakes)
  labelled, unlike = fake_distances.argmin(1), fake_distances.min(1) > limit
  print(f"photo classifier: {accuracy:.1%} of held-out crops labelled right; samples unlike any "
        f"photo: {unlike.mean():.1%}", flush=True)
  photos, grid = {}, []
  for index, name in enumerate(data.SOURCES):
    mine = fakes[labelled == index][..., :3]
    sets = (mine, training[training_photos == index][..., :3],
            heldout[heldout_photos == index][..., :3])
    num = min(len(s) for s in sets)
    entry = {"share": len(mine) / len(fakes), "images": num,
             "unlike_any": float(unlike[labelled == index].mean()) if len(mine) else None}
    if num >= MIN_PHOTO_SWD_IMAGES:
      for key, (pair, images) in {"G_ema": (f"G_ema [{name}]", mine),
                                  "floor": (f"real (train) [{name}]", sets[1])}.items():
        row = _row(f"{pair} vs held-out [{name}]", images[:num], sets[2][:num])
        entry[key] = {k: v for k, v in row.items() if k != "pair"}
    photos[name] = entry
    blank = -np.ones((GRID_COLUMNS,) + fakes.shape[1:3] + (3,), np.float32)
    grid += [sets[2][:GRID_COLUMNS], np.concatenate([mine[:GRID_COLUMNS], blank])[:GRID_COLUMNS]]
  trainer.grid_png(np.concatenate(grid), grid_png, columns=GRID_COLUMNS)
  print("share of samples per photo (the data: 1/3 each): "
        + ", ".join(f"{name} {p['share']:.1%}" for name, p in photos.items()))
  return {"classifier_accuracy": accuracy, "unlike_any_photo": float(unlike.mean()),
          "photos": photos, "grid_png": str(grid_png)}


def _blurred(images: np.ndarray, sigma: float) -> np.ndarray:
  """[N, H, W, C] images under a Gaussian blur of `sigma` pixels (each image and channel)."""
  from scipy import ndimage

  return ndimage.gaussian_filter(images, sigma=(0, sigma, sigma, 0))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--checkpoint", default=None, help="default: the embedded model")
  parser.add_argument("--num", type=int, default=1000)
  parser.add_argument("--workdir", default=None, help="training run, for the loss curve")
  parser.add_argument("--out", default="out/bench/embedded_model.json")
  parser.add_argument("--no-baselines", action="store_true",
                      help="only the model's row (a sweep over snapshots; the card needs them)")
  parser.add_argument("--invert", type=int, default=0, metavar="N",
                      help="also invert N held-out crops in W+ (the demo's preset) and report "
                           "MSE/PSNR/SSIM (about 6 s per crop on 2 CPU cores)")
  parser.add_argument("--draws", type=int, default=1, metavar="N",
                      help="repeat the G_ema vs held-out SWD over N draws of samples and random "
                           "projections and report its spread (about 20 s a draw)")
  args = parser.parse_args(argv)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)

  model = checkpoint.load(args.checkpoint)
  size = model.resolution
  data_config = model.metadata.get("train_config", {}).get("data", {})
  fraction = data_config.get("defect_fraction", defects.DEFECT_FRACTION)
  rotations = data_config.get("rotations", train.FIELDS_ADDED_OFF["data.rotations"])
  bank_set = defects.defect_dataset(2000, size=size, defect_fraction=fraction, seed=0,
                                    rotations=rotations)
  bank = bank_set.images
  labels = None
  by_photo = model.class_names == list(data.SOURCES)
  if model.g_config.c_dim:  # the classes of random training crops, as training draws them
    if model.class_names != list(train.CLASS_NAMES) and not by_photo:
      raise SystemExit(f"This benchmark knows the embedded models' classes {train.CLASS_NAMES} "
                       f"and {data.SOURCES}; {args.checkpoint} has {model.class_names}.")
    labels = (train.photo_labels(bank_set.photos) if by_photo else train.defect_labels(bank))[
        np.random.default_rng(4).integers(0, len(bank), args.num)]
  heldout_crops, heldout_photos = _crops(args.num, size, "heldout", seed=1, rotations=rotations)
  heldout = _real(heldout_crops)
  heldout_mix = _real(heldout_crops, fraction, seed=1)
  training_crops, training_photos = _crops(args.num, size, "train", seed=2, rotations=rotations)
  training = _real(training_crops)
  training_mix = _real(training_crops, fraction, seed=2)
  fakes = _samples(model, model.g_vars, args.num, seed=3, labels=labels)
  rows = [_row("G_ema vs held-out", fakes, heldout),
          _row("G_ema vs held-out with defects", fakes, heldout_mix)]
  draws = _draws(model, heldout, labels, rows[0], args.draws) if args.draws > 1 else None
  spread = {} if labels is not None else {"all": _spread(model, None, heldout_mix)}
  for index, name in enumerate(model.class_names if labels is not None else ()):
    if by_photo:  # against held-out crops of that photo, with the training share of defects
      pair, real_class = (f"G_ema [{name}] vs held-out {name} with defects",
                          heldout_mix[heldout_photos == index])
    else:  # train.CLASS_NAMES order: class 0 has no defect, class 1 one defect per crop.
      pair, real_class = (f"G_ema [{name}] vs held-out, defect fraction {index}",
                          _real(heldout_crops, float(index), seed=1))
    one_class = np.eye(model.g_config.c_dim, dtype=np.float32)[np.full(len(real_class), index)]
    rows.append(_row(pair, _samples(model, model.g_vars, len(real_class), seed=5,
                                    labels=one_class), real_class))
    spread[name] = _spread(model, one_class, real_class)
  if not args.no_baselines:
    untrained_vars = networks.init_generator(model.g_config, jax.random.PRNGKey(0))
    untrained = _samples(model, untrained_vars, args.num, seed=3, labels=labels)
    rows = [_row("real (train) vs held-out", training, heldout),
            _row("real (train) vs held-out, both with defects", training_mix, heldout_mix),
            *rows, _row("untrained G vs held-out", untrained, heldout),
            *(_row(f"real (train) blurred {sigma:g} px vs held-out", _blurred(training, sigma),
                   heldout) for sigma in BLUR_SIGMAS)]
  print(f"spread (per-pixel std over {SPREAD_SAMPLES} z, noise fixed; held-out crops): "
        + ", ".join(f"{name} {v['G_ema']:.3f} (real {v['real']:.3f})"
                    for name, v in spread.items()))
  columns = ["pair"] + [k for k in rows[0] if k != "pair"]
  print(f"device: {common.device_description()}; {args.num} images per set, SWD x1e3")
  common.print_table(rows, columns)
  mask_fraction = defect_images = None
  per_class = {}
  if model.channels == 4:
    mask_fraction = float(np.mean(fakes[..., 3] > 0))
    defect_images = _defect_share(fakes)
    if labels is not None:
      per_class = {name: _defect_share(fakes[labels[:, i] > 0])
                   for i, name in enumerate(model.class_names)}
      print(f"images with a defect, per class: {per_class}")
  train_mask_fraction = float(np.mean(bank[..., 3] > train.MASK_ON))
  train_defect_images = float(np.mean(train.defect_labels(bank)[:, 1]))
  print(f"defect-mask pixels: generated {mask_fraction}, training set {train_mask_fraction:.4f}; "
        f"images with a defect: generated {defect_images}, training set {train_defect_images:.3f}")
  shapes = {"training": mask_shapes(bank[..., 3] > train.MASK_ON)}
  if model.channels == 4:
    shapes["generated"] = mask_shapes(fakes[..., 3] > 0)
  print(f"defect masks (images with a defect): {shapes}")
  trainer.grid_png(fakes[:64], out.with_suffix(".png"))
  coverage = _photo_coverage(fakes, training_mix, training_photos, heldout_mix, heldout_photos,
                             out.with_name(out.stem + "_photos.png"))
  payload = {"device": common.device_description(), "num": args.num, "rows": rows,
             "mask_fraction_generated": mask_fraction,
             "mask_fraction_training": train_mask_fraction,
             "defect_images_generated": defect_images, "defect_images_training": train_defect_images,
             "defect_images_per_class": per_class, "mask_shapes": shapes,
             "photo_coverage": coverage, "spread": spread, "swd_draws": draws,
             "metadata": model.metadata}
  if args.invert:
    payload["inversion"] = _inversion(model, heldout_crops[:args.invert],
                                      out.with_name(out.stem + "_inversion"),
                                      heldout_photos[:args.invert])
  if args.workdir:
    payload["curve_png"] = str(_plot_curve(pathlib.Path(args.workdir), out.with_name(
        out.stem + "_curve.png"), model.metadata.get("kimg")))
  common.write_json(str(out), payload)


def _curve_marks(train_config: dict, snapshot_kimg: float | None) -> list[tuple[float, str, str]]:
  """(kimg, line style, label) of the vertical lines on a run's loss curve: the evaluated
  snapshot, and the kimg where R1's weight switches (a run from before the switch has none)."""
  marks = []
  if snapshot_kimg is not None:
    marks.append((snapshot_kimg, ":", f"this model ({snapshot_kimg:g})"))
  if train_config.get("r1_gamma_late"):
    marks.append((train_config["r1_gamma_late_kimg"], "--",
                  f"R1 gamma {train_config['r1_gamma']:g} -> {train_config['r1_gamma_late']:g}"))
  return marks


def _plot_curve(workdir: pathlib.Path, path: pathlib.Path,
                snapshot_kimg: float | None = None) -> pathlib.Path:
  """G and D losses of a training run; lines mark the evaluated snapshot and any change of the R1
  weight (`r1_gamma_late`)."""
  config = json.loads((workdir / "config.json").read_text())
  trainer.plot_records(workdir, path, ("g_loss", "d_loss"), _curve_marks(config, snapshot_kimg))
  print(f"wrote {path}")
  return path


if __name__ == "__main__":
  main()
