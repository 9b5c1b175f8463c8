"""Tests of the TFDS builders: byte-identical files, round trips, errors."""

import json
import os
import shutil
import tempfile
from unittest import mock

from absl.testing import absltest
import fixtures
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import example_serializer

from mmrec.data import builders
from mmrec.data import world as world_lib

_SMALL = dict(num_users=200, num_items=300, num_search_sessions=100,
              num_captions=50, impressions_per_user_day=2.0)


def _files(root):
  out = {}
  for d, _, names in os.walk(root):
    for n in names:
      with open(os.path.join(d, n), 'rb') as f:
        out[os.path.relpath(os.path.join(d, n), root)] = f.read()
  return out


class WriteTest(absltest.TestCase):

  def test_same_seed_byte_identical_other_seed_differs(self):
    dirs = [tempfile.mkdtemp() for _ in range(3)]
    for path, seed in zip(dirs, (0, 0, 1)):
      builders.write(world_lib.generate(fixtures.tiny_config(seed=seed,
                                                             **_SMALL)), path)
    a, b, c = map(_files, dirs)
    self.assertEqual(sorted(a), sorted(b))
    self.assertTrue(any(k.endswith('array_record-00000-of-00001') for k in a))
    for k in a:
      self.assertEqual(a[k], b[k], k)
    records = [k for k in a if '.array_record' in k]
    self.assertTrue(all(a[k] != c[k] for k in records))


def _tfds_writer(cls):
  """`cls` writing through TFDS's own row-at-a-time split writer."""

  class Reference(cls, skip_registration=True):
    # dataset_info.json records them.
    name, __module__, __doc__ = cls.name, cls.__module__, cls.__doc__

    def _split_generators(self, dl_manager):
      del dl_manager
      return {name: self._rows(table) for name, table in self._splits.items()}

    def _rows(self, table):
      i = 0
      for chunk in (table() if callable(table) else [table]):
        for j in range(len(next(iter(chunk.values())))):
          yield i, {k: v[j] for k, v in chunk.items()}
          i += 1

    _generate_splits = tfds.core.GeneratorBasedBuilder._generate_splits  # pylint: disable=protected-access

  return Reference


def _deterministic(serializer, example):
  # TFDS serialises map fields in a per-process hash order; protobuf's
  # deterministic mode sorts the keys, as tf_example does.
  return serializer.get_tf_example(example).SerializeToString(
      deterministic=True)


class FastWriterTest(absltest.TestCase):
  """The builders' writer gives TFDS's own files, byte for byte."""

  def _write_both(self, tables, **download):
    dirs = tempfile.mkdtemp(), tempfile.mkdtemp()
    config = tfds.download.DownloadConfig(**download)
    with mock.patch.object(example_serializer.ExampleSerializer,
                           'serialize_example', _deterministic):
      for d, wrap in zip(dirs, (lambda c: c, _tfds_writer)):
        for cls, splits, example in tables:
          wrap(cls)(splits=splits, example=example,
                    data_dir=d).download_and_prepare(download_config=config)
    return map(_files, dirs)

  def _assert_same(self, ours, theirs):
    self.assertEqual(sorted(ours), sorted(theirs))
    for k in ours:
      self.assertTrue(ours[k] == theirs[k], k)  # no diff of MBs of bytes

  def test_world_tables_in_three_shards(self):
    w = world_lib.generate(fixtures.tiny_config(**_SMALL))
    held = w.search['held_out']
    rows = builders._split_rows  # pylint: disable=protected-access
    tables = [
        (builders.Items, {'catalogue': w.items}, None),
        (builders.Search, {'train': rows(w.search, ~held),
                           'test': rows(w.search, held)}, None),
        (builders.Captions, {'train': w.captions}, None)]
    ours, theirs = self._write_both(tables, num_shards=3)
    self.assertTrue(any(k.endswith('-00002-of-00003') for k in ours))
    self._assert_same(ours, theirs)

  def test_streamed_chunks(self):
    rng = np.random.default_rng(0)

    def chunk(n):
      return {'user_id': rng.integers(-9, 10**9, n).astype(np.int32),
              'label': rng.integers(0, 2, n).astype(np.int8),
              'seq_item': rng.integers(0, 10**6, (n, 50)).astype(np.int32)}
    chunks = [chunk(n) for n in (300, 0, 1, 2000)]
    tables = [(builders.Impressions, {'train': lambda: iter(chunks),
                                      'test': lambda: iter(chunks[3:])},
               chunk(0))]
    ours, theirs = self._write_both(tables)
    self._assert_same(ours, theirs)


class ReadTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir = fixtures.tiny_world_dir()
    cls.w = fixtures.tiny_world()

  def test_tables_round_trip(self):
    items = builders.load_table(self.dir, 'mmrec_items', 'catalogue')
    for k, v in self.w.items.items():
      np.testing.assert_array_equal(items[k], v, err_msg=k)
      self.assertEqual(items[k].dtype, v.dtype, k)
    test = builders.load_table(self.dir, 'mmrec_impressions', 'test')
    mask = self.w.impressions['day'] >= self.w.first_test_day
    for k, v in self.w.impressions.items():
      np.testing.assert_array_equal(test[k], v[mask], err_msg=k)
    held = builders.load_table(self.dir, 'mmrec_search', 'test')
    self.assertTrue(held['held_out'].all())
    self.assertLen(held['session_id'], self.w.search['held_out'].sum())

  def test_loaded_tables_are_shared_read_only_and_reread_when_rewritten(self):
    path = tempfile.mkdtemp()
    w = world_lib.generate(fixtures.tiny_config(seed=0, **_SMALL))
    builders.write(w, path)
    first = builders.load_table(path, 'mmrec_items', 'catalogue')
    with self.assertRaisesRegex(ValueError, 'read-only'):
      first['item_id'][0] = 7
    with mock.patch.object(builders, 'data_source',
                           side_effect=AssertionError('decoded again')):
      again = builders.load_table(path, 'mmrec_items', 'catalogue')
    self.assertIs(again['image'], first['image'])
    again['mine'] = 1  # the dict is the caller's own
    self.assertNotIn('mine', builders.load_table(path, 'mmrec_items',
                                                 'catalogue'))
    # Another world built aside and renamed into its place (as the resolver
    # rebuilds): read afresh.
    other = world_lib.generate(fixtures.tiny_config(seed=1, **_SMALL))
    aside = tempfile.mkdtemp()
    builders.write(other, aside)
    shutil.rmtree(path)
    os.rename(aside, path)
    np.testing.assert_array_equal(
        builders.load_table(path, 'mmrec_items', 'catalogue')['image'],
        other.items['image'])
    # A split over the bound is returned but not kept.
    with mock.patch.object(builders, 'TABLES_MAX_BYTES', 0):
      big = builders.load_table(path, 'mmrec_users', 'catalogue')
      self.assertIsNot(
          builders.load_table(path, 'mmrec_users', 'catalogue')['user_id'],
          big['user_id'])

  def test_oracle_vocab_and_config(self):
    oracle = builders.load_oracle(self.dir)
    np.testing.assert_array_equal(oracle['impression_p'],
                                  self.w.oracle['impression_p'])
    with open(os.path.join(self.dir, builders.VOCAB_FILE)) as f:
      self.assertEqual(tuple(json.load(f)['words']), self.w.vocab.words)
    self.assertTrue(builders.is_complete(self.dir))

  def test_features_are_documented(self):
    with open(os.path.join(self.dir, 'mmrec_impressions', builders.VERSION,
                           'features.json')) as f:
      self.assertIn('right-aligned', f.read())

  def test_missing_dataset_and_split_errors(self):
    with self.assertRaisesRegex(FileNotFoundError, 'mmrec_nope'):
      builders.data_source(self.dir, 'mmrec_nope', 'train')
    with self.assertRaisesRegex(ValueError, "not 'validation'"):
      builders.data_source(self.dir, 'mmrec_search', 'validation')


if __name__ == '__main__':
  absltest.main()
