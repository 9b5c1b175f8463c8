"""Statistics of a world and its honesty checks (world.md).

The checks score the test days six ways: (i) the oracle's true p, (ii) an
ID-only estimate (each item's smoothed training CTR), (iii) a category-only
estimate (how often the target's leaf category occurs in the user's
behaviour sequence), (iv) random scores, (v) the ID-statistics floor
(`mmrec.id_stats`: a logistic regression on six ID statistics) and (vi) the
same LR with five features of the true concepts added (the mean and max
cosine of the target's hidden concept vector to the history's, and the
history's shares of the target's colour, pattern and style): what perfect
content vectors could add to the floor at most. A sound world has
(iv) < (ii) < (i), (iv) < (iii) < (i) and (iv) < (v) < (vi) < (i), and on new
items (ii) is no better than random (no ID history) while (iii) is.
"""

import numpy as np

from mmrec import metrics
from mmrec.data import id_features

CONCEPT_FEATURES = ('concept_cos_mean', 'concept_cos_max', 'colour_share',
                    'pattern_share', 'style_share')

PRIOR_STRENGTH = 20.0  # impressions' worth of the global CTR in (ii)


def _split(world):
  day = world.impressions['day']
  return day < world.first_test_day, day >= world.first_test_day


def statistics(world):
  """Sizes, CTR and the shape of the popularity distribution."""
  imp = world.impressions
  train, test = _split(world)
  counts = np.sort(np.bincount(imp['item_id'],
                               minlength=len(world.items['item_id'])))[::-1]
  n_items = len(counts)
  top1 = counts[:max(1, n_items // 100)].sum() / counts.sum()
  bottom50 = counts[n_items - n_items // 2:].sum() / counts.sum()
  new_item = world.items['launch_day'] >= world.first_test_day
  return {
      'users': int(len(world.users['user_id'])),
      'items': int(n_items),
      'new_items': int(new_item.sum()),
      'impressions': int(len(imp['label'])),
      'train_impressions': int(train.sum()),
      'test_impressions': int(test.sum()),
      'ctr': float(imp['label'].mean()),
      'train_ctr': float(imp['label'][train].mean()),
      'test_ctr': float(imp['label'][test].mean()),
      'top_1pct_item_impression_share': float(top1),
      'bottom_50pct_item_impression_share': float(bottom50),
      'test_new_item_impression_share': float(
          new_item[imp['item_id'][test]].mean()),
      'mean_seq_len': float(imp['seq_len'].mean()),
      'search_sessions': int(len(world.search['session_id'])),
      'held_out_search_sessions': int(world.search['held_out'].sum()),
      'captions': int(len(world.captions['caption'])),
  }


def id_only_scores(world):
  """(ii) Smoothed per-item CTR on the training days, for test impressions."""
  imp = world.impressions
  train, test = _split(world)
  n = len(world.items['item_id'])
  clicks = np.bincount(imp['item_id'][train], imp['label'][train], minlength=n)
  shows = np.bincount(imp['item_id'][train], minlength=n)
  prior = imp['label'][train].mean()
  ctr = (clicks + PRIOR_STRENGTH * prior) / (shows + PRIOR_STRENGTH)
  return ctr[imp['item_id'][test]]


def category_only_scores(world):
  """(iii) Share of the user's behaviour sequence in the target's leaf."""
  imp = world.impressions
  _, test = _split(world)
  cat = world.items['category']
  seq = imp['seq_item'][test]
  seq_len = imp['seq_len'][test]
  valid = np.arange(seq.shape[1])[None] >= seq.shape[1] - seq_len[:, None]
  target = cat[imp['item_id'][test]]
  same = (cat[seq] == target[:, None]) & valid
  return same.sum(1) / np.maximum(seq_len, 1)


def concept_features(world, rows):
  """(N, 5) features of the true concepts (CONCEPT_FEATURES order)."""
  tax, concept = world.taxonomy, world.oracle['item_concept']
  seq, seq_len = rows['seq_item'], rows['seq_len']
  valid = np.arange(seq.shape[1])[None] >= seq.shape[1] - seq_len[:, None]
  denom = np.maximum(seq_len, 1)
  target, hist = concept[rows['item_id']], concept[seq]
  # Through the (K, K) concept cosines: an (N, L, D) gather of concept
  # vectors over every training row would take gigabytes on the default world.
  sim = tax.concept_vec @ tax.concept_vec.T
  cos = sim[target[:, None], hist]
  out = [np.where(valid, cos, 0).sum(1) / denom,
         np.where(valid, cos, -1).max(1) * (seq_len > 0)]
  for attr in (tax.concept_colour, tax.concept_pattern, tax.concept_style):
    out.append(((attr[hist] == attr[target][:, None]) & valid).sum(1) / denom)
  return np.stack(out, 1)


def id_stats_scores(world, seed=0):
  """(v) and (vi): the ID-statistics LR without and with concept features,
  fit on every training day (id_stats' protocol), scores of the test
  days."""
  imp = world.impressions
  train, test = _split(world)
  rows = {k: imp[k][train] for k in imp}
  test_rows = {k: imp[k][test] for k in imp}
  (x_fit, y_fit), x_test = id_features.fit_and_test_features(
      rows, test_rows, world.items, len(world.items['item_id']),
      len(world.users['user_id']))
  floor = id_features.fit(x_fit, y_fit, seed).logit(x_test)
  x_fit = np.concatenate([x_fit, concept_features(world, rows)], 1)
  x_test = np.concatenate([x_test, concept_features(world, test_rows)], 1)
  return floor, id_features.fit(x_fit, y_fit, seed).logit(x_test)


def baseline_aucs(world, seed=0):
  """AUC of the six scorers on the test days, overall and on new items."""
  imp = world.impressions
  _, test = _split(world)
  labels = imp['label'][test]
  new = world.items['launch_day'][imp['item_id'][test]] >= world.first_test_day
  floor, with_content = id_stats_scores(world, seed)
  scores = {
      'oracle': world.oracle['impression_p'][test],
      'id_only': id_only_scores(world),
      'category_only': category_only_scores(world),
      'random': np.random.default_rng(seed).random(len(labels)),
      'id_stats': floor,
      'id_stats_content': with_content,
  }
  return {
      name: {'all': metrics.auc(labels, s),
             'new_items': metrics.auc(labels[new], s[new])}
      for name, s in scores.items()
  }


def check(aucs):
  """The orderings world.md requires; returns a list of violations."""
  a = {k: v['all'] for k, v in aucs.items()}
  nw = {k: v['new_items'] for k, v in aucs.items()}
  problems = []
  for lo, hi in (('random', 'id_only'), ('id_only', 'oracle'),
                 ('random', 'category_only'), ('category_only', 'oracle'),
                 ('random', 'id_stats'), ('id_stats', 'id_stats_content'),
                 ('id_stats_content', 'oracle')):
    if not a[lo] < a[hi]:
      problems.append(f'AUC {lo} {a[lo]:.4f} is not below {hi} {a[hi]:.4f}')
  if not nw['id_only'] <= 0.5 + 1e-9:
    problems.append(f'new items: ID-only AUC {nw["id_only"]:.4f} beats random')
  if not nw['category_only'] > nw['random']:
    problems.append('new items: content-only AUC '
                    f'{nw["category_only"]:.4f} does not beat random')
  return problems


def format_report(stats, aucs):
  """A plain-text summary: statistics, then the honesty table."""
  lines = ['World statistics']
  for k, v in stats.items():
    lines.append(f'  {k:38s} {v:.4f}' if isinstance(v, float) else
                 f'  {k:38s} {v}')
  lines += ['', 'Honesty check: test-day AUC by scorer',
            f'  {"scorer":26s} {"all":>8s} {"new items":>10s}']
  names = {'oracle': '(i) oracle p', 'id_only': '(ii) ID-only (item CTR)',
           'category_only': '(iii) category share', 'random': '(iv) random',
           'id_stats': '(v) ID statistics LR',
           'id_stats_content': '(vi) (v) + true concepts'}
  for k, label in names.items():
    lines.append(f'  {label:26s} {aucs[k]["all"]:8.4f} '
                 f'{aucs[k]["new_items"]:10.4f}')
  problems = check(aucs)
  lines.append('  orderings: ' + ('OK' if not problems else
                                  'VIOLATED: ' + '; '.join(problems)))
  return '\n'.join(lines)
