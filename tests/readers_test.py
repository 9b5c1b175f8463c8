"""Readers of real releases, on fixtures written in their exact on-disk formats
(and the Taobao-MM demo files of the release, where shared/ has them)."""

import dataclasses
import gzip
import json
import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import fixtures
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from experiments.configs import ctr as ctr_config
from mmrec import ctr_data
from mmrec import id_stats
from mmrec import train_ctr
from mmrec import vector_table
from mmrec.data import builders
from mmrec.data import columns
from mmrec.data import convert
from mmrec.data import dataset_job
from mmrec.data import impression_scan
from mmrec.data import manifest
from mmrec.data.readers import amazon

# shared/ lies beside the checkout (never copied into the repository).
DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'shared', 'fixtures', 'taobao_mm_demo')
DAY, T0 = fixtures.DAY, fixtures.READERS_T0
class MovieLensTest(parameterized.TestCase):

  def test_label_threshold_is_part_of_the_conversion(self):
    src = tempfile.mkdtemp()
    fixtures.write_movielens(src, 'ml-100k')
    c = fixtures.data_config_for('movielens', src)
    out = os.path.join(tempfile.mkdtemp(), 'data')
    m = dataset_job.run(c, out)
    self.assertEqual(dataset_job.run(c, out), m)  # reused
    c.label_threshold = 3.0  # other clicks: must not reuse the dataset
    with self.assertRaisesRegex(FileExistsError, 'already holds a dataset'):
      dataset_job.run(c, out)

  @parameterized.parameters('ml-100k', 'ml-1m', 'ml-latest')
  def test_converts(self, release):
    src = tempfile.mkdtemp()
    user, item, rating, time = fixtures.write_movielens(src, release)
    m, d = fixtures.convert(fixtures.data_config_for('movielens', src))
    self.assertEqual(m.source, f'movielens:{src}')
    self.assertEqual(m.num_days, 30)
    day = (time - T0) // DAY
    # The default: the fewest last days holding 10% of the ratings, then
    # the fewest before them holding 10%.
    per_day = np.bincount(day, minlength=30)
    first = max(d for d in range(30) if per_day[d:].sum() >= 60)
    val = first - max(d for d in range(first)
                      if per_day[d:first].sum() >= 60)
    self.assertEqual((m.first_test_day, m.validation_days), (first, val))
    train = day < first
    self.assertEqual(m.tables[manifest.IMPRESSIONS]['splits'],
                     {'train': int(train.sum()), 'test': int((~train).sum())})
    self.assertEqual(m.num_users, len(np.unique(user[train])) + 1)
    self.assertIn('genres', m.bags[manifest.ITEMS])
    self.assertEqual(m.ctr['item_bags'], ['genres'])
    # No categorical item field: the genres stand in for the category.
    self.assertEqual((m.ctr['category_fields'], m.ctr['category_bag']),
                     ([], 'genres'))
    self.assertEqual(m.text['tokenizer'], 'tokenizer.json')
    imp = builders.load_table(d, manifest.IMPRESSIONS, 'train')
    self.assertEqual(int(imp['label'].sum()), int((rating[train] >= 4).sum()))
    users = sorted(m.categorical[manifest.USERS])
    self.assertEqual(users, [] if release == 'ml-latest' else
                     sorted(['age', 'gender', 'occupation', 'zip']))
    items = builders.load_table(d, manifest.ITEMS, 'catalogue')
    # Item 2 (id 2: raw ids 1..25 all rated) has the latin-1 / comma title.
    if 2 in item[train]:
      self.assertGreater(int((items['title'][2] > 0).sum()), 2)

  def test_ml1m_validation_week_and_id_stats(self):
    src = tempfile.mkdtemp()
    fixtures.write_movielens(src, 'ml-1m', seed=1)
    m, d = fixtures.convert(fixtures.data_config_for(
        'movielens', src, split='days', test_days=5, validation_days=5))
    # 30 days, test from day 25: the validation split is days 20..24.
    data = ctr_data.CtrData.load(d, validation=True)
    day = builders.load_table(d, manifest.IMPRESSIONS, 'train')['day']
    self.assertEqual(data.num_rows('validation'), int((day >= 20).sum()))
    batch = data.dataset('validation', 64)[0]
    self.assertTrue(((batch['day'] >= 20) & (batch['day'] < 25)).all())
    self.assertEqual(batch['genres'].shape, (64, 8))
    # The behaviours carry the genres too: the ID model's match features
    # read the share of the history sharing a genre with the target.
    self.assertEqual(data.sizes['match_bags'], ('genres',))
    self.assertEqual(batch['seq_genres'].shape, (64, 10, 8))
    items = builders.load_table(d, manifest.ITEMS, 'catalogue')
    np.testing.assert_array_equal(
        batch['seq_genres'], np.where(batch['seq_mask'][..., None],
                                      items['genres'][batch['seq_item']], 0))
    c = ctr_config.get_config('id_stats,tiny')
    c.update(data_dir=d, validation=True)
    res = id_stats.run(c, tempfile.mkdtemp())
    self.assertEqual((res['split'], res['num_test']),
                     ('validation', int((day >= 20).sum())))

  def test_thinning_ratings_split_by_share_and_few_test_users_warned(self):
    # Ratings thin out towards the end: a test week holds 2% of them, the
    # default split 10%; 30 users are too few for intervals: warned.
    src = tempfile.mkdtemp()
    fixtures.write_movielens(src, 'ml-100k')
    rng = np.random.default_rng(5)
    t = T0 + (120 * DAY * rng.power(0.4, 3000)).astype(np.int64)
    t[0] = T0 + 120 * DAY - 1  # 120 days
    u, i = rng.integers(1, 21, 3000), rng.integers(1, 26, 3000)
    x = rng.integers(1, 6, 3000)
    with open(os.path.join(src, 'u.data'), 'w') as f:
      f.writelines(f'{a}\t{b}\t{c}\t{d}\n' for a, b, c, d in zip(u, i, x, t))
    with self.assertLogs(level='WARNING') as logs:
      m, d = fixtures.convert(fixtures.data_config_for('movielens', src))
    day = (t - T0) // DAY
    test = day >= m.first_test_day
    self.assertGreaterEqual(test.mean(), 0.1)
    self.assertLess(((day >= m.first_test_day + 1)).mean(), 0.1)
    self.assertLess((day >= 113).mean(), 0.05)  # what a test week held
    val = (day >= m.first_test_day - m.validation_days) & ~test
    self.assertGreaterEqual(val.mean(), 0.1)
    both = len(set(u[test & (x >= 4)]) & set(u[test & (x < 4)]))
    self.assertLess(both, 30)
    self.assertIn(f'the test split has {both} users with both a click and a '
                  'non-click; the paired bootstrap needs 30',
                  ' '.join(logs.output))

  def test_split_days_by_share_and_by_days(self):
    opt = convert.Options(split='share', test_share=0.1,
                          validation_share=0.1)
    counts = np.array([100] * 20 + [10] * 10)  # 2100 rows: 210 each
    self.assertEqual(impression_scan.split_days(counts, opt), (18, 3))
    opt = dataclasses.replace(opt, validation_share=0.0)
    self.assertEqual(impression_scan.split_days(counts, opt), (18, 0))
    opt = dataclasses.replace(opt, split='days', test_days=7,
                              validation_days=7)
    self.assertEqual(impression_scan.split_days(counts, opt), (23, 7))
    with self.assertRaisesRegex(columns.InputError, "split='weeks'"):
      impression_scan.split_days(counts, dataclasses.replace(
          opt, split='weeks'))

  def test_bad_ratings_line_names_file_and_line(self):
    src = tempfile.mkdtemp()
    fixtures.write_movielens(src, 'ml-1m')
    with open(os.path.join(src, 'ratings.dat'), 'a', encoding='latin-1') as f:
      f.write('7::3::5\n')
    with self.assertRaisesRegex(columns.InputError,
                                r'ratings.dat, line 601: 3 fields, expected 4'):
      fixtures.convert(fixtures.data_config_for('movielens', src))

  def test_not_movielens(self):
    with self.assertRaisesRegex(columns.InputError, 'not a MovieLens copy'):
      fixtures.convert(fixtures.data_config_for('movielens',
                                                tempfile.mkdtemp()))


