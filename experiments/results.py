"""results.json: the reproduction's results, assembled from its stages' files.

`build_results` joins the dataset's statistics, the pre-training table, the
CTR sweep's summary, the content-knob curve and the claims (claims.py);
`dataset_statistics` stands in for the world's statistics on a converted
dataset; `curve_point` is one entry of the content curve.

results.json has nine top-level keys: world (statistics, honesty table,
oracle ceiling; for a dataset other than the world its manifest's
statistics, no honesty table, a null oracle), pretraining ({method that ran:
{image|text|image_new|text_new|...: {accuracy@1|recall@10: {mean, std,
runs}} or null}}: the test part of the held-out queries, what the claims
read), pretraining_validation (the same on the validation part: what the
pipeline chose on, e.g. the CTR vectors' method), ctr ({variant that ran: {auc, gauc, logloss, delta_*_pct:
{mean, std, runs}, slices: {...}}}), content_curve (a list by
content_weight of {variants: {auc, gauc}, gain_{auc,gauc}_pct,
best_id_{auc,gauc}}: see `curve_point`), claims (a list of {id, claim,
metric, measured, paper, criterion, interval, ratio_to_paper, verdict,
statement, reproduced, testable}: see claims.py), ctr_baseline (the ID
baseline per metric the CTR claims are judged against, chosen on validation:
baselines.select; null without the ID model), flags (a list of
{id, text}: inputs too weak for their numbers, flags.py) and data ({dataset,
source, data_dir, pretraining: {eval, ran, skipped, notes}, ctr_vectors:
{source, method, path, why}, ctr_skipped: {variant: why}, skipped: {section:
why}}). Non-finite numbers are written as null.
"""

from experiments import claims as claims_lib
from experiments import flags
from mmrec import files
from mmrec.data import manifest

RESULTS_FILE = 'results.json'


def curve_point(content_weight, summary):
  """The multimodal gain at one knob value: SimTier + MAKE over the best ID
  baseline (the ID model or the ID-statistics LR, whichever is higher on
  the metric on the validation split: the sweep's `baseline`; a sweep
  without one, on the test day: 'best_id_<m>_split' says which), relative
  %, from a ctr_sweep summary, with the paired bootstrap's 95% interval
  where the sweep has it."""
  v = summary['variants']
  point = {'content_weight': content_weight,
           'variants': {k: {m: claims_lib.mean(row.get(m))
                            for m in ('auc', 'gauc')}
                        for k, row in v.items()}}
  boot = (v.get('simtier_make') or {}).get('bootstrap') or {}
  for m in ('auc', 'gauc'):
    base = [(claims_lib.mean(v[k].get(m)), k) for k in ('id', 'id_stats')
            if k in v]
    base = [b for b in base if b[0] is not None]
    mm = claims_lib.mean((v.get('simtier_make') or {}).get(m))
    if not base or mm is None:
      continue
    ref, name = max(base)
    split = 'test'
    chosen = (summary.get('baseline') or {}).get(m) or {}
    if chosen.get('split') == 'validation' and chosen['variant'] in v:
      name, split = chosen['variant'], 'validation'
      ref = claims_lib.mean(v[name].get(m))
    if not ref:
      continue
    point[f'best_id_{m}'] = name
    point[f'best_id_{m}_split'] = split
    point[f'gain_{m}_pct'] = 100.0 * (mm - ref) / ref
    cell = ((boot.get(f'vs_{name}') or {}).get('all') or {}).get(m) or {}
    point[f'gain_{m}_ci_pct'] = cell.get('ci_pct')
  return point


def dataset_statistics(m):
  """A converted dataset's statistics for the report, from its manifest."""
  imp = m.tables.get(manifest.IMPRESSIONS, {}).get('splits', {})
  search = m.tables.get(manifest.SEARCH, {}).get('splits', {})
  return {'dataset': m.name, 'source': m.source, 'users': m.num_users,
          'items': m.num_items, 'days': m.num_days,
          'first_test_day': m.first_test_day,
          'validation_days': m.validation_days,
          'train_impressions': imp.get('train'),
          'test_impressions': imp.get('test'),
          'item_images': m.has(manifest.ITEMS, 'image'),
          'item_titles': m.has(manifest.ITEMS, 'title'),
          'search_sessions': sum(v or 0 for v in search.values()),
          'shipped_vectors': m.vectors}


def build_results(world_summary, pretrain_table, ctr_summary, methods,
                  variants, content_curve=(), pretrain_comparisons=None,
                  data=None, pretrain_validation=None):
  """results.json; `data`: the dataset, the pre-training plan, the CTR
  vectors and what did not run (see reproduce.run); `pretrain_table` and
  `pretrain_validation`: the sweep's tables of the test and the validation
  part."""
  world = {'statistics': world_summary['statistics'],
           'honesty_auc': world_summary['honesty_auc'],
           'honesty_ok': (not world_summary['honesty_problems']
                          if world_summary['honesty_auc'] else None),
           'honesty_problems': world_summary['honesty_problems'],
           'oracle_ceiling': ctr_summary.get('oracle')}
  pretraining = {m: pretrain_table[m] for m in methods if m in pretrain_table}
  validation = pretrain_validation or {}
  pretraining_validation = {m: validation[m] for m in methods
                            if m in validation}
  ctr = {v: ctr_summary['variants'][v] for v in variants
         if v in ctr_summary['variants']}
  data = data or {}
  not_run = dict((data.get('pretraining') or {}).get('skipped') or {})
  not_run.update(data.get('ctr_skipped') or {})
  for name in sorted(claims_lib.NEEDED - set(methods) - set(variants)):
    # Left out by the configuration (make demo runs a subset), not by the
    # dataset: its claims are not testable here, and say so.
    not_run.setdefault(name, 'not in this configuration\'s '
                       'pretrain.methods / ctr.variants; paper.py:full runs '
                       'it')
  baseline = ctr_summary.get('baseline')
  return files.json_safe({
      'world': world, 'pretraining': pretraining,
      'pretraining_validation': pretraining_validation, 'ctr': ctr,
      'content_curve': list(content_curve),
      'claims': claims_lib.claims(pretraining, ctr, pretrain_comparisons,
                                  not_run, baseline),
      'ctr_baseline': baseline,
      'flags': flags.flags(pretraining, ctr, data, baseline),
      'data': data})
