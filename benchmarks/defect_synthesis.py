"""Defect synthesis on the embedded model: placement, faithfulness, realism, usefulness.

    python -m benchmarks.defect_synthesis [--quick] [--out out/bench/defects]

Data: the embedded model's held-out clean crops (never trained on) as normal images, crops
0, 3, 6, ... (16); target masks are procedural shapes (generators/defects.py) drawn with a seed
the model's training never used, `--per-image` per crop. 'Real' defects for the realism and
segmentation checks are procedural defects painted on the other held-out crops.

Rows (configs/defect_synthesis.py, one engine run each, same pairs, same seed):
  space x noise maps with defect 'none', then W+ with noise and 'stitch' / 'distill'.

Per row:
  IoU          generated mask (channel > 0) vs the target mask: median, and the share >= 0.8;
  PSNR out     RGB vs the normal image outside the target mask dilated by 2 px (median, dB);
  SWD patches  x1e3, 16x16 patches centred on the defects, against real defect patches;
  D logit      the model's D on the results (RGB + generated mask), next to D on real
               defective crops and on the clean normals;
  s / pair     steady engine time per pair (compile apart).

Usefulness: a small per-pixel defect segmenter (`Segmenter`, 4 conv layers) trained on
`--real` real defective crops from the training regions (2, then 8); on those plus the copy-paste
composites the 'stitch' row fitted (the real defects pasted into the normals, target masks);
on those plus the synthetic pairs of the 'stitch' row (image + generated mask); on the
synthetic pairs alone. Pixel AUROC on the held-out real defective crops, mean and spread over
`--seeds` seeds.

Writes <out>/defects.json, <out>/grid.png (normal | target mask | result | generated mask |
|difference| per row of the W+ stitch run) and prints the tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import common
from generators import checkpoint
from generators import data as data_lib
from generators import defects as procedural
from generators import networks
from inversion import defects
from inversion import images as images_lib
from inversion import metrics as metrics_lib
from inversion.encoders import train as encoder_train

MASK_SEED = 20261205        # target masks: a seed the model's training never used
REAL_SEED = 777             # real defects painted on the other held-out crops
TRAIN_REAL_SEED = 4242      # the segmenter's few real training crops (training regions)
PATCH = 16                  # side of the defect patches compared by SWD
SWD_KEY = 5
IOU_GOAL = 0.8
PSNR_GOAL = 30.0
QUICK_STEPS = 150


def _rows(quick: bool) -> list[tuple[str, str]]:
  """(label, config variant) of every run."""
  spaces = ('wplus',) if quick else ('z', 'w', 'wplus')
  rows = [(f'{s} + noise, none', f'{s},none') for s in spaces]
  rows += [(f'{s}, none', f'{s},none,no_noise') for s in spaces]
  rows += [('wplus + noise, stitch', 'wplus,stitch'), ('wplus + noise, distill', 'wplus,distill')]
  return rows


def defect_patches(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
  """PATCH x PATCH RGB crops centred on each mask's centroid (moved inside the image)."""
  out = []
  side = images.shape[1]
  for x, m in zip(images, masks):
    cy, cx = np.argwhere(m).mean(0).round().astype(int)
    y0 = int(np.clip(cy - PATCH // 2, 0, side - PATCH))
    x0 = int(np.clip(cx - PATCH // 2, 0, side - PATCH))
    out.append(x[y0:y0 + PATCH, x0:x0 + PATCH, :3])
  return np.stack(out)


def d_logits(model, images: np.ndarray) -> np.ndarray:
  return np.asarray(networks.Discriminator(model.d_config).apply(model.d_vars,
                                                                 jnp.asarray(images)))[:, 0]


def swd(a: np.ndarray, b: np.ndarray) -> float:
  n = min(len(a), len(b))
  out = metrics_lib.sliced_wasserstein(jnp.asarray(a[:n]), jnp.asarray(b[:n]),
                                       jax.random.PRNGKey(SWD_KEY), min_resolution=PATCH)
  return float(out['SWDx1e3_avg'])


# ----------------------------------------------------------------------------------------------
# The segmenter of the usefulness check.


class Segmenter(nn.Module):
  """Per-pixel defect logits of RGB [B, H, W, 3]: three 3x3 convs (one dilated), a 1x1 head."""
  width: int = 32

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(self.width // 2, (3, 3))(x))
    x = nn.relu(nn.Conv(self.width, (3, 3))(x))
    x = nn.relu(nn.Conv(self.width, (3, 3), kernel_dilation=2)(x))
    return nn.Conv(1, (1, 1))(x)[..., 0]


@dataclasses.dataclass(frozen=True)
class SegmenterRecipe:
  steps: int = 600
  batch: int = 8
  lr: float = 3e-3
  pos_weight: float = 5.0   # defects are a few % of the pixels


def train_segmenter(images: np.ndarray, masks: np.ndarray, seed: int,
                    recipe: SegmenterRecipe = SegmenterRecipe()):
  """Fits `Segmenter` to (RGB [N, H, W, 3] in [-1, 1], bool masks [N, H, W]) with random
  flips and quarter turns; returns a function RGB -> logits."""
  model = Segmenter()
  key = jax.random.PRNGKey(seed)
  params = model.init(key, jnp.zeros((1,) + images.shape[1:]))
  opt = optax.adam(recipe.lr)
  state = opt.init(params)
  x_all, y_all = jnp.asarray(images), jnp.asarray(masks, jnp.float32)

  def loss_fn(p, x, y):
    logits = model.apply(p, x)
    w = 1 + (recipe.pos_weight - 1) * y
    return jnp.mean(w * optax.sigmoid_binary_cross_entropy(logits, y))

  @jax.jit
  def step(p, s, k):
    kb, kt = jax.random.split(k)
    idx = jax.random.randint(kb, (recipe.batch,), 0, len(x_all))
    x, y = x_all[idx], y_all[idx]
    op = jax.random.randint(kt, (), 0, 8)
    x = jax.lax.switch(op, [lambda a, o=o: _dihedral(a, o) for o in range(8)], x)
    y = jax.lax.switch(op, [lambda a, o=o: _dihedral(a[..., None], o)[..., 0]
                            for o in range(8)], y)
    loss, g = jax.value_and_grad(loss_fn)(p, x, y)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s, loss

  for i in range(recipe.steps):
    params, state, _ = step(params, state, jax.random.fold_in(key, i))
  return jax.jit(lambda x: model.apply(params, x))


def _dihedral(x, op: int):
  """One of the 8 flips/quarter turns of [B, H, W, C]."""
  x = jnp.rot90(x, op % 4, axes=(1, 2))
  return x[:, :, ::-1] if op >= 4 else x


def pixel_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
  """Area under the ROC curve of per-pixel scores for bool labels (Mann-Whitney U)."""
  s, y = np.asarray(scores, np.float64).ravel(), np.asarray(labels, bool).ravel()
  order = np.argsort(s, kind='mergesort')
  ranks = np.empty(len(s))
  ranks[order] = np.arange(1, len(s) + 1)
  _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
  sums = np.bincount(inverse, ranks)  # average ranks of ties
  ranks = (sums / counts)[inverse]
  pos, neg = y.sum(), (~y).sum()
  return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def usefulness(train_sets: dict, test, seeds: int, recipe: SegmenterRecipe) -> dict:
  """Pixel AUROC on `test` of segmenters trained on each of `train_sets` {label: (RGB, masks)}:
  {label: {'mean', 'std', 'runs', 'train_images'}}."""
  out = {}
  for label, (x, y) in train_sets.items():
    scores = []
    for s in range(seeds):
      predict = train_segmenter(x, y, s, recipe)
      scores.append(pixel_auroc(np.asarray(predict(jnp.asarray(test[0]))), test[1]))
    out[label] = {'mean': float(np.mean(scores)), 'std': float(np.std(scores)),
                  'runs': scores, 'train_images': int(len(x))}
  return out


def _joined(*sets):
  return tuple(np.concatenate(parts) for parts in zip(*sets))


# ----------------------------------------------------------------------------------------------
# The run.


def run(args) -> dict:
  model = checkpoint.load(args.checkpoint)
  held = data_lib.heldout_crops(size=model.resolution)
  clean = encoder_train.heldout_images(model.resolution)
  normals = clean[::3][:args.normals]
  masks, _ = defects.random_masks(normals, args.per_image, seed=MASK_SEED)
  pairs = np.repeat(normals, args.per_image, 0)
  others = np.concatenate([held[1::3], held[2::3]])
  real_masks, real_rgb = defects.random_masks(data_lib.to_model_range(others), 1, REAL_SEED)
  real_4ch = np.concatenate([real_rgb, procedural.mask_to_model(real_masks)[..., None]], -1)
  overrides = [f'steps={args.steps}'] if args.steps else []
  runs, results = [], {}
  for label, variant in _rows(args.quick):
    config = f'defect_synthesis:{variant}'
    start = time.perf_counter()
    result = defects.synthesize(pairs, masks, model, config, progress=False,
                                overrides=overrides)
    seconds = time.perf_counter() - start
    results[label] = result
    m = result.metrics
    row = {'run': label, 'steps': int(result.inversion.steps),
           'iou_median': float(np.median(m['iou'])),
           'iou>=0.8': float(np.mean(m['iou'] >= IOU_GOAL)),
           'psnr_out_median': float(np.median(m['psnr_outside'])),
           'swd_patches_x1e3': swd(defect_patches(result.images, result.generated_masks
                                                  | masks),
                                   defect_patches(real_rgb, real_masks)),
           'd_logit': float(np.mean(d_logits(model, result.images))),
           's_per_pair': seconds / len(pairs)}
    runs.append(row)
    print(f"{label}: IoU median {row['iou_median']:.3f}, PSNR out {row['psnr_out_median']:.2f} "
          f"dB, {row['s_per_pair']:.2f} s/pair", flush=True)
  reference = {'d_logit_real_defective': float(np.mean(d_logits(model, real_4ch))),
               'd_logit_clean_normals': float(np.mean(d_logits(model, normals))),
               'swd_patches_x1e3_real_vs_real': swd(
                   defect_patches(real_rgb[::2], real_masks[::2]),
                   defect_patches(real_rgb[1::2], real_masks[1::2]))}
  stitch = results['wplus + noise, stitch']
  recipe = SegmenterRecipe(steps=args.segmenter_steps)
  synthetic = (stitch.images[..., :3], stitch.generated_masks)
  copy_paste = (stitch.targets[..., :3], stitch.target_masks)  # the pasted real defects alone
  train_sets = {'synthetic only': synthetic}
  for n in args.real:
    crops = data_lib.crop_bank(n, size=model.resolution, seed=TRAIN_REAL_SEED)
    real_masks_n, real_rgb_n = defects.random_masks(data_lib.to_model_range(crops), 1,
                                                    TRAIN_REAL_SEED)
    real_train = (real_rgb_n, real_masks_n)
    train_sets.update({f'{n} real': real_train,
                       f'{n} real + copy-paste': _joined(real_train, copy_paste),
                       f'{n} real + synthetic': _joined(real_train, synthetic)})
  useful = usefulness(train_sets, (real_rgb, real_masks), args.seeds, recipe)
  shown = np.linspace(0, len(pairs) - 1, min(args.grid_rows, len(pairs))).round().astype(int)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  images_lib.save_image(str(out / 'grid.png'), defects.grid(
      stitch.normals[shown], stitch.target_masks[shown], stitch.images[shown]))
  payload = {'device': common.device_description(), 'pairs': len(pairs),
             'normals': len(normals), 'per_image': args.per_image, 'runs': runs,
             'reference': reference, 'usefulness': useful,
             'segmenter': dataclasses.asdict(recipe), 'real_train_crops': args.real,
             'real_test_crops': len(real_rgb),
             'goals': {'iou_median': IOU_GOAL, 'psnr_out_median_wplus': PSNR_GOAL}}
  common.write_json(str(out / 'defects.json'), payload)
  _report(payload)
  return payload


def _report(p: dict) -> None:
  print(f"\n{p['pairs']} pairs ({p['normals']} held-out crops x {p['per_image']} masks), "
        f"{p['device']}")
  common.print_table(p['runs'], ['run', 'steps', 'iou_median', 'iou>=0.8', 'psnr_out_median',
                                 'swd_patches_x1e3', 'd_logit', 's_per_pair'])
  r = p['reference']
  print(f"reference: D logit real defective {r['d_logit_real_defective']:.2f}, clean normals "
        f"{r['d_logit_clean_normals']:.2f}; SWD real vs real patches "
        f"{r['swd_patches_x1e3_real_vs_real']:.1f}")
  goals = p['goals']
  for row in p['runs']:
    if ', none' in row['run']:
      print(f"{'PASS' if row['iou_median'] >= goals['iou_median'] else 'FAIL'}: placement, "
            f"{row['run']}: median IoU {row['iou_median']:.3f} (goal >= {goals['iou_median']})")
  for row in p['runs']:
    if row['run'].startswith('wplus + noise'):
      ok = row['psnr_out_median'] >= goals['psnr_out_median_wplus']
      print(f"{'PASS' if ok else 'FAIL'}: faithfulness, {row['run']}: median PSNR outside "
            f"{row['psnr_out_median']:.2f} dB (goal >= {goals['psnr_out_median_wplus']})")
  for label, u in p['usefulness'].items():
    print(f"segmenter, {label} ({u['train_images']} crops): pixel AUROC {u['mean']:.4f} "
          f"+- {u['std']:.4f}")


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--checkpoint', default=None,
                      help='RGB + mask generator (default: embedded)')
  parser.add_argument('--out', default='out/bench/defects')
  parser.add_argument('--normals', type=int, default=16, help='held-out crops used as normals')
  parser.add_argument('--per-image', type=int, default=2, help='target masks per normal')
  parser.add_argument('--steps', type=int, default=0, help='optimisation steps (0: the config)')
  parser.add_argument('--real', type=int, nargs='+', default=[2, 8],
                      help="the segmenter's real training crops (one training set per count)")
  parser.add_argument('--seeds', type=int, default=3, help='segmenter trainings per set')
  parser.add_argument('--segmenter-steps', type=int, default=SegmenterRecipe.steps)
  parser.add_argument('--grid-rows', type=int, default=8)
  parser.add_argument('--quick', action='store_true',
                      help='W+ rows only, 4 normals, 150 steps, one segmenter seed')
  args = parser.parse_args(argv)
  if args.quick:
    args.normals = min(args.normals, 4)
    args.steps = args.steps or QUICK_STEPS
    args.seeds, args.segmenter_steps = 1, 200
  return run(args)


if __name__ == '__main__':
  main()
