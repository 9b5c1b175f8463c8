"""The CTR model: the DIN-style ID model and its multimodal variants.

ID model: ID embeddings -> DIN target attention (query = the target's
[item, category] embedding, keys/values = the behaviours') -> tower MLP with
Dice over [user, target, attention output] -> logit.

Variants (`CtrConfig.variant`; all read the frozen item-vector table
`vectors` (V, Dv), an argument, never a param):
- 'id': the ID model alone.
- 'vector': raw vectors as extra inputs: the target's / behaviours' vectors are
  appended to the attention query / keys / values, the target's to the tower.
- 'simscore': each behaviour's cosine to the target is an extra attention input.
- 'simtier_paper', 'simtier_official': the SimTier vector joins the tower input
  (the raw vectors do not).
- 'make': MAKE taps joined in: attention output -> tower input, hidden
  activation -> concatenated after the first tower layer, logit -> added.
- 'simtier_make': SimTier (`simtier_make_tier`) and MAKE.

Long history (batch fields long_seq_*, e.g. 1000 behaviours): by default
SimTier reads it and attention the short recent one. With
`CtrConfig.retrieve_top_k = k > 0` a GSU (`retrieval.top_k`) first keeps the
k behaviours of the long history whose vectors are closest to the target's
(cosine); the target attention (and 'vector' / 'simscore' inputs) runs over
those k, and SimTier over the short recent history. The retrieval is the team's
open MUSE code's GSU (`sim_mm_top_k`: top 50 of 1000). That code's `din`
method computes it and the attention over the 50 retrieved, but zeroes that
attention's output, so its tower sees attention and SimTier over the 50 most
recent only; its `muse` method feeds both attentions and SimTier over both.
This option is the one-attention middle: attention over the retrieved,
SimTier over the recent.

Shape letters: B batch, L behaviour-sequence length, D ID embedding width,
Dv item-vector width.
"""

from collections.abc import Sequence
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmrec import embedding
from mmrec import layers
from mmrec import make as make_lib
from mmrec import retrieval
from mmrec import simtier

VARIANTS = ('id', 'vector', 'simscore', 'simtier_paper', 'simtier_official',
            'make', 'simtier_make')


@dataclasses.dataclass(frozen=True)
class CtrConfig:
  """CTR model configuration.

  simtier_make_tier: which SimTier 'simtier_make' uses ('official' = the
  team's open code, or 'paper').
  retrieve_top_k: 0 = off; k > 0 = attention over the k behaviours of the
  long history (batch `long_seq_*`) closest to the target by vector cosine,
  SimTier over the short recent history. Retrieving reads the vector table,
  whatever the variant (also 'id'); a batch without `long_seq_item` is
  unaffected.
  attention: the target attention's form, one of `layers.ATTENTION_FORMS`
  ('din', 'din_prelu': DIN's MLP scorer with Dice / PReLU, raw weights, no
  softmax; 'dot': the team's open code, projected dot product, softmax;
  'mlp_softmax': sigmoid MLP scorer, softmax). `attention_mlp` is the
  scorer's hidden widths (unused by 'dot').
  match_features: the tower also gets, per ID field the behaviours share
  with the target (category [, shop]), the share and log count of attended
  behaviours equal to the target's value, and the log history length
  (`match_features`).
  """
  embedding: embedding.EmbeddingConfig
  variant: str = 'id'
  attention: str = 'din'
  attention_mlp: Sequence[int] = (64, 32)
  tower: Sequence[int] = (256, 128, 64)
  simtier_bins: int = 20
  simtier_mask_padding: bool = True
  simtier_official_dim: int = 1
  simtier_make_tier: str = 'official'
  retrieve_top_k: int = 0
  match_features: bool = True
  make: make_lib.MakeConfig = dataclasses.field(
      default_factory=make_lib.MakeConfig)

  def __post_init__(self):
    if self.variant not in VARIANTS:
      raise ValueError(f'CtrConfig.variant = {self.variant!r}, expected one '
                       f'of {VARIANTS}.')
    if self.simtier_make_tier not in ('official', 'paper'):
      raise ValueError(f'CtrConfig.simtier_make_tier = '
                       f"{self.simtier_make_tier!r}, expected 'official' or "
                       "'paper'.")
    if self.attention not in layers.ATTENTION_FORMS:
      raise ValueError(f'CtrConfig.attention = {self.attention!r}, expected '
                       f'one of {layers.ATTENTION_FORMS}.')
    if not self.tower:
      raise ValueError('CtrConfig.tower needs at least one layer.')
    if self.retrieve_top_k < 0:
      raise ValueError(f'CtrConfig.retrieve_top_k = {self.retrieve_top_k}, '
                       'expected 0 (off) or a number of behaviours > 0.')

  @property
  def uses_make(self) -> bool:
    return self.variant in ('make', 'simtier_make')

  @property
  def simtier_kind(self) -> str | None:
    """'paper', 'official' or None: which SimTier feeds the tower."""
    if self.variant == 'simtier_make':
      return self.simtier_make_tier
    if self.variant.startswith('simtier_'):
      return self.variant[len('simtier_'):]
    return None

  @property
  def uses_vectors(self) -> bool:
    """Whether the forward pass gathers item vectors itself (MAKE aside)."""
    return self.variant in ('vector', 'simscore') or bool(self.simtier_kind)


