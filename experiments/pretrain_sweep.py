"""The pre-training comparison: methods x seeds -> pretrain_table.{json,md},
and pretrain_comparisons.json: paired bootstrap intervals of the accuracy@1
differences the paper's orderings claim (PAIRS), over held-out queries.

Held-out queries come in two parts (pretrain_eval.py): pretrain_table.json
and pretrain_comparisons.json are the test part's (what reports and claims
read); pretrain_validation_table.json is the validation part's, what
`best_method` chooses on. pretrain_table.md shows both, each named.

Only the methods the dataset can serve run (`plan`: train_scl.check_dataset
and pretrain_eval.check_evaluable, before the first run); the others are skipped
with the reason, in pretrain_plan.json and pretrain_table.md. Without
generic captions CLIP-O cannot run, and CLIP-E then trains from scratch on
item image <-> title (the plan says so).
"""

import json
import os

from absl import logging
import numpy as np

from experiments import seed_stats
from experiments.configs import scl as scl_config
from mmrec import bootstrap
from mmrec import files
from mmrec import pretrain_eval
from mmrec import train_scl
from mmrec.data import builders
from mmrec.data import manifest
from mmrec.data import resolver

# '<s>_catalogue': search queries ranked against the catalogue instead of
# paper.md's pool (retrieval_eval.py); '<m>_concept': a top-k item of the
# purchased item's concept (the world only). '<m>_on_<m>': queries of modality m
# ranked by m's own item table (and '_catalogue' against the catalogue). 'item',
# 'item_new': the item table on itself (co-click evaluation only); a table
# shows the slices its runs have.
SLICES = ('image', 'text', 'image_new', 'text_new', 'image_catalogue',
          'text_catalogue', 'image_new_catalogue', 'text_new_catalogue',
          'image_concept', 'text_concept',
          'image_on_image', 'text_on_text', 'image_on_image_catalogue',
          'text_on_text_catalogue', 'item', 'item_new')
METRICS = ('accuracy@1', 'recall@10')
TABLE_FILE = 'pretrain_table'  # the test part
VALIDATION_TABLE_FILE = 'pretrain_validation_table'  # .json
COMPARISONS_FILE = 'pretrain_comparisons.json'
# {'ran': [methods], 'skipped': {method: why}, 'notes': {method: note},
# 'eval': pretrain_eval.eval_info}.
PLAN_FILE = 'pretrain_plan.json'
# The orderings paper.md reports (claims.claims): (better, worse).
PAIRS = (('scl', 'clip_e'), ('clip_e', 'clip_o'), ('scl', 'scl_no_queue'),
         ('scl', 'scl_no_hard_neg'))


def method_config(config, method, seed, data_dir, workdir, clip_o=True):
  """The scl config of one run: the sweep's shared settings + the method's.

  clip_o: False where CLIP-O cannot run on the dataset: CLIP-E then starts
  from scratch.
  """
  c = scl_config.get_config(method)
  base = config.scl.to_dict()
  for k in ('method', 'encoder', 'negatives', 'key_encoder',
            'triplet_weight'):
    base.pop(k)  # method-specific: keep the method's own values
  c.update(base)
  c.encoder.update({k: v for k, v in config.scl.encoder.to_dict().items()
                    if k != 'item_mode'})
  c.seed, c.data_dir = seed, data_dir
  if method == 'clip_e' and clip_o:
    c.init_from = os.path.join(workdir, 'clip_o', f'seed_{seed}')
  return c


