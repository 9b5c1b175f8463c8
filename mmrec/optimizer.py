"""Optimizers: Adam for embedding tables, AdamW for dense weights, freeze masks.

The team's CTR recipe trains ID embedding tables with Adam (lr 2e-3, no weight
decay: decaying every row at every step would shrink the rows of items that
are rarely seen) and everything else with AdamW (lr 2e-4). Frozen subtrees
(e.g. a loaded MAKE model, prefix 'make') get zero updates, so they stay
bit-identical; their gradients are still computed unless the model stops them.

Which leaves are embedding tables: a leaf boxed with
`nn.with_logical_partitioning` whose logical axes include 'vocab' (the row axis
that `sharding.py` splits over 'model'); once unboxed the names are gone, so an
unboxed leaf named 'embedding' (`nn.Embed`'s name, used by
`embedding.IdEmbeddings`) also counts. IdEmbeddings' tables satisfy both
rules, so boxed and unboxed trees get the same labels.

Note: optax's Adam is dense: rows that get no gradient in a step still move
by their momentum (torch's SparseAdam, used by the team, skips them).
"""

from collections.abc import Sequence

from flax.core import meta
import jax
import optax

EMBEDDING = 'embedding'
DENSE = 'dense'
FROZEN = 'frozen'


def _path_str(path) -> str:
  keys = []
  for k in path:
    key = getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))
    keys.append(str(key))
  return '/'.join(keys)


def _is_box(x) -> bool:
  return isinstance(x, meta.Partitioned)


def _frozen(path: str, prefixes: Sequence[str]) -> bool:
  return any(path == p or path.startswith(p.rstrip('/') + '/')
             for p in prefixes)


def param_labels(params, frozen_prefixes: Sequence[str] = ()):
  """Tree of 'embedding' / 'dense' / 'frozen', one per param (or per box).

  `frozen_prefixes` are '/'-joined key paths: 'make' freezes params['make'],
  'make/attention' only that submodule. Works on boxed and unboxed params (a
  box gets one label, a valid prefix tree for optax).
  """
  frozen_prefixes = tuple(frozen_prefixes)

  def label(path, leaf):
    p = _path_str(path)
    if _frozen(p, frozen_prefixes):
      return FROZEN
    if _is_box(leaf):
      names = leaf.names or ()
      return EMBEDDING if 'vocab' in names else DENSE
    return EMBEDDING if p.split('/')[-1] == 'embedding' else DENSE

  return jax.tree_util.tree_map_with_path(label, params, is_leaf=_is_box)


def build_optimizer(params, dense_lr: float = 2e-4, embed_lr: float = 2e-3,
                   weight_decay: float = 0.01,
                   frozen_prefixes: Sequence[str] = ()
                   ) -> optax.GradientTransformation:
  """Adam(embed_lr) on embedding tables, AdamW(dense_lr) elsewhere, 0 if frozen.

  `weight_decay` (AdamW's decoupled decay) defaults to torch.optim.AdamW's
  0.01, which the team's code uses. `params` (boxed or not) is only used to
  check `frozen_prefixes`: a prefix matching nothing is an error (a typo would
  otherwise silently train what was meant to be frozen). Labels are recomputed
  from whatever tree `init`/`update` receive, so boxed and unboxed both work.
  """
  frozen_prefixes = tuple(frozen_prefixes)
  paths = [_path_str(p) for p, _ in
           jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_box)[0]]
  for prefix in frozen_prefixes:
    if not any(_frozen(p, (prefix,)) for p in paths):
      top = sorted({p.split('/')[0] for p in paths})
      raise ValueError(f'frozen prefix {prefix!r} matches no parameter; '
                       f'top-level names: {top}.')
  return optax.multi_transform(
      {EMBEDDING: optax.adam(embed_lr),
       DENSE: optax.adamw(dense_lr, weight_decay=weight_decay),
       FROZEN: optax.set_to_zero()},
      lambda p: param_labels(p, frozen_prefixes))
