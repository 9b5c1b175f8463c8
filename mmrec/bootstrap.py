"""Paired, user-level bootstrap of AUC / GAUC differences between CTR models.

Two models scored the same test rows (predictions.npz, see ctr_eval). Is B
better than A, and by how much? The rows are not independent (a user's
impressions share the user), so the unit resampled is the user: each of R
resamples draws U users with replacement out of the U users of the test day,
and each drawn user brings all of their rows. The draw is *paired*: one draw
is shared by both models and by every seed, so the resampled difference sees
only the noise of the test population, not that of a second draw. Seeds are
combined inside each resample (the mean over seeds of the per-seed
difference). The interval is over test users only: training seeds are
averaged, not resampled (two or three seeds are too few to resample), so
the seed spread is reported beside it (std over seeds in ctr_table).
A user is a real person (predictions' `user_key`, data/ctr_rows.user_key),
never an embedding id: a converted dataset's user_id is 0 for every user
cold in training, which would resample them all as one user.

Exact and fast, without materialising a single resampled table:
- GAUC: a user's AUC does not change when their rows are copied k times
  (every pair is copied k² times), and their weight n_u becomes k·n_u. So
  GAUC of a resample = Σ_u k_u n_u AUC_u / Σ_u k_u n_u over users with both
  classes: one matrix-vector product per resample.
- AUC: the AUC of the resampled rows is the AUC with row weight k_u of the
  row's user. With the negatives sorted once by score, what each positive
  needs is the negatives' weight strictly below it and tied with it (counted
  as half): cumulative sums of the negatives' weight at the positives' cut
  points, i.e. per-(bin between cuts, user) counts, fixed, times the
  resample's user weights: one sparse product for a chunk of resamples.
  Every sum is of integers below 2^53 in float64, so the result is exact.

Shape letters: N rows, U users, R resamples, S seeds.
"""

import dataclasses

import numpy as np
from scipy import sparse

from mmrec import metrics

RESAMPLES = 1000
CONFIDENCE = 0.95
# A slice (or a whole test day) where fewer users than this have both a
# click and a non-click is 'insufficient data' (no interval): GAUC averages
# over those users only, and a percentile bootstrap of a mean over fewer
# than ~30 resampled units has unreliable 95% coverage (the statistic is far
# from normal; the usual n >= 30 rule of thumb).
MIN_USERS = 30
# Elements of the (resamples x users) work arrays held at once (~128 MB of
# float64): bounds memory for any test day.
_CHUNK_ELEMENTS = 1 << 24
# Resamples drawn per generator call, fixed so that the draw for a seed does
# not depend on memory settings.
_DRAW_CHUNK = 64


def user_weights(num_users, resamples=RESAMPLES, seed=0):
  """(U, R) multiplicities: how often each user is drawn in each resample.

  Each column is a draw of num_users users with replacement (a column sums
  to num_users). Deterministic given (num_users, resamples, seed). Users
  along rows: every use reads a user's weights in all resamples at once.
  """
  if num_users < 1 or resamples < 1:
    raise ValueError(f'need users and resamples, got {num_users} users and '
                     f'{resamples} resamples')
  rng = np.random.default_rng(seed)
  # A multiplicity is at most num_users: the smallest dtype holding that.
  dtype = np.min_scalar_type(num_users)
  out = np.empty((num_users, resamples), dtype)
  for lo in range(0, resamples, _DRAW_CHUNK):
    r = min(_DRAW_CHUNK, resamples - lo)
    draw = rng.integers(0, num_users, (r, num_users))
    draw += np.arange(r)[:, None] * num_users
    out[:, lo:lo + r] = np.bincount(
        draw.ravel(), minlength=r * num_users).reshape(r, num_users).T
  return out