def retrieve_behaviours(batch, vectors, k: int, seq_fields):
  """The batch with its behaviours replaced by the top k of the long history.

  Every behaviour field the model reads (`seq_fields`: seq_item,
  seq_category[, seq_shop]) comes from its long_ counterpart
  (long_seq_item, long_seq_category, ...) at the retrieved positions, as the
  official code gathers its long id and category lists; seq_mask says which
  of the k are real. Returns (batch, retrieval.Retrieved).
  """
  need = ['long_seq_mask'] + ['long_' + f for f in seq_fields]
  missing = [f for f in need if f not in batch]
  if missing:
    raise ValueError(
        f'retrieve_top_k = {k} attends over behaviours retrieved from the '
        f'long history, but the batch lacks {missing} (has {sorted(batch)}); '
        'the long history needs every behaviour field the model reads.')
  got = retrieval.top_k(vectors, batch['item_id'], batch['long_seq_item'],
                        batch['long_seq_mask'], k)
  out = dict(batch, seq_item=got.ids, seq_mask=got.mask)
  for f in seq_fields:
    if f != 'seq_item':
      out[f] = retrieval.gather_masked(batch['long_' + f], got)
  return out, got


def shares_history(batch):
  """Whether the batch's behaviour fields are one row (one user's history)
  shared by all its target rows: serving's request-level call
  (serving/model_export.py), which scores one user's candidates."""
  return batch['seq_mask'].shape[0] == 1 and batch['item_id'].shape[0] != 1


def broadcast_history(batch):
  """The batch with a shared one-row history repeated for every row (the
  per-row batch it stands for)."""
  b = batch['item_id'].shape[0]
  return {k: (jnp.broadcast_to(v, (b,) + v.shape[1:])
              if k.startswith(('seq_', 'long_seq_')) else v)
          for k, v in batch.items()}


def match_features(batch, seq_fields, seq_bag_fields=()):
  """(B, 2 F + 1) ID-match features of the target against its behaviours.

  For each field F the behaviours carry besides the item (seq_category
  [, seq_shop]): the share of real behaviours whose value equals the target's
  and log(1 + their count); for each bag they carry (`seq_bag_fields`,
  seq_genres (B, L, K): a category bag) the same of the behaviours sharing
  any value with the target's bag; then log(1 + the history length). Why inputs and
  not left to attention: DIN's attention can count matches only once the ID
  embeddings of equal and unequal categories have moved apart, and from a
  0.05-scale init one epoch of a small log does not get there -- on the demo
  world's validation day the share of the history in the target's category
  alone scores AUC 0.72 in a logistic regression, the ID model without these
  inputs 0.65.
  """
  mask = batch['seq_mask'].astype(bool)  # (1, L) if shared: (B, L)
  mask = jnp.broadcast_to(mask, (batch['item_id'].shape[0], mask.shape[1]))
  length = mask.sum(-1).astype(jnp.float32)
  out = []
  for f in seq_fields:
    if f == 'seq_item':
      continue
    same = (batch[f] == batch[f[len('seq_'):]][:, None]) & mask
    out += _share_and_log_count(same, length)
  for f in seq_bag_fields:
    hist = batch[f]  # (B, L, K) or (1, L, K) shared; 0 = empty slot
    target = batch[f[len('seq_'):]][:, None, None, :]  # (B, 1, 1, K)
    shared = ((hist[..., :, None] == target) &
              (hist > 0)[..., :, None]).any((-1, -2))  # (B, L)
    out += _share_and_log_count(shared & mask, length)
  out.append(jnp.log1p(length))
  return jnp.stack(out, axis=-1)


