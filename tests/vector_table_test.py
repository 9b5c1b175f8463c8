"""Tests of the item-vector table format."""

import os
import tempfile

from absl.testing import absltest
import numpy as np

from mmrec import int8
from mmrec import vector_table


def _unit(n, d, seed=0):
  v = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
  return v / np.linalg.norm(v, axis=1, keepdims=True)


class VectorTableTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.path = os.path.join(tempfile.mkdtemp(), 'vectors.npz')
    self.v = _unit(50, 16)

  def test_round_trip_and_int8_within_1_over_127(self):
    vector_table.save(self.path, self.v, {'encoder': 'x'})
    v, meta = vector_table.load(self.path, num_items=50, dim=16)
    np.testing.assert_array_equal(v, self.v)
    self.assertEqual(meta['encoder'], 'x')
    q, _ = vector_table.load(self.path, dtype='int8')
    self.assertEqual(q.dtype, np.int8)
    err = np.abs(int8.dequantize(q) - self.v).max()
    self.assertLessEqual(err, 1 / 127)
    self.assertLessEqual(err, 0.5 / 127 + 1e-7)  # rounding: half a step
    self.assertFalse([f for f in os.listdir(os.path.dirname(self.path))
                      if '.tmp' in f])

  def test_wrong_shape_or_count_is_named(self):
    vector_table.save(self.path, self.v)
    with self.assertRaisesRegex(vector_table.VectorTableError, 'dimension 16'):
      vector_table.load(self.path, dim=128)
    with self.assertRaisesRegex(vector_table.VectorTableError, '50 items'):
      vector_table.load(self.path, num_items=60)

  def test_nan_vectors_refused(self):
    bad = self.v.copy()
    bad[7, 3] = np.nan
    with self.assertRaisesRegex(vector_table.VectorTableError, r'\[7\]'):
      vector_table.save(self.path, bad)

  def test_truncated_or_corrupt_file_fails_clearly(self):
    vector_table.save(self.path, self.v)
    with open(self.path, 'rb') as f:
      data = f.read()
    with open(self.path, 'wb') as f:
      f.write(data[:len(data) // 2])
    with self.assertRaisesRegex(vector_table.VectorTableError,
                                'corrupt or truncated'):
      vector_table.load(self.path)
    # Same length, one float flipped inside the float32 array.
    corrupt = bytearray(data)
    start = data.find(self.v.tobytes()[:16])
    self.assertGreater(start, 0)
    corrupt[start + 5] ^= 0xFF
    with open(self.path, 'wb') as f:
      f.write(bytes(corrupt))
    with self.assertRaisesRegex(vector_table.VectorTableError, 'corrupt'):
      vector_table.load(self.path)

  def test_missing_file(self):
    with self.assertRaisesRegex(vector_table.VectorTableError, 'embedding job'):
      vector_table.load(self.path)


if __name__ == '__main__':
  absltest.main()
