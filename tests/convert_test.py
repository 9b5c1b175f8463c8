"""The Parquet converter and the data job on generated own-data fixtures."""

import dataclasses
import json
import os
import shutil
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
from fastapi import testclient
import fixtures
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn import metrics as sk_metrics

from experiments import ctr_sweep
from experiments import pretrain_sweep
from experiments.configs import ctr as ctr_config
from experiments.configs import data as data_config
from experiments.configs import export as export_config
from experiments.configs import scl as scl_config
from mmrec import bootstrap
from mmrec import ctr_data
from mmrec import ctr_eval
from mmrec import id_stats
from mmrec import metrics as mmrec_metrics
from mmrec import item_encoder
from mmrec import train_ctr
from mmrec import train_scl
from mmrec import vector_table
from mmrec.data import builders
from mmrec.data import ctr_rows
from mmrec.data import columns
from mmrec.data import dataset_job
from mmrec.data import images
from mmrec.data import manifest
from mmrec.data import titles
from mmrec.serving import export
from mmrec.serving import service

DAY, T0, NUM_DAYS = fixtures.DAY, fixtures.OWN_T0, fixtures.OWN_NUM_DAYS
INTERESTS = fixtures.OWN_INTERESTS


class ConvertTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.src = tempfile.mkdtemp(prefix='own_data_')
    cls.raw = fixtures.write_own_data(cls.src)
    cls.out = os.path.join(tempfile.mkdtemp(), 'data')
    cls.m = dataset_job.run(fixtures.own_data_config(cls.src), cls.out)

  def test_manifest_counts_days_and_fields(self):
    m = manifest.load(self.out)
    self.assertEqual(m, self.m)
    self.assertEqual(m.source, f'parquet:{self.src}')
    self.assertEqual((m.num_users, m.num_items), (61, 41))  # + id 0
    self.assertEqual((m.num_days, m.first_test_day, m.validation_days),
                     (NUM_DAYS, NUM_DAYS - 1, 1))
    test = int((self.raw['time'] >= T0 - 3600 + (NUM_DAYS - 1) * DAY).sum())
    self.assertEqual(m.tables[manifest.IMPRESSIONS]['splits'],
                     {'train': 1500 - test, 'test': test})
    self.assertEqual(m.categorical[manifest.ITEMS],
                     {'genre': 4, 'brand': 6})  # + 0 = missing
    self.assertEqual(m.bags[manifest.ITEMS], {'tags': 5})
    self.assertEqual(m.categorical[manifest.USERS], {'gender': 3, 'age': 5})
    self.assertEqual(m.bags[manifest.USERS], {'interests': 5})
    self.assertEqual(m.ctr['user_bags'], ['interests'])
    self.assertEqual(m.ctr['seq_features'], ['genre'])
    self.assertEqual((m.image_size, m.text['length']), (16, 8))
    self.assertEqual(m.vectors, vector_table.FILE)
    self.assertIsNone(m.oracle)
    self.assertFalse(os.path.exists(os.path.join(self.out, '_staging')))
    self.assertEqual(sorted(os.listdir(os.path.dirname(self.out))), ['data'])

  def test_id_remapping_and_catalogue(self):
    items = builders.load_table(self.out, manifest.ITEMS, 'catalogue')
    raw = np.unique(self.raw['item'])
    # Raw ids in sorted order get 1..N; the brand is remapped by value.
    brand = (np.arange(40) % 5 * 100)
    np.testing.assert_array_equal(
        items['brand'][1:], np.searchsorted(np.unique(brand), brand) + 1)
    self.assertEqual(items['tags'].shape, (41, 8))
    np.testing.assert_array_equal(items['tags'][4, :5], [1, 2, 3, 4, 0])
    self.assertEqual(items['image'].shape, (41, 16, 16, 3))
    self.assertEqual(int(items['image'][5, 0, 0, 0]), (4 * 6) % 256)
    self.assertTrue((items['title'][1:, 0] > 1).all())  # tokenised, known
    self.assertEqual(len(raw), 40)
    tok = titles.load(self.out)
    self.assertGreater(tok.get_vocab_size(), 10)

  def test_histories_new_items_and_split_days(self):
    imp = builders.load_table(self.out, manifest.IMPRESSIONS, 'train')
    test = builders.load_table(self.out, manifest.IMPRESSIONS, 'test')
    self.assertTrue((imp['day'] < NUM_DAYS - 1).all())
    self.assertTrue((test['day'] == NUM_DAYS - 1).all())
    raw = self.raw
    users = np.unique(raw['user'])
    item_ids = np.unique(raw['item'])
    rday = (raw['time'] - (T0 - 3600)) // DAY
    order = np.lexsort((raw['time'], np.searchsorted(users, raw['user'])))
    # Reference: a row's history = the user's clicks strictly before its
    # time (earlier the same day too), by time. Rows keep file order.
    for split, table in (('train', imp), ('test', test)):
      raw_rows = np.flatnonzero((rday < NUM_DAYS - 1) == (split == 'train'))
      for r in range(0, len(table['label']), 37):
        u = users[table['user_id'][r] - 1]
        self.assertEqual(raw['user'][raw_rows[r]], u)
        t = raw['time'][raw_rows[r]]
        want = [np.searchsorted(item_ids, raw['item'][i]) + 1 for i in order
                if raw['user'][i] == u and raw['time'][i] < t and
                raw['label'][i]]
        want = want[-10:]
        n = table['seq_len'][r]
        self.assertEqual(n, len(want), (split, r))
        np.testing.assert_array_equal(table['seq_item'][r, 10 - n:], want)
        self.assertTrue((table['seq_item'][r, :10 - n] == 0).all())
    items = builders.load_table(self.out, manifest.ITEMS, 'catalogue')
    new = np.searchsorted(item_ids, raw['item'][rday < NUM_DAYS - 1])
    trained = np.zeros(41, bool)
    trained[new + 1] = True
    np.testing.assert_array_equal(
        items['launch_day'][1:] >= NUM_DAYS - 1, ~trained[1:])
    self.assertEqual(int((~trained[1:]).sum()), 4)

  def test_imported_vectors(self):
    table, meta = vector_table.load(os.path.join(self.out, self.m.vectors),
                                    num_items=41)
    np.testing.assert_allclose(np.linalg.norm(table[1:], axis=1), 1,
                               atol=1e-5)
    self.assertEqual(float(np.abs(table[0]).sum()), 0.0)
    self.assertEqual(meta['method'], 'imported')

  def test_ctr_data_id_stats_and_a_tiny_ctr_run(self):
    data = ctr_data.CtrData.load(self.out, validation=True)
    self.assertEqual(data.sizes['item_bags'], (('tags', 5),))
    batch = data.dataset('train', 16)[0]
    self.assertEqual(batch['tags'].shape, (16, 8))
    self.assertEqual(batch['seq_genre'].shape, (16, 10))
    self.assertTrue((batch['day'] < NUM_DAYS - 2).all())
    c = ctr_config.get_config('id_stats,tiny')
    c.data_dir = self.out
    res = id_stats.run(c, tempfile.mkdtemp())
    self.assertEqual(res['num_test'], self.m.tables[manifest.IMPRESSIONS][
        'splits']['test'])
    c = ctr_config.get_config('simtier_paper,tiny')
    c.update(data_dir=self.out, batch_size=64, eval_batch_size=256,
             max_steps=5, vectors_path=os.path.join(self.out, self.m.vectors))
    res = train_ctr.run(c, tempfile.mkdtemp())
    self.assertEqual(res['step'], 5)
    self.assertBetween(res['auc'], 0.0, 1.0)
    self.assertIn('new', res['slices'])

  def test_user_bag_joined_embedded_and_used(self):
    data = ctr_data.CtrData.load(self.out)
    self.assertEqual(data.sizes['user_bags'], (('interests', 5),))
    batch = data.dataset('train', 16)[0]
    self.assertEqual(batch['interests'].shape, (16, 8))
    users = np.unique(self.raw['user'])  # user id u = users[u - 1]
    for r in range(0, 16, 3):
      i = int(users[batch['user_id'][r] - 1][1:]) // 7  # 'u{7i+3}'
      want = [INTERESTS.index(t) + 1 for t in INTERESTS[:i % 5]]
      np.testing.assert_array_equal(batch['interests'][r],
                                    want + [0] * (8 - len(want)))
    c = ctr_config.get_config('id,tiny')
    c.update(data_dir=self.out, batch_size=64, eval_batch_size=256,
             max_steps=5)
    with_bag = tempfile.mkdtemp()
    train_ctr.run(c, with_bag)
    model, variables = export.restore(with_bag)[:2]
    self.assertEqual(
        variables['params']['embed']['interests']['embedding'].shape,
        (5, c.embed_dim))
    rows = data.dataset('test', 64)[0]
    logits = model.apply(variables, rows)
    # The bag is read: emptying it moves the scores of the users who have one.
    has = (rows['interests'] > 0).any(1)
    self.assertTrue(has.any() and not has.all())
    emptied = model.apply(variables, dict(
        rows, interests=np.zeros_like(rows['interests'])))
    np.testing.assert_array_equal(emptied[~has], logits[~has])
    self.assertGreater(float(np.abs(emptied - logits)[has].min()), 0)
    # The same run on the dataset declaring no user bags scores otherwise.
    plain = os.path.join(tempfile.mkdtemp(), 'data')
    shutil.copytree(self.out, plain)
    manifest.write(plain, dataclasses.replace(
        self.m, ctr=dict(self.m.ctr, user_bags=[])))
    c.data_dir = plain
    without = tempfile.mkdtemp()
    train_ctr.run(c, without)
    model, variables = export.restore(without)[:2]
    self.assertNotIn('interests', variables['params']['embed'])
    rows = ctr_data.CtrData.load(plain).dataset('test', 64)[0]
    self.assertNotIn('interests', rows)
    self.assertGreater(
        float(np.abs(model.apply(variables, rows) - logits).max()), 1e-4)

  def test_serving_own_data(self):
    """Export + service on the dataset's own schema: users (gender, age,
    the interests bag), items (genre, brand, the tags bag), behaviours
    carrying genre; served scores equal the offline evaluation's."""
    c = ctr_config.get_config('simtier_paper,tiny')
    c.update(data_dir=self.out, batch_size=64, eval_batch_size=256,
             max_steps=5, vectors_path=os.path.join(self.out, self.m.vectors))
    workdir = tempfile.mkdtemp()
    train_ctr.run(c, workdir)
    serving = os.path.join(workdir, 'serving')
    export.export(export_config.get_config('tiny'), workdir, serving)
    app = service.create_app(serving, reload_interval_s=0)
    state = app.state.serving
    self.addCleanup(state.close)
    m = state.live.model.manifest
    self.assertEqual(m['schema'], {
        'user': {'gender': 3, 'age': 5},
        'item': {'genre': 4, 'brand': 6}, 'seq': ['genre'],
        'bags': {'tags': {'size': 5, 'width': 8}},
        'user_bags': {'interests': {'size': 5, 'width': 8}}})
    self.assertEqual(state.store.attr_names,
                     ('genre', 'brand') + tuple(f'tags/{k}' for k in range(8)))
    self.assertEqual(m['fields']['tags'], {'shape': [8], 'dtype': 'int32'})
    self.assertEqual(m['request']['user']['interests'],
                     {'shape': [8], 'dtype': 'int32'})
    client = testclient.TestClient(app)
    rows = ctr_data.CtrData.load(self.out).dataset('test', 8)[0]
    pred = fixtures.offline_predictions(c, workdir)
    np.testing.assert_array_equal(pred['item_id'][:8], rows['item_id'])
    offline = 1 / (1 + np.exp(-pred['logit'][:8].astype(np.float64)))
    bags = (rows['interests'] > 0).any(1)
    self.assertTrue(bags[:6].any() and not bags[:6].all())
    for i in range(6):
      mask = rows['seq_mask'][i]
      bag = rows['interests'][i]
      r = client.post('/score', json={
          'user': {**{k: int(rows[k][i]) for k in ('user_id', 'gender',
                                                    'age')},
                   'interests': bag[bag > 0].tolist()},
          'history': rows['seq_item'][i][mask].tolist(),
          'candidates': [int(rows['item_id'][i])]})
      self.assertEqual(r.status_code, 200, r.text)
      np.testing.assert_allclose(r.json()['probabilities'], [offline[i]],
                                 rtol=0, atol=1e-6)
    user = {'user_id': 1, 'gender': 1, 'age': 2, 'interests': [1, 3]}
    for body, field in (
        ({'user': dict(user, age=5), 'candidates': [1]}, 'age'),
        ({'user': {'user_id': 1, 'age': 2}, 'candidates': [1]}, 'gender'),
        ({'user': dict(user, city=1), 'candidates': [1]}, 'city'),
        ({'user': dict(user, interests=[2, 5]), 'candidates': [1]},
         'interests'),
        ({'user': dict(user, interests=[1] * 9), 'candidates': [1]},
         'interests')):
      r = client.post('/score', json=body)
      self.assertEqual(r.status_code, 422, r.text)
      self.assertIn(field, str(r.json()['detail']))
    vec = [0.1] * state.store.dim
    for item, field in (({'genre': 4, 'brand': 1}, 'genre'),
                        ({'genre': 1, 'brand': 1, 'tags': [5]}, 'tags'),
                        ({'genre': 1, 'brand': 1, 'tags': [1] * 9}, 'tags'),
                        ({'genre': 1}, 'brand')):
      r = client.post('/items', json=dict(item, vector=vec))
      self.assertEqual(r.status_code, 422, r.text)
      self.assertIn(field, str(r.json()['detail']))
    r = client.post('/items', json={'vector': vec, 'genre': 2, 'brand': 3,
                                    'tags': [1, 4]})
    self.assertEqual(r.status_code, 200, r.text)
    new = r.json()['item_id']
    self.assertEqual(new, 41)
    np.testing.assert_array_equal(state.store.attributes([new])[0],
                                  [2, 3, 1, 4, 0, 0, 0, 0, 0, 0])
    r = client.post('/score', json={'user': user, 'history': [new, 3],
                                    'candidates': [new, 5]})
    self.assertEqual(r.status_code, 200, r.text)
    self.assertLen(r.json()['probabilities'], 2)

  def test_jobs_say_what_the_dataset_lacks(self):
    with self.assertRaisesRegex(
        manifest.DatasetError,
        "dataset 'parquet' has no mmrec_captions table: clip_o needs generic "
        r'\(image, caption\) pairs; methods that can run: scl, scl_no_queue, '
        'scl_no_hard_neg, clip_e, i2i, raw_pixels, bag_of_tokens'):
      train_scl.check_dataset('clip_o', self.m)
    # Neither search sessions nor histories: SCL has no positives.
    bare = manifest.Manifest.from_dict(dict(
        self.m.to_dict(), tables={k: v for k, v in self.m.tables.items()
                                  if k != manifest.IMPRESSIONS}))
    with self.assertRaisesRegex(
        manifest.DatasetError,
        r"has neither mmrec_search \['purchased_item'\] nor "
        r"mmrec_impressions \['seq_item', 'seq_len'\]: scl needs query -> "
        'purchase pairs or co-clicks'):
      train_scl.check_dataset('scl', bare)
    world = manifest.from_world_config(fixtures.tiny_config().to_dict())
    for method in train_scl.NEEDS:
      train_scl.check_dataset(method, world)
    self.assertIsNone(ctr_sweep.oracle_ceiling(self.out))

  def test_rerun_reuses_and_foreign_target_is_refused(self):
    before = os.path.getmtime(os.path.join(self.out, manifest.FILE))
    dataset_job.run(fixtures.own_data_config(self.src), self.out)
    self.assertEqual(os.path.getmtime(os.path.join(self.out, manifest.FILE)),
                     before)
    with self.assertRaisesRegex(FileExistsError, 'another source or config'):
      dataset_job.run(fixtures.own_data_config(self.src, seq_len=7), self.out)
    with self.assertRaisesRegex(ValueError, 'never writes into the directory'):
      dataset_job.run(fixtures.own_data_config(self.src),
                      os.path.join(self.src, 'out'))


