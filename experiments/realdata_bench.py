"""The real-image benchmark (issue 22): SCL's fused item vector against raw
pixels, bag-of-tokens and its own per-modality tables, with intervals.

  make realdata   # the emoji set, workdir/realdata (docs/realdata.md)
  python -m experiments.main --config=experiments/configs/realdata_bench.py \\
      --config.data_dir=workdir/realdata --workdir=workdir/realdata_bench

Runs the pre-training sweep (experiments/pretrain_sweep.py: `config.sweep`,
its runs skipped where already finished) in `<workdir>/sweep`, then reads
every run's per-query ranks (pretrain_eval_queries.npz) and writes
`realdata_table.{json,md}`: accuracy@1 and recall@10 of image and text
queries for each vector (a method's fused item vector, its image table, its
text table; raw pixels; bag-of-tokens), ranked against paper.md's pool and
against the catalogue, each with a 95% interval; and the claimed orderings
as paired differences (the same held-out sessions resampled for both
vectors, seeds combined as in pretrain_sweep), each with a verdict:
`beats` needs the interval above 0, `level` an interval reaching 0 or above.
Where the dataset names slices of its search sessions
(manifest.QUERY_SLICES_FILE: the emoji set's image queries drawn by the
item's maker or by another), the image claims are also judged on each.
"""

import json
import os
import time

import numpy as np

from experiments import pretrain_sweep
from mmrec import bootstrap
from mmrec import files
from mmrec import item_encoder
from mmrec import pretrain_eval
from mmrec.data import builders
from mmrec.data import manifest

TABLE_FILE = 'realdata_table'
# A diagnosis of the fused head (config.sum_of_tables): the same towers'
# image and text vectors of each item, unit-normalised and added, stand in
# for the learned fused head's vector.
SUM = 'sum of tables'
SUM_FILE = 'sum_of_tables_queries.npz'
METRICS = {'accuracy@1': 1, 'recall@10': 10}
PROTOCOLS = {'pool': '', 'catalogue': '_catalogue'}
# (query modality, rank key in pretrain_eval_queries.npz) of each vector a
# method has: its fused item vector, then its per-modality tables.
VECTORS = {'item vector': {'image': 'image', 'text': 'text'},
           'image table': {'image': 'image_on_image'},
           'text table': {'text': 'text_on_text'},
           SUM: {'image': 'sum_image', 'text': 'sum_text'}}
REFERENCES = {'image': 'raw_pixels', 'text': 'bag_of_tokens'}
SLICES_NOTE = ("a slice is the dataset's (here: who drew the query), the "
               'same for every run, not picked from results')


def _hit_samples(runs, key, k, weights):
  """(hit rate, (R,) resampled rates, queries) averaged over seeds, or None
  where the runs have no such ranks (or ask no such query)."""
  if not all(f'{key}_rank' in r for r in runs):
    return None
  got = [pretrain_sweep._hits(r, weights, key, k) for r in runs]  # pylint: disable=protected-access
  if not all(got):
    return None
  return (float(np.mean([g[0] for g in got])),
          np.mean([g[1] for g in got], axis=0), got[0][2])


def _key(modality, table, protocol):
  base = VECTORS[table].get(modality)
  return None if base is None else base + PROTOCOLS[protocol]


