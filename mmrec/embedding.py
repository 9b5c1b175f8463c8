"""ID embedding tables for the CTR model, and lookups of frozen item vectors.

One table per ID field. The item, category and shop tables are shared by the
target item and the behaviour sequence, so a behaviour and the target that is
the same item get the same embedding. Tables carry logical axes
('vocab', 'embed'): `sharding.py` splits their rows over the 'model' mesh axis.

Lookups are `jnp.take`, which returns NaN (not an error) for an id outside the
table, so `check_ids` validates ids on the host before training starts.

Shape letters: B batch, L behaviour-sequence length, D embedding width
(`EmbeddingConfig.dim`), V vocabulary size, Dv item-vector width.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Batch field -> (table, EmbeddingConfig attribute holding its vocabulary size).
FIELD_TABLES = {
    'user_id': ('user', 'num_users'),
    'age': ('age', 'num_ages'),
    'gender': ('gender', 'num_genders'),
    'city': ('city', 'num_cities'),
    'item_id': ('item', 'num_items'),
    'category': ('category', 'num_categories'),
    'shop': ('shop', 'num_shops'),
    'seq_item': ('item', 'num_items'),
    'seq_category': ('category', 'num_categories'),
    'seq_shop': ('shop', 'num_shops'),
}
USER_FIELDS = ('user_id', 'age', 'gender', 'city')
TARGET_FIELDS = ('item_id', 'category', 'shop')


@dataclasses.dataclass(frozen=True)
class EmbeddingConfig:
  """Vocabulary sizes (ids run over [0, size)) and the embedding width.

  `seq_shop`: whether batches carry `seq_shop` (B, L). `JoinCtrFields` does not
  today, so behaviours are (item, category) only and the sequence features are
  2·D wide; with it they are (item, category, shop), 3·D, like the target.
  """
  num_users: int
  num_ages: int
  num_genders: int
  num_cities: int
  num_items: int
  num_categories: int
  num_shops: int
  dim: int = 16
  seq_shop: bool = False

  @property
  def seq_fields(self) -> tuple[str, ...]:
    base = ('seq_item', 'seq_category')
    return base + ('seq_shop',) if self.seq_shop else base


def _table_sizes(config: EmbeddingConfig) -> dict[str, int]:
  return {table: getattr(config, attr) for table, attr in FIELD_TABLES.values()}


class IdEmbeddings(nn.Module):
  """All ID tables of the CTR model.

  Returns user features (B, 4·D) [user, age, gender, city], target features
  (B, 3·D) [item, category, shop] and sequence features (B, L, S·D) with S = 2
  [item, category] or 3 (+ shop, `config.seq_shop`), zero at padded positions.
  The first S·D columns of the target features line up with the sequence
  features, so they can serve as the attention query.

  Params: one `nn.Embed` per table, {table: {'embedding': (V, D)}}.
  """
  config: EmbeddingConfig

  @nn.compact
  def __call__(self, batch):
    cfg = self.config
    init = nn.with_logical_partitioning(
        nn.initializers.normal(stddev=0.05), ('vocab', 'embed'))
    tables = {
        name: nn.Embed(size, cfg.dim, embedding_init=init, name=name)
        for name, size in _table_sizes(cfg).items()}

    def look(fields):
      return jnp.concatenate(
          [tables[FIELD_TABLES[f][0]](batch[f]) for f in fields], axis=-1)

    user = look(USER_FIELDS)
    target = look(TARGET_FIELDS)
    seq = look(cfg.seq_fields)
    # Padded slots hold id 0, a real item: zero them so nothing downstream
    # (mean pooling, unmasked sums) can pick up that item by accident.
    seq = jnp.where(batch['seq_mask'][..., None], seq, 0.0)
    return user, target, seq


def check_ids(batch, config: EmbeddingConfig) -> None:
  """Raises ValueError if an id field of a host (numpy) batch is out of range.

  Checks every id field `IdEmbeddings` reads: present, integer, and inside
  [0, vocabulary size). Cheap enough to run on the first batches of a job; the
  device lookup itself would silently give NaN.
  """
  sizes = _table_sizes(config)
  if 'seq_mask' not in batch:
    raise ValueError(f"Batch has no field 'seq_mask' (has {sorted(batch)}).")
  for field in USER_FIELDS + TARGET_FIELDS + config.seq_fields:
    if field not in batch:
      raise ValueError(f'Batch has no field {field!r} (has {sorted(batch)}).')
    ids = np.asarray(batch[field])
    if not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(f'Field {field!r} must hold integer ids, got '
                       f'{ids.dtype}.')
    size = sizes[FIELD_TABLES[field][0]]
    bad = (ids < 0) | (ids >= size)
    if bad.any():
      raise ValueError(
          f'Field {field!r} has id {int(ids[bad].flat[0])} outside the allowed '
          f'range [0, {size - 1}] ({FIELD_TABLES[field][1]} = {size}); '
          f'{int(bad.sum())} bad value(s).')


def check_vector_table(vectors, num_items: int | None = None):
  """Raises ValueError unless `vectors` is a (>= num_items, Dv) table."""
  if vectors is None:
    raise ValueError('This model variant needs the item-vector table '
                     '(vectors=...), got None.')
  if vectors.ndim != 2:
    raise ValueError(f'vectors must be (num_items, Dv), got {vectors.shape}.')
  if num_items is not None and vectors.shape[0] < num_items:
    raise ValueError(f'vectors has {vectors.shape[0]} rows but item ids run '
                     f'up to num_items = {num_items}.')


def item_vectors(vectors, batch, num_items: int | None = None):
  """Frozen item vectors of the target and the behaviours.

  `vectors` (V, Dv) is float, or int8 stored as round(127·v) and dequantised
  here as int8/127. It is an argument, never a parameter, and stop_gradient
  keeps it frozen whatever the caller differentiates. Behaviour vectors are
  zero at padded positions, so their cosine to anything is 0 (what the
  official SimTier code sees for padding).

  Returns target (B, Dv) and sequence (B, L, Dv) float32 vectors.
  """
  check_vector_table(vectors, num_items)
  vectors = jax.lax.stop_gradient(vectors)
  target = jnp.take(vectors, batch['item_id'], axis=0)
  seq = jnp.take(vectors, batch['seq_item'], axis=0)
  if vectors.dtype == jnp.int8:
    target = target.astype(jnp.float32) / 127.0
    seq = seq.astype(jnp.float32) / 127.0
  else:
    target = target.astype(jnp.float32)
    seq = seq.astype(jnp.float32)
  seq = jnp.where(batch['seq_mask'][..., None], seq, 0.0)
  return target, seq