class TaobaoMMTest(absltest.TestCase):

  @absltest.skipUnless(os.path.isdir(DEMO), 'no Taobao-MM demo files')
  def test_demo_files_read(self):
    m, d = fixtures.convert(fixtures.data_config_for('taobao_mm', DEMO))
    self.assertEqual(m.tables[manifest.IMPRESSIONS]['splits'],
                     {'train': 10, 'test': 10})
    self.assertEqual((m.num_days, m.first_test_day, m.validation_days),
                     (2, 1, 0))
    self.assertEqual(m.ctr['item_features'], ['category', 'i213', 'i214'])
    self.assertEqual(m.vectors, vector_table.FILE)
    test = builders.load_table(d, manifest.IMPRESSIONS, 'test')
    labels = pq.read_table(os.path.join(DEMO, 'test_samples.parquet'))
    np.testing.assert_array_equal(
        test['label'], [v[1] for v in labels['label_0'].to_pylist()])

  def test_shards_histories_vectors_and_ctr(self):
    src = tempfile.mkdtemp()
    iid, vec = fixtures.write_taobao_shards(src)
    m, d = fixtures.convert(fixtures.data_config_for('taobao_mm', src,
                                                     long_seq_len=30))
    self.assertEqual(m.tables[manifest.IMPRESSIONS]['splits'],
                     {'train': 300, 'test': 100})
    self.assertEqual(m.long_seq_len, 30)
    self.assertEqual(m.categorical[manifest.ITEMS]['category'], 6)
    raw = pq.read_table(os.path.join(src, 'train',
                                     'train-shard-00000.parquet'))
    imp = builders.load_table(d, manifest.IMPRESSIONS, 'train')
    keys = np.unique(iid)
    # Row 0's history: the last 10 non-padding entries, remapped.
    h = [x for x in raw['150_2_180'][0].as_py() if x][-10:]
    n = imp['seq_len'][0]
    self.assertEqual(n, len(h))
    np.testing.assert_array_equal(imp['seq_item'][0, 10 - n:],
                                  np.searchsorted(keys, h) + 1)
    h = [x for x in raw['150_2_180'][0].as_py() if x][-30:]
    n = imp['long_seq_len'][0]
    self.assertEqual(n, len(h))
    np.testing.assert_array_equal(imp['long_seq_item'][0, 30 - n:],
                                  np.searchsorted(keys, h) + 1)
    table, _ = vector_table.load(os.path.join(d, m.vectors),
                                 num_items=m.num_items)
    k = np.searchsorted(keys, iid[3]) + 1
    want = vec[3] / np.linalg.norm(vec[3].astype(np.float32))
    np.testing.assert_allclose(table[k], want, atol=1e-5)
    cc = ctr_config.get_config('vector,tiny')
    # Attention over the top 8 of the long history (GSU), as MUSE's code.
    cc.update(data_dir=d, batch_size=32, eval_batch_size=128,
              max_steps=3, vectors_path=os.path.join(d, m.vectors),
              retrieve_top_k=8)
    batch = ctr_data.CtrData.load(d).dataset('train', 32)[0]
    self.assertEqual(batch['long_seq_category'].shape, (32, 30))
    res = train_ctr.run(cc, tempfile.mkdtemp())
    self.assertEqual(res['step'], 3)

  def test_bad_label_pair(self):
    src = tempfile.mkdtemp()
    fixtures.write_taobao_shards(src)
    path = os.path.join(src, 'test', 'test-shard-00000.parquet')
    t = pq.read_table(path)
    bad = t['label_0'].to_pylist()
    bad[4] = [1, 1]
    t = t.set_column(0, 'label_0', pa.array(bad, pa.list_(pa.int8())))
    pq.write_table(t, path)
    c = fixtures.data_config_for('taobao_mm', src)
    with self.assertRaisesRegex(columns.InputError,
                                r"test-shard-00000.parquet, column 'label_0', "
                                r'row 4: \[1, 1\], expected'):
      fixtures.convert(c)


