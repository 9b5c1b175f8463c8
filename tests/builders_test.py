"""Tests of the TFDS builders: byte-identical files, round trips, errors."""

import json
import os
import tempfile

from absl.testing import absltest
import fixtures
import numpy as np

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
