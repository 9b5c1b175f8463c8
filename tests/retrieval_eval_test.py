"""Tests of the pre-training accuracy protocol."""

import dataclasses
import os

from absl.testing import absltest
import fixtures
import numpy as np

from mmrec import retrieval_eval
from mmrec.data import manifest


def _concept_hits(sessions, items, image_q, text_q, candidates, concept,
                  chunk=256):
  """{'image_concept', 'text_concept'}: hits, as pretrain_eval reads them."""
  ranks = retrieval_eval.concept_ranks(sessions, items, image_q, text_q,
                                       candidates, concept, 10, chunk)
  return {f'{m}_concept': r for m, r in
          retrieval_eval.summarise(ranks, sessions).items()}


class RetrievalEvalTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    w = fixtures.tiny_world()
    cls.w = w
    s = w.search
    cls.sessions = {k: v[s['held_out']] for k, v in s.items()}
    cls.new = w.items['launch_day'] >= w.first_test_day

  def test_perfect_queries_score_one_random_scores_low(self):
    rng = np.random.default_rng(0)
    items = rng.normal(size=(len(self.new), 32))
    exact = items[self.sessions['purchased_item']]
    res = retrieval_eval.evaluate(self.sessions, items, exact, exact,
                                  new_items=self.new)
    for name in ('image', 'text', 'image_new', 'text_new'):
      self.assertEqual(res[name]['accuracy@1'], 1.0, name)
      self.assertGreater(res[name]['queries'], 0)
    noise = rng.normal(size=exact.shape)
    res = retrieval_eval.evaluate(self.sessions, items, noise, None)
    self.assertLess(res['image']['recall@10'], 0.2)
    self.assertIsNone(res['text'])

  def test_concept_vectors_beat_chance_and_hard_negatives_count(self):
    concept_vec = self.w.oracle['concept_vec'][self.w.oracle['item_concept']]
    q = concept_vec[self.sessions['purchased_item']]
    res = retrieval_eval.evaluate(self.sessions, concept_vec, q, q)
    # Items share concept vectors, so ties (pessimistic) keep top-1 < 1 but
    # recall@10 well above chance.
    self.assertGreater(res['image']['recall@10'], 0.3)
    # Hard negatives are candidates: making them identical to the target
    # pushes the target out of the top 1 for every session that has one.
    items = concept_vec.copy()
    s = self.sessions
    has = s['hard_negative_mask'].any(1)
    first = s['hard_negatives'][np.arange(len(has)), s[
        'hard_negative_mask'].argmax(1)]
    items[first[has]] = items[s['purchased_item'][has]]
    exact = items[s['purchased_item']]
    res = retrieval_eval.evaluate(s, items, exact, exact)
    # (Sessions sharing a hard negative overwrite each other: most, not all,
    # targets now tie with one.)
    self.assertLess(res['image']['accuracy@1'],
                    1 - 0.5 * has[s['query_is_image']].mean())

  def test_each_candidate_counts_once(self):
    # Two sessions buying items 0 and 1; session 0's hard negatives are item
    # 1 (already in the pool), item 2 twice and item 3 (masked off).
    sessions = {
        'purchased_item': np.array([0, 1]),
        'query_is_image': np.array([True, True]),
        'hard_negatives': np.array([[1, 2, 2, 3], [0, 0, 0, 0]]),
        'hard_negative_mask': np.array([[True, True, True, False],
                                        [False] * 4]),
    }
    # Unit vectors at angles 0, 10, 8, 9 degrees; query 0 at 7 degrees is
    # closer to items 1, 2 and 3 than to its own item 0.
    angle = np.deg2rad(np.array([0.0, 10.0, 8.0, 9.0]))
    items = np.stack([np.cos(angle), np.sin(angle)], 1)
    q = np.array([[np.cos(np.deg2rad(7)), np.sin(np.deg2rad(7))], items[1]])
    ranks = retrieval_eval.query_ranks(sessions, items, q, None)
    # Candidates of session 0: items 0, 1 (the pool) and 2 (once), not 3:
    # two rank above item 0 (counting duplicates would make it 4).
    self.assertEqual(ranks['image'][0], 2)
    self.assertEqual(ranks['image'][1], 0)


  def test_catalogue_ranking_counts_items_outside_the_pool(self):
    # The world's catalogue holds the pool (held-out purchases and hard
    # negatives) and more: no query ranks better against the catalogue.
    rng = np.random.default_rng(1)
    items = rng.normal(size=(len(self.new), 16))
    s = self.sessions
    q = items[s['purchased_item']] + rng.normal(size=(len(s['purchased_item']),
                                                      16))
    canonical = np.arange(len(items))
    cand = retrieval_eval.catalogue_candidates(canonical,
                                               s['purchased_item'],
                                               reserved_zero=False)
    np.testing.assert_array_equal(cand, canonical)  # item 0 is an item
    pool = retrieval_eval.query_ranks(s, items, q, q)
    cat = retrieval_eval.query_ranks(s, items, q, q, cand, canonical,
                                     chunk=7)
    for m in ('image', 'text'):
      asked = pool[m] >= 0
      self.assertTrue(asked.any())
      np.testing.assert_array_equal(cat[m] >= 0, asked)
      self.assertTrue((cat[m][asked] >= pool[m][asked]).all(), m)
      self.assertGreater(cat[m][asked].mean(), pool[m][asked].mean(), m)
    res = retrieval_eval.evaluate(s, items, q, q, candidates=cand,
                                  canonical=canonical)
    self.assertAlmostEqual(res['image']['recall@10'],
                           np.mean(cat['image'][cat['image'] >= 0] < 10))

  def test_concept_hits_find_the_concept_exact_ranks_cannot(self):
    # Concept vectors as items and queries: every listing of the bought
    # concept ties with the bought one. The concept is always found; the
    # exact item (ties against it) almost never first.
    concept = self.w.oracle['item_concept']
    items = self.w.oracle['concept_vec'][concept]
    s = self.sessions
    q = items[s['purchased_item']]
    cand = np.arange(len(items))
    hits = _concept_hits(s, items, q, None, cand, concept, chunk=5)
    self.assertEqual(hits['image_concept']['accuracy@1'], 1.0)
    self.assertEqual(hits['image_concept']['queries'],
                     int(s['query_is_image'].sum()))
    self.assertIsNone(hits['text_concept'])
    exact = retrieval_eval.evaluate(s, items, q, None, candidates=cand,
                                    canonical=cand)
    self.assertLess(exact['image']['accuracy@1'], 0.1)
    # Random items: hits at the rate of the concept's share of the top 10.
    rng = np.random.default_rng(0)
    hits = _concept_hits(s, rng.normal(size=items.shape), q, q, cand,
                         concept)
    share = np.bincount(concept).mean() / len(concept)
    self.assertLess(hits['text_concept']['recall@10'], 20 * share + 0.05)

  def test_catalogue_ranking_by_hand(self):
    # Items 0-4 at angles 0, 10, 8, 8, 40 degrees; items 2 and 3 are one
    # product listed twice (one canonical id, 2). The session buys item 1
    # with a query at 4 degrees: item 2 (one candidate for 2 and 3) and
    # item 0 are closer than item 1 (10 degrees); item 4 is not.
    angle = np.deg2rad(np.array([0.0, 10.0, 8.0, 8.0, 40.0]))
    items = np.stack([np.cos(angle), np.sin(angle)], 1)
    canonical = np.array([0, 1, 2, 2, 4])
    sessions = {'purchased_item': np.array([1]),
                'query_is_image': np.array([False]),
                'hard_negatives': np.zeros((1, 1), int),
                'hard_negative_mask': np.zeros((1, 1), bool)}
    q = np.array([[np.cos(np.deg2rad(4)), np.sin(np.deg2rad(4))]])
    # paper.md's pool is the purchased item alone: rank 0.
    self.assertEqual(retrieval_eval.query_ranks(sessions, items, None,
                                                q)['text'][0], 0)
    cand = retrieval_eval.catalogue_candidates(canonical, [1],
                                               reserved_zero=False)
    np.testing.assert_array_equal(cand, [0, 1, 2, 4])
    rank = retrieval_eval.query_ranks(sessions, items, None, q, cand,
                                      canonical)
    self.assertEqual(rank['text'][0], 2)  # items 0 and 2, not 3 again
    self.assertEqual(rank['image'][0], -1)
    # A declared candidate set without item 0; the target joins it.
    cand = retrieval_eval.catalogue_candidates(canonical, [1],
                                               declared=[3, 4])
    np.testing.assert_array_equal(cand, [1, 2, 4])
    self.assertEqual(retrieval_eval.query_ranks(
        sessions, items, None, q, cand, canonical)['text'][0], 1)
    # Item 0 is converted data's unknown bucket: never a candidate.
    np.testing.assert_array_equal(
        retrieval_eval.catalogue_candidates(canonical, [1]), [1, 2, 4])
    with self.assertRaisesRegex(ValueError, 'must be a candidate'):
      retrieval_eval.query_ranks(sessions, items, None, q, np.array([2, 4]),
                                 canonical)


