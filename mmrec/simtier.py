"""SimTier (paper and official variants) and SimScore features.

Both turn the cosine similarities between a target item's vector and its
behaviour items' vectors into a fixed-size "similarity distribution":
- paper: counts of the sims in N equal-width tiers over [-1, 1];
- official (alimama-tech/MUSE): bin = ceil(10·cos) + 10 clipped to [0, 21]
  (22 bins; cos in [-1, 1] uses bins 0..20), output log(1 + count) · W[bin]
  with a learned width-d vector per bin, flattened.

Padding: with `mask_padding=True` (our default) padded positions are not
counted. With `mask_padding=False` they are counted the way the official code
counts them: a padded behaviour is a zero vector, whose cosine is 0, so it
lands in the middle bin, whatever value `sims` holds there.

Shape letters: B batch, T behaviour-sequence length, D vector width,
N paper tiers, d official per-bin width.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

OFFICIAL_NUM_BINS = 22  # ceil(10·cos) + 10 in [0, 20], plus one slot for >1.


# An int8 table's cosines go through all (target, item) pairs when the table
# has at most this many rows per history position (`table_cosine`).
ALL_PAIRS_ROWS_PER_POSITION = 32


def table_cosine(vectors, target_ids, seq_ids, seq_mask):
  """Cosine of each behaviour to the target, straight from the vector table.

  (V, Dv) table (float, or int8 = round(127 v)), (B,) and (B, T) ids, (B, T)
  mask -> (B, T), 0 at padding, clipped to [-1, 1]: an item's cosine to
  itself comes out as 1 +- rounding, and 1.0000001 would land in another
  SimTier bin than 1.0 (ceil(10 cos)), so different compilations (meshes,
  devices) would disagree. For the same reason the dot products are taken
  on the raw rows and scaled by both inverse norms afterwards: on an int8
  table they are exact integers (|dot| <= Dv 127^2 < 2^24) whatever the
  summation order, so an exactly orthogonal pair (dot 0, about 3 in 10,000
  pairs of 128-d int8 vectors) gives cosine 0 (bin 10), not +-1e-8 (bin 11
  or 10 depending on how a compilation orders the sum). Equals the cosine
  of the gathered (dequantised, padding-zeroed) vectors, but never
  materialises a normalised (B, T, Dv) copy: the behaviours' inverse norms
  are computed on the table (V x Dv, small) and gathered, and int8 values
  need no dequantising since the 1/127 scale cancels in a cosine.

  Which dot products: `gathered_cosine` (the reference) gathers the (B, T,
  Dv) behaviour rows, which XLA turns into a (B, T, Dv) float32 copy: with a
  1000-long history 512 MB per batch of 1000, most of the step's time on a
  CPU. On an int8 table with at most `ALL_PAIRS_ROWS_PER_POSITION` rows per
  history position (the official setting on the default world: 20,000 rows,
  T = 1000) this instead multiplies the B targets by the whole table, one
  (B, Dv) x (Dv, V) matmul, and picks each behaviour's dot out of the
  (B, V) result: B V Dv multiply-adds at matmul speed instead of a gather
  of B T Dv bytes, and bit for bit the same cosines, since the integer dots
  are exact either way (bfloat16 holds every int8 value exactly, and the
  products are summed in float32).

  The ids and mask may also be (1, T): one history shared by the B targets
  (serving's request-level call); the result is the same, bit for bit on
  an int8 table, as for the history repeated B times.
  """
  vectors = jax.lax.stop_gradient(vectors)
  if seq_ids.shape[0] == 1 and target_ids.shape[0] != 1:
    # Norms of the B + T gathered rows, not of the whole table (at serving
    # V is the item capacity, tens of thousands of rows, and B + T ~150),
    # and the history's vectors gathered once.
    tv = jnp.take(vectors, target_ids, axis=0).astype(jnp.float32)
    sv = jnp.take(vectors, seq_ids[0], axis=0)  # (T, Dv)
    dots = jnp.einsum('bd,td->bt', tv, sv, preferred_element_type=jnp.float32)
    return _scaled(dots, _inv_norm(tv), _inv_norm(sv)[None], seq_mask)
  if (vectors.dtype != jnp.int8 or
      vectors.shape[0] > ALL_PAIRS_ROWS_PER_POSITION * seq_ids.shape[1]):
    return gathered_cosine(vectors, target_ids, seq_ids, seq_mask)
  tv = jnp.take(vectors, target_ids, axis=0)
  all_dots = jnp.einsum('bd,vd->bv', tv.astype(jnp.bfloat16),
                        vectors.astype(jnp.bfloat16),
                        preferred_element_type=jnp.float32)  # (B, V)
  dots = jnp.take_along_axis(all_dots, seq_ids, axis=1)
  return _scaled(dots, _inv_norm(tv), jnp.take(_inv_norm(vectors), seq_ids),
                 seq_mask)


def gathered_cosine(vectors, target_ids, seq_ids, seq_mask):
  """`table_cosine` through the gathered (B, T, Dv) behaviour rows.

  The reference for `table_cosine`'s all-pairs path, and the path for float
  tables and tables too large for it. Same arguments, (B, T) ids and mask.
  """
  vectors = jax.lax.stop_gradient(vectors)
  table = vectors.astype(jnp.float32)
  tv = jnp.take(table, target_ids, axis=0)
  dots = jnp.einsum('bd,btd->bt', tv, jnp.take(vectors, seq_ids, axis=0),
                    preferred_element_type=jnp.float32)
  return _scaled(dots, _inv_norm(tv), jnp.take(_inv_norm(table), seq_ids),
                 seq_mask)


def _scaled(dots, inv_target, inv_seq, seq_mask):
  """Dots (B, T) -> cosines: times both inverse norms, clipped, 0 at padding."""
  cos = dots * inv_target[:, None] * inv_seq
  return jnp.where(seq_mask.astype(bool), jnp.clip(cos, -1.0, 1.0), 0.0)


def _inv_norm(rows):
  return 1.0 / jnp.maximum(
      jnp.linalg.norm(rows.astype(jnp.float32), axis=-1), 1e-8)


def _counted(sims, mask, mask_padding: bool):
  """(sims, weights): padding dropped (weight 0) or counted as cosine 0."""
  mask = mask.astype(bool)
  if mask_padding:
    return sims, mask.astype(jnp.float32)
  return jnp.where(mask, sims, 0.0), jnp.ones(sims.shape, jnp.float32)


def bin_counts(bins, weights, num_bins: int):
  """Per row, the summed weights of each bin: (B, T) int, (B, T) -> (B, N).

  A scatter-add per row, not a one-hot (B, T, N) tensor summed over T: with
  a 1000-long history that tensor is 88 MB per batch of 1000 and took as
  long as the cosines. The sums are exact whatever their order (the weights
  are 0 or 1, the counts integers far below 2^24).
  """
  def row(b, w):
    return jnp.zeros((num_bins,), jnp.float32).at[b].add(w)
  return jax.vmap(row)(bins, weights.astype(jnp.float32))


def paper_bins(sims, num_bins: int = 20):
  """Tier index of each sim: N equal-width tiers over [-1, 1]; 1 -> N - 1."""
  bins = jnp.floor((sims + 1.0) * (num_bins / 2.0)).astype(jnp.int32)
  return jnp.clip(bins, 0, num_bins - 1)


def simtier_paper(sims, mask, num_bins: int = 20, mask_padding: bool = True):
  """Counts of the sims per tier: (B, T), (B, T) bool -> (B, N) float32."""
  sims, weights = _counted(sims, mask, mask_padding)
  return bin_counts(paper_bins(sims, num_bins), weights, num_bins)


def official_bins(sims):
  """The official code's bin index: ceil(10·cos) + 10, clipped to [0, 21].

  Multiplies by 10 (as the official code does, 1/eps) rather than dividing by
  0.1, so exact tenths land where the maths says: cos = 0.3 -> bin 13.
  """
  bins = jnp.ceil(sims * 10.0).astype(jnp.int32) + 10
  return jnp.clip(bins, 0, OFFICIAL_NUM_BINS - 1)


def simtier_official_counts(sims, mask, mask_padding: bool = True):
  """Counts per official bin: (B, T), (B, T) bool -> (B, 22) float32."""
  sims, weights = _counted(sims, mask, mask_padding)
  return bin_counts(official_bins(sims), weights, OFFICIAL_NUM_BINS)


def simscore_features(sims, mask):
  """SimScore side input for attention: (B, T) -> (B, T, 1), 0 at padding."""
  return jnp.where(mask.astype(bool), sims, 0.0)[..., None]


class SimTierOfficial(nn.Module):
  """Official SimTier: log1p(count[bin]) · W[bin], flattened.

  Shapes: sims (B, T), mask (B, T) bool -> (B, 22·d). Params: 'tier_weights'
  (22, d), initialised uniform in [0, 1) as the official code does (zeros
  would give the tower nothing to learn from at the start).
  """
  dim: int = 1
  mask_padding: bool = True

  @nn.compact
  def __call__(self, sims, mask):
    w = self.param(
        'tier_weights',
        nn.with_logical_partitioning(nn.initializers.uniform(1.0),
                                     ('tier', 'embed')),
        (OFFICIAL_NUM_BINS, self.dim), jnp.float32)
    counts = simtier_official_counts(sims, mask, self.mask_padding)
    out = jnp.log1p(counts)[..., None] * w  # (B, 22, d)
    return out.reshape(out.shape[0], OFFICIAL_NUM_BINS * self.dim)
