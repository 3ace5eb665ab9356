"""What an inversion leaves on disk for people: image grids, metrics tables, loss plots.

`save_result` writes a whole `api.invert` result (the output layout is in `inversion.api`'s
docstring); folder jobs (`inversion.jobs`) and the demo (`inversion.demo`) reuse the pieces.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import pathlib
import socket
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import numpy as np

from inversion import images as images_lib
from inversion import latents as latents_lib

if TYPE_CHECKING:
  from inversion import api

log = logging.getLogger(__name__)

__all__ = [
    'MAX_GRID_ROWS',
    'format_table',
    'grid_mask_mode',
    'grid_rows',
    'plot_losses',
    'prepare_out_dir',
    'save_result',
    'write_metrics',
]

MAX_GRID_ROWS = 32   # grid.png shows the first images only


def prepare_out_dir(out_dir: str | os.PathLike) -> pathlib.Path:
  """Creates the output folder (and its parents) and checks it can be written, before any work
  is done; a ValueError names the folder and the fix otherwise."""
  out = pathlib.Path(out_dir)
  if out.exists() and not out.is_dir():
    raise ValueError(f'output folder {out} is an existing file, not a folder; pass a folder '
                     'path (--out), e.g. a new one')
  try:
    out.mkdir(parents=True, exist_ok=True)
    probe = out / f'.write_test.{socket.gethostname()}.{os.getpid()}'  # one per process
    probe.write_bytes(b'')
    probe.unlink()
  except OSError as e:
    raise ValueError(f'cannot write to the output folder {out} ({e.strerror or e}); pass a '
                     'folder you can write to (--out), or fix its permissions') from None
  return out


def grid_mask_mode(loss_channels: int, channels: int) -> str:
  """RGB + mask images: overlay the mask only when the loss saw it (else it is unconstrained)."""
  return 'drop' if 0 < loss_channels < channels else 'overlay'


def grid_rows(targets, recons, mask: str = 'overlay') -> np.ndarray:
  pairs = []
  for t, r in zip(targets, recons):
    pairs += [np.nan_to_num(t, nan=0.0), np.nan_to_num(r, nan=0.0)]
  return images_lib.image_grid(pairs, rows=len(targets), mask=mask)


def write_metrics(out_dir: pathlib.Path, rows: list[dict], extra: Mapping[str, Any]) -> None:
  keys = ['name'] + sorted({k for r in rows for k in r} - {'name', 'status'}) + ['status']
  with open(out_dir / 'metrics.csv', 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=keys)
    w.writeheader()
    for r in rows:
      w.writerow({k: (f'{r[k]:.6g}' if isinstance(r.get(k), float) else r.get(k, ''))
                  for k in keys})
  ok = [r for r in rows if r.get('status', 'ok') == 'ok']
  numeric = [k for k in keys if k not in ('name', 'status') and all(
      isinstance(r[k], (int, float, np.number)) for r in ok if k in r)]
  means = {k: float(np.nanmean([r[k] for r in ok if k in r])) if ok else float('nan')
           for k in numeric}
  doc = {'images': rows, 'mean_over_ok_images': means, **extra}
  (out_dir / 'metrics.json').write_text(json.dumps(doc, indent=2, default=float))


def plot_losses(path: str | os.PathLike, curves: Mapping[str, np.ndarray],
                labels: Optional[Sequence[str]] = None, title: str = '') -> Optional[str]:
  """Loss curves {term: [N, steps]} -> PNG, one panel per term (log y); returns the path, or
  None (with a log line) when there are no curves: an encoder's one pass has no steps."""
  if not curves:
    log.info('%s: not drawn, no loss curves (a method without optimisation steps)', path)
    return None
  # A bare Figure (Agg canvas): no pyplot state or GUI backend, and 0.3 s less to import.
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel  (slow import)
  terms = list(curves)
  fig = Figure(figsize=(4 * len(terms), 3.2), layout='constrained')
  axes = fig.subplots(1, len(terms), squeeze=False)
  for ax, term in zip(axes[0], terms):
    c = np.atleast_2d(np.asarray(curves[term], np.float64))
    for i, row in enumerate(c):
      label = labels[i] if labels is not None and len(c) <= 10 else None
      ax.plot(np.arange(1, len(row) + 1), row, lw=1, label=label)
    ax.set_title(term)
    ax.set_xlabel('step')
    pos = c[np.isfinite(c) & (c > 0)]
    if pos.size and np.all(c[np.isfinite(c)] > 0):
      ax.set_yscale('log')
    if labels is not None and len(c) <= 10 and term == terms[0]:
      ax.legend(fontsize=7)
  if title:
    fig.suptitle(title)
  path = os.fspath(path)
  fig.savefig(path, dpi=90)
  return path


def save_result(result: 'api.InversionResult', out_dir: str | os.PathLike,
                generator) -> pathlib.Path:
  """Writes every output of an `invert` result to out_dir (layout: `api` docstring)."""
  out = prepare_out_dir(out_dir)
  for i, name in enumerate(result.names):
    images_lib.save_image(str(out / 'reconstructions' / f'{name}.png'),
                          np.nan_to_num(result.reconstructions[i]))
    latents_lib.save_latents(out / 'latents' / f'{name}.npz', result, i, generator)
  mask_mode = grid_mask_mode(result.loss_channels, result.targets.shape[-1])
  images_lib.save_image(str(out / 'grid.png'),
                        grid_rows(result.targets[:MAX_GRID_ROWS],
                                   result.reconstructions[:MAX_GRID_ROWS], mask_mode))
  write_metrics(out, result.metric_rows(),
                 {'generator_id': result.generator_id, 'space': result.space,
                  'steps': result.steps, 'config': json.loads(result.config_json or '{}')})
  plot_losses(out / 'losses.png', result.losses, result.names,
              f'{result.space}, {result.steps} steps')
  return out


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
  """Rows of dicts -> a fixed-width text table (floats with 4 significant digits)."""
  cells = [[f'{r[c]:.4g}' if isinstance(r.get(c), float) else str(r.get(c, '')) for c in columns]
           for r in rows]
  widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
  line = lambda vals: '  '.join(v.ljust(w) for v, w in zip(vals, widths))
  return '\n'.join([line(columns), line(['-' * w for w in widths])] + [line(r) for r in cells])
