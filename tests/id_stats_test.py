"""Tests of the ID-statistics LR baseline (mmrec.id_stats)."""

import json
import math
import os
import tempfile

from absl.testing import absltest
import fixtures
import numpy as np

from experiments import ctr_sweep
from experiments.configs import ctr as ctr_config
from experiments.configs import ctr_sweep as sweep_config
from mmrec import ctr_eval
from mmrec import metrics
from mmrec import train_ctr
from mmrec.data import id_features

L = 4  # behaviour-sequence length of the hand-made table
FIRST_TEST_DAY = 3
NUM_ITEMS, NUM_USERS = 6, 4
# Leaf categories 0..2 under top categories 0, 0, 1.
ITEMS = {'category': np.array([0, 0, 1, 2, 2, 1]),
         'top_category': np.array([0, 0, 0, 1, 1, 0])}


def _rows(spec):
  """[(user, item, day, label, [history, oldest first])] -> table."""
  seq = np.zeros((len(spec), L), np.int32)
  for i, (*_, hist) in enumerate(spec):
    if hist:
      seq[i, L - len(hist):] = hist
  return {'user_id': np.array([s[0] for s in spec], np.int32),
          'item_id': np.array([s[1] for s in spec], np.int32),
          'day': np.array([s[2] for s in spec], np.int32),
          'label': np.array([s[3] for s in spec], np.int32),
          'seq_item': seq,
          'seq_len': np.array([len(s[4]) for s in spec], np.int32)}


# User 3 never has a history; item 5 appears only on the test day (new);
# item 4 first appears on the fit day (day 2).
TRAIN = _rows([
    (0, 0, 0, 1, []), (0, 1, 0, 0, []), (1, 0, 0, 0, [2]),
    (2, 2, 0, 1, [3, 4]), (3, 3, 0, 0, []), (1, 1, 0, 1, [2]),
    (0, 2, 1, 0, [0]), (1, 0, 1, 1, [2, 1]), (2, 3, 1, 0, [3, 4, 2]),
    (3, 0, 1, 0, []), (2, 2, 1, 1, [3, 4, 2]),
    (0, 0, 2, 1, [0]), (1, 4, 2, 0, [2, 1, 0]), (2, 3, 2, 1, [4, 2, 2]),
    (3, 2, 2, 0, []), (0, 1, 2, 0, [0]), (1, 2, 2, 1, [2, 1, 0]),
])
TEST = _rows([
    (0, 5, 3, 1, [0, 0]), (1, 3, 3, 0, [1, 0, 2, 0]), (3, 5, 3, 0, []),
    (2, 0, 3, 1, [4, 2, 2, 3]), (3, 4, 3, 1, []),
])


def _reference(rows, history, strength=id_features.PRIOR_IMPRESSIONS):
  """Features row by row in plain Python, `history` the counted impressions."""
  k = strength
  n = len(history['label'])
  p0 = sum(int(x) for x in history['label']) / n
  out = []
  for i in range(len(rows['label'])):
    item, user = int(rows['item_id'][i]), int(rows['user_id'][i])
    ic = sum(int(history['label'][j]) for j in range(n)
             if history['item_id'][j] == item)
    isn = sum(1 for j in range(n) if history['item_id'][j] == item)
    uc = sum(int(history['label'][j]) for j in range(n)
             if history['user_id'][j] == user)
    usn = sum(1 for j in range(n) if history['user_id'][j] == user)
    length = int(rows['seq_len'][i])
    hist = [int(x) for x in rows['seq_item'][i][L - length:]] if length else []
    leaf = sum(ITEMS['category'][h] == ITEMS['category'][item] for h in hist)
    top = sum(ITEMS['top_category'][h] == ITEMS['top_category'][item]
              for h in hist)
    out.append([(ic + k * p0) / (isn + k), (uc + k * p0) / (usn + k),
                leaf / length if length else 0.0,
                top / length if length else 0.0,
                math.log(1 + isn), math.log(1 + length)])
  return np.array(out)


