"""CTR loop: the ID model, its integration variants, MAKE's two stages, epochs.

`run(config, workdir)` trains `ctr_model.CtrModel` (variant
`config.variant`) on the impressions' train split (the training days) and
evaluates it on the test split (the following day): AUC, GAUC by user,
logloss, AUC/GAUC per training-exposure group and on new items. Writes
checkpoints, metrics.jsonl, TensorBoard events, `ctr_eval.json` and
`predictions.npz` (the test rows' logits, for paired comparisons).

- The frozen item-vector table (`config.vectors_path`, every variant but
  'id') is put on the mesh once and passed to the jitted steps as an
  argument: never part of the train state, never differentiated.
- MAKE ('make', 'simtier_make'): stage A trains `make.MakeModel` on the click
  label for `config.make.stage_a_epochs` epochs in `<workdir>/make_stage_a`
  (own checkpoints, metrics and per-epoch test AUC/GAUC); stage B trains the
  CtrModel with params['make'] / batch_stats['make'] initialised from stage
  A, frozen or not (`config.make.freeze`).
- With `num_epochs > 1` the model is also evaluated after every epoch and at
  `config.eval_points_in_first_epochs` of epochs 1 and 2, so that the
  one-epoch phenomenon (the AUC drop at the start of epoch 2) shows.
- Resuming from the workdir's latest checkpoint (state + data iterator)
  reproduces the uninterrupted run: the data order comes from the iterator
  state and the step's rng from fold_in(step).

Shape letters: B batch, L behaviour-sequence length, V items, Dv vector width.
"""

import functools
import os
from typing import Any, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmrec import ctr_data
from mmrec import ctr_eval
from mmrec import ctr_model
from mmrec import embedding
from mmrec import id_stats
from mmrec import make as make_lib
from mmrec import optimizer
from mmrec import sharding
from mmrec import train_lib
from mmrec import vector_table
from mmrec.data import pipelines
from mmrec.data import resolver

EVAL_FILE = ctr_eval.EVAL_FILE
STAGE_A_DIR = 'make_stage_a'


# --------------------------------------------------------------------------
# Model, vectors, input checks.


def make_module_config(config):
  return make_lib.MakeConfig(
      attention_mlp=tuple(config.make.attention_mlp),
      mlp=tuple(config.make.mlp), freeze=bool(config.make.freeze))