class ChangedSourceTest(absltest.TestCase):

  def test_a_source_that_gained_rows_is_refused_not_reused(self):
    src = tempfile.mkdtemp()
    fixtures.write_own_data(src, num_users=20, num_items=12, rows=200)
    out = os.path.join(tempfile.mkdtemp(), 'd')
    dataset_job.run(fixtures.own_data_config(src), out)
    fixtures.write_own_data(src, num_users=20, num_items=12, rows=260)
    with self.assertRaisesRegex(FileExistsError,
                                'the source changed since.*new --workdir'):
      dataset_job.run(fixtures.own_data_config(src), out)
    path = os.path.join(out, dataset_job.CONVERSION_FILE)
    with open(path) as f:
      old = json.load(f)
    del old['source_files']  # a dataset converted before fingerprints
    with open(path, 'w') as f:
      json.dump(old, f)
    with self.assertRaisesRegex(FileExistsError, 'whether the source changed '
                                'since is unknown'):
      dataset_job.run(fixtures.own_data_config(src), out)
    m = dataset_job.run(fixtures.own_data_config(src),
                        os.path.join(tempfile.mkdtemp(), 'd'))
    self.assertEqual(sum(m.tables[manifest.IMPRESSIONS]['splits'].values()),
                     260)

  def test_an_outlier_time_converts_when_allowed(self):
    src = tempfile.mkdtemp()
    fixtures.write_own_data(src, num_users=20, num_items=12, rows=200)
    path = os.path.join(src, 'impressions.parquet')
    t = pq.read_table(path)
    x = t['time'].to_numpy().copy()
    x[13] *= 1000
    pq.write_table(t.set_column(t.column_names.index('time'), 'time',
                                pa.array(x)), path)
    m, _ = fixtures.convert(fixtures.own_data_config(src, max_days=0,
                                                     min_test_users=0))
    self.assertGreater(m.num_days, 10**7)
    self.assertEqual(m.tables[manifest.IMPRESSIONS]['splits']['test'], 1)