def write_microlens(directory, seed=0, with_test_labels=True):
  rng = np.random.default_rng(seed)
  for split, n in (('train', 300), ('valid', 60), ('test', 60)):
    t = {'user_id': rng.integers(1, 40, n),
         'item_seq': [list(rng.integers(1, 31, 5)) + [0] * 3 for _ in range(n)],
         'likes_level': rng.integers(0, 5, n),
         'views_level': rng.integers(0, 5, n),
         'item_id': rng.integers(1, 31, n),
         'label': rng.integers(0, 2, n)}
    if split == 'test' and not with_test_labels:
      del t['label']
    pq.write_table(pa.table(t), os.path.join(directory, f'{split}.parquet'))
  emb = rng.normal(size=(31, 128)).astype(np.float32)
  pq.write_table(pa.table({
      'item_id': np.arange(31),
      'item_tags': [[int(i % 7) + 1, 0, 0] for i in range(31)],
      'item_emb_d128': list(emb)}),
                 os.path.join(directory, 'item_info.parquet'))
  return emb


class MicroLensTest(absltest.TestCase):

  def test_splits_levels_tags_and_vectors(self):
    src = tempfile.mkdtemp()
    emb = write_microlens(src)
    m, d = fixtures.convert(fixtures.data_config_for('microlens', src))
    self.assertEqual((m.num_days, m.first_test_day, m.validation_days),
                     (3, 2, 1))
    self.assertEqual(m.tables[manifest.IMPRESSIONS]['splits'],
                     {'train': 360, 'test': 60})
    self.assertEqual(m.bags[manifest.ITEMS], {'tags': 8})
    self.assertEqual(sorted(m.categorical[manifest.ITEMS]),
                     ['likes_level', 'views_level'])
    table, _ = vector_table.load(os.path.join(d, m.vectors),
                                 num_items=m.num_items)
    # Raw item ids 1..30 all appear in training: id k = raw k.
    np.testing.assert_allclose(table[5], emb[5] / np.linalg.norm(emb[5]),
                               atol=1e-5)

  def test_without_test_labels_valid_is_the_test_split(self):
    src = tempfile.mkdtemp()
    write_microlens(src, with_test_labels=False)
    m, d = fixtures.convert(fixtures.data_config_for('microlens', src))
    self.assertEqual((m.num_days, m.validation_days), (2, 0))
    self.assertEqual(m.tables[manifest.IMPRESSIONS]['splits'],
                     {'train': 300, 'test': 60})