def build_model(config, sizes):
  """The CtrModel of `config` for a world with vocabulary `sizes`."""
  emb = embedding.EmbeddingConfig(**sizes, dim=config.embed_dim)
  return ctr_model.CtrModel(ctr_model.CtrConfig(
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
  return config.variant != 'id' or config.retrieve_top_k > 0


def load_vectors(config, num_items):
  """The (V, Dv) host table of `config.vectors_path`, or None for 'id'."""
  if not reads_vectors(config):
    if config.vectors_path:
      logging.info("variant 'id' (no retrieval) reads no item vectors; "
                   'ignoring config.vectors_path=%s', config.vectors_path)
    return None
  dim = config.vectors_dim or None
  table, meta = vector_table.load_from(
      config.vectors_path, field='config.vectors_path',
      dtype=config.vectors_dtype, num_items=num_items, dim=dim)
  logging.info('item vectors %s: %s %s (encoder: %s)', config.vectors_path,
               table.dtype, table.shape, meta.get('method', '?'))
  return table


def check_batch(batch, model, where, first_test_day=None, test=False):
  """Ids against the vocabularies, days against the train/test split."""
  emb = model.config.embedding
  try:
    embedding.check_ids(batch, emb)
  except ValueError as e:
    raise ValueError(f'{where}: {e}') from e
  if first_test_day is not None and 'day' in batch:
    day = np.asarray(batch['day'])
    bad = day < first_test_day if test else day >= first_test_day
    if bad.any():
      raise ValueError(
          f'{where}: holds day {int(day[bad][0])}, but the '
          f'{"test" if test else "train"} split must hold days '
          f'{">=" if test else "<"} {first_test_day} (first test day).')


# --------------------------------------------------------------------------
# Loss and steps (pure).


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


# --------------------------------------------------------------------------
# The job: MAKE stage A (if the variant uses MAKE), then the CTR model.


def _fit(name, workdir, model, stage_a, config, data, vectors, mesh, example,
         *, num_epochs, eval_steps, stop_at=0, resume='', init_from='',
         on_start=None, final_eval=True):
  """`train_lib.fit` of one stage, evaluated on `eval_split(config)`."""
  progs = programs(model, opt_spec(config, model, stage_a), mesh,
                   shape_key(example), shape_key(vectors))
  spe = data.steps_per_epoch(config.batch_size)

  def evaluate(state, step):
    split = eval_split(config)
    pred = ctr_eval.predict(progs.eval_step, state, vectors, data,
                            config.eval_batch_size, mesh, split)
    m = ctr_eval.ctr_metrics(pred)
    logging.info('%s step %d (epoch %.2f): %s auc %.4f gauc %.4f '
                 'logloss %.4f', name, step, step / spe, split, m['auc'],
                 m['gauc'], m['logloss'])
    return dict(m, epoch_fraction=step / spe), pred

  loop = train_lib.Loop(
      name=name, workdir=workdir, num_steps=spe * num_epochs,
      batch_size=config.batch_size, seed=config.seed, config=config,
      checkpoint_every=config.checkpoint_every, log_every=config.log_every,
      resume=resume, init_from=init_from, on_start=on_start,
      evaluate=evaluate, eval_steps=tuple(eval_steps), final_eval=final_eval,
      stop_at=stop_at)
  ds = data.dataset('train', config.batch_size, seed=config.seed,
                    shuffle=True, num_epochs=num_epochs)
  return loop, train_lib.fit(loop, progs.train,
                             pipelines.iterator(ds, prefetch_threads=1), mesh,
                             (vectors,))


def _history(history):
  return [{'epoch_fraction': h['epoch_fraction'], 'step': h['step'],
           **{k: h[k] for k in ('auc', 'gauc', 'logloss')}} for h in history]


def _stage_a(config, workdir, data, vectors, mesh, example):
  """MAKE stage A (restored, not retrained, when its final step is saved)."""
  cfg = config.make
  spe = data.steps_per_epoch(config.batch_size)
  loop, res = _fit(
      'make_stage_a', cfg.stage_a_dir or os.path.join(workdir, STAGE_A_DIR),
      build_stage_a_model(config), True, config, data, vectors, mesh, example,
      num_epochs=cfg.stage_a_epochs,
      eval_steps=[e * spe for e in range(1, cfg.stage_a_epochs + 1)],
      final_eval=False)
  if res.step != loop.num_steps:
    raise RuntimeError(f'MAKE stage A stopped at step {res.step} of '
                       f'{loop.num_steps}.')
  return res.state, _history(res.history)


def _load_make(stage_a_state):
  """Stage B's on_start: params['make'] and batch_stats['make'] from stage A."""

  def on_start(state):
    params, stats = dict(state.params), dict(state.extra['batch_stats'])
    for name, got, want in (('params', stage_a_state.params, params['make']),
                            ('batch_stats',
                             stage_a_state.extra['batch_stats'],
                             stats['make'])):
      if jax.tree.structure(got) != jax.tree.structure(want):
        raise ValueError(f'MAKE stage A {name} do not fit stage B\'s '
                         f"{name}['make'] (different config.make?).")
    params['make'] = stage_a_state.params
    stats['make'] = stage_a_state.extra['batch_stats']
    return state.replace(params=params,
                         extra=dict(state.extra, batch_stats=stats))
  return on_start


def eval_split(config):
  """'validation' (the last training day, held out) or 'test'."""
  return 'validation' if config.validation else 'test'


def _validate(config):
  if config.variant not in ctr_model.VARIANTS:
    raise ValueError(f'config.variant = {config.variant!r}, expected one of '
                     f'{ctr_model.VARIANTS}.')
  if config.vectors_dtype not in ('float32', 'int8'):
    raise ValueError(f"config.vectors_dtype = {config.vectors_dtype!r}, "
                     "expected 'int8' or 'float32'.")
  if reads_vectors(config) and not config.vectors_path:
    raise ValueError(
        f'config.vectors_path is empty, but variant {config.variant!r} reads '
        'the item-vector table: set --config.vectors_path to the embedding '
        f"job's {vector_table.FILE} (or its workdir).")
  for field in ('batch_size', 'eval_batch_size', 'num_epochs',
                'checkpoint_every', 'log_every'):
    if config[field] < 1:
      raise ValueError(f'config.{field} must be >= 1, got {config[field]}.')


def run(config, workdir):
  """Trains one variant (MAKE: both stages) and evaluates it on the test day
  (with `config.validation`: trains without the last training day and
  evaluates on it)."""
  if config.variant == 'id_stats':  # the LR baseline: no model, no steps
    return id_stats.run(config, workdir)
  _validate(config)
  data_dir = resolver.data_dir(config.data_dir, config.world, workdir)
  data = ctr_data.CtrData.load(data_dir, validation=config.validation)
  split = eval_split(config)
  model = build_model(config, data.sizes)
  host_vectors = load_vectors(config, data.sizes['num_items'])
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.model)

  # Bad input fails here, before anything compiles.
  first_train = data.dataset('train', config.batch_size, seed=config.seed,
                             shuffle=True)[0]
  first_test = data.dataset(split, config.eval_batch_size)[0]
  check_batch(first_train, model, f'first train batch of {data_dir}',
              data.first_test_day, test=False)
  check_batch(first_test, model, f'first {split} batch of {data_dir}',
              data.first_test_day, test=split == 'test')
  example = {k: v[:2] for k, v in first_test.items()}
  vectors = vector_table.put(host_vectors, mesh)
  del host_vectors

  result = {'variant': config.variant, 'seed': config.seed,
            'data_dir': data_dir, 'vectors_path': config.vectors_path,
            'vectors_dtype': config.vectors_dtype, 'split': split}
  on_start = None
  if model.config.uses_make:
    stage_a_state, result['stage_a_history'] = _stage_a(
        config, workdir, data, vectors, mesh, example)
    on_start = _load_make(stage_a_state)

  spe = data.steps_per_epoch(config.batch_size)
  points = ctr_eval.eval_points(config.num_epochs, spe,
                                tuple(config.eval_points_in_first_epochs))
  loop, res = _fit(
      f'ctr/{config.variant}', workdir, model, False, config, data, vectors,
      mesh, example, num_epochs=config.num_epochs, eval_steps=points,
      stop_at=config.max_steps, resume=config.resume,
      init_from=config.init_from, on_start=on_start)
  _, overall, pred = res.last_eval
  groups = ctr_eval.exposure_groups(pred, data_dir, data.train_item_ids())
  result.update(step=res.step, total_steps=loop.num_steps,
                complete=res.step == loop.num_steps,
                epoch_fraction=res.step / spe,
                num_test=int(len(pred['label'])),
                **{k: overall[k] for k in ('auc', 'gauc', 'logloss')},
                slices=ctr_eval.slice_metrics(pred, groups))
  history = _history(h for h in res.history if h['step'] in points)
  if len(history) > 1:
    result['history'] = history
  return ctr_eval.write_result(workdir, result, pred, groups)
