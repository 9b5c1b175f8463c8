"""Shared, cached test worlds: built once per test process."""

import functools
import tempfile

from experiments.configs import world as world_config
from mmrec.data import builders
from mmrec.data import world as world_lib


def tiny_config(**overrides):
  cfg = world_config.get_world_config('tiny')
  cfg.update(overrides)
  return cfg


@functools.lru_cache(maxsize=None)
def tiny_world():
  return world_lib.generate(tiny_config())


@functools.lru_cache(maxsize=None)
def tiny_world_dir():
  """The tiny world written through the TFDS builders (read-only for tests)."""
  path = tempfile.mkdtemp(prefix='mmrec_tiny_world_')
  builders.write(tiny_world(), path)
  return path