def _tiny_ctr(data_dir):
  """Three steps of the ID CTR model on a converted dataset."""
  cc = ctr_config.get_config('id,tiny')
  cc.update(data_dir=data_dir, batch_size=32, eval_batch_size=128,
            max_steps=3)
  return train_ctr.run(cc, tempfile.mkdtemp())


# BARS' TaobaoAd_x1 header (its FuxiCTR config's columns, in file order as
# far as known; the reader goes by name).
TAOBAO_AD_COLUMNS = [
    'clk', 'userid', 'adgroup_id', 'pid', 'cate_id', 'campaign_id',
    'customer', 'brand', 'cms_segid', 'cms_group_id', 'final_gender_code',
    'age_level', 'pvalue_level', 'shopping_level', 'occupation',
    'new_user_class_level', 'cate_his', 'brand_his', 'btag_his', 'btag',
    'price']


def write_taobao_ad(directory, seed=0, valid=False, drop=()):
  """train.csv, test.csv [, valid.csv] as BARS ships them; returns
  {split: list of row dicts} in file order. Ads 100..124 run all along,
  ads 200 and 201 only on the test day (new items); user 6k has no
  pvalue_level."""
  rng = np.random.default_rng(seed)
  out = {}
  names = [c for c in TAOBAO_AD_COLUMNS if c not in drop]
  splits = [('train', 300, np.arange(100, 125))]
  if valid:
    splits.append(('valid', 60, np.arange(100, 125)))
  splits.append(('test', 80, np.r_[np.arange(100, 125), 200, 201]))
  for split, n, ads in splits:
    rows = []
    for _ in range(n):
      u, i = int(rng.integers(1, 31)), int(rng.choice(ads))
      cates = [str(x) for x in rng.integers(1, 40, rng.integers(0, 14))]
      rows.append({
          'clk': int(rng.random() < 0.3), 'userid': u, 'adgroup_id': i,
          'pid': '430548_1007', 'cate_id': i % 6, 'campaign_id': i % 5,
          'customer': i % 4, 'brand': 1000 + i % 7, 'cms_segid': u % 3,
          'cms_group_id': u % 4, 'final_gender_code': 1 + u % 2,
          'age_level': u % 5, 'pvalue_level': '' if u % 6 == 0 else u % 3,
          'shopping_level': u % 3, 'occupation': u % 2,
          'new_user_class_level': u % 4, 'cate_his': '^'.join(cates),
          'brand_his': '^'.join(str(int(c) + 500) for c in cates),
          'btag_his': '^'.join('pv' for _ in cates), 'btag': 'pv',
          'price': 12.5})
    with open(os.path.join(directory, f'{split}.csv'), 'w') as f:
      f.write(','.join(names) + '\n')
      f.write(''.join(','.join(str(r[c]) for c in names) + '\n'
                      for r in rows))
    out[split] = rows
  return out


