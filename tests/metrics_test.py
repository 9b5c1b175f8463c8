"""Tests for mmrec.metrics against sklearn and plain-loop references."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from sklearn import metrics as sk_metrics

from mmrec import metrics


def _tied_data(n, seed, decimals=1, pos_rate=0.3):
  """Labels correlated with scores rounded to `decimals` (many ties)."""
  rng = np.random.default_rng(seed)
  labels = (rng.random(n) < pos_rate).astype(np.int64)
  scores = np.round(rng.random(n) * 0.7 + 0.3 * labels, decimals)
  return labels, scores


def _gauc_reference(labels, scores, users):
  num, den = 0.0, 0.0
  for u in np.unique(users):
    m = users == u
    if labels[m].min() == labels[m].max():
      continue
    num += m.sum() * sk_metrics.roc_auc_score(labels[m], scores[m])
    den += m.sum()
  return num / den if den else float('nan')


def _retrieval_reference(sim, target, mask):
  """(Q,) candidates scoring above each target and tied with it, by loops."""
  above, tied = [], []
  for i in range(sim.shape[0]):
    a = t = 0
    for j in range(sim.shape[1]):
      if j != target[i] and mask[i, j]:
        a += sim[i, j] > sim[i, target[i]]
        t += sim[i, j] == sim[i, target[i]]
    above.append(a)
    tied.append(t)
  return np.array(above), np.array(tied)


class AucTest(parameterized.TestCase):

  @parameterized.product(n=[2, 17, 1000, 20_000], seed=[0, 1, 2],
                         decimals=[0, 1, 3])
  def test_matches_sklearn(self, n, seed, decimals):
    labels, scores = _tied_data(n, seed, decimals)
    labels[:2] = [0, 1]  # Both classes present.
    self.assertAlmostEqual(metrics.auc(labels, scores),
                           sk_metrics.roc_auc_score(labels, scores), places=12)

  def test_bool_labels_and_int_scores(self):
    labels, scores = _tied_data(500, 3)
    self.assertAlmostEqual(
        metrics.auc(labels.astype(bool), (scores * 10).astype(np.int32)),
        sk_metrics.roc_auc_score(labels, scores), places=12)

  @parameterized.named_parameters(
      ('float32', lambda s: (s - 0.5).astype(np.float32)),  # Negatives too.
      ('float16', lambda s: s.astype(np.float16)),
      ('float64_exact_in_float32', lambda s: np.float64(np.float32(s))),
      ('float64_beyond_float32', lambda s: (s - 0.5) * 1e300),
      ('int_narrow', lambda s: np.int64(s * 10) - 3),
      ('int_wide', lambda s: np.int64(s * 10) * 2**40 - 2**50),
      ('uint64_high', lambda s: np.uint64(s * 10) + np.uint64(2**63)),
      ('bool', lambda s: s > 0.5),
  )
  def test_score_dtypes(self, transform):
    labels, scores = _tied_data(3000, 4)
    scores = transform(scores)
    self.assertAlmostEqual(metrics.auc(labels, scores),
                           sk_metrics.roc_auc_score(labels, scores), places=12)

  @parameterized.parameters(np.float32, np.float64)
  def test_signed_zeros_tie(self, dtype):
    scores = np.array([-0.0, 0.0, -1.0, 1.0], dtype)
    self.assertEqual(metrics.auc([1, 0, 0, 1], scores), 0.875)

  def test_all_tied_is_half(self):
    self.assertEqual(metrics.auc([0, 1, 0, 1], [0.2] * 4), 0.5)

  @parameterized.parameters([[0, 0, 0]], [[1, 1, 1]], [[]])
  def test_one_class_is_nan(self, labels):
    self.assertTrue(np.isnan(metrics.auc(labels, np.arange(len(labels)))))

  @parameterized.named_parameters(
      ('bad_label', [0, 2, 1], [0.1, 0.2, 0.3], 'labels'),
      ('nan_label', [0, np.nan, 1], [0.1, 0.2, 0.3], 'labels'),
      ('length', [0, 1, 1], [0.1, 0.2], 'length'),
      ('nan_score', [0, 1, 1], [0.1, np.nan, 0.3], 'finite'),
      ('inf_score', [0, 1, 1], [0.1, np.inf, 0.3], 'finite'),
      ('2d', [[0, 1]], [[0.1, 0.2]], '1-D'),
      ('complex_score', [0, 1], [0.1, 0.2j], 'real'),
  )
  def test_rejects_bad_input(self, labels, scores, message):
    with self.assertRaisesRegex(ValueError, message):
      metrics.auc(labels, scores)


class GaucTest(parameterized.TestCase):

  def _data(self, seed, num_users=200):
    rng = np.random.default_rng(seed)
    # Varying sizes: many users with 1 impression, some heavy users.
    sizes = np.where(rng.random(num_users) < 0.2, 1,
                     rng.geometric(0.05, num_users))
    users = np.repeat(rng.permutation(num_users) * 7 + 3, sizes)
    labels, scores = _tied_data(len(users), seed + 100)
    # A few all-positive users.
    allpos = np.isin(users, users[rng.integers(0, len(users), 10)])
    labels[allpos] = 1
    perm = rng.permutation(len(users))
    return labels[perm], scores[perm], users[perm]

  @parameterized.parameters(0, 1, 2, 3)
  def test_matches_reference(self, seed):
    labels, scores, users = self._data(seed)
    self.assertAlmostEqual(metrics.gauc(labels, scores, users),
                           _gauc_reference(labels, scores, users), places=12)

  @parameterized.named_parameters(
      # Multiplying by an odd constant mod 2^64 is a bijection: wide ids.
      ('hashed_int64', lambda u: (np.uint64(u) * np.uint64(
          0x9E3779B97F4A7C15)).view(np.int64)),
      ('uint64', lambda u: np.uint64(u) + np.uint64(2**63)),
      ('negative_int32', lambda u: np.int32(-u)),
      ('strings', lambda u: u.astype(str)),
      ('floats', lambda u: u / 7),
  )
  def test_group_dtypes(self, transform):
    labels, scores, users = self._data(6, num_users=60)
    scores = scores.astype(np.float32)
    self.assertAlmostEqual(
        metrics.gauc(labels, scores, transform(users)),
        _gauc_reference(labels, scores, users), places=12)

  def test_string_users(self):
    labels, scores, users = self._data(5, num_users=50)
    self.assertAlmostEqual(
        metrics.gauc(labels, scores, users.astype(str)),
        metrics.gauc(labels, scores, users), places=12)

  def test_one_user_equals_auc(self):
    labels, scores = _tied_data(1000, 7)
    self.assertAlmostEqual(metrics.gauc(labels, scores, np.zeros(1000)),
                           metrics.auc(labels, scores), places=12)

  def test_no_qualifying_user_is_nan(self):
    self.assertTrue(np.isnan(
        metrics.gauc([1, 1, 0, 0, 1], [.1, .2, .3, .4, .5], [1, 1, 2, 2, 3])))
    self.assertTrue(np.isnan(metrics.gauc([], [], [])))

  def test_skips_single_class_users_in_weights(self):
    # User 1: perfect (AUC 1, n=2); user 2: inverted (AUC 0, n=4); user 3
    # all clicks, skipped. GAUC = (2·1 + 4·0) / 6.
    labels = [0, 1, 1, 1, 0, 0, 1, 1, 1]
    scores = [.1, .9, .1, .2, .8, .9, .5, .5, .5]
    users = [1, 1, 2, 2, 2, 2, 3, 3, 3]
    self.assertAlmostEqual(metrics.gauc(labels, scores, users), 2 / 6)

  def test_rejects_group_length_mismatch(self):
    with self.assertRaisesRegex(ValueError, 'groups'):
      metrics.gauc([0, 1], [0.1, 0.2], [1])


class GroupAucTermsTest(absltest.TestCase):

  def test_per_group_auc_is_sklearn(self):
    labels, scores = _tied_data(500, seed=8)
    users = np.random.default_rng(8).integers(0, 30, 500) * 5 - 40
    group, pos, neg, num = metrics.group_auc_terms(labels, scores, users)
    np.testing.assert_array_equal(group, np.unique(users))
    for g, p, n, x in zip(group, pos, neg, num):
      m = users == g
      self.assertEqual((p, n), (labels[m].sum(), (1 - labels[m]).sum()))
      if p and n:
        self.assertAlmostEqual(x / (p * n), sk_metrics.roc_auc_score(
            labels[m], scores[m]))


class LoglossTest(parameterized.TestCase):

  @parameterized.parameters(0, 1, 2)
  def test_matches_sklearn(self, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 1000)
    probs = rng.random(1000)
    self.assertAlmostEqual(metrics.logloss(labels, probs),
                           sk_metrics.log_loss(labels, probs), places=10)

  def test_clips(self):
    eps = 1e-7
    self.assertAlmostEqual(metrics.logloss([1, 0], [0.0, 1.0], eps=eps),
                           -np.log(eps))

  def test_rejects_out_of_range(self):
    with self.assertRaisesRegex(ValueError, 'probs'):
      metrics.logloss([0, 1], [0.5, 1.5])


class ExposureGroupsTest(parameterized.TestCase):

  def _data(self, seed, num_items=400):
    rng = np.random.default_rng(seed)
    # Zipf-like popularity, so there is a head, a long tail and new items.
    pop = 1.0 / np.arange(1, num_items + 1) ** 1.1
    pop /= pop.sum()
    train = rng.choice(num_items, 20_000, p=pop)
    test = rng.choice(num_items + 50, 3000,
                      p=np.append(pop * 0.9, np.full(50, 0.1 / 50)))
    return train, test

  @parameterized.parameters(0, 1, 2)
  def test_definition(self, seed):
    train, test = self._data(seed)
    num_groups = 9
    groups = metrics.exposure_groups(train, test, num_groups)
    exposure = (train[None, :] == test[:, None]).sum(axis=1)
    # New items, and only they, get -1.
    np.testing.assert_array_equal(groups == -1, exposure == 0)
    self.assertEqual(groups.min(), -1)
    self.assertLess(groups.max(), num_groups)
    # All rows of one item share a group.
    for item in np.unique(test):
      self.assertLen(np.unique(groups[test == item]), 1)
    # Monotone: every item of group g has exposure <= every item of g + 1.
    for g in range(num_groups - 1):
      if (groups == g).any() and (groups == g + 1).any():
        self.assertLessEqual(exposure[groups == g].max(),
                             exposure[groups == g + 1].min())
    # Sizes within max rows of one item of the ideal size.
    old = groups >= 0
    ideal = old.sum() / num_groups
    max_rows = np.unique(test[old], return_counts=True)[1].max()
    sizes = np.bincount(groups[old], minlength=num_groups)
    self.assertEqual(sizes.sum(), old.sum())
    self.assertLessEqual(np.abs(sizes - ideal).max(), max_rows)

  def test_one_row_per_item_sizes_within_one(self):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 100, 5000)
    test = rng.permutation(100)[:95]
    groups = metrics.exposure_groups(train, test, num_groups=9)
    sizes = np.bincount(groups[groups >= 0], minlength=9)
    self.assertLessEqual(sizes.max() - sizes.min(), 1)

  def test_small_example(self):
    train = ['a', 'b', 'b', 'c', 'c', 'c', 'd', 'd', 'd', 'd']
    test = ['d', 'a', 'x', 'c', 'b', 'a', 'd']
    # Exposure order: a(1) a b(2) c(3) d(4) d -> 6 old rows, 3 groups of 2.
    np.testing.assert_array_equal(
        metrics.exposure_groups(train, test, num_groups=3),
        [2, 0, -1, 1, 1, 0, 2])

  def test_all_new(self):
    np.testing.assert_array_equal(metrics.exposure_groups([1, 2], [3, 4]),
                                  [-1, -1])


class SlicedTest(absltest.TestCase):

  def test_matches_per_slice_metrics(self):
    rng = np.random.default_rng(0)
    labels, scores = _tied_data(2000, 1)
    slices = rng.integers(-1, 3, 2000)
    users = rng.integers(0, 100, 2000)
    out = metrics.sliced(labels, scores, slices, users)
    self.assertCountEqual(
        out, [f'{name}/{m}' for name in ('new', 'group_0', 'group_1',
                                         'group_2')
              for m in ('count', 'auc', 'gauc')])
    for value, name in [(-1, 'new'), (2, 'group_2')]:
      m = slices == value
      self.assertEqual(out[f'{name}/count'], m.sum())
      self.assertAlmostEqual(out[f'{name}/auc'],
                             metrics.auc(labels[m], scores[m]))
      self.assertAlmostEqual(out[f'{name}/gauc'],
                             metrics.gauc(labels[m], scores[m], users[m]))

  def test_without_users(self):
    out = metrics.sliced([0, 1, 1, 1], [.1, .2, .3, .4], [0, 0, 1, 1])
    self.assertCountEqual(
        out, ['group_0/count', 'group_0/auc', 'group_1/count', 'group_1/auc'])
    self.assertEqual(out['group_0/auc'], 1.0)
    self.assertEqual(out['group_1/count'], 2.0)
    self.assertTrue(np.isnan(out['group_1/auc']))  # Only clicks.


class RetrievalAccuracyTest(parameterized.TestCase):

  @parameterized.product(seed=[0, 1, 2], use_mask=[False, True])
  def test_matches_reference(self, seed, use_mask):
    rng = np.random.default_rng(seed)
    q, c = 40, 30
    sim = np.round(2 * rng.normal(size=(q, c))) / 2  # Many (exact) ties.
    target = rng.integers(0, c, q)
    sim[np.arange(q), target] += 0.5  # Better than chance.
    mask = rng.random((q, c)) < 0.7 if use_mask else np.ones((q, c), bool)
    mask[np.arange(q), target] = True
    ks = (1, 5, 10)
    m = mask if use_mask else None
    out = metrics.retrieval_accuracy(sim, target, k=ks, candidate_mask=m)
    rank = metrics.retrieval_ranks(sim, target, m)
    above, tied = _retrieval_reference(sim, target, mask)
    self.assertTrue((tied > 0).any())
    # Above every better candidate, somewhere among the tied ones.
    self.assertTrue(((rank >= above) & (rank <= above + tied)).all())
    np.testing.assert_array_equal(rank[tied == 0], above[tied == 0])
    self.assertEqual(out, {'accuracy@1': np.mean(rank < 1),
                           'recall@5': np.mean(rank < 5),
                           'recall@10': np.mean(rank < 10)})

  def test_ties_are_broken_at_random(self):
    # All scores equal: the target's place is uniform, so hits are chance
    # (k / C), not 0 (ties against) or 1 (ties for).
    sim = np.zeros((4000, 5))
    target = np.arange(4000) % 5
    out = metrics.retrieval_accuracy(sim, target, k=(1, 4, 5))
    self.assertAlmostEqual(out['accuracy@1'], 0.2, delta=0.02)
    self.assertAlmostEqual(out['recall@4'], 0.8, delta=0.02)
    self.assertEqual(out['recall@5'], 1.0)
    # Deterministic: the same inputs give the same ranks.
    np.testing.assert_array_equal(metrics.retrieval_ranks(sim, target),
                                  metrics.retrieval_ranks(sim, target))
    # Last-bit differences of one vector's scores are ties too.
    sim = np.array([[0.5, np.nextafter(np.float32(0.5), 1)]], np.float32)
    ranks = [metrics.retrieval_ranks(sim, [0], seed=s)[0] for s in range(40)]
    self.assertEqual(set(ranks), {0, 1})

  def test_masked_nan_ignored(self):
    sim = np.array([[0.9, np.nan, 0.95, 0.1]])
    mask = np.array([[True, False, False, True]])
    out = metrics.retrieval_accuracy(sim, [0], k=(1,), candidate_mask=mask)
    self.assertEqual(out, {'accuracy@1': 1.0})

  def test_rejects_masked_target(self):
    with self.assertRaisesRegex(ValueError, 'target'):
      metrics.retrieval_accuracy(np.zeros((1, 3)), [1],
                                 candidate_mask=[[True, False, True]])


if __name__ == '__main__':
  absltest.main()
