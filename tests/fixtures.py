"""Shared, cached test worlds: built once per test process."""

import functools
import os
import tempfile

import numpy as np

from experiments.configs import world as world_config
from mmrec import vector_table
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


@functools.lru_cache(maxsize=None)
def small_ctr_world_dir():
  """The tiny world shrunk to 500 users, 800 items (~7.5k training rows).

  CTR runs read whole epochs and test days: reading dominates.
  """
  path = tempfile.mkdtemp(prefix='mmrec_ctr_world_')
  builders.write(world_lib.generate(tiny_config(num_users=500,
                                                num_items=800)), path)
  return path


@functools.lru_cache(maxsize=None)
def oracle_vectors_path():
  """Oracle concept vectors + noise for the small CTR world's items."""
  path = os.path.join(tempfile.mkdtemp(prefix='mmrec_ctr_vectors_'),
                      'item_vectors.npz')
  oracle = builders.load_oracle(small_ctr_world_dir())
  v = oracle['concept_vec'][oracle['item_concept']]
  v = v + 0.3 * np.random.default_rng(0).normal(size=v.shape)
  v /= np.linalg.norm(v, axis=1, keepdims=True)
  vector_table.save(path, v.astype(np.float32), {'method': 'oracle_noise'})
  return path