class TaobaoAdTest(absltest.TestCase):

  def test_split_ids_fields_bags_histories_and_ctr(self):
    src = tempfile.mkdtemp()
    rows = write_taobao_ad(src)
    with self.assertLogs('absl', 'WARNING') as logs:
      m, d = fixtures.convert(fixtures.data_config_for('taobao_ad', src))
    self.assertIn("['pid', 'btag', 'price']", logs.output[0])
    self.assertEqual(m.source, f'taobao_ad:{src}')
    self.assertEqual((m.num_days, m.first_test_day, m.validation_days),
                     (2, 1, 0))
    self.assertEqual(m.tables[manifest.IMPRESSIONS]['splits'],
                     {'train': 300, 'test': 80})
    self.assertEqual(m.ctr['item_features'],
                     ['cate_id', 'campaign_id', 'customer', 'brand'])
    self.assertEqual(m.ctr['seq_features'], ['cate_id'])
    self.assertEqual(len(m.ctr['user_features']), 8)
    self.assertEqual(sorted(m.bags[manifest.USERS]),
                     ['brand_his', 'btag_his', 'cate_his'])
    # ... which the tiny CTR run below embeds.
    self.assertEqual(sorted(m.ctr['user_bags']),
                     ['brand_his', 'btag_his', 'cate_his'])
    self.assertEqual(m.categorical[manifest.ITEMS]['cate_id'], 7)
    train, test = rows['train'], rows['test']
    # Ids: raw ids sorted, 1..N; the new ads (200, 201) after the others.
    train_users = sorted({r['userid'] for r in train})
    ads = sorted({r['adgroup_id'] for r in train}) + [200, 201]
    self.assertEqual((m.num_users, m.num_items),
                     (len(train_users) + 1, len(ads) + 1))
    imp = builders.load_table(d, manifest.IMPRESSIONS, 'test')
    want_item = [ads.index(r['adgroup_id']) + 1 for r in test]
    np.testing.assert_array_equal(imp['item_id'], want_item)
    np.testing.assert_array_equal(imp['label'], [r['clk'] for r in test])
    items = builders.load_table(d, manifest.ITEMS, 'catalogue')
    np.testing.assert_array_equal(items['launch_day'][-2:], [1, 1])
    self.assertEqual(int((items['launch_day'][1:-2] == 0).sum()),
                     len(ads) - 2)
    # Item categoricals: cate_id values 0..5 -> codes 1..6 (sorted).
    np.testing.assert_array_equal(items['cate_id'][1:],
                                  [a % 6 + 1 for a in ads])
    # Histories: empty everywhere (no timestamps: built ones would be empty
    # on the training day and full on the test day).
    for split in ('train', 'test'):
      self.assertEqual(int(builders.load_table(
          d, manifest.IMPRESSIONS, split)['seq_len'].max()), 0)
    # Users: profile of the first row, '' = missing; bags = the last 8
    # tokens of the first row's history (codes: sorted tokens, 1..).
    users = builders.load_table(d, manifest.USERS, 'catalogue')
    first = {}
    for r in train + test:
      first.setdefault(r['userid'], r)
    bags = {u: [t for t in r['cate_his'].split('^') if t][-8:]
            for u, r in first.items()}
    vocab = sorted({t for b in bags.values() for t in b})
    for uid, u in enumerate(train_users, 1):
      want = [vocab.index(t) + 1 for t in bags[u]]
      np.testing.assert_array_equal(
          users['cate_his'][uid], want + [0] * (8 - len(want)))
      self.assertEqual(users['pvalue_level'][uid] == 0, u % 6 == 0)
    res = _tiny_ctr(d)
    self.assertEqual(res['step'], 3)

  def test_valid_csv_is_the_validation_day(self):
    src = tempfile.mkdtemp()
    write_taobao_ad(src, valid=True)
    m, d = fixtures.convert(fixtures.data_config_for('taobao_ad', src))
    self.assertEqual((m.num_days, m.first_test_day, m.validation_days),
                     (3, 2, 1))
    self.assertEqual(m.tables[manifest.IMPRESSIONS]['splits'],
                     {'train': 360, 'test': 80})
    data = ctr_data.CtrData.load(d, validation=True)
    self.assertEqual(data.num_rows('validation'), 60)

  def test_missing_file(self):
    src = tempfile.mkdtemp()
    write_taobao_ad(src)
    os.remove(os.path.join(src, 'test.csv'))
    with self.assertRaisesRegex(columns.InputError, 'missing test.csv'):
      fixtures.convert(fixtures.data_config_for('taobao_ad', src))

  def test_missing_column_is_named(self):
    src = tempfile.mkdtemp()
    write_taobao_ad(src, drop=('brand_his',))
    with self.assertRaisesRegex(columns.InputError,
                                r"train.csv: missing column\(s\) "
                                r"\['brand_his'\]"):
      fixtures.convert(fixtures.data_config_for('taobao_ad', src))

  def test_unparseable_value_names_line_and_column(self):
    src = tempfile.mkdtemp()
    write_taobao_ad(src)
    path = os.path.join(src, 'test.csv')
    with open(path) as f:
      lines = f.readlines()
    lines[5] = 'x' + lines[5][1:]  # clk of the 5th data row
    with open(path, 'w') as f:
      f.writelines(lines)
    with self.assertRaisesRegex(columns.InputError,
                                r"test.csv, line 6, column 'clk': 'x', "
                                'expected int64'):
      fixtures.convert(fixtures.data_config_for('taobao_ad', src))

  def test_label_out_of_range(self):
    src = tempfile.mkdtemp()
    write_taobao_ad(src)
    path = os.path.join(src, 'train.csv')
    with open(path) as f:
      lines = f.readlines()
    lines[3] = '2' + lines[3][1:]
    with open(path, 'w') as f:
      f.writelines(lines)
    with self.assertRaisesRegex(columns.InputError,
                                r"train.csv, column 'clk', row 2: label 2"):
      fixtures.convert(fixtures.data_config_for('taobao_ad', src))



