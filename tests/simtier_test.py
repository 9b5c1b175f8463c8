"""Tests for mmrec.simtier against plain numpy loops."""

import math

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from mmrec import simtier

B, T = 6, 7


def _mask(rng):
  """Left-padded mask with a full row, an all-padded row and random lengths."""
  lengths = np.concatenate([[T, 0], rng.integers(0, T + 1, B - 2)])
  return np.arange(T)[None] >= T - lengths[:, None]


def _sims(rng):
  """Random sims in [-1, 1] plus exact boundaries; garbage at some padding."""
  sims = rng.uniform(-1, 1, (B, T)).astype(np.float32)
  sims[2, :3] = [-1.0, 0.0, 1.0]
  return sims


def np_paper_counts(sims, mask, n, mask_padding):
  edges = np.linspace(-1.0, 1.0, n + 1)
  out = np.zeros((sims.shape[0], n), np.float32)
  for b in range(sims.shape[0]):
    for t in range(sims.shape[1]):
      s = float(sims[b, t])
      if not mask[b, t]:
        if mask_padding:
          continue
        s = 0.0  # A padded behaviour is a zero vector: cosine 0.
      k = n - 1 if s >= 1.0 else next(
          i for i in range(n) if edges[i] <= s < edges[i + 1])
      out[b, k] += 1
  return out


def np_official_bin(s):
  # float32 product, as the official torch code computes cos * (1 / 0.1).
  k = int(math.ceil(float(np.float32(s) * np.float32(10.0)))) + 10
  return min(max(k, 0), 21)


def np_official_counts(sims, mask, mask_padding):
  out = np.zeros((sims.shape[0], 22), np.float32)
  for b in range(sims.shape[0]):
    for t in range(sims.shape[1]):
      if not mask[b, t] and mask_padding:
        continue
      out[b, np_official_bin(sims[b, t] if mask[b, t] else 0.0)] += 1
  return out


class PaperTest(parameterized.TestCase):

  @parameterized.product(num_bins=(20, 7), mask_padding=(True, False))
  def test_matches_numpy(self, num_bins, mask_padding):
    rng = np.random.default_rng(num_bins)
    sims, mask = _sims(rng), _mask(rng)
    got = simtier.simtier_paper(sims, mask, num_bins, mask_padding)
    self.assertEqual(got.shape, (B, num_bins))
    np.testing.assert_array_equal(
        got, np_paper_counts(sims, mask, num_bins, mask_padding))
    total = mask.sum(1) if mask_padding else np.full(B, T)
    np.testing.assert_array_equal(np.asarray(got).sum(1), total)

  def test_boundaries(self):
    sims = np.array([[-1.0, -0.9, 0.0, 0.5, 1.0]], np.float32)
    bins = simtier.paper_bins(sims, 20)
    np.testing.assert_array_equal(bins, [[0, 1, 10, 15, 19]])

  def test_all_padded_row(self):
    mask = np.zeros((1, T), bool)
    sims = np.full((1, T), 0.77, np.float32)
    self.assertEqual(float(simtier.simtier_paper(sims, mask).sum()), 0.0)
    unmasked = simtier.simtier_paper(sims, mask, 20, mask_padding=False)
    self.assertEqual(float(unmasked[0, 10]), T)  # cos 0 -> middle tier.


class OfficialTest(parameterized.TestCase):

  def test_boundaries(self):
    sims = np.array([[-1.5, -1.0, -0.95, -0.05, 0.0, 0.05, 0.1, 0.3, 1.0,
                      1.0001]], np.float32)
    np.testing.assert_array_equal(
        simtier.official_bins(sims),
        [[0, 0, 1, 10, 10, 11, 11, 13, 20, 21]])
    np.testing.assert_array_equal(
        simtier.official_bins(sims), [[np_official_bin(s) for s in sims[0]]])

  @parameterized.parameters(True, False)
  def test_counts_match_numpy(self, mask_padding):
    rng = np.random.default_rng(1)
    sims, mask = _sims(rng), _mask(rng)
    got = simtier.simtier_official_counts(sims, mask, mask_padding)
    self.assertEqual(got.shape, (B, 22))
    np.testing.assert_array_equal(
        got, np_official_counts(sims, mask, mask_padding))
    if not mask_padding:  # The all-padded row: T zero vectors in bin 10.
      self.assertEqual(float(got[1, 10]), T)

  @parameterized.parameters((1, True), (3, False))
  def test_module_matches_numpy(self, dim, mask_padding):
    rng = np.random.default_rng(dim)
    sims, mask = _sims(rng), _mask(rng)
    module = simtier.SimTierOfficial(dim=dim, mask_padding=mask_padding)
    params = module.init(jax.random.key(0), sims, mask)['params']
    w = np.asarray(params['tier_weights'].unbox())
    self.assertEqual(w.shape, (22, dim))
    self.assertTrue((w >= 0).all() and (w < 1).all() and w.any())
    got = module.apply({'params': params}, sims, mask)
    counts = np_official_counts(sims, mask, mask_padding)
    want = np.stack([np.concatenate(
        [math.log1p(counts[b, k]) * w[k] for k in range(22)])
                     for b in range(B)])
    self.assertEqual(got.shape, (B, 22 * dim))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # The all-padded row is empty unless padding counts (then bin 10 only).
    self.assertEqual(bool(np.asarray(got)[1].any()), not mask_padding)


