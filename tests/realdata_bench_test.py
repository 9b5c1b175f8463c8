"""The real-image benchmark's table and verdicts, on made-up per-query ranks
(numpy only: the sweep it reads is tested in pretrain_sweep_test), and its
sum-of-tables diagnosis on a 2-step SCL run."""

import json
import os
import tempfile
from unittest import mock

from absl.testing import absltest
import fixtures
import numpy as np

from experiments import realdata_bench
from experiments.configs import realdata_bench as realdata_bench_config
from experiments.configs import scl as scl_config
from mmrec import pretrain_eval
from mmrec import train_scl
from mmrec.data import builders
from mmrec.data import manifest

S = 400  # held-out sessions: the first half image queries, the rest text


def _ranks(image=None, text=None, **tables):
  """A run's pretrain_eval_queries arrays: ranks (0 = first) of the image
  queries (the first half of the sessions) and the text queries (the rest),
  -1 where a vector has no such query; `tables`: image_on_image=...,
  text_on_text=...; the catalogue ranking: the same ranks, one worse."""
  h = S // 2
  out = {}
  for key, r in dict(image=image, text=text, **tables).items():
    out[f'{key}_rank'] = -np.ones(S, np.int64)
    if r is not None:
      out[f'{key}_rank'][(slice(0, h) if 'image' in key
                          else slice(h, S))] = r
  for key in list(out):
    out[key.replace('_rank', '_catalogue_rank')] = np.where(
        out[key] >= 0, out[key] + 1, -1)
  return out


