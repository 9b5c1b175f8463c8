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
  one-epoch phenomenon (the AUC drop at the start of epoch 2) shows; not with
  `config.eval_history = False` (the sweeps): then only the final state (and
  stage A's after its last epoch) is evaluated, with the same results.
- Resuming from the workdir's latest checkpoint (state + data iterator)
  reproduces the uninterrupted run: the data order comes from the iterator
  state and the step's rng from fold_in(step).

Shape letters: B batch, L behaviour-sequence length, V items, Dv vector width.
"""

import os

from absl import logging
import jax

from mmrec import ctr_data
from mmrec import ctr_eval
from mmrec import ctr_model
from mmrec import ctr_steps
from mmrec import id_stats
from mmrec import sharding
from mmrec import train_lib
from mmrec import vector_table
from mmrec.data import pipelines
from mmrec.data import resolver

EVAL_FILE = ctr_eval.EVAL_FILE
STAGE_A_DIR = 'make_stage_a'


# --------------------------------------------------------------------------
# The job: MAKE stage A (if the variant uses MAKE), then the CTR model.


def _fit(name, workdir, model, stage_a, config, data, vectors, mesh, example,
         *, num_epochs, eval_steps, stop_at=0, resume='', init_from='',
         on_start=None, final_eval=True):
  """`train_lib.fit` of one stage, evaluated on `eval_split(config)`."""
  progs = ctr_steps.programs(
      model, ctr_steps.opt_spec(config, model, stage_a), mesh,
      ctr_steps.shape_key(example), ctr_steps.shape_key(vectors))
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
      ctr_model.build_stage_a_model(config), True, config, data, vectors, mesh, example,
      num_epochs=cfg.stage_a_epochs,
      eval_steps=[e * spe for e in range(
          1 if config.eval_history else cfg.stage_a_epochs,
          cfg.stage_a_epochs + 1)],
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
  if ctr_model.reads_vectors(config) and not config.vectors_path:
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
  # The checkpoints record the resolved dataset and table, so that readers
  # of this run (export, near-line) find them without being told.
  config = config.copy_and_resolve_references()
  config.data_dir = data_dir
  if ctr_model.reads_vectors(config):
    config.vectors_path = vector_table.resolve(config.vectors_path)
  data = ctr_data.CtrData.load(data_dir, validation=config.validation)
  split = eval_split(config)
  model = ctr_model.build_model(config, data.sizes)
  host_vectors = ctr_data.host_vectors(config, data.sizes['num_items'])
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.model)

  # Bad input fails here, before anything compiles.
  first_train = data.dataset('train', config.batch_size, seed=config.seed,
                             shuffle=True)[0]
  first_test = data.dataset(split, config.eval_batch_size)[0]
  ctr_data.check_batch(first_train, model, f'first train batch of {data_dir}',
              data.first_test_day, test=False)
  ctr_data.check_batch(first_test, model, f'first {split} batch of {data_dir}',
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
  points = (ctr_eval.eval_points(config.num_epochs, spe,
                                 tuple(config.eval_points_in_first_epochs))
            if config.eval_history else {})
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
