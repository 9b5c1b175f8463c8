"""The CTR step benchmark's limits (experiments/bench_train.py): the bytes a
step must read, counted by hand; the compute limit's FLOPs, which count the
gathered cosine path even where the int8 step runs the all-pairs one; and
the ratios. The benchmark's speed itself is `make bench`'s, never a test's.
"""

import types

from absl.testing import absltest
import numpy as np

from experiments import bench_train
from experiments.configs import bench as bench_config
from mmrec import ctr_data
from mmrec import int8
from mmrec import simtier


class StepBytesTest(absltest.TestCase):

  def test_hand_count(self):
    emb = types.SimpleNamespace(dim=2, user_fields=('u', 'age', 'city'),
                                target_fields=('item', 'category'),
                                seq_fields=('item', 'category'))
    # b 10, Dv 8, one 100-long vector history, 5 attended, 1000 param bytes:
    # ids 10 * 4 * (3 + 2 + 1 label); vectors 10 * 100 * (8 int8 + 4 id +
    # 1 mask); embeddings 10 * 5 fields * 8 bytes; attention 10 * 5 * (2
    # fields * (8 + 4 id) + 1 mask).
    want = 240 + 13_000 + 400 + 1_250 + 1_000
    self.assertEqual(
        bench_train.ctr_step_bytes(10, 8, (100,), 5, emb, 1_000), want)


class StepLimitsTest(absltest.TestCase):

  def test_roofline_divides_by_the_larger_limit(self):
    # 100 MB at 10 GB/s = 10 ms; 3 GFLOP at 100 GFLOP/s = 30 ms; step 90 ms.
    out = bench_train.step_limits(0.09, 100e6, 10e9, 3e9, 100e9)
    self.assertEqual(out['limit_ms'], 10.0)
    self.assertEqual(out['compute_limit_ms'], 30.0)
    self.assertEqual(out['step_over_limit'], 9.0)
    self.assertEqual(out['step_over_roofline'], 3.0)
    # Memory-bound: the roofline is the memory limit.
    out = bench_train.step_limits(0.09, 100e6, 10e9, 3e8, 100e9)
    self.assertEqual(out['step_over_roofline'], out['step_over_limit'])


class StepFlopsTest(absltest.TestCase):

  def test_compute_limit_counts_the_gathered_cosines(self):
    config = bench_config.get_config('tiny')
    sizes = ctr_data.sizes(config.world.to_dict())
    b, t, dv, v = config.ctr_batch_size, 100, 128, sizes['num_items']
    # The all-pairs path applies: an int8 table of at most 32 rows per
    # history position.
    self.assertLessEqual(v, simtier.ALL_PAIRS_ROWS_PER_POSITION * t)
    rng = np.random.default_rng(0)
    vectors = bench_train.unit_int8_vectors(rng, v, dv)
    batches = bench_train.ctr_batches(rng, 1, b, sizes, config.world.seq_len,
                                      long_len=t)
    stepper = bench_train.ctr_stepper(config, 'simtier_official', batches,
                                      vectors, warm=0)
    all_pairs = stepper.flops()
    gathered = stepper.flops(int8.dequantize(vectors))
    # One cosine pass: B V Dv multiply-adds on the int8 table, B T Dv on
    # the float one (2 FLOPs each); the rest of the step is the same.
    np.testing.assert_allclose(all_pairs - gathered, 2 * b * dv * (v - t),
                               rtol=0.05)


if __name__ == '__main__':
  absltest.main()