def write_amazon(directory, category='All_Beauty', gz=False, seed=0,
                 image_dir=None):
  """<category>.jsonl and meta_<category>.jsonl as the release has them;
  returns (reviews, meta) as lists of dicts in file order.

  20 users, 15 items over 40 days; items 13 and 14 are first reviewed on
  the last 5 days (new items); item 14 has no metadata line; one metadata
  line is an item nobody reviews; image_dir: JPEGs of the even items.
  """
  rng = np.random.default_rng(seed)
  asins = [f'B0{(i * 7919) % 100_000:06d}' for i in range(15)]
  users = [f'AE{(u * 104_729) % 10**7:07X}' for u in range(20)]
  reviews = []
  for _ in range(240):
    i = int(rng.integers(0, 15))
    lo = 35 if i >= 13 else 0
    reviews.append({
        'rating': float(rng.integers(1, 6)), 'title': 'Nice', 'text': 'ok',
        'images': [], 'asin': asins[i] + 'X', 'parent_asin': asins[i],
        'user_id': users[int(rng.integers(0, 20))],
        'timestamp': int((T0 + rng.integers(lo * DAY, 40 * DAY)) * 1000
                         + rng.integers(0, 1000)),
        'helpful_vote': 0, 'verified_purchase': True})
  meta = []
  for i in list(range(14)) + [None]:
    meta.append({
        'main_category': None if i == 3 else ['All Beauty', 'Premium'][
            (i or 0) % 2],
        'title': f'Item {i} rose soap' if i is not None else 'Unsold',
        'average_rating': 4.5, 'rating_number': 10,
        'features': ['x'], 'description': [], 'price': None,
        'images': [{'large': 'https://example.invalid/x.jpg'}], 'videos': [],
        'store': None if i == 5 else f'Store {(i or 0) % 4}',
        'categories': [] if i == 2 else ['Beauty', f'Skin {(i or 0) % 3}'],
        'details': {'Brand': 'x'},
        'parent_asin': asins[i] if i is not None else 'B0UNSOLD',
        'bought_together': None})
  suffix = '.jsonl.gz' if gz else '.jsonl'
  opener = gzip.open if gz else open
  for name, lines in ((category, reviews), (f'meta_{category}', meta)):
    with opener(os.path.join(directory, name + suffix), 'wt') as f:
      f.write(''.join(json.dumps(r) + '\n' for r in lines))
  if image_dir:
    os.makedirs(image_dir, exist_ok=True)
    for i in range(0, 15, 2):
      Image.fromarray(np.full((20, 30, 3), 20 + 10 * i, np.uint8)).save(
          os.path.join(image_dir, f'{asins[i]}.jpg'))
  return reviews, meta


def _stage_amazon(src, **amazon_settings):
  c = fixtures.data_config_for('amazon', src)
  c.amazon.update(amazon_settings)
  out = tempfile.mkdtemp()
  counts = amazon.stage(src, out, c)
  return counts, pq.read_table(os.path.join(out, 'impressions')), out


