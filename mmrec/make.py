"""MAKE (Multimodal Knowledge Extractor): the stage-A model and its taps.

Stage A trains a DIN whose ID embeddings are replaced by the frozen multimodal
vectors (the target's vector is the query, the behaviours' vectors are the
keys/values) plus a shallow MLP, on the click label, for several epochs. No ID
features at all, so it cannot overfit on IDs the way the one-epoch ID model
does. Stage B (`ctr_model.CtrModel`, variants 'make'/'simtier_make') holds this
module as its submodule 'make', loads the stage-A params into params['make'],
and joins three taps into the ID model: the attention output (tower input), the
hidden activation (after the first tower layer) and the logit (added to the
final logit).

Shape letters: B batch, L behaviour-sequence length, Dv item-vector width,
H = mlp[-1] hidden width.
"""

from collections.abc import Sequence
import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from mmrec import embedding
from mmrec import layers


@dataclasses.dataclass(frozen=True)
class MakeConfig:
  """MAKE sizes; `freeze`: stage B keeps MAKE fixed (else it keeps training)."""
  attention_mlp: Sequence[int] = (64, 32)
  mlp: Sequence[int] = (64,)
  freeze: bool = True


class MakeModel(nn.Module):
  """Stage-A MAKE model.

  `__call__(batch, vectors, train)` -> (logit (B,), taps) with taps =
  {'attention': (B, Dv), 'hidden': (B, H), 'logit': (B,)}. Reads batch
  item_id, seq_item, seq_mask. `vectors` (V, Dv) float or int8 is frozen (an
  argument under stop_gradient). The MLP uses Dice: with `train=True` apply
  with `mutable=['batch_stats']`.

  Params: attention (TargetAttention), mlp_{i}, dice_{i}, head.
  """
  config: MakeConfig

  @nn.compact
  def __call__(self, batch, vectors, train: bool = False):
    cfg = self.config
    if not cfg.mlp:
      raise ValueError('MakeConfig.mlp needs at least one layer: its last '
                       'activation is the hidden tap.')
    target, seq = embedding.item_vectors(vectors, batch)
    attn = layers.TargetAttention(cfg.attention_mlp, name='attention')(
        target, seq, seq, batch['seq_mask'])
    x = jnp.concatenate([attn, target], axis=-1)
    for i, f in enumerate(cfg.mlp):
      x = layers.dense(f, name=f'mlp_{i}')(x)
      x = layers.Dice(name=f'dice_{i}')(x, train=train)
    logit = layers.dense(1, ('mlp', None), name='head')(x)[:, 0]
    return logit, {'attention': attn, 'hidden': x, 'logit': logit}
