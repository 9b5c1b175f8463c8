"""Contrastive losses and the MoCo key queue (pure jnp; the momentum update
is optax.incremental_update, applied by the SCL trainer).

Shape letters: B batch, D embedding width, K queue size, H hard negatives.

All losses return per-example values (B,) so the trainer can weight, mask and
average them itself; logits are computed in float32 whatever the input dtype.

The MoCo queue is a plain dict of arrays, a global array carried in the train
state through the jitted step. Under a ('data', 'model') mesh with the batch
sharded on 'data', `enqueue` receives the keys of the *global* batch (jit
inserts the gather), so every device holds the whole queue: the trainer gives
the queue a replicated sharding. K x D floats is small (196,800 x 128 float32
is ~100 MB), and a queue sharded on 'data' would need an all-gather for every
logit computation anyway, since each query is scored against all K keys.
"""

import jax
import jax.numpy as jnp

from mmrec import layers


def _cross_entropy_first(logits: jax.Array) -> jax.Array:
  """Cross-entropy with the target at column 0; -inf logits are ignored."""
  return jax.nn.logsumexp(logits, axis=-1) - logits[:, 0]


def info_nce(q: jax.Array, k_pos: jax.Array, negatives: jax.Array,
             temperature: jax.Array,
             negatives_mask: jax.Array | None = None) -> jax.Array:
  """InfoNCE against a shared set of negatives (the MoCo queue).

  Args:
    q: (B, D) queries.
    k_pos: (B, D) positive keys.
    negatives: (K, D) negatives shared by all queries.
    temperature: scalar.
    negatives_mask: optional (K,) or (B, K) bool, True = use as a negative.
      Masked entries (unfilled queue slots, keys of the query's own positive
      item) get logit -inf, i.e. drop out of the softmax.

  Returns:
    (B,) loss: cross-entropy of [q.k_pos, q.negatives] / T, target index 0.
  """
  q = q.astype(jnp.float32)
  pos = jnp.sum(q * k_pos.astype(jnp.float32), axis=-1, keepdims=True)
  neg = (q @ negatives.astype(jnp.float32).T) / temperature
  if negatives_mask is not None:
    # Masked after the division: -inf / T would give the temperature a NaN
    # gradient (inf * 0).
    neg = jnp.where(negatives_mask, neg, -jnp.inf)
  # The positive is always finite, so logsumexp never sees an all -inf row.
  logits = jnp.concatenate([pos / temperature, neg], axis=-1)
  return _cross_entropy_first(logits)


def same_rows(x: jax.Array) -> jax.Array:
  """(B, B) bool: rows i and j of x (B, ...) are equal in every element.

  In-jit and exact: a (B, T) token comparison costs B^2 T, nothing next to
  the towers, and needs no id from the pipeline (a hash could collide).
  """
  x = x.reshape(x.shape[0], -1)
  return jnp.all(x[:, None] == x[None], axis=-1)


def shares_any(*ids: jax.Array) -> jax.Array:
  """(B, B) bool: rows i and j have any id in common, over all (B,) `ids`.

  For pairs of items (i2i): pairs (a_i, b_i) and (a_j, b_j) that share an
  item, in either position, are not negatives of each other.
  """
  ids = jnp.stack(ids, axis=1)  # (B, N)
  return jnp.any(ids[:, None, :, None] == ids[None, :, None, :], axis=(2, 3))


def in_batch_info_nce(q: jax.Array, k: jax.Array, temperature: jax.Array,
                      ids: jax.Array | None = None,
                      same: jax.Array | None = None) -> jax.Array:
  """InfoNCE with the other rows' keys as negatives: q_i's positive is k_i.

  Args:
    q: (B, D) queries.
    k: (B, D) keys.
    temperature: scalar.
    ids: optional (B,) or (B, ...) ids; k_j with ids[j] == ids[i] (the whole
      row equal), j != i, is not a negative for q_i (two queries that bought
      the same item, two images with the same caption tokens).
    same: optional (B, B) bool, True where k_j is not a negative for q_i
      (a duplicate of q_i's positive); combined with `ids`; the diagonal is
      ignored.

  Returns:
    (B,) loss.
  """
  logits = (q.astype(jnp.float32) @ k.astype(jnp.float32).T) / temperature
  b = logits.shape[0]
  eye = jnp.eye(b, dtype=bool)
  if ids is not None:
    same = same_rows(ids) if same is None else same | same_rows(ids)
  if same is not None:
    # Masked after the division, as in info_nce; the diagonal (the positive)
    # stays finite, so no row is all -inf.
    logits = jnp.where(same & ~eye, -jnp.inf, logits)
  pos = jnp.diagonal(logits)
  return jax.nn.logsumexp(logits, axis=-1) - pos