class RealdataBenchTest(absltest.TestCase):

  def test_rows_claims_and_verdicts(self):
    rng = np.random.default_rng(0)
    h = S // 2
    good = rng.integers(0, 4, h)  # ranks 0-3: acc@1 ~1/4, R@10 = 1
    bad = rng.integers(0, 40, h)
    queries = {
        'raw_pixels': [_ranks(image=bad)],
        'bag_of_tokens': [_ranks(text=good)],
        'scl': [_ranks(image=good, text=bad, image_on_image=good,
                       text_on_text=good, sum_image=bad, sum_text=good)],
    }
    got = realdata_bench.table(queries, resamples=300)
    self.assertEqual((got['sessions'], got['seeds']), (S, 1))
    rows = {(r['method'], r['vector']): r for r in got['rows']}
    self.assertEqual(set(rows), {('raw_pixels', 'item vector'),
                                 ('bag_of_tokens', 'item vector'),
                                 ('scl', 'item vector'), ('scl', 'image table'),
                                 ('scl', 'text table'),
                                 ('scl', 'sum of tables')})
    self.assertAlmostEqual(
        rows[('scl', 'sum of tables')]['text pool recall@10']['value'],
        np.mean(good < 10))
    cell = rows[('scl', 'item vector')]['image pool accuracy@1']
    self.assertAlmostEqual(cell['value'], np.mean(good < 1))
    self.assertEqual(cell['queries'], h)
    lo, hi = cell['ci']
    self.assertLess(lo, cell['value'])
    self.assertGreater(hi, cell['value'])
    cat = rows[('raw_pixels', 'item vector')]['image catalogue recall@10']
    self.assertAlmostEqual(cat['value'], np.mean(bad + 1 < 10))
    self.assertIsNone(rows[('raw_pixels', 'item vector')]['text pool '
                                                          'recall@10'])
    verdict = {(c['modality'], c['against'], c['protocol'], c['metric']):
               c['verdict'] for c in got['claims']}
    # Image: far ahead of raw pixels, equal to its own image table.
    self.assertEqual(verdict[('image', 'raw_pixels item vector', 'pool',
                              'recall@10')], 'holds')
    self.assertEqual(verdict[('image', 'scl image table', 'pool',
                              'recall@10')], 'holds')  # level
    # Text: far behind bag-of-tokens and its own text table.
    self.assertEqual(verdict[('text', 'bag_of_tokens item vector',
                              'catalogue', 'recall@10')], 'does not hold')
    self.assertEqual(verdict[('text', 'scl text table', 'pool',
                              'accuracy@1')], 'does not hold')
    claim = next(c for c in got['claims'] if c['modality'] == 'text' and
                 c['against'] == 'scl text table' and c['protocol'] == 'pool'
                 and c['metric'] == 'recall@10')
    self.assertAlmostEqual(claim['delta'],
                           np.mean(bad < 10) - np.mean(good < 10))
    self.assertLess(claim['ci'][1], 0)
    text = realdata_bench.markdown(got)
    self.assertIn('| scl | image table |', text)
    self.assertIn('does not hold', text)

  def test_slices_judge_the_image_claims_on_their_own_sessions(self):
    # Sessions 100.. in the search log's order; every third in the
    # validation part. Raw pixels win the first 60 image queries ('same
    # maker'), SCL the other image queries.
    h = S // 2
    ids = np.arange(100, 100 + S)
    validation = np.arange(S) % 3 == 0
    data_dir = tempfile.mkdtemp()
    slices = {'slices': {'same maker': ids[:60].tolist(),
                                'other maker': ids[60:h].tolist()}}
    with open(os.path.join(data_dir, manifest.QUERY_SLICES_FILE), 'w') as f:
      json.dump(slices, f)
    with mock.patch.object(builders, 'load_table',
                           return_value={'session_id': ids}):
      masks = realdata_bench.slice_masks(data_dir, validation)
      with self.assertRaisesRegex(ValueError, '399 held-out'):
        realdata_bench.slice_masks(data_dir, validation[1:])
    test_ids = ids[~validation]
    np.testing.assert_array_equal(masks['same maker'], test_ids < 160)
    np.testing.assert_array_equal(masks['other maker'],
                                  (test_ids >= 160) & (test_ids < 100 + h))
    self.assertEqual(realdata_bench.slice_masks(tempfile.mkdtemp(),
                                                validation), {})
    first = np.arange(h) < 60
    raw = np.where(first, 0, 30)
    scl = np.where(first, 30, 0)
    part = lambda r: {k: v[~validation] for k, v in r.items()}
    queries = {'raw_pixels': [part(_ranks(image=raw))],
               'scl': [part(_ranks(image=scl, image_on_image=scl))]}
    verdicts = {}
    for name, mask in masks.items():
      got = realdata_bench.table(realdata_bench._subset(queries, mask),
                                 resamples=200)
      verdicts[name] = {c['verdict'] for c in got['claims']
                        if c['against'] == 'raw_pixels item vector'
                        and c['protocol'] == 'pool'}
    self.assertEqual(verdicts, {'same maker': {'does not hold'},
                                'other maker': {'holds'}})
    result = realdata_bench.table(queries, resamples=200)
    result['slices'] = {'other maker': realdata_bench.table(
        realdata_bench._subset(queries, masks['other maker']), resamples=200)}
    text = realdata_bench.markdown(result)
    self.assertIn('slice "other maker" (93 of the image queries', text)

  def test_few_sessions_have_no_interval(self):
    zeros = np.zeros(S // 2, np.int64)
    small = {m: [{k: v[:20] for k, v in r.items()}] for m, r in (
        ('raw_pixels', _ranks(image=zeros)),
        ('scl', _ranks(image=zeros, image_on_image=zeros)))}
    got = realdata_bench.table(small, resamples=50)
    self.assertTrue(all(c['verdict'] == 'insufficient data'
                        for c in got['claims']))

  def test_config(self):
    c = realdata_bench_config.get_config()
    self.assertEqual(c.job, 'realdata_bench')
    self.assertIn('scl_no_queue', c.sweep.methods.split(','))
    self.assertEqual(realdata_bench_config.get_config('tiny').sweep.scl
                     .num_steps, 4)


class SumOfTablesTest(absltest.TestCase):

  def test_ranks_of_the_summed_item_vector_are_cached(self):
    c = scl_config.get_config('scl,tiny')
    c.update(data_dir=fixtures.tiny_world_dir(), batch_size=16, num_steps=2,
             checkpoint_every=2, queue_size=32)
    run = tempfile.mkdtemp()
    train_scl.run(c, run)
    got = realdata_bench.sum_of_tables(run, c.data_dir)
    self.assertEqual(set(got), {'sum_image_rank', 'sum_text_rank',
                                'sum_image_catalogue_rank',
                                'sum_text_catalogue_rank'})
    # Every held-out session has a rank on its own modality's key.
    self.assertTrue(((got['sum_image_rank'] >= 0) !=
                     (got['sum_text_rank'] >= 0)).all())
    self.assertTrue(os.path.exists(os.path.join(run, realdata_bench.SUM_FILE)))
    # The rows of the run's own test part, so they join its ranks (the
    # bench's table once failed on 4,282 ranks against 2,099 test rows).
    with np.load(os.path.join(run, pretrain_eval.QUERIES_FILE)) as z:
      validation = z[pretrain_eval.VALIDATION_KEY]
      own = {k: z[k] for k in z.files}
    for part, rows in (('test', ~validation), ('validation', validation)):
      ranks = realdata_bench.sum_of_tables(run, c.data_dir, part)
      self.assertLen(ranks['sum_text_rank'], rows.sum())
      np.testing.assert_array_equal(ranks['sum_image_rank'] >= 0,
                                    own['image_rank'][rows] >= 0)
    queries = {'scl': [dict(pretrain_eval.part_rows(own, 'test', 'q'),
                            **realdata_bench.sum_of_tables(run, c.data_dir))]}
    rows = realdata_bench.table(queries, resamples=20)['rows']
    self.assertIn(realdata_bench.SUM, [r['vector'] for r in rows])
    # A cache from before the parts existed is recomputed, not misread.
    path = os.path.join(run, realdata_bench.SUM_FILE)
    with np.load(path) as z:
      old = {k: z[k] for k in z.files if k != pretrain_eval.VALIDATION_KEY}
    np.savez(path, **old)
    self.assertLen(realdata_bench.sum_of_tables(run, c.data_dir)
                   ['sum_text_rank'], (~validation).sum())


if __name__ == '__main__':
  absltest.main()
