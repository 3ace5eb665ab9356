"""One process of a multi-process job in tests/test_distributed.py: runs `python -m inversion`
with the given arguments; with `--die-after-saves K` first, the process kills itself (SIGKILL,
no clean-up, as a lost host) right after its K-th folder-job checkpoint is written.

    python -m tests.multiprocess_worker [--die-after-saves K] invert --images ... --process-id 1
"""

import os
import signal
import sys

from inversion import __main__ as cli
from inversion import jobs


def die_after_saves(count: int) -> None:
  """Makes the folder job's K-th checkpoint write the last thing this process does."""
  save = jobs._save_checkpoint  # pylint: disable=protected-access
  written = []

  def save_then_maybe_die(*args, **kwargs):
    save(*args, **kwargs)
    written.append(1)
    if len(written) == count:
      os.kill(os.getpid(), signal.SIGKILL)

  jobs._save_checkpoint = save_then_maybe_die  # pylint: disable=protected-access


if __name__ == '__main__':
  argv = sys.argv[1:]
  if argv[:1] == ['--die-after-saves']:
    die_after_saves(int(argv[1]))
    argv = argv[2:]
  sys.exit(cli.main(argv))
