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


class Dice(nn.Module):
  """DIN's data-adaptive activation: p*x + (1-p)*alpha*x, p = sigmoid(x_hat).

  x_hat standardises each feature (last axis) over all other axes. As in the
  common DIN implementations (DeepCTR and its torch ports), that is a
  BatchNorm without scale or shift: with `train=True` it uses the batch
  mean/variance and updates running averages in the 'batch_stats' collection
  (apply with `mutable=['batch_stats']`); with `train=False` it uses the
  running averages, so eval outputs are deterministic and do not depend on the
  rest of the batch. alpha starts at 0 (a smooth gated ReLU-like start).

  Shapes: x (..., F) -> (..., F). Params: alpha (F,); batch_stats: bn/mean,
  bn/var (F,).
  """
  # Running = momentum*running + (1 - momentum)*batch: torch's BatchNorm
  # default (its momentum=0.1), which the torch DIN ports inherit.
  momentum: float = 0.9
  epsilon: float = 1e-8  # DIN/DeepCTR's Dice epsilon.

  @nn.compact
  def __call__(self, x, train: bool = False):
    alpha = self.param(
        'alpha', nn.with_logical_partitioning(nn.initializers.zeros, ('mlp',)),
        (x.shape[-1],), jnp.float32)
    x_hat = nn.BatchNorm(
        use_running_average=not train, momentum=self.momentum,
        epsilon=self.epsilon, use_bias=False, use_scale=False,
        use_fast_variance=False, name='bn')(x)
    p = nn.sigmoid(x_hat)
    return p * x + (1.0 - p) * alpha * x


class TargetAttention(nn.Module):
  """DIN target attention: pools a behaviour sequence by relevance to a target.

  An MLP scores each position from [q, k, q - k, q * k] (+ optional
  per-position features, e.g. SimScore's cosine); the output is sum_t w_t v_t.
  `softmax=True`: w = softmax of the scores over the valid positions.
  `softmax=False`: w = the raw scores (DIN's choice: the output's scale then
  says how much of the history is relevant). Padded positions get w = 0, and a
  row with no valid position returns zeros (no NaN).

  Shapes: query (B, D), keys (B, T, D), values (B, T, E) (default: keys),
  mask (B, T) bool True = real, extra (B, T, F) -> (B, E).
  """
  hidden: Sequence[int] = (64, 32)
  softmax: bool = True
  activation: Callable[[jnp.ndarray], jnp.ndarray] = nn.sigmoid  # As in DIN.

  @nn.compact
  def __call__(self, query, keys, values=None, mask=None, extra=None):
    values = keys if values is None else values
    q = jnp.broadcast_to(query[:, None, :], keys.shape)
    feats = [q, keys, q - keys, q * keys]
    if extra is not None:
      feats.append(extra.astype(keys.dtype))
    h = MLP(self.hidden, activation=self.activation, final_activation=True,
            name='mlp')(jnp.concatenate(feats, axis=-1))
    scores = dense(1, ('mlp', None), name='score')(h)[..., 0]  # (B, T)
    if mask is None:
      mask = jnp.ones(scores.shape, bool)
    if self.softmax:
      # finfo.min, not -inf: an all-padded row then gives a finite uniform
      # softmax, which the final `where` zeroes.
      scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
      scores = nn.softmax(scores, axis=-1)
    weights = jnp.where(mask, scores, 0.0)
    return jnp.einsum('bt,bte->be', weights, values)
