"""The claim criteria (experiments/claims.py) on hand-made inputs.

Hand-made predictions go through the sweep's bootstrap
(ctr_sweep.intervals) and then the claims, so a claim passes only when the
rows show the effect; hand-made interval cells pin the ratio rules.
"""

from absl.testing import absltest
import numpy as np

from experiments import claims
from experiments import ctr_sweep
from mmrec import bootstrap

N, USERS, SEEDS = 12_000, 400, 2
IMPROVED = ('simtier_paper', 'simtier_official', 'make', 'simtier_make')


def _rows(seed=0):
  rng = np.random.default_rng(seed)
  return {'label': (rng.random(N) < 0.3).astype(np.int32),
          'user_id': rng.integers(0, USERS, N).astype(np.int32),
          'item_id': np.arange(N, dtype=np.int32),
          # -1 (new) and the 9 exposure groups, equally often.
          'exposure_group': (np.arange(N) % 10 - 1).astype(np.int8)}


class _Models:
  """Logits = label + noise: less noise is a better model."""

  def __init__(self, rows, seed=1):
    self.rows, self.rng = rows, np.random.default_rng(seed)

  def model(self, noise, where=None, elsewhere=2.0):
    """Per seed: `noise` on the rows of `where` (all rows if None),
    `elsewhere` on the others."""
    out = []
    for _ in range(SEEDS):
      z = self.rng.normal(size=N)
      scale = noise if where is None else np.where(where, noise, elsewhere)
      out.append(dict(self.rows, logit=(self.rows['label'] + scale * z)
                      .astype(np.float32)))
    return out


def _ctr(predictions):
  """results.json's ctr block as the claims read it."""
  boot = ctr_sweep.intervals(predictions, resamples=200)
  ctr = {}
  for v, runs in predictions.items():
    ctr[v] = {'gauc': {'mean': float(np.mean([
        bootstrap.metrics.gauc(r['label'], r['logit'], r['user_id'])
        for r in runs]))}}
    if v != 'id':
      ctr[v]['bootstrap'] = boot[v]
      ctr[v]['delta_gauc_pct'] = {
          'mean': boot[v]['vs_id']['all']['gauc']['delta_pct']}
  return ctr


def _by_id(claims):
  return {c['id']: c for c in claims}


def _claims(predictions):
  return _by_id(claims.claims({}, _ctr(predictions)))


class CtrClaimsFromPredictionsTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.rows = _rows()
    g = cls.rows['exposure_group']
    cls.tail = (g >= 0) & (g < ctr_sweep.TAIL_GROUPS)
    cls.new = g == -1

  def _models(self):
    return _Models(self.rows)

  def test_absent_effect_is_not_reproduced(self):
    m = self._models()
    same = m.model(2.0)
    c = _claims({'id': same, 'simtier_make': same})
    for cid in ('simtier_make_gauc_gain', 'simtier_make_auc_gain'):
      self.assertEqual(c[cid]['verdict'], claims.NOT_REPRODUCED, cid)
      self.assertFalse(c[cid]['reproduced'])
      self.assertEqual(c[cid]['interval'], [0.0, 0.0])
    self.assertEqual(c['gains_largest_on_long_tail_and_new_items']['verdict'],
                     claims.NOT_REPRODUCED)

  def test_effect_inside_the_noise_is_not_reproduced(self):
    m = self._models()
    # The same model quality, other noise: deltas of either sign, and an
    # interval straddling 0.
    c = _claims({'id': m.model(2.0), 'simtier_make': m.model(2.0)})
    gain = c['simtier_make_gauc_gain']
    lo, hi = gain['interval']
    self.assertLess(lo, 0)
    self.assertGreater(hi, 0)
    self.assertEqual(gain['verdict'], claims.NOT_REPRODUCED)
    self.assertIn('does not exclude 0', gain['statement'])

  def test_large_genuine_gain_is_direction_only(self):
    m = self._models()
    c = _claims({'id': m.model(2.0), 'simtier_make': m.model(1.0)})
    gain = c['simtier_make_gauc_gain']
    self.assertGreater(gain['interval'][0], 0)
    self.assertGreater(gain['ratio_to_paper'], 2)  # ~10% GAUC vs. +1.25%
    self.assertEqual(gain['verdict'], claims.DIRECTION_ONLY)
    self.assertFalse(gain['reproduced'])
    self.assertTrue(gain['statement'].startswith('direction only: +'))

  def test_gains_largest_on_tail_and_new_items(self):
    m = self._models()
    better_there = m.model(1.0, where=self.tail | self.new)
    c = _claims({'id': m.model(2.0), 'simtier_make': better_there})
    claim = c['gains_largest_on_long_tail_and_new_items']
    self.assertEqual(claim['verdict'], claims.REPRODUCED, claim)
    self.assertGreater(claim['interval']['tail - all'][0], 0)
    self.assertGreater(claim['measured']['tail'], claim['measured']['all'])

  def test_tail_gain_below_overall_is_not_reproduced(self):
    m = self._models()
    # Better everywhere but the tail: the tail's delta is below the overall.
    better_elsewhere = m.model(1.0, where=~self.tail)
    c = _claims({'id': m.model(2.0), 'simtier_make': better_elsewhere})
    claim = c['gains_largest_on_long_tail_and_new_items']
    self.assertEqual(claim['verdict'], claims.NOT_REPRODUCED)
    self.assertLess(claim['interval']['tail - all'][1], 0)

  def test_degenerate_slice_is_insufficient_data(self):
    rows = dict(self.rows)
    # New items: all but a few users' new-item rows are non-clicks.
    few = rows['user_id'] < 10
    rows['label'] = np.where(self.new & ~few, 0, rows['label']).astype(
        np.int32)
    m = _Models(rows)
    c = _claims({'id': m.model(2.0),
                 'simtier_make': m.model(1.0, where=self.tail | self.new)})
    claim = c['gains_largest_on_long_tail_and_new_items']
    self.assertEqual(claim['verdict'], claims.INSUFFICIENT, claim)
    self.assertIsNone(claim['interval']['new - all'])
    self.assertFalse(claim['reproduced'])
    self.assertIn('insufficient data', claim['statement'])

  def test_simtier_and_make_beat_vector_and_simscore(self):
    m = self._models()
    weak = m.model(2.0)
    preds = {'id': weak, 'vector': weak, 'simscore': m.model(2.0)}
    preds.update({v: m.model(1.0) for v in IMPROVED})
    claim = _claims(preds)['simtier_and_make_beat_vector_and_simscore']
    self.assertEqual(claim['verdict'], claims.REPRODUCED, claim)
    self.assertLen(claim['interval'], 6)
    # MAKE no better than Vector: one pair fails, the claim fails.
    preds['make'] = weak
    claim = _claims(preds)['simtier_and_make_beat_vector_and_simscore']
    self.assertEqual(claim['verdict'], claims.NOT_REPRODUCED)
    self.assertEqual(claim['interval']['make - vector'], [0.0, 0.0])


