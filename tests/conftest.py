"""Test set-up shared by the whole suite.

Fakes 8 CPU devices so sharding tests run anywhere, and marks absl flags as
parsed so grain worker processes and absl-based modules work under pytest.
"""

import os

# Must happen before jax initialises its backends.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  # Low backend optimisation: compiling dominates the suite on 2 cores, and
  # tests compare results, not speed.
  os.environ["XLA_FLAGS"] = (
      _flags + " --xla_force_host_platform_device_count=8"
      " --xla_backend_optimization_level=0").strip()

from absl import flags  # pylint: disable=g-import-not-at-top

flags.FLAGS.mark_as_parsed()
