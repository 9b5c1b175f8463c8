"""Transformer text tower over token ids (titles and text queries).

Shape letters: B batch, T tokens (T <= max_len), V vocabulary, D width.

Token 0 is padding: it is masked out of attention and of the mean pool, so
appending padding never changes the output, and an all-padding row gives a
zero vector (finite, with finite gradients).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmrec import layers

PAD_ID = 0


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
  """Text tower hyper-parameters; vocab_size counts the padding id 0."""
  vocab_size: int
  max_len: int
  width: int = 128
  depth: int = 2
  num_heads: int = 4
  mlp_dim: int = 256

  def __post_init__(self):
    if self.width % self.num_heads:
      raise ValueError(f'width {self.width} is not divisible by num_heads '
                       f'{self.num_heads}.')


class TextEncoder(nn.Module):
  """(B, T) int token ids, 0 = padding -> (B, D) masked mean of token states."""
  config: TextEncoderConfig

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    cfg = self.config
    t = tokens.shape[-1]
    if t > cfg.max_len:
      raise ValueError(f'{t} tokens exceed max_len={cfg.max_len}.')
    mask = tokens != PAD_ID  # (B, T)
    x = nn.Embed(
        cfg.vocab_size, cfg.width, name='embedding',
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(0.02), ('vocab', 'embed')))(tokens)
    pos = self.param(
        'pos_embedding',
        nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                     ('length', 'embed')),
        (cfg.max_len, cfg.width))
    x = x + pos[None, :t]
    for i in range(cfg.depth):
      x = layers.TransformerBlock(cfg.num_heads, cfg.mlp_dim,
                                  name=f'block_{i}')(x, mask)
    x = nn.LayerNorm(name='encoder_norm')(x)
    m = mask[..., None].astype(x.dtype)
    # max(count, 1): all-padding rows pool to 0 instead of 0 / 0.
    return (x * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1.0)
