"""ID embedding tables for the CTR model, and lookups of frozen item vectors.

One table per ID field the dataset declares (`EmbeddingConfig`). The item
table and those of the behaviours' features (the world: category) are shared
by the target item and the behaviour sequence, so a behaviour and the target that is
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

from mmrec import int8


@dataclasses.dataclass(frozen=True)
class EmbeddingConfig:
  """Vocabulary sizes (ids run over [0, size)) and the embedding width.

  Which fields exist is the dataset's declaration (its manifest's `ctr`
  section, see mmrec/data/manifest.py), not fixed here:
  user_features: ((batch field, vocabulary size), ...) of the user.
  item_features: the same of the target item (category, shop, ...).
  seq_features: names of a prefix of item_features that the behaviours carry
    too (batch field `seq_<name>` (B, L)), e.g. ('category',).
  item_bags: ((field, size), ...) multi-valued item fields (genres, tags):
    (B, K) ids, 0 = empty slot, embedded as the mean over the filled slots
    (the target only).
  user_bags: the same of the user (e.g. the categories of earlier
    purchases), pooled alike and appended to the user features.
  match_bags: names of item bags the behaviours carry too (batch field
    `seq_<name>` (B, L, K)), not embedded there: the model's match features
    read them (a category bag, e.g. MovieLens genres: the share of the
    history sharing any value with the target's).
  The world's schema is `world(...)`.
  """
  num_users: int
  num_items: int
  user_features: tuple[tuple[str, int], ...] = ()
  item_features: tuple[tuple[str, int], ...] = ()
  seq_features: tuple[str, ...] = ()
  item_bags: tuple[tuple[str, int], ...] = ()
  user_bags: tuple[tuple[str, int], ...] = ()
  match_bags: tuple[str, ...] = ()
  dim: int = 16

  def __post_init__(self):
    names = [n for n, _ in self.item_features]
    if list(self.seq_features) != names[:len(self.seq_features)]:
      raise ValueError(f'EmbeddingConfig.seq_features {self.seq_features} '
                       f'must be a prefix of the item features {names}: the '
                       "behaviours' features are the attention's keys, the "
                       "target's first ones its query.")
    bags = [n for n, _ in self.item_bags]
    if set(self.match_bags) - set(bags):
      raise ValueError(f'EmbeddingConfig.match_bags {self.match_bags} must '
                       f'be item bags {bags}')
    taken = ['user', 'item'] + [n for n, _ in self.user_features] + names + [
        n for n, _ in self.item_bags + self.user_bags]
    if len(set(taken)) != len(taken):
      raise ValueError(f'EmbeddingConfig: feature names collide: {taken}')

  @classmethod
  def world(cls, num_users, num_ages, num_genders, num_cities, num_items,
            num_categories, num_shops, dim=16, seq_shop=False):
    """The synthetic world's fields; `seq_shop`: behaviours carry the shop."""
    return cls(num_users, num_items,
               (('age', num_ages), ('gender', num_genders),
                ('city', num_cities)),
               (('category', num_categories), ('shop', num_shops)),
               ('category', 'shop') if seq_shop else ('category',), dim=dim)

  @property
  def seq_fields(self) -> tuple[str, ...]:
    return ('seq_item',) + tuple(f'seq_{f}' for f in self.seq_features)

  @property
  def seq_bag_fields(self) -> tuple[str, ...]:
    """The behaviours' bag fields (B, L, K) the match features read."""
    return tuple(f'seq_{b}' for b in self.match_bags)

  @property
  def user_fields(self) -> tuple[str, ...]:
    return ('user_id',) + tuple(n for n, _ in self.user_features)

  @property
  def target_fields(self) -> tuple[str, ...]:
    return ('item_id',) + tuple(n for n, _ in self.item_features)

  def field_tables(self) -> dict[str, tuple[str, int]]:
    """Batch field -> (table name, vocabulary size), bags included."""
    out = {'user_id': ('user', self.num_users),
           'item_id': ('item', self.num_items),
           'seq_item': ('item', self.num_items)}
    for name, size in (self.user_features + self.item_features +
                       self.item_bags + self.user_bags):
      out[name] = (name, size)
    for name in self.seq_features:
      out[f'seq_{name}'] = out[name]
    return out


def _table_sizes(config: EmbeddingConfig) -> dict[str, int]:
  return dict(config.field_tables().values())


class IdEmbeddings(nn.Module):
  """All ID tables of the CTR model.

  Returns user features (B, U·D) [user, user_features..., user_bags...],
  target features (B, T·D) [item, item_features..., item_bags...] and
  sequence features (B, L, S·D) [item, seq_features...], zero at padded
  positions. The first S·D columns of the target features line up with the
  sequence features, so they can serve as the attention query. The world:
  U = 4 (user, age, gender, city), T = 3 (item, category, shop), S = 2
  (item, category).

  Params: one `nn.Embed` per table, {table: {'embedding': (V, D)}}; the item
  table is shared by target and behaviours, and so is each seq feature's.
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
    field_tables = cfg.field_tables()

    def look(fields):
      return jnp.concatenate(
          [tables[field_tables[f][0]](batch[f]) for f in fields], axis=-1)

    def pooled(name):
      ids = batch[name]  # (B, K)
      filled = (ids > 0)[..., None]
      summed = jnp.where(filled, tables[name](ids), 0.0).sum(-2)
      return summed / jnp.maximum(filled.sum(-2), 1)

    user = jnp.concatenate(
        [look(cfg.user_fields)] + [pooled(n) for n, _ in cfg.user_bags], -1)
    target = jnp.concatenate(
        [look(cfg.target_fields)] + [pooled(n) for n, _ in cfg.item_bags], -1)
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
  tables = config.field_tables()
  if 'seq_mask' not in batch:
    raise ValueError(f"Batch has no field 'seq_mask' (has {sorted(batch)}).")
  fields = (config.user_fields + config.target_fields + config.seq_fields +
            tuple(n for n, _ in config.item_bags + config.user_bags))
  for field in fields:
    if field not in batch:
      raise ValueError(f'Batch has no field {field!r} (has {sorted(batch)}).')
    ids = np.asarray(batch[field])
    if not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(f'Field {field!r} must hold integer ids, got '
                       f'{ids.dtype}.')
    table, size = tables[field]
    bad = (ids < 0) | (ids >= size)
    if bad.any():
      attr = {'user': 'num_users', 'item': 'num_items'}.get(
          table, f'vocabulary of {table!r}')
      raise ValueError(
          f'Field {field!r} has id {int(ids[bad].flat[0])} outside the allowed '
          f'range [0, {size - 1}] ({attr} = {size}); '
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
    target = target.astype(jnp.float32) / int8.SCALE
    seq = seq.astype(jnp.float32) / int8.SCALE
  else:
    target = target.astype(jnp.float32)
    seq = seq.astype(jnp.float32)
  seq = jnp.where(batch['seq_mask'][..., None], seq, 0.0)
  return target, seq