def plan(methods, data_dir, num_pairs=None):
  """(runnable methods in `methods`' order, {skipped method: why}, {method:
  note}): what the dataset at `data_dir` can serve, checked before anything
  trains. `num_pairs`: the co-click methods' config.num_i2i_pairs (their
  data is checked too: a log without clicks has no pair)."""
  if num_pairs is None:
    num_pairs = scl_config.get_config().num_i2i_pairs
  m = manifest.load(data_dir)
  items = None
  skipped = {}
  for method in methods:
    try:
      train_scl.check_dataset(method, m)
      if pretrain_eval.eval_task(m) == pretrain_eval.CO_CLICK_EVAL and items is None:
        items = builders.load_table(data_dir, manifest.ITEMS, 'catalogue')
      pretrain_eval.check_evaluable(data_dir, items, method)
      train_scl.check_data(method, data_dir, num_pairs)
    except manifest.DatasetError as e:
      logging.warning('pre-training: skipping %s: %s', method, e)
      skipped[method] = str(e)
  ran = [x for x in methods if x not in skipped]
  notes = {}
  if 'clip_e' in ran and 'clip_o' not in ran:
    if 'clip_o' not in methods:
      try:
        train_scl.check_dataset('clip_o', m)
      except manifest.DatasetError:
        pass  # CLIP-O cannot run here: CLIP-E from scratch, noted below
      else:
        raise ValueError('clip_e starts from clip_o: list clip_o in methods '
                         'too')
    notes['clip_e'] = ('trained from scratch on item image <-> title: CLIP-O, '
                       'its usual start, cannot run on this dataset (no '
                       'generic captions)')
  return ran, skipped, notes


def run_one(config, method, seed, data_dir, workdir, clip_o=True):
  out = os.path.join(workdir, method, f'seed_{seed}')
  result = pretrain_eval.finished(out)
  if result:
    return result
  logging.info('pre-training %s seed %d -> %s', method, seed, out)
  return train_scl.run(
      method_config(config, method, seed, data_dir, workdir, clip_o), out)


def _slices(rows):
  """The SLICES that any of `rows` (dicts keyed by slice) has."""
  rows = [r for r in rows if r]
  return [s for s in SLICES if any(s in r for r in rows)]


# Where each part's metrics are in a run's pretrain_eval.json.
_PART_KEY = {'test': 'metrics', 'validation': 'validation_metrics'}


def summarise(results, part='test'):
  """{method: {slice: {metric: {mean, std, runs}} or None}} over the slices
  the runs' evaluations have, on one part of the held-out queries."""
  key = _PART_KEY[part]
  slices = _slices(r[key] for runs in results.values() for r in runs)
  table = {}
  for method, runs in results.items():
    table[method] = {}
    for s in slices:
      vals = [r[key][s] for r in runs if r[key].get(s)]
      table[method][s] = None if not vals else {
          m: seed_stats.cell([v[m] for v in vals]) for m in METRICS}
  return table


def item_recall(row):
  """recall@10 of a method's item table (what CTR reads) in a table row:
  the 'item' slice (co-clicks), else the mean over image and text queries
  (search); None without either."""
  row = row or {}
  cells = [row['item']] if row.get('item') else [
      row.get(s) for s in ('image', 'text')]
  vals = [c['recall@10']['mean'] for c in cells if c]
  return float(np.mean(vals)) if vals else None


def best_method(table, methods):
  """The first of `methods` with the highest item_recall in `table`: the
  validation part's table (VALIDATION_TABLE_FILE), so that the test part,
  which the report shows, played no part in the choice."""
  scores = [(item_recall(table.get(m)), -i, m) for i, m in enumerate(methods)]
  scored = [x for x in scores if x[0] is not None]
  return max(scored)[2] if scored else methods[0]


# The per-modality cells of `comparisons` ('by_modality'): metric -> k.
HIT_METRICS = {'accuracy@1': 1, 'recall@10': 10}


def _hits(ranks, weights, modality, k, protocol=''):
  """(hit rate at k, its value on each resample, queries asked) of one query
  modality, or None where no session asks it (the method has no such side).
  k = 1 is accuracy@1, k = 10 recall@10; resamples are the columns of
  `weights` ((S, R) multiplicities of sessions)."""
  rank = ranks[f'{modality}{protocol}_rank']
  asked = rank >= 0
  if not asked.any():
    return None
  hit = (asked & (rank < k)).astype(np.float64)
  with np.errstate(invalid='ignore', divide='ignore'):
    samples = (hit @ weights) / (asked.astype(np.float64) @ weights)
  return hit.sum() / asked.sum(), samples, int(asked.sum())


def _accuracy(ranks, weights, protocol=''):
  """accuracy@1, the mean over the query modalities a method has, on the
  held-out sessions and on each resample. `protocol`: '' (paper.md's pool)
  or '_catalogue'."""
  got = [h for h in (_hits(ranks, weights, m, 1, protocol)
                     for m in ('image', 'text')) if h]
  return (float(np.mean([h[0] for h in got])),
          np.mean([h[1] for h in got], axis=0))