class SearchTest(absltest.TestCase):

  def test_search_sessions_and_a_tiny_scl_run(self):
    src = tempfile.mkdtemp()
    raw = fixtures.write_own_data(src, rows=600, with_vectors=False,
                                  sessions=200)
    # A declared candidate set: 10 items shown in training, one twice, and
    # one unknown item (left out, with a warning).
    shown = np.unique(raw['item'])[:10]
    pq.write_table(pa.table({'item': np.concatenate([shown, shown[:1],
                                                     [12345]])}),
                   os.path.join(src, 'candidates.parquet'))
    out = os.path.join(tempfile.mkdtemp(), 'd')
    m = dataset_job.run(fixtures.own_data_config(src), out)
    declared = manifest.retrieval_candidates(out, m)
    np.testing.assert_array_equal(declared, np.arange(1, 11))
    splits = m.tables[manifest.SEARCH]['splits']
    self.assertEqual(sum(splits.values()), 200)
    test = builders.load_table(out, manifest.SEARCH, 'test')
    items = builders.load_table(out, manifest.ITEMS, 'catalogue')
    self.assertTrue(test['held_out'].all())
    # Sessions buying a new item are held out (never pre-trained on).
    train = builders.load_table(out, manifest.SEARCH, 'train')
    self.assertTrue((items['launch_day'][train['purchased_item']] <
                     m.first_test_day).all())
    img = train['query_is_image']
    np.testing.assert_array_equal(train['query_image'][img],
                                  items['image'][train['purchased_item'][img]])
    self.assertTrue((train['query_text'][~img, 0] > 1).all())
    self.assertTrue((train['hard_negatives'][~train['hard_negative_mask']]
                     == 0).all())
    for method in train_scl.NEEDS:
      if method not in ('clip_o',):  # no captions
        train_scl.check_dataset(method, m)
    c = scl_config.get_config('scl,tiny')
    c.update(data_dir=out, num_steps=3, batch_size=32, checkpoint_every=3)
    res = train_scl.run(c, tempfile.mkdtemp())
    self.assertIsNotNone(res['metrics']['image'])
    # Against the declared set and the held-out purchases (always
    # candidates), not paper.md's pool of purchases and hard negatives.
    targets = np.unique(test['purchased_item'])
    self.assertEqual(res['eval']['candidates'],
                     len(np.union1d(declared, targets)))
    for name in ('image', 'text'):
      self.assertEqual(res['metrics'][f'{name}_catalogue']['queries'],
                       res['metrics'][name]['queries'])