class AmazonTest(absltest.TestCase):

  def test_negatives_are_unreviewed_existing_items_at_the_review_time(self):
    src = tempfile.mkdtemp()
    reviews, _ = write_amazon(src)
    counts, imp, _ = _stage_amazon(src, negatives=3, seed=1)
    label = imp['label'].to_numpy()
    self.assertEqual(int(label.sum()), len(reviews))
    self.assertEqual(int((label == 0).sum()), counts['negatives'])
    self.assertEqual(counts['negatives'] + counts['short_of_negatives'],
                     3 * len(reviews))
    # Short only where the user reviewed nearly every item existing then
    # (the first days).
    self.assertLess(counts['short_of_negatives'], 3 * len(reviews) // 20)
    user, item, time = (imp[k].to_numpy() for k in ('user', 'item', 'time'))
    pos = label == 1
    reviewed = set(zip(user[pos], item[pos]))
    first = {}
    for i, t in zip(item[pos], time[pos]):
      first[i] = min(first.get(i, t), t)
    for u, i, t in zip(user[~pos], item[~pos], time[~pos]):
      self.assertNotIn((u, i), reviewed)
      self.assertLessEqual(first[i], t)
    # Times in seconds; the same seed draws the same negatives.
    np.testing.assert_array_equal(
        np.sort(time[pos]), np.sort([r['timestamp'] // 1000
                                     for r in reviews]))
    _, again, _ = _stage_amazon(src, negatives=3, seed=1)
    self.assertTrue(again.equals(imp))
    _, other, _ = _stage_amazon(src, negatives=3, seed=2)
    self.assertFalse(other.equals(imp))

  def test_gzip_reads_the_same(self):
    plain, gz = tempfile.mkdtemp(), tempfile.mkdtemp()
    write_amazon(plain)
    write_amazon(gz, gz=True)
    self.assertTrue(_stage_amazon(plain)[1].equals(_stage_amazon(gz)[1]))

  def test_splits_ids_fields_images_histories_and_ctr(self):
    src, images = tempfile.mkdtemp(), tempfile.mkdtemp()
    reviews, meta = write_amazon(src, image_dir=images)
    c = fixtures.data_config_for('amazon', src, test_days=5, validation_days=5)
    c.amazon.update(image_dir=images, negatives=2)
    m, d = fixtures.convert(c)
    self.assertEqual(m.source, f'amazon:{src}')
    t = np.array([r['timestamp'] // 1000 for r in reviews])
    day = (t - T0) // DAY
    self.assertEqual((m.num_days, m.first_test_day, m.validation_days),
                     (int(day.max()) + 1, int(day.max()) - 4, 5))
    test_day = m.first_test_day
    imp = builders.load_table(d, manifest.IMPRESSIONS, 'test')
    train = builders.load_table(d, manifest.IMPRESSIONS, 'train')
    self.assertEqual(int(imp['label'].sum()), int((day >= test_day).sum()))
    self.assertEqual(int(train['label'].sum()), int((day < test_day).sum()))
    self.assertEqual(sum(m.tables[manifest.IMPRESSIONS]['splits'].values()),
                     len(train['label']) + len(imp['label']))
    self.assertGreater(int((imp['label'] == 0).sum()), 0)
    # Ids: parent_asins sorted, 1..15 (all shown); users of the training
    # days sorted, 1.. .
    asins = sorted({r['parent_asin'] for r in reviews})
    users = sorted({r['user_id'] for r, dd in zip(reviews, day)
                    if dd < test_day})
    self.assertEqual((m.num_items, m.num_users),
                     (len(asins) + 1, len(users) + 1))
    # Item fields: main_category, store (categoricals), categories (bag),
    # title, image; item 14 (no metadata) has none of them.
    self.assertEqual(m.ctr['item_features'], ['main_category', 'store'])
    self.assertEqual(m.ctr['item_bags'], ['categories'])
    self.assertEqual(m.text['tokenizer'], 'tokenizer.json')
    self.assertEqual(m.image_size, 16)
    items = builders.load_table(d, manifest.ITEMS, 'catalogue')
    by_asin = {x['parent_asin']: x for x in meta}
    stores = sorted({x['store'] for x in meta[:-1] if x['store']})
    for k, a in enumerate(asins, 1):
      x = by_asin.get(a)
      want = stores.index(x['store']) + 1 if x and x['store'] else 0
      self.assertEqual(items['store'][k], want)
      self.assertEqual(items['categories'][k, 0] > 0,
                       bool(x and x['categories']))
      self.assertEqual(items['title'][k].any(), x is not None)
      has_image = os.path.isfile(os.path.join(images, f'{a}.jpg'))
      self.assertEqual(items['image'][k].any(), has_image, a)
    # New items: first reviewed on the test days (items 13 and 14).
    first = {}
    for r, dd in zip(reviews, day):
      first[r['parent_asin']] = min(first.get(r['parent_asin'], dd), dd)
    np.testing.assert_array_equal(items['launch_day'][1:],
                                  [first[a] for a in asins])
    self.assertGreaterEqual(sum(first[a] >= test_day for a in asins), 2)
    # Histories: the user's reviews strictly before the row's time, oldest
    # first (last 10). The staged rows (same settings) give the times.
    staged = _stage_amazon(src, image_dir=images, negatives=2)[1]
    when = staged['time'].to_numpy()
    when = when[(when - T0) // DAY >= test_day]
    rows = np.flatnonzero(imp['user_id'] > 0)[:5]
    for r in rows:
      u = users[imp['user_id'][r] - 1]
      mine = sorted((rt, asins.index(x['parent_asin']) + 1)
                    for x, rt in zip(reviews, t)
                    if x['user_id'] == u and rt < when[r])
      want = [i for _, i in mine][-10:]
      n = imp['seq_len'][r]
      self.assertEqual(n, len(want))
      np.testing.assert_array_equal(imp['seq_item'][r, 10 - n:], want)
    res = _tiny_ctr(d)
    self.assertEqual(res['step'], 3)

  def test_images_missing_are_counted(self):
    src, images = tempfile.mkdtemp(), tempfile.mkdtemp()
    write_amazon(src, image_dir=images)
    counts, _, out = _stage_amazon(src, image_dir=images)
    self.assertEqual((counts['items'], counts['items_without_image']),
                     (15, 7))
    self.assertEqual(counts['items_with_metadata'], 14)
    paths = pq.read_table(os.path.join(out, 'items.parquet'))['image']
    self.assertEqual(paths.null_count, 7)
    with self.assertRaisesRegex(columns.InputError,
                                'image_dir=.*no such directory'):
      _stage_amazon(src, image_dir=os.path.join(images, 'nope'))

  def test_reader_settings_are_part_of_the_conversion(self):
    src = tempfile.mkdtemp()
    write_amazon(src)
    c = fixtures.data_config_for('amazon', src, test_days=5, validation_days=5)
    out = os.path.join(tempfile.mkdtemp(), 'data')
    m = dataset_job.run(c, out)
    self.assertEqual(dataset_job.run(c, out), m)  # reused
    c.amazon.negatives = 2
    with self.assertRaisesRegex(FileExistsError, 'already holds a dataset'):
      dataset_job.run(c, out)

  def test_which_category(self):
    src = tempfile.mkdtemp()
    with self.assertRaisesRegex(columns.InputError,
                                'no Amazon Reviews 2023 review files'):
      fixtures.convert(fixtures.data_config_for('amazon', src))
    write_amazon(src)
    write_amazon(src, category='Toys_and_Games')
    with self.assertRaisesRegex(
        columns.InputError, r'2 Amazon Reviews 2023 review files .*: '
        r'All_Beauty, Toys_and_Games; set --config.amazon.category'):
      fixtures.convert(fixtures.data_config_for('amazon', src))
    counts, _, _ = _stage_amazon(src, category='Toys_and_Games')
    self.assertEqual(counts['category'], 'Toys_and_Games')
    os.remove(os.path.join(src, 'meta_All_Beauty.jsonl'))
    with self.assertRaisesRegex(columns.InputError,
                                'missing meta_All_Beauty.jsonl'):
      _stage_amazon(src, category='All_Beauty')

  def _bad(self, name, line, text, error, gz=False):
    """Replaces line `line` (1-based) of file `name` and expects `error`."""
    src = tempfile.mkdtemp()
    write_amazon(src, gz=gz)
    path = os.path.join(src, name + ('.jsonl.gz' if gz else '.jsonl'))
    opener = gzip.open if gz else open
    with opener(path, 'rt') as f:
      lines = f.readlines()
    lines[line - 1] = text + '\n'
    with opener(path, 'wt') as f:
      f.writelines(lines)
    with self.assertRaisesRegex(columns.InputError, error):
      fixtures.convert(fixtures.data_config_for('amazon', src))

  def test_bad_lines_name_file_line_and_field(self):
    good = {'user_id': 'AX', 'parent_asin': 'B01', 'timestamp': 1}
    for name, line, obj, error in (
        ('All_Beauty', 7, {k: v for k, v in good.items() if k != 'timestamp'},
         r"All_Beauty.jsonl, line 7: field 'timestamp' is missing; expected "
         'an integer'),
        ('All_Beauty', 9, dict(good, timestamp='yesterday'),
         r"All_Beauty.jsonl, line 9, field 'timestamp': 'yesterday', "
         'expected an integer'),
        ('All_Beauty', 3, dict(good, user_id=None),
         r"line 3: field 'user_id' is null; expected a string"),
        ('All_Beauty', 4, dict(good, parent_asin=''),
         r"line 4: field 'parent_asin' is empty; expected a string"),
        ('meta_All_Beauty', 2, {'parent_asin': 'B1', 'categories': 'Soap'},
         r"meta_All_Beauty.jsonl, line 2, field 'categories': 'Soap', "
         'expected a list of strings'),
        ('meta_All_Beauty', 5, {'title': 'no id'},
         r"meta_All_Beauty.jsonl, line 5: field 'parent_asin' is missing")):
      with self.subTest(error=error):
        self._bad(name, line, json.dumps(obj), error)
    self._bad('All_Beauty', 11, '{"user_id": "AX", "parent_asin": ',
              r'All_Beauty.jsonl.gz, line 11: not valid JSON \(Expecting '
              r'value at column 34\)', gz=True)
    self._bad('All_Beauty', 2, '[1, 2]',
              r'All_Beauty.jsonl, line 2: expected a JSON object')

  def test_duplicate_metadata_and_truncated_gzip(self):
    src = tempfile.mkdtemp()
    _, meta = write_amazon(src)
    with open(os.path.join(src, 'meta_All_Beauty.jsonl'), 'a') as f:
      f.write(json.dumps(meta[4]) + '\n')
    with self.assertRaisesRegex(columns.InputError,
                                r'meta_All_Beauty.jsonl, line 16: '
                                r"parent_asin '.*' again \(first on line 5\)"):
      fixtures.convert(fixtures.data_config_for('amazon', src))
    src = tempfile.mkdtemp()
    write_amazon(src, gz=True)
    path = os.path.join(src, 'All_Beauty.jsonl.gz')
    with open(path, 'rb') as f:
      data = f.read()
    with open(path, 'wb') as f:
      f.write(data[:len(data) // 2])
    with self.assertRaisesRegex(columns.InputError,
                                r'All_Beauty.jsonl.gz: cannot read after '
                                'line'):
      fixtures.convert(fixtures.data_config_for('amazon', src))


if __name__ == '__main__':
  absltest.main()
