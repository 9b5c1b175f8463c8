"""Tests of the world generator and its honesty requirements (world.md)."""

from absl.testing import absltest
from absl.testing import parameterized
import fixtures
import numpy as np

from experiments.configs import world as world_config
from mmrec.data import honesty
from mmrec.data import world as world_lib

# Model-visible tables must not carry any hidden quantity.
_HIDDEN = ('concept', 'quality', 'taste', 'propensity', 'interest', 'p',
           'impression_p', 'activity')


class ValidateTest(parameterized.TestCase):

  def test_default_and_tiny_are_valid(self):
    world_lib.validate(world_config.get_world_config())
    world_lib.validate(world_config.get_world_config('tiny'))

  @parameterized.parameters(
      ('num_items', -5, 'num_items'),
      ('num_users', 0, 'num_users'),
      ('synonym_rate', 1.5, 'synonym_rate'),
      ('new_item_share', -0.1, 'new_item_share'),
      ('target_ctr', 0.9, 'target_ctr'),
      ('seq_len', 0, 'seq_len'),
      ('num_test_days', 4, 'num_test_days'),  # tiny has 4 days
      ('num_test_days', 9, 'num_test_days'),
      ('image_size', 4, 'image_size'),
      ('quality_std', float('nan'), 'quality_std'),
  )
  def test_bad_field_is_named_with_its_range(self, field, value, named):
    cfg = fixtures.tiny_config()
    with cfg.unlocked():
      cfg[field] = value
    with self.assertRaisesRegex(ValueError, named) as ctx:
      world_lib.validate(cfg)
    self.assertRegex(str(ctx.exception), r'allowed range|in \[|must be')

  def test_too_few_items_for_concepts(self):
    with self.assertRaisesRegex(ValueError, 'num_items'):
      world_lib.validate(fixtures.tiny_config(num_items=100))


class DeterminismTest(absltest.TestCase):

  def test_same_seed_same_world_other_seed_differs(self):
    small = dict(num_users=300, num_items=400, num_search_sessions=200,
                 num_captions=100)
    a = world_lib.generate(fixtures.tiny_config(**small))
    b = world_lib.generate(fixtures.tiny_config(**small))
    c = world_lib.generate(fixtures.tiny_config(seed=1, **small))
    for table in ('items', 'users', 'search', 'impressions', 'captions'):
      ta, tb, tc = (getattr(w, table) for w in (a, b, c))
      for k in ta:
        np.testing.assert_array_equal(ta[k], tb[k], err_msg=f'{table}.{k}')
    self.assertFalse(np.array_equal(a.items['image'], c.items['image']))
    self.assertFalse(np.array_equal(a.impressions['label'],
                                    c.impressions['label']))


class StructureTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.w = fixtures.tiny_world()
    cls.cfg = cls.w.config

  def test_no_hidden_field_in_model_tables(self):
    for table in ('items', 'users', 'search', 'impressions', 'captions'):
      for k in getattr(self.w, table):
        self.assertNotIn(k, _HIDDEN, f'{table}.{k} leaks a hidden quantity')
    self.assertIn('impression_p', self.w.oracle)
    self.assertIn('concept_vec', self.w.oracle)

  def test_ids_in_range_and_sequences_right_aligned(self):
    imp, n_items = self.w.impressions, self.cfg.num_items
    self.assertTrue(((imp['item_id'] >= 0) & (imp['item_id'] < n_items)).all())
    self.assertTrue(((imp['seq_len'] >= 0) &
                     (imp['seq_len'] <= self.cfg.seq_len)).all())
    pad = (np.arange(self.cfg.seq_len)[None] <
           self.cfg.seq_len - imp['seq_len'][:, None])
    self.assertTrue((imp['seq_item'][pad] == 0).all())

  def test_clicks_enter_next_days_sequence_newest_last(self):
    imp = self.w.impressions
    checked = 0
    for day in range(self.cfg.num_days - 1):
      today = imp['day'] == day
      tomorrow = np.flatnonzero(imp['day'] == day + 1)
      first_row = dict(zip(imp['user_id'][tomorrow][::-1], tomorrow[::-1]))
      clicks = today & (imp['label'] == 1)
      for user in np.unique(imp['user_id'][clicks])[:50]:
        if user not in first_row:
          continue
        mine = imp['item_id'][clicks & (imp['user_id'] == user)]
        mine = mine[-self.cfg.seq_len:]
        seq = imp['seq_item'][first_row[user]]
        np.testing.assert_array_equal(seq[-len(mine):], mine)
        checked += 1
    self.assertGreater(checked, 20)

  def test_items_appear_only_after_launch_new_items_on_test_day(self):
    imp, launch = self.w.impressions, self.w.items['launch_day']
    self.assertTrue((launch[imp['item_id']] <= imp['day']).all())
    new = launch >= self.w.first_test_day
    self.assertGreater(new.sum(), 0)
    test = imp['day'] >= self.w.first_test_day
    self.assertFalse(new[imp['item_id'][~test]].any())
    self.assertGreater(new[imp['item_id'][test]].mean(), 0.01)

  def test_ctr_and_long_tail(self):
    stats = honesty.statistics(self.w)
    self.assertBetween(stats['ctr'], 0.03, 0.06)
    self.assertGreater(stats['top_1pct_item_impression_share'], 0.05)
    self.assertLess(stats['bottom_50pct_item_impression_share'], 0.4)

  def test_images_never_identical(self):
    flat = self.w.items['image'].reshape(self.cfg.num_items, -1)
    self.assertLen(np.unique(flat, axis=0), self.cfg.num_items)
    s = self.w.search
    photos = s['query_image'][s['query_is_image']].reshape(
        s['query_is_image'].sum(), -1)
    both = np.concatenate([flat, photos])
    self.assertLen(np.unique(both, axis=0), len(both))

  def test_buyer_slang_only_in_queries_and_captions_have_no_category(self):
    v = self.w.vocab
    slang = np.concatenate([v.leaf[:, 2], v.colour[:, 2], v.pattern[:, 2],
                            v.style[:, 2]])
    self.assertFalse(np.isin(self.w.items['title'], slang).any())
    queries = self.w.search['query_text'][~self.w.search['query_is_image']]
    self.assertTrue(np.isin(queries, slang).any())
    self.assertTrue((np.count_nonzero(queries, axis=1) >= 2).all())
    self.assertTrue((np.count_nonzero(queries, axis=1) <=
                     self.cfg.query_text_max_len).all())
    nouns = np.concatenate([v.leaf.reshape(-1), v.top])
    self.assertFalse(np.isin(self.w.captions['caption'], nouns).any())
    self.assertIn(v.words[self.w.items['title'][0][0]], v.decode(
        self.w.items['title'][0]))

  def test_search_log(self):
    s, items = self.w.search, self.w.items
    new = items['launch_day'] >= self.w.first_test_day
    # Sessions that buy a new item are held out; hard negatives are old items.
    self.assertTrue(s['held_out'][new[s['purchased_item']]].all())
    self.assertFalse(new[s['hard_negatives'][s['hard_negative_mask']]].any())
    # Hard negatives share the leaf of the purchase but are another concept.
    concept = self.w.oracle['item_concept']
    rows, cols = np.nonzero(s['hard_negative_mask'])
    neg, pos = s['hard_negatives'][rows, cols], s['purchased_item'][rows]
    np.testing.assert_array_equal(items['category'][neg],
                                  items['category'][pos])
    self.assertTrue((concept[neg] != concept[pos]).all())
    self.assertTrue((s['query_image'][~s['query_is_image']] == 0).all())


