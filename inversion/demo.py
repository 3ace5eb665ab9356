"""The demo: the README's main job. Inverts the held-out example crops with Z, W and W+ on
the embedded default model and writes a grid, a metrics table and loss curves.

    python -m inversion demo            # or: from inversion import demo; demo.demo('out/demo')
"""

from __future__ import annotations

import csv
import json
import logging
import os
import pathlib
from typing import Sequence

import numpy as np

from inversion import api
from inversion import images as images_lib
from inversion import report

log = logging.getLogger(__name__)

__all__ = ['DEMO_STEPS', 'EXAMPLES_DIR', 'demo']

# The demo's held-out crops: package data, so `pip install .` ships them (examples/ links here).
EXAMPLES_DIR = pathlib.Path(__file__).resolve().parent / 'examples'
DEMO_SPACES = ('z', 'w', 'wplus')
DEMO_STEPS = 600   # Image2StyleGAN uses 5000; 600 keeps Z + W + W+ of 6 images under 5 min
                   # on 2 CPU cores (about 65 ms per step for the batch of 6 at 64 px)
EXAMPLES_CLASS = 'clean'  # the committed examples are defect-free held-out crops
SPACE_LABELS = {'z': 'Z', 'w': 'W', 'wplus': 'W+'}


def demo(out_dir: str | os.PathLike = 'out/demo', generator=None, *, steps: int = DEMO_STEPS,
         examples: str | os.PathLike | Sequence[str] = EXAMPLES_DIR,
         spaces: Sequence[str] = DEMO_SPACES, overrides: Sequence[str] = (),
         progress: bool = True) -> dict:
  """Inverts the held-out example crops with Z, W and W+ (Image2StyleGAN presets, `steps`
  steps) and writes out_dir/: grid.png (target | Z | W | W+ per row), metrics.csv/json (MSE,
  PSNR, SSIM; LPIPS only where its weights exist), losses.png, and per method <space>/ (latents,
  reconstructions, per-method metrics).

  generator: a Model; None = the embedded default model (FileNotFoundError if it is missing).
    A conditional one with a 'clean' class inverts them as that class unless overrides set
    `--config.label`.
  Returns {'table': text table, 'rows': metric rows, 'results': {space: InversionResult}}.
  """
  if generator is None:
    from generators import checkpoint  # pylint: disable=import-outside-toplevel
    generator = checkpoint.load(None)
  out = report.prepare_out_dir(out_dir)
  targets, names = images_lib.load_images(examples, generator.resolution, generator.channels)
  results, rows = {}, []
  for space in spaces:
    cfg = api.as_config(f'image2stylegan:{space}', [f'--config.steps={int(steps)}', *overrides])
    if not cfg.label and EXAMPLES_CLASS in generator.class_names:
      if space == spaces[0]:
        log.info('Conditional generator: inverting the examples as class %r (set '
                 '--config.label for another).', EXAMPLES_CLASS)
      cfg.label = EXAMPLES_CLASS
    res = api.invert(targets, generator, cfg, names=names, out_dir=out / space, progress=progress)
    results[space] = res
    for r in res.metric_rows():
      rows.append({'method': SPACE_LABELS.get(space, space), **r})
  # 1. grid: target | Z | W | W+
  cells = []
  for i in range(len(names)):
    cells.append(targets[i])
    cells += [np.nan_to_num(results[s].reconstructions[i]) for s in spaces]
  mask_mode = report.grid_mask_mode(results[spaces[0]].loss_channels, generator.channels)
  images_lib.save_image(str(out / 'grid.png'),
                        images_lib.image_grid(cells, rows=len(names), mask=mask_mode))
  # 2. metrics: per image and method, then means per method
  metric_cols = [c for c in ('mse', 'psnr', 'ssim', 'lpips') if any(c in r for r in rows)]
  means = []
  for space in spaces:
    label = SPACE_LABELS.get(space, space)
    mine = [r for r in rows if r['method'] == label]
    means.append({'method': label, 'name': 'mean',
                  **{c: float(np.nanmean([r[c] for r in mine])) for c in metric_cols}})
  columns = ['method', 'name'] + metric_cols + ['status']
  with open(out / 'metrics.csv', 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=columns, extrasaction='ignore')
    w.writeheader()
    for r in rows + means:
      w.writerow({k: (f'{r[k]:.6g}' if isinstance(r.get(k), float) else r.get(k, ''))
                  for k in columns})
  (out / 'metrics.json').write_text(json.dumps(
      {'images': rows, 'means': means, 'steps': int(steps), 'names': names,
       'generator_id': results[spaces[0]].generator_id,
       'note': 'MSE/PSNR (data range 2)/SSIM on RGB; LPIPS only where its weights exist'},
      indent=2, default=float))
  # 3. loss curves: total loss per method
  report.plot_losses(out / 'losses.png',
              {SPACE_LABELS.get(s, s): results[s].losses['total'] for s in spaces}, names,
              f'total loss, {int(steps)} steps')
  table = report.format_table(rows + means, ['method', 'name'] + metric_cols)
  return {'table': table, 'rows': rows + means, 'results': results, 'out_dir': out}