def _take(rows, mask):
  return {k: v[mask] for k, v in rows.items()}


def _features(train=TRAIN, test=TEST):
  return id_features.fit_and_test_features(train, test, ITEMS, NUM_ITEMS,
                                           NUM_USERS)


def _scaled(x, scale):
  """Reference features with counts scaled: CTRs keep their ratio."""
  x = x.copy()
  x[:, 4] = np.log1p(np.expm1(x[:, 4]) * scale)
  return x


class FeaturesTest(absltest.TestCase):

  def test_fit_on_every_training_day_out_of_fold(self):
    (x_fit, y_fit), x_test = _features()
    k = id_features.FOLDS
    fold = id_features.folds(len(TRAIN['label']))
    np.testing.assert_array_equal(np.bincount(fold), [4, 4, 3, 3, 3])
    np.testing.assert_array_equal(y_fit, TRAIN['label'])  # every day
    for f in range(k):
      mine = fold == f
      # Counts from the other folds, scaled by k / (k - 1): the smoothed
      # CTRs are those of the other folds with a prior worth K / scale.
      other = _take(TRAIN, ~mine)
      scale = k / (k - 1)
      want = _reference(_take(TRAIN, mine), other, strength=(
          id_features.PRIOR_IMPRESSIONS / scale))
      np.testing.assert_allclose(x_fit[mine], _scaled(want, scale),
                                 rtol=1e-12)
    np.testing.assert_allclose(x_test, _reference(TEST, TRAIN), rtol=1e-12)

  def test_new_item_and_empty_history(self):
    _, x_test = _features()
    p_train = TRAIN['label'].mean()
    new = TEST['item_id'] == 5
    # A new item gets the prior: the global training CTR, zero impressions.
    np.testing.assert_allclose(x_test[new, 0], p_train)
    np.testing.assert_array_equal(x_test[new, 4], 0.0)
    # User 3 never has a history: shares and log length are 0.
    no_hist = TEST['user_id'] == 3
    np.testing.assert_array_equal(x_test[no_hist][:, [2, 3, 5]], 0.0)

  def test_no_leakage(self):
    (x_fit, y_fit), x_test = _features()
    # A test label changes no feature.
    test = dict(TEST, label=TEST['label'].copy())
    test['label'][0] ^= 1
    (x_fit2, y_fit2), x_test2 = _features(test=test)
    np.testing.assert_array_equal(x_fit2, x_fit)
    np.testing.assert_array_equal(y_fit2, y_fit)
    np.testing.assert_array_equal(x_test2, x_test)
    # A fit row's label changes no feature of its own fold (its own row
    # included), only its target and the other folds' features.
    fold = id_features.folds(len(TRAIN['label']))
    for r in range(len(TRAIN['label'])):
      train = dict(TRAIN, label=TRAIN['label'].copy())
      train['label'][r] ^= 1
      (x_fit3, y_fit3), _ = _features(train=train)
      same = fold == fold[r]
      np.testing.assert_array_equal(x_fit3[same], x_fit[same])
      self.assertFalse(np.array_equal(x_fit3[~same], x_fit[~same]))
      self.assertEqual(y_fit3[r], 1 - y_fit[r])

  def test_too_few_rows(self):
    with self.assertRaisesRegex(ValueError, 'at least 10 training rows'):
      _features(train=_take(TRAIN, TRAIN['day'] == 2))

  def test_small_fit_set_is_warned_about(self):
    msg = id_features.fit_set_warning(TRAIN)
    self.assertIn('17 rows from 4 users', msg)
    big = {'label': np.zeros(id_features.SMALL_FIT_ROWS),
           'user_id': np.arange(id_features.SMALL_FIT_ROWS) % 60}
    self.assertIsNone(id_features.fit_set_warning(big))
    big['user_id'] = big['user_id'] % 9
    self.assertIn('9 users', id_features.fit_set_warning(big))

  def test_bag_shares_against_plain_python(self):
    # Genres as a bag (0 = empty slot): the leaf share is the history's
    # share with the target's exact value set, the top share its share
    # sharing any value (the value order within a bag does not matter).
    bag = np.array([[0, 0, 0], [1, 2, 0], [2, 1, 0], [3, 0, 0], [2, 0, 0],
                    [0, 0, 0]])
    items = id_features.category_tables({'genres': bag}, [], NUM_ITEMS,
                                        'genres')
    x = id_features.features(TRAIN, id_features.counts(
        TRAIN, NUM_ITEMS, NUM_USERS), items)
    sets = [set(b) - {0} for b in bag.tolist()]
    for i in range(len(TRAIN['label'])):
      n = int(TRAIN['seq_len'][i])
      hist = TRAIN['seq_item'][i][L - n:].tolist() if n else []
      t = sets[TRAIN['item_id'][i]]
      exact = sum(bool(t) and sets[h] == t for h in hist)
      shared = sum(bool(sets[h] & t) for h in hist)
      self.assertAlmostEqual(x[i, 2], exact / n if n else 0.0)
      self.assertAlmostEqual(x[i, 3], shared / n if n else 0.0)
    self.assertTrue((x[:, 2] != x[:, 3]).any())  # two signals, not one
    # Chunks give the same shares.
    np.testing.assert_array_equal(
        np.stack(id_features.bag_shares(TRAIN, bag, chunk=3)),
        np.stack(id_features.bag_shares(TRAIN, bag)))

  def test_fit_standardises_on_fit_rows(self):
    (x_fit, y_fit), x_test = _features()
    model = id_features.fit(x_fit, y_fit)
    np.testing.assert_allclose(model.mean, x_fit.mean(0))
    z = (x_fit - model.mean) / model.std
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-12)
    self.assertEqual(model.logit(x_test).shape, (len(TEST['label']),))
    self.assertEqual(set(model.coefficients()),
                     set(id_features.FEATURES) | {'bias'})