def clip_loss(a: jax.Array, b: jax.Array, temperature: jax.Array,
              ids: jax.Array | None = None,
              same: jax.Array | None = None, a_keys: jax.Array | None = None,
              b_keys: jax.Array | None = None) -> jax.Array:
  """Symmetric CLIP loss (B,): mean of the a->b and b->a in-batch InfoNCE.

  `ids` / `same` as in `in_batch_info_nce`, for the a->b direction; b->a
  uses same.T (a_j is not a negative of b_i when b_i is not one of a_j).
  a_keys / b_keys (default: a / b themselves) are what the other side is
  scored against: a_i against b_keys, b_i against a_keys. MoCo-style
  in-batch training passes momentum-encoder keys here, so that each side's
  gradient flows through its queries only.
  """
  a_keys = a if a_keys is None else a_keys
  b_keys = b if b_keys is None else b_keys
  return 0.5 * (in_batch_info_nce(a, b_keys, temperature, ids, same)
                + in_batch_info_nce(b, a_keys, temperature, ids,
                                    None if same is None else same.T))


def triplet_loss(q: jax.Array, k_pos: jax.Array, k_neg: jax.Array,
                 neg_mask: jax.Array, margin: float) -> jax.Array:
  """Triplet loss on cosine distance with several hard negatives per query.

  Args:
    q: (B, D) queries.
    k_pos: (B, D) positive keys.
    k_neg: (B, H, D) hard negatives (clicked but not bought).
    neg_mask: (B, H) bool, True = real hard negative.
    margin: the margin.

  Returns:
    (B,) mean over valid negatives of max(0, d(q, k+) - d(q, k-) + margin),
    d = 1 - cos; 0 for rows without a valid negative.
  """
  q = layers.l2_normalize(q.astype(jnp.float32))
  k_pos = layers.l2_normalize(k_pos.astype(jnp.float32))
  k_neg = layers.l2_normalize(k_neg.astype(jnp.float32))
  d_pos = 1.0 - jnp.sum(q * k_pos, axis=-1)  # (B,)
  d_neg = 1.0 - jnp.einsum('bd,bhd->bh', q, k_neg)  # (B, H)
  hinge = jax.nn.relu(d_pos[:, None] - d_neg + margin)
  mask = neg_mask.astype(jnp.float32)
  return jnp.sum(hinge * mask, axis=-1) / jnp.maximum(mask.sum(-1), 1.0)


def init_queue(size: int, dim: int, dtype=jnp.float32) -> dict[str, jax.Array]:
  """An empty FIFO queue of `size` keys of width `dim`.

  Fields: keys (K, D), valid (K,) bool (slot holds a real key), ids (K,) int32
  (the caller's id of each key, e.g. the item id, -1 when empty; lets the
  trainer mask the query's own positive item out of the negatives) and ptr,
  the int32 slot the next key goes to (the oldest key once the queue is full).
  """
  return dict(keys=jnp.zeros((size, dim), dtype),
              valid=jnp.zeros((size,), bool),
              ids=jnp.full((size,), -1, jnp.int32),
              ptr=jnp.zeros((), jnp.int32))


def enqueue(queue: dict[str, jax.Array], keys: jax.Array,
            valid: jax.Array | None = None,
            ids: jax.Array | None = None) -> dict[str, jax.Array]:
  """Writes the valid rows of `keys` (B, D) into the queue, oldest first out.

  Only rows with `valid` True (default: all) take a slot, in row order, so the
  queue always holds the K most recent real keys; ptr advances by their
  number. More than K valid rows: the last K win. Shapes are static, so this
  works under jit with any number of valid rows.
  """
  size = queue['keys'].shape[0]
  b = keys.shape[0]
  if valid is None:
    valid = jnp.ones((b,), bool)
  if ids is None:
    ids = jnp.full((b,), -1, jnp.int32)
  valid = valid.astype(bool)
  rank = jnp.cumsum(valid) - 1  # Position of each valid row among them.
  count = rank[-1] + 1 if b else jnp.zeros((), jnp.int32)
  # Rows overwritten within this same batch are dropped, so that the scatter
  # indices are distinct (duplicate indices would make the winner undefined).
  keep = valid & (rank >= count - size)
  slot = jnp.where(keep, (queue['ptr'] + rank) % size, size)  # size: dropped.
  return dict(
      keys=queue['keys'].at[slot].set(keys.astype(queue['keys'].dtype),
                                      mode='drop'),
      valid=queue['valid'].at[slot].set(True, mode='drop'),
      ids=queue['ids'].at[slot].set(ids.astype(jnp.int32), mode='drop'),
      ptr=((queue['ptr'] + count) % size).astype(jnp.int32))