def _chunks(resamples, width):
  step = max(1, _CHUNK_ELEMENTS // max(width, 1))
  for lo in range(0, resamples, step):
    yield slice(lo, min(lo + step, resamples))


def resampled_auc(labels, scores, row_user, weights):
  """(R,) AUC of each resample: rows weighted by their user's multiplicity.

  Args:
    labels: (N,) 0/1.
    scores: (N,) finite scores.
    row_user: (N,) int user index in [0, U) of each row.
    weights: (U, R) multiplicities (user_weights).

  Returns:
    (R,) float64, ties counted as half a correctly ordered pair; nan for a
    resample without both classes. Exact: every sum is of integers below
    2^53 in float64.
  """
  y = np.asarray(labels).astype(bool)
  s = np.asarray(scores)
  u = np.asarray(row_user)
  num_users, resamples = weights.shape
  neg_order = np.argsort(s[~y], kind='stable')
  neg_scores, neg_user = s[~y][neg_order], u[~y][neg_order]
  pos_scores, pos_user = s[y], u[y]
  # Negatives strictly below / at or below each positive's score: positions
  # in the sorted negatives. Only the weight below these cut positions is
  # needed, so the negatives are summed per (bin between cuts, user) once,
  # and each resample's weight per bin is a sparse product, not a
  # cumulative sum over every negative row.
  below = np.searchsorted(neg_scores, pos_scores, side='left')
  at_or_below = np.searchsorted(neg_scores, pos_scores, side='right')
  cuts = np.unique(np.concatenate([[0], below, at_or_below]))
  used = cuts[-1]  # negatives above every positive do not count
  bins = sparse.csr_matrix(
      (np.ones(used), (np.searchsorted(cuts, np.arange(used), side='right')
                       - 1, neg_user[:used])),
      shape=(len(cuts), num_users))
  lo, hi = np.searchsorted(cuts, below), np.searchsorted(cuts, at_or_below)
  pos_per_user = np.bincount(pos_user, minlength=num_users)
  neg_per_user = np.bincount(neg_user, minlength=num_users)
  out = np.full(resamples, np.nan)
  for sl in _chunks(resamples, max(len(cuts), len(pos_user), num_users)):
    w = weights[:, sl].astype(np.float64)  # (U, r)
    per_bin = bins @ w  # (K, r)
    cum = np.zeros_like(per_bin)
    np.cumsum(per_bin[:-1], axis=0, out=cum[1:])  # weight below each cut
    # 2·(weight strictly below + ½ weight tied) = below + at_or_below.
    num = np.einsum('pr,pr->r', cum[lo] + cum[hi], w[pos_user])
    den = 2.0 * (pos_per_user @ w) * (neg_per_user @ w)
    with np.errstate(invalid='ignore', divide='ignore'):
      out[sl] = np.where(den > 0, num / den, np.nan)
  return out


def resampled_gauc(labels, scores, row_user, weights):
  """(R,) GAUC (metrics.gauc) of each resample; nan where no drawn user has
  both classes. Arguments as resampled_auc."""
  users, pos, neg, num = metrics.group_auc_terms(labels, scores, row_user)
  valid = (pos > 0) & (neg > 0)
  users, pos, neg, num = users[valid], pos[valid], neg[valid], num[valid]
  n = (pos + neg).astype(np.float64)
  n_auc = n * num / (pos.astype(np.float64) * neg)
  resamples = weights.shape[1]
  out = np.full(resamples, np.nan)
  for sl in _chunks(resamples, len(users)):
    w = weights[users, sl].astype(np.float64)  # (users with both, r)
    den = n @ w
    with np.errstate(invalid='ignore', divide='ignore'):
      out[sl] = np.where(den > 0, (n_auc @ w) / den, np.nan)
  return out


def users_with_both_classes(labels, row_user):
  """How many users have at least one click and one non-click."""
  y = np.asarray(labels).astype(bool)
  u = np.asarray(row_user)
  return int(np.intersect1d(u[y], u[~y]).size)


@dataclasses.dataclass(frozen=True)
class Resampled:
  """One model (one seed) on one slice: the metrics on the test rows and
  on each resample."""
  point: dict  # {'auc': float, 'gauc': float} on the rows as they are
  samples: dict  # {'auc': (R,), 'gauc': (R,)}
  users_both: int  # users of the slice with both classes (labels only)
  rows: int


class Resampler:
  """One draw of users for a test day, applied to any model's logits.

  Build it once from the rows every model scored; `resample(logit, mask)`
  then gives a model's metrics on the test rows and on every resample,
  restricted to the rows of `mask` (a slice: new items, the exposure tail)
  with the same users drawn.
  """

  def __init__(self, labels, user_id, resamples=RESAMPLES, seed=0):
    self.labels = np.asarray(labels)
    self.users, inverse = np.unique(np.asarray(user_id), return_inverse=True)
    self.row_user = inverse.reshape(-1)
    self.weights = user_weights(len(self.users), resamples, seed)

  @property
  def resamples(self):
    return self.weights.shape[1]

  def resample(self, logit, mask=None):
    y, s, u = self.labels, np.asarray(logit), self.row_user
    if len(s) != len(y):
      raise ValueError(f'{len(s)} logits for {len(y)} rows')
    if mask is not None:
      mask = np.asarray(mask, bool)
      y, s, u = y[mask], s[mask], u[mask]
    point = {'auc': metrics.auc(y, s), 'gauc': metrics.gauc(y, s, u)}
    samples = {'auc': resampled_auc(y, s, u, self.weights),
               'gauc': resampled_gauc(y, s, u, self.weights)}
    return Resampled(point, samples, users_with_both_classes(y, u), len(y))


def interval(samples):
  """The percentile interval at CONFIDENCE (nan resamples left out)."""
  tail = 100 * (1 - CONFIDENCE) / 2
  samples = samples[np.isfinite(samples)]
  if not len(samples):
    return None
  return [float(x) for x in np.percentile(samples, [tail, 100 - tail])]


def _rel(b, a):
  with np.errstate(invalid='ignore', divide='ignore'):
    return 100.0 * (b - a) / a


def _check_paired(*runs):
  lengths = {len(r) for r in runs}
  if len(lengths) != 1 or not lengths.pop():
    raise ValueError('need the same number (>= 1) of seeds for every side, '
                     f'got {[len(r) for r in runs]}')


def _deltas(a_runs, b_runs, m):
  """Per seed: B − A on the rows (S,) and per resample (S, R), absolute and
  relative (%)."""
  pa = np.array([r.point[m] for r in a_runs], np.float64)
  pb = np.array([r.point[m] for r in b_runs], np.float64)
  sa = np.stack([r.samples[m] for r in a_runs])
  sb = np.stack([r.samples[m] for r in b_runs])
  return pb - pa, sb - sa, _rel(pb, pa), _rel(sb, sa)


def _seed_mean(deltas):
  """Seeds combined: the mean over seeds, on the rows and per resample."""
  return tuple(np.mean(x, axis=0) for x in deltas)


def difference(a_runs, b_runs, samples=False):
  """B − A, paired by seed (run i of A with run i of B), seeds combined.

  Args:
    a_runs, b_runs: per seed, a `Resampled` of model A / B on the same slice
      from the same Resampler.
    samples: also return the resampled distributions ('samples',
      'samples_pct').

  Returns:
    {'users_both', 'resamples', 'seeds', 'insufficient', 'auc': cell,
    'gauc': cell}; a cell holds 'a' and 'b' (the metric, mean over seeds),
    'delta' (mean over seeds of B − A on the test rows), 'delta_pct' (mean
    over seeds of 100 (B − A) / A) and their CONFIDENCE percentile intervals
    'ci' and 'ci_pct' over the resamples (None when 'insufficient': fewer
    than MIN_USERS users of the slice have both classes).
  """
  _check_paired(a_runs, b_runs)
  mean = lambda runs, m: float(np.mean([r.point[m] for r in runs]))
  out = _record(a_runs[0], len(a_runs))
  for m in ('auc', 'gauc'):
    out[m] = _cell(out, *_seed_mean(_deltas(a_runs, b_runs, m)), samples,
                   a=mean(a_runs, m), b=mean(b_runs, m))
  return out


def difference_of_differences(a_slice, b_slice, a_all, b_all,
                              samples=False):
  """(B − A on a slice) − (B − A on all rows): is the gain larger there?

  Same draw, so the two differences are paired too. 'delta_pct' is the
  slice's relative delta minus the overall one (percentage points), 'delta'
  the same for absolute deltas, with intervals as in `difference`;
  'slice_delta_pct' and 'all_delta_pct' hold the two deltas for the record.
  Insufficient when the slice (or all rows) has fewer than MIN_USERS users
  with both classes.
  """
  _check_paired(a_slice, b_slice, a_all, b_all)
  out = _record(min((a_slice[0], a_all[0]), key=lambda r: r.users_both),
                len(a_slice))
  for m in ('auc', 'gauc'):
    on_slice = _seed_mean(_deltas(a_slice, b_slice, m))
    on_all = _seed_mean(_deltas(a_all, b_all, m))
    out[m] = _cell(out, *(x - y for x, y in zip(on_slice, on_all)), samples,
                   slice_delta_pct=float(on_slice[2]),
                   all_delta_pct=float(on_all[2]))
  return out


def _record(run, seeds):
  return {'users_both': run.users_both,
          'resamples': len(run.samples['auc']), 'seeds': seeds,
          'insufficient': run.users_both < MIN_USERS}


def _cell(record, point, dist, point_pct, dist_pct, samples, **extra):
  bad = record['insufficient']
  cell = dict(extra, delta=float(point), delta_pct=float(point_pct),
              ci=None if bad else interval(dist),
              ci_pct=None if bad else interval(dist_pct))
  if samples:
    cell['samples'], cell['samples_pct'] = dist, dist_pct
  return cell


def paired(labels, user_id, logits_a, logits_b, mask=None,
           resamples=RESAMPLES, seed=0, samples=False):
  """`difference` of models A and B from their logits on the same rows.

  Args:
    labels, user_id: (N,) the test rows; user_id the real user
      (ctr_rows.user_key), not the embedding id.
    logits_a, logits_b: per seed, (N,) logits of A and of B (lists of equal
      length; seed i of A is paired with seed i of B).
    mask: optional (N,) bool, the slice to compare on.
    resamples, seed: the user draw (one, shared by every model and seed).
  """
  r = Resampler(labels, user_id, resamples, seed)
  return difference([r.resample(x, mask) for x in logits_a],
                    [r.resample(x, mask) for x in logits_b], samples)
