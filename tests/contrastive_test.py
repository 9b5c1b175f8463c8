"""Tests for mmrec.contrastive against plain numpy references."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from mmrec import contrastive
from mmrec import layers


def _unit(rng, *shape):
  x = rng.normal(size=shape)
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _np_xent_first(logits):
  """Cross-entropy with target 0, one row at a time, skipping -inf entries."""
  out = []
  for row in logits:
    row = row[np.isfinite(row)]
    m = row.max()
    out.append(m + np.log(np.exp(row - m).sum()) - row[0])
  return np.array(out)


def _np_info_nce(q, k_pos, neg, t, mask):
  logits = []
  for i in range(q.shape[0]):
    row = [q[i] @ k_pos[i]]
    for j in range(neg.shape[0]):
      row.append(q[i] @ neg[j] if mask[i, j] else -np.inf)
    logits.append(np.array(row, np.float64) / t)
  return _np_xent_first(np.array(logits))


def _np_in_batch(q, k, t, ids=None, same=None):
  """Row by row; k_j is dropped where ids match or same[i, j] (j != i)."""
  logits = []
  for i in range(q.shape[0]):
    drop = lambda j: ((ids is not None and np.array_equal(ids[j], ids[i]))
                      or (same is not None and same[i, j]))
    row = [q[i] @ k[i]] + [q[i] @ k[j] if not drop(j) else -np.inf
                           for j in range(k.shape[0]) if j != i]
    logits.append(np.array(row, np.float64) / t)
  return _np_xent_first(np.array(logits))


def _np_triplet(q, k_pos, k_neg, mask, margin):
  def cos(a, b):
    return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
  out = []
  for i in range(q.shape[0]):
    terms = [max(0.0, (1 - cos(q[i], k_pos[i])) - (1 - cos(q[i], k_neg[i, h]))
                 + margin)
             for h in range(k_neg.shape[1]) if mask[i, h]]
    out.append(np.mean(terms) if terms else 0.0)
  return np.array(out)


class TemperatureTest(parameterized.TestCase):

  @parameterized.parameters((0.07, 0.07), (0.001, 0.01), (5.0, 1.0))
  def test_clip(self, temp, expected):
    got = layers.clip_temperature(jnp.log(temp))
    self.assertAlmostEqual(float(got), expected, places=6)

  def test_gradient_inside_range_only(self):
    grad = jax.grad(layers.clip_temperature)
    self.assertAlmostEqual(float(grad(jnp.log(0.07))), 0.07, places=6)
    self.assertEqual(float(grad(jnp.log(0.001))), 0.0)


class InfoNceTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('no_mask', None), ('queue_mask', 'k'), ('row_mask', 'bk'))
  def test_matches_numpy(self, mask_kind):
    rng = np.random.default_rng(0)
    b, k, d, t = 5, 7, 8, 0.1
    q, k_pos, neg = _unit(rng, b, d), _unit(rng, b, d), _unit(rng, k, d)
    if mask_kind is None:
      mask, np_mask = None, np.ones((b, k), bool)
    elif mask_kind == 'k':
      mask = rng.random(k) < 0.5
      mask[0] = False
      np_mask = np.broadcast_to(mask, (b, k))
    else:
      mask = np_mask = rng.random((b, k)) < 0.5
      mask[1] = False  # A row with no negatives at all: loss 0.
    got = jax.jit(contrastive.info_nce)(q, k_pos, neg, t, mask)
    want = _np_info_nce(q, k_pos, neg, t, np_mask)
    self.assertEqual(got.shape, (b,))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

  def test_gradients_finite_with_mask(self):
    rng = np.random.default_rng(1)
    q, k_pos, neg = _unit(rng, 4, 8), _unit(rng, 4, 8), _unit(rng, 6, 8)
    mask = np.array([True, False, True, False, False, False])

    def loss(q, k_pos, neg, log_t):
      return contrastive.info_nce(
          q, k_pos, neg, layers.clip_temperature(log_t), mask).mean()

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(
        q, k_pos, neg, jnp.log(0.07))
    for g in jax.tree.leaves(grads):
      self.assertTrue(np.isfinite(g).all())
    # Masked queue slots get no gradient.
    np.testing.assert_array_equal(grads[2][~mask], 0.0)


class InBatchTest(parameterized.TestCase):

  @parameterized.named_parameters(('no_ids', False), ('ids', True))
  def test_in_batch_matches_numpy(self, use_ids):
    rng = np.random.default_rng(2)
    b, d, t = 6, 8, 0.2
    q, k = _unit(rng, b, d), _unit(rng, b, d)
    ids = np.array([0, 1, 0, 2, 3, 1]) if use_ids else None
    got = jax.jit(contrastive.in_batch_info_nce)(q, k, t, ids)
    want = _np_in_batch(q, k, t, np.arange(b) if ids is None else ids)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

  def test_clip_loss_symmetric_mean(self):
    rng = np.random.default_rng(3)
    a, b, t = _unit(rng, 5, 8), _unit(rng, 5, 8), 0.07
    got = jax.jit(contrastive.clip_loss)(a, b, t)
    ids = np.arange(5)
    want = 0.5 * (_np_in_batch(a, b, t, ids) + _np_in_batch(b, a, t, ids))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # With ids (-inf logits) and a learned temperature too.
    ids = np.array([0, 1, 0, 2, 3])
    g = jax.jit(jax.grad(
        lambda a, b, log_t: contrastive.clip_loss(
            a, b, layers.clip_temperature(log_t), ids).mean(),
        argnums=(0, 1, 2)))(a, b, jnp.log(t))
    self.assertTrue(all(np.isfinite(x).all() for x in g))

  def test_clip_loss_with_separate_keys(self):
    # MoCo-style in-batch: queries a (items b) scored against keys of the
    # other side from another encoder; ids mask same-item duplicates.
    rng = np.random.default_rng(4)
    a, b, t = _unit(rng, 6, 8), _unit(rng, 6, 8), 0.1
    ka, kb = _unit(rng, 6, 8), _unit(rng, 6, 8)
    ids = np.array([3, 1, 3, 2, 0, 1])
    got = jax.jit(functools.partial(contrastive.clip_loss, a_keys=ka,
                                    b_keys=kb))(a, b, t, ids)
    want = 0.5 * (_np_in_batch(a, kb, t, ids) + _np_in_batch(b, ka, t, ids))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # The gradient reaches the queries only through the logits they are in:
    # b enters only as a query, so it gets none from the a -> kb direction.
    g_b = jax.grad(lambda b: contrastive.in_batch_info_nce(
        b, ka, t, ids).sum())(b)
    g_b_full = jax.grad(lambda b: 2 * contrastive.clip_loss(
        a, b, t, ids, a_keys=ka, b_keys=kb).sum())(b)
    np.testing.assert_allclose(g_b_full, g_b, rtol=1e-5, atol=1e-6)


class DuplicateMaskTest(parameterized.TestCase):
  """Duplicate rows of a hand-made batch are not negatives of each other."""

  def test_same_rows_matches_numpy(self):
    tokens = np.array([[5, 6, 0], [5, 6, 0], [5, 7, 0], [6, 5, 0], [5, 6, 0]])
    got = np.asarray(jax.jit(contrastive.same_rows)(tokens))
    want = np.array([[np.array_equal(a, b) for b in tokens] for a in tokens])
    np.testing.assert_array_equal(got, want)
    self.assertTrue(got[0, 4] and got[1, 4] and not got[0, 3])

  def test_shares_any_matches_numpy(self):
    a, b = np.array([0, 1, 2, 3, 4]), np.array([9, 8, 0, 8, 5])
    got = np.asarray(jax.jit(contrastive.shares_any)(a, b))
    want = np.array([[bool({a[i], b[i]} & {a[j], b[j]}) for j in range(5)]
                     for i in range(5)])
    np.testing.assert_array_equal(got, want)
    # (0, 9) ~ (2, 0) through item 0 in different positions; (1, 8) ~ (3, 8).
    self.assertTrue(got[0, 2] and got[1, 3] and not got[0, 1])

  def test_token_rows_as_ids(self):
    # Captions 0, 2 and 4 are identical: their images are positives of each
    # other's caption, so neither direction may count them as negatives.
    rng = np.random.default_rng(4)
    tokens = np.array([[3, 4], [3, 5], [3, 4], [7, 1], [3, 4], [7, 2]])
    a, b, t = _unit(rng, 6, 8), _unit(rng, 6, 8), 0.1
    got = jax.jit(contrastive.clip_loss)(a, b, t, tokens)
    want = 0.5 * (_np_in_batch(a, b, t, ids=tokens)
                  + _np_in_batch(b, a, t, ids=tokens))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    unmasked = 0.5 * (_np_in_batch(a, b, t) + _np_in_batch(b, a, t))
    self.assertFalse(np.allclose(got, unmasked, atol=1e-3))

  def test_asymmetric_same_is_transposed_for_the_reverse_direction(self):
    rng = np.random.default_rng(5)
    a, b, t = _unit(rng, 5, 8), _unit(rng, 5, 8), 0.2
    same = rng.random((5, 5)) < 0.3
    ids = np.array([0, 1, 1, 2, 3])
    got = jax.jit(contrastive.clip_loss)(a, b, t, ids, same)
    want = 0.5 * (_np_in_batch(a, b, t, ids, same)
                  + _np_in_batch(b, a, t, ids, same.T))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


class TripletTest(parameterized.TestCase):

  @parameterized.parameters(0.0, 0.2, 1.0)
  def test_matches_numpy(self, margin):
    rng = np.random.default_rng(4)
    b, h, d = 6, 3, 8
    # Unnormalised inputs: the loss works on cosine, whatever the norms.
    q = rng.normal(size=(b, d)).astype(np.float32)
    k_pos = rng.normal(size=(b, d)).astype(np.float32)
    k_neg = rng.normal(size=(b, h, d)).astype(np.float32)
    mask = rng.random((b, h)) < 0.6
    mask[0] = False
    mask[1] = True
    got = jax.jit(contrastive.triplet_loss)(q, k_pos, k_neg, mask, margin)
    want = _np_triplet(q, k_pos, k_neg, mask, margin)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    self.assertEqual(float(got[0]), 0.0)

  def test_gradients_finite_with_zero_negatives(self):
    rng = np.random.default_rng(5)
    q, k_pos = _unit(rng, 3, 4), _unit(rng, 3, 4)
    k_neg = np.zeros((3, 2, 4), np.float32)  # Padding slots may be zeros.
    mask = np.array([[True, False], [False, False], [True, True]])
    g = jax.jit(jax.grad(
        lambda *a: contrastive.triplet_loss(*a, mask, 0.3).sum(),
        argnums=(0, 1, 2)))(q, k_pos, k_neg)
    self.assertTrue(all(np.isfinite(x).all() for x in g))


class QueueTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    # One compiled enqueue per batch shape, shared by the tests.
    cls.enqueue = staticmethod(jax.jit(contrastive.enqueue))

  def _run(self, size, batches, valid_rate):
    """Enqueues random batches; returns the queue and the numpy FIFO."""
    rng = np.random.default_rng(size)
    queue = contrastive.init_queue(size, 2)
    fifo = []  # (key, id) of every valid key, oldest first.
    next_id = 0
    for b in batches:
      keys = rng.normal(size=(b, 2)).astype(np.float32)
      ids = np.arange(next_id, next_id + b, dtype=np.int32)
      next_id += b
      valid = rng.random(b) < valid_rate
      queue = self.enqueue(queue, keys, valid, ids)
      fifo += [(keys[i], ids[i]) for i in range(b) if valid[i]]
    return queue, fifo

  @parameterized.named_parameters(
      ('exact_fill', 8, [4, 4], 1.0),
      ('wraps', 8, [3, 3, 3, 3], 1.0),
      ('batch_larger_than_queue', 5, [3, 7, 3], 1.0),
      ('partly_valid', 6, [4, 4, 4, 4, 4], 0.6),
      ('not_full', 10, [3, 3], 1.0),
  )
  def test_fifo_holds_most_recent_keys(self, size, batches, valid_rate):
    queue, fifo = self._run(size, batches, valid_rate)
    n = len(fifo)
    self.assertEqual(int(queue['ptr']), n % size)
    self.assertEqual(int(queue['valid'].sum()), min(n, size))
    # Slot of the j-th valid key ever written is j mod size; the last write
    # to a slot wins.
    want_keys = np.zeros((size, 2), np.float32)
    want_ids = np.full((size,), -1)
    for j, (key, i) in enumerate(fifo):
      want_keys[j % size], want_ids[j % size] = key, i
    np.testing.assert_array_equal(queue['keys'], want_keys)
    np.testing.assert_array_equal(queue['ids'], want_ids)
    np.testing.assert_array_equal(queue['valid'],
                                  np.arange(size) < min(n, size))
    # Equivalently: the queue holds exactly the most recent `size` keys.
    self.assertCountEqual(np.asarray(queue['ids'])[np.asarray(queue['valid'])],
                          [i for _, i in fifo[-size:]])

  def test_init_and_defaults(self):
    queue = contrastive.init_queue(4, 3)
    self.assertEqual(queue['keys'].shape, (4, 3))
    self.assertFalse(queue['valid'].any())
    self.assertEqual(queue['ptr'].dtype, jnp.int32)
    queue = jax.jit(contrastive.enqueue)(queue, jnp.ones((3, 3)))
    self.assertEqual(int(queue['ptr']), 3)
    np.testing.assert_array_equal(queue['valid'], [True] * 3 + [False])
    queue = jax.jit(contrastive.enqueue)(queue, jnp.full((2, 3), 2.0),
                                         jnp.array([False, False]))
    self.assertEqual(int(queue['ptr']), 3)  # Nothing valid: nothing moves.
    np.testing.assert_array_equal(queue['keys'][3], 0.0)

  def test_queue_mask_feeds_info_nce(self):
    rng = np.random.default_rng(7)
    queue = contrastive.init_queue(6, 4)
    queue = jax.jit(contrastive.enqueue)(queue, _unit(rng, 2, 4))
    q, k = _unit(rng, 3, 4), _unit(rng, 3, 4)
    got = jax.jit(contrastive.info_nce)(q, k, queue['keys'], 0.1,
                                        queue['valid'])
    want = _np_info_nce(q, k, np.asarray(queue['keys']), 0.1,
                        np.broadcast_to(np.asarray(queue['valid']), (3, 6)))
    np.testing.assert_allclose(got, want, rtol=1e-5)


if __name__ == '__main__':
  absltest.main()
