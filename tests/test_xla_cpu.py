"""generators.xla_cpu: the package turns off XLA:CPU's YNNPACK convolutions unless told not to."""

import os
import subprocess
import sys

import pytest

from generators import xla_cpu

_PROBE = """
import os, sys
import generators, jax, jax.numpy as jnp
x = jnp.ones((1, 16, 16, 32)); w = jnp.ones((3, 3, 32, 32))  # a shape YNNPACK takes
conv = jax.jit(lambda x: jax.lax.conv_general_dilated(x, w, (1, 1), 'VALID',
                                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
print(generators.xla_cpu.EIGEN_PREFERRED, os.environ.get('XLA_FLAGS', ''), sep='|')
print('ynn' in conv.lower(x).compile().as_text())
"""


def _probe(**env_changes) -> tuple[bool, str, bool]:
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_cpu.OPT_OUT_ENV)}
  env.update(env_changes, JAX_PLATFORMS="cpu")
  run = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                       timeout=300, check=True)
  first, second = run.stdout.strip().splitlines()[-2:]
  preferred, flags = first.split("|", 1)
  return preferred == "True", flags, second == "True"


pytestmark = pytest.mark.skipif(xla_cpu._jaxlib_version() < xla_cpu.FIRST_JAXLIB_WITH_FLAG,
                                reason="this jaxlib has no YNNPACK fusions")


def test_import_adds_the_flag_and_convolutions_leave_ynnpack():
  preferred, flags, ynn_in_program = _probe(XLA_FLAGS="--xla_force_host_platform_device_count=2")
  assert preferred and xla_cpu.YNN_FLAG in flags
  assert "--xla_force_host_platform_device_count=2" in flags  # the user's flags are kept
  assert not ynn_in_program


def test_opt_out_and_a_users_own_setting_are_respected():
  preferred, flags, ynn_in_program = _probe(**{xla_cpu.OPT_OUT_ENV: "1"})
  assert not preferred and "ynn" not in flags and ynn_in_program
  own = "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"
  preferred, flags, ynn_in_program = _probe(XLA_FLAGS=own)
  assert flags == own and ynn_in_program


def test_jax_started_before_import_gets_a_warning_with_the_fix():
  script = ("import logging, jax, jax.numpy as jnp; logging.basicConfig(); jnp.ones(1).block_until_ready()\n"
            "import generators; print(generators.xla_cpu.EIGEN_PREFERRED)")
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_cpu.OPT_OUT_ENV)}
  run = subprocess.run([sys.executable, "-c", script], env=dict(env, JAX_PLATFORMS="cpu"),
                       capture_output=True, text=True, timeout=300, check=True)
  assert run.stdout.strip().splitlines()[-1] == "False"
  assert "JAX started before" in run.stderr and xla_cpu.YNN_FLAG in run.stderr
