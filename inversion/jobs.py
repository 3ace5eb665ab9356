"""Folder jobs: invert every image of a folder in batches, resumable after a kill.

    from inversion import jobs
    done = jobs.invert_folder('photos/', model, 'projector', 'out/run', batch_size=8)

The job's outputs are those of `api.invert` (layout in `inversion.api`'s docstring), one latents
file per image, plus `_work/state.npz`: the running batch's engine state, saved every
`config.checkpoint_every` chunks, from which rerunning the same command resumes.

Across processes (`generators.distributed`): process I of N inverts image k of the sorted job
where k mod N = I, on its own local devices; its running batch's state is
`_work/state.p<I>of<N>.npz` and the unreadable images of its share are listed in
`_work/unreadable.p<I>of<N>.json`. With JAX's runtime up, the processes meet when their shares
are done and process 0 writes metrics.csv / grid.png / losses.png; without it (a process rerun
alone), the process that finds every image of the job finished writes them. Rerunning the
command when all are done rewrites them (the same files from the same latents).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
from typing import Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from generators import distributed
from inversion import api
from inversion import engine as eng
from inversion import images as images_lib
from inversion import latents as latents_lib
from inversion import report

log = logging.getLogger(__name__)

__all__ = ['FolderResult', 'invert_folder']


@dataclasses.dataclass
class FolderResult:
  """What `invert_folder` did."""
  out_dir: pathlib.Path
  names: list[str]                 # every image of the job, in order
  inverted: list[str]              # inverted in this call
  skipped: list[str]               # already done before this call (latents file present)
  failed: dict[str, str]           # name -> status, for images stopped by a non-finite loss
  rows: list[dict]                 # metrics rows of every finished image, then of the unreadable
  unreadable: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> why, left
                                   # out with skip_bad=True
  merged: bool = True              # metrics.csv / grid.png written (across processes: only
                                   # once every process's share is finished)
  process: distributed.Process = distributed.Process()


def _flatten(tree) -> dict[str, np.ndarray]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(p): np.asarray(jax.device_get(v)) for p, v in leaves}


def _unflatten(template, arrays: Mapping[str, np.ndarray], what: str):
  leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
  out = []
  for p, v in leaves:
    k = jax.tree_util.keystr(p)
    if k not in arrays or arrays[k].shape != np.shape(v):
      raise ValueError(f'{what}: entry {k} missing or of the wrong shape')
    out.append(jnp.asarray(arrays[k], dtype=np.asarray(v).dtype))
  return jax.tree_util.tree_unflatten(treedef, out)


def _save_checkpoint(path: pathlib.Path, info: eng.ChunkInfo, meta: dict) -> None:
  arrays = {f'state{k}': v for k, v in _flatten(info.state).items()}
  arrays.update({f'curve/{k}': v for k, v in info.curves.items()})
  arrays['meta_json'] = np.asarray(json.dumps({**meta, 'next_chunk': info.chunk + 1}))
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + '.tmp.npz')
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def _load_checkpoint(path: pathlib.Path):
  try:
    with np.load(path, allow_pickle=False) as z:
      d = {k: z[k] for k in z.files}
    meta = json.loads(str(d.pop('meta_json')))
  except Exception as e:  # a checkpoint cut short by a kill during writing, etc.
    log.warning('ignoring unreadable checkpoint %s (%s: %s); the batch restarts', path,
                type(e).__name__, e)
    return None
  if 'names' not in meta:
    log.warning('ignoring %s: written by an older version (no image names); the batch restarts',
                path)
    return None
  state = {k[5:]: v for k, v in d.items() if k.startswith('state')}
  curves = {k[6:]: v for k, v in d.items() if k.startswith('curve/')}
  return meta, state, curves


def invert_folder(dir_or_files, generator, config, out_dir, batch_size: int = 8, *,
                  mask=None, key=None, checkpoint_every: Optional[int] = None,
                  progress: bool = True,
                  callback: Optional[Callable[[eng.ChunkInfo], None]] = None,
                  latent_terms=None, term_params=None, devices=None,
                  align: Optional[Callable[[np.ndarray, str], np.ndarray]] = None,
                  init: Optional[str | os.PathLike] = None,
                  skip_bad: bool = False, encoder=None,
                  process: Optional[distributed.Process] = None) -> FolderResult:
  """Inverts every image of a folder (or a list of files) in batches; resumable.

  - Images whose latents file exists in out_dir/latents are skipped (it must belong to this
    generator, else a LatentsError says so).
  - Every other image is decoded before the first step: unreadable files (missing, empty,
    corrupt, unsupported) are all listed in one ImageError, or, with `skip_bad`, left out with a
    warning and listed in metrics.csv with status 'skipped: <why>'.
  - The running batch's state (latents, optimiser state, keys, loss curves) is written to
    out_dir/_work/state.npz every `checkpoint_every` chunks (default config.checkpoint_every),
    and after its last chunk, so a killed job loses at most that many chunks (none while the
    batch's outputs are being written); rerunning the same command resumes it and gives the
    result an uninterrupted run gives.
  - An image whose loss becomes non-finite stops at its last finite latent; it is saved with its
    status, reported in the result and metrics, and the others continue.
  - The last batch is padded (repeating its last image) so every batch compiles the same
    program. A job of fewer images than `batch_size` runs them as one batch of that many.

  Args:
    dir_or_files: folder (non-image files are skipped with a log line), file, or list of files.
    generator, config: as `invert`.
    out_dir: output folder (see the module docstring).
    batch_size: images per compiled batch.
    mask: optional mask for every image: a file (white = pixel counts) or an array as `invert`.
    key: PRNG key; image k of the job uses fold_in(key, k). None = PRNGKey(config.seed).
    callback: after every chunk (after the checkpoint), with an `engine.ChunkInfo`.
    align: optional image pre-processing, as `inversion.images.load_image` (e.g. an
      `inversion.align.FaceAligner` for FFHQ models).
    init: a folder of latents files named `<image name>.npz` (another job's `latents/`, an
      encoder's output) to start from instead of `config.init`; each must belong to this
      generator. A latents file of another space starts from its ws where that fits.
    skip_bad: go on without the images that cannot be read (see above).
    encoder: the encoder of configs/idinvert.py methods (default: config.encoder.path, else the
      embedded model's; `inversion.encoders`).
    process: this process's place in a job run by several (default:
      `generators.distributed.current()`): it inverts its share only (module docstring).
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  out = report.prepare_out_dir(out_dir)
  one_pass = api.is_sfe(config)  # an encoder pipeline: no steps, no state
  if one_pass and (mask is not None or init is not None):
    raise ValueError('SFE inverts in one forward pass: --mask and --init do not apply to it '
                     '(run an optimisation method for those)')
  if one_pass:
    from inversion import sfe  # pylint: disable=import-outside-toplevel
    inv = sfe.FolderInverter(generator, encoder, api.as_config(config))
  else:
    inv = api.Inverter(generator, config, latent_terms=latent_terms, term_params=term_params,
                       encoder=encoder)
  every = 1 if one_pass else int(checkpoint_every or inv.config.checkpoint_every)
  res, ch = generator.resolution, generator.channels
  paths = images_lib.list_images(dir_or_files)
  names = images_lib._unique_names(paths)  # pylint: disable=protected-access
  if isinstance(mask, (str, os.PathLike)):
    mask = api.load_mask(mask, res)
  base_key = jax.random.PRNGKey(inv.config.seed) if key is None else key
  process = distributed.current() if process is None else process
  mine = process.share(range(len(names)))
  lat_dir, work = out / 'latents', out / '_work' / f'state{process.suffix}.npz'
  skipped = []
  for i in mine:
    f = lat_dir / f'{names[i]}.npz'
    if f.exists():
      latents_lib.load_latents(f, inv.generator_id)
      skipped.append(names[i])
  done = set(skipped)
  todo = [i for i in mine if names[i] not in done]
  unreadable = _unreadable(paths, names, todo, skip_bad)
  if process.count > 1:  # for the merge, which may run in another process
    (out / '_work').mkdir(exist_ok=True)
    distributed.write_text_atomic(out / '_work' / f'unreadable{process.suffix}.json',
                                  json.dumps(unreadable))
  todo = [i for i in todo if names[i] not in unreadable]
  batch_size = max(1, min(batch_size, len(mine) - len(unreadable)))  # one image: a batch of
                                                                     # one, not of padding
  if process.count > 1:
    log.info('%s: %d of the job\'s %d images are this process\'s, %d of them to invert.',
             process.describe(), len(mine), len(names), len(todo))
  if init is not None and not pathlib.Path(init).is_dir():
    raise FileNotFoundError(f'--init {init}: not a folder. It takes a folder of latents files '
                            "named like the images (e.g. another job's <out>/latents).")
  meta_base = {'generator_id': inv.generator_id, 'config': inv.config.to_json(),
               'batch_size': batch_size,
               'init': None if init is None else str(pathlib.Path(init).resolve())}
  batches, resume = plan_batches(todo, names, work, meta_base, batch_size)
  starts = None if init is None else _init_records(init, names, todo)  # all checked up front
  inverted, failed = [], {}
  for bi, idx in enumerate(batches):
    padded = idx + [idx[-1]] * (batch_size - len(idx))
    targets = []
    for i in padded:
      try:
        targets.append(images_lib.load_image(paths[i], res, ch, align=align))
      except images_lib.ImageError as e:  # decoded before, so an aligner's or a mask's error
        raise images_lib.ImageError(
            f'{e}\nFix or remove {paths[i]} and rerun the same command: finished images are '
            'kept and skipped.') from None
    targets = np.stack(targets)
    if one_pass:
      result = _take(inv.invert(targets, [names[i] for i in padded], devices), len(idx))
      inverted += _save_batch(result, done, out, generator, failed)
      continue
    masks = api.check_mask(mask, batch_size, res)
    keys = api.image_keys(base_key, batch_size, padded)
    resumed = bi == 0 and resume is not None  # its start latents come from the checkpoint
    state, data = inv.start(targets, masks, keys, init=None if starts is None or resumed else
                            [starts[names[i]] for i in padded])
    state, curves, data = run_batch(
        inv, state, data, work, {**meta_base, 'names': [names[i] for i in idx]},
        resume if resumed else None, every, devices=devices, progress=progress,
        callback=callback, names=[names[i] for i in padded], desc=f'batch {bi + 1}/{len(batches)}')
    result = _take(inv.result(state, curves, data, [names[i] for i in padded]), len(idx))
    inverted += _save_batch(result, done, out, generator, failed)
    if work.exists():
      work.unlink()
  for name, status in failed.items():
    log.warning('%s: %s', name, status)
  distributed.barrier('inversion.jobs: every share finished')  # with the runtime: main merges
  job_unreadable = (_job_unreadable(out, names, unreadable, process) if process.count > 1 else
                    unreadable)
  pending = [n for n in names if n not in job_unreadable and not (lat_dir / f'{n}.npz').exists()]
  merges = not pending and (process.main or not process.runtime)
  rows = _summarise(out, paths, names, inv, generator, align, job_unreadable) if merges else []
  distributed.barrier('inversion.jobs: merged')  # none leaves (and shuts down) before it
  if not merges:
    log.info('%s finished its share; %s', process.describe(),
             'process 0 wrote metrics.csv and grid.png' if not pending else
             f'{len(pending)} image(s) of other processes are not finished yet, so metrics.csv '
             'and grid.png wait: the last process to finish writes them (or rerun this command '
             'once all are done)')
  return FolderResult(out, names, inverted, skipped, failed, rows, unreadable, merges, process)


def _job_unreadable(out: pathlib.Path, names: Sequence[str], mine: Mapping[str, str],
                    process: distributed.Process) -> dict[str, str]:
  """The unreadable images of every share of this N-process job (their
  `_work/unreadable.p*of<N>.json`; this process's as just found), less those inverted since."""
  found = {}
  for f in sorted((out / '_work').glob(f'unreadable.p*of{process.count}.json')):
    found.update(json.loads(f.read_text()))
  found.update(mine)
  job = set(names)
  return {n: why for n, why in found.items()
          if n in job and not (out / 'latents' / f'{n}.npz').exists()}


def _save_batch(result: api.InversionResult, done: set, out: pathlib.Path, generator,
                failed: dict) -> list[str]:
  """Writes a finished batch's reconstructions and latents (images saved before a kill are
  left as they are), notes failures in `failed`; returns the names it wrote."""
  wrote = []
  for i, name in enumerate(result.names):
    if name in done:  # saved before a kill interrupted this batch's saving
      continue
    images_lib.save_image(str(out / 'reconstructions' / f'{name}.png'),
                          np.nan_to_num(result.reconstructions[i]))
    latents_lib.save_latents(out / 'latents' / f'{name}.npz', result, i, generator)
    if result.failed[i]:
      failed[name] = result.status(i)
    wrote.append(name)
  return wrote


def plan_batches(todo: Sequence[int], names: Sequence[str], work: pathlib.Path, meta_base: dict,
                 batch_size: int) -> tuple[list[list[int]], Optional[tuple]]:
  """The batches of a folder job (indices into names) and the checkpoint to resume the first
  one from (None: start afresh). A checkpoint of other settings is an error; one whose images
  left the job is ignored, with a log line."""
  resume = _load_checkpoint(work) if work.exists() else None
  batches = [list(todo[s:s + batch_size]) for s in range(0, len(todo), batch_size)]
  if resume is None:
    return batches, None
  meta = resume[0]
  if any(meta.get(k) != v for k, v in meta_base.items()):
    raise ValueError(f'{work} is the checkpoint of a job with another generator, config, '
                     f'batch size or --init. Rerun with the same settings to resume it, or '
                     f'delete {work} to start this batch afresh.')
  # The batch's images by name (the folder may have changed); some may be saved already if
  # the job was killed while writing the batch's outputs.
  saved_names = meta['names']
  if not set(saved_names) <= set(names):
    log.warning('ignoring %s: its images are no longer all in this job', work)
    return batches, None
  first = [list(names).index(n) for n in saved_names]
  rest = [i for i in todo if i not in first]
  return [first] + [rest[s:s + batch_size] for s in range(0, len(rest), batch_size)], resume


def run_batch(inv: api.Inverter, state: eng.EngineState, data: eng.Data, work: pathlib.Path,
              meta: dict, resume: Optional[tuple], every: int, *, devices=None,
              progress: bool = True, callback: Optional[Callable[[eng.ChunkInfo], None]] = None,
              names: Sequence[str] = (), desc: str = 'batch'):
  """Runs one batch of a folder job from its start state (or from `resume`, a checkpoint of
  the same batch), writing `work` every `every` chunks and after the last; returns
  (state, curves, data) for `Inverter.result`."""
  start_chunk, curves = 0, None
  if resume is not None:
    saved, arrays, curves = resume
    state = _unflatten(state, arrays, str(work))
    start_chunk = saved['next_chunk']
    log.info('resuming %d images from %s at chunk %d', len(saved['names']), work, start_chunk)
  state, data = eng.shard(state, data, eng.batch_mesh(state.step.shape[0], devices))

  def on_chunk(info):  # the last chunk too: a kill while saving loses nothing
    if (info.chunk + 1) % every == 0 or info.chunk + 1 == info.num_chunks:
      _save_checkpoint(work, info, meta)
    if callback is not None:
      callback(info)

  state, curves = eng.run(inv.engine, state, data, start_chunk=start_chunk, curves=curves,
                          progress=progress, on_chunk=on_chunk, names=list(names), desc=desc)
  return state, curves, data


def _unreadable(paths: Sequence[str], names: Sequence[str], todo: Sequence[int],
                skip_bad: bool) -> dict[str, str]:
  """{name: why} of the images to invert that cannot be decoded; raises listing them all unless
  skip_bad."""
  bad = images_lib.check_images([paths[i] for i in todo])
  if not bad:
    return {}
  listing = '\n'.join(f'  {why}' for why in bad.values())
  if not skip_bad:
    raise images_lib.ImageError(
        f'{len(bad)} of the {len(todo)} images to invert cannot be read:\n{listing}\nFix or '
        'remove them and rerun (finished images are kept and skipped), or pass --skip-bad '
        '(skip_bad=True) to invert the others and list these in metrics.csv as skipped.')
  log.warning('skipping %d unreadable image(s) (--skip-bad; listed in metrics.csv):\n%s',
              len(bad), listing)
  by_path = dict(zip(paths, names))
  return {by_path[p]: why for p, why in bad.items()}


def _init_records(init_dir, names: Sequence[str],
                  indices: Sequence[int]) -> dict[str, latents_lib.LatentRecord]:
  """The start latents of a folder job's images: {name: `init_dir/<name>.npz`}, each read and
  checked (format, finite values) before any work."""
  records = {}
  for i in indices:
    f = pathlib.Path(init_dir) / f'{names[i]}.npz'
    if not f.is_file():
      raise FileNotFoundError(f'{f} does not exist: --init needs a latents file for every image '
                              f'(named like the image, {names[i]}.npz). Invert {names[i]} first, '
                              'or leave --init out to start it from config.init.')
    records[names[i]] = latents_lib.load_latents(f)
  return records


def _take(result: api.InversionResult, n: int) -> api.InversionResult:
  """The first n images of a result (drops the padding)."""
  cut = lambda v: v[:n]
  return dataclasses.replace(
      result, names=result.names[:n], latents=cut(result.latents), ws=cut(result.ws),
      noise={k: cut(v) for k, v in result.noise.items()},
      reconstructions=cut(result.reconstructions), targets=cut(result.targets),
      losses={k: cut(v) for k, v in result.losses.items()},
      metrics={k: cut(v) for k, v in result.metrics.items()}, failed=cut(result.failed),
      failed_step=cut(result.failed_step),
      features=None if result.features is None else cut(result.features),
      encoder_ws=None if result.encoder_ws is None else cut(result.encoder_ws))


def _summarise(out: pathlib.Path, paths, names, inv: api.Inverter, generator, align=None,
               unreadable: Optional[Mapping[str, str]] = None) -> list[dict]:
  """metrics.csv/json, grid.png and losses.png over every finished image of a folder job;
  unreadable images (left out by skip_bad) are rows with status 'skipped: <why>'."""
  rows, curves, grid_t, grid_r, labels = [], {}, [], [], []
  res, ch = generator.resolution, generator.channels
  for p, n in zip(paths, names):
    f = out / 'latents' / f'{n}.npz'
    if not f.exists():
      continue
    rec = latents_lib.load_latents(f)
    rows.append({'name': n, **rec.metrics, 'status': rec.status})
    for k, v in rec.losses.items():
      curves.setdefault(k, []).append(v)
    labels.append(n)
    if len(grid_t) < report.MAX_GRID_ROWS:
      grid_t.append(images_lib.load_image(p, res, ch, align=align))
      r = images_lib.load_image(str(out / 'reconstructions' / f'{n}.png'), res, 3)
      if ch == 4:
        m = out / 'reconstructions' / f'{n}_mask.png'
        r = np.concatenate([r, api.load_mask(m, res) * 2 - 1 if m.exists() else
                            -np.ones_like(r[..., :1])], -1)
      elif ch == 1:
        r = r[..., :1]
      grid_r.append(r)
  rows += [{'name': n, 'status': f'skipped: {why}'} for n, why in (unreadable or {}).items()]
  if not rows:
    return rows
  report.write_metrics(out, rows, {'generator_id': inv.generator_id, 'space': inv.spec.space,
                                   'steps': inv.spec.num_steps, 'config': inv.config.to_dict()})
  if not grid_t:  # every image was unreadable
    return rows
  images_lib.save_image(str(out / 'grid.png'), report.grid_rows(
      np.stack(grid_t), np.stack(grid_r), report.grid_mask_mode(inv.spec.loss_channels, ch)))
  lengths = {len(c) for v in curves.values() for c in v}
  if len(lengths) == 1:
    report.plot_losses(out / 'losses.png', {k: np.stack(v) for k, v in curves.items()}, labels,
                       f'{inv.spec.space}, {inv.spec.num_steps} steps')
  else:
    log.info('%s: not drawn, the finished images ran different numbers of steps %s (earlier '
             'runs with other settings); their curves are in the latents files',
             out / 'losses.png', sorted(lengths))
  return rows
