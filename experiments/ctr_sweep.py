"""The CTR comparison: variants x seeds -> ctr_table.{json,md}.

Besides mean and std over seeds, every variant gets paired user-level
bootstrap intervals (mmrec/bootstrap.py, from the runs' predictions.npz, one
draw of test users shared by every variant and seed, seeds combined) under
`bootstrap`: vs. each ID baseline (the ID model, the ID-statistics LR) on
all rows, on the exposure tail and on new items, the tail's and new items'
delta minus the overall one, and the pairwise comparisons the paper's
claims need (PAIRS). baselines.py chooses, on the validation split, the ID
model's settings every variant trains with (`id_search`) and the baseline
the claims judge each metric's gains against (`baseline`).
"""

import os
import time

from absl import logging
import numpy as np

from experiments import baselines
from experiments import seed_stats
from mmrec import bootstrap
from mmrec import ctr_eval
from mmrec import files
from mmrec import id_stats
from mmrec import id_vectors
from mmrec import metrics
from mmrec import train_ctr
from mmrec import vector_table
from mmrec.data import builders
from mmrec.data import ctr_rows
from mmrec.data import manifest
from mmrec.data import resolver

TABLE_FILE = 'ctr_table'
HISTOGRAM_FILE = 'cosine_histogram.json'
METRICS = ('auc', 'gauc', 'logloss')
# Variants that read no item vectors: the ID model and the ID-statistics LR.
NO_VECTORS = ('id', 'id_stats')
# The ID baselines a multimodal gain is judged against (baselines.py):
# every variant gets bootstrap intervals against each.
BASELINES = baselines.BASELINES
# Variants without randomness (a deterministic LR fit): run once, reused for
# every seed so that deltas stay paired by seed.
DETERMINISTIC = ('id_stats',)
# `<variant>@ids` runs the variant on the ID-similarity control table
# (mmrec/id_vectors.py: cosine = matching category / shop IDs) instead of
# `vectors_path`, written once into <workdir>/ID_VECTORS_DIR;
# `<variant>@image` / `@text` on that modality's table beside `vectors_path`
# (vector_table.modality_path).
ID_SOURCE = 'ids'
ID_VECTORS_DIR = 'id_similarity'
# The exposure tail: the TAIL_GROUPS lowest of the 9 training-exposure
# groups (metrics.exposure_groups), a third of the test rows of known items.
# Not group 0 alone, and never compared with the head: a group of a few heavy
# items can hold a couple of items with identical inputs in every variant.
TAIL_GROUPS = 3
# The pairwise comparisons claims.claims tests: (better, worse) as paper.md
# says "SimTier and MAKE each clearly beat Vector and SimScore".
# Then the same-model controls: each SimTier / MAKE model on the content
# vectors against itself on the ID-similarity table (vectors of category /
# shop IDs), so that "content beats ID similarity" compares one model on two
# tables.
CONTROLS = ('simtier_make', 'simtier_official')
PAIRS = tuple((b, w) for b in ('simtier_paper', 'simtier_official', 'make')
              for w in ('vector', 'simscore')) + tuple(
                  (m, f'{m}@{ID_SOURCE}') for m in CONTROLS)


def split_variant(name):
  """'simtier_official@ids' -> ('simtier_official', 'ids'); 'id' -> ('id', '')."""
  variant, _, source = name.partition('@')
  sources = ('', ID_SOURCE) + vector_table.MODALITIES
  if source not in sources:
    raise ValueError(f'variant {name!r}: the part after "@" names the vector '
                     f'source and must be one of {sources[1:]} ({ID_SOURCE!r}: '
                     'the ID-similarity control; a modality: that table '
                     'beside vectors_path)')
  if source and variant in NO_VECTORS:
    raise ValueError(f'variant {name!r}: {variant!r} reads no vectors')
  return variant, source


def id_vectors_path(workdir):
  return os.path.join(workdir, ID_VECTORS_DIR, vector_table.FILE)