def comparisons(queries, resamples, seed=0):
  """Paired bootstrap of accuracy@1 differences over held-out queries.

  The unit resampled is the held-out search session (its query and its
  purchase), drawn with replacement; one draw shared by every method and
  seed; seeds combined (mean over seeds of the per-seed difference).

  Args:
    queries: {method: [pretrain_eval_queries.npz rank arrays per seed]}, of
      one part of the held-out queries (load_queries: the test part, for
      the claims).
    resamples: the number of draws.

  Returns:
    {'<better>-<worse>': {'a', 'b' (the worse / better accuracy, mean over
    seeds), 'delta', 'ci', 'delta_pct', 'ci_pct', 'queries', 'resamples',
    'seeds', 'by_modality'}} for the PAIRS whose methods ran, and the same
    under '<better>-<worse>_catalogue' for search queries ranked against the
    catalogue. The headline cell is accuracy@1 averaged over the query
    modalities; 'by_modality' keeps them apart (an average can rest on one
    modality alone): {'image' | 'text': {'accuracy@1' | 'recall@10': {'a',
    'b', 'delta', 'ci', 'queries'}}, or None where either method lacks that
    side}. An interval is None with fewer than bootstrap.MIN_USERS held-out
    sessions (of that modality, in 'by_modality').
  """
  lengths = {len(r['image_rank']) for runs in queries.values() for r in runs}
  if len(lengths) > 1:
    raise ValueError(f'runs ranked different held-out sessions: {lengths}')
  if not lengths:
    return {}
  sessions = lengths.pop()
  weights = bootstrap.user_weights(sessions, resamples, seed)
  out = {}
  for protocol in ('', '_catalogue'):
    ranked = {m: runs for m, runs in queries.items()
              if all(f'image{protocol}_rank' in r for r in runs)}
    out.update(_compare(ranked, weights, sessions, resamples, protocol))
  return out


