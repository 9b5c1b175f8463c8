"""Test set-up shared by the whole suite.

Fakes 8 CPU devices so sharding tests run anywhere, marks absl flags as
parsed so grain worker processes and absl-based modules work under pytest,
and gives the whole run one persistent compilation cache.
"""

import os
import shutil
import tempfile

# Must happen before jax initialises its backends.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  # Compiling dominates the suite on 2 cores (tests compare results, not
  # speed): low backend optimisation, and XLA:CPU's older loop emitters,
  # which compile a tiny SCL or CTR step in about half the time of the new
  # fusion emitters at the same step speed (measured on jax 0.10.2).
  os.environ["XLA_FLAGS"] = (
      _flags + " --xla_force_host_platform_device_count=8"
      " --xla_backend_optimization_level=0"
      " --xla_cpu_use_fusion_emitters=false").strip()

# One compilation cache for the run, shared by both xdist workers and every
# subprocess they start (the environment is inherited): many tests compile
# the same tiny programs in different processes, and on 2 cores compiling
# dominates the suite. A fresh directory per run (removed at the end), so no
# run reads another's programs; JAX_COMPILATION_CACHE_DIR set (or set empty,
# to compile everything) by the caller wins.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="mmrec_test_jax_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

from absl import flags  # pylint: disable=g-import-not-at-top

flags.FLAGS.mark_as_parsed()


def pytest_sessionfinish(session, exitstatus):
  del exitstatus
  # The controller made the cache (workers inherited it): it removes it.
  if _OWN_CACHE and not hasattr(session.config, "workerinput"):
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)
