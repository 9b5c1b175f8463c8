"""ID statistics and their logistic regression (numpy + sklearn; no model code).

The floor every CTR table shows (world.md: "a competent ID model"): no
content, no embeddings, only counts a production system keeps anyway.
Features of an impression, its counts computed from training impressions
that never include its own label (see the protocol below; the row's own
behaviour sequence is its earlier history):

  item_ctr              (clicks + K p0) / (impressions + K) of the item,
                        p0 the global CTR, K = PRIOR_IMPRESSIONS: a Beta
                        prior worth K impressions at the global CTR, so an
                        item never shown (a new item) gets p0
  user_ctr              the same for the user
  leaf_share            share of the behaviour sequence in the target's leaf
                        category (0 without history); leaf and top are the
                        manifest's ctr.category_fields (`category_tables`);
                        over a category bag (genres): the share with the
                        target's exact value set
  top_share             the same for its top category; over a bag: the
                        share sharing any value with the target
  log_item_impressions  log(1 + the item's impressions)
  log_history_length    log(1 + seq_len)

Protocol (no leakage): the LR is fit on every training row (all training
days; with a validation split, the days before it). A fit row's label-derived
statistics (item_ctr, user_ctr, log_item_impressions) are out of fold: the
rows are split into FOLDS random folds and a row's counts come from the other
folds, scaled by FOLDS / (FOLDS - 1) to the size of the whole training set,
so no row sees its own label. The test split is scored with counts from all
training rows (test labels are never counted). Features are standardised
with the fit rows' mean and std. A fit set below SMALL_FIT_ROWS rows or
SMALL_FIT_USERS users is warned about (`fit_set_warning`): an LR on a few
hundred rows is no floor. The CTR variant 'id_stats' (id_stats.py) and the
world's honesty checks (honesty.py) use them.

Shape letters: N impressions, L behaviour-sequence length, F features.
"""

import dataclasses

import numpy as np

FEATURES = ('item_ctr', 'user_ctr', 'leaf_share', 'top_share',
            'log_item_impressions', 'log_history_length')
# Prior strength K of the smoothed CTRs, in impressions at the global CTR:
# at a 3-6% CTR, 20 impressions are ~1 prior click, so an item's own clicks
# dominate after a few dozen impressions (as data/honesty.py's ID scorer).
PRIOR_IMPRESSIONS = 20.0
# Out-of-fold statistics of the fit rows: 5 folds, each row's counts from
# the other 80% of the training rows.
FOLDS = 5
# Below these, the fit set is too small to be the floor it claims to be
# (issue 22 found 368 rows from 9 users on a single MovieLens day).
SMALL_FIT_ROWS = 2000
SMALL_FIT_USERS = 50
# Inverse L2 strength of the LR; with six standardised features and
# thousands of rows it barely matters (sklearn's default).
LR_C = 1.0


@dataclasses.dataclass(frozen=True)
class Counts:
  """Clicks and impressions per item and per user over some days."""
  item_clicks: np.ndarray  # (num_items,)
  item_shows: np.ndarray
  user_clicks: np.ndarray  # (num_users,)
  user_shows: np.ndarray

  @property
  def global_ctr(self):
    shows = self.item_shows.sum()
    if not shows:
      raise ValueError('no impressions to compute ID statistics from: the '
                       'features of a day need earlier days')
    return self.item_clicks.sum() / shows


def counts(rows, num_items, num_users):
  """`Counts` of the impressions `rows` (user_id, item_id, label)."""
  label = rows['label'].astype(np.float64)
  return Counts(
      np.bincount(rows['item_id'], label, minlength=num_items),
      np.bincount(rows['item_id'], minlength=num_items).astype(np.float64),
      np.bincount(rows['user_id'], label, minlength=num_users),
      np.bincount(rows['user_id'], minlength=num_users).astype(np.float64))


def smoothed_ctr(clicks, shows, prior_ctr, strength=PRIOR_IMPRESSIONS):
  return (clicks + strength * prior_ctr) / (shows + strength)


def category_shares(rows, category, top_category):
  """(N,) shares of each row's history in its target's leaf / top category."""
  seq, seq_len = rows['seq_item'], rows['seq_len']
  length = seq.shape[1]
  valid = np.arange(length)[None] >= length - seq_len[:, None]  # (N, L)
  denom = np.maximum(seq_len, 1)
  out = []
  for table in (category, top_category):
    same = (table[seq] == table[rows['item_id']][:, None]) & valid
    out.append(same.sum(1) / denom)
  return tuple(out)


def bag_shares(rows, bag, chunk=4096):
  """(N,) shares of each row's history with the target's exact value set
  (the 'leaf') and sharing any value with it (the 'top'), over a bag table
  (num_items, K) with 0 = empty slot: a multi-valued field (MovieLens
  genres) standing in for a category. Rows in chunks: (chunk, L, K, K)."""
  bag = np.sort(np.asarray(bag), axis=1)  # a value set, in one order
  seq, seq_len = rows['seq_item'], rows['seq_len']
  length = seq.shape[1]
  same, anyv = (np.zeros(len(seq_len)) for _ in range(2))
  for lo in range(0, len(seq_len), chunk):
    s, n = seq[lo:lo + chunk], seq_len[lo:lo + chunk]
    valid = np.arange(length)[None] >= length - n[:, None]  # (n, L)
    target = bag[rows['item_id'][lo:lo + chunk]][:, None]  # (n, 1, K)
    hist = bag[s]  # (n, L, K)
    shared = ((hist[..., :, None] == target[..., None, :]) &
              (hist > 0)[..., :, None]).any((-1, -2))
    exact = (hist == target).all(-1) & (target > 0).any(-1)
    denom = np.maximum(n, 1)
    same[lo:lo + chunk] = (exact & valid).sum(1) / denom
    anyv[lo:lo + chunk] = (shared & valid).sum(1) / denom
  return same, anyv


