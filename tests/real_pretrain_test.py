"""Pre-training and the paper pipeline on converted real data (issue 11).

Datasets without a search log, converted from the fixtures of
fixtures.write_own_data (own Parquet data: images, titles, shipped vectors) and
movielens_synth (a generated ml-1m copy at a small size, in the release's
layout: titles only). Without a search log the SCL family trains on co-click
sessions, on whatever modalities the catalogue has (issue 22).
"""

import json
import os
import tempfile

from absl.testing import absltest
import fixtures
import movielens_synth
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from experiments import claims
from experiments import pretrain_sweep
from experiments import report
from experiments import reproduce
from experiments import reproduce_inputs
from experiments import stages
from experiments.configs import paper
from experiments.configs import scl as scl_config
from mmrec import pretrain_eval
from mmrec import train_scl
from mmrec import vector_table
from mmrec.data import dataset_job
from mmrec.data import manifest

CAN_RUN = ('methods that can run: scl, scl_no_queue, scl_no_hard_neg, '
           'clip_e, i2i, raw_pixels, bag_of_tokens')


def _scl(method, data_dir, **overrides):
  c = scl_config.get_config(f'{method},tiny')
  c.update(dict(dict(data_dir=data_dir, num_steps=3, batch_size=32,
                     checkpoint_every=3), **overrides))
  return c


def _read(path):
  with open(path) as f:
    return f.read()


class RealPretrainTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    src = tempfile.mkdtemp(prefix='own_data_')
    # 120 items: more catalogue items and co-click pairs than a tiny batch.
    fixtures.write_own_data(src, num_items=120, rows=1500)
    cls.out = os.path.join(tempfile.mkdtemp(), 'data')
    cls.m = dataset_job.run(fixtures.own_data_config(src), cls.out)
    ml = tempfile.mkdtemp(prefix='movielens_')
    movielens_synth.write(ml, 'ml-1m', 'small')
    cls.ml_m, cls.ml = fixtures.convert(fixtures.data_config_for('movielens',
                                                                 ml))
    cls._pipeline = None

  @classmethod
  def pipeline(cls):
    """The paper pipeline on the own data, run once for the tests that read
    it: (config, workdir, results). Its pre-training stage trains scl_no_queue
    (on co-clicks: no search log) and raw_pixels; clip_o cannot run (no
    captions)."""
    if cls._pipeline is None:
      c = paper.get_config('tiny')
      c.data_dir = cls.out
      c.pretrain.methods = 'scl_no_queue,clip_o,raw_pixels'
      c.ctr.variants = 'id,id_stats,simtier_paper,simtier_official@image'
      c.one_epoch.num_epochs = 1
      c.make_epochs = ()
      workdir = tempfile.mkdtemp()
      cls._pipeline = c, workdir, reproduce.run(c, workdir)
    return cls._pipeline

  def pretrain_dir(self):
    _, workdir, _ = self.pipeline()
    progress = json.loads(_read(os.path.join(workdir,
                                             stages.PROGRESS_FILE)))
    return progress['stages']['pretrain']['dir']

  def test_methods_run_and_rank_co_clicks_against_the_catalogue(self):
    # The pipeline's pre-training runs (train_scl through pretrain_sweep).
    self.assertNotIn(manifest.SEARCH, self.m.tables)
    for method in ('scl_no_queue', 'raw_pixels'):
      workdir = os.path.join(self.pretrain_dir(), method, 'seed_0')
      res = json.loads(_read(os.path.join(workdir, pretrain_eval.EVAL_FILE)))
      self.assertEqual(res['eval']['task'], pretrain_eval.CO_CLICK_EVAL)
      self.assertGreater(res['eval']['queries'], 20)
      self.assertEqual(res['eval']['candidates'], 120)  # item 0 is no item
      item = res['metrics']['item']
      self.assertEqual(item['queries'], res['eval']['queries'])
      self.assertBetween(item['recall@10'], 0.0, 1.0)
      self.assertIsNotNone(res['metrics']['image_on_image'])
      with np.load(os.path.join(workdir, pretrain_eval.QUERIES_FILE)) as z:
        rank, validation = z['item_rank'], z['validation']
      # The metrics are the test part's; the pairs of both parts are stored.
      self.assertEqual(res['eval']['validation_queries'], validation.sum())
      self.assertGreater(validation.sum(), 0)
      self.assertAlmostEqual((rank[~validation] < 10).mean(),
                             item['recall@10'])
      self.assertTrue(os.path.exists(os.path.join(workdir,
                                                  vector_table.FILE)))
    self.assertIsNone(res['metrics']['text'])  # raw pixels: no text side

  def test_methods_the_data_cannot_serve_fail_before_training(self):
    workdir = tempfile.mkdtemp()
    with self.assertRaisesRegex(
        manifest.DatasetError,
        "dataset 'parquet' has no mmrec_captions table: clip_o needs generic "
        f'\\(image, caption\\) pairs; {CAN_RUN}$'):
      train_scl.run(_scl('clip_o', self.out), workdir)
    self.assertEqual(os.listdir(workdir), [])  # nothing trained
    with self.assertRaisesRegex(
        manifest.DatasetError,
        r"dataset 'movielens' has no field\(s\) \['image'\] in mmrec_items: "
        'clip_e aligns each item image with its title: needs both; methods '
        'that can run: scl, scl_no_queue, scl_no_hard_neg, i2i, '
        'bag_of_tokens$'):
      train_scl.run(_scl('clip_e', self.ml), tempfile.mkdtemp())

  def test_no_held_out_click_with_a_history_fails_before_training(self):
    # Shipped splits whose test users never clicked in training: no
    # co-click query, so no evaluation.
    src = tempfile.mkdtemp()
    pq.write_table(pa.table({
        'user': [1, 1, 2, 3, 3], 'item': [1, 2, 3, 1, 2],
        'label': [0, 0, 1, 1, 1],
        'split': ['train', 'train', 'train', 'test', 'test']}),
                   os.path.join(src, 'impressions.parquet'))
    pq.write_table(pa.table({'item': [1, 2, 3],
                             'title': ['red shirt', 'blue hat', 'wool hat']}),
                   os.path.join(src, 'items.parquet'))
    out = os.path.join(tempfile.mkdtemp(), 'd')
    # A two-row test split: plausible for this test, not for the converter.
    dataset_job.run(fixtures.own_data_config(src, min_test_users=0), out)
    with self.assertRaisesRegex(
        manifest.DatasetError, 'no search log and no test-split click with a '
        "behaviour history.*bag_of_tokens's evaluation"):
      train_scl.run(_scl('bag_of_tokens', out), tempfile.mkdtemp())

  def test_clip_e_without_captions_starts_from_scratch(self):
    ran, _, notes = pretrain_sweep.plan(['clip_e'], self.out)
    self.assertEqual(ran, ['clip_e'])
    self.assertIn('from scratch', notes['clip_e'])

  def test_images_only_pretrain_with_scl(self):
    # No titles: the image tower alone, its fused head, co-click sessions.
    src = tempfile.mkdtemp()
    fixtures.write_own_data(src, num_items=120, rows=1500, with_vectors=False)
    path = os.path.join(src, 'items.parquet')
    pq.write_table(pq.read_table(path).drop(['title']), path)
    _, out = fixtures.convert(fixtures.own_data_config(src))
    ran, skipped, _ = pretrain_sweep.plan(list(scl_config.METHODS), out)
    self.assertEqual(ran, ['scl', 'scl_no_queue', 'scl_no_hard_neg', 'i2i',
                           'raw_pixels'])
    self.assertIn('clip_e aligns each item image with its title: needs both',
                  skipped['clip_e'])
    workdir = tempfile.mkdtemp()
    res = train_scl.run(_scl('scl', out, num_steps=2, batch_size=16),
                        workdir)
    self.assertEqual(res['step'], 2)
    self.assertIsNone(res['metrics']['text'])
    self.assertGreater(res['metrics']['image_on_image']['queries'], 20)
    self.assertEqual(
        sorted(f for f in os.listdir(workdir) if f.startswith('item_vec')),
        ['item_vectors.npz', 'item_vectors_image.npz'])

  def test_co_click_methods_need_clicks(self):
    # A search log but no click: i2i has no pair to train on (and is not
    # listed as runnable); SCL trains on the sessions.
    src = tempfile.mkdtemp()
    fixtures.write_own_data(src, num_items=40, rows=400, with_vectors=False,
                            sessions=200)
    path = os.path.join(src, 'impressions.parquet')
    t = pq.read_table(path)
    pq.write_table(t.set_column(t.schema.get_field_index('label'), 'label',
                                pa.array(np.zeros(len(t), np.int64))), path)
    # No click anywhere: the test split has no user with both classes.
    _, out = fixtures.convert(fixtures.own_data_config(src, min_test_users=0))
    ran, skipped, _ = pretrain_sweep.plan(['scl', 'i2i'], out)
    self.assertEqual(ran, ['scl'])
    self.assertIn('has no co-click pair', skipped['i2i'])

  def _check_sweep(self, workdir, ran, skipped, not_run):
    """A sweep's plan (what ran, what was skipped, co-click evaluation) and
    its table (the reason for a skipped scl, the item slice)."""
    plan = json.loads(_read(os.path.join(workdir, pretrain_sweep.PLAN_FILE)))
    self.assertEqual(plan['ran'], ran)
    self.assertEqual(set(plan['skipped']), skipped)
    self.assertEqual(plan['eval']['task'], pretrain_eval.CO_CLICK_EVAL)
    text = _read(os.path.join(workdir, f'{pretrain_sweep.TABLE_FILE}.md'))
    self.assertIn(not_run, text)
    self.assertIn(' item recall@10 |', text)
    for method in skipped:
      self.assertFalse(os.path.exists(os.path.join(workdir, method)))

  def test_sweep_runs_what_the_dataset_allows(self):
    # The own data's pre-training stage (the pipeline's sweep): what its
    # plan ran and skipped, and its table.
    self._check_sweep(self.pretrain_dir(), ['scl_no_queue', 'raw_pixels'],
                      {'clip_o'},
                      "clip_o: not run (dataset 'parquet' has no "
                      'mmrec_captions')

  def test_paper_pipeline_on_movielens(self):
    # The documented MovieLens chain (data.py:movielens, then paper.py with
    # --config.data_dir) on a generated ml-1m copy: titles only, ratings
    # thinning out. Pre-training trains SCL (co-click sessions, the text
    # tower and the fused head over it) and the bag-of-tokens reference;
    # the CTR stage reads SCL's vectors; the test split holds enough users
    # with both classes for the claims' intervals.
    c = paper.get_config('tiny')
    c.data_dir = self.ml
    c.vectors_method = 'scl'
    c.pretrain.methods = 'scl,clip_o,raw_pixels,bag_of_tokens'
    c.pretrain.scl.update(num_steps=3, batch_size=16)
    c.ctr.variants = 'id,simtier_official,simtier_official@ids'
    c.one_epoch.num_epochs = 1
    c.make_epochs = ()
    workdir = tempfile.mkdtemp()
    results = reproduce.run(c, workdir)
    pre = json.loads(_read(os.path.join(workdir, stages.PROGRESS_FILE)))[
        'stages']['pretrain']['dir']
    self._check_sweep(pre, ['scl', 'bag_of_tokens'], {'clip_o', 'raw_pixels'},
                      "clip_o: not run (dataset 'movielens' has no")
    for method in ('scl', 'bag_of_tokens'):
      res = json.loads(_read(os.path.join(pre, method, 'seed_0',
                                          pretrain_eval.EVAL_FILE)))
      self.assertIsNone(res['metrics']['image'])
      self.assertGreater(res['metrics']['text_on_text']['queries'], 0)
      self.assertEqual(res['step'], 3 if method == 'scl' else 0)
    self.assertFalse(os.path.exists(os.path.join(
        pre, 'scl', 'seed_0', 'item_vectors_image.npz')))
    # The CTR stage reads SCL's vectors, not bag-of-tokens.
    vectors = results['data']['ctr_vectors']
    self.assertEqual((vectors['source'], vectors['method']),
                     ('pretrained', 'scl'))
    with np.load(vectors['path']) as z:
      self.assertEqual(z['float32'].shape[0], self.ml_m.num_items)
    # The ID model's match features read the genres (a category bag).
    self.assertEqual(self.ml_m.ctr['category_bag'], 'genres')
    # Claims with intervals: the same-model control has its two.
    by_id = {x['id']: x for x in results['claims']}
    control = by_id['content_beats_id_similarity']
    self.assertNotIn(control['verdict'], (claims.INSUFFICIENT,
                                          claims.NOT_TESTABLE))
    self.assertEqual(len(control['interval']), 2)
    self.assertTrue(all(ci is not None for ci in control['interval'].values()))
    text = _read(os.path.join(workdir, report.REPORT_FILE))
    self.assertIn('CTR item vectors: scl (seed 0): ', text)

  def test_paper_pipeline_on_converted_data(self):
    c, workdir, results = self.pipeline()
    progress = json.loads(_read(os.path.join(workdir,
                                             stages.PROGRESS_FILE)))
    self.assertEqual(set(progress['stages']),
                     {'pretrain', 'ctr', 'extra', 'report'})  # no world
    data = results['data']
    self.assertEqual(data['dataset'], 'parquet')
    self.assertEqual(data['pretraining']['ran'],
                     ['scl_no_queue', 'raw_pixels'])
    self.assertEqual(set(data['pretraining']['skipped']), {'clip_o'})
    self.assertEqual(set(results['pretraining']),
                     {'scl_no_queue', 'raw_pixels'})
    # SCL (on co-clicks: no search log) feeds the CTR stage.
    vectors = data['ctr_vectors']
    self.assertEqual((vectors['source'], vectors['method'], vectors['why']),
                     ('pretrained', 'scl_no_queue', 'config.vectors_method'))
    best = 'scl_no_queue'
    self.assertEqual(set(results['ctr']), {'id', 'id_stats', 'simtier_paper',
                                           'simtier_official@image'})
    self.assertIsNone(results['world']['oracle_ceiling'])
    self.assertEqual(results['content_curve'], [])
    self.assertEqual(set(data['skipped']),
                     {'oracle ceiling', 'honesty table', 'content curve'})
    by_id = {x['id']: x for x in results['claims']}
    claim = by_id['scl_over_clip_e_over_clip_o_image']
    self.assertEqual(claim['verdict'], claims.NOT_TESTABLE)
    self.assertIn('clip_o not run (dataset \'parquet\' has no mmrec_captions',
                  claim['statement'])
    text = _read(os.path.join(workdir, report.REPORT_FILE))
    for part in ('## Dataset', '## Not run', '- oracle ceiling: ',
                 '- honesty table: ', '- content curve: ',
                 '- pre-training clip_o: ',
                 'held-out co-clicks ranked against the catalogue',
                 f'CTR item vectors: {best} (seed 0): '):
      self.assertIn(part, text)
    self.assertNotIn('oracle (ceiling)', text)
    # A second run (keyed on the dataset's manifest, not a world config)
    # skips every stage. It reruns nothing, so it is cheap.
    again = reproduce.run(c, workdir)
    self.assertEqual(again, results)
    progress = json.loads(_read(os.path.join(workdir,
                                             stages.PROGRESS_FILE)))
    self.assertEqual({s['status'] for s in progress['stages'].values()},
                     {'skipped'})

  def test_shipped_vectors_feed_ctr_when_asked_or_nothing_pretrains(self):
    c = paper.get_config('tiny')
    c.data_dir = self.out
    c.pretrain.methods = c.vectors_method = 'clip_o'  # no captions here
    c.ctr.variants = 'id,simtier_paper,simtier_official@image'
    c.one_epoch.num_epochs = 1
    c.make_epochs = (1,)
    workdir = tempfile.mkdtemp()
    results = reproduce.run(c, workdir)
    vectors = results['data']['ctr_vectors']
    self.assertEqual((vectors['source'], vectors['path']),
                     ('shipped', os.path.join(self.out, self.m.vectors)))
    self.assertEqual(results['pretraining'], {})
    self.assertEqual(set(results['ctr']), {'id', 'simtier_paper'})
    self.assertIn('no image table', results['data']['ctr_skipped'][
        'simtier_official@image'])
    text = _read(os.path.join(workdir, report.REPORT_FILE))
    self.assertIn("CTR item vectors: the dataset's own item_vectors.npz: no "
                  'pre-training method ran on this dataset', text)
    self.assertIn('- CTR simtier_official@image: ', text)

  def test_ctr_vectors_choice(self):
    pre_dir = self.create_tempdir().full_path

    def choose(choice, m, ran=(), table=None):
      c = paper.get_config('tiny')
      c.ctr_vectors = choice
      with open(os.path.join(pre_dir, pretrain_sweep.VALIDATION_TABLE_FILE +
                             '.json'), 'w') as f:
        json.dump(table or {}, f)
      return reproduce_inputs.ctr_vectors(c, m, '/d', pre_dir, list(ran))

    shipped = self.m
    bare = self.ml_m  # ships no vectors
    row = lambda r: {'item': {'recall@10': {'mean': r}}}
    table = {'raw_pixels': row(0.1), 'clip_e': row(0.3)}
    got = choose('auto', shipped, ['raw_pixels', 'clip_e'], table)
    self.assertEqual((got['source'], got['method'], got['path']),
                     ('pretrained', 'clip_e', os.path.join(
                         pre_dir, 'clip_e/seed_0/item_vectors.npz')))
    self.assertEqual(choose('shipped', shipped, ['clip_e'], table)['path'],
                     '/d/item_vectors.npz')
    self.assertEqual(choose('auto', shipped)['source'], 'shipped')
    self.assertEqual(choose('auto', bare)['path'], '')
    with self.assertRaisesRegex(ValueError, 'ships no item vectors'):
      choose('shipped', bare, ['clip_e'], table)
    with self.assertRaisesRegex(ValueError, 'allows no pre-training method'):
      choose('pretrained', shipped)


if __name__ == '__main__':
  absltest.main()