def variant_config(config, name, seed, data_dir, workdir):
  variant, source = split_variant(name)
  c = config.ctr.copy_and_resolve_references()
  c.variant, c.seed, c.data_dir = variant, seed, data_dir
  if variant in NO_VECTORS:
    c.vectors_path = ''
  elif source == ID_SOURCE:
    c.vectors_path = id_vectors_path(workdir)
  elif source:
    c.vectors_path = vector_table.modality_path(config.vectors_path, source)
  else:
    c.vectors_path = config.vectors_path
  stage_a = 'make_stage_a' + (f'_{source}' if source else '')
  c.make.stage_a_dir = os.path.join(workdir, stage_a, f'seed_{seed}')
  return c


def searched_config(config, id_search):
  """`config` with the ID settings a sweep chose on validation applied
  (`id_search`: baselines.search_id's record, ctr_table.json 'id_search';
  None: none). Every variant trains on them, the integration variants being
  the ID model plus a module; so must any later run compared with the
  sweep's (reproduce.py's extra stage)."""
  config = config.copy_and_resolve_references()
  chosen = (id_search or {}).get('chosen')
  if chosen:
    config.ctr.update(chosen)
  return config


def run_one(config, variant, seed, data_dir, workdir):
  out = os.path.join(workdir, variant, f'seed_{seed}')
  result = files.finished(out, ctr_eval.RESULT_FILES)
  if result:
    return result
  logging.info('CTR %s seed %d -> %s', variant, seed, out)
  return train_ctr.run(variant_config(config, variant, seed, data_dir,
                                      workdir), out)


def oracle_ceiling(data_dir):
  """AUC / GAUC / logloss of the true click probabilities on the test day;
  None for a dataset without an oracle (every real one)."""
  if not manifest.load(data_dir).oracle:
    return None
  test = builders.load_table(data_dir, 'mmrec_impressions', 'test')
  p = builders.load_oracle(data_dir)['impression_p']
  # Impressions are stored in day order: the test split is the tail.
  p = p[len(p) - len(test['label']):]
  return {'auc': metrics.auc(test['label'], p),
          'gauc': metrics.gauc(test['label'], p, ctr_rows.user_key(test)),
          'logloss': metrics.logloss(test['label'], p)}


def cosine_histogram(data_dir, vectors_path, num_impressions, bins,
                     chunk=2048):
  """Target-behaviour cosines of sampled test impressions, clicked vs. not:
  what SimTier sees, as counts over `bins` equal bins of [-1, 1]."""
  source = builders.data_source(data_dir, 'mmrec_impressions', 'test')
  n = min(num_impressions, len(source))
  idx = np.sort(np.random.default_rng(0).choice(len(source), n,
                                                replace=False))
  v, _ = vector_table.load_from(vectors_path, field='config.vectors_path')
  v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
  edges = np.linspace(-1, 1, bins + 1)
  counts = {True: np.zeros(bins, np.int64), False: np.zeros(bins, np.int64)}
  sums = {True: 0.0, False: 0.0}
  for lo in range(0, n, chunk):
    b = builders.read_rows(source, idx[lo:lo + chunk])
    length = b['seq_item'].shape[1]
    valid = np.arange(length)[None] >= length - b['seq_len'][:, None]
    cos = np.einsum('bd,btd->bt', v[b['item_id']], v[b['seq_item']])
    for clicked in (True, False):
      c = cos[valid & ((b['label'] > 0) == clicked)[:, None]]
      counts[clicked] += np.histogram(c, edges)[0]
      sums[clicked] += float(c.sum())
  out = {'impressions': int(n), 'edges': edges.tolist()}
  for clicked, name in ((True, 'clicked'), (False, 'not_clicked')):
    out[name] = counts[clicked].tolist()
    out[f'{name}_mean'] = sums[clicked] / max(int(counts[clicked].sum()), 1)
  return out


def _rel(x, ref):
  if x is None or ref is None or not np.isfinite(x) or not ref:
    return None
  return 100.0 * (x - ref) / ref


def slice_masks(groups):
  """The bootstrap's slices of the test rows from their exposure groups."""
  return {'all': None, 'tail': (groups >= 0) & (groups < TAIL_GROUPS),
          'new': groups == -1}