class RunTest(absltest.TestCase):

  def test_variant_writes_ctr_eval(self):
    c = ctr_config.get_config('id_stats,tiny')
    c.data_dir = fixtures.small_ctr_world_dir()
    workdir = tempfile.mkdtemp()
    result = train_ctr.run(c, workdir)
    with open(os.path.join(workdir, train_ctr.EVAL_FILE)) as f:
      written = json.load(f)
    self.assertEqual(written, json.loads(json.dumps(result)))
    self.assertContainsSubset(
        {'variant': 'id_stats', 'seed': 0, 'split': 'test', 'step': 0,
         'total_steps': 0, 'complete': True, 'data_dir': c.data_dir},
        written)
    self.assertContainsSubset(
        {'epoch_fraction', 'num_test', 'auc', 'gauc', 'logloss', 'slices'},
        set(written))
    self.assertGreater(written['num_test'], 0)
    self.assertGreater(written['auc'], 0.6)
    self.assertGreater(written['gauc'], 0.55)
    self.assertTrue(np.isfinite(written['logloss']))
    self.assertContainsSubset({'new', 'group_0'}, set(written['slices']))
    # Fit on every training day, warned about when small.
    self.assertEqual(written['fit_days'][0], 0)
    self.assertEqual(written['folds'], id_features.FOLDS)
    self.assertGreater(written['num_fit'], written['num_test'])
    pred = ctr_eval.load_predictions(workdir)
    self.assertLen(pred['logit'], written['num_test'])
    self.assertAlmostEqual(metrics.auc(pred['label'], pred['logit']),
                           written['auc'], places=4)  # float32 logits

    # The sweep runs it like any variant, without item vectors.
    s = sweep_config.get_config('tiny')
    self.assertIn('id_stats', s.variants.split(','))
    s.variants, s.data_dir, s.vectors_path = 'id_stats', c.data_dir, ''
    summary = ctr_sweep.run(s, tempfile.mkdtemp())
    self.assertAlmostEqual(summary['variants']['id_stats']['auc']['mean'],
                           written['auc'])


if __name__ == '__main__':
  absltest.main()
