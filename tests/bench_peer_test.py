"""The `peer` benchmark (experiments/bench_peer.py) at the tiny config: the
batches it writes in MUSE's layout say what ours say, our step runs on them,
and, only where a MUSE checkout and a Python with torch are given
(MMREC_MUSE_DIR, MMREC_PEER_PYTHON), the whole side-by-side run. The suite
needs neither: that test skips.
"""

import os
import subprocess
import tempfile

from absl.testing import absltest
import numpy as np
import pyarrow.parquet as pq

from experiments import bench_peer
from experiments import bench_train
from experiments.configs import bench as bench_config
from mmrec import ctr_data


def _tiny():
  config = bench_config.get_config('tiny')
  sizes = ctr_data.sizes(config.world.to_dict())
  rng = np.random.default_rng(0)
  p = config.peer
  batches = bench_train.ctr_batches(rng, 2, p.batch_size, sizes,
                                    bench_peer.RECENT, long_len=p.history)
  vectors = bench_train.unit_int8_vectors(rng, sizes['num_items'], 128)
  return config, sizes, batches, vectors


class MuseLayoutTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.config, cls.sizes, cls.batches, cls.vectors = _tiny()
    cls.dir = os.path.join(tempfile.mkdtemp(), 'peer_data')
    bench_peer.write_muse_layout(cls.dir, cls.batches[:1], cls.batches[1:],
                                 cls.vectors, cls.sizes)

  def _lookup(self, column, raw):
    """MUSE's FeatureEmbeddingDict.lookup: searchsorted in the sorted map,
    + 1; 0 (padding row) for ids not in it."""
    keys = np.load(os.path.join(self.dir, 'feature_map',
                                f'{column}_sorted_map.npy'))
    i = np.clip(np.searchsorted(keys, raw), 0, len(keys) - 1)
    return np.where(keys[i] == raw, i + 1, 0)

  def test_rows_carry_our_batch(self):
    batch = self.batches[0]
    rows = pq.read_table(os.path.join(
        self.dir, 'train', 'train-shard-00000.parquet')).to_pydict()
    y = np.array(rows['label_0'])
    np.testing.assert_array_equal(y[:, 1], batch['label'])
    np.testing.assert_array_equal(y.sum(1), 1)
    cols = bench_peer.muse_columns(self.sizes)
    for col, (field, _) in cols.items():
      want = batch[field] + 1 if field else np.zeros_like(batch['label'])
      # MUSE's embedding row of a raw id is our id + 1 (0 its padding);
      # a column we lack holds one value, row 1.
      got = self._lookup(col if col not in ('205', '206') else
                         {'205': '150_2_180', '206': '151_2_180'}[col],
                         np.array(rows[col]))
      np.testing.assert_array_equal(got, want + (0 if field else 1), col)
    mask = batch['long_seq_mask']
    for i in (0, 3, len(mask) - 1):
      hist = np.array(rows['150_2_180'][i], np.int64)
      np.testing.assert_array_equal(self._lookup('150_2_180', hist),
                                    batch['long_seq_item'][i][mask[i]] + 1)
      np.testing.assert_array_equal(
          self._lookup('151_2_180', np.array(rows['151_2_180'][i])),
          batch['long_seq_category'][i][mask[i]] + 1)
    self.assertTrue(os.path.exists(
        os.path.join(self.dir, 'test', 'test-shard-00000.parquet')))

  def test_vectors_are_ours_by_item(self):
    fmap = os.path.join(self.dir, 'feature_map')
    keys = np.load(os.path.join(fmap, 'scl_emb_int8_p90_keys.npy'))
    values = np.load(os.path.join(fmap, 'scl_emb_int8_p90_values.npy'))
    item = self.batches[0]['item_id'][:5]
    row = np.searchsorted(keys, item + 1)
    np.testing.assert_array_equal(values[row], self.vectors[item])
    self.assertEqual(values.dtype, np.int8)

  def test_world_wider_than_muse_is_refused(self):
    sizes = dict(self.sizes, user_features=tuple(
        (f'f{i}', 3) for i in range(6)))
    with self.assertRaisesRegex(ValueError, '5 user and 2 extra target'):
      bench_peer.muse_columns(sizes)

  def test_missing_checkout_is_named(self):
    config = bench_config.get_config('tiny')
    config.peer.muse_dir = '/nonexistent/muse'
    with self.assertRaisesRegex(ValueError, '/nonexistent/muse.*trainer.py'):
      bench_peer.bench_peer(config, tempfile.mkdtemp())

  def test_our_gsu_step_runs_on_the_batches(self):
    stepper = bench_train.ctr_stepper(
        self.config, 'simtier_official', self.batches, self.vectors,
        retrieve_top_k=self.config.peer.top_k, simtier_mask_padding=False,
        attention=bench_peer.ATTENTION)
    stepper.run(1)
    self.assertGreater(stepper.param_bytes, 0)


def _peer():
  """(muse_dir, python) if both are given and usable, else None."""
  muse, python = (os.environ.get('MMREC_MUSE_DIR'),
                  os.environ.get('MMREC_PEER_PYTHON'))
  if not muse or not os.path.isfile(os.path.join(muse, 'trainer.py')):
    return None
  python = python or 'python3'
  ok = subprocess.run([python, '-c', 'import torch, pandas, pyarrow'],
                      capture_output=True, check=False).returncode == 0
  return (muse, python) if ok else None


class SideBySideTest(absltest.TestCase):

  def test_muse_and_ours_alternate(self):
    peer = _peer()
    if peer is None:
      self.skipTest('no MUSE checkout (MMREC_MUSE_DIR) or no torch in '
                    'MMREC_PEER_PYTHON')
    config = bench_config.get_config('tiny')
    config.peer.muse_dir, config.peer.python = peer
    config.peer.quality_epochs = 2
    out = bench_peer.bench_peer(config, tempfile.mkdtemp())
    for key in ('muse_examples_per_second', 'ours_examples_per_second',
                'ours_over_muse', 'ours_over_muse_with_metrics',
                'ours_din_scorer_over_muse'):
      self.assertGreater(out[key], 0, key)
    for side in ('muse', 'ours'):  # scored after each pass; the last = final
      curve = out[f'{side}_test_auc_by_epoch']
      self.assertLen(curve, 2)
      self.assertLen(out[f'{side}_test_auc_by_epoch_seed_range'], 2)
      # nan == nan here: the tiny test rows may hold one class only.
      np.testing.assert_equal(curve[-1], out[f'{side}_test_auc'])
      best = out[f'{side}_best_epoch']  # chosen on the validation draw
      self.assertIn(best, (1, 2))
      np.testing.assert_equal(curve[best - 1],
                              out[f'{side}_test_auc_at_best_epoch'])


if __name__ == '__main__':
  absltest.main()
