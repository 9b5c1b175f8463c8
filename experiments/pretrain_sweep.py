"""The pre-training comparison: methods x seeds -> pretrain_table.{json,md},
and pretrain_comparisons.json: paired bootstrap intervals of the accuracy@1
differences the paper's orderings claim (PAIRS), over held-out queries.
"""

import json
import os

from absl import logging
import numpy as np

from experiments.configs import scl as scl_config
from mmrec import bootstrap
from mmrec import files
from mmrec import train_scl
from mmrec.data import resolver

# '<m>_on_<m>': queries of modality m ranked by m's own item table.
SLICES = ('image', 'text', 'image_new', 'text_new', 'image_on_image',
          'text_on_text')
METRICS = ('accuracy@1', 'recall@10')
TABLE_FILE = 'pretrain_table'
COMPARISONS_FILE = 'pretrain_comparisons.json'
# The orderings paper.md reports (reproduce.claims): (better, worse).
PAIRS = (('scl', 'clip_e'), ('clip_e', 'clip_o'), ('scl', 'scl_no_queue'),
         ('scl', 'scl_no_hard_neg'))


def method_config(config, method, seed, data_dir, workdir):
  """The scl config of one run: the sweep's shared settings + the method's."""
  c = scl_config.get_config(method)
  base = config.scl.to_dict()
  for k in ('method', 'encoder', 'negatives', 'key_encoder',
            'triplet_weight'):
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
  # Without the per-query ranks (a run from before they were saved) the run
  # is evaluated again: its final checkpoint is restored, not retrained.
  if os.path.exists(done) and os.path.exists(
      os.path.join(out, train_scl.QUERIES_FILE)):
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


def _accuracy(ranks, weights):
  """accuracy@1, the mean over the query modalities a method has (as
  reproduce's claims read the table), on the held-out sessions and on each
  resample (a column of `weights`, (S, R) multiplicities of sessions)."""
  point, samples = [], []
  for m in ('image', 'text'):
    rank = ranks[f'{m}_rank']
    asked = rank >= 0
    if not asked.any():
      continue
    hit = (rank == 0).astype(np.float64)
    point.append(hit.sum() / asked.sum())
    with np.errstate(invalid='ignore', divide='ignore'):
      samples.append((hit @ weights) / (asked.astype(np.float64) @ weights))
  return float(np.mean(point)), np.mean(samples, axis=0)


def comparisons(queries, resamples, seed=0):
  """Paired bootstrap of accuracy@1 differences over held-out queries.

  The unit resampled is the held-out search session (its query and its
  purchase), drawn with replacement; one draw shared by every method and
  seed; seeds combined (mean over seeds of the per-seed difference).

  Args:
    queries: {method: [pretrain_eval_queries.npz arrays per seed]}.
    resamples: the number of draws.

  Returns:
    {'<better>-<worse>': {'a', 'b' (the worse / better accuracy, mean over
    seeds), 'delta', 'ci', 'delta_pct', 'ci_pct', 'queries', 'resamples',
    'seeds'}} for the PAIRS whose methods ran; the intervals are None with
    fewer than bootstrap.MIN_USERS held-out sessions.
  """
  lengths = {len(r['image_rank']) for runs in queries.values() for r in runs}
  if len(lengths) > 1:
    raise ValueError(f'runs ranked different held-out sessions: {lengths}')
  if not lengths:
    return {}
  sessions = lengths.pop()
  weights = bootstrap.user_weights(sessions, resamples, seed)
  acc = {m: [_accuracy(r, weights) for r in runs]
         for m, runs in queries.items()}
  out = {}
  for better, worse in PAIRS:
    if better not in acc or worse not in acc:
      continue
    pb = np.array([p for p, _ in acc[better]])
    pw = np.array([p for p, _ in acc[worse]])
    sb = np.stack([x for _, x in acc[better]])
    sw = np.stack([x for _, x in acc[worse]])
    few = sessions < bootstrap.MIN_USERS
    ci = lambda x: None if few else bootstrap.interval(x)
    with np.errstate(invalid='ignore', divide='ignore'):
      rel, rel_s = 100 * (pb - pw) / pw, 100 * (sb - sw) / sw
    out[f'{better}-{worse}'] = {
        'a': float(pw.mean()), 'b': float(pb.mean()),
        'delta': float(np.mean(pb - pw)), 'ci': ci(np.mean(sb - sw, 0)),
        'delta_pct': float(np.mean(rel)), 'ci_pct': ci(np.mean(rel_s, 0)),
        'queries': sessions, 'resamples': resamples, 'seeds': len(pb)}
  return out


def load_queries(workdir, methods, seeds):
  """{method: [pretrain_eval_queries.npz arrays per seed]}."""
  out = {}
  for m in methods:
    out[m] = []
    for seed in range(seeds):
      with np.load(os.path.join(workdir, m, f'seed_{seed}',
                                train_scl.QUERIES_FILE)) as z:
        out[m].append(dict(z))
  return out


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
  files.write_json(os.path.join(workdir, COMPARISONS_FILE), files.json_safe(
      comparisons(load_queries(workdir, methods, config.seeds),
                  config.bootstrap_resamples)))
  files.write_json(os.path.join(workdir, f'{TABLE_FILE}.json'), table)
  files.write_text(os.path.join(workdir, f'{TABLE_FILE}.md'), markdown(table))
  print(markdown(table))
  return table
