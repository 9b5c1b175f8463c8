"""CTR loop: the ID model, its integration variants, MAKE's two stages, epochs.

`run(config, workdir)` trains `ctr_model.CtrModel` (variant
`config.variant`) on the impressions' train split (the training days) and
evaluates it on the test split (the following day): AUC, GAUC by user,
logloss, AUC/GAUC per training-exposure group and on new items. Writes
checkpoints, metrics.jsonl, TensorBoard events and `ctr_eval.json`.

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

import dataclasses
import functools
import json
import os
from typing import Any, NamedTuple

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmrec import checkpointing
from mmrec import ctr_data
from mmrec import ctr_model
from mmrec import embed
from mmrec import files
from mmrec import embedding
from mmrec import make as make_lib
from mmrec import optimizer
from mmrec import sharding
from mmrec import train_lib
from mmrec import train_scl
from mmrec import vector_table
from mmrec.data import pipelines

EVAL_FILE = 'ctr_eval.json'
STAGE_A_DIR = 'make_stage_a'
VECTORS_FILE = embed.VECTORS_FILE  # what the embedding job writes


# --------------------------------------------------------------------------
# World, model, vectors.


def make_module_config(config):
  return make_lib.MakeConfig(
      attention_mlp=tuple(config.make.attention_mlp),
      mlp=tuple(config.make.mlp), freeze=bool(config.make.freeze))


def build_model(config, sizes):
  """The CtrModel of `config` for a world with vocabulary `sizes`."""
  emb = embedding.EmbeddingConfig(**sizes, dim=config.embed_dim)
  return ctr_model.CtrModel(ctr_model.CtrConfig(
      emb, variant=config.variant,
      attention_mlp=tuple(config.attention_mlp),
      tower=tuple(config.tower), simtier_bins=config.simtier_bins,
      simtier_mask_padding=bool(config.simtier_mask_padding),
      simtier_official_dim=config.simtier_official_dim,
      retrieve_top_k=config.retrieve_top_k,
      make=make_module_config(config)))


def build_stage_a_model(config):
  return make_lib.MakeModel(make_module_config(config))


def reads_vectors(config):
  return config.variant != 'id'


def load_vectors(config, num_items):
  """The (V, Dv) host table of `config.vectors_path`, or None for 'id'.

  `vectors_path` may name the table or the embedding job's workdir. Errors
  name the config field, so the fix is obvious from the message.
  """
  if not reads_vectors(config):
    if config.vectors_path:
      logging.info("variant 'id' reads no item vectors; ignoring "
                   'config.vectors_path=%s', config.vectors_path)
    return None
  check_vectors_path(config)
  path = config.vectors_path
  if os.path.isdir(path):
    path = os.path.join(path, VECTORS_FILE)
  try:
    table, meta = vector_table.load(
        path, dtype=config.vectors_dtype, num_items=num_items,
        dim=config.vectors_dim or None)
  except vector_table.VectorTableError as e:
    dim = (f' (config.vectors_dim = {config.vectors_dim})'
           if config.vectors_dim else '')
    raise vector_table.VectorTableError(
        f'config.vectors_path={config.vectors_path}: {e}{dim}') from e
  logging.info('item vectors %s: %s %s (encoder: %s)', path, table.dtype,
               table.shape, meta.get('method', '?'))
  return table


def check_vectors_path(config):
  if reads_vectors(config) and not config.vectors_path:
    raise ValueError(
        f'config.vectors_path is empty, but variant {config.variant!r} reads '
        'the item-vector table: set --config.vectors_path to the embedding '
        f"job's {VECTORS_FILE} (or its workdir).")


def put_vectors(table, mesh):
  """Host table -> device array on the mesh, once.

  Rows shard on 'model' like the ID tables (when the model axis divides V),
  else the table is replicated.
  """
  if table is None:
    return None
  return jax.device_put(table, vectors_sharding(table, mesh))


def vectors_sharding(table, mesh):
  if table is None:
    return sharding.replicated(mesh)
  return sharding.logical_to_sharding(('vocab', None), mesh, shapes=table)


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
  """Logits (B,) and the updated non-param collections."""
  if train:
    out, updates = model.apply(variables, batch, vectors, train=True,
                               mutable=['batch_stats'])
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
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {'loss': loss, 'grad_norm': train_lib.global_norm(grads),
             'label_mean': jnp.mean(batch['label'].astype(jnp.float32)),
             'prediction_mean': jnp.mean(jax.nn.sigmoid(logits))}
  return state.replace(step=state.step + 1, params=params,
                       opt_state=opt_state, extra=extra), metrics


def eval_step(state, batch, vectors, *, model):
  """Logits of a (padded) test batch, plus the fields the metrics need."""
  logits, _ = _forward(model, {'params': state.params, **state.extra}, batch,
                       vectors, False)
  out = {k: batch[k] for k in ctr_data.EVAL_FIELDS + ('valid',)}
  out['logit'] = logits
  return out


def jit_train_step(step_fn, state_shardings, vec_sharding, mesh):
  """`train_lib.jit_step` with the vector table as a 4th, undonated argument."""
  repl = sharding.replicated(mesh)
  return jax.jit(
      step_fn,
      in_shardings=(state_shardings, sharding.batch_sharding(mesh), repl,
                    vec_sharding),
      out_shardings=(state_shardings, repl),
      donate_argnums=(0,))


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
  init: Any  # rng -> TrainState (boxed)
  shardings: Any  # of the TrainState
  init_state: Any  # jitted rng -> TrainState (unboxed, sharded)
  train_step: Any  # jitted (state, batch, rng, vectors) -> (state, metrics)
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
  init = init_fn(model, tx, example, vec_spec)
  shardings = sharding.state_shardings(init, jax.random.key(0), mesh=mesh)
  vec_sharding = vectors_sharding(vec_spec, mesh)
  # train_lib.init_state, kept compiled for the next run.
  init_state = jax.jit(lambda rng: nn.unbox(init(rng)),
                       out_shardings=shardings)
  return Programs(
      init, shardings, init_state,
      jit_train_step(functools.partial(train_step, model=model, tx=tx),
                     shardings, vec_sharding, mesh),
      jit_eval_step(functools.partial(eval_step, model=model), shardings,
                    vec_sharding, mesh))


# --------------------------------------------------------------------------
# The training loop, shared by MAKE stage A and the CTR model.


@dataclasses.dataclass
class _Stage:
  """What differs between the stages: model, optimizer, where, how long."""
  name: str
  workdir: str
  model: Any
  stage_a: bool
  num_epochs: int
  points: dict  # {step: epoch fraction} to evaluate at
  max_steps: int = 0  # Stop early (0 = run to the end)
  resume: str = ''
  init_from: str = ''
  on_fresh: Any = None  # state -> state, on a fresh start only
  final_eval: bool = True  # Evaluate the final state (if not just done)


def _fit(stage, config, world, vectors, mesh, example):
  """Trains (or resumes) one stage; returns (state, step, total, last eval).

  The last eval is (step, metrics, test predictions) of the final state with
  `stage.final_eval`; otherwise of the last evaluation point of this call, or
  None.
  """
  os.makedirs(stage.workdir, exist_ok=True)
  progs = programs(stage.model,
                   opt_spec(config, stage.model, stage.stage_a), mesh,
                   shape_key(example), shape_key(vectors))
  shardings = progs.shardings
  state = progs.init_state(jax.random.key(config.seed))
  spe = world.steps_per_epoch(config.batch_size)
  total = spe * stage.num_epochs
  stop = min(total, stage.max_steps) if stage.max_steps else total
  ds = world.dataset('train', config.batch_size, seed=config.seed,
                     shuffle=True, num_epochs=stage.num_epochs)
  it = pipelines.iterator(ds, prefetch_threads=1)

  source = checkpointing.restore_precedence(stage.workdir, stage.resume,
                                            stage.init_from)
  if source.source in ('workdir', 'resume'):
    state, _ = checkpointing.restore_from(source.path, state, it)
    logging.info('%s: resumed from %s at step %d', stage.name, source.path,
                 int(state.step))
  elif source.source == 'init_from':
    restored, _ = checkpointing.restore_from(
        source.path, {'params': state.params}, partial=True)
    state = state.replace(params=jax.device_put(restored['params'],
                                                shardings.params))
    logging.info('%s: initialised params from %s', stage.name, source.path)
  if source.source in ('fresh', 'init_from') and stage.on_fresh:
    state = jax.device_put(stage.on_fresh(state), shardings)

  step_fn, eval_fn = progs.train_step, progs.eval_step
  writer = train_lib.MetricWriter(stage.workdir)
  cfg_dict = json.loads(config.to_json_best_effort())
  step = int(state.step)
  last_eval = None

  def evaluate():
    pred = ctr_data.predict(eval_fn, state, vectors, world,
                            config.eval_batch_size, mesh)
    m = ctr_data.ctr_metrics(pred)
    fraction = step / spe
    writer.write(step, dict(m, epoch_fraction=fraction), prefix='eval/')
    logging.info('%s step %d (epoch %.2f): test auc %.4f gauc %.4f '
                 'logloss %.4f', stage.name, step, fraction, m['auc'],
                 m['gauc'], m['logloss'])
    return step, m, pred

  with checkpointing.Checkpointer(
      os.path.join(stage.workdir, checkpointing.SUBDIR),
      save_interval_steps=config.checkpoint_every) as ckpt:
    if step < stop:
      logging.info('%s: training steps %d..%d of %d (%d per epoch, batch %d)',
                   stage.name, step, stop, total, spe, config.batch_size)
    progress = train_lib.Progress(stop, config.batch_size, name=stage.name)
    rng = jax.random.key(config.seed + 1)
    while step < stop:
      batch = next(it)
      state, metrics = step_fn(state, sharding.shard_batch(batch, mesh),
                               train_lib.fold_rng(rng, step), vectors)
      step += 1
      if step % config.log_every == 0 or step == stop:
        metrics = train_lib.to_host(metrics)
        writer.write(step, metrics, prefix='train/')
        progress.update(step, metrics, force=True)
      else:
        progress.update(step)
      if step % config.checkpoint_every == 0 or step == stop:
        ckpt.save(step, state, data_iterator=it, config=cfg_dict,
                  force=step == stop)
      if step in stage.points:
        last_eval = evaluate()
    done = last_eval is not None and last_eval[0] == step
    if not done and (stage.final_eval or (
        step in stage.points and not ctr_data.read_history(stage.workdir,
                                                  {step: 0.0}))):
      last_eval = evaluate()
  writer.close()
  return state, step, total, last_eval


# --------------------------------------------------------------------------
# The job.


def _stage_a(config, workdir, world, vectors, mesh, example):
  """MAKE stage A (skipped when its final checkpoint exists)."""
  cfg = config.make
  spe = world.steps_per_epoch(config.batch_size)
  stage = _Stage(
      name='make_stage_a',
      workdir=cfg.stage_a_dir or os.path.join(workdir, STAGE_A_DIR),
      model=build_stage_a_model(config), stage_a=True,
      num_epochs=cfg.stage_a_epochs,
      points={e * spe: float(e) for e in range(1, cfg.stage_a_epochs + 1)},
      final_eval=False)
  state, step, total, _ = _fit(stage, config, world, vectors, mesh, example)
  if step != total:
    raise RuntimeError(f'MAKE stage A stopped at step {step} of {total}.')
  return state, ctr_data.read_history(stage.workdir, stage.points)


def _load_make(stage_a_state):
  """Stage B's on_fresh: params['make'] and batch_stats['make'] from stage A."""

  def on_fresh(state):
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
  return on_fresh