class SimScoreTest(absltest.TestCase):

  def test_features(self):
    rng = np.random.default_rng(2)
    sims, mask = _sims(rng), _mask(rng)
    got = simtier.simscore_features(sims, mask)
    self.assertEqual(got.shape, (B, T, 1))
    np.testing.assert_array_equal(got[..., 0], np.where(mask, sims, 0.0))


class TableCosineTest(parameterized.TestCase):

  @parameterized.parameters(np.float32, np.int8)
  def test_equals_cosine_of_gathered_vectors(self, dtype):
    rng = np.random.default_rng(3)
    v = rng.normal(size=(30, 16)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    table = np.round(v * 127).astype(np.int8) if dtype == np.int8 else v
    deq = table.astype(np.float32) / (127 if dtype == np.int8 else 1)
    item = rng.integers(0, 30, 5)
    seq = rng.integers(0, 30, (5, 7))
    seq[0, 3] = item[0]  # the target itself: cosine 1, never above
    mask = rng.random((5, 7)) < 0.7
    mask[0, 3] = True
    mask[4] = False  # all padding
    got = np.asarray(simtier.table_cosine(table, item, seq, mask))
    t = deq[item] / np.linalg.norm(deq[item], axis=1, keepdims=True)
    s = deq[seq] / np.linalg.norm(deq[seq], axis=2, keepdims=True)
    want = np.where(mask, np.einsum('bd,btd->bt', t, s), 0.0)
    np.testing.assert_allclose(got, want, atol=1e-6)
    self.assertLessEqual(got.max(), 1.0)
    self.assertTrue((got[4] == 0).all())

  @parameterized.parameters(np.float32, np.int8)
  def test_shared_history_equals_repeated_history(self, dtype):
    """One history (1, T) against B targets = that history on every row:
    bit for bit on an int8 table (exact integer dots), else to rounding."""
    rng = np.random.default_rng(4)
    v = rng.normal(size=(40, 16)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    table = np.round(v * 127).astype(np.int8) if dtype == np.int8 else v
    item = rng.integers(0, 40, 9)
    seq = rng.integers(0, 40, (1, 7))
    seq[0, 2] = item[3]
    mask = np.arange(7)[None] >= 2
    got = np.asarray(simtier.table_cosine(table, item, seq, mask))
    want = np.asarray(simtier.table_cosine(
        table, item, np.repeat(seq, 9, 0), np.repeat(mask, 9, 0)))
    self.assertEqual(got.shape, (9, 7))
    if dtype == np.int8:
      np.testing.assert_array_equal(got, want)
    else:
      np.testing.assert_allclose(got, want, atol=1e-6)

  def test_orthogonal_int8_pair_is_exactly_zero(self):
    """An exactly orthogonal int8 pair: cosine 0.0 (official bin 10) in
    either layout, not a rounding residue whose sign picks the bin."""
    table = np.zeros((4, 8), np.int8)
    table[0] = [100, 3, -7, 25, 1, 0, 9, -60]
    table[1] = [3, -100, 0, 0, 0, 0, 0, 0]  # dot with row 0: 300 - 300 = 0
    table[2] = [1, 2, 3, 4, 5, 6, 7, 8]
    seq, mask = np.array([[1, 2]]), np.ones((1, 2), bool)
    for ids, m in ((seq, mask), (np.repeat(seq, 3, 0), np.repeat(mask, 3, 0))):
      got = np.asarray(simtier.table_cosine(table, np.array([0, 2, 0]), ids,
                                            m))
      self.assertEqual(got[0, 0], 0.0)
      self.assertEqual(got[2, 0], 0.0)
      self.assertEqual(simtier.official_bins(got)[0, 0], 10)


def reference_counts(bins, weights, num_bins):
  """The counts as computed before the scatter-add: a (B, T, N) one-hot
  summed over T."""
  return jnp.einsum('btn,bt->bn', jax.nn.one_hot(bins, num_bins), weights)


def largest_intermediate(fn, *args):
  """Elements of the largest value `fn`'s jaxpr computes (nested too)."""
  def walk(jaxpr):
    sizes = [0]
    for eqn in jaxpr.eqns:
      sizes += [math.prod(getattr(v.aval, 'shape', ())) for v in eqn.outvars]
      for p in eqn.params.values():
        for sub in p if isinstance(p, (list, tuple)) else (p,):
          if hasattr(sub, 'eqns'):
            sizes.append(walk(sub))
          elif hasattr(sub, 'jaxpr') and hasattr(sub.jaxpr, 'eqns'):
            sizes.append(walk(sub.jaxpr))
    return max(sizes)
  return walk(jax.make_jaxpr(fn)(*args).jaxpr)


class FastPathTest(parameterized.TestCase):
  """The long-history fast paths against the computations they replaced."""

  def _data(self, b=8, t=64, v=200, dv=32):
    # V <= ALL_PAIRS_ROWS_PER_POSITION * T: the all-pairs path.
    rng = np.random.default_rng(7)
    x = rng.normal(size=(v, dv))
    table = np.round(x / np.linalg.norm(x, axis=1, keepdims=True) *
                     127).astype(np.int8)
    table[1] = 0  # a row without a vector: cosine 0, not NaN
    item = rng.integers(0, v, b).astype(np.int32)
    seq = rng.integers(0, v, (b, t)).astype(np.int32)
    seq[:, 0] = item  # the target itself: cosine 1
    seq[0, 1] = 1
    mask = rng.random((b, t)) < 0.8
    mask[:, :2] = True
    mask[-1] = False  # an all-padded row
    return table, item, seq, mask

  def test_all_pairs_cosine_equals_gathered(self):
    table, item, seq, mask = self._data()
    self.assertLessEqual(
        table.shape[0], simtier.ALL_PAIRS_ROWS_PER_POSITION * seq.shape[1])
    got = np.asarray(jax.jit(simtier.table_cosine)(table, item, seq, mask))
    want = np.asarray(simtier.gathered_cosine(table, item, seq, mask))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # Exact integer dots either way: the same SimTier bins, bit for bit.
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got[:, 0][mask[:, 0]], 1.0, atol=1e-6)
    self.assertEqual(got[0, 1], 0.0)
    # Float tables, and int8 tables too large for all pairs, gather.
    f = table.astype(np.float32) / 127
    np.testing.assert_array_equal(simtier.table_cosine(f, item, seq, mask),
                                  simtier.gathered_cosine(f, item, seq, mask))

  def test_no_history_sized_copy_of_the_vectors(self):
    """Neither the cosines nor the counts build a (B, T, Dv) or (B, T, N)
    tensor (the old path built both; with T = 1000 they were the step)."""
    table, item, seq, mask = self._data()
    b, t = seq.shape
    self.assertLess(largest_intermediate(simtier.table_cosine, table, item,
                                         seq, mask), b * t * table.shape[1])
    sims = simtier.table_cosine(table, item, seq, mask)
    self.assertLess(largest_intermediate(
        simtier.simtier_official_counts, sims, mask), b * t * 2)
    # What the reference builds, for contrast.
    self.assertGreaterEqual(largest_intermediate(
        simtier.gathered_cosine, table, item, seq, mask),
                            b * t * table.shape[1])

  @parameterized.parameters(True, False)
  def test_counts_equal_one_hot(self, mask_padding):
    table, item, seq, mask = self._data()
    sims = simtier.table_cosine(table, item, seq, mask)
    s, w = simtier._counted(sims, mask, mask_padding)
    for bins, n in ((simtier.official_bins(s), simtier.OFFICIAL_NUM_BINS),
                    (simtier.paper_bins(s, 20), 20)):
      np.testing.assert_array_equal(simtier.bin_counts(bins, w, n),
                                    reference_counts(bins, w, n))


if __name__ == '__main__':
  absltest.main()