class GainVerdictTest(absltest.TestCase):
  """The ratio rules on hand-made interval cells (% deltas)."""

  def _verdict(self, delta, ci, paper=1.25):
    return claims.gain_verdict({'delta_pct': delta, 'ci_pct': ci}, paper)

  def test_verdicts(self):
    for delta, ci, want in (
        (1.3, [0.6, 2.0], claims.REPRODUCED),
        (0.7, [0.1, 1.3], claims.REPRODUCED),  # 0.56x
        (6.25, [4.0, 8.5], claims.DIRECTION_ONLY),  # 5x
        (0.3, [0.1, 0.5], claims.DIRECTION_ONLY),  # 0.24x
        (1.3, [-0.2, 2.8], claims.NOT_REPRODUCED),  # inside the noise
        (-1.3, [-2.0, -0.6], claims.NOT_REPRODUCED),  # wrong direction
        (0.0, [0.0, 0.0], claims.NOT_REPRODUCED)):
      self.assertEqual(self._verdict(delta, ci)[0], want, (delta, ci))

  def test_statement_quotes_the_numbers(self):
    verdict, ratio, text = self._verdict(3.1, [1.2, 5.0])
    self.assertEqual(verdict, claims.DIRECTION_ONLY)
    self.assertAlmostEqual(ratio, 3.1 / 1.25)
    self.assertEqual(text, "direction only: +3.10% [+1.20, +5.00] is 2.5x "
                     "the paper's +1.25%")

  def test_no_interval_is_insufficient_data(self):
    self.assertEqual(claims.gain_verdict(None, 1.25)[0],
                     claims.INSUFFICIENT)
    self.assertEqual(self._verdict(5.0, None)[0], claims.INSUFFICIENT)


class PretrainClaimsTest(absltest.TestCase):

  def test_without_query_intervals_is_insufficient_data(self):
    c = _by_id(claims.claims({}, {}))
    for cid in ('scl_over_clip_e_over_clip_o', 'queue_adds',
                'hard_negatives_add'):
      self.assertEqual(c[cid]['verdict'], claims.INSUFFICIENT)
    self.assertEqual(c['online_gains']['verdict'], claims.NOT_TESTABLE)
    self.assertFalse(c['online_gains']['testable'])
    for claim in c.values():
      self.assertIn(claim['verdict'], claims.VERDICTS)
      self.assertTrue(claim['statement'].startswith(claim['verdict']))

  def test_ordering_needs_every_step(self):
    cell = lambda lo, hi: {'delta': (lo + hi) / 2, 'ci': [lo, hi]}
    comparisons = {'scl-clip_e': cell(0.01, 0.03),
                   'clip_e-clip_o': cell(-0.01, 0.02),
                   'scl-scl_no_queue': cell(0.002, 0.01),
                   'scl-scl_no_hard_neg': cell(-0.03, -0.01)}
    c = _by_id(claims.claims({}, {}, comparisons))
    self.assertEqual(c['scl_over_clip_e_over_clip_o']['verdict'],
                     claims.NOT_REPRODUCED)
    self.assertEqual(c['queue_adds']['verdict'], claims.REPRODUCED)
    self.assertEqual(c['hard_negatives_add']['verdict'],
                     claims.NOT_REPRODUCED)


if __name__ == '__main__':
  absltest.main()