def intervals(predictions, resamples, seed=0):
  """Paired bootstrap comparisons of every variant's predictions.

  Args:
    predictions: {variant: [predictions.npz arrays per seed]}, 'id' included;
      every run on the same test rows in the same order.
    resamples: the number of user draws.

  Returns:
    {variant: {'vs_<baseline>': {'all'|'tail'|'new': bootstrap.difference,
    'tail_minus_all'|'new_minus_all': bootstrap.difference_of_differences}
    for each of the BASELINES that ran (id_stats: only vs. id), 'vs_<worse>':
    {'all': ...} for the PAIRS the variant wins}}.
  """
  ref = predictions['id'][0]
  for variant, runs in predictions.items():
    for i, p in enumerate(runs):
      for k in ('label', 'user_id', 'item_id'):
        if not np.array_equal(p[k], ref[k]):
          raise ValueError(f'{variant} seed {i} predicted other test rows '
                           f'than id seed 0 ({k} differs): not paired')
  # Users drawn by real user: user_id lumps every cold user into id 0.
  r = bootstrap.Resampler(ref['label'], ctr_rows.user_key(ref), resamples,
                          seed)
  masks = slice_masks(ref['exposure_group'])
  runs = {v: {name: [r.resample(p['logit'], m) for p in preds]
              for name, m in masks.items()}
          for v, preds in predictions.items()}
  out = {v: {} for v in runs if v != 'id'}
  for base in [b for b in BASELINES if b in runs]:
    for v in out:
      if v == base or (v in BASELINES and base != 'id'):
        continue
      c = {name: bootstrap.difference(runs[base][name], runs[v][name])
           for name in masks}
      for name in ('tail', 'new'):
        c[f'{name}_minus_all'] = bootstrap.difference_of_differences(
            runs[base][name], runs[v][name], runs[base]['all'],
            runs[v]['all'])
      out[v][f'vs_{base}'] = c
  for better, worse in PAIRS:
    if better in runs and worse in runs:
      out[better][f'vs_{worse}'] = {'all': bootstrap.difference(
          runs[worse]['all'], runs[better]['all'])}
  return out


def summarise(results, oracle=None, boot=None):
  """{variant: {metric: stats, delta_<metric>_pct: stats, slices: ...,
  bootstrap: ...}} (`boot`: from intervals)."""
  ids = {r['seed']: r for r in results.get('id', [])}
  table = {}
  for variant, runs in results.items():
    row = {}
    # A deterministic variant's seeds are one run, copied: one value, not a
    # spread of zero (its deltas vs. the ID model do vary by seed).
    own = runs[:1] if split_variant(variant)[0] in DETERMINISTIC else runs
    for m in METRICS:
      row[m] = seed_stats.cell([r.get(m) for r in own])
      if variant != 'id' and ids:
        row[f'delta_{m}_pct'] = seed_stats.cell([
            _rel(r.get(m), ids.get(r['seed'], {}).get(m)) for r in runs])
    slices = {}
    for name in sorted({s for r in runs for s in r.get('slices', {})}):
      cell = {}
      for m in ('auc', 'gauc'):
        cell[m] = seed_stats.cell([r['slices'].get(name, {}).get(m)
                                   for r in own])
        if variant != 'id' and ids:
          cell[f'delta_{m}_pct'] = seed_stats.cell([
              _rel(r['slices'].get(name, {}).get(m),
                   ids.get(r['seed'], {}).get('slices', {}).get(name, {}).get(
                       m)) for r in runs])
      # Test rows of the slice (the same rows for every run and variant).
      cell['count'] = next((r['slices'][name].get('count') for r in own
                            if name in r.get('slices', {})), None)
      slices[name] = cell
    row['slices'] = slices
    if boot and variant in boot:
      row['bootstrap'] = boot[variant]
    table[variant] = row
  out = {'variants': table}
  if oracle:
    out['oracle'] = oracle
  return out


