"""Shared, cached test worlds: built once per test process."""

import functools
import os
import tempfile

import flax.linen as nn
import jax
import numpy as np

from experiments.configs import ctr as ctr_config
from experiments.configs import export as export_config
from experiments.configs import scl as scl_config
from experiments.configs import world as world_config
from mmrec import item_encoder
from mmrec import train_ctr
from mmrec import vector_table
from mmrec.data import builders
from mmrec.data import world as world_lib
from mmrec.serving import export
from mmrec.serving import layout
from mmrec.serving import model_export
from mmrec.serving import vector_store


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


@functools.lru_cache(maxsize=None)
def exported_ctr(variant):
  """A short CTR run (plumbing, not learning) of `variant` on the small CTR
  world, exported with export.py:tiny: (config, ctr workdir, serving dir,
  model version dir). Read-only for tests: copy the serving dir to change it.
  """
  c = ctr_config.get_config(f'{variant},tiny')
  c.data_dir = small_ctr_world_dir()
  c.vectors_path = oracle_vectors_path()
  c.tower, c.attention_mlp, c.embed_dim = (16, 8), (8,), 8
  c.max_steps = 10
  root = tempfile.mkdtemp(prefix=f'mmrec_export_{variant}_')
  workdir, serving = os.path.join(root, 'ctr'), os.path.join(root, 'serving')
  train_ctr.run(c, workdir)
  return c, workdir, serving, export.export(export_config.get_config('tiny'),
                                            workdir, serving)


@functools.lru_cache(maxsize=None)
def untrained_encoder():
  """(model, params) of scl.py:scl,tiny's item encoder for the small CTR
  world, untrained (the export path does not care about the weights)."""
  data_dir = small_ctr_world_dir()
  model = item_encoder.encoder_model(scl_config.get_config('scl,tiny'), data_dir)
  ex = item_encoder.example_inputs(data_dir)
  params = nn.unbox(model.init(jax.random.key(0), ex['image'],
                               ex['text'])['params'])
  return model, jax.tree.map(np.asarray, params)


def export_untrained_encoder(serving_dir):
  """`untrained_encoder` exported into a serving dir, as if it had made the
  store's table (so the service accepts it)."""
  model, params = untrained_encoder()
  wc = builders.load_world_config(small_ctr_world_dir())
  with vector_store.VectorStore(os.path.join(serving_dir, layout.VECTORS),
                                verify=False) as store:
    sha = store.manifest['source']['table_sha256']
  return model_export.write_encoder(
      serving_dir, model, params, image_size=wc['image_size'],
      title_length=wc['title_length'],
      vocab_size=builders.vocab_size(small_ctr_world_dir()),
      table_sha256=sha)


@functools.lru_cache(maxsize=None)
def long_history_dir():
  """A converted Taobao-MM-format dataset (readers_test's shards) with a
  30-long history beside the 10-long one, and its int8 vector table."""
  from experiments.configs import data as data_config  # pylint: disable=g-import-not-at-top
  from mmrec.data import dataset_job  # pylint: disable=g-import-not-at-top
  import readers_test  # pylint: disable=g-import-not-at-top
  src = tempfile.mkdtemp(prefix='mmrec_long_src_')
  readers_test.write_taobao_shards(src)
  c = data_config.get_config('taobao_mm,tiny')
  c.source_dir = src
  c.convert.long_seq_len = 30
  out = os.path.join(tempfile.mkdtemp(prefix='mmrec_long_'), 'data')
  dataset_job.run(c, out)
  return out


@functools.lru_cache(maxsize=None)
def exported_long_ctr(kind):
  """As `exported_ctr`, for a model trained with the long history:
  kind 'simtier' = DIN over the recent 10 + SimTier over the 30-long
  history (the official setting, small), 'gsu' = attention over the top 8
  of the long history (retrieve_top_k), SimTier over the recent."""
  data_dir = long_history_dir()
  c = ctr_config.get_config('simtier_official,tiny')
  c.data_dir = data_dir
  c.vectors_path = os.path.join(data_dir, vector_table.FILE)
  c.tower, c.attention_mlp, c.embed_dim = (16, 8), (8,), 8
  c.batch_size, c.eval_batch_size, c.max_steps = 32, 128, 6
  c.retrieve_top_k = 8 if kind == 'gsu' else 0
  root = tempfile.mkdtemp(prefix=f'mmrec_export_long_{kind}_')
  workdir, serving = os.path.join(root, 'ctr'), os.path.join(root, 'serving')
  train_ctr.run(c, workdir)
  return c, workdir, serving, export.export(export_config.get_config('tiny'),
                                            workdir, serving)
