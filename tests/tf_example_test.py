"""The numpy tf.Example serialiser against TFDS's own, byte for byte."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import example_serializer

from mmrec.data import builders
from mmrec.data import tf_example


def _tfds_bytes(table):
  """Each row through TFDS's feature encoding and serialiser (key order)."""
  features = tfds.features.FeaturesDict(
      {k: builders._feature(k, v) for k, v in table.items()})  # pylint: disable=protected-access
  serializer = example_serializer.ExampleSerializer(
      features.get_serialized_info())
  n = len(next(iter(table.values())))
  return [serializer.get_tf_example(features.encode_example(
      {k: v[i] for k, v in table.items()})).SerializeToString(
          deterministic=True) for i in range(n)]


def _ours(table, **kwargs):
  spec = {k: (v.dtype, v.shape[1:]) for k, v in table.items()}
  out = []
  for data, lengths in tf_example.serialize_blocks(table, spec, **kwargs):
    ends = np.cumsum(lengths)
    out += [data[e - n:e].tobytes() for e, n in zip(ends, lengths)]
  return out


def _table(rng, n):
  """Every dtype the builders write, with varints of every width."""
  big = rng.integers(-2**63, 2**63 - 1, n, dtype=np.int64)
  widths = rng.integers(0, 64, n)
  return {
      'user_id': (big >> widths).astype(np.int64),
      'item_id': rng.integers(-2**31, 2**31 - 1, n).astype(np.int32),
      'day': rng.integers(0, 200, n).astype(np.int32),
      'label': rng.integers(-128, 128, n).astype(np.int8),
      'u8': rng.integers(0, 256, n).astype(np.uint8),
      'u64': rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2),
      'held_out': rng.random(n) < 0.5,
      'score': rng.normal(size=n).astype(np.float32),
      'seq_item': rng.integers(0, 2**31 - 1, (n, 7)).astype(np.int32),
      'mask': rng.random((n, 3)) < 0.5,
      'image': rng.integers(0, 256, (n, 5, 4, 3)).astype(np.uint8),
      'wide': rng.integers(0, 9, (n, 70)).astype(np.int32),  # 2-byte lengths
      'a_much_longer_feature_name_' * 4: np.zeros(n, np.int32),
  }


class SerializeTest(parameterized.TestCase):

  @parameterized.parameters(1, 37)
  def test_bytes_equal_tfds(self, n):
    table = _table(np.random.default_rng(n), n)
    self.assertEqual(_ours(table), _tfds_bytes(table))

  def test_blocks_and_large_rows(self):
    rng = np.random.default_rng(0)
    table = {'image': rng.integers(0, 256, (9, 64, 64, 3)).astype(np.uint8),
             'item_id': np.arange(9, dtype=np.int32) * 1000}
    want = _tfds_bytes(table)
    self.assertEqual(_ours(table, block_bytes=30_000), want)
    self.assertEqual(_ours(table), want)

  def test_scalar_cast_to_feature_dtype_as_tfds(self):
    spec = {'label': (np.dtype(np.int8), ())}
    a, _ = tf_example.serialize({'label': np.array([1, 0], np.int64)}, spec)
    b, _ = tf_example.serialize({'label': np.array([1, 0], np.int8)}, spec)
    np.testing.assert_array_equal(a, b)

  def test_tensor_dtype_or_shape_mismatch_raises(self):
    spec = {'seq': (np.dtype(np.int32), (3,))}
    with self.assertRaisesRegex(ValueError, 'int64'):
      tf_example.serialize({'seq': np.zeros((2, 3), np.int64)}, spec)
    with self.assertRaisesRegex(ValueError, 'tensor feature'):
      tf_example.serialize({'seq': np.zeros((2, 4), np.int32)}, spec)
    with self.assertRaisesRegex(ValueError, 'features'):
      tf_example.serialize({'x': np.zeros(2, np.int32)}, spec)


if __name__ == '__main__':
  absltest.main()
