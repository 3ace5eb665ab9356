"""The machinery every trainer here shares: G (`generators/train.py`), the domain-guided encoder
(`inversion/encoders/train.py`) and later ones.

A training run lives in one workdir:

  config.json     the run's config; a rerun with the same config resumes, another is refused
  checkpoints/    orbax checkpoints, one folder per kept step (the whole state: resume is exact)
  metrics.jsonl   one JSON record per logged step (records after the restored step are dropped
                  on resume, so a kill between a record and its checkpoint logs nothing twice)
  samples/        periodic image grids

What a trainer adds is its state, its compiled steps and its data; the loop around them (mesh,
restore, records, progress, grids, checkpoints) is these functions.

Across processes (`generators.distributed`) every process runs the same loop on the global mesh:
it draws the same global batch and makes only its own rows (`place_rows`); orbax writes the
one checkpoint jointly; the main process alone writes config.json, records and grids
(`is_main`).
"""

from __future__ import annotations

import json
import logging
import math
import pathlib
from typing import Any, Callable, Mapping, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from PIL import Image

from generators import data
from generators.distributed import write_text_atomic

log = logging.getLogger(__name__)


def is_main() -> bool:
  """Whether this process writes what a run has one of (records, grids, config.json)."""
  return jax.process_index() == 0


def prepare_workdir(workdir: str | pathlib.Path, config: ml_collections.ConfigDict,
                    resumes: Callable[[dict], bool], may_change: Sequence[str]) -> pathlib.Path:
  """Creates `workdir` (and samples/) and writes config.json; a ValueError if it holds a run
  whose saved config `resumes` refuses (only `may_change` fields may differ)."""
  workdir = pathlib.Path(workdir)
  (workdir / "samples").mkdir(parents=True, exist_ok=True)
  config_path = workdir / "config.json"
  if config_path.exists() and not resumes(json.loads(config_path.read_text())):
    raise ValueError(f"{workdir} holds a run with a different config ({config_path}); use a new "
                     "--workdir or the same config to resume (only "
                     f"{', '.join(may_change)} may change).")
  if is_main():
    write_text_atomic(config_path, config.to_json(indent=2))
  return workdir


def data_mesh(batch_size: int) -> tuple[Mesh, NamedSharding, NamedSharding]:
  """(1-D mesh over all devices of every process, replicated sharding, batch-split sharding); the
  batch must divide over the devices."""
  devices = jax.devices()
  if batch_size % len(devices):
    raise ValueError(f"batch_size {batch_size} must divide over {len(devices)} devices.")
  mesh = Mesh(np.array(devices), ("data",))
  return mesh, NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))


def place_batch(batch, sharding: NamedSharding):
  """A host batch (an array, or a tuple of them / None), the same on every process, as global
  arrays split by `sharding`: each process puts only the rows its own devices hold."""
  if batch is None:
    return None
  if isinstance(batch, tuple):
    return tuple(place_batch(b, sharding) for b in batch)
  batch = np.asarray(batch)
  return place_rows(lambda indices: batch[indices], batch.shape, sharding)


def place_rows(rows: Callable[[np.ndarray], np.ndarray], shape: Sequence[int],
               sharding: NamedSharding) -> jax.Array:
  """A global batch of `shape`, split by `sharding`, of which this process makes only the rows
  its own devices hold: `rows(indices)` -> those rows (e.g. decodes only those images)."""
  everything = np.arange(shape[0])
  return jax.make_array_from_callback(
      tuple(shape), sharding, lambda index: rows(everything[index[0]])[(slice(None), *index[1:])])


def checkpoint_manager(workdir: pathlib.Path, config: ml_collections.ConfigDict):
  """Keeps the last `keep_checkpoints`, and every multiple of `keep_checkpoint_every` steps
  (snapshots to evaluate and export later) if it is set."""
  import orbax.checkpoint as ocp

  options = ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True,
                                         keep_period=config.get("keep_checkpoint_every") or None)
  return ocp.CheckpointManager(pathlib.Path(workdir).resolve() / "checkpoints", options=options)


def restore(manager, template: Any, step: int | None = None) -> Any:
  """The state saved at `step` (default: the latest), in `template`'s tree structure."""
  import orbax.checkpoint as ocp

  step = manager.latest_step() if step is None else step
  if jax.process_count() > 1:  # every process restores the whole (replicated) state
    template = jax.device_get(template)
  restored = manager.restore(step, args=ocp.args.StandardRestore(template))
  return type(template)(*restored) if isinstance(template, tuple) and not isinstance(
      restored, type(template)) else restored


def save(manager, step: int, state: Any) -> None:
  """Saves `state` at `step`; across processes, orbax writes the global arrays jointly."""
  import orbax.checkpoint as ocp

  to_host = jax.process_count() == 1
  manager.save(step, args=ocp.args.StandardSave(jax.device_get(state) if to_host else state))


def require_kept(workdir: pathlib.Path, kept: Sequence[int], steps: Sequence[int]) -> None:
  """Raises a ValueError naming the kept checkpoints if any of `steps` is not among them."""
  missing = [s for s in steps if s not in kept]
  if missing:
    raise ValueError(f"{workdir} keeps checkpoints at steps {sorted(kept)}, not "
                     f"{', '.join(map(str, missing))}; pick among those (a run keeps its last "
                     "`keep_checkpoints`, and every `keep_checkpoint_every`).")


