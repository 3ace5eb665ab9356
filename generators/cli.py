"""How the command lines (`python -m generators`, `python -m inversion`) report bad input.

`run_cli(fn, *args)` runs a command's body. A `ValueError` or `FileNotFoundError` out of it (the
library's errors about bad input, settings or files: they name the file, the field and the fix)
ends the program with that message as one `error: ...` line on stderr, a hint line, and exit
status 1, instead of a traceback; with STYLEGAN_INV_TRACEBACK=1 set, it propagates with its
traceback. Exit status 2 stays argparse's own: a malformed command line (unknown option, missing
value), reported with the usage line.
"""

from __future__ import annotations

import os
from typing import Callable, TypeVar

TRACEBACK_ENV = "STYLEGAN_INV_TRACEBACK"  # set (to anything non-empty): errors keep their traceback
BAD_INPUT = (ValueError, FileNotFoundError)

_T = TypeVar("_T")


def run_cli(fn: Callable[..., _T], *args, **kwargs) -> _T:
  """`fn(*args, **kwargs)`; bad input (`BAD_INPUT`) -> `SystemExit('error: ...')` (status 1)."""
  try:
    return fn(*args, **kwargs)
  except BAD_INPUT as e:
    if os.environ.get(TRACEBACK_ENV):
      raise
    raise SystemExit(f"error: {e}\n(set {TRACEBACK_ENV}=1 for the traceback)") from None
