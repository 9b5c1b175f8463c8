"""Tests of the paired user-level bootstrap against explicit resamples."""

from absl.testing import absltest
import numpy as np
from sklearn import metrics as sk_metrics

from mmrec import bootstrap
from mmrec import metrics


def _rows(n, users, seed, decimals=1, pos_rate=0.3):
  """Labels, scores rounded to `decimals` (ties), and user ids."""
  rng = np.random.default_rng(seed)
  user = rng.integers(0, users, n) * 7 + 3  # sparse ids, not 0..U-1
  label = (rng.random(n) < pos_rate).astype(np.int64)
  score = np.round(rng.random(n) * 0.7 + 0.3 * label, decimals)
  return label, score, user


def _explicit(label, score, user, row_user, multiplicity):
  """The resampled table itself: each drawn copy of a user is a new user."""
  idx = np.concatenate([np.flatnonzero(row_user == u) for u in
                        np.repeat(np.arange(len(multiplicity)), multiplicity)]
                       or [np.zeros(0, np.int64)])
  copy = np.concatenate([np.full((row_user == u).sum(), c) for c, u in
                         enumerate(np.repeat(np.arange(len(multiplicity)),
                                             multiplicity))])
  return label[idx], score[idx], copy


class WeightsTest(absltest.TestCase):

  def test_draws_users_with_replacement(self):
    w = bootstrap.user_weights(50, 130, seed=1)
    self.assertEqual(w.shape, (50, 130))
    np.testing.assert_array_equal(w.sum(0), 50)
    self.assertGreater((w == 0).mean(), 0.3)  # ~1/e of users left out
    np.testing.assert_array_equal(w, bootstrap.user_weights(50, 130, seed=1))
    self.assertFalse(np.array_equal(w, bootstrap.user_weights(50, 130, 2)))


class ResampledMetricsTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.label, self.score, self.user = _rows(600, 40, seed=0)
    self.users, inv = np.unique(self.user, return_inverse=True)
    self.row_user = inv.reshape(-1)
    self.w = bootstrap.user_weights(len(self.users), 12, seed=3)

  def test_auc_is_sklearn_with_user_weights(self):
    got = bootstrap.resampled_auc(self.label, self.score, self.row_user,
                                  self.w)
    for r in range(self.w.shape[1]):
      want = sk_metrics.roc_auc_score(self.label, self.score,
                                      sample_weight=self.w[self.row_user, r])
      self.assertAlmostEqual(got[r], want, places=12)

  def test_auc_and_gauc_are_those_of_the_resampled_table(self):
    auc = bootstrap.resampled_auc(self.label, self.score, self.row_user,
                                  self.w)
    gauc = bootstrap.resampled_gauc(self.label, self.score, self.row_user,
                                    self.w)
    for r in range(self.w.shape[1]):
      y, s, u = _explicit(self.label, self.score, self.user, self.row_user,
                          self.w[:, r])
      self.assertAlmostEqual(auc[r], metrics.auc(y, s), places=12)
      self.assertAlmostEqual(gauc[r], metrics.gauc(y, s, u), places=12)

  def test_unit_weights_give_the_metrics(self):
    ones = np.ones((len(self.users), 1), np.uint8)
    self.assertAlmostEqual(
        bootstrap.resampled_auc(self.label, self.score, self.row_user,
                                ones)[0],
        metrics.auc(self.label, self.score), places=12)
    self.assertAlmostEqual(
        bootstrap.resampled_gauc(self.label, self.score, self.row_user,
                                 ones)[0],
        metrics.gauc(self.label, self.score, self.user), places=12)

  def test_resample_without_both_classes_is_nan(self):
    label = np.array([1, 0, 1, 1])
    row_user = np.array([0, 0, 1, 1])  # user 1 has clicks only
    w = np.array([[0, 1], [2, 1]])  # resample 0: user 1 twice
    self.assertTrue(np.isnan(bootstrap.resampled_auc(
        label, np.arange(4.0), row_user, w)[0]))
    self.assertTrue(np.isnan(bootstrap.resampled_gauc(
        label, np.arange(4.0), row_user, w)[0]))

  def test_slice_keeps_the_draw(self):
    r = bootstrap.Resampler(self.label, self.user, resamples=5, seed=4)
    mask = np.arange(len(self.label)) % 3 == 0
    got = r.resample(self.score, mask)
    self.assertEqual(got.rows, mask.sum())
    self.assertAlmostEqual(got.point['gauc'], metrics.gauc(
        self.label[mask], self.score[mask], self.user[mask]))
    for k in range(5):
      want = sk_metrics.roc_auc_score(
          self.label[mask], self.score[mask],
          sample_weight=r.weights[r.row_user[mask], k])
      self.assertAlmostEqual(got.samples['auc'][k], want, places=12)


class DifferenceTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(5)
    self.label, _, self.user = _rows(4000, 200, seed=5)
    signal = self.label + 0.0
    self.noise = [rng.normal(size=len(signal)) for _ in range(4)]
    self.a = [signal + 2.0 * self.noise[0], signal + 2.0 * self.noise[1]]
    self.b = [signal + 1.0 * self.noise[2], signal + 1.0 * self.noise[3]]

  def test_seeds_combined_and_paired(self):
    r = bootstrap.Resampler(self.label, self.user, resamples=200, seed=0)
    ra = [r.resample(x) for x in self.a]
    rb = [r.resample(x) for x in self.b]
    d = bootstrap.difference(ra, rb, samples=True)
    self.assertEqual((d['resamples'], d['seeds']), (200, 2))
    self.assertFalse(d['insufficient'])
    for m, fn in (('auc', lambda x: metrics.auc(self.label, x)),
                  ('gauc', lambda x: metrics.gauc(self.label, x, self.user))):
      a = np.array([fn(x) for x in self.a])
      b = np.array([fn(x) for x in self.b])
      cell = d[m]
      self.assertAlmostEqual(cell['delta'], np.mean(b - a))
      self.assertAlmostEqual(cell['delta_pct'], np.mean(100 * (b - a) / a))
      self.assertAlmostEqual(cell['a'], a.mean())
      # Resample k: the mean over seeds of B − A on that resample.
      k = 17
      want = np.mean([rb[i].samples[m][k] - ra[i].samples[m][k]
                      for i in range(2)])
      self.assertAlmostEqual(cell['samples'][k], want)
      lo, hi = np.percentile(cell['samples_pct'], [2.5, 97.5])
      np.testing.assert_allclose(cell['ci_pct'], [lo, hi], rtol=1e-12)
      self.assertGreater(lo, 0)  # less noise: B is clearly better

  def test_same_model_has_a_zero_interval(self):
    d = bootstrap.paired(self.label, self.user, self.a, self.a,
                         resamples=50)
    self.assertEqual(d['gauc']['ci'], [0.0, 0.0])
    self.assertEqual(d['auc']['delta_pct'], 0.0)

  def test_unpaired_seeds_fail(self):
    with self.assertRaisesRegex(ValueError, 'seeds'):
      bootstrap.paired(self.label, self.user, self.a, self.b[:1],
                       resamples=10)

  def test_few_users_with_both_classes_is_insufficient(self):
    # Only the first 20 users ever click.
    label = np.where(self.user < 20 * 7, self.label, 0)
    d = bootstrap.paired(label, self.user, self.a, self.b, resamples=20)
    self.assertLess(d['users_both'], bootstrap.MIN_USERS)
    self.assertTrue(d['insufficient'])
    self.assertIsNone(d['gauc']['ci'])
    self.assertIsNone(d['auc']['ci_pct'])
    self.assertIsNotNone(d['gauc']['delta'])

  def test_difference_of_differences(self):
    r = bootstrap.Resampler(self.label, self.user, resamples=100, seed=0)
    mask = self.user % 2 == 1
    # B is A except on the slice, where it is better: the slice gains more.
    b = [np.where(mask, x, y) for x, y in zip(self.b, self.a)]
    run = lambda logits, m=None: [r.resample(x, m) for x in logits]
    on_slice = bootstrap.difference(run(self.a, mask), run(b, mask),
                                    samples=True)
    on_all = bootstrap.difference(run(self.a), run(b), samples=True)
    dd = bootstrap.difference_of_differences(
        run(self.a, mask), run(b, mask), run(self.a), run(b), samples=True)
    for m in ('auc', 'gauc'):
      self.assertAlmostEqual(dd[m]['delta_pct'], on_slice[m]['delta_pct'] -
                             on_all[m]['delta_pct'])
      self.assertAlmostEqual(dd[m]['slice_delta_pct'],
                             on_slice[m]['delta_pct'])
      np.testing.assert_allclose(
          dd[m]['samples'], on_slice[m]['samples'] - on_all[m]['samples'])
      self.assertGreater(dd[m]['ci_pct'][0], 0)


if __name__ == '__main__':
  absltest.main()
