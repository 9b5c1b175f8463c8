"""Tests for mmrec.retrieval (GSU top-k) against a plain numpy reference."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import fixtures
import jax
import numpy as np

from mmrec import int8
from mmrec import retrieval
from mmrec import sharding

V, DV, B, T, K = 40, 16, 8, 12, 5


@functools.lru_cache(maxsize=None)
def data():
  """Table + batch with ties, padding, short rows and a decoy at padding.

  Row 0 full; row 1 all padding; row 2 has 3 real behaviours (< K); row 3
  holds the target itself twice (cosine 1, a tie) and items 1 and 2, whose
  vectors are identical (another tie, between different ids); other rows have
  random lengths. Padded slots hold the target's id (cosine 1): a decoy that
  must never beat a real behaviour.
  """
  rng = np.random.default_rng(0)
  table = rng.normal(size=(V, DV)).astype(np.float32)
  table /= np.linalg.norm(table, axis=1, keepdims=True)
  table[2] = table[1]
  target = rng.integers(3, V, B).astype(np.int32)
  target[3] = 5
  seq = rng.integers(0, V, (B, T)).astype(np.int32)
  lengths = np.concatenate([[T, 0, 3, T], rng.integers(0, T + 1, B - 4)])
  mask = np.arange(T)[None] >= T - lengths[:, None]
  seq[3, [2, 7]] = 5
  seq[3, [4, 9]] = [2, 1]
  seq = np.where(mask, seq, target[:, None])
  return table, target, seq, mask


def _tie_order(r):
  """Rows of a top-k with each run of tied scores (within 1e-6: equal in
  float64, e.g. one item twice, may differ by an ulp in float32, whose
  summation order is the compiler's) put in position order."""
  out = {f: np.array(r[f]).copy() for f in ('ids', 'mask', 'positions',
                                             'scores')}
  for b in range(len(out['scores'])):
    sc, j = out['scores'][b], 0
    while j < len(sc):
      e = j + 1
      while e < len(sc) and abs(sc[e] - sc[j]) < 1e-6 and out['mask'][b, e]:
        e += 1
      order = j + np.argsort(out['positions'][b, j:e], kind='stable')
      for f in out:
        out[f][b, j:e] = out[f][b, order]
      if e == len(sc):
        # The k-th place may tie with a behaviour past the cut: which of
        # them made it is arbitrary, so its position is not compared.
        out['positions'][b, j:e] = -1
        out['ids'][b, j:e] = np.sort(out['ids'][b, j:e])
      j = e
  return out


def check(got, want):
  got = _tie_order({f: np.asarray(getattr(got, f)) for f in (
      'ids', 'mask', 'positions', 'scores')})
  want = _tie_order(want)
  for f in ('ids', 'mask', 'positions'):
    np.testing.assert_array_equal(got[f], want[f], f)
  np.testing.assert_allclose(got['scores'], want['scores'], atol=2e-6)


class TopKTest(parameterized.TestCase):

  @parameterized.parameters('float32', 'int8')
  def test_matches_numpy(self, dtype):
    table, target, seq, mask = data()
    if dtype == 'int8':
      table = int8.quantize(table)
    want = fixtures.np_top_k(table, target, seq, mask, K)
    got = retrieval.top_k(table, target, seq, mask, K)
    check(got, want)
    self.assertEqual(got.ids.dtype, np.int32)
    # The cases the data was built for.
    self.assertEqual(want['mask'][0].sum(), K)
    self.assertFalse(want['mask'][1].any())
    self.assertEqual(want['mask'][2].tolist(), [True] * 3 + [False] * 2)
    # Row 3: the target twice (history order), then whichever of 1 and 2
    # scores higher, the earlier one (item 2 at position 4) first.
    self.assertEqual(want['positions'][3][:2].tolist(), [2, 7])
    pair = [p for p in want['positions'][3] if p in (4, 9)]
    if pair:
      self.assertEqual(pair[0], 4)

  def test_padding_never_beats_a_real_behaviour(self):
    table, target, seq, mask = data()
    got = retrieval.top_k(table, target, seq, mask, K)
    # Padding holds the target (cosine 1), yet only real positions come back
    # as real, and every row gets as many real ones as it has (up to K).
    pos, real = np.asarray(got.positions), np.asarray(got.mask)
    np.testing.assert_array_equal(np.take_along_axis(mask, pos, 1), real)
    np.testing.assert_array_equal(
        np.asarray(got.mask).sum(1), np.minimum(mask.sum(1), K))
    # Unmasked, the decoys win: the mask is what keeps them out.
    ones = retrieval.top_k(table, target, seq, np.ones_like(mask), K)
    self.assertGreater(int((np.asarray(ones.ids) == target[:, None]).sum()),
                       int((np.asarray(got.ids) == target[:, None]).sum()))

  def test_k_larger_than_history(self):
    table, target, seq, mask = data()
    got = retrieval.top_k(table, target, seq, mask, 3 * T)
    self.assertEqual(got.ids.shape, (B, T))
    check(got, fixtures.np_top_k(table, target, seq, mask, 3 * T))
    np.testing.assert_array_equal(np.asarray(got.mask).sum(1), mask.sum(1))

  def test_gather_masked(self):
    table, target, seq, mask = data()
    got = retrieval.top_k(table, target, seq, mask, K)
    category = (seq % 7 + 1).astype(np.int32)
    cat = np.asarray(retrieval.gather_masked(category, got))
    want = np.take_along_axis(category, np.asarray(got.positions), 1)
    np.testing.assert_array_equal(cat, np.where(got.mask, want, 0))
    vec = retrieval.gather_masked(table[seq], got)
    self.assertEqual(vec.shape, (B, K, DV))
    np.testing.assert_array_equal(np.asarray(vec)[~np.asarray(got.mask)], 0)

  def test_jit_on_mesh_matches(self):
    table, target, seq, mask = data()
    mesh = sharding.make_mesh()
    self.assertEqual(mesh.devices.size, 8)
    x = sharding.shard_batch({'t': target, 's': seq, 'm': mask}, mesh)
    f = jax.jit(lambda v, x: retrieval.top_k(v, x['t'], x['s'], x['m'], K))
    got = f(jax.device_put(table, sharding.replicated(mesh)), x)
    self.assertEqual(got.ids.sharding.spec[0], 'data')
    check(got, fixtures.np_top_k(table, target, seq, mask, K))

  def test_bad_k(self):
    with self.assertRaisesRegex(ValueError, 'k >= 1'):
      retrieval.top_k(*data(), 0)


if __name__ == '__main__':
  absltest.main()
