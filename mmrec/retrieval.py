"""Long-history retrieval by vector similarity (GSU-style top-k).

A "general search unit" (GSU, as in SIM and the team's open MUSE code) cuts a
long behaviour history (e.g. 1000 behaviours) down to the k behaviours most
relevant to the target before the expensive target attention runs. Here the
relevance is the cosine between the target item's frozen multimodal vector and
each behaviour's (the official code's `sim_mm_top_k`).

- Scores come from `simtier.table_cosine`: float32 or int8 tables (int8 =
  round(127 v); the 1/127 scale cancels in a cosine), clipped to [-1, 1].
- Padded behaviours are never chosen while there are real ones left; a row
  with fewer than k real behaviours gets its real ones first and padding after,
  and the result's mask says which are real. (The official code instead treats
  a cosine of exactly 0 as padding, so a real behaviour without a vector is
  pushed back too; here a real behaviour always counts as real.)
- Order: best score first; equal scores keep history order (the lower
  position first), which is `jax.lax.top_k`'s documented tie-break.
- No gradient flows: the table is stop_gradient'ed and the selection is an
  index. Everything is per row, so a batch sharded on 'data' stays sharded.

Shape letters: B batch, T long-history length, k retrieved behaviours
(min(k, T)), V items, Dv vector width.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mmrec import simtier


class Retrieved(NamedTuple):
  """What `top_k` returns; every field is (B, k), best score first."""
  ids: jax.Array  # int32 item ids, 0 at padding (the house convention)
  mask: jax.Array  # bool, True where a real behaviour was retrieved
  positions: jax.Array  # int32 index into the history (T), to gather fields
  scores: jax.Array  # float32 cosine to the target, 0 at padding


def top_k(vectors, target_ids, seq_ids, seq_mask, k: int) -> Retrieved:
  """The k behaviours of a long history closest to the target by cosine.

  Args:
    vectors: (V, Dv) item-vector table, float or int8 (= round(127 v)).
    target_ids: (B,) target item ids.
    seq_ids: (B, T) behaviour item ids (any value at padding).
    seq_mask: (B, T) bool, True for real behaviours.
    k: how many to keep; a history shorter than k gives all of it (k = T).
  """
  if k < 1:
    raise ValueError(f'top_k needs k >= 1, got {k}.')
  mask = seq_mask.astype(bool)
  scores = simtier.table_cosine(vectors, target_ids, seq_ids, mask)
  k = min(k, scores.shape[-1])
  # Any real cosine is >= -1, so padding ranks below every real behaviour.
  _, positions = jax.lax.top_k(jnp.where(mask, scores, -2.0), k)
  real = jnp.take_along_axis(mask, positions, axis=-1)
  return Retrieved(
      ids=jnp.where(real, gather(seq_ids, positions), 0).astype(jnp.int32),
      mask=real,
      positions=positions.astype(jnp.int32),
      scores=jnp.take_along_axis(scores, positions, axis=-1))


def gather(field, positions):
  """A (B, T, ...) history field at the retrieved (B, k) positions."""
  index = positions.reshape(positions.shape + (1,) * (field.ndim - 2))
  return jnp.take_along_axis(field, index, axis=1)


def gather_masked(field, retrieved: Retrieved):
  """`gather`, with 0 at the retrieved padding (as padded slots hold)."""
  got = gather(field, retrieved.positions)
  mask = retrieved.mask.reshape(retrieved.mask.shape + (1,) * (got.ndim - 2))
  return jnp.where(mask, got, jnp.zeros((), got.dtype))