def _compare(queries, weights, sessions, resamples, protocol):
  acc = {m: [_accuracy(r, weights, protocol) for r in runs]
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
    out[f'{better}-{worse}{protocol}'] = {
        'a': float(pw.mean()), 'b': float(pb.mean()),
        'delta': float(np.mean(pb - pw)), 'ci': ci(np.mean(sb - sw, 0)),
        'delta_pct': float(np.mean(rel)), 'ci_pct': ci(np.mean(rel_s, 0)),
        'queries': sessions, 'resamples': resamples, 'seeds': len(pb),
        'by_modality': {m: _by_modality(queries[better], queries[worse],
                                        weights, m, protocol)
                        for m in ('image', 'text')}}
  return out


def _by_modality(better, worse, weights, modality, protocol):
  """{metric: difference cell} of one query modality (seeds paired and
  combined), or None where either method has no such side."""
  out = {}
  for metric, k in HIT_METRICS.items():
    hb = [_hits(r, weights, modality, k, protocol) for r in better]
    hw = [_hits(r, weights, modality, k, protocol) for r in worse]
    if not all(hb) or not all(hw):
      return None
    asked = min(h[2] for h in hb + hw)
    pb, pw = np.array([h[0] for h in hb]), np.array([h[0] for h in hw])
    diff = np.mean(np.stack([h[1] for h in hb]) -
                   np.stack([h[1] for h in hw]), 0)
    out[metric] = {'a': float(pw.mean()), 'b': float(pb.mean()),
                   'delta': float(np.mean(pb - pw)),
                   'ci': (None if asked < bootstrap.MIN_USERS else
                          bootstrap.interval(diff)),
                   'queries': asked}
  return out


def load_queries(workdir, methods, seeds, part='test'):
  """{method: [pretrain_eval_queries.npz rank arrays per seed]}, the rows
  of one part of the held-out queries."""
  out = {}
  for m in methods:
    out[m] = []
    for seed in range(seeds):
      path = os.path.join(workdir, m, f'seed_{seed}',
                          pretrain_eval.QUERIES_FILE)
      with np.load(path) as z:
        out[m].append(pretrain_eval.part_rows(z, part, path))
  return out


def _markdown_table(table, slices):
  head = '| method | ' + ' | '.join(f'{s} {m}' for s in slices
                                     for m in METRICS) + ' |'
  lines = [head, '|' + '---|' * (1 + len(slices) * len(METRICS))]
  for method, row in table.items():
    if not row:
      continue
    cells = []
    for s in slices:
      for m in METRICS:
        v = row.get(s)
        cells.append(seed_stats.text((v or {}).get(m), 3))
    lines.append(f'| {method} | ' + ' | '.join(cells) + ' |')
  return lines


# The validation table's columns in markdown: what best_method reads.
_VALIDATION_SLICES = ('image', 'text', 'item')


def markdown(table, skipped=None, notes=None, validation=None):
  """The test part's table (paper.md's protocol, then the catalogue
  ranking, if any), then `validation` (the validation part's table, its
  image / text / item slices), if given; `skipped` {method: why} and
  `notes` {method: note} follow, a line each."""
  rows = [r for r in table.values() if r]
  slices = _slices(rows)
  catalogue = [s for s in slices if s.endswith(('_catalogue', '_concept'))]
  lines = ['Test part of the held-out queries:', '']
  lines += _markdown_table(table, [s for s in slices if s not in catalogue])
  if catalogue:
    lines += ['', 'The same test queries ranked against the catalogue '
              '(`_concept`: a top-k item of the purchased item\'s concept):',
              ''] + _markdown_table(table, catalogue)
  if validation:
    shown = [s for s in _slices(r for r in validation.values() if r)
             if s in _VALIDATION_SLICES]
    lines += ['', 'Validation part (what the pipeline chooses on, e.g. the '
              'CTR stage\'s vectors where `vectors_method` cannot run):',
              ''] + _markdown_table(validation, shown)
  for method, note in (notes or {}).items():
    lines.append(f'\n{method}: {note}')
  for method, why in (skipped or {}).items():
    lines.append(f'\n{method}: not run ({why})')
  return '\n'.join(lines)


def _write_comparisons(config, workdir, methods):
  """The test part's comparisons (each cell says 'split': 'test')."""
  out = comparisons(load_queries(workdir, methods, config.seeds, 'test'),
                    config.bootstrap_resamples)
  out = files.json_safe({k: dict(c, split='test') for k, c in out.items()})
  files.write_json(os.path.join(workdir, COMPARISONS_FILE), out)
  return out


def load_comparisons(config, workdir, methods):
  """A finished sweep's COMPARISONS_FILE; recomputed from the runs' stored
  per-query ranks (and rewritten) when it is missing or predates the
  per-modality cells or the test part, so that a resumed pipeline's claims
  get them."""
  path = os.path.join(workdir, COMPARISONS_FILE)
  if os.path.exists(path):
    with open(path) as f:
      got = json.load(f)
    if all('by_modality' in c and c.get('split') == 'test'
           for c in got.values()):
      return got
  return _write_comparisons(config, workdir, methods)


def run(config, workdir):
  data_dir = resolver.data_dir(config.data_dir, config.scl.world, workdir)
  methods, skipped, notes = plan(
      [m for m in config.methods.split(',') if m], data_dir,
      config.scl.num_i2i_pairs)
  order = sorted(methods, key=lambda m: m == 'clip_e')  # after clip_o
  clip_o = 'clip_e' not in notes
  results = {m: [] for m in methods}
  for seed in range(config.seeds):
    for method in order:
      results[method].append(run_one(config, method, seed, data_dir, workdir,
                                     clip_o))
  table = summarise(results)
  validation = summarise(results, 'validation')
  # What was ranked: every run's result says (the same for all of them).
  ev = next((r['eval'] for runs in results.values() for r in runs), None)
  if ev is None:
    ev = pretrain_eval.eval_info(data_dir, builders.load_table(
        data_dir, manifest.ITEMS, 'catalogue'))
  files.write_json(os.path.join(workdir, PLAN_FILE), files.json_safe({
      'ran': methods, 'skipped': skipped, 'notes': notes, 'eval': ev}))
  _write_comparisons(config, workdir, methods)
  files.write_json(os.path.join(workdir, f'{VALIDATION_TABLE_FILE}.json'),
                   validation)
  files.write_json(os.path.join(workdir, f'{TABLE_FILE}.json'), table)
  text = markdown(table, skipped, notes, validation)
  files.write_text(os.path.join(workdir, f'{TABLE_FILE}.md'), text)
  print(text)
  return table
