"""Shared Linen layers: MLP, Dice, transformer block, target attention pooling.

Shape letters: B batch, T sequence length, D width, H heads.
Parameters carry logical axis names ('embed', 'mlp', 'heads', 'kv'), never
mesh axis names; `sharding.py` maps them onto the mesh.
"""

from typing import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

default_init = nn.initializers.xavier_uniform()


def dense(features, logical_axes=('embed', 'mlp'), name=None, use_bias=True):
  """nn.Dense whose kernel carries logical axis names."""
  return nn.Dense(
      features, use_bias=use_bias, name=name,
      kernel_init=nn.with_logical_partitioning(default_init, logical_axes))


class MLP(nn.Module):
  """Stack of Dense layers with an activation between (none after the last)."""
  features: Sequence[int]
  activation: Callable[[jnp.ndarray], jnp.ndarray] = nn.gelu
  final_activation: bool = False

  @nn.compact
  def __call__(self, x):
    for i, f in enumerate(self.features):
      x = dense(f, name=f'dense_{i}')(x)
      if i < len(self.features) - 1 or self.final_activation:
        x = self.activation(x)
    return x


class TransformerBlock(nn.Module):
  """Pre-LayerNorm self-attention + MLP block. mask: (B, T) bool, True = real."""
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, mask=None, *, deterministic=True):
    attn_mask = None if mask is None else nn.make_attention_mask(mask, mask)
    y = nn.LayerNorm(name='ln_attn')(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, name='attn',
        kernel_init=nn.with_logical_partitioning(
            default_init, ('embed', 'heads', 'kv')),
        out_kernel_init=nn.with_logical_partitioning(
            default_init, ('heads', 'kv', 'embed')),
        deterministic=deterministic, dropout_rate=self.dropout)(
            y, y, mask=attn_mask)
    x = x + nn.Dropout(self.dropout)(y, deterministic=deterministic)
    y = nn.LayerNorm(name='ln_mlp')(x)
    y = dense(self.mlp_dim, ('embed', 'mlp'), name='mlp_in')(y)
    y = dense(x.shape[-1], ('mlp', 'embed'), name='mlp_out')(nn.gelu(y))
    return x + nn.Dropout(self.dropout)(y, deterministic=deterministic)
