"""Write generators/embedded/MODEL_CARD.md from an evaluation JSON (benchmarks.embedded_model).

    python -m benchmarks.embedded_model --workdir runs/embedded --out out/bench/embedded_model.json
    python -m benchmarks.model_card out/bench/embedded_model.json
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sys

from generators import checkpoint

CARD = checkpoint.EMBEDDED_DIR / "MODEL_CARD.md"


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) != 1:
    raise SystemExit("usage: python -m benchmarks.model_card EVAL_JSON")
  evaluation = json.loads(pathlib.Path(argv[0]).read_text())
  meta = evaluation["metadata"]
  cfg = meta["train_config"]
  samples = pathlib.Path(argv[0]).with_suffix(".png")
  shutil.copy(samples, checkpoint.EMBEDDED_DIR / "samples.png")
  rows = "\n".join(
      f"| {r['pair']} | " + " | ".join(f"{r[k]:.1f}" for k in r if k != "pair") + " |"
      for r in evaluation["rows"])
  levels = [k for k in evaluation["rows"][0] if k != "pair"]
  card = f"""# Embedded model card

A 64x64 StyleGAN2 (`skip` generator, `resnet` discriminator) with 4 output channels: RGB and a
defect-mask channel (-1 = no defect, +1 = defect). Trained by `generators/train.py` with
`configs/embedded.py` on this repository's own data, so every command works offline.

![samples](samples.png)

## Data
Random 64x64 crops (with flips and 90-degree rotations) of the training regions of three CC0
texture photographs bundled in scikit-image (`brick`, `grass`, `gravel`; grayscale, R = G = B),
{cfg['data']['num_crops']} crops drawn once from seed {cfg['seed']};
{cfg['data']['defect_fraction']:.0%} of them carry one procedural defect (scratch, crack, hole or
stain, `generators/defects.py`) whose binary mask is the 4th channel. The right-most quarter of
every photo is held out: training never sees it; evaluation and `examples/` come from it.

## Recipe
StyleGAN2-ADA's loss without ADA: non-saturating logistic loss, lazy R1 (gamma
{cfg['r1_gamma']}, every {cfg['r1_interval']} steps), style mixing {cfg['style_mixing_prob']},
G EMA (half-life {cfg['ema_kimg']} kimg, ramp-up {cfg['ema_rampup']}), Adam (lr {cfg['g_lr']},
betas 0/0.99), batch {cfg['batch_size']}. z = w = {cfg['model']['z_dim']},
{cfg['model']['mapping_layers']} mapping layers, channel_base {cfg['model']['channel_base']},
channel_max {cfg['model']['channel_max']}, conv_clamp {cfg['model']['conv_clamp']}.
Trained for **{meta['training_steps']} steps ({meta['kimg']:.1f} kimg)** of a planned
{cfg['total_kimg']} kimg on 2 CPU cores; `python -m generators train --config embedded
--workdir runs/embedded` resumes it.

## Evaluation
Sliced Wasserstein distance (x1e3, ProGAN's Laplacian-pyramid patches, RGB channels) on
{evaluation['num']} images per set, {evaluation['device']}:

| pair | {' | '.join(levels)} |
|---|{'---|' * len(levels)}
{rows}

Defect-mask pixels: {evaluation['mask_fraction_generated']:.4f} of generated pixels vs
{evaluation['mask_fraction_training']:.4f} in the training set.

Reproduce: `python -m benchmarks.embedded_model --workdir runs/embedded` then
`python -m benchmarks.model_card out/bench/embedded_model.json`.
"""
  CARD.write_text(card)
  print(f"wrote {CARD}")


if __name__ == "__main__":
  main()
