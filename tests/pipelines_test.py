"""Tests of the grain pipelines: joins, determinism, sharding, state."""

import itertools
import tempfile

from unittest import mock

from absl.testing import absltest
import fixtures
import numpy as np

from mmrec import checkpointing
from mmrec import ctr_data
from mmrec.data import augment
from mmrec.data import builders
from mmrec.data import pipelines


# Every augmentation on (a mapping like the config's, or Options).
_AUGMENT_ON = dict(flip=True, max_shift=2, brightness=0.2, crop_min_scale=0.7,
                   rotate=0.3, clutter=0.5, colour=0.1, saturation=0.3,
                   blur=0.5, noise=0.03)
_AUGMENT = augment.Options(**_AUGMENT_ON)


def _take(it, n):
  return [next(it) for _ in range(n)]


class CtrPipelineTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir = fixtures.tiny_world_dir()
    cls.w = fixtures.tiny_world()
    cls.items = builders.load_table(cls.dir, 'mmrec_items', 'catalogue')
    cls.users = builders.load_table(cls.dir, 'mmrec_users', 'catalogue')

  def _ds(self, **kw):
    kw.setdefault('batch_size', 64)
    return pipelines.ctr_dataset(self.dir, kw.pop('split', 'train'),
                                 items=self.items, users=self.users, **kw)

  def test_batch_fields_and_joins(self):
    b = next(pipelines.iterator(self._ds(seed=1)))
    n, length = 64, self.w.config.seq_len
    self.assertEqual(b['seq_item'].shape, (n, length))
    self.assertEqual(b['seq_mask'].dtype, np.bool_)
    for k in ('user_id', 'age', 'gender', 'city', 'item_id', 'category',
              'shop', 'label', 'day'):
      self.assertEqual(b[k].shape, (n,), k)
    cat = self.w.items['category']
    np.testing.assert_array_equal(b['category'], cat[b['item_id']])
    np.testing.assert_array_equal(b['age'], self.w.users['age'][b['user_id']])
    m = b['seq_mask']
    np.testing.assert_array_equal(b['seq_category'][m], cat[b['seq_item'][m]])
    self.assertTrue((b['seq_item'][~m] == 0).all())
    self.assertTrue((b['day'] < self.w.first_test_day).all())

  def test_deterministic_for_seed(self):
    a = _take(pipelines.iterator(self._ds(seed=3)), 3)
    b = _take(pipelines.iterator(self._ds(seed=3)), 3)
    c = _take(pipelines.iterator(self._ds(seed=4)), 3)
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x['item_id'], y['item_id'])
    self.assertFalse(np.array_equal(a[0]['user_id'], c[0]['user_id']))

  def test_epochs_align_with_batches_reshuffle_and_cover_the_split(self):
    rows = len(builders.data_source(self.dir, 'mmrec_impressions', 'train'))
    ds = pipelines.table_dataset(self.dir, 'mmrec_impressions', 'train',
                                 batch_size=1000, seed=0, num_epochs=2)
    per_epoch = rows // 1000
    self.assertLen(ds, 2 * per_epoch)
    epochs = [np.concatenate([ds[e * per_epoch + i]['user_id']
                              for i in range(per_epoch)]) for e in (0, 1)]
    self.assertFalse(np.array_equal(epochs[0], epochs[1]))
    users = self.w.impressions['user_id'][
        self.w.impressions['day'] < self.w.first_test_day]
    for e in epochs:  # a permutation of the split, less the remainder
      self.assertLen(e, per_epoch * 1000)
      self.assertLessEqual(
          np.abs(np.bincount(e, minlength=2000) -
                 np.bincount(users, minlength=2000)).sum(), rows % 1000)

  def test_eval_pass_keeps_every_row_in_order(self):
    ds = self._ds(split='test', shuffle=False, batch_size=1000)
    got = np.concatenate([b['item_id'] for b in ds])
    test = self.w.impressions['day'] >= self.w.first_test_day
    np.testing.assert_array_equal(got, self.w.impressions['item_id'][test])

  def test_processes_slice_the_same_global_batches(self):
    # Process p reads rows [p * 250, (p + 1) * 250) of every global batch of
    # 500, so the batches concatenated in process order are the 1-process ones.
    def datasets(split, count, **kw):
      return [pipelines.table_dataset(
          self.dir, 'mmrec_impressions', split, batch_size=500,
          process_index=i, process_count=count, **kw) for i in range(count)]

    def batches(split, count, **kw):
      return [list(ds) for ds in datasets(split, count, **kw)]

    [one], two = datasets('train', 1, seed=5), datasets('train', 2, seed=5)
    self.assertLen(two[0], len(one))
    self.assertLen(two[1], len(one))
    for i in (0, 1, len(one) - 1):
      self.assertLen(two[0][i]['item_id'], 250)
      for k in ('item_id', 'user_id'):
        np.testing.assert_array_equal(
            np.concatenate([two[0][i][k], two[1][i][k]]), one[i][k])
    # Evaluation keeps every row: the short last batch is split as far as it
    # goes, and a process whose slice of it is empty gets no batch.
    [one], two = batches('test', 1, shuffle=False), batches('test', 2,
                                                            shuffle=False)
    test = self.w.impressions['day'] >= self.w.first_test_day
    n = int(test.sum())
    last = n % 500
    self.assertLen(two[0], len(one))
    self.assertLen(two[1], len(one) - (0 < last <= 250))
    got = np.concatenate([b['item_id'] for i in range(len(one))
                          for p in (0, 1) if i < len(two[p])
                          for b in (two[p][i],)])
    np.testing.assert_array_equal(got, self.w.impressions['item_id'][test])
    with self.assertRaisesRegex(ValueError, 'divisible'):
      pipelines.table_dataset(self.dir, 'mmrec_impressions', 'train',
                              batch_size=501, process_index=0,
                              process_count=2)

  def test_in_memory_columns_give_the_same_batches(self):
    # ctr_data keeps a sweep's impressions in memory: the batches must be
    # the ones decoded from disk, dtypes included, shuffled or in order,
    # over a subset of rows (the validation split) or all of them.
    # (A seventh of the rows, and the first batches in order: decoding from
    # disk is what costs.)
    columns = builders.load_table(self.dir, 'mmrec_impressions', 'train')
    rows = np.arange(3, len(columns['label']), 7)
    for kw, n in ((dict(seed=2, num_epochs=2, rows=rows), None),
                  (dict(shuffle=False), 4), (dict(seed=1, rows=rows), None)):
      disk = list(itertools.islice(self._ds(**kw), n))
      held = list(itertools.islice(self._ds(columns=columns, **kw), n))
      self.assertLen(held, len(disk))
      for x, y in zip(disk, held):
        self.assertEqual(sorted(x), sorted(y))
        for k in x:
          self.assertEqual(x[k].dtype, y[k].dtype, k)
          np.testing.assert_array_equal(x[k], y[k], err_msg=k)
    # ... and they do come from `columns`, not from the disk.
    flipped = dict(columns, label=1 - columns['label'])
    b = next(iter(self._ds(shuffle=False, columns=flipped)))
    np.testing.assert_array_equal(b['label'],
                                  1 - columns['label'][:len(b['label'])])

  def test_a_split_over_the_memory_budget_is_read_from_disk(self):
    # impression_columns keeps a split in memory only within
    # IN_MEMORY_BYTES; over it CtrData reads every batch from the source,
    # and the batches are the same.
    ctr_data.impression_columns.cache_clear()
    data = ctr_data.CtrData.load(self.dir)
    held = next(iter(data.dataset('train', 64, shuffle=False)))
    self.assertIsNotNone(ctr_data.impression_columns(self.dir, 'train'))
    ctr_data.impression_columns.cache_clear()
    with mock.patch.object(ctr_data, 'IN_MEMORY_BYTES', 0):
      self.assertIsNone(ctr_data.impression_columns(self.dir, 'train'))
      disk = next(iter(data.dataset('train', 64, shuffle=False)))
    ctr_data.impression_columns.cache_clear()
    self.assertEqual(sorted(held), sorted(disk))
    for k in held:
      np.testing.assert_array_equal(held[k], disk[k], err_msg=k)

  def test_iterator_state_round_trip(self):
    for threads in (0, 2):
      it = pipelines.iterator(self._ds(seed=7), prefetch_threads=threads)
      _take(it, 2)
      state = it.get_state()
      expected = _take(it, 3)
      fresh = pipelines.iterator(self._ds(seed=7), prefetch_threads=threads)
      fresh.set_state(state)
      for x, y in zip(expected, _take(fresh, 3)):
        np.testing.assert_array_equal(x['user_id'], y['user_id'])
        np.testing.assert_array_equal(x['seq_item'], y['seq_item'])

  def test_iterator_state_round_trips_through_a_checkpoint(self):
    it = pipelines.iterator(self._ds(seed=11), prefetch_threads=1)
    _take(it, 3)
    directory = tempfile.mkdtemp()
    with checkpointing.Checkpointer(directory) as ckpt:
      ckpt.save(3, {'step': np.array(3, np.int32)}, data_iterator=it,
                config={'seed': 11})
      ckpt.wait()
    expected = _take(it, 2)
    fresh = pipelines.iterator(self._ds(seed=11), prefetch_threads=1)
    with checkpointing.Checkpointer(directory) as ckpt:
      _, config = ckpt.restore(target_state={'step': np.array(0, np.int32)},
                               data_iterator=fresh)
    self.assertEqual(config, {'seed': 11})
    for x, y in zip(expected, _take(fresh, 2)):
      np.testing.assert_array_equal(x['item_id'], y['item_id'])


class PretrainPipelineTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir = fixtures.tiny_world_dir()
    cls.w = fixtures.tiny_world()

  def test_joins_images_and_titles(self):
    b = next(pipelines.iterator(pipelines.pretrain_dataset(self.dir, batch_size=32)))
    items = self.w.items
    np.testing.assert_array_equal(b['pos_image'], items['image'][b['pos_item']])
    np.testing.assert_array_equal(b['pos_title'], items['title'][b['pos_item']])
    h = self.w.config.max_hard_negatives
    size = self.w.config.image_size
    self.assertEqual(b['neg_image'].shape, (32, h, size, size, 3))
    np.testing.assert_array_equal(b['neg_title'],
                                  items['title'][b['neg_item']])
    self.assertEqual(b['neg_mask'].shape, (32, h))

  def test_augmentation_is_seeded_and_changes_images(self):
    plain = next(pipelines.iterator(pipelines.pretrain_dataset(self.dir, batch_size=32)))
    a = next(pipelines.iterator(pipelines.pretrain_dataset(self.dir, batch_size=32,
                                             augment=_AUGMENT)))
    b = next(pipelines.iterator(pipelines.pretrain_dataset(self.dir, batch_size=32,
                                             augment=dict(_AUGMENT_ON))))
    np.testing.assert_array_equal(a['pos_item'], plain['pos_item'])
    np.testing.assert_array_equal(a['pos_image'], b['pos_image'])
    self.assertFalse(np.array_equal(a['pos_image'], plain['pos_image']))
    self.assertEqual(a['neg_image'].dtype, np.uint8)
    off = next(pipelines.iterator(pipelines.pretrain_dataset(
        self.dir, batch_size=32, augment=augment.Options())))
    for k in ('query_image', 'pos_image', 'neg_image'):
      np.testing.assert_array_equal(off[k], plain[k])

  def test_augmentation_does_not_depend_on_the_process_count(self):
    def first(**kw):
      return pipelines.pretrain_dataset(self.dir, batch_size=32, seed=2,
                                        augment=_AUGMENT, **kw)[1]
    one = first()
    two = [first(process_index=i, process_count=2) for i in range(2)]
    for k in ('pos_item', 'query_image', 'pos_image', 'neg_image'):
      np.testing.assert_array_equal(
          np.concatenate([two[0][k], two[1][k]]), one[k])


if __name__ == '__main__':
  absltest.main()