def require_run(workdir: pathlib.Path, purpose: str, layout: str) -> None:
  """A FileNotFoundError naming `workdir` and what a training workdir holds (`layout`), unless
  it holds a run (its config.json)."""
  if not workdir.exists():
    raise FileNotFoundError(f"{workdir} does not exist, so there is no training run {purpose}; "
                            f"{layout}.")
  if not (workdir / "config.json").is_file():
    raise FileNotFoundError(f"{workdir} holds no training run (no config.json) {purpose}; "
                            f"{layout}.")


def drop_records_after(path: pathlib.Path, step: int) -> None:
  """Keeps the metrics records of steps <= `step` (and drops a line cut short by a kill)."""
  if not path.exists():
    return
  lines = path.read_text().splitlines()
  kept = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= step:
        kept.append(line)
    except (ValueError, KeyError, TypeError):
      log.warning("%s: dropping an unreadable line %r", path, line[:80])
  if len(kept) < len(lines):
    write_text_atomic(path, "".join(l + "\n" for l in kept))


class Records:
  """metrics.jsonl of a run restored at step `start`: later records (logged before a kill, and
  redone now) are dropped, then `write` appends one record per logged step (the main process
  writes; every process checks the values)."""

  def __init__(self, workdir: pathlib.Path, start: int):
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self._file = None
    if is_main():
      drop_records_after(self.path, start)
      self._file = open(self.path, "a")

  def write(self, record: Mapping[str, Any], may_be_nan: Sequence[str] = ()) -> None:
    """Appends `record` (it has 'step'); a FloatingPointError if a value is not finite (NaN
    allowed for the keys `may_be_nan`: values not measured since the restart)."""
    bad = {k: v for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)
           and not (k in may_be_nan and math.isnan(v))}
    if bad:
      raise FloatingPointError(f"Non-finite loss at step {record['step']}: {bad} (record: "
                               f"{dict(record)}). Resume from the last checkpoint with a lower "
                               "learning rate or a stronger regulariser.")
    if self._file is not None:
      self._file.write(json.dumps(dict(record)) + "\n")
      self._file.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()


def due(done: int, every: int, total: int) -> bool:
  """Whether a periodic action (record, grid, checkpoint) runs after step `done`."""
  return done % every == 0 or done == total


def grid_due(done: int, every: int, total: int) -> bool:
  """Whether this process draws the sample grid after step `done` (the main process does)."""
  return due(done, every, total) and is_main()


def finish(manager, progress_bar, records: Records) -> None:
  """The end of a run: the last checkpoint written, the bar and the records closed."""
  manager.wait_until_finished()
  progress_bar.close()
  records.close()


def read_records(workdir: pathlib.Path) -> list[dict]:
  path = pathlib.Path(workdir) / "metrics.jsonl"
  return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


def plot_records(workdir: pathlib.Path, path: pathlib.Path, keys: Sequence[str],
                 marks: Sequence[tuple[float, str, str]] = (), x: str = "kimg",
                 log_y: bool = False) -> pathlib.Path:
  """The run's logged `keys` against `x`, one panel each; `marks` are vertical lines (at,
  line style, label) on every panel."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel  (slow import)

  records = read_records(workdir)
  fig = Figure(figsize=(min(4 * len(keys), 16), 3.2), layout="constrained")
  for ax, key in zip(fig.subplots(1, len(keys), squeeze=False)[0], keys):
    rows = [r for r in records if key in r]
    ax.plot([r[x] for r in rows], [r[key] for r in rows], lw=1)
    for at, linestyle, label in marks:
      ax.axvline(at, color="k" if linestyle == ":" else "grey", linestyle=linestyle, label=label)
    if log_y and rows and all(r[key] > 0 for r in rows):
      ax.set_yscale("log")
    ax.set_title(key)
    ax.set_xlabel(x)
    if marks:
      ax.legend(fontsize=7)
  fig.suptitle(f"training {pathlib.Path(workdir).name}")
  fig.savefig(path, dpi=100)
  return pathlib.Path(path)


def grid_png(images: np.ndarray, path: pathlib.Path, columns: int | None = None) -> None:
  """Save [N, H, W, C] images in [-1, 1] as a grid, row-major, square unless `columns` is
  given; a mask channel goes to a 2nd grid."""
  n, h, w, c = images.shape
  columns = columns or int(math.ceil(math.sqrt(n)))
  rows = int(math.ceil(n / columns))
  rgb = data.to_uint8(images[..., :3] if c >= 3 else np.repeat(images[..., :1], 3, -1))
  tiles = [rgb]
  if c == 4:
    tiles.append(np.repeat(data.to_uint8(images[..., 3:]), 3, -1))
  canvases = []
  for t in tiles:
    canvas = np.zeros((rows * h, columns * w, 3), np.uint8)
    for i in range(n):
      canvas[(i // columns) * h:(i // columns + 1) * h,
             (i % columns) * w:(i % columns + 1) * w] = t[i]
    canvases.append(canvas)
  Image.fromarray(np.concatenate(canvases, axis=1)).save(path)