class HonestyTest(absltest.TestCase):

  def test_orderings_hold_on_tiny_world(self):
    aucs = honesty.baseline_aucs(fixtures.tiny_world())
    self.assertEqual(honesty.check(aucs), [])
    # Clear margins, not just orderings.
    self.assertGreater(aucs['oracle']['all'] - aucs['id_only']['all'], 0.05)
    self.assertGreater(aucs['oracle']['all'] - aucs['category_only']['all'],
                       0.05)
    self.assertGreater(aucs['id_only']['all'], 0.58)
    self.assertGreater(aucs['category_only']['all'], 0.58)
    self.assertEqual(aucs['id_only']['new_items'], 0.5)
    self.assertGreater(aucs['category_only']['new_items'], 0.58)

  def test_content_weight_sets_what_content_adds(self):
    # The knob: with content_weight = 0 the true concepts add (almost)
    # nothing to the ID statistics; with 1.5 they add clearly more.
    gain = {}
    for cw in (0.0, 1.5):
      aucs = honesty.baseline_aucs(
          world_lib.generate(fixtures.tiny_config(content_weight=cw)))
      gain[cw] = aucs['id_stats_content']['all'] - aucs['id_stats']['all']
    self.assertLess(gain[0.0], 0.01)
    self.assertGreater(gain[1.5], gain[0.0] + 0.015)

  def test_content_weight_changes_only_the_clicks(self):
    # The content-knob curve reuses one encoder's item vectors for every
    # value: items, users, search and captions must not depend on it.
    a = world_lib.generate(fixtures.tiny_config(content_weight=0.0))
    b = fixtures.tiny_world()
    self.assertNotEqual(a.config.content_weight, b.config.content_weight)
    for table in ('items', 'users', 'search', 'captions'):
      for k, v in getattr(a, table).items():
        np.testing.assert_array_equal(v, getattr(b, table)[k], f'{table}.{k}')
    self.assertFalse(np.array_equal(a.impressions['label'],
                                    b.impressions['label']))

  def test_check_reports_violations(self):
    good = {'oracle': 0.8, 'id_only': 0.65, 'category_only': 0.7,
            'random': 0.5, 'id_stats': 0.72, 'id_stats_content': 0.74}
    aucs = {k: {'all': v, 'new_items': 0.5 if k != 'category_only' else 0.6}
            for k, v in good.items()}
    self.assertEqual(honesty.check(aucs), [])
    aucs['id_only']['new_items'] = 0.6
    aucs['category_only']['all'] = 0.9
    aucs['id_stats_content']['all'] = 0.71  # content adds nothing
    problems = honesty.check(aucs)
    self.assertLen(problems, 3)
    self.assertIn('new items', ' '.join(problems))
    self.assertIn('id_stats 0.7200 is not below id_stats_content',
                  ' '.join(problems))

  def test_format_report(self):
    w = fixtures.tiny_world()
    text = honesty.format_report(honesty.statistics(w),
                                 honesty.baseline_aucs(w))
    self.assertIn('(iii) category share', text)
    self.assertIn('(vi) (v) + true concepts', text)
    self.assertIn('orderings: OK', text)


if __name__ == '__main__':
  absltest.main()
