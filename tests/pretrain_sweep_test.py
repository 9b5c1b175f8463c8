"""Tests of the pre-training comparison table."""

import json
import os
import tempfile

from absl.testing import absltest
import fixtures
import numpy as np

from experiments import pretrain_sweep
from experiments import reproduce_inputs
from experiments.configs import paper
from experiments.configs import pretrain_sweep as sweep_config
from mmrec import pretrain_eval
from mmrec.data import builders


class SweepTest(absltest.TestCase):

  def test_reference_methods_table_and_skip_finished(self):
    c = sweep_config.get_config('tiny')
    c.methods = 'raw_pixels,bag_of_tokens'
    c.seeds = 2
    c.data_dir = fixtures.tiny_world_dir()
    workdir = tempfile.mkdtemp()
    table = pretrain_sweep.run(c, workdir)
    self.assertIsNone(table['raw_pixels']['text'])
    cell = table['bag_of_tokens']['text']['recall@10']
    self.assertEqual(cell['runs'], 2)
    self.assertBetween(cell['mean'], 0.0, 1.0)
    with open(os.path.join(workdir, 'pretrain_table.json')) as f:
      self.assertEqual(json.load(f), table)
    with open(os.path.join(workdir, 'pretrain_table.md')) as f:
      text = f.read()
    self.assertIn('| raw_pixels |', text)
    self.assertIn(' ± ', text)  # two seeds: a spread was measured
    self.assertIn('Test part of the held-out queries', text)
    self.assertIn('Validation part', text)
    # The per-query ranks give back each part's accuracy: the table is the
    # test part's, the validation table the validation part's.
    with open(os.path.join(workdir, 'bag_of_tokens', 'seed_0',
                           'pretrain_eval.json')) as f:
      res = json.load(f)
    with open(os.path.join(workdir,
                           'pretrain_validation_table.json')) as f:
      validation_table = json.load(f)
    counted = 0
    for part, key, tab in (('test', 'metrics', table),
                           ('validation', 'validation_metrics',
                            validation_table)):
      ranks = pretrain_sweep.load_queries(workdir, ['bag_of_tokens'], 2,
                                          part)['bag_of_tokens'][0]
      self.assertTrue((ranks['image_rank'] == -1).all())  # no image side
      text = res[key]['text']
      asked = ranks['text_rank'] >= 0
      self.assertEqual(asked.sum(), text['queries'])
      self.assertAlmostEqual((ranks['text_rank'][asked] < 10).mean(),
                             text['recall@10'])
      self.assertEqual(tab['bag_of_tokens']['text']['recall@10']['runs'], 2)
      counted += len(ranks['text_rank'])
    # Two disjoint parts of every held-out session, both of fair size.
    self.assertEqual(counted, res['eval']['queries'] +
                     res['eval']['validation_queries'])
    with np.load(os.path.join(workdir, 'bag_of_tokens', 'seed_0',
                              pretrain_eval.QUERIES_FILE)) as z:
      self.assertLen(z['text_rank'], counted)
      self.assertBetween(z['validation'].mean(), 0.3, 0.7)
      test = ~z['validation']
    # The report's retrieval grid draws the first image queries of the test
    # part.
    sessions = builders.load_table(c.data_dir, 'mmrec_search', 'test')
    first = np.flatnonzero(sessions['query_is_image'] & test)[:8]
    with np.load(os.path.join(workdir, 'raw_pixels', 'seed_0',
                              pretrain_eval.EXAMPLES_FILE)) as z:
      np.testing.assert_array_equal(z['purchased_item'],
                                    sessions['purchased_item'][first])
      np.testing.assert_array_equal(z['query_image'],
                                    sessions['query_image'][first])
      self.assertEqual(z['top_item'].shape, (8, 8))
    with open(os.path.join(workdir, pretrain_sweep.COMPARISONS_FILE)) as f:
      self.assertEqual(json.load(f), {})  # no claimed pair among these
    # A finished run is read back, not recomputed.
    path = os.path.join(workdir, 'raw_pixels', 'seed_0', 'pretrain_eval.json')
    with open(path) as f:
      res = json.load(f)
    res['metrics']['image']['recall@10'] = 0.5
    with open(path, 'w') as f:
      json.dump(res, f)
    with open(path.replace('seed_0', 'seed_1')) as f:
      seed1 = json.load(f)['metrics']['image']['recall@10']
    again = pretrain_sweep.run(c, workdir)
    self.assertAlmostEqual(again['raw_pixels']['image']['recall@10']['mean'],
                           (0.5 + seed1) / 2)
    # A run evaluated before the validation part existed is evaluated again.
    del res['validation_metrics']
    with open(path, 'w') as f:
      json.dump(res, f)
    again = pretrain_sweep.run(c, workdir)
    self.assertEqual(again, table)

  def test_comparisons_pair_queries_and_seeds(self):
    rng = np.random.default_rng(0)
    sessions = 400
    is_image = rng.random(sessions) < 0.5

    def ranks(p_hit):
      rank = np.where(rng.random(sessions) < p_hit, 0, 5)
      return {'image_rank': np.where(is_image, rank, -1),
              'text_rank': np.where(is_image, -1, rank)}

    queries = {'scl': [ranks(0.5), ranks(0.5)],
               'scl_no_queue': [ranks(0.2), ranks(0.2)],
               'scl_no_hard_neg': [ranks(0.5), ranks(0.5)]}
    out = pretrain_sweep.comparisons(queries, resamples=300)
    self.assertEqual(set(out), {'scl-scl_no_queue', 'scl-scl_no_hard_neg'})
    queue = out['scl-scl_no_queue']
    acc = lambda r: np.mean([(r[f'{m}_rank'][r[f'{m}_rank'] >= 0] == 0).mean()
                             for m in ('image', 'text')])
    self.assertAlmostEqual(queue['delta'], np.mean(
        [acc(b) - acc(a) for a, b in zip(queries['scl_no_queue'],
                                         queries['scl'])]))
    self.assertGreater(queue['ci'][0], 0)  # 0.5 vs. 0.2 on 400 queries
    lo, hi = out['scl-scl_no_hard_neg']['ci']  # the same hit rate
    self.assertLess(lo, 0)
    self.assertGreater(hi, 0)
    self.assertEqual((queue['queries'], queue['seeds']), (sessions, 2))
    # Each query modality apart, on accuracy@1 and recall@10.
    for m in ('image', 'text'):
      asked = is_image if m == 'image' else ~is_image
      hit = lambda r, k: (r[f'{m}_rank'][asked] < k).mean()
      for metric, k in pretrain_sweep.HIT_METRICS.items():
        cell = queue['by_modality'][m][metric]
        self.assertAlmostEqual(cell['delta'], np.mean(
            [hit(b, k) - hit(a, k) for a, b in zip(queries['scl_no_queue'],
                                                   queries['scl'])]))
        self.assertEqual(cell['queries'], asked.sum())
      # Ranks 0 or 5: every query is a hit at 10, for both methods.
      self.assertEqual(queue['by_modality'][m]['recall@10']['ci'], [0.0, 0.0])
      self.assertGreater(queue['by_modality'][m]['accuracy@1']['ci'][0], 0)
    # A method without an image side: no image cell, the text one stays.
    queries['scl_no_queue'] = [dict(r, image_rank=np.full(sessions, -1))
                               for r in queries['scl_no_queue']]
    by = pretrain_sweep.comparisons(queries, 50)['scl-scl_no_queue'][
        'by_modality']
    self.assertIsNone(by['image'])
    self.assertIsNotNone(by['text'])
    # Too few held-out queries: no interval.
    few = {m: [{k: v[:20] for k, v in r.items()} for r in runs]
           for m, runs in queries.items()}
    self.assertIsNone(pretrain_sweep.comparisons(few, 50)[
        'scl-scl_no_queue']['ci'])

  def test_old_comparisons_are_recomputed_from_the_stored_ranks(self):
    # A pre-training stage finished before the per-modality cells existed:
    # its claims would all read "insufficient data" without them.
    workdir = tempfile.mkdtemp()
    rng = np.random.default_rng(0)
    for method in ('scl', 'scl_no_queue'):
      os.makedirs(os.path.join(workdir, method, 'seed_0'))
      np.savez(os.path.join(workdir, method, 'seed_0',
                            pretrain_eval.QUERIES_FILE),
               image_rank=rng.integers(0, 20, 200),
               text_rank=rng.integers(0, 20, 200),
               validation=np.arange(200) % 2 == 0)
    path = os.path.join(workdir, pretrain_sweep.COMPARISONS_FILE)
    with open(path, 'w') as f:
      json.dump({'scl-scl_no_queue': {'delta': 0.0, 'ci': [0.0, 0.0]}}, f)
    c = sweep_config.get_config('tiny')
    c.seeds, c.bootstrap_resamples = 1, 20
    got = pretrain_sweep.load_comparisons(c, workdir, ['scl', 'scl_no_queue'])
    self.assertEqual(set(got['scl-scl_no_queue']['by_modality']),
                     {'image', 'text'})
    # The test part's sessions only.
    self.assertEqual(got['scl-scl_no_queue']['queries'], 100)
    self.assertEqual(got['scl-scl_no_queue']['split'], 'test')
    with open(path) as f:
      self.assertEqual(json.load(f), got)  # rewritten: read once, not twice
    self.assertEqual(pretrain_sweep.load_comparisons(c, workdir, []), got)

  def test_a_comparison_of_all_held_out_queries_is_recomputed(self):
    # Comparisons written before the held-out queries had a test part have
    # no 'split': the claims would read intervals over the validation part
    # too.
    workdir = tempfile.mkdtemp()
    for method in ('scl', 'scl_no_queue'):
      os.makedirs(os.path.join(workdir, method, 'seed_0'))
      np.savez(os.path.join(workdir, method, 'seed_0',
                            pretrain_eval.QUERIES_FILE),
               image_rank=np.zeros(40, int), text_rank=np.zeros(40, int),
               validation=np.arange(40) < 10)
    old = {'scl-scl_no_queue': {'by_modality': {}, 'queries': 40}}
    with open(os.path.join(workdir, pretrain_sweep.COMPARISONS_FILE),
              'w') as f:
      json.dump(old, f)
    c = sweep_config.get_config('tiny')
    c.seeds, c.bootstrap_resamples = 1, 20
    got = pretrain_sweep.load_comparisons(c, workdir, ['scl', 'scl_no_queue'])
    self.assertEqual(got['scl-scl_no_queue']['queries'], 30)
    # A stored run without the part is an error naming the file.
    np.savez(os.path.join(workdir, 'scl', 'seed_0',
                          pretrain_eval.QUERIES_FILE),
             image_rank=np.zeros(40, int), text_rank=np.zeros(40, int))
    with self.assertRaisesRegex(ValueError, "scl/seed_0.*'validation'"):
      pretrain_sweep.load_queries(workdir, ['scl'], 1)

  def test_selection_reads_the_validation_part(self):
    # Validation and test disagree on the best item table: the CTR
    # vectors' method (where vectors_method did not run) follows validation.
    def run(val, test):
      return {'metrics': {'item': {'accuracy@1': 0.0, 'recall@10': test}},
              'validation_metrics': {'item': {'accuracy@1': 0.0,
                                              'recall@10': val}}}
    results = {'raw_pixels': [run(0.1, 0.4)], 'clip_e': [run(0.3, 0.2)],
               'bag_of_tokens': [run(0.2, 0.3)]}
    test = pretrain_sweep.summarise(results)
    validation = pretrain_sweep.summarise(results, 'validation')
    ran = list(results)
    self.assertEqual(pretrain_sweep.best_method(test, ran), 'raw_pixels')
    self.assertEqual(pretrain_sweep.best_method(validation, ran), 'clip_e')
    pre_dir = tempfile.mkdtemp()
    for name, tab in ((pretrain_sweep.TABLE_FILE, test),
                      (pretrain_sweep.VALIDATION_TABLE_FILE, validation)):
      with open(os.path.join(pre_dir, f'{name}.json'), 'w') as f:
        json.dump(tab, f)
    c = paper.get_config('tiny')
    c.vectors_method = 'scl_no_queue'  # did not run
    got = reproduce_inputs.ctr_vectors(c, None, '/d', pre_dir, ran)
    self.assertEqual((got['source'], got['method']), ('pretrained', 'clip_e'))
    self.assertIn('validation part', got['why'])
    # The report's table is the test part's; the validation table follows,
    # named.
    text = pretrain_sweep.markdown(test, validation=validation)
    self.assertLess(text.index('Test part'), text.index('Validation part'))
    self.assertIn('| clip_e | 0.000 | 0.300 |',
                  text[text.index('Validation part'):])

  def test_clip_e_needs_clip_o(self):
    c = sweep_config.get_config('tiny')
    c.methods = 'clip_e'
    c.data_dir = fixtures.tiny_world_dir()
    with self.assertRaisesRegex(ValueError, 'clip_o'):
      pretrain_sweep.run(c, tempfile.mkdtemp())


if __name__ == '__main__':
  absltest.main()