def table(queries, resamples=1000, seed=0):
  """{'rows': [...], 'claims': [...]} of `queries` ({method: [npz dicts per
  seed]}, as pretrain_sweep.load_queries)."""
  lengths = {len(r['image_rank']) for runs in queries.values() for r in runs}
  if len(lengths) != 1:
    raise ValueError(f'runs ranked different held-out sessions: {lengths}')
  sessions = lengths.pop()
  weights = bootstrap.user_weights(sessions, resamples, seed)
  few = sessions < bootstrap.MIN_USERS
  ci = lambda x: None if few else bootstrap.interval(x)

  def cell(method, tbl, modality, protocol, metric):
    key = _key(modality, tbl, protocol)
    if key is None or method not in queries:
      return None
    return _hit_samples(queries[method], key, METRICS[metric], weights)

  rows = []
  for method in queries:
    for tbl in VECTORS:
      if tbl != 'item vector' and method in REFERENCES.values():
        continue  # the references' tables are their item vectors
      row = {'method': method, 'vector': tbl}
      for modality in ('image', 'text'):
        for protocol in PROTOCOLS:
          for metric in METRICS:
            c = cell(method, tbl, modality, protocol, metric)
            row[f'{modality} {protocol} {metric}'] = None if c is None else {
                'value': c[0], 'ci': ci(c[1]), 'queries': c[2]}
      if any(v for k, v in row.items() if k not in ('method', 'vector')):
        rows.append(row)

  claims = []
  trained = [m for m in queries if m not in REFERENCES.values()]
  for method in trained:
    for modality, ref in REFERENCES.items():
      against = [(ref, 'item vector', 'beats'),
                 (method, f'{modality} table', 'level')]
      for other, tbl, kind in against:
        for protocol in PROTOCOLS:
          for metric in METRICS:
            a = cell(method, 'item vector', modality, protocol, metric)
            b = cell(other, tbl, modality, protocol, metric)
            if a is None or b is None:
              continue
            interval = ci(a[1] - b[1])
            if interval is None:
              verdict = 'insufficient data'
            elif kind == 'beats':
              verdict = 'holds' if interval[0] > 0 else 'does not hold'
            else:
              verdict = 'holds' if interval[1] >= 0 else 'does not hold'
            claims.append({
                'method': method, 'modality': modality,
                'against': f'{other} {tbl}', 'kind': kind,
                'protocol': protocol, 'metric': metric, 'a': a[0],
                'b': b[0], 'delta': a[0] - b[0], 'ci': interval,
                'queries': a[2], 'verdict': verdict})
  return {'rows': rows, 'claims': claims, 'sessions': sessions,
          'resamples': resamples,
          'seeds': len(next(iter(queries.values())))}


def _fmt(c):
  if c is None:
    return 'n/a'
  if c['ci'] is None:
    return f'{c["value"]:.3f}'
  return f'{c["value"]:.3f} [{c["ci"][0]:.3f}, {c["ci"][1]:.3f}]'


def markdown(result):
  lines = []
  for protocol in PROTOCOLS:
    cols = [f'{m} {protocol} {k}' for m in ('image', 'text') for k in METRICS]
    lines += ['', f'Held-out queries ranked against the {protocol} '
              '(95% intervals over resampled sessions):', '',
              '| method | vector | ' + ' | '.join(
                  c.replace(f' {protocol}', '') for c in cols) + ' |',
              '|---|---|' + '---|' * len(cols)]
    for row in result['rows']:
      lines.append(f'| {row["method"]} | {row["vector"]} | ' + ' | '.join(
          _fmt(row[c]) for c in cols) + ' |')
  lines += ['', "The claims: the fused item vector beats the reference "
            '(interval above 0) and is level with its own tower (interval '
            'reaching 0 or above):', ''] + _claim_lines(result['claims'])
  for name, sliced in result.get('slices', {}).items():
    image = [c for c in sliced['claims'] if c['modality'] == 'image']
    queries = image[0]['queries'] if image else 0
    lines += ['', f'The image claims on the dataset\'s slice "{name}" '
              f'({queries} of the image queries; {SLICES_NOTE}):', '']
    lines += _claim_lines(image)
  return '\n'.join(lines).lstrip('\n') + '\n'


def _claim_lines(claims):
  lines = ['| method | queries | against | protocol | metric | item vector '
           '| other | difference [95%] | verdict |',
           '|---|---|---|---|---|---|---|---|---|']
  for c in claims:
    d = (f'{c["delta"]:+.3f}' + ('' if c['ci'] is None else
                                 f' [{c["ci"][0]:+.3f}, {c["ci"][1]:+.3f}]'))
    lines.append(f'| {c["method"]} | {c["modality"]} | {c["against"]} | '
                 f'{c["protocol"]} | {c["metric"]} | {c["a"]:.3f} | '
                 f'{c["b"]:.3f} | {d} | {c["verdict"]} |')
  return lines


def slice_masks(data_dir, validation, part='test'):
  """{name: (Q,) mask over `part` of the held-out queries} of the dataset's
  query slices (manifest.QUERY_SLICES_FILE; {} without one). `validation`:
  a run's validation mask over all held-out queries (the search log's test
  split, in its order)."""
  path = os.path.join(data_dir, manifest.QUERY_SLICES_FILE)
  if not os.path.exists(path):
    return {}
  slices = manifest.load_query_slices(path)
  ids = builders.load_table(data_dir, manifest.SEARCH, 'test')['session_id']
  if len(ids) != len(validation):
    raise ValueError(f'{path}: the runs ranked {len(validation)} held-out '
                     f'queries, the search log holds {len(ids)}')
  ids = pretrain_eval.part_rows(
      {'id': ids, pretrain_eval.VALIDATION_KEY: validation}, part, path)['id']
  return {name: np.isin(ids, s) for name, s in slices.items()}


