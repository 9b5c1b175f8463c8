"""Shared Linen layers: MLP, Dice, transformer block, target attention pooling.

Shape letters: B batch, T sequence length, D width, H heads.
Parameters carry logical axis names ('embed', 'mlp', 'heads', 'kv'), never
mesh axis names; `sharding.py` maps them onto the mesh.
"""

from typing import Callable, Sequence

import flax.linen as nn
import jax
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
  `mask` (x's shape without the last axis, True = real): the batch statistics
  come from the real positions only (e.g. a padded behaviour sequence); a
  batch with no real position uses all of them (no NaN).

  Shapes: x (..., F) -> (..., F). Params: alpha (F,); batch_stats: bn/mean,
  bn/var (F,).
  """
  # Running = momentum*running + (1 - momentum)*batch: torch's BatchNorm
  # default (its momentum=0.1), which the torch DIN ports inherit.
  momentum: float = 0.9
  epsilon: float = 1e-8  # DIN/DeepCTR's Dice epsilon.

  @nn.compact
  def __call__(self, x, train: bool = False, mask=None):
    alpha = self.param(
        'alpha', nn.with_logical_partitioning(nn.initializers.zeros, ('mlp',)),
        (x.shape[-1],), jnp.float32)
    if mask is not None:
      mask = jnp.logical_or(mask, ~jnp.any(mask))[..., None]
    x_hat = nn.BatchNorm(
        use_running_average=not train, momentum=self.momentum,
        epsilon=self.epsilon, use_bias=False, use_scale=False,
        use_fast_variance=False, name='bn')(x, mask=mask)
    p = nn.sigmoid(x_hat)
    return p * x + (1.0 - p) * alpha * x


class PReLU(nn.Module):
  """max(x, 0) + alpha * min(x, 0), one alpha per feature (init 0.25, torch's).

  Shapes: x (..., F) -> (..., F). Params: alpha (F,).
  """
  init: float = 0.25

  @nn.compact
  def __call__(self, x):
    alpha = self.param(
        'alpha', nn.with_logical_partitioning(
            nn.initializers.constant(self.init), ('mlp',)),
        (x.shape[-1],), jnp.float32)
    return jnp.where(x >= 0, x, alpha * x)


# Target-attention forms (`TargetAttention.form`):
# 'din'         DIN's activation unit: Dice MLP over [q, k, q - k, q * k],
#               the weights are its raw outputs (no softmax).
# 'din_prelu'   the same with PReLU.
# 'dot'         the team's open MUSE code: projected query . projected key,
#               scaled, masked softmax.
# 'mlp_softmax' a sigmoid MLP over [q, k, q - k, q * k], softmax (our first
#               form: its weights stayed uniform, kept for comparison).
ATTENTION_FORMS = ('din', 'din_prelu', 'dot', 'mlp_softmax')


def attention_entropy(weights, mask):
  """Normalised entropy of attention weights per row: 1 = uniform.

  The weights' magnitudes |w| (DIN's raw weights may be negative) are
  renormalised over the valid positions; the entropy is divided by
  log(number of valid positions). Rows with fewer than 2 valid positions, or
  all-zero weights, are not counted.

  Shapes: weights (B, T), mask (B, T) bool -> entropy (B,) (0 where not
  counted), counted (B,) bool.
  """
  w = jnp.where(mask, jnp.abs(weights), 0.0)
  n = jnp.sum(mask, axis=-1)
  total = jnp.sum(w, axis=-1)
  counted = (n >= 2) & (total > 0)
  p = w / jnp.where(counted, total, 1.0)[:, None]
  plogp = jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
  h = -jnp.sum(plogp, axis=-1) / jnp.log(jnp.maximum(n, 2).astype(w.dtype))
  return jnp.where(counted, h, 0.0), counted


class TargetAttention(nn.Module):
  """Target attention: pools a behaviour sequence by relevance to a target.

  The output is sum_t w_t v_t over the valid positions; how w is scored is
  `form` (see ATTENTION_FORMS):
  - 'din' / 'din_prelu' (DIN, Zhou et al. 2018): an MLP with Dice / PReLU
    scores each position from [q, k, q - k, q * k] (+ `extra`); w = the raw
    scores, no softmax: the output's scale then says how much of the history
    is relevant. Dice's batch statistics come from the valid positions only.
  - 'dot' (the team's open MUSE code, `MultiHeadAtt`): w = masked softmax of
    (W_q q) . (W_k k_t) / sqrt(D) (+ a learned linear term of `extra`, as
    the code adds its cosine input to the dot product). The values are not
    projected, so the output width stays E for every form.
  - 'mlp_softmax': a sigmoid MLP over [q, k, q - k, q * k] (+ `extra`), masked
    softmax.
  Padded positions get w = 0, and a row with no valid position returns zeros
  (no NaN). With the 'intermediates' collection mutable (not at init), sows
  `weights` (B, T) and `entropy` = `attention_entropy(weights, mask)`.

  Shapes: query (B, D), keys (B, T, D), values (B, T, E) (default: keys),
  mask (B, T) bool True = real, extra (B, T, F) -> (B, E). Keys, values and
  mask may have one row, a history shared by the B queries (serving scores
  one user's candidates): the key side is then computed once, not B times
  (`_shared_first_layer`); without `extra`, and for every form but
  'mlp_softmax' (broadcast to B rows, as before). With per-row keys the
  'din' / 'din_prelu' scorer's first layer is computed in parts as well
  (`_paired_first_layer`: no (B, T, 4 D) input).
  `train`: Dice uses batch statistics (apply with `mutable=['batch_stats']`).
  """
  hidden: Sequence[int] = (64, 32)
  form: str = 'mlp_softmax'

  @nn.compact
  def __call__(self, query, keys, values=None, mask=None, extra=None,
               train: bool = False):
    if self.form not in ATTENTION_FORMS:
      raise ValueError(f'TargetAttention.form = {self.form!r}, expected one '
                       f'of {ATTENTION_FORMS}.')
    values = keys if values is None else values
    if mask is None:
      mask = jnp.ones(keys.shape[:2], bool)
    if extra is not None:
      extra = extra.astype(keys.dtype)
    b, t = query.shape[0], keys.shape[1]
    shared = keys.shape[0] == 1 and b != 1
    if shared and (extra is not None or self.form == 'mlp_softmax'):
      keys, values = (jnp.broadcast_to(x, (b,) + x.shape[1:])
                      for x in (keys, values))
      shared = False
    mask = jnp.broadcast_to(mask, (b, t))  # cheap; (B, T) from here on
    if self.form == 'dot':
      d = query.shape[-1]
      q = dense(d, name='query')(query)
      k = dense(d, name='key')(keys)
      scores = (jnp.einsum('bd,td->bt', q, k[0]) if shared else
                jnp.einsum('bd,btd->bt', q, k)) / jnp.sqrt(jnp.float32(d))
      if extra is not None:
        scores += dense(1, ('mlp', None), name='extra', use_bias=False)(
            extra)[..., 0]
    else:
      h = None  # 'din' / 'din_prelu': the first layer is computed in parts
      if self.form == 'mlp_softmax':
        h = MLP(self.hidden, activation=nn.sigmoid, final_activation=True,
                name='mlp')(_pair_features(query, keys, extra))
      else:
        for i, f in enumerate(self.hidden):
          layer = dense(f, name=f'dense_{i}')
          if i:
            h = layer(h)
          elif shared:
            h = _shared_first_layer(layer, query, keys[0])
          else:
            h = _paired_first_layer(layer, query, keys, extra)
          h = (Dice(name=f'dice_{i}')(h, train=train, mask=mask)
               if self.form == 'din' else PReLU(name=f'prelu_{i}')(h))
      scores = dense(1, ('mlp', None), name='score')(h)[..., 0]  # (B, T)
    if self.form in ('dot', 'mlp_softmax'):
      # finfo.min, not -inf: an all-padded row then gives a finite uniform
      # softmax, which the final `where` zeroes.
      scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
      scores = nn.softmax(scores, axis=-1)
    weights = jnp.where(mask, scores, 0.0)
    if not self.is_initializing():  # Keeps 'intermediates' out of init.
      self.sow('intermediates', 'weights', weights)
      self.sow('intermediates', 'entropy', attention_entropy(weights, mask))
    if shared:
      return jnp.einsum('bt,te->be', weights, values[0])
    return jnp.einsum('bt,bte->be', weights, values)


def _paired_first_layer(layer, query, keys, extra=None):
  """`layer([q, k, q - k, q * k (, extra)])` for B queries (B, D), each
  against its own T keys (B, T, D) (+ extra (B, T, E)) -> (B, T, F),
  without the (B, T, 4 D) input.

  The layer is affine, so with its kernel's row blocks Wq, Wk, Wd, Wm (, We):
  q (Wq + Wd) + b per query, and per key k (Wk - Wd + diag(q) Wm), one
  (D, F) matrix per query: D F multiply-adds per (query, key) pair instead of
  4 D F, in one batched matmul, forward and backward. On make demo's ID
  model this layer was most of the training step (a (B T, 4 D) x (4 D, F)
  matmul and its two backward ones). Equal to the concatenated form up to
  float rounding (tests/attention_test.py: outputs and gradients to 1e-6).
  """
  d = query.shape[-1]
  zeros = jnp.zeros_like(query)
  tail = [] if extra is None else [jnp.zeros(query.shape[:1] + extra.shape[2:],
                                             query.dtype)]
  # Calling the layer binds its params; q's side is this call's output.
  q_side = layer(jnp.concatenate([query, zeros, query, zeros] + tail, -1))
  w = nn.unbox(layer.variables['params']['kernel'])
  w_k, w_d, w_m = w[d:2 * d], w[2 * d:3 * d], w[3 * d:4 * d]
  per_query = (w_k - w_d)[None] + query[:, :, None] * w_m[None]  # (B, D, F)
  h = q_side[:, None, :] + jnp.einsum('btd,bdf->btf', keys, per_query)
  if extra is not None:
    h = h + extra @ w[4 * d:]
  return h


def concat_first_layer(layer, query, keys, extra=None):
  """`layer([q, k, q - k, q * k (, extra)])` as written: the reference for
  `_paired_first_layer` (the form before it; same arguments)."""
  return layer(_pair_features(query, keys, extra))


def _pair_features(query, keys, extra=None):
  """(B, T, 4 D (+ E)): [q, k, q - k, q * k (, extra)] per (query, key)."""
  q = jnp.broadcast_to(query[:, None, :], keys.shape)
  feats = [q, keys, q - keys, q * keys] + ([] if extra is None else [extra])
  return jnp.concatenate(feats, axis=-1)


def _shared_first_layer(layer, query, keys):
  """`layer([q, k, q - k, q * k])` for B queries (B, D) against one
  history's T keys (T, D) -> (B, T, F), without the (B, T, 4 D) input.

  The layer is affine, so with its kernel's row blocks Wq, Wk, Wd, Wm:
  q (Wq + Wd) + b per query (B rows), k (Wk - Wd) per key (T rows, once per
  history), and only the product term (q * k) Wm per (query, key) pair: a
  quarter of the per-pair multiply-adds. Equal to the concatenated form up
  to float rounding (the sums are reassociated).
  """
  d = query.shape[-1]
  zeros = jnp.zeros_like(query)
  # Calling the layer binds its params; q's side is this call's output.
  q_side = layer(jnp.concatenate([query, zeros, query, zeros], -1))
  w = nn.unbox(layer.variables['params']['kernel'])
  w_k, w_d, w_m = w[d:2 * d], w[2 * d:3 * d], w[3 * d:4 * d]
  k_side = keys @ (w_k - w_d)
  pair = (query[:, None, :] * keys[None]) @ w_m
  return q_side[:, None, :] + k_side[None] + pair


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12):
  """x / ||x||; a zero vector stays zero with a finite gradient."""
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, eps))


def clip_temperature(log_temp: jax.Array, min_temp: float = 0.01,
                     max_temp: float = 1.0) -> jax.Array:
  """exp(log_temp) clipped to [min_temp, max_temp].

  The clip keeps a learnable temperature from collapsing (logits blow up) or
  flattening the softmax; inside the range the gradient is exp's.
  """
  return jnp.clip(jnp.exp(log_temp), min_temp, max_temp)
