"""The queue study: SCL runs with overridden settings -> queue_study.{json,md}.

One row per run of config.runs (see experiments/configs/queue_study.py):
its settings and recall@10 / accuracy@1 for image and text queries on the
validation part of the held-out queries: the study chooses defaults (the
paper pipeline's vectors_method, the demo's momentum and steps), so it reads
the part that the reported tables leave out (pretrain_eval.py).
"""

import os

from absl import logging

from mmrec import files
from mmrec import pretrain_eval
from mmrec import train_scl
from mmrec.data import resolver

TABLE_FILE = 'queue_study'
SETTINGS = ('negatives', 'key_encoder', 'queue_size', 'momentum',
            'momentum_schedule', 'num_steps', 'seed')
SLICES = ('image', 'text')
METRICS = ('recall@10', 'accuracy@1')


def run_config(config, overrides, data_dir):
  c = config.scl.copy_and_resolve_references()
  c.update(overrides)
  c.data_dir = data_dir
  return c


def run_one(config, name, data_dir, workdir):
  out = os.path.join(workdir, name)
  result = pretrain_eval.finished(out)
  if result:
    return result
  logging.info('queue study: %s -> %s', name, out)
  return train_scl.run(run_config(config, config.runs[name], data_dir), out)


def row(c, result):
  out = {k: c[k] for k in SETTINGS}
  if c.negatives != 'queue':
    out['queue_size'] = None  # no queue: its size means nothing
  for s in SLICES:
    r = result['validation_metrics'].get(s) or {}
    out.update({f'{s} {m}': r.get(m) for m in METRICS})
  return out


def markdown(rows):
  """The table; its numbers are the validation part's."""
  cols = ('run',) + SETTINGS + tuple(f'{s} {m}' for s in SLICES
                                     for m in METRICS)
  fmt = lambda v: ('' if v is None else f'{v:.3f}' if isinstance(v, float)
                   and v < 1 else str(v))
  lines = ['Validation part of the held-out queries:', '',
           '| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
  for name, r in rows.items():
    lines.append('| ' + ' | '.join([name] + [fmt(r[k]) for k in cols[1:]])
                 + ' |')
  return '\n'.join(lines)


def run(config, workdir):
  data_dir = resolver.data_dir(config.data_dir, config.scl.world, workdir)
  names = [n for n in config.only.split(',') if n]
  unknown = set(names) - set(config.runs)
  if unknown:
    raise ValueError(f'config.only names unknown runs {sorted(unknown)}; '
                     f'runs: {list(config.runs)}')
  rows = {}
  for name in names:
    result = run_one(config, name, data_dir, workdir)
    rows[name] = row(run_config(config, config.runs[name], data_dir), result)
  files.write_json(os.path.join(workdir, f'{TABLE_FILE}.json'), rows)
  files.write_text(os.path.join(workdir, f'{TABLE_FILE}.md'), markdown(rows))
  print(markdown(rows))
  return rows