def _subset(queries, mask):
  return {m: [{k: v[mask] for k, v in r.items()} for r in runs]
          for m, runs in queries.items()}


class _SumOfTables:
  """A trained encoder whose item vector is unit(image) + unit(text)."""

  def __init__(self, encoder):
    self.encoder = encoder
    self.image_queries = encoder.image_queries
    self.text_queries = encoder.text_queries

  def item_tables(self, images, titles):
    t = dict(self.encoder.item_tables(images, titles))
    t['item'] = item_encoder.unit(item_encoder.unit(t['image']) +
                                  item_encoder.unit(t['text']))
    return t


def sum_of_tables(run_dir, data_dir, part='test'):
  """The per-query ranks of one run's encoder with the sum-of-tables item
  vector, under the keys VECTORS[SUM] names, on `part` of the held-out
  queries: the rows pretrain_sweep.load_queries gives for that part (every
  query's ranks and the parts are cached in the run's directory; a cache
  from before the parts existed is recomputed)."""
  run_dir = os.path.abspath(run_dir)
  path = os.path.join(run_dir, SUM_FILE)
  ranks = {}
  if os.path.exists(path):
    with np.load(path) as z:
      ranks = dict(z)
  if pretrain_eval.VALIDATION_KEY not in ranks:
    encoder = item_encoder.load_encoder(run_dir, data_dir)[0]
    items = builders.load_table(data_dir, manifest.ITEMS, 'catalogue')
    ev = pretrain_eval.evaluate_encoder(_SumOfTables(encoder), data_dir,
                                        items)
    ranks = {f'sum_{k}_rank': ev.ranks[k] for k in (
        'image', 'text', 'image_catalogue', 'text_catalogue')}
    ranks[pretrain_eval.VALIDATION_KEY] = ev.validation
    files.write_npz(path, ranks)
  return pretrain_eval.part_rows(ranks, part, path)


def run(config, workdir):
  sweep_dir = os.path.join(workdir, 'sweep')
  os.makedirs(sweep_dir, exist_ok=True)
  sweep = config.sweep
  sweep.data_dir = config.data_dir
  if not config.data_dir:
    raise ValueError('config.data_dir is empty: point it at the converted '
                     'emoji set (make realdata writes workdir/realdata)')
  t0 = time.time()
  pretrain_sweep.run(sweep, sweep_dir)
  minutes = (time.time() - t0) / 60
  with open(os.path.join(sweep_dir, pretrain_sweep.PLAN_FILE)) as f:
    plan = json.load(f)
  queries = pretrain_sweep.load_queries(sweep_dir, plan['ran'], sweep.seeds)
  if config.sum_of_tables:
    for m in plan['ran']:
      if m.startswith('scl'):
        for seed, ranks in enumerate(queries[m]):
          ranks.update(sum_of_tables(os.path.join(
              sweep_dir, m, f'seed_{seed}'), config.data_dir))
  result = table(queries, config.resamples)
  with np.load(os.path.join(sweep_dir, plan['ran'][0], 'seed_0',
                            pretrain_eval.QUERIES_FILE)) as z:
    validation = z[pretrain_eval.VALIDATION_KEY]
  result['slices'] = {
      name: table(_subset(queries, mask), config.resamples)
      for name, mask in slice_masks(config.data_dir, validation).items()}
  result.update(steps=sweep.scl.num_steps, batch_size=sweep.scl.batch_size,
                sweep_minutes=minutes, data_dir=config.data_dir)
  files.write_json(os.path.join(workdir, f'{TABLE_FILE}.json'),
                   files.json_safe(result))
  text = (f'{sweep.scl.num_steps} steps of batch {sweep.scl.batch_size}, '
          f'{sweep.seeds} seed(s); the sweep took {minutes:.1f} min here '
          '(0 where its runs were already done).\n\n' + markdown(result))
  files.write_text(os.path.join(workdir, f'{TABLE_FILE}.md'), text)
  print(text)
  return result