def _ci(row, name, metric):
  """'+x.xx [+lo, +hi]' of the bootstrap's relative delta on a slice."""
  cell = (((row.get('bootstrap') or {}).get('vs_id') or {}).get(name) or {})
  if not cell:
    return 'n/a'
  d = cell[metric]
  if d['ci_pct'] is None:
    return f'{d["delta_pct"]:+.2f} (insufficient data)'
  lo, hi = d['ci_pct']
  return f'{d["delta_pct"]:+.2f} [{lo:+.2f}, {hi:+.2f}]'


def slice_support(variants, name):
  """(test rows, users with both classes or None, too few: bool) of a slice
  ('new', 'tail', 'all'), from the ID model's slice counts and any
  variant's bootstrap record; too few = under bootstrap.MIN_USERS users
  with both classes (then a delta on it is noise, not a finding)."""
  rows = None
  if name == 'new':
    rows = (((variants.get('id') or {}).get('slices') or {}).get('new') or
            {}).get('count')
  for row in variants.values():
    rec = (((row or {}).get('bootstrap') or {}).get('vs_id') or {}).get(name)
    if rec:
      return rows, rec['users_both'], rec['users_both'] < bootstrap.MIN_USERS
  return rows, None, False


def support_note(variants, name, label):
  """One sentence flagging a slice too thin for its deltas, or ''."""
  rows, users, few = slice_support(variants, name)
  if not few:
    return ''
  where = f'{rows} test rows, ' if rows is not None else ''
  return (f'{label}: {where}{users} users with both classes (fewer than '
          f'{bootstrap.MIN_USERS}): its deltas are printed but are noise, not '
          'a finding.')


def markdown(summary):
  v = summary['variants']
  fmt = seed_stats.text
  lines = ['| variant | AUC | GAUC | logloss | ΔAUC % | ΔAUC % 95% CI | '
           'ΔGAUC % | ΔGAUC % 95% CI | new-item GAUC | Δ new-item GAUC % | '
           f'tail (groups 0-{TAIL_GROUPS - 1}) ΔGAUC % 95% CI |',
           '|---|---|---|---|---|---|---|---|---|---|---|']
  thin = '†' if slice_support(v, 'new')[2] else ''
  for name, row in v.items():
    new = row['slices'].get('new', {})
    lines.append(
        f'| {name} | {fmt(row["auc"])} | {fmt(row["gauc"])} | '
        f'{fmt(row["logloss"])} | {fmt(row.get("delta_auc_pct"), 2)} | '
        f'{_ci(row, "all", "auc")} | {fmt(row.get("delta_gauc_pct"), 2)} | '
        f'{_ci(row, "all", "gauc")} | {fmt(new.get("gauc"))}{thin} | '
        f'{fmt(new.get("delta_gauc_pct"), 2)}{thin} | '
        f'{_ci(row, "tail", "gauc")} |')
  if 'oracle' in summary:
    o = summary['oracle']
    lines.append(f'| oracle (ceiling) | {o["auc"]:.4f} | {o["gauc"]:.4f} | '
                 f'{o["logloss"]:.4f} | | | | | | | |')
  lines += ['', 'CI: paired user-level bootstrap vs. the ID model '
            '(mmrec/bootstrap.py), seeds combined, 95% percentile interval. '
            'A single run prints its number alone (no spread measured).']
  if summary.get('baseline'):
    lines.append(baselines.text(summary['baseline']))
  if summary.get('id_search'):
    lines += ['', 'The ID model\'s settings, chosen on the validation split '
              '(every variant trains on them):', '',
              baselines.search_markdown(summary['id_search'])]
  for name, label in (('new', '† New items'),
                      ('tail', f'The tail (groups 0-{TAIL_GROUPS - 1})')):
    note = support_note(v, name, label)
    if note:
      lines.append(note)
  for name, why in summary.get('skipped', {}).items():
    lines.append(f'\n{name}: not run ({why})')
  return '\n'.join(lines)


def load_predictions(workdir, variants, seeds):
  """{variant: [predictions.npz arrays per seed]} of a sweep's runs."""
  return {v: [ctr_eval.load_predictions(os.path.join(
      workdir, v, f'seed_{0 if v in DETERMINISTIC else s}'))
              for s in range(seeds)] for v in variants}


