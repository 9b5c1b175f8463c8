"""The claim criteria (experiments/claims.py) on hand-made inputs.

Hand-made predictions go through the sweep's bootstrap
(ctr_sweep.intervals) and then the claims, so a claim passes only when the
rows show the effect; hand-made interval cells pin the ratio rules.
"""

from absl.testing import absltest
import numpy as np

from experiments import claims
from experiments import ctr_sweep
from experiments import flags
from experiments import results
from experiments import seed_stats
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
    for cid in ('gains_largest_on_long_tail', 'gains_largest_on_new_items'):
      self.assertEqual(c[cid]['verdict'], claims.NOT_REPRODUCED, cid)

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
    # ~10% GAUC vs. +1.25%: the whole interval lies above the paper's band.
    self.assertGreater(gain['interval'][0], 2 * claims.PAPER_GAUC_GAIN)
    self.assertGreater(gain['ratio_to_paper'], 2)
    self.assertEqual(gain['verdict'], claims.DIRECTION_ONLY)
    self.assertFalse(gain['reproduced'])
    self.assertTrue(gain['statement'].startswith('direction only: +'))
    self.assertIn('lies wholly above the paper\'s band', gain['statement'])
    self.assertIn('against id (no baseline selection recorded)',
                  gain['statement'])

  def test_gains_largest_on_tail_and_new_items(self):
    m = self._models()
    better_there = m.model(1.0, where=self.tail | self.new)
    c = _claims({'id': m.model(2.0), 'simtier_make': better_there})
    for cid, name in (('gains_largest_on_long_tail', 'tail'),
                      ('gains_largest_on_new_items', 'new')):
      claim = c[cid]
      self.assertEqual(claim['verdict'], claims.REPRODUCED, claim)
      self.assertGreater(claim['interval'][0], 0)
      self.assertGreater(claim['measured'][name], claim['measured']['all'])
      self.assertIn('(holds)', claim['statement'])

  def test_tail_gain_below_overall_is_not_reproduced(self):
    m = self._models()
    # Better everywhere but the tail: the tail's delta is below the overall.
    better_elsewhere = m.model(1.0, where=~self.tail)
    c = _claims({'id': m.model(2.0), 'simtier_make': better_elsewhere})
    claim = c['gains_largest_on_long_tail']
    self.assertEqual(claim['verdict'], claims.NOT_REPRODUCED)
    self.assertLess(claim['interval'][1], 0)
    self.assertIn('(fails)', claim['statement'])

  def test_degenerate_slice_is_insufficient_data(self):
    rows = dict(self.rows)
    # New items: all but a few users' new-item rows are non-clicks.
    few = rows['user_id'] < 10
    rows['label'] = np.where(self.new & ~few, 0, rows['label']).astype(
        np.int32)
    m = _Models(rows)
    c = _claims({'id': m.model(2.0),
                 'simtier_make': m.model(1.0, where=self.tail | self.new)})
    claim = c['gains_largest_on_new_items']
    self.assertEqual(claim['verdict'], claims.INSUFFICIENT, claim)
    self.assertIsNone(claim['interval'])
    self.assertFalse(claim['reproduced'])
    self.assertLess(claim['measured']['users_both'], bootstrap.MIN_USERS)
    self.assertIn(f'{claim["measured"]["users_both"]} users with both '
                  'classes, 30 needed', claim['statement'])
    # The thin new-item slice no longer hides the tail's own verdict.
    self.assertEqual(c['gains_largest_on_long_tail']['verdict'],
                     claims.REPRODUCED)

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
  """The band rule on hand-made interval cells (% deltas): the interval, not
  the point, is held against [0.5x, 2x] of the paper's number."""

  def _verdict(self, delta, ci, paper=1.25):
    return claims.gain_verdict({'delta_pct': delta, 'ci_pct': ci}, paper)

  def test_verdicts(self):
    for delta, ci, paper, want in (
        (1.3, [0.6, 2.0], 1.25, claims.REPRODUCED),
        (0.7, [0.1, 1.3], 1.25, claims.REPRODUCED),  # 0.56x
        # The point is outside the band but the interval reaches into it:
        # a size the paper's cannot be told apart from (issue 23's +1.76%
        # [+0.96, +2.53] AUC at 2.3x the paper's +0.75%).
        (1.76, [0.96, 2.53], 0.75, claims.REPRODUCED),
        (0.5, [0.05, 0.7], 1.25, claims.REPRODUCED),  # 0.4x, reaches 0.56x
        (6.25, [4.0, 8.5], 1.25, claims.DIRECTION_ONLY),  # wholly above
        (2.7, [2.55, 2.9], 1.25, claims.DIRECTION_ONLY),  # just above 2.5
        (0.3, [0.1, 0.5], 1.25, claims.DIRECTION_ONLY),  # wholly below
        (1.3, [-0.2, 2.8], 1.25, claims.NOT_REPRODUCED),  # inside the noise
        (-1.3, [-2.0, -0.6], 1.25, claims.NOT_REPRODUCED),  # wrong direction
        (0.0, [0.0, 0.0], 1.25, claims.NOT_REPRODUCED),
        # A negative paper number: the band is [2x, 0.5x] below zero.
        (-1.0, [-1.5, -0.4], -1.0, claims.REPRODUCED),
        (-3.0, [-3.5, -2.2], -1.0, claims.DIRECTION_ONLY),
        (1.0, [0.4, 1.5], -1.0, claims.NOT_REPRODUCED)):
      self.assertEqual(self._verdict(delta, ci, paper)[0], want,
                       (delta, ci, paper))

  def test_band_edges_count_as_overlap(self):
    lo, hi = claims.band(1.25)
    self.assertEqual((lo, hi), (0.625, 2.5))
    self.assertEqual(claims.band(-1.0), (-2.0, -0.5))
    self.assertEqual(self._verdict(3.0, [2.5, 3.5])[0], claims.REPRODUCED)
    self.assertEqual(self._verdict(3.0, [2.51, 3.5])[0],
                     claims.DIRECTION_ONLY)

  def test_statement_quotes_the_numbers_and_says_which(self):
    verdict, ratio, text = self._verdict(6.25, [4.0, 8.5])
    self.assertEqual(verdict, claims.DIRECTION_ONLY)
    self.assertAlmostEqual(ratio, 5.0)
    self.assertEqual(text, "direction only: +6.25% [+4.00, +8.50] (5.0x the "
                     "paper's +1.25%); the interval lies wholly above the "
                     "paper's band [+0.62, +2.50] (0.5x-2x)")
    text = self._verdict(0.3, [0.1, 0.5])[2]
    self.assertIn('lies wholly below', text)
    text = self._verdict(3.1, [1.2, 5.0])[2]
    self.assertEqual(text, "reproduced: +3.10% [+1.20, +5.00] (2.5x the "
                     "paper's +1.25%); the interval overlaps the paper's band "
                     "[+0.62, +2.50] (0.5x-2x)")

  def test_no_interval_is_insufficient_data(self):
    self.assertEqual(claims.gain_verdict(None, 1.25)[0],
                     claims.INSUFFICIENT)
    self.assertEqual(self._verdict(5.0, None)[0], claims.INSUFFICIENT)