def _share_and_log_count(hit, length):
  count = hit.sum(-1).astype(jnp.float32)
  return [count / jnp.maximum(length, 1.0), jnp.log1p(count)]


class CtrModel(nn.Module):
  """ID model + integration variant.

  `__call__(batch, vectors=None, make_taps=None, train=False)` -> logits (B,).

  batch: user_id, age, gender, city, item_id, category, shop (B,) int,
  seq_item, seq_category (B, L) int, seq_mask (B, L) bool (+ seq_shop with
  `EmbeddingConfig.seq_shop`); optional long_seq_item / long_seq_mask
  (B, L_long): SimTier then reads this long history instead of the L-long
  one (the official code's setting), unless `retrieve_top_k` > 0: then the
  attention reads the retrieved top k of it (which also needs
  long_seq_category [+ long_seq_shop]) and SimTier the L-long one. MAKE
  always reads the L-long history (as in its stage A). label/day are not
  read. The behaviour fields may have one row shared by all B targets
  (`shares_history`: one user's candidates at serving); with train=False
  the 'id' and SimTier variants then embed that history, take its vectors
  (and a long history's, for SimTier) and its attention key side once (same
  scores up to float rounding); other variants, a GSU and training
  broadcast it to B rows.
  vectors: the frozen (V, Dv) item-vector table, float32 or int8 (= 127·v);
  needed by every variant but 'id' (and 'make' given `make_taps`), and by
  every variant retrieving from a long history (`retrieve_top_k`).
  make_taps: precomputed MAKE taps {'attention', 'hidden', 'logit'}; if None,
  the 'make' submodule computes them (the usual path; needed at init to
  create params['make']).
  train: Dice uses batch statistics and updates 'batch_stats'; apply with
  `mutable=['batch_stats']`. A frozen MAKE (`make.freeze`) always runs in
  eval mode, so its batch_stats stay as loaded from stage A.
  With the 'intermediates' collection mutable, the target attention sows its
  weights and their entropy under intermediates['attention'] (see
  `layers.TargetAttention`).

  With `match_features` the tower input also holds `match_features` of the
  attended behaviours.

  Params: embed (IdEmbeddings), attention, [simtier], tower_{i}, dice_{i},
  head, [make].
  """
  config: CtrConfig

  @nn.compact
  def __call__(self, batch, vectors=None, make_taps=None, train: bool = False):
    cfg = self.config
    if shares_history(batch) and (
        train or cfg.variant not in ('id', 'simtier_paper', 'simtier_official')
        or cfg.retrieve_top_k):
      # The history-once path covers what serving runs (the ID model and
      # SimTier); anything else sees the per-row batch it stands for.
      batch = broadcast_history(batch)
    # `attended`: the batch whose behaviours the target attention reads.
    attended, retrieved = batch, None
    if cfg.retrieve_top_k and 'long_seq_item' in batch:
      embedding.check_vector_table(vectors, cfg.embedding.num_items)
      attended, retrieved = retrieve_behaviours(
          batch, vectors, cfg.retrieve_top_k,
          cfg.embedding.seq_fields + cfg.embedding.seq_bag_fields)
    user, target, seq = embedding.IdEmbeddings(cfg.embedding, name='embed')(
        attended)
    mask = attended['seq_mask'].astype(bool)
    query = target[:, :seq.shape[-1]]  # The fields the behaviours also have.
    keys = seq
    tower_in = [user, target]
    if cfg.match_features:
      tower_in.append(match_features(attended, cfg.embedding.seq_fields,
                                     cfg.embedding.seq_bag_fields))
    extra = None

    if cfg.uses_vectors:
      embedding.check_vector_table(vectors, cfg.embedding.num_items)
      item = batch['item_id']
      # Cosines of the attended behaviours (the retrieval has them already).
      sims = (retrieved.scores if retrieved is not None else
              simtier.table_cosine(vectors, item, batch['seq_item'], mask))
      if cfg.variant == 'vector':
        target_vec, seq_vec = embedding.item_vectors(
            vectors, attended, cfg.embedding.num_items)
        query = jnp.concatenate([query, target_vec], axis=-1)
        keys = jnp.concatenate([keys, seq_vec], axis=-1)
        tower_in.append(target_vec)
      elif cfg.variant == 'simscore':
        extra = simtier.simscore_features(sims, mask)
      elif cfg.simtier_kind:
        tier_sims, tier_mask = sims, jnp.broadcast_to(mask, sims.shape)
        if retrieved is not None:
          # Attention over the retrieved, SimTier over the short recent
          # history (the official code's SimTier over its recent 50).
          tier_mask = batch['seq_mask'].astype(bool)
          tier_sims = simtier.table_cosine(vectors, item, batch['seq_item'],
                                           tier_mask)
        elif 'long_seq_item' in batch:
          # The official code's SimTier over a long history (e.g. 1000
          # behaviours), attention over the short recent one.
          long_mask = batch['long_seq_mask'].astype(bool)
          tier_sims = simtier.table_cosine(
              vectors, item, batch['long_seq_item'], long_mask)
          # (1, Lh) if one request's history is shared: (B, Lh).
          tier_mask = jnp.broadcast_to(long_mask, tier_sims.shape)
        if cfg.simtier_kind == 'paper':
          tower_in.append(simtier.simtier_paper(
              tier_sims, tier_mask, cfg.simtier_bins,
              cfg.simtier_mask_padding))
        else:
          tower_in.append(simtier.SimTierOfficial(
              cfg.simtier_official_dim, cfg.simtier_mask_padding,
              name='simtier')(tier_sims, tier_mask))

    tower_in.append(layers.TargetAttention(
        cfg.attention_mlp, form=cfg.attention, name='attention')(
            query, keys, keys, mask, extra, train=train))

    if cfg.uses_make:
      if make_taps is None:
        make_taps = make_lib.MakeModel(cfg.make, name='make')(
            batch, vectors, train=train and not cfg.make.freeze)[1]
      if cfg.make.freeze:
        # No gradient flows into a frozen MAKE (the optimizer also zeroes its
        # updates); this just saves the backward pass through it.
        make_taps = jax.lax.stop_gradient(make_taps)
      tower_in.append(make_taps['attention'])

    x = jnp.concatenate(tower_in, axis=-1)
    for i, f in enumerate(cfg.tower):
      x = layers.dense(f, name=f'tower_{i}')(x)
      x = layers.Dice(name=f'dice_{i}')(x, train=train)
      if i == 0 and cfg.uses_make:
        x = jnp.concatenate([x, make_taps['hidden']], axis=-1)
    logit = layers.dense(1, ('mlp', None), name='head')(x)[:, 0]
    if cfg.uses_make:
      logit = logit + make_taps['logit']
    return logit


# The model factory: a CTR config (experiments/configs/ctr.py) -> the module.


def make_module_config(config):
  return make_lib.MakeConfig(
      attention_mlp=tuple(config.make.attention_mlp),
      mlp=tuple(config.make.mlp), freeze=bool(config.make.freeze))


def build_model(config, sizes):
  """The CtrModel of `config` for a world with vocabulary `sizes`."""
  emb = embedding.EmbeddingConfig(**sizes, dim=config.embed_dim)
  return CtrModel(CtrConfig(
      emb, variant=config.variant, attention=config.attention,
      attention_mlp=tuple(config.attention_mlp),
      tower=tuple(config.tower), simtier_bins=config.simtier_bins,
      simtier_mask_padding=bool(config.simtier_mask_padding),
      simtier_official_dim=config.simtier_official_dim,
      retrieve_top_k=config.retrieve_top_k,
      match_features=bool(config.match_features),
      make=make_module_config(config)))


def build_stage_a_model(config):
  return make_lib.MakeModel(make_module_config(config))


def reads_vectors(config):
  """Whether a CTR config's model reads the item-vector table."""
  return config.variant != 'id' or config.retrieve_top_k > 0
