"""The CTR model's pure steps and their compiled programs.

`train_step` (state, batch, rng, vectors) -> (state, metrics) and
`eval_step` (state, batch, vectors) -> outputs, for a CtrModel or MAKE's
stage-A MakeModel; `programs` jits them (with init) over a mesh, cached on
(model, optimizer settings, mesh, input shapes) so that runs in one process
share compiled programs. The CTR trainer, near-line training and the
benchmarks use them; the frozen item-vector table is an argument of every
step, never part of the state.

Shape letters: B batch, L behaviour-sequence length, V items, Dv vector width.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmrec import ctr_eval
from mmrec import make as make_lib
from mmrec import optimizer
from mmrec import sharding
from mmrec import train_lib
from mmrec import vector_table


def _forward(model, variables, batch, vectors, train):
  """Logits (B,) and the updated non-param collections.

  With `train=True` these include 'intermediates' (what the model sows, e.g.
  the attention's entropy); `train_step` takes them out of the state.
  """
  if train:
    out, updates = model.apply(variables, batch, vectors, train=True,
                               mutable=['batch_stats', 'intermediates'])
  else:
    out = model.apply(variables, batch, vectors, train=False)
    updates = {k: v for k, v in variables.items() if k != 'params'}
  if isinstance(model, make_lib.MakeModel):
    out = out[0]  # (logit, taps)
  return out, updates


def loss_fn(params, extra, batch, vectors, model, train):
  """Mean sigmoid cross-entropy; returns (loss, (logits, new extra)).

  `extra` holds the model's non-param collections (Dice's 'batch_stats'):
  updated from the batch with `train=True`, used as they are otherwise.
  """
  logits, new_extra = _forward(model, {'params': params, **extra}, batch,
                               vectors, train)
  labels = batch['label'].astype(jnp.float32)
  loss = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))
  return loss, (logits, new_extra)


def train_step(state, batch, rng, vectors, *, model, tx):
  """(state, batch, rng, vectors) -> (state, metrics)."""
  del rng  # No stochastic layers; kept so the step's signature is the house's.
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (logits, extra)), grads = grad_fn(state.params, state.extra, batch,
                                           vectors, model, True)
  extra = dict(extra)
  intermediates = extra.pop('intermediates', {})
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {'loss': loss, 'grad_norm': optax.tree.norm(grads),
             'label_mean': jnp.mean(batch['label'].astype(jnp.float32)),
             'prediction_mean': jnp.mean(jax.nn.sigmoid(logits)),
             **attention_metrics(intermediates, batch)}
  return state.replace(step=state.step + 1, params=params,
                       opt_state=opt_state, extra=extra), metrics


def attention_metrics(intermediates, batch=None):
  """Statistics of the top attention's weights, from what the model's
  top-level 'attention' sowed (stage B: the CTR model's, not MAKE's); {} if
  it sowed nothing.

  attention_entropy: the mean over the batch rows with >= 2 valid
  behaviours of `layers.attention_entropy` (1.0 = uniform weights).
  attention_category_excess (given the batch, when the attention read its
  behaviours, i.e. no retrieval, and they carry a category): the share of |weight| on behaviours of the
  target's category minus the share of such behaviours, averaged over rows
  that have behaviours of both kinds. 0 = blind to category; > 0 = attends to
  what matches the target. Entropy alone cannot tell relevance from a
  randomly initialised scorer's uneven weights.
  """
  sown = intermediates.get('attention', {})
  if not sown.get('entropy'):
    return {}
  entropy, counted = sown['entropy'][0]
  out = {'attention_entropy':
         jnp.sum(entropy) / jnp.maximum(jnp.sum(counted), 1)}
  weights = sown.get('weights')
  # Only where the behaviours carry a category (the world's do; a dataset
  # declaring no 'category' seq feature gets the entropy alone).
  if (batch is not None and weights and 'seq_category' in batch and
      'category' in batch and
      weights[0].shape == batch['seq_category'].shape):
    w = jnp.abs(weights[0])
    mask = batch['seq_mask'].astype(bool)
    same = (batch['seq_category'] == batch['category'][:, None]) & mask
    rows = same.any(-1) & (mask & ~same).any(-1)
    w_share = jnp.sum(w * same, -1) / jnp.maximum(
        jnp.sum(w * mask, -1), 1e-9)
    n_share = jnp.sum(same, -1) / jnp.maximum(jnp.sum(mask, -1), 1)
    out['attention_category_excess'] = jnp.sum(
        jnp.where(rows, w_share - n_share, 0.0)) / jnp.maximum(
            jnp.sum(rows), 1)
  return out


def eval_step(state, batch, vectors, *, model):
  """Logits of a (padded) test batch, plus the fields the metrics need."""
  logits, _ = _forward(model, {'params': state.params, **state.extra}, batch,
                       vectors, False)
  out = {k: batch[k] for k in ctr_eval.EVAL_FIELDS + ('valid',)}
  out['logit'] = logits
  return out


def jit_eval_step(eval_fn, state_shardings, vec_sharding, mesh):
  batch = sharding.batch_sharding(mesh)
  return jax.jit(eval_fn, in_shardings=(state_shardings, batch, vec_sharding),
                 out_shardings=batch)


class OptSpec(NamedTuple):
  """The optimizer's settings (hashable: a key of the compiled programs)."""
  dense_lr: float
  embed_lr: float
  weight_decay: float
  frozen: tuple[str, ...] = ()


