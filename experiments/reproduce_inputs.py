"""What the reproduction reads: the dataset, and the CTR stage's item vectors.

`dataset` gives the pipeline (reproduce.py) its dataset: the world it builds
from config.world as a stage, or the converted dataset config.data_dir names
(only read); `world_only` lists the report's sections such a dataset cannot
have, with the reason; `ctr_vectors` picks the item vectors that feed the CTR
stage (config.ctr_vectors: a pre-training method's seed-0 table, the
dataset's shipped vectors, or none).
"""

import os

from absl import logging
import ml_collections

from experiments import pretrain_sweep
from experiments import stages
from mmrec import vector_table
from mmrec.data import build
from mmrec.data import manifest
from mmrec.data import resolver


def dataset(config, pipe, workdir):
  """(dataset directory, its hash): the world the pipeline builds from
  config.world, or config.data_dir (only read), keyed by its manifest."""
  if not config.data_dir:
    world_h = stages.config_hash(config.world)
    return pipe.stage(
        'world', world_h, config.world,
        lambda p: build.run(ml_collections.ConfigDict(
            {'world': config.world}), p)), world_h
  data_dir = resolver.data_dir(config.data_dir, None, workdir)
  m = manifest.load(data_dir)
  logging.info('dataset: %s (%s) in %s', m.name, m.source, data_dir)
  return data_dir, stages.config_hash({'dataset': data_dir,
                                       'manifest': m.to_dict()})


def world_only(config, m, data_dir):
  """{section: why} of the report's sections this dataset cannot have."""
  out = {}
  if not m.oracle:
    out['oracle ceiling'] = (f'dataset {m.name!r} has no true click '
                             'probabilities: only a synthetic world has an '
                             'oracle')
  if not os.path.exists(os.path.join(data_dir, build.SUMMARY_FILE)):
    out['honesty table'] = ('it scores the synthetic world\'s hidden '
                            f'concepts, kept in {build.SUMMARY_FILE}, which '
                            f'dataset {m.name!r} has not')
  if config.data_dir:
    out['content curve'] = ('it rebuilds the synthetic world at other '
                            'content_weight values; config.data_dir names a '
                            'fixed dataset')
  return out


def ctr_vectors(config, m, data_dir, pre_dir, ran):
  """Which item vectors feed the CTR stage (config.ctr_vectors):
  {'source': 'pretrained' | 'shipped' | None, 'method', 'path', 'why'}.
  Where config.vectors_method did not run, the method of `ran` with the best
  recall@10 on the validation part of the held-out queries (the sweep's
  VALIDATION_TABLE_FILE in `pre_dir`): the test part, which the report
  shows, plays no part in the choice."""
  choice = config.ctr_vectors
  if choice in ('auto', 'pretrained') and ran:
    if config.vectors_method in ran:
      method = config.vectors_method
      why = 'config.vectors_method'
    else:
      method = pretrain_sweep.best_method(stages.read_json(os.path.join(
          pre_dir, f'{pretrain_sweep.VALIDATION_TABLE_FILE}.json')), ran)
      why = (f'config.vectors_method = {config.vectors_method!r} did not run; '
             f'{method!r} has the best recall@10 of its item table on the '
             f'validation part of the held-out queries among '
             f'{", ".join(ran)}')
    return {'source': 'pretrained', 'method': method, 'why': why,
            'path': os.path.join(pre_dir, method, 'seed_0',
                                 vector_table.FILE)}
  if choice in ('auto', 'shipped') and m.vectors:
    why = ('config.ctr_vectors = "shipped"' if choice == 'shipped' else
           'no pre-training method ran on this dataset')
    return {'source': 'shipped', 'method': None, 'why': why,
            'path': os.path.join(data_dir, m.vectors)}
  if choice == 'auto':
    return {'source': None, 'method': None, 'path': '',
            'why': 'no pre-training method ran and the dataset ships no item '
                   'vectors'}
  raise ValueError(
      f'config.ctr_vectors = {choice!r}, but dataset {m.name!r} ' + (
          'ships no item vectors (manifest: vectors = null)'
          if choice == 'shipped' else 'allows no pre-training method'))
