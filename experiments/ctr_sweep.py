"""The CTR comparison: variants x seeds -> ctr_table.{json,md}."""

import json
import os

from absl import logging
import numpy as np

from mmrec import files
from mmrec import id_vectors
from mmrec import metrics
from mmrec import train_ctr
from mmrec import vector_table
from mmrec.data import builders
from mmrec.data import resolver

TABLE_FILE = 'ctr_table'
HISTOGRAM_FILE = 'cosine_histogram.json'
METRICS = ('auc', 'gauc', 'logloss')
# Variants that read no item vectors: the ID model and the ID-statistics LR.
NO_VECTORS = ('id', 'id_stats')
# Variants without randomness (a deterministic LR fit): run once, reused for
# every seed so that deltas stay paired by seed.
DETERMINISTIC = ('id_stats',)
# `<variant>@ids` runs the variant on the ID-similarity control table
# (mmrec/id_vectors.py: cosine = matching category / shop IDs) instead of
# `vectors_path`, written once into <workdir>/ID_VECTORS_DIR.
ID_SOURCE = 'ids'
ID_VECTORS_DIR = 'id_similarity'


def split_variant(name):
  """'simtier_official@ids' -> ('simtier_official', 'ids'); 'id' -> ('id', '')."""
  variant, _, source = name.partition('@')
  if source not in ('', ID_SOURCE):
    raise ValueError(f'variant {name!r}: the part after "@" names the vector '
                     f'source and must be {ID_SOURCE!r} (the ID-similarity '
                     'control)')
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
  else:
    c.vectors_path = (id_vectors_path(workdir) if source else
                      config.vectors_path)
  stage_a = 'make_stage_a' + (f'_{source}' if source else '')
  c.make.stage_a_dir = os.path.join(workdir, stage_a, f'seed_{seed}')
  return c


def run_one(config, variant, seed, data_dir, workdir):
  out = os.path.join(workdir, variant, f'seed_{seed}')
  done = os.path.join(out, train_ctr.EVAL_FILE)
  if os.path.exists(done):
    with open(done) as f:
      result = json.load(f)
    if result.get('complete'):
      return result
  logging.info('CTR %s seed %d -> %s', variant, seed, out)
  return train_ctr.run(variant_config(config, variant, seed, data_dir,
                                      workdir), out)


def oracle_ceiling(data_dir):
  """AUC / GAUC / logloss of the true click probabilities on the test day."""
  test = builders.load_table(data_dir, 'mmrec_impressions', 'test')
  p = builders.load_oracle(data_dir)['impression_p']
  # Impressions are stored in day order: the test split is the tail.
  p = p[len(p) - len(test['label']):]
  return {'auc': metrics.auc(test['label'], p),
          'gauc': metrics.gauc(test['label'], p, test['user_id']),
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


def _stats(values):
  values = [v for v in values if v is not None and np.isfinite(v)]
  if not values:
    return None
  return {'mean': float(np.mean(values)), 'std': float(np.std(values)),
          'runs': len(values)}


def _rel(x, ref):
  if x is None or ref is None or not np.isfinite(x) or not ref:
    return None
  return 100.0 * (x - ref) / ref


def summarise(results, oracle=None):
  """{variant: {metric: stats, delta_<metric>_pct: stats, slices: ...}}."""
  ids = {r['seed']: r for r in results.get('id', [])}
  table = {}
  for variant, runs in results.items():
    row = {}
    for m in METRICS:
      row[m] = _stats([r.get(m) for r in runs])
      if variant != 'id' and ids:
        row[f'delta_{m}_pct'] = _stats([
            _rel(r.get(m), ids.get(r['seed'], {}).get(m)) for r in runs])
    slices = {}
    for name in sorted({s for r in runs for s in r.get('slices', {})}):
      cell = {}
      for m in ('auc', 'gauc'):
        cell[m] = _stats([r['slices'].get(name, {}).get(m) for r in runs])
        if variant != 'id' and ids:
          cell[f'delta_{m}_pct'] = _stats([
              _rel(r['slices'].get(name, {}).get(m),
                   ids.get(r['seed'], {}).get('slices', {}).get(name, {}).get(
                       m)) for r in runs])
      slices[name] = cell
    row['slices'] = slices
    table[variant] = row
  out = {'variants': table}
  if oracle:
    out['oracle'] = oracle
  return out


def _fmt(s, digits=4):
  return 'n/a' if s is None else f'{s["mean"]:.{digits}f} ± {s["std"]:.{digits}f}'


def markdown(summary):
  v = summary['variants']
  lines = ['| variant | AUC | GAUC | logloss | ΔAUC % | ΔGAUC % | new-item GAUC | '
           'Δ new-item GAUC % | tail (group_0) ΔGAUC % |',
           '|---|---|---|---|---|---|---|---|---|']
  for name, row in v.items():
    new = row['slices'].get('new', {})
    tail = row['slices'].get('group_0', {})
    lines.append(
        f'| {name} | {_fmt(row["auc"])} | {_fmt(row["gauc"])} | '
        f'{_fmt(row["logloss"])} | {_fmt(row.get("delta_auc_pct"), 2)} | '
        f'{_fmt(row.get("delta_gauc_pct"), 2)} | {_fmt(new.get("gauc"))} | '
        f'{_fmt(new.get("delta_gauc_pct"), 2)} | '
        f'{_fmt(tail.get("delta_gauc_pct"), 2)} |')
  if 'oracle' in summary:
    o = summary['oracle']
    lines.append(f'| oracle (ceiling) | {o["auc"]:.4f} | {o["gauc"]:.4f} | '
                 f'{o["logloss"]:.4f} | | | | | |')
  return '\n'.join(lines)


def run(config, workdir):
  data_dir = resolver.data_dir(config.data_dir, config.ctr.world, workdir)
  variants = [v for v in config.variants.split(',') if v]
  parsed = [split_variant(v) for v in variants]
  if (any(v not in NO_VECTORS and not src for v, src in parsed) and
      not config.vectors_path):
    raise ValueError('config.vectors_path must name an item-vector table '
                     '(item_vectors.npz) for the variants other than '
                     f'{", ".join(NO_VECTORS)}')
  if any(src for _, src in parsed) and not os.path.exists(
      id_vectors_path(workdir)):
    id_vectors.write(id_vectors_path(workdir), builders.load_table(
        data_dir, 'mmrec_items', 'catalogue'))
  results = {v: [] for v in variants}
  for seed in range(config.seeds):
    for variant in variants:
      if split_variant(variant)[0] in DETERMINISTIC and seed > 0:  # the same fit every seed
        results[variant].append(dict(results[variant][0], seed=seed))
        continue
      results[variant].append(run_one(config, variant, seed, data_dir,
                                      workdir))
  summary = summarise(results, oracle_ceiling(data_dir))
  files.write_json(os.path.join(workdir, f'{TABLE_FILE}.json'), summary)
  files.write_text(os.path.join(workdir, f'{TABLE_FILE}.md'), markdown(summary))
  if config.vectors_path:
    files.write_json(os.path.join(workdir, HISTOGRAM_FILE), cosine_histogram(
        data_dir, config.vectors_path, config.histogram_impressions,
        config.ctr.simtier_bins))
  print(markdown(summary))
  return summary
