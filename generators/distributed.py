"""Several processes, one job: JAX's multi-controller runtime (`jax.distributed`) for the long
jobs, and which part of a job is whose.

Two kinds of job cross processes in two ways:

- Folder inversion (`python -m inversion invert`) is embarrassingly parallel. Image k of the
  job's sorted list belongs to process k mod N (`Process.share`). Each process inverts its share
  on its own local devices, with no traffic between processes. It writes only its own images and
  its own resumable state (`_work/state.p<I>of<N>.npz`). The runtime is needed only where the
  cluster needs it for identity or devices (a TPU pod). A process rerun alone with
  `--num-processes N --process-id I` and no coordinator finishes its share, and whichever
  process finds every image done writes the merged metrics.csv / grid.png.
- Training (G, the domain-guided encoder, SFE) is data-parallel over the global mesh of
  processes x devices (`generators.trainer.data_mesh`). Every process draws the same global
  batch from (seed, step) and makes only the rows its own devices take
  (`generators.trainer.place_rows`). Orbax writes the one checkpoint jointly, and the main
  process writes records and grids. Resume stays exact, since the state and the data stream are
  those of one process.

Turning it on: `--coordinator HOST:PORT --num-processes N --process-id I`, or `--distributed`
alone, where the launcher's environment (SLURM, Open MPI, Cloud TPU, Kubernetes...) tells JAX
everything; JAX reads those variables itself (`jax.distributed.initialize`), they are not
parsed here. When JAX's runtime is up and one process dies, the runtime stops the others (after
its heartbeat timeout). Each has saved its work, so rerunning the launch resumes it; for
inversion, any process whose share is unfinished can also be rerun alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import pathlib
import socket
from typing import Optional, Sequence

import jax

log = logging.getLogger(__name__)

__all__ = ['Process', 'add_arguments', 'barrier', 'current', 'from_args', 'initialize',
           'write_text_atomic']


@dataclasses.dataclass(frozen=True)
class Process:
  """This process's place in the job: process `index` of `count`; `runtime` when JAX's
  multi-controller runtime is up (global devices, collectives)."""
  index: int = 0
  count: int = 1
  runtime: bool = False

  def __post_init__(self):
    if self.count < 1 or not 0 <= self.index < self.count:
      raise ValueError(f'--process-id {self.index} with --num-processes {self.count}: the id '
                       f'must be in 0..{self.count - 1} (and there must be at least one process).')

  @property
  def main(self) -> bool:
    """The process that writes what the job has one of (records, grids, the merge)."""
    return self.index == 0

  @property
  def suffix(self) -> str:
    """'' for a one-process job, else '.p<index>of<count>' (per-process file names)."""
    return '' if self.count == 1 else f'.p{self.index}of{self.count}'

  def share(self, indices: Sequence[int]) -> list[int]:
    """The items of a job's sorted `indices` this process does: the k-th goes to process
    k mod count (a fixed rule: the same job always gives the same shares)."""
    return [i for k, i in enumerate(indices) if k % self.count == self.index]

  def describe(self) -> str:
    return (f'process {self.index} of {self.count}' if self.count > 1 else 'one process') + (
        ' (jax.distributed)' if self.runtime else '')


_current = Process()


def current() -> Process:
  """The process set by the last `initialize` (one process without it)."""
  return _current


def initialize(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, *, auto: bool = False,
               runtime_needed: bool = True) -> Process:
  """Joins the job and returns (and remembers) this process's place in it.

  - Nothing given and not `auto`: one process, no runtime.
  - `coordinator` given, or `auto` (the launcher's environment tells JAX the rest), or ids given
    with `runtime_needed`: `jax.distributed.initialize` with what is given; JAX detects the rest.
    Call it before any other JAX work in the process.
  - Only `num_processes` and `process_id`, with `runtime_needed=False` (folder inversion): this
    process is that one of the job, without the runtime (e.g. a killed process rerun alone).
  """
  global _current
  if _current.runtime:  # already joined (a second job in the same process): JAX's runtime stays
    return _current
  ids_given = num_processes is not None or process_id is not None
  if not (coordinator or auto or ids_given):
    _current = Process()
    return _current
  if not (coordinator or auto or runtime_needed):
    if num_processes is None or process_id is None:
      raise ValueError('--num-processes and --process-id go together (this process is number '
                       '--process-id of --num-processes); give both, or --distributed to let '
                       'the launcher say.')
    _current = Process(int(process_id), int(num_processes))
    log.info('Running as %s, without the JAX runtime (no --coordinator): this process does its '
             'share alone.', _current.describe())
    return _current
  if ids_given and not (coordinator or auto):
    raise ValueError('--num-processes/--process-id without --coordinator HOST:PORT: this job '
                     'needs JAX\'s runtime; give every process the address of process 0 '
                     '(--coordinator host0:12355), or --distributed under a launcher '
                     '(SLURM, Open MPI, Cloud TPU, Kubernetes).')
  try:
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
  except (ValueError, RuntimeError) as e:
    raise ValueError(f'could not join the job ({e}). Under a launcher (SLURM, Open MPI, Cloud '
                     'TPU, Kubernetes) --distributed needs its environment; elsewhere give '
                     '--coordinator HOST:PORT --num-processes N --process-id I, the same '
                     'address on every process, reachable from all of them.') from None
  _current = Process(jax.process_index(), jax.process_count(), runtime=True)
  log.info('Joined the job as %s: %d local of %d devices.', _current.describe(),
           jax.local_device_count(), jax.device_count())
  return _current


def barrier(name: str) -> None:
  """Waits until every process of the job gets here (nothing to wait for without the runtime).
  If one has died, the runtime stops this one after its heartbeat timeout."""
  if _current.runtime and _current.count > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


def write_text_atomic(path: pathlib.Path, text: str) -> None:
  """Writes `path` so that a reader (another process, a rerun after a kill) sees the old file or
  the new one, never half of one."""
  tmp = path.with_name(f'{path.name}.{socket.gethostname()}.{os.getpid()}.tmp')
  tmp.write_text(text)
  os.replace(tmp, path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The flags of a job that may span processes (see the module docstring)."""
  group = parser.add_argument_group('several processes / hosts (jax.distributed)')
  group.add_argument('--coordinator', default=None, metavar='HOST:PORT',
                     help="process 0's address; every process gives the same")
  group.add_argument('--num-processes', type=int, default=None, metavar='N',
                     help='how many processes the job has')
  group.add_argument('--process-id', type=int, default=None, metavar='I', help='0 .. N-1')
  group.add_argument('--distributed', action='store_true',
                     help='join the job the launcher describes (SLURM, Open MPI, Cloud TPU, '
                     'Kubernetes): JAX reads its environment')


def from_args(args: argparse.Namespace, runtime_needed: bool = True) -> Process:
  """`initialize` with the flags of `add_arguments`."""
  return initialize(args.coordinator, args.num_processes, args.process_id,
                    auto=args.distributed, runtime_needed=runtime_needed)