class MinCountTest(absltest.TestCase):

  def test_rare_ids_map_to_zero_but_new_items_stay(self):
    src = tempfile.mkdtemp()
    raw = fixtures.write_own_data(src, rows=300, with_vectors=False)
    out = os.path.join(tempfile.mkdtemp(), 'd')
    m = dataset_job.run(fixtures.own_data_config(src, min_count=8), out)
    rday = (raw['time'] - (T0 - 3600)) // DAY
    train = rday < NUM_DAYS - 1
    u, uc = np.unique(raw['user'][train], return_counts=True)
    self.assertEqual(m.num_users, int((uc >= 8).sum()) + 1)
    it, ic = np.unique(raw['item'][train], return_counts=True)
    new = np.setdiff1d(raw['item'][~train], it)
    self.assertEqual(m.num_items, int((ic >= 8).sum()) + len(new) + 1)
    imp = builders.load_table(out, manifest.IMPRESSIONS, 'train')
    self.assertEqual(int((imp['user_id'] == 0).sum()),
                     int(uc[uc < 8].sum()))


class HistoryByTimeTest(absltest.TestCase):

  def test_earlier_clicks_of_the_day_count_same_time_and_later_do_not(self):
    src = tempfile.mkdtemp()
    day = lambda d, h: T0 + d * DAY + h * 3600
    # User a: clicks on day 0, then day 2 at 01:00 (two at 02:00), the
    # impressions to check at 02:00 and 03:00 of day 2; the test day is 3.
    rows = [('a', 1, 1, day(0, 5)), ('a', 2, 1, day(2, 1)),
            ('a', 3, 1, day(2, 2)), ('a', 4, 0, day(2, 2)),
            ('a', 5, 1, day(2, 3)), ('a', 6, 1, day(2, 4)),
            ('a', 7, 0, day(3, 0)), ('b', 1, 1, day(1, 0)),
            ('b', 2, 0, day(3, 0))]
    user, item, label, time = map(list, zip(*rows))
    pq.write_table(pa.table({'user': user, 'item': item, 'label': label,
                             'time': time}),
                   os.path.join(src, 'impressions.parquet'))
    out = os.path.join(tempfile.mkdtemp(), 'd')
    dataset_job.run(fixtures.own_data_config(src, validation_days=0,
                                                   min_test_users=0), out)
    train = builders.load_table(out, manifest.IMPRESSIONS, 'train')
    test = builders.load_table(out, manifest.IMPRESSIONS, 'test')

    def hist(table, r):
      return table['seq_item'][r, 10 - table['seq_len'][r]:].tolist()

    # Raw items 1..7 are ids 1..7.
    self.assertEqual([hist(train, r) for r in range(6)],
                     [[], [1], [1, 2], [1, 2], [1, 2, 3], [1, 2, 3, 5]])
    self.assertEqual(hist(train, 6), [])  # b's first click
    self.assertEqual(hist(test, 0), [1, 2, 3, 5, 6])
    self.assertEqual(hist(test, 1), [1])