class BaselineAndControlTest(absltest.TestCase):
  """Gains judged against the stronger ID baseline; the same-model control."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    m = _Models(_rows())
    # The neural ID model trained poorly; the ID-statistics LR is strong and
    # SimTier + MAKE sits between them.
    cls.preds = {'id': m.model(3.0), 'id_stats': m.model(1.0),
                 'simtier_make': m.model(2.0)}
    cls.ctr = _ctr(cls.preds)

  def _baseline(self, variant):
    values = {'id': 0.70, 'id_stats': 0.72}
    return {**{x: {'variant': variant, 'split': 'validation',
                   'values': values} for x in ('auc', 'gauc')}, 'why': None}

  def test_gain_over_a_weak_id_model_fails_against_the_stronger_baseline(self):
    over_id = _by_id(claims.claims({}, self.ctr,
                                   baseline=self._baseline('id')))
    over_stats = _by_id(claims.claims({}, self.ctr,
                                      baseline=self._baseline('id_stats')))
    for cid in ('simtier_make_gauc_gain', 'simtier_make_auc_gain'):
      self.assertGreater(over_id[cid]['interval'][0], 0, cid)
      self.assertIn(over_id[cid]['verdict'],
                    (claims.REPRODUCED, claims.DIRECTION_ONLY))
      c = over_stats[cid]
      self.assertEqual(c['verdict'], claims.NOT_REPRODUCED, c)
      self.assertLess(c['interval'][1], 0)
      self.assertEqual(c['baseline'], 'id_stats')
      self.assertIn('against id_stats, the stronger ID baseline on the '
                    'validation split', c['statement'])
    # The slices are read against the same baseline.
    self.assertEqual(over_stats['gains_largest_on_long_tail']['baseline'],
                     'id_stats')

  def test_fallback_baseline_says_why(self):
    why = 'id_stats did not run: judged against id'
    base = {**{x: {'variant': 'id', 'split': None, 'values': {}}
               for x in ('auc', 'gauc')}, 'why': why}
    c = _by_id(claims.claims({}, self.ctr, baseline=base))
    self.assertIn(f'against id ({why})',
                  c['simtier_make_gauc_gain']['statement'])

  def test_content_beats_id_similarity_with_the_same_model(self):
    m = _Models(_rows(), seed=3)
    weak = m.model(2.0)
    preds = {'id': weak, 'simtier_make': m.model(1.0),
             'simtier_make@ids': m.model(2.0),
             # A different model beaten by its own control: not read.
             'simtier_official': weak, 'simtier_official@ids': m.model(1.0)}
    c = _by_id(claims.claims({}, _ctr(preds)))['content_beats_id_similarity']
    self.assertEqual(c['verdict'], claims.REPRODUCED, c)
    self.assertEqual(c['model'], 'simtier_make')
    self.assertEqual(set(c['interval']),
                     {'simtier_make - simtier_make@ids AUC',
                      'simtier_make - simtier_make@ids GAUC'})
    # Only simtier_official has its control: it is the one compared.
    del preds['simtier_make@ids']
    c = _by_id(claims.claims({}, _ctr(preds)))['content_beats_id_similarity']
    self.assertEqual(c['model'], 'simtier_official')
    self.assertEqual(c['verdict'], claims.NOT_REPRODUCED)
    # No control at all: not testable, and why.
    c = _by_id(claims.claims({}, _ctr({'id': weak, 'simtier_make': weak})))[
        'content_beats_id_similarity']
    self.assertEqual(c['verdict'], claims.NOT_TESTABLE)
    self.assertIn('simtier_make@ids', c['statement'])
    c = _by_id(claims.claims(
        {}, _ctr({'id': weak, 'simtier_make': weak}),
        not_run={'simtier_make@ids': 'no ID fields'}))[
            'content_beats_id_similarity']
    self.assertIn('simtier_make@ids not run (no ID fields)', c['statement'])


class PretrainClaimsTest(absltest.TestCase):

  def test_without_query_intervals_is_insufficient_data(self):
    c = _by_id(claims.claims({}, {}))
    for cid in ('scl_over_clip_e_over_clip_o', 'queue_adds',
                'hard_negatives_add'):
      for modality in ('image', 'text'):
        self.assertEqual(c[f'{cid}_{modality}']['verdict'],
                         claims.INSUFFICIENT)
    self.assertEqual(c['online_gains']['verdict'], claims.NOT_TESTABLE)
    self.assertFalse(c['online_gains']['testable'])
    for claim in c.values():
      self.assertIn(claim['verdict'], claims.VERDICTS)
      self.assertTrue(claim['statement'].startswith(claim['verdict']))

  def test_each_modality_and_metric_has_its_own_interval(self):
    cell = lambda lo, hi: {'delta': (lo + hi) / 2, 'ci': [lo, hi]}
    both = lambda acc, rec: {'accuracy@1': acc, 'recall@10': rec}
    up, down, noise = cell(0.01, 0.03), cell(-0.03, -0.01), cell(-0.01, 0.02)
    comparisons = {
        # SCL over CLIP-E: ahead on text, behind on image accuracy@1 (the
        # average over modalities would hide it).
        'scl-clip_e': {'by_modality': {'image': both(down, up),
                                       'text': both(up, up)}},
        'clip_e-clip_o': {'by_modality': {'image': both(up, up),
                                          'text': both(up, up)}},
        'scl-scl_no_queue': {'by_modality': {'image': both(up, noise),
                                             'text': both(up, up)}},
        # No image side for one of the pair: that claim has no interval.
        'scl-scl_no_hard_neg': {'by_modality': {'image': None,
                                                'text': both(up, up)}}}
    table = {'scl': {'image': {'accuracy@1': {'mean': 0.004},
                               'recall@10': {'mean': 0.03}}}}
    c = _by_id(claims.claims(table, {}, comparisons))
    image = c['scl_over_clip_e_over_clip_o_image']
    self.assertEqual(image['verdict'], claims.NOT_REPRODUCED)
    self.assertIn('scl - clip_e accuracy@1 -0.0200 [-0.0300, -0.0100] '
                  '(fails)', image['statement'])
    self.assertIn('scl - clip_e recall@10 +0.0200 [+0.0100, +0.0300] '
                  '(holds)', image['statement'])
    self.assertLen(image['interval'], 4)  # 2 steps x 2 metrics
    self.assertEqual(image['measured']['scl'],
                     {'accuracy@1': 0.004, 'recall@10': 0.03})
    self.assertEqual(c['scl_over_clip_e_over_clip_o_text']['verdict'],
                     claims.REPRODUCED)
    self.assertEqual(c['queue_adds_image']['verdict'], claims.NOT_REPRODUCED)
    self.assertEqual(c['queue_adds_text']['verdict'], claims.REPRODUCED)
    self.assertEqual(c['hard_negatives_add_image']['verdict'],
                     claims.INSUFFICIENT)
    self.assertEqual(c['hard_negatives_add_text']['verdict'],
                     claims.REPRODUCED)
    # A method the dataset cannot serve makes both modalities untestable.
    c = _by_id(claims.claims(table, {}, comparisons,
                             not_run={'scl_no_queue': 'no search log'}))
    for modality in ('image', 'text'):
      self.assertEqual(c[f'queue_adds_{modality}']['verdict'],
                       claims.NOT_TESTABLE)


  def test_a_modality_without_queries_is_not_testable(self):
    # A titles-only catalogue (MovieLens): every method ran, none has an
    # image query; that is no claim to test, not too little data.
    text = {'text': {'accuracy@1': {'mean': 0.01},
                     'recall@10': {'mean': 0.05}}, 'image': None}
    c = _by_id(claims.claims({'scl': text, 'scl_no_queue': text}, {}))
    self.assertEqual(c['queue_adds_image']['verdict'], claims.NOT_TESTABLE)
    self.assertIn('no held-out image queries on this dataset (no item '
                  'images)', c['queue_adds_image']['statement'])
    self.assertEqual(c['queue_adds_text']['verdict'], claims.INSUFFICIENT)

  def test_left_out_by_the_configuration_is_not_testable(self):
    # make demo runs a subset: a claim over methods / variants the config
    # left out says so, not "insufficient data".
    text = {'text': {'accuracy@1': {'mean': 0.1}, 'recall@10': {'mean': 0.5}},
            'image': None}
    got = results.build_results(
        {'statistics': {}, 'honesty_auc': None, 'honesty_problems': []},
        {'scl_no_queue': text}, {'variants': {}},
        ['scl_no_queue', 'raw_pixels'], ['id', 'simtier_make'])
    c = _by_id(got['claims'])
    for cid in ('scl_over_clip_e_over_clip_o_text', 'queue_adds_image',
                'simtier_and_make_beat_vector_and_simscore'):
      self.assertEqual(c[cid]['verdict'], claims.NOT_TESTABLE, cid)
      self.assertIn("not in this configuration's pretrain.methods / "
                    'ctr.variants', c[cid]['statement'])
    self.assertIn('scl not run', c['queue_adds_image']['statement'])
    self.assertNotIn('scl_no_queue not run',
                     c['queue_adds_image']['statement'])
    # simtier_make is configured (here it has no result): not "not run".
    self.assertNotEqual(c['simtier_make_gauc_gain']['verdict'],
                        claims.NOT_TESTABLE)


class FlagsTest(absltest.TestCase):
  """Inputs too weak for their numbers are flagged (issue 22, item 12)."""

  def _data(self, candidates=1682, queries=900, method='bag_of_tokens'):
    return {'ctr_vectors': {'source': 'pretrained', 'method': method},
            'pretraining': {'eval': {'task': 'co_click', 'queries': queries,
                                     'candidates': candidates}}}

  def _table(self, recall, slices=('item',)):
    return {'bag_of_tokens': {s: {'recall@10': {'mean': r}}
                              for s, r in zip(slices, recall)}}

  def test_vectors_at_chance(self):
    # MovieLens: untrained bag-of-tokens, co-click recall@10 0.007 against
    # 1,682 items (chance 0.006).
    got = flags.flags(self._table([0.007]), {}, self._data())
    self.assertEqual([f['id'] for f in got], ['vectors_at_chance'])
    self.assertIn('recall@10 item 0.007 vs. chance 0.006', got[0]['text'])
    self.assertIn('no measured content signal', got[0]['text'])
    # Well above chance: nothing to flag.
    self.assertEqual(flags.flags(self._table([0.2]), {}, self._data()), [])
    # Search: one modality at chance, the other not.
    got = flags.flags(
        self._table([0.004, 0.3], ('image_catalogue', 'text_catalogue')),
        {}, self._data(candidates=3000))
    self.assertIn('partly: recall@10 image_catalogue 0.004',
                  got[0]['text'])
    self.assertNotIn('text_catalogue', got[0]['text'])
    # Shipped vectors were not evaluated here: no verdict on them.
    data = self._data()
    data['ctr_vectors'] = {'source': 'shipped', 'method': None}
    self.assertEqual(flags.flags(self._table([0.001]), {}, data), [])

  def test_ctr_models_at_or_below_chance(self):
    cell = lambda x: {'mean': x, 'std': 0.0, 'runs': 1}
    ctr = {'id': {'auc': cell(0.4462), 'gauc': cell(0.3718)},
           'id_stats': {'auc': cell(0.7015), 'gauc': cell(0.7076)},
           # AUC above chance, GAUC at it; a GAUC that had no user: nan.
           'simscore': {'auc': cell(0.55), 'gauc': cell(0.5)},
           'vector': {'auc': cell(0.6), 'gauc': cell(float('nan'))}}
    got = {f['id']: f['text'] for f in flags.flags({}, ctr, {})}
    self.assertEqual(set(got), {'ctr_at_chance'})
    self.assertIn('id (AUC 0.446, GAUC 0.372); simscore (AUC 0.550, GAUC '
                  '0.500)', got['ctr_at_chance'])
    self.assertNotIn('id_stats', got['ctr_at_chance'])
    self.assertNotIn('vector', got['ctr_at_chance'])
    ctr.pop('id'), ctr.pop('simscore')
    self.assertEqual(flags.flags({}, ctr, {}), [])

  def test_variant_indistinguishable_from_id(self):
    def row(auc_ci, gauc_ci):
      cell = lambda ci: {'delta_pct': sum(ci) / 2, 'ci_pct': ci}
      return {'auc': {'mean': 0.76}, 'gauc': {'mean': 0.75},
              'bootstrap': {'vs_id': {'all': {'auc': cell(auc_ci),
                                              'gauc': cell(gauc_ci)}}}}
    # The default world's SimScore under `dot` attention, and neighbours:
    # one interval reaching past 0.1% (either side) is a variant that moves.
    ctr = {'id': {'auc': {'mean': 0.76}, 'gauc': {'mean': 0.75}},
           'simscore': row([-0.006, 0.011], [-0.074, 0.018]),
           'id_stats': row([-0.05, 0.05], [-0.05, 0.05]),
           'vector': row([-0.05, 0.05], [-0.02, 0.11]),
           'make': row([-0.12, 0.05], [-0.05, 0.05]),
           'simtier_paper': row([0.45, 1.05], [0.50, 1.47])}
    got = {f['id']: f['text'] for f in flags.flags({}, ctr, {})}
    self.assertEqual(set(got), {'inert_variant'})
    self.assertIn('simscore (ΔAUC % [-0.01, +0.01], ΔGAUC % [-0.07, +0.02])',
                  got['inert_variant'])
    for v in ('id_stats', 'vector', 'make', 'simtier_paper'):
      self.assertNotIn(v, got['inert_variant'])
    self.assertIn('SimScore\'s cosine enters only the attention',
                  got['inert_variant'])
    # Another inert variant gets no SimScore hint.
    ctr['make'] = ctr.pop('simscore')
    got = {f['id']: f['text'] for f in flags.flags({}, ctr, {})}
    self.assertIn('make (ΔAUC %', got['inert_variant'])
    self.assertNotIn('SimScore', got['inert_variant'])
    ctr['simscore'] = ctr.pop('make')
    # A variant without intervals (a single run, no bootstrap) is not judged.
    del ctr['simscore']['bootstrap']
    self.assertEqual(flags.flags({}, ctr, {}), [])

  def test_at_chance_rule(self):
    self.assertAlmostEqual(flags.chance_recall(1000), 0.01)
    self.assertTrue(flags.at_chance(0.019, 1000, 10_000))  # < 2x chance
    self.assertFalse(flags.at_chance(0.03, 1000, 10_000))
    # Few queries: 0.05 is within the noise of chance 0.01 on 20 queries.
    self.assertTrue(flags.at_chance(0.05, 1000, 20))
    self.assertEqual(flags.chance_recall(5), 1.0)

  def test_thin_new_item_slice_and_unvalidated_baseline(self):
    rows = _rows()
    # 14 new-item rows, as on MovieLens: one user with both classes.
    new = np.flatnonzero(rows['exposure_group'] == -1)
    rows['exposure_group'][new[14:]] = 5
    m = _Models(rows)
    ctr = _ctr({'id': m.model(2.0), 'simtier_make': m.model(1.0)})
    ctr['id']['slices'] = {'new': {'count': 14}}
    base = {'auc': {'variant': 'id'}, 'gauc': {'variant': 'id'},
            'why': 'id_stats did not run: judged against id'}
    got = {f['id']: f['text'] for f in flags.flags({}, ctr, {}, base)}
    self.assertEqual(set(got), {'thin_slice_new', 'baseline_not_validated'})
    self.assertRegex(got['thin_slice_new'],
                     r'New items: 14 test rows, \d users with both classes '
                     r'\(fewer than 30\)')
    self.assertIn('id_stats did not run', got['baseline_not_validated'])
    # A table of these runs marks the new-item columns and says why.
    text = ctr_sweep.markdown({'variants': {
        v: {'auc': None, 'logloss': None, 'slices': {}, **row}
        for v, row in ctr.items()}})
    self.assertIn('†', text)
    self.assertIn('† New items: 14 test rows', text)


class SeedStatsTest(absltest.TestCase):

  def test_a_single_run_prints_the_number_alone(self):
    self.assertEqual(seed_stats.text(seed_stats.cell([0.745])), '0.7450')
    self.assertEqual(seed_stats.text(seed_stats.cell([0.7, 0.8]), 2),
                     '0.75 ± 0.05')
    self.assertEqual(seed_stats.text(None), 'n/a')
    self.assertIsNone(seed_stats.cell([None, float('nan')]))


if __name__ == '__main__':
  absltest.main()