def opt_spec(config, model, stage_a=False):
  if stage_a:  # MAKE has no ID tables: every param is dense.
    return OptSpec(config.make_lr, config.make_lr, config.weight_decay)
  frozen = ('make',) if (model.config.uses_make and config.make.freeze) else ()
  return OptSpec(config.dense_lr, config.embed_lr, config.weight_decay,
                 frozen)


def build_tx(spec, params):
  """Adam on ID tables, AdamW on dense weights, zero updates if frozen."""
  return optimizer.build_optimizer(
      params, dense_lr=spec.dense_lr, embed_lr=spec.embed_lr,
      weight_decay=spec.weight_decay, frozen_prefixes=spec.frozen)


def init_fn(model, tx, example, vectors_spec):
  """rng -> TrainState (boxed params); `extra` = the model's batch_stats.

  The vector table enters as zeros of its shape: init only needs shapes, and
  the real table would be baked into the init program as a constant.
  """

  def init(rng):
    vecs = None if vectors_spec is None else jnp.zeros(vectors_spec.shape,
                                                       vectors_spec.dtype)
    variables = model.init(rng, example, vecs)
    params = variables['params']
    extra = {k: v for k, v in variables.items() if k != 'params'}
    return train_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                opt_state=tx.init(params), extra=extra)
  return init


def abstract_params(model, example, vectors_spec):
  def params(rng, vecs):
    return model.init(rng, example, vecs)['params']
  return jax.eval_shape(params, jax.random.key(0), vectors_spec)


def shape_key(tree):
  """Hashable (name, shape, dtype) of a dict of arrays / a vector table."""
  if tree is None:
    return None
  if not isinstance(tree, dict):
    return (tuple(tree.shape), np.dtype(tree.dtype).str)
  return tuple((k, tuple(v.shape), np.dtype(v.dtype).str)
               for k, v in sorted(tree.items()))


class Programs(NamedTuple):
  train: train_lib.Programs  # shardings, init_state, train_step
  eval_step: Any  # jitted (state, batch, vectors) -> outputs


@functools.lru_cache(maxsize=16)
def programs(model, spec, mesh, example_key, vectors_key):
  """The optimizer, init and jitted steps for a model, optimizer and mesh.

  Cached on (model, OptSpec, mesh, input shapes), so runs in one process that
  differ only in seed, data order or length (seed sweeps, tests) share the
  compiled programs. Init depends on the inputs' shapes only: it gets zeros.
  """
  example = {k: np.zeros(shape, dtype) for k, shape, dtype in example_key}
  vec_spec = None if vectors_key is None else jax.ShapeDtypeStruct(
      *vectors_key)
  tx = build_tx(spec, abstract_params(model, example, vec_spec))
  vec_sharding = vector_table.table_sharding(vec_spec, mesh)
  train = train_lib.compile_programs(
      init_fn(model, tx, example, vec_spec),
      functools.partial(train_step, model=model, tx=tx), mesh,
      arg_shardings=(vec_sharding,))
  return Programs(train, jit_eval_step(functools.partial(eval_step,
                                                         model=model),
                                       train.shardings, vec_sharding, mesh))