def _validate(config):
  if config.variant not in ctr_model.VARIANTS:
    raise ValueError(f'config.variant = {config.variant!r}, expected one of '
                     f'{ctr_model.VARIANTS}.')
  if config.vectors_dtype not in ('float32', 'int8'):
    raise ValueError(f"config.vectors_dtype = {config.vectors_dtype!r}, "
                     "expected 'int8' or 'float32'.")
  check_vectors_path(config)
  for field in ('batch_size', 'eval_batch_size', 'num_epochs',
                'checkpoint_every', 'log_every'):
    if config[field] < 1:
      raise ValueError(f'config.{field} must be >= 1, got {config[field]}.')


def train_and_evaluate(config, workdir):
  """Trains one variant (MAKE: both stages) and evaluates it on the test day."""
  _validate(config)
  data_dir = train_scl.ensure_world(config, workdir)
  world = ctr_data.World.load(data_dir)
  model = build_model(config, world.sizes)
  host_vectors = load_vectors(config, world.sizes['num_items'])
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.model)

  # Bad input fails here, before anything compiles.
  first_train = world.dataset('train', config.batch_size, seed=config.seed,
                              shuffle=True)[0]
  first_test = world.dataset('test', config.eval_batch_size)[0]
  check_batch(first_train, model, f'first train batch of {data_dir}',
              world.first_test_day, test=False)
  check_batch(first_test, model, f'first test batch of {data_dir}',
              world.first_test_day, test=True)
  example = {k: v[:2] for k, v in first_test.items()}
  vectors = put_vectors(host_vectors, mesh)
  del host_vectors

  result = {'variant': config.variant, 'seed': config.seed,
            'data_dir': data_dir, 'vectors_path': config.vectors_path,
            'vectors_dtype': config.vectors_dtype, 'split': 'test'}
  on_fresh = None
  if model.config.uses_make:
    stage_a_state, result['stage_a_history'] = _stage_a(
        config, workdir, world, vectors, mesh, example)
    on_fresh = _load_make(stage_a_state)

  spe = world.steps_per_epoch(config.batch_size)
  points = ctr_data.eval_points(config.num_epochs, spe,
                       tuple(config.eval_points_in_first_epochs))
  stage = _Stage(name=f'ctr/{config.variant}', workdir=workdir, model=model,
                 stage_a=False, num_epochs=config.num_epochs, points=points,
                 max_steps=config.max_steps, resume=config.resume,
                 init_from=config.init_from, on_fresh=on_fresh)
  _, step, total, (_, overall, pred) = _fit(stage, config, world, vectors,
                                           mesh, example)
  result.update(step=step, total_steps=total, complete=step == total,
                epoch_fraction=step / spe, num_test=int(len(pred['label'])),
                **overall, slices=ctr_data.slice_metrics(pred, data_dir))
  history = ctr_data.read_history(workdir, points)
  if len(history) > 1:
    result['history'] = history
  result = files.json_safe(result)
  _finish(workdir, result)
  return result


def _finish(workdir, result):
  """ctr_eval.json (atomic; `result` already JSON-safe) and a log summary."""
  if jax.process_index() == 0:
    files.write_json(os.path.join(workdir, EVAL_FILE), result)
  logging.info('ctr/%s step %d/%d: test auc %s gauc %s logloss %s (%d '
               'impressions)', result['variant'], result['step'],
               result['total_steps'], _fmt(result['auc']),
               _fmt(result['gauc']), _fmt(result['logloss']),
               result['num_test'])
  for name, s in result['slices'].items():
    logging.info('  %-8s %6d rows  auc %s  gauc %s', name, s['count'],
                 _fmt(s['auc']), _fmt(s['gauc']))


def _fmt(x):
  return 'nan' if x is None else f'{x:.4f}'


def run(config, workdir):
  return train_and_evaluate(config, workdir)
