"""The export job: a trained CTR checkpoint -> a servable model version in
a serving directory (layout.py: the layout), with the vector store
(+ index) and item encoder it is served with.

`export_version` is the one export path: the export job (`run`, `export`)
and near-line training (nearline.py) both call it, so both refuse a model
trained on float vectors (the store holds int8), both export the encoder
that made the store's table, and both point models/CURRENT at the version.
"""

import json
import os
import warnings

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmrec import checkpointing
from mmrec import ctr_data
from mmrec import ctr_model
from mmrec import files
from mmrec import item_encoder
from mmrec import vector_table
from mmrec.data import manifest as manifest_lib
from mmrec.data import resolver
from mmrec.serving import layout
from mmrec.serving import model_export

MODELS, MANIFEST = layout.MODELS, layout.MANIFEST


def saved_config(step_dir):
  """The config saved with a checkpoint step, as a ConfigDict."""
  with warnings.catch_warnings():  # the state, restored only for the config
    warnings.filterwarnings('ignore', 'Sharding info not provided')
    _, saved = checkpointing.restore_from(step_dir, None)
  return ml_collections.ConfigDict(saved)


def restore(ctr_workdir, step=None):
  """(model, variables {'params', 'batch_stats'} as numpy, config, step)."""
  ckpt_dir = os.path.join(ctr_workdir, checkpointing.SUBDIR)
  with checkpointing.Checkpointer(ckpt_dir, read_only=True) as ckpt:
    step = ckpt.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'no checkpoint in {ckpt_dir}: train the CTR '
                            'model first (config.job = "ctr")')
  source = os.path.join(ckpt_dir, str(step))
  config = saved_config(source)
  data = ctr_data.CtrData.load(resolver.recorded_data_dir(config,
                                                          ctr_workdir))
  model = ctr_model.build_model(config, data.sizes)
  example = {k: v[:2] for k, v in data.dataset('test', 2)[0].items()}
  vec_spec = None
  if ctr_model.reads_vectors(config):
    vec_spec = jax.ShapeDtypeStruct(
        (data.sizes['num_items'], _table_dim(config)),
        jnp.dtype(config.vectors_dtype))
  abstract = jax.eval_shape(
      lambda r, v: nn.unbox(model.init(r, example, v)), jax.random.key(0),
      vec_spec)
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), abstract)
  target = {'params': abstract['params'],
            'extra': {k: v for k, v in abstract.items() if k != 'params'}}
  restored, _ = checkpointing.restore_from(source, target, partial=True)
  variables = {'params': restored['params'], **restored['extra']}
  return model, jax.tree.map(np.asarray, variables), config, step, data


def _table_dim(config):
  _, meta = vector_table.load_from(config.vectors_path,
                                   field='config.vectors_path', dtype='int8')
  return meta['dim']


def ensure_encoder(serving_dir, store):
  """Exports the encoder that made the store's table, if it has a
  checkpoint (trained methods; the untrained references have none) and
  `encoder/` does not hold it yet."""
  source = store['source']
  sha = source['table_sha256']
  manifest = os.path.join(serving_dir, layout.ENCODER, MANIFEST)
  if os.path.exists(manifest):
    with open(manifest) as f:
      if json.load(f).get('table_sha256') == sha:
        return
  workdir = source.get('encoder_workdir')
  if not workdir or not os.path.isdir(os.path.join(workdir,
                                                   checkpointing.SUBDIR)):
    logging.info('no encoder checkpoint for the store\'s table (%s): the '
                 'service adds items by vector only', source.get('method'))
    return
  encoder, enc_config, step, data_dir = item_encoder.load_encoder(workdir)
  m = manifest_lib.load(data_dir)
  model_export.write_encoder(
      serving_dir, encoder.model, jax.tree.map(np.asarray, encoder.params),
      image_size=m.image_size, title_length=m.text['length'],
      vocab_size=m.text['vocab_size'], table_sha256=sha,
      source={'encoder_workdir': workdir, 'step': step,
              'method': enc_config.method})


def export_version(config, serving_dir, step, model, variables, ctr_config,
                   data, checkpoint, make_current=True):
  """models/v{step} of a trained CTR model (once), the store and encoder it
  is served with; CURRENT points at it if `make_current`. Returns its dir.

  `variables`: the model's ({'params', 'batch_stats'}, numpy), or a
  function returning them (called only if the version is not there yet);
  `config`: the export settings (item_capacity, buckets, and vectors_path
  for a model that reads no vectors); `data`: the run's ctr_data.CtrData.
  """
  models = os.path.join(serving_dir, MODELS)
  final = os.path.join(models, f'v{step}')
  if os.path.exists(os.path.join(final, MANIFEST)):
    logging.info('model version %s exists; not exported again', final)
  else:
    uses_vectors = ctr_model.reads_vectors(ctr_config)
    if uses_vectors and ctr_config.vectors_dtype != 'int8':
      raise ValueError('the serving store holds int8 vectors; a model '
                       f'trained on {ctr_config.vectors_dtype} vectors would '
                       'score differently (train with vectors_dtype=int8)')
    # A model reading vectors is served with the table it was trained on.
    table_path = (ctr_config.vectors_path if uses_vectors else
                  config.get('vectors_path') or ctr_config.vectors_path)
    if not table_path:
      raise ValueError('config.vectors_path is empty and the CTR run read no '
                       'vectors: the serving store needs the item-vector '
                       'table (item_vectors.npz)')
    store = layout.ensure_store(serving_dir, vector_table.resolve(table_path),
                                data.data_dir)
    ensure_encoder(serving_dir, store)
    m = manifest_lib.load(data.data_dir)
    model_export.write_version(
        models, step, model, variables() if callable(variables) else
        variables, variant=ctr_config.variant, sizes=data.sizes,
        schema=layout.serving_schema(data.sizes, data.items, data.users),
        seq_len=m.seq_len, long_seq_len=m.long_seq_len, store=store,
        uses_vectors=uses_vectors,
        capacity=max(config.item_capacity, data.sizes['num_items']),
        buckets=config.buckets, checkpoint=checkpoint)
  if make_current:
    files.write_pointer(models, f'v{step}')
  return final


def export(config, ctr_workdir, serving_dir, make_current=True):
  """Exports the CTR run's latest checkpoint; returns the version's dir."""
  ctr_workdir = os.path.abspath(ctr_workdir)  # orbax wants absolute paths
  model, variables, ctr_config, step, data = restore(ctr_workdir)
  return export_version(
      config, serving_dir, step, model, variables, ctr_config, data,
      os.path.abspath(os.path.join(ctr_workdir, checkpointing.SUBDIR,
                                   str(step))), make_current)


def run(config, workdir):
  """The export job (experiments/configs/export.py)."""
  if not config.ctr_workdir:
    raise ValueError('config.ctr_workdir must name a CTR run\'s workdir')
  return export(config, config.ctr_workdir, config.serving_dir or workdir)