class ColdUsersTest(absltest.TestCase):
  """Users cold in training share user_id 0 but stay apart in evaluation."""

  def test_gauc_bootstrap_and_counts_group_by_the_real_user(self):
    src = tempfile.mkdtemp()
    raw = fixtures.write_own_data(src, rows=600, with_vectors=False)
    rday = (raw['time'] - (T0 - 3600)) // DAY
    test_rows = np.flatnonzero(rday == NUM_DAYS - 1)
    # Five users seen only on the test day, each with clicks and non-clicks.
    user = raw['user'].copy()
    label = raw['label'].copy()
    for k, rows in enumerate(np.array_split(test_rows[:40], 5)):
      user[rows] = f'cold{k}'
      label[rows] = np.arange(len(rows)) % 2
    pq.write_table(pa.table(dict(raw, user=user, label=label)),
                   os.path.join(src, 'impressions.parquet'))
    out = os.path.join(tempfile.mkdtemp(), 'd')
    dataset_job.run(fixtures.own_data_config(src), out)
    test = builders.load_table(out, manifest.IMPRESSIONS, 'test')
    cold = np.isin(test['user_key'], np.unique(test['user_key'][
        test['user_id'] == 0]))
    self.assertEqual(len(np.unique(test['user_key'][cold])), 5)
    self.assertTrue((test['user_id'][cold] == 0).all())
    logit = np.random.default_rng(0).normal(size=len(test['label']))
    pred = {'logit': logit, 'label': test['label'],
            'user_id': test['user_id'], 'user_key': test['user_key'],
            'item_id': test['item_id']}
    # Reference: per raw user AUC (pandas groupby + sklearn), row-weighted.
    raw_test = pd.DataFrame({'u': user[test_rows], 'y': label[test_rows]})
    frame = pd.DataFrame({'u': test['user_key'], 'y': test['label'],
                          's': logit})
    # The stored rows keep the raw users: one key per raw user.
    self.assertEqual(frame.u.nunique(), raw_test.u.nunique())
    num = den = both = 0
    for _, g in frame.groupby('u'):
      if g.y.nunique() == 2:
        num += len(g) * sk_metrics.roc_auc_score(g.y, g.s)
        den += len(g)
        both += 1
    got = ctr_eval.ctr_metrics(pred)['gauc']
    self.assertAlmostEqual(got, num / den, places=9)
    self.assertNotAlmostEqual(
        got, mmrec_metrics.gauc(test['label'], logit, test['user_id']), 6)
    run = bootstrap.Resampler(test['label'], ctr_rows.user_key(pred),
                              resamples=20).resample(logit)
    self.assertEqual(run.users_both, both)
    self.assertAlmostEqual(run.point['gauc'], num / den, places=9)
    path = os.path.join(tempfile.mkdtemp(), ctr_eval.PREDICTIONS_FILE)
    ctr_eval.write_predictions(path, pred, np.zeros(len(logit), np.int8))
    np.testing.assert_array_equal(
        ctr_eval.load_predictions(os.path.dirname(path))['user_key'],
        test['user_key'])


class SameDataSameFilesTest(absltest.TestCase):

  def test_converting_twice_gives_identical_files(self):
    src = tempfile.mkdtemp()
    fixtures.write_own_data(src, num_users=20, num_items=12, rows=200)
    outs = [os.path.join(tempfile.mkdtemp(), 'd') for _ in range(2)]
    for out in outs:  # a vocabulary too small for whole words: '##' pieces
      dataset_job.run(fixtures.own_data_config(src, vocab_size=40), out)
    a, b = (builders.load_table(out, manifest.ITEMS, 'catalogue')
            for out in outs)
    np.testing.assert_array_equal(a['title'], b['title'])
    files = sorted(os.path.relpath(os.path.join(d, f), outs[0])
                   for d, _, fs in os.walk(outs[0]) for f in fs)
    self.assertIn(titles.FILE, files)
    for f in files:
      with open(os.path.join(outs[0], f), 'rb') as x, open(
          os.path.join(outs[1], f), 'rb') as y:
        self.assertEqual(x.read(), y.read(), f)


