"""Evaluation metrics: AUC, GAUC, logloss, exposure slices, retrieval accuracy.

Host-side numpy only (no jax): CTR metrics are accumulated over a whole test
day and computed once, so they run on the host over tens of millions of rows.
All functions return Python floats (nan where the metric is undefined).

Shape letters: N rows (impressions), Q queries, C candidates.

(Over the house's ~450 lines on purpose: every metric here shares the
label / score / group checks and the one sort-by-group-and-score kernel;
split, each half would import the other's private helpers.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _check_labels(labels, name: str = 'labels') -> np.ndarray:
  """Returns 1-D labels as int64 0/1, or raises ValueError."""
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f'{name} must be 1-D, got shape {labels.shape}.')
  if labels.dtype == bool:
    return labels.astype(np.int64)
  if not np.issubdtype(labels.dtype, np.number):
    raise ValueError(f'{name} must be numeric or bool, got {labels.dtype}.')
  if not ((labels == 0) | (labels == 1)).all():
    bad = labels[(labels != 0) & (labels != 1)][:5]
    raise ValueError(f'{name} must be 0 or 1, found e.g. {bad.tolist()}.')
  return labels.astype(np.int64)


def _check_scores(scores, n: int, name: str = 'scores') -> np.ndarray:
  """Returns 1-D finite float scores of length n, or raises ValueError."""
  scores = np.asarray(scores)
  if scores.ndim != 1:
    raise ValueError(f'{name} must be 1-D, got shape {scores.shape}.')
  if len(scores) != n:
    raise ValueError(f'{name} has length {len(scores)} but labels has {n}.')
  if not (np.issubdtype(scores.dtype, np.integer) or
          np.issubdtype(scores.dtype, np.floating) or scores.dtype == bool):
    raise ValueError(f'{name} must be real numbers, got {scores.dtype}.')
  if not np.isfinite(scores).all():
    raise ValueError(f'{name} must be finite, found '
                     f'{int((~np.isfinite(scores)).sum())} NaN/inf values.')
  return scores


def _check_groups(groups, n: int, name: str = 'groups') -> np.ndarray:
  groups = np.asarray(groups)
  if groups.ndim != 1:
    raise ValueError(f'{name} must be 1-D, got shape {groups.shape}.')
  if len(groups) != n:
    raise ValueError(f'{name} has length {len(groups)} but labels has {n}.')
  return groups


def _score_codes(scores: np.ndarray) -> tuple[np.ndarray, int]:
  """Order-preserving uint64 codes of the scores, and how many bits they use.

  Equal scores get equal codes, so ties survive packing into a sort key.
  """
  if scores.dtype == bool or np.issubdtype(scores.dtype, np.integer):
    lo, hi = int(scores.min()), int(scores.max())
    if hi - lo < 2**32:
      if np.issubdtype(scores.dtype, np.unsignedinteger):
        return (scores - scores.dtype.type(lo)).astype(np.uint64), 32
      return (scores.astype(np.int64) - lo).astype(np.uint64), 32
  elif np.issubdtype(scores.dtype, np.floating):
    # Most model outputs are float32 (or float64 holding float32 values):
    # then the float32 bit pattern, flipped to sort as unsigned, is a code
    # with no sort needed. Adding 0 turns -0.0 into 0.0 so that they tie.
    with np.errstate(over='ignore'):  # Overflow to inf fails the check.
      s32 = scores.astype(np.float32) + np.float32(0)
    if scores.dtype.itemsize <= 4 or np.array_equal(s32, scores):
      bits = s32.view(np.uint32)
      bits = np.where(bits >> 31 == 1, ~bits, bits | np.uint32(1 << 31))
      return bits.astype(np.uint64), 32
  # Otherwise dense ranks: one argsort.
  order = np.argsort(scores)
  sorted_scores = scores[order]
  new = np.empty(len(scores), np.uint64)
  new[0] = 0
  np.not_equal(sorted_scores[1:], sorted_scores[:-1], out=new[1:])
  codes = np.empty(len(scores), np.uint64)
  codes[order] = np.cumsum(new)
  return codes, int(codes.max()).bit_length()


def _group_codes(groups: np.ndarray, max_bits: int) -> np.ndarray:
  """uint64 codes < 2**max_bits, equal iff the groups are equal."""
  if np.issubdtype(groups.dtype, np.integer):
    lo, hi = int(groups.min()), int(groups.max())
    if (hi - lo).bit_length() <= max_bits:
      if np.issubdtype(groups.dtype, np.unsignedinteger):
        return (groups - groups.dtype.type(lo)).astype(np.uint64)
      return (groups.astype(np.int64) - lo).astype(np.uint64)
  # Wide ids (hashes, strings): factorise, codes < number of groups.
  _, inverse = np.unique(groups, return_inverse=True)
  codes = inverse.reshape(-1).astype(np.uint64)
  if int(codes.max()).bit_length() > max_bits:
    raise ValueError(f'Too many groups ({int(codes.max()) + 1}) to pack into '
                     'a sort key.')
  return codes


def _sort_by_group_and_score(y: np.ndarray, scores: np.ndarray,
                             groups: np.ndarray | None):
  """Sorts rows by (group, score); returns labels and segment starts.

  Packs (group, score, label) into one uint64 key and sorts the keys
  themselves: np.sort of uint64 is several times faster than np.lexsort
  (two indirect stable sorts) or an argsort, and the labels ride along.

  Returns:
    (y, new_block, new_group), all (N,) in sorted order: int64 labels, True
    where a tie block (same group and score) starts, True where a group
    starts.
  """
  n = len(y)
  score_codes, score_bits = _score_codes(scores)
  shift = score_bits + 1
  key = (score_codes << np.uint64(1)) | y.astype(np.uint64)
  if groups is not None:
    key |= _group_codes(groups, 64 - shift) << np.uint64(shift)
  key.sort()
  new_block = np.empty(n, bool)
  new_block[0] = True
  block = key >> np.uint64(1)
  np.not_equal(block[1:], block[:-1], out=new_block[1:])
  new_group = np.zeros(n, bool)
  new_group[0] = True
  if groups is not None:
    group = key >> np.uint64(shift)
    np.not_equal(group[1:], group[:-1], out=new_group[1:])
  return (key & np.uint64(1)).astype(np.int64), new_block, new_group


def _segment_aucs(y: np.ndarray, new_block: np.ndarray,
                  new_group: np.ndarray):
  """Per-group AUC terms from rows sorted by (group, score).

  Args:
    y: (N,) int64 labels in sorted order.
    new_block: (N,) bool, True where a tie block (same group and same score)
      starts; implies True where new_group is True.
    new_group: (N,) bool, True where a group starts.

  Returns:
    (pos, neg, num) per group, in sorted group order: positives, negatives and
    Σ over positives of (#negatives scored lower + ½ #negatives tied), so that
    AUC = num / (pos·neg). Counting per tie block instead of per row gives the
    "ties count as half" convention exactly, without average ranks.
  """
  n = len(y)
  block_start = np.flatnonzero(new_block)
  pos_b = np.add.reduceat(y, block_start)
  neg_b = np.diff(np.append(block_start, n)) - pos_b
  # Negatives strictly below each block = exclusive cumsum of negatives,
  # restarted at each group's first block.
  first_in_group = new_group[block_start]
  group_of_block = np.cumsum(first_in_group) - 1
  neg_cum = np.cumsum(neg_b) - neg_b
  neg_below = neg_cum - neg_cum[first_in_group][group_of_block]
  contrib = pos_b * (neg_below + 0.5 * neg_b)
  group_first_block = np.flatnonzero(first_in_group)
  pos = np.add.reduceat(pos_b, group_first_block)
  neg = np.add.reduceat(neg_b, group_first_block)
  num = np.add.reduceat(contrib, group_first_block)
  return pos, neg, num


def auc(labels, scores) -> float:
  """Exact ROC AUC; tied scores count as half a correctly ordered pair.

  Args:
    labels: (N,) 0/1 or bool.
    scores: (N,) finite scores, higher = more likely positive.

  Returns:
    The AUC, or nan if only one class is present.
  """
  y = _check_labels(labels)
  s = _check_scores(scores, len(y))
  if len(y) == 0:
    return float('nan')
  pos, neg, num = _segment_aucs(*_sort_by_group_and_score(y, s, None))
  if pos[0] == 0 or neg[0] == 0:
    return float('nan')
  return float(num[0] / (pos[0] * neg[0]))


def gauc(labels, scores, groups) -> float:
  """Group AUC: Σ_u n_u·AUC_u / Σ_u n_u over groups (users).

  n_u is the number of impressions of group u. Groups whose impressions are
  all positive or all negative have no AUC and are skipped (in both sums).
  Vectorised: one sort by (group, score) then segment sums, so it scales to
  tens of millions of rows: ~2 s for 10M rows (1M users) on a 2-core CPU
  with float32 scores and integer ids; float64 scores not exact in float32,
  or wide ids (hashes, strings), cost one more argsort (~4 s).

  Args:
    labels: (N,) 0/1 or bool.
    scores: (N,) finite scores.
    groups: (N,) group (user) ids of any sortable dtype.

  Returns:
    The GAUC, or nan if no group has both classes.
  """
  y = _check_labels(labels)
  s = _check_scores(scores, len(y))
  g = _check_groups(groups, len(y))
  if len(y) == 0:
    return float('nan')
  pos, neg, num = _segment_aucs(*_sort_by_group_and_score(y, s, g))
  valid = (pos > 0) & (neg > 0)
  if not valid.any():
    return float('nan')
  pos, neg, num = pos[valid], neg[valid], num[valid]
  n_u = (pos + neg).astype(np.float64)
  # n_u·AUC_u = n_u·num/(pos·neg); float64 keeps pos·neg exact up to 2^53.
  weighted = n_u * num / (pos.astype(np.float64) * neg)
  return float(weighted.sum() / n_u.sum())


def group_auc_terms(labels, scores, groups):
  """Per-group AUC terms, the pieces GAUC (and its bootstrap) is made of.

  Args:
    labels: (N,) 0/1 or bool.
    scores: (N,) finite scores.
    groups: (N,) group (user) ids of any sortable dtype.

  Returns:
    (group, pos, neg, num), each (G,) over the distinct groups in ascending
    order: the group id, its positives, its negatives and Σ over positives of
    (#negatives scored lower + ½ #negatives tied), so that a group's AUC is
    num / (pos·neg) where pos and neg are > 0.
  """
  y = _check_labels(labels)
  s = _check_scores(scores, len(y))
  g = _check_groups(groups, len(y))
  if len(y) == 0:
    empty = np.zeros(0, np.int64)
    return g[:0], empty, empty, np.zeros(0)
  pos, neg, num = _segment_aucs(*_sort_by_group_and_score(y, s, g))
  # The sort key orders groups as np.unique does (order-preserving codes).
  return np.unique(g), pos, neg, num


def logloss(labels, probs, eps: float = 1e-7) -> float:
  """Mean binary cross-entropy with probs clipped to [eps, 1 - eps].

  Args:
    labels: (N,) 0/1 or bool.
    probs: (N,) predicted probabilities of label 1, in [0, 1].
    eps: clipping, so a confident mistake costs -log(eps) instead of inf.

  Returns:
    The mean loss in nats (nan for N = 0).
  """
  y = _check_labels(labels)
  p = _check_scores(probs, len(y), name='probs').astype(np.float64)
  if ((p < 0) | (p > 1)).any():
    raise ValueError('probs must be in [0, 1]; pass sigmoid(logits).')
  if len(y) == 0:
    return float('nan')
  p = np.clip(p, eps, 1 - eps)
  return float(-np.mean(np.where(y == 1, np.log(p), np.log1p(-p))))


def exposure_groups(train_item_ids, test_item_ids,
                    num_groups: int = 9) -> np.ndarray:
  """Buckets test rows by their item's exposure in the training days.

  Definition: an item's exposure is its number of rows in train_item_ids.
  Test rows of items with zero exposure (new items) get -1. The other test
  rows are sorted by their item's exposure, ascending (ties between items
  broken by item id, so the result is deterministic), and cut into
  num_groups groups of near-equal numbers of *test rows*, never splitting an
  item: an item goes to group floor(num_groups · m / M), where M is the number
  of non-new test rows and m is the position of the middle of the item's rows
  in that order (rows of items before it + half its own rows). So group 0 is
  the longest tail and group num_groups - 1 the head; every item of group g
  has exposure <= every item of group g + 1; each group's size is within
  max_rows_of_one_item of M / num_groups (within 1 of each other when every
  item has one test row), and groups can be empty when few items are heavy.

  Args:
    train_item_ids: (N_train,) item ids of the training impressions.
    test_item_ids: (N_test,) item ids of the test impressions (same dtype).
    num_groups: number of exposure groups.

  Returns:
    (N_test,) int64 group index in [0, num_groups), or -1 for new items.
  """
  train = np.asarray(train_item_ids)
  test = np.asarray(test_item_ids)
  if train.ndim != 1 or test.ndim != 1:
    raise ValueError('train_item_ids and test_item_ids must be 1-D, got '
                     f'shapes {train.shape} and {test.shape}.')
  if num_groups < 1:
    raise ValueError(f'num_groups must be >= 1, got {num_groups}.')
  out = np.full(len(test), -1, np.int64)
  if len(test) == 0 or len(train) == 0:
    return out
  train_items, train_counts = np.unique(train, return_counts=True)
  # One row per distinct test item; inverse maps rows back to items.
  items, inverse, rows = np.unique(test, return_inverse=True,
                                   return_counts=True)
  idx = np.searchsorted(train_items, items)
  idx_clipped = np.minimum(idx, len(train_items) - 1)
  found = train_items[idx_clipped] == items
  exposure = np.where(found, train_counts[idx_clipped], 0)
  old = np.flatnonzero(exposure > 0)
  if len(old) == 0:
    return out
  # Stable sort by exposure keeps the id order (np.unique sorted) among ties.
  order = old[np.argsort(exposure[old], kind='stable')]
  sorted_rows = rows[order]
  total = sorted_rows.sum()
  middle = np.cumsum(sorted_rows) - 0.5 * sorted_rows
  group_of_item = np.full(len(items), -1, np.int64)
  group_of_item[order] = np.minimum(
      (num_groups * middle / total).astype(np.int64), num_groups - 1)
  return group_of_item[inverse.reshape(-1)]


def slice_name(value: int) -> str:
  """Name of an exposure slice: 'new' for -1, else 'group_<value>'."""
  return 'new' if value == -1 else f'group_{value}'


def sliced(labels, scores, slices, users=None) -> dict[str, float]:
  """AUC (and GAUC if users are given) per slice of the test rows.

  Args:
    labels: (N,) 0/1 or bool.
    scores: (N,) finite scores.
    slices: (N,) int slice of each row, e.g. from exposure_groups.
    users: optional (N,) user ids; adds GAUC within each slice.

  Returns:
    A flat dict of floats, for each slice value present (ascending):
    '<name>/count' (rows), '<name>/auc' and, with users, '<name>/gauc', where
    <name> is slice_name(value) ('new', 'group_0', ...). Metrics are nan for
    slices where they are undefined.
  """
  y = _check_labels(labels)
  s = _check_scores(scores, len(y))
  sl = _check_groups(slices, len(y), name='slices')
  u = None if users is None else _check_groups(users, len(y), name='users')
  out = {}
  values, inverse = np.unique(sl, return_inverse=True)
  # One stable argsort instead of a boolean mask per slice.
  order = np.argsort(inverse.reshape(-1), kind='stable')
  bounds = np.searchsorted(inverse.reshape(-1)[order],
                           np.arange(len(values) + 1))
  for i, value in enumerate(values):
    rows = order[bounds[i]:bounds[i + 1]]
    name = slice_name(int(value))
    out[f'{name}/count'] = float(len(rows))
    out[f'{name}/auc'] = auc(y[rows], s[rows])
    if u is not None:
      out[f'{name}/gauc'] = gauc(y[rows], s[rows], u[rows])
  return out


def retrieval_accuracy(similarity, target_index,
                       k: Sequence[int] = (1, 10),
                       candidate_mask=None) -> dict[str, float]:
  """Top-1 accuracy and recall@K of retrieving each query's target.

  The target's rank (`retrieval_ranks`) is the number of (unmasked) other
  candidates scoring above it plus its place among those scoring the same,
  drawn uniformly (random tie-breaking): a degenerate model (all scores
  equal) scores chance, k / C, and a candidate sharing the target's vector
  (two listings whose titles hold the same words, for bag-of-tokens) wins
  half the time, not always.

  Args:
    similarity: (Q, C) score of each query against each candidate.
    target_index: (Q,) int index in [0, C) of each query's correct candidate.
    k: cut-offs; k = 1 is reported as 'accuracy@1', others as 'recall@<k>'.
    candidate_mask: optional (Q, C) bool, False excludes a candidate for that
      query (e.g. the query's own history). The target must not be masked.

  Returns:
    {'accuracy@1': ..., 'recall@10': ...}: fraction of queries whose target
    ranks in the top k.
  """
  sim = np.asarray(similarity)
  target = np.asarray(target_index)
  if sim.ndim != 2:
    raise ValueError(f'similarity must be (Q, C), got shape {sim.shape}.')
  q, c = sim.shape
  if target.shape != (q,):
    raise ValueError(f'target_index must have shape ({q},), got '
                     f'{target.shape}.')
  if not np.issubdtype(target.dtype, np.integer):
    raise ValueError(f'target_index must be integer, got {target.dtype}.')
  if ((target < 0) | (target >= c)).any():
    raise ValueError(f'target_index must be in [0, {c}).')
  ks = tuple(int(x) for x in k)
  if any(x < 1 for x in ks):
    raise ValueError(f'k must be positive, got {ks}.')
  if candidate_mask is None:
    mask = np.ones((q, c), bool)
  else:
    mask = np.asarray(candidate_mask, bool)
    if mask.shape != (q, c):
      raise ValueError(f'candidate_mask must have shape {(q, c)}, got '
                       f'{mask.shape}.')
  rows = np.arange(q)
  if not mask[rows, target].all():
    raise ValueError('candidate_mask excludes the target of '
                     f'{int((~mask[rows, target]).sum())} queries.')
  # Masked entries may hold anything (e.g. -inf or NaN padding).
  if not np.isfinite(np.where(mask, sim, 0)).all():
    raise ValueError('similarity must be finite on unmasked candidates.')
  rank = _target_ranks(sim, target, mask)
  out = {}
  for x in ks:
    key = 'accuracy@1' if x == 1 else f'recall@{x}'
    out[key] = float(np.mean(rank < x)) if q else float('nan')
  return out


# Scores within this (relative) distance of the target's are ties: float32
# dot products of two identical vectors with a query can differ in their
# last bits (BLAS blocks rows differently), which must not decide a rank.
TIE_TOLERANCE = 1e-6


def _target_ranks(sim, target, mask, seed=0):
  """(Q,) 0-based rank of each query's target: the candidates above it,
  plus a uniform draw of its place among the t tied ones (0..t; a fixed
  seed, so the same inputs give the same ranks)."""
  rows = np.arange(sim.shape[0])
  target_score = sim[rows, target][:, None].astype(np.float64)
  tol = TIE_TOLERANCE * np.maximum(1.0, np.abs(target_score))
  with np.errstate(invalid='ignore'):  # NaN padding of masked candidates
    above = (sim > target_score + tol) & mask
    tied = (np.abs(sim - target_score) <= tol) & mask
  tied[rows, target] = False  # The target does not tie with itself.
  num_tied = tied.sum(axis=1)
  draw = np.random.default_rng(seed).integers(0, num_tied + 1)
  return above.sum(axis=1) + draw


def retrieval_ranks(similarity, target_index, candidate_mask=None, seed=0):
  """(Q,) int 0-based rank of each query's target, as retrieval_accuracy
  counts it: the unmasked other candidates scoring above the target plus
  its place among the tied ones, drawn uniformly (random tie-breaking,
  `seed` fixed; within TIE_TOLERANCE is a tie). Per-query hits (rank < k)
  for paired comparisons of encoders; callers ranking queries in chunks
  pass a seed per chunk.
  """
  sim = np.asarray(similarity)
  target = np.asarray(target_index)
  mask = (np.ones(sim.shape, bool) if candidate_mask is None else
          np.asarray(candidate_mask, bool))
  if sim.ndim != 2 or target.shape != sim.shape[:1] or mask.shape != sim.shape:
    raise ValueError(f'similarity (Q, C), target_index (Q,) and '
                     f'candidate_mask (Q, C) expected, got {sim.shape}, '
                     f'{target.shape} and {mask.shape}.')
  return _target_ranks(sim, target, mask, seed)
