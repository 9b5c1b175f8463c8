"""The pre-training comparison: methods x seeds -> pretrain_table.{json,md}."""

import json
import os

from absl import logging
import numpy as np

from experiments.configs import scl as scl_config
from mmrec import files
from mmrec import train_scl
from mmrec.data import resolver

SLICES = ('image', 'text', 'image_new', 'text_new')
METRICS = ('accuracy@1', 'recall@10')
TABLE_FILE = 'pretrain_table'


def method_config(config, method, seed, data_dir, workdir):
  """The scl config of one run: the sweep's shared settings + the method's."""
  c = scl_config.get_config(method)
  base = config.scl.to_dict()
  for k in ('method', 'encoder', 'use_queue', 'triplet_weight'):
    base.pop(k)  # method-specific: keep the method's own values
  c.update(base)
  c.encoder.update({k: v for k, v in config.scl.encoder.to_dict().items()
                    if k != 'item_mode'})
  c.seed, c.data_dir = seed, data_dir
  if method == 'clip_e':
    c.init_from = os.path.join(workdir, 'clip_o', f'seed_{seed}')
  return c


def run_one(config, method, seed, data_dir, workdir):
  out = os.path.join(workdir, method, f'seed_{seed}')
  done = os.path.join(out, train_scl.EVAL_FILE)
  if os.path.exists(done):
    with open(done) as f:
      return json.load(f)
  logging.info('pre-training %s seed %d -> %s', method, seed, out)
  return train_scl.run(
      method_config(config, method, seed, data_dir, workdir), out)


def summarise(results):
  """{method: {slice: {metric: {mean, std, runs}} or None}}."""
  table = {}
  for method, runs in results.items():
    table[method] = {}
    for s in SLICES:
      vals = [r['metrics'][s] for r in runs if r['metrics'].get(s)]
      table[method][s] = None if not vals else {
          m: {'mean': float(np.mean([v[m] for v in vals])),
              'std': float(np.std([v[m] for v in vals])),
              'runs': len(vals)} for m in METRICS}
  return table


def markdown(table):
  head = '| method | ' + ' | '.join(f'{s} {m}' for s in SLICES
                                     for m in METRICS) + ' |'
  lines = [head, '|' + '---|' * (1 + len(SLICES) * len(METRICS))]
  for method, row in table.items():
    cells = []
    for s in SLICES:
      for m in METRICS:
        v = row[s]
        cells.append('n/a' if v is None else
                     f'{v[m]["mean"]:.3f} ± {v[m]["std"]:.3f}')
    lines.append(f'| {method} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def run(config, workdir):
  data_dir = resolver.data_dir(config.data_dir, config.scl.world, workdir)
  methods = [m for m in config.methods.split(',') if m]
  order = sorted(methods, key=lambda m: m == 'clip_e')  # after clip_o
  if 'clip_e' in methods and 'clip_o' not in methods:
    raise ValueError('clip_e starts from clip_o: list clip_o in methods too')
  results = {m: [] for m in methods}
  for seed in range(config.seeds):
    for method in order:
      results[method].append(run_one(config, method, seed, data_dir, workdir))
  table = summarise(results)
  files.write_json(os.path.join(workdir, f'{TABLE_FILE}.json'), table)
  files.write_text(os.path.join(workdir, f'{TABLE_FILE}.md'), markdown(table))
  print(markdown(table))
  return table