def run(config, workdir):
  data_dir = resolver.data_dir(config.data_dir, config.ctr.world, workdir)
  m = manifest.load(data_dir)
  shipped = m.vectors
  if not config.vectors_path and shipped:
    # Real data may come with item vectors: every variant runs on them
    # without our pre-training.
    with config.unlocked():
      config.vectors_path = os.path.join(data_dir, shipped)
    logging.info('vectors_path: the dataset\'s own %s', config.vectors_path)
  variants = [v for v in config.variants.split(',') if v]
  skipped = {}
  if 'id_stats' in variants:
    need = id_stats.unmet_need(m, config.ctr.get('validation'))
    if need:
      logging.warning('skipping id_stats: %s', need)
      skipped['id_stats'] = need
      variants.remove('id_stats')
  def skip(source, why):
    for name in [v for v in variants if split_variant(v)[1] == source]:
      logging.warning('skipping %s: %s', name, why)
      skipped[name] = why
      variants.remove(name)

  parsed = [split_variant(v) for v in variants]
  if any(src == ID_SOURCE for _, src in parsed):
    items = builders.load_table(data_dir, 'mmrec_items', 'catalogue')
    weights, bag = id_vectors.fields_of(
        items, m.ctr.get('category_fields', ()), m.ctr.get('category_bag'))
    if not weights and not bag:
      skip(ID_SOURCE, f'the items table has none of the ID fields '
           f'{sorted(id_vectors.WEIGHTS)}, and the dataset declares no '
           'category fields or category bag, which the ID-similarity control '
           'is made of')
    elif not os.path.exists(id_vectors_path(workdir)):
      id_vectors.write(id_vectors_path(workdir), items, weights, bag)
  for modality in vector_table.MODALITIES:
    if any(src == modality for _, src in parsed):
      path = (vector_table.modality_path(config.vectors_path, modality)
              if config.vectors_path else '')
      if not path or not os.path.exists(path):
        skip(modality, f'no {modality} table beside config.vectors_path='
             f'{config.vectors_path!r} (pre-training runs and the embedding '
             f'job write {vector_table.file_name(modality)}; shipped vectors '
             'have none)')
  parsed = [split_variant(v) for v in variants]
  if (any(v not in NO_VECTORS and src != ID_SOURCE for v, src in parsed) and
      not config.vectors_path):
    raise ValueError('config.vectors_path must name an item-vector table '
                     '(item_vectors.npz) for the variants other than '
                     f'{", ".join(NO_VECTORS)}')
  searched, id_validation = (
      baselines.search_id(config, data_dir, workdir, run_one)
      if 'id' in variants else (None, None))
  if searched:
    config = searched_config(config, searched)
  results = {v: [] for v in variants}
  for seed in range(config.seeds):
    for variant in variants:
      if split_variant(variant)[0] in DETERMINISTIC and seed > 0:
        results[variant].append(dict(results[variant][0], seed=seed))
        continue
      results[variant].append(run_one(config, variant, seed, data_dir,
                                      workdir))
  boot = None
  if 'id' in variants:  # every interval is relative to the ID model
    t0 = time.time()
    boot = intervals(load_predictions(workdir, variants, config.seeds),
                     config.bootstrap_resamples)
    logging.info('bootstrap: %d resamples x %d variants x %d seeds in %.1fs',
                 config.bootstrap_resamples, len(variants), config.seeds,
                 time.time() - t0)
  summary = summarise(results, oracle_ceiling(data_dir), boot)
  baseline = baselines.select(
      config, variants, data_dir, workdir, results, run_one,
      {'id': id_validation} if id_validation else None)
  if baseline:
    summary['baseline'] = baseline
  if searched:
    summary['id_search'] = searched
  if skipped:
    summary['skipped'] = skipped
  files.write_json(os.path.join(workdir, f'{TABLE_FILE}.json'), summary)
  files.write_text(os.path.join(workdir, f'{TABLE_FILE}.md'), markdown(summary))
  if config.vectors_path:
    files.write_json(os.path.join(workdir, HISTOGRAM_FILE), cosine_histogram(
        data_dir, config.vectors_path, config.histogram_impressions,
        config.ctr.simtier_bins))
  print(markdown(summary))
  return summary
