"""The export job: a trained CTR checkpoint -> a servable model version in
a serving directory (layout.py: the layout), with the vector store
(+ index) and item encoder it is served with.

The job restores the run's latest checkpoint and hands it to
model_export.export_version, the one export path (near-line training uses it
too).
"""

import os

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmrec import checkpointing
from mmrec import ctr_data
from mmrec import ctr_model
from mmrec import files
from mmrec import vector_table
from mmrec.data import resolver
from mmrec.serving import layout
from mmrec.serving import model_export

MODELS, MANIFEST = layout.MODELS, layout.MANIFEST


def restore(ctr_workdir, step=None):
  """(model, variables {'params', 'batch_stats'} as numpy, config, step)."""
  ckpt_dir = os.path.join(ctr_workdir, checkpointing.SUBDIR)
  with checkpointing.Checkpointer(ckpt_dir, read_only=True) as ckpt:
    step = ckpt.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'no checkpoint in {ckpt_dir}: train the CTR '
                            'model first (config.job = "ctr")')
  source = os.path.join(ckpt_dir, str(step))
  config = model_export.saved_config(source)
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


def export(config, ctr_workdir, serving_dir, make_current=True):
  """Exports the CTR run's latest checkpoint; returns the version's dir."""
  ctr_workdir = os.path.abspath(ctr_workdir)  # orbax wants absolute paths
  model, variables, ctr_config, step, data = restore(ctr_workdir)
  return model_export.export_version(
      config, serving_dir, step, model, variables, ctr_config, data,
      os.path.abspath(os.path.join(ctr_workdir, checkpointing.SUBDIR,
                                   str(step))), make_current)


def committed_version(serving_dir):
  """The version models/CURRENT names, if it is whole (its manifest is
  written last), else None: what a service started now would serve."""
  models = os.path.join(serving_dir, MODELS)
  name = files.read_pointer(models, layout.CURRENT)
  if name and os.path.exists(os.path.join(models, name, MANIFEST)):
    return os.path.join(models, name)
  return None


def run(config, workdir):
  """The export job (experiments/configs/export.py). With
  `config.only_if_none`, a serving directory that already serves a version
  is left as it is: near-line may have made a newer one current than the
  CTR run's, and exporting the run again would point CURRENT back at it."""
  serving_dir = config.serving_dir or workdir
  if config.get('only_if_none'):
    current = committed_version(serving_dir)
    if current:
      logging.info('%s is current: not exporting (only_if_none; make serve '
                   'EXPORT=1 exports anyway)', current)
      return current
  if not config.ctr_workdir:
    raise ValueError(f'no model version in {serving_dir} and '
                     'config.ctr_workdir is empty: name a CTR run\'s workdir '
                     '(make serve: run make demo first, or set CTR_RUN=<ctr '
                     'workdir>)')
  return export(config, config.ctr_workdir, serving_dir)