class CoClickTest(absltest.TestCase):
  """The evaluation of data without a search log: held-out co-clicks ranked
  against the catalogue."""

  def test_identical_content_is_one_candidate(self):
    image = np.zeros((5, 2, 2, 3), np.uint8)
    image[2] = image[4] = 7  # items 2 and 4: one product listed twice
    image[3] = 9
    title = np.array([[0, 0], [1, 2], [3, 4], [3, 4], [3, 4]], np.int32)
    canonical = retrieval_eval.canonical_items({'image': image,
                                                'title': title})
    # Item 3 has item 2's title but not its image: another product.
    np.testing.assert_array_equal(canonical, [0, 1, 2, 3, 2])
    np.testing.assert_array_equal(
        retrieval_eval.catalogue_candidates(canonical), [1, 2, 3])
    # Titles only (no image column): 2, 3 and 4 are one content.
    np.testing.assert_array_equal(
        retrieval_eval.canonical_items({'title': title}), [0, 1, 2, 2, 2])

  def test_pairs_are_distinct_known_and_not_one_item(self):
    canonical = np.array([0, 1, 2, 3, 2])
    pairs = retrieval_eval.co_click_pairs(
        query_item=np.array([1, 1, 1, 0, 2, 3, 3]),
        target_item=np.array([2, 4, 3, 1, 4, 1, 2]), canonical=canonical)
    # (1, 4) is (1, 2) again; item 0 is unknown; (2, 4) is one item.
    np.testing.assert_array_equal(pairs, [[1, 2], [1, 3], [3, 1], [3, 2]])
    np.testing.assert_array_equal(
        retrieval_eval.co_click_pairs(np.array([1, 1]), np.array([2, 3]),
                                      canonical, max_pairs=1), [[1, 2]])

  def test_a_twin_of_the_target_wins_half_the_ties(self):
    # Items 2 and 3 share one vector (two listings whose titles hold the
    # same words, for bag-of-tokens) but are two candidates. Queries that
    # point at them rank the target 0 or 1, each about half the time, in
    # both catalogue rankings (co-clicks and search sessions).
    rng = np.random.default_rng(0)
    items = rng.normal(size=(6, 8)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    items[3] = items[2]
    n = 600
    target = np.where(np.arange(n) % 2 == 0, 2, 3)
    q = items[target] + 0.05 * rng.normal(size=(n, 8)).astype(np.float32)
    candidates = np.array([1, 2, 3, 4, 5])
    pairs = np.stack([np.full(n, 1), target], 1)
    ranks = retrieval_eval.catalogue_ranks(q, pairs, items, candidates,
                                           chunk=64)
    self.assertEqual(set(ranks.tolist()), {0, 1})
    self.assertAlmostEqual(np.mean(ranks == 0), 0.5, delta=0.07)
    sessions = {'purchased_item': target,
                'query_is_image': np.zeros(n, bool),
                'hard_negatives': np.zeros((n, 1), int),
                'hard_negative_mask': np.zeros((n, 1), bool)}
    rank = retrieval_eval.query_ranks(sessions, items, None, q, candidates,
                                      np.arange(6), chunk=64)['text']
    self.assertEqual(set(rank.tolist()), {0, 1})
    self.assertAlmostEqual(np.mean(rank == 0), 0.5, delta=0.07)

  def test_ranks_skip_the_query_item_and_count_ties_against(self):
    # Unit vectors at angles 0, 10, 20, 20, 90 degrees for items 0-4.
    angle = np.deg2rad(np.array([0.0, 10.0, 20.0, 20.0, 90.0]))
    items = np.stack([np.cos(angle), np.sin(angle)], 1)
    candidates = np.array([1, 2, 3, 4])
    pairs = np.array([[1, 2], [1, 4], [4, 1]])
    ranks = retrieval_eval.catalogue_ranks(items[pairs[:, 0]], pairs, items,
                                           candidates)
    # Query 1 itself would rank first; it is no candidate. Item 3 ties
    # with item 2: item 2 ranks 0 or 1 (random tie-breaking).
    self.assertIn(ranks[0], (0, 1))
    np.testing.assert_array_equal(ranks[1:], [2, 2])
    # A query item outside the candidates (a declared set) masks nothing.
    np.testing.assert_array_equal(retrieval_eval.catalogue_ranks(
        items[[1]], np.array([[1, 4]]), items, np.array([2, 3, 4])), [2])
    out = retrieval_eval.co_click_ranks({'item': items, 'text': items},
                                        pairs, candidates)
    metrics = retrieval_eval.co_click_summary(
        out, pairs, np.array([False, False, False, False, True]))
    np.testing.assert_array_equal(out['item'], ranks)
    np.testing.assert_array_equal(out['image'], [-1, -1, -1])
    self.assertIsNone(metrics['image'])
    self.assertAlmostEqual(metrics['item']['recall@10'], 1.0)
    self.assertAlmostEqual(metrics['text']['accuracy@1'], 0.0)
    self.assertEqual(metrics['item_new']['queries'], 1)  # target 4 is new
    self.assertEqual(metrics['text_on_text']['queries'], 3)


class ValidationPartTest(absltest.TestCase):

  def test_parts_are_fixed_by_the_key_disjoint_and_half(self):
    keys = np.arange(20_000)
    val = retrieval_eval.validation_part(keys)
    self.assertEqual(val.dtype, bool)
    self.assertBetween(val.mean(), 0.48, 0.52)
    # Not alternating rows or a block: every 10th session (the converter's
    # fallback) or a day's sessions still land in both parts.
    for sub in (keys[::10], keys[:500], keys[-500:]):
      self.assertBetween(retrieval_eval.validation_part(sub).mean(), 0.4,
                         0.6)
    # The key decides, not the row: shuffled, subset or alone, a query keeps
    # its part (the same query is in the same part for every method).
    order = np.random.default_rng(0).permutation(len(keys))
    np.testing.assert_array_equal(retrieval_eval.validation_part(keys[order]),
                                  val[order])
    np.testing.assert_array_equal(retrieval_eval.validation_part(keys[7:9]),
                                  val[7:9])
    # Pinned: a change of the hash would move queries between the parts of
    # stored runs.
    self.assertEqual(np.flatnonzero(val[:12]).tolist(), [3, 4, 5, 7, 10, 11])
    self.assertEqual(retrieval_eval.validation_part(keys, 0.0).sum(), 0)
    self.assertTrue(retrieval_eval.validation_part(keys, 1.0).all())
    with self.assertRaisesRegex(ValueError, 'non-negative'):
      retrieval_eval.validation_part(np.array([3, -1]))

  def test_co_click_keys_name_the_ordered_pair(self):
    keys = retrieval_eval.co_click_keys(np.array([[1, 2], [2, 1], [1, 2]]))
    self.assertLen(set(keys[:2].tolist()), 2)  # (1, 2) is not (2, 1)
    self.assertEqual(keys[0], keys[2])
    self.assertLen(retrieval_eval.co_click_keys(np.zeros((0, 2), int)), 0)

  def test_a_part_summary_is_the_summary_of_its_rows(self):
    # co_click_summary of some pairs' ranks = the metrics computed over
    # those pairs alone (no tie among these vectors).
    rng = np.random.default_rng(0)
    items = rng.normal(size=(40, 8))
    pairs = np.stack([rng.integers(0, 40, 60), rng.integers(0, 40, 60)], 1)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    cand = np.arange(40)
    new = np.arange(40) >= 30
    ranks = retrieval_eval.co_click_ranks({'item': items}, pairs, cand)
    rows = retrieval_eval.validation_part(retrieval_eval.co_click_keys(pairs))
    part = retrieval_eval.co_click_summary(
        {k: v[rows] for k, v in ranks.items()}, pairs[rows], new)
    alone = retrieval_eval.co_click_summary(retrieval_eval.co_click_ranks(
        {'item': items}, pairs[rows], cand), pairs[rows], new)
    self.assertEqual(part, alone)
    self.assertEqual(part['item']['queries'], rows.sum())


class DeclaredCandidatesTest(absltest.TestCase):

  def test_read_and_checked(self):
    m = dataclasses.replace(manifest.load(fixtures.tiny_world_dir()),
                            retrieval_candidates='c.npy')
    d = self.create_tempdir().full_path
    path = os.path.join(d, 'c.npy')
    self.assertIsNone(manifest.retrieval_candidates(
        d, dataclasses.replace(m, retrieval_candidates=None)))
    with self.assertRaisesRegex(manifest.DatasetError,
                                'c.npy: the declared retrieval candidates '
                                'cannot be read'):
      manifest.retrieval_candidates(d, m)
    for bad, message in (
        (np.zeros((2, 2), np.int64), r'1-D array of integer item ids, got '
         r'int64 of shape \(2, 2\)'),
        (np.array([1.5]), 'got float64'),
        (np.array([3, m.num_items]), f'row 1: item id {m.num_items}, '
         f'expected one in \\[0, num_items = {m.num_items}\\)')):
      np.save(path, bad)
      with self.assertRaisesRegex(manifest.DatasetError, message):
        manifest.retrieval_candidates(d, m)
    np.save(path, np.array([3, 1], np.int32))
    np.testing.assert_array_equal(manifest.retrieval_candidates(d, m), [3, 1])


if __name__ == '__main__':
  absltest.main()