def category_tables(items, fields, num_items, bag=None):
  """{'category', 'top_category'} of the dataset's declared [leaf, top]
  fields, or {'bag'} of its category bag (manifest ctr.category_bag) when it
  declares no field (`bag_shares`).

  A dataset declaring one category field uses it for both shares; one
  declaring neither fields nor a bag gets a single constant category, so
  both shares are 1 for every row with a history (the features then carry
  no category signal).
  """
  fields = list(fields)
  if not fields and bag:
    return {'bag': np.asarray(items[bag])}
  if not fields:
    zero = np.zeros(num_items, np.int32)
    return {'category': zero, 'top_category': zero}
  return {'category': items[fields[0]], 'top_category': items[fields[-1]]}


def features(rows, stats, items):
  """(N, F) features (order FEATURES) of `rows` given the earlier `stats`."""
  p0 = stats.global_ctr
  item, user = rows['item_id'], rows['user_id']
  leaf, top = (bag_shares(rows, items['bag']) if 'bag' in items else
               category_shares(rows, items['category'],
                               items['top_category']))
  return np.stack([
      smoothed_ctr(stats.item_clicks[item], stats.item_shows[item], p0),
      smoothed_ctr(stats.user_clicks[user], stats.user_shows[user], p0),
      leaf, top,
      np.log1p(stats.item_shows[item]),
      np.log1p(rows['seq_len'].astype(np.float64)),
  ], axis=1)


def take(rows, mask):
  return {k: v[mask] for k, v in rows.items()}


def folds(n, num_folds=FOLDS, seed=0):
  """(n,) fold of each row: a fixed random permutation cut into equal parts."""
  out = np.empty(n, np.int64)
  out[np.random.default_rng(seed).permutation(n)] = np.arange(n) % num_folds
  return out


def out_of_fold_features(rows, items, num_items, num_users,
                         num_folds=FOLDS):
  """(N, F) features of `rows`, each row's counts from the other folds."""
  n = len(rows['label'])
  if n < 2 * num_folds:
    raise ValueError(f'id_stats needs at least {2 * num_folds} training rows '
                     f'for {num_folds}-fold statistics; got {n}')
  fold = folds(n, num_folds)
  scale = num_folds / (num_folds - 1)
  every = counts(rows, num_items, num_users)
  x = np.empty((n, len(FEATURES)))
  for f in range(num_folds):
    mine = fold == f
    held = counts(take(rows, mine), num_items, num_users)
    # All rows minus this fold's, scaled to the whole training set's size.
    other = Counts(*(scale * (getattr(every, k.name) - getattr(held, k.name))
                     for k in dataclasses.fields(Counts)))
    x[mine] = features(take(rows, mine), other, items)
  return x


def fit_and_test_features(train, test, items, num_items, num_users):
  """((x_fit, y_fit), x_test): the protocol of the module docstring."""
  if not len(train['label']):
    raise ValueError('id_stats needs training impressions to fit on')
  return ((out_of_fold_features(train, items, num_items, num_users),
           train['label']),
          features(test, counts(train, num_items, num_users), items))


def fit_set_warning(train):
  """Why the fit set is too small to trust as a floor, or None."""
  rows, users = len(train['label']), len(np.unique(train['user_id']))
  if rows >= SMALL_FIT_ROWS and users >= SMALL_FIT_USERS:
    return None
  return (f'id_stats fits on {rows} rows from {users} users (fewer than '
          f'{SMALL_FIT_ROWS} rows or {SMALL_FIT_USERS} users): its '
          'coefficients are noisy and it is a weak floor')


@dataclasses.dataclass(frozen=True)
class Model:
  """A fitted LR over features standardised with the fit rows' statistics."""
  mean: np.ndarray  # (F,)
  std: np.ndarray  # (F,)
  lr: 'sklearn.linear_model.LogisticRegression'

  def logit(self, x):
    return self.lr.decision_function((x - self.mean) / self.std)

  def coefficients(self):
    """{feature: weight on the standardised feature} plus the bias."""
    out = dict(zip(FEATURES, map(float, self.lr.coef_[0])))
    out['bias'] = float(self.lr.intercept_[0])
    return out


def fit(x, y, seed=0):
  """The LR on (N, F) features `x`, standardised with their own mean / std."""
  mean = x.mean(0)
  std = x.std(0)
  std = np.where(std > 0, std, 1.0)  # a constant feature stays 0
  # Imported here: sklearn costs ~1 CPU-second to import, and every CTR
  # process imports this module, most without fitting id_stats.
  from sklearn import linear_model  # pylint: disable=g-import-not-at-top
  lr = linear_model.LogisticRegression(C=LR_C, max_iter=1000,
                                       random_state=seed)
  lr.fit((x - mean) / std, y)
  return Model(mean, std, lr)
