"""XLA:CPU setting applied when this package is imported: convolutions and matmuls run on Eigen.

From jaxlib 0.9, XLA:CPU hands convolutions and dots to YNNPACK fusions. On x86 that path runs
every convolution without spatial padding (1x1 convs, the phase convolutions of a transposed
conv, most input gradients) at about a third of the Eigen rate, and matmuls ~25% slower: a
[4,128,128,128] 3x3 -> 256 conv takes 578 ms unpadded vs 193 ms with Eigen on 2 x86 cores,
and the dense conv peak of `benchmarks/generator_speed.py` rises from 225 to 266-325 GFLOP/s
(runs vary).
So, unless the user set it, we add `--xla_cpu_experimental_ynn_fusion_type=` (no YNNPACK
fusions) to XLA_FLAGS. XLA reads XLA_FLAGS when the first backend starts, so this only takes
effect if nothing used JAX before the import; otherwise it logs how to set it by hand.
The flag only concerns the CPU backend; GPU and TPU programs are unchanged.

Opt out with STYLEGAN_INV_KEEP_XLA_FLAGS=1 (or set the flag yourself in XLA_FLAGS).
"""

from __future__ import annotations

import logging
import os

import jaxlib

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type="  # empty list: no YNNPACK fusions
FIRST_JAXLIB_WITH_FLAG = (0, 9)  # older jaxlibs abort on the unknown flag
OPT_OUT_ENV = "STYLEGAN_INV_KEEP_XLA_FLAGS"

_log = logging.getLogger(__name__)


def _jaxlib_version() -> tuple[int, ...]:
  return tuple(int(part) for part in jaxlib.__version__.split(".")[:2] if part.isdigit())


def _backends_started() -> bool:
  try:
    from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):  # private API moved: assume the flag can still apply
    return False


def prefer_eigen() -> bool:
  """Add `YNN_FLAG` to XLA_FLAGS where it applies; True if XLA will see it."""
  flags = os.environ.get("XLA_FLAGS", "")
  if (os.environ.get(OPT_OUT_ENV, "") not in ("", "0") or "ynn_fusion_type" in flags
      or _jaxlib_version() < FIRST_JAXLIB_WITH_FLAG):
    return "ynn_fusion_type" in flags
  if _backends_started():
    import jax  # pylint: disable=import-outside-toplevel
    if jax.default_backend() != "cpu":
      return False
    _log.warning("JAX started before stylegan-inversion was imported, so XLA:CPU keeps its "
                 "YNNPACK convolutions, which run up to 3x slower here. Import generators/"
                 "inversion first, or run with XLA_FLAGS=%s", YNN_FLAG)
    return False
  os.environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}".strip()
  return True


EIGEN_PREFERRED = prefer_eigen()