class ShippedSplitTest(absltest.TestCase):

  def test_built_histories_follow_days_then_file_order_across_shards(self):
    # Shards in name order: the test rows first, then the training rows in
    # two shards. A test row's history is the user's training clicks in file
    # order (not each shard's own row numbers, not the test day's clicks).
    src = tempfile.mkdtemp()
    os.makedirs(os.path.join(src, 'impressions'))
    for name, split, user, item, label in (
        ('0.parquet', 'test', [1, 1], [5, 6], [0, 1]),
        ('1.parquet', 'train', [1, 2, 1], [3, 4, 2], [1, 1, 1]),
        ('2.parquet', 'train', [1, 1], [1, 4], [1, 0])):
      pq.write_table(pa.table({'user': user, 'item': item, 'label': label,
                               'split': [split] * len(user)}),
                     os.path.join(src, 'impressions', name))
    out = os.path.join(tempfile.mkdtemp(), 'd')
    m = dataset_job.run(fixtures.own_data_config(src), out)
    self.assertEqual((m.num_days, m.first_test_day), (2, 1))
    test = builders.load_table(out, manifest.IMPRESSIONS, 'test')
    # Raw items 1..6 are ids 1..6 (5 and 6: new items of the test day).
    np.testing.assert_array_equal(test['seq_len'], [3, 3])
    np.testing.assert_array_equal(test['seq_item'][:, -3:], [[3, 2, 1]] * 2)
    train = builders.load_table(out, manifest.IMPRESSIONS, 'train')
    self.assertEqual(int(train['seq_len'].max()), 0)


class GivenHistoryTest(absltest.TestCase):
  """Shipped histories: rows, ids and sequences against plain Python."""

  def test_matches_a_row_by_row_reference(self):
    rng = np.random.default_rng(3)
    src = tempfile.mkdtemp()
    os.makedirs(os.path.join(src, 'impressions'))
    items = [f'i{k}' for k in range(3000)]
    rows = []  # (user, item, label, time, history) in file order
    for shard in range(3):
      part = []
      for _ in range(150):
        k = int(rng.integers(0, 40))
        history = (None if k == 0 else  # k == 1: empty
                   [items[j] for j in rng.integers(0, 2800, k - 1)])
        part.append((f'u{rng.integers(0, 25)}', items[rng.integers(0, 3000)],
                     int(rng.random() < 0.3),
                     T0 + int(rng.integers(0, NUM_DAYS * DAY - 7200)),
                     history))
      rows += part
      pq.write_table(pa.table(dict(zip(
          ('user', 'item', 'label', 'time', 'history'), zip(*part)))),
                     os.path.join(src, 'impressions', f'{shard}.parquet'))
    out = os.path.join(tempfile.mkdtemp(), 'd')
    m = dataset_job.run(fixtures.own_data_config(
        src, seq_len=5, long_seq_len=12, min_count=2, chunk_rows=64), out)

    day = [(t - (T0 - 3600)) // DAY for _, _, _, t, _ in rows]
    train = [d < NUM_DAYS - 1 for d in day]
    ucount, icount, shown = {}, {}, set()
    for (u, i, _, _, h), tr in zip(rows, train):
      shown.add(i)
      if tr:
        ucount[u] = ucount.get(u, 0) + 1
        for x in [i] + (h or [])[-12:]:  # only the kept behaviours count
          icount[x] = icount.get(x, 0) + 1
    users = sorted(u for u, c in ucount.items() if c >= 2)
    kept = sorted({x for x, c in icount.items() if c >= 2} |
                  (shown - set(icount)))
    uid = {u: n + 1 for n, u in enumerate(users)}
    iid = {x: n + 1 for n, x in enumerate(kept)}
    self.assertEqual((m.num_users, m.num_items), (len(users) + 1,
                                                  len(kept) + 1))
    for split, mine in (('train', True), ('test', False)):
      got = builders.load_table(out, manifest.IMPRESSIONS, split)
      want = [r + (d,) for r, d, tr in zip(rows, day, train) if tr == mine]
      self.assertLen(got['label'], len(want))
      for n, (u, i, y, _, h, d) in enumerate(want):
        self.assertEqual((got['user_id'][n], got['item_id'][n],
                          got['label'][n], got['day'][n]),
                         (uid.get(u, 0), iid.get(i, 0), y, d), (split, n))
        for key, length in (('seq', 5), ('long_seq', 12)):
          seq = [iid.get(x, 0) for x in (h or [])[-length:]]
          self.assertEqual(got[f'{key}_len'][n], len(seq))
          np.testing.assert_array_equal(
              got[f'{key}_item'][n], [0] * (length - len(seq)) + seq)


def _every_tenth_with_users(t):
  """No time: the every-10th fallback, which counts rows across shards."""
  # Users u3 .. u486; those past the 60 of the impressions are unknown (0).
  users = [f'u{(i % 70) * 7 + 3}' for i in range(len(t))]
  return t.drop_columns(['time']).append_column('user', pa.array(users))


class StreamedSearchTest(parameterized.TestCase):
  """The search log read in chunks and shards gives the one-file tables."""

  def _convert(self, src, **convert):
    out = os.path.join(tempfile.mkdtemp(), 'd')
    m = dataset_job.run(fixtures.own_data_config(src, **convert), out)
    tables = {s: builders.load_table(out, manifest.SEARCH, s)
              for s in ('train', 'test')}
    return m, tables

  def _assert_same(self, got, want):
    (gm, gt), (wm, wt) = got, want
    self.assertEqual(gm.tables[manifest.SEARCH], wm.tables[manifest.SEARCH])
    for split in ('train', 'test'):
      self.assertEqual(list(gt[split]), list(wt[split]))
      for k, v in wt[split].items():
        self.assertEqual(gt[split][k].dtype, v.dtype, (split, k))
        np.testing.assert_array_equal(gt[split][k], v, err_msg=f'{split} {k}')
    self.assertGreater(int((wt['train']['query_text'][:, 0] > 0).sum()), 50)

  def _own_data(self, edit=None):
    src = tempfile.mkdtemp()
    fixtures.write_own_data(src, rows=300, with_vectors=False, sessions=200)
    if edit:
      path = os.path.join(src, 'search.parquet')
      pq.write_table(edit(pq.read_table(path)), path)
    return src

  @parameterized.named_parameters(('time', None),
                                  ('every_tenth', _every_tenth_with_users))
  def test_shards_give_the_one_file_tables(self, edit):
    src = self._own_data(edit)
    one = self._convert(src)
    # Uneven shards (one empty): ids and the every-10th sessions count rows
    # across them.
    fixtures.shard_search(src, [73, 73, 141])
    sharded = self._convert(src)
    self._assert_same(sharded, one)
    m, tables = one
    self.assertEqual(sum(m.tables[manifest.SEARCH]['splits'].values()), 200)
    self.assertTrue(tables['test']['held_out'].all())
    if edit:  # held out: every 10th session, and those buying a new item
      self.assertTrue((tables['train']['session_id'] % 10 != 9).all())
      self.assertGreater(int((tables['test']['session_id'] % 10 == 9).sum()),
                         10)
      self.assertGreater(int((tables['train']['user_id'] > 0).sum()), 100)

  def test_small_chunks_give_the_one_chunk_tables(self):
    src = self._own_data()
    one = self._convert(src)
    sizes = []
    read_many = images.read_many

    def spy(source_dir, paths, *args):
      sizes.append(len(paths))
      return read_many(source_dir, paths, *args)

    with mock.patch.object(images, 'read_many', spy):
      chunked = self._convert(src, chunk_rows=16)
    self._assert_same(chunked, one)
    # 100 image queries, decoded a chunk of at most 16 sessions at a time,
    # each once (the catalogue's 40 images are one more call).
    self.assertEqual(sorted(sizes)[-1], 40)
    self.assertLessEqual(max(sorted(sizes)[:-1]), 16)
    self.assertEqual(sum(sizes), 40 + 100)


if __name__ == '__main__':
  absltest.main()


# Chinese text queries none of whose characters a title holds (issue 22).
ZH_QUERIES = ['猫咪玩具', '狗狗外套', '运动跑鞋']


class QueryTokenizerTest(absltest.TestCase):
  """The tokenizer learns the training queries' words; a user's replaces it."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.src = tempfile.mkdtemp()
    fixtures.write_own_data(cls.src, rows=400, with_vectors=False,
                            sessions=120)
    path = os.path.join(cls.src, 'search.parquet')
    t = pq.read_table(path)
    text = [None if q is None else ZH_QUERIES[i % 3]
            for i, q in enumerate(t.column('query_text').to_pylist())]
    pq.write_table(t.set_column(t.schema.get_field_index('query_text'),
                                'query_text', pa.array(text, pa.string())),
                   path)

  def test_queries_train_the_tokenizer(self):
    _, out = fixtures.convert(fixtures.own_data_config(self.src))
    tok = titles.load(out)
    unk = titles.unknown_id(tok)
    # Trained on titles alone, every character of these was unknown.
    self.assertFalse((titles.encode(tok, ZH_QUERIES, 8) == unk).any())
    for split in ('train', 'test'):
      s = builders.load_table(out, manifest.SEARCH, split)
      text = s['query_text'][~s['query_is_image']]
      self.assertGreater(len(text), 0)
      self.assertFalse((text == unk).any())

  def test_user_tokenizer_and_the_unknown_warning(self):
    # A tokenizer of English titles: the Chinese queries are unknown, said.
    tok = titles.train(['red shirt', 'blue cotton hat'], 100)
    path = os.path.join(tempfile.mkdtemp(), 'tokenizer.json')
    tok.save(path)
    with self.assertLogs(level='WARNING') as logs:
      m, out = fixtures.convert(fixtures.own_data_config(self.src,
                                                         tokenizer=path))
    self.assertEqual(titles.load(out).get_vocab(), tok.get_vocab())
    self.assertEqual(m.text['vocab_size'], tok.get_vocab_size())
    said = [r for r in logs.output if 'mostly unknown tokens' in r]
    self.assertTrue(any('train text queries' in r for r in said), said)
    self.assertTrue(any('item titles' in r for r in said), said)  # Chinese
    # Id 0 must be padding: titles are 0-padded.
    bad = titles.train(['red shirt'], 100)
    vocab = dict(bad.get_vocab())
    vocab['[PAD]'], vocab['red'] = vocab['red'], 0
    bad.model = type(bad.model)(vocab, unk_token=titles.UNK)
    bad_path = os.path.join(tempfile.mkdtemp(), 'tokenizer.json')
    bad.save(bad_path)
    with self.assertRaisesRegex(ValueError, "id 0 is 'red'; it must be the "
                                'padding token'):
      fixtures.convert(fixtures.own_data_config(self.src, tokenizer=bad_path))


class OwnDataGapsTest(absltest.TestCase):
  """Issue 22's own-data gaps: transparency, hard-negative slots, items and
  sessions the impressions do not know."""

  def test_transparency_hard_negatives_and_unknown_items(self):
    src = tempfile.mkdtemp()
    fixtures.write_own_data(src, rows=600, with_vectors=False, sessions=100)
    # Item 1's picture: a fully transparent PNG (an icon's background).
    images.Image.new('RGBA', (10, 12), (0, 0, 0, 0)).save(
        os.path.join(src, 'img', '1.png'))
    # Two listed items no impression shows, and sessions buying them (kept:
    # the items table is the catalogue), and two sessions buying an item
    # listed nowhere (left out, counted).
    path = os.path.join(src, 'items.parquet')
    t = pq.read_table(path)
    extra = t.slice(0, 2).set_column(0, 'item', pa.array([7, 8], pa.int64()))
    pq.write_table(pa.concat_tables([t, extra]), path)
    path = os.path.join(src, 'search.parquet')
    t = pq.read_table(path)
    extra = t.slice(0, 5).set_column(t.schema.get_field_index('item'), 'item',
                                     pa.array([7, 8, 7, 9, 9], pa.int64()))
    pq.write_table(pa.concat_tables([t, extra]), path)
    c = fixtures.own_data_config(src, max_hard_negatives=1, min_count=2)
    with self.assertLogs(level='WARNING') as logs:
      m, out = fixtures.convert(c)
    text = '\n'.join(logs.output)
    self.assertNotIn('items never appear', text)
    self.assertIn('2 of 105 search sessions buy an item neither items.parquet '
                  'nor the impressions have', text)
    self.assertEqual(m.num_items, 43)  # 40 shown, 2 listed only, id 0
    self.assertEqual(sum(m.tables[manifest.SEARCH]['splits'].values()), 103)
    items = builders.load_table(out, manifest.ITEMS, 'catalogue')
    # The listed-only items (raw 7, 8: the first ids) have their content.
    np.testing.assert_array_equal(items['title'][1], items['title'][3])
    self.assertTrue(items['title'][1].any())
    self.assertEqual(items['launch_day'][1], 0)
    white = (items['image'] == 255).all(axis=(1, 2, 3))
    # Not black: composited on white (item 1's picture, and listed-only
    # item 8's, a copy of its row).
    self.assertEqual(np.flatnonzero(white).tolist(), [2, 4])
    train = builders.load_table(out, manifest.SEARCH, 'train')
    self.assertEqual(train['hard_negatives'].shape[1], 1)
    self.assertIn('max_hard_negatives', data_config.get_config().convert)

  def test_pretraining_data_without_impressions(self):
    # A catalogue and a search log: every listed item, sessions split by
    # time; the CTR jobs refuse it, pre-training evaluates on the sessions.
    src = tempfile.mkdtemp()
    fixtures.write_own_data(src, num_items=30, with_vectors=False,
                            sessions=120)
    os.remove(os.path.join(src, 'impressions.parquet'))
    with self.assertLogs(level='WARNING') as logs:
      m, out = fixtures.convert(fixtures.own_data_config(src))
    self.assertIn('users.parquet is not read', '\n'.join(logs.output))
    self.assertNotIn(manifest.IMPRESSIONS, m.tables)
    self.assertEqual((m.num_items, m.num_users), (31, 1))
    # Days from the sessions' times (the default split: the last day tests).
    self.assertEqual((m.num_days, m.first_test_day),
                     (fixtures.OWN_NUM_DAYS, fixtures.OWN_NUM_DAYS - 1))
    self.assertEqual(sum(m.tables[manifest.SEARCH]['splits'].values()), 120)
    ran, skipped, _ = pretrain_sweep.plan(['scl', 'i2i', 'bag_of_tokens'], out)
    self.assertEqual(ran, ['scl', 'bag_of_tokens'])
    self.assertIn('no mmrec_impressions table', skipped['i2i'])
    c = scl_config.get_config('bag_of_tokens,tiny')
    c.data_dir = out
    res = train_scl.run(c, tempfile.mkdtemp())
    held = builders.load_table(out, manifest.SEARCH, 'test')
    # Every held-out text query is asked: its test half or validation half.
    self.assertEqual(res['metrics']['text_catalogue']['queries'] +
                     res['validation_metrics']['text_catalogue']['queries'],
                     int((~held['query_is_image']).sum()))
    with self.assertRaisesRegex(manifest.DatasetError,
                                'no mmrec_impressions table: CTR training '
                                'needs impressions'):
      ctr_data.CtrData.load(out)

  def test_declared_background(self):
    im = images.Image.new('LA', (2, 2), (0, 0))
    im.putpixel((0, 0), (40, 255))  # one opaque dark pixel
    got = np.asarray(images.to_rgb(im, (0, 0, 255)))
    np.testing.assert_array_equal(got[0, 0], [40, 40, 40])
    np.testing.assert_array_equal(got[1, 1], [0, 0, 255])
    with self.assertRaisesRegex(ValueError, r'image_background = \(1, 2\): '
                                'expected 3 integers'):
      images.check_background((1, 2))

  def test_captions_let_clip_o_run_and_clip_e_start_from_it(self):
    src = tempfile.mkdtemp()
    fixtures.write_own_data(src, num_items=120, rows=1500, with_vectors=False)
    pq.write_table(pa.table({
        'image': [f'img/{i}.png' for i in range(6)],
        'caption': [ZH_QUERIES[i % 3] for i in range(6)]}),
                   os.path.join(src, 'captions.parquet'))
    m, out = fixtures.convert(fixtures.own_data_config(src))
    self.assertEqual(m.tables[manifest.CAPTIONS]['splits'], {'train': 6})
    caps = builders.load_table(out, manifest.CAPTIONS, 'train')
    self.assertEqual(caps['image'].shape, (6, 16, 16, 3))
    self.assertEqual(int(caps['image'][1].mean()), 6)  # img/1.png's grey
    tok = titles.load(out)  # the captions' words are in the vocabulary
    self.assertFalse((caps['caption'] == titles.unknown_id(tok)).any())
    self.assertTrue((caps['caption'][:, 0] > 1).all())
    ran, _, notes = pretrain_sweep.plan(['clip_o', 'clip_e'], out)
    self.assertEqual(ran, ['clip_o', 'clip_e'])
    self.assertEqual(notes, {})  # clip_e starts from clip_o
    # A catalogue of images only: CLIP-O still has both towers (captions).
    self.assertEqual(item_encoder.modalities(m, 'clip_o'), ('image', 'text'))
    bad = os.path.join(src, 'captions.parquet')
    pq.write_table(pa.table({'image': ['img/1.png', None],
                             'caption': ['a', 'b']}), bad)
    with self.assertRaisesRegex(columns.InputError,
                                r"captions.parquet, column 'image', row 1: "
                                'None, expected a non-empty string'):
      fixtures.convert(fixtures.own_data_config(src))
