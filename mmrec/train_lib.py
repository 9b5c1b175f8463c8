"""The training loop every trainer uses, and its plumbing.

A trainer supplies `init_fn(rng) -> TrainState` (params boxed with logical
axis names), a pure `step_fn(state, batch, rng, *args) -> (state, metrics)`,
a checkpointable batch iterator and what it does at the end; `compile_programs` jits init
and step over a ('data', 'model') mesh (state shardings from
`jax.eval_shape` + the logical rules, init straight into them, the step
donating the state) and `fit` runs them: restore precedence, the data
iterator and its checkpointed state, the step loop, progress and metrics,
evaluation hooks and their history, and a forced final checkpoint.
"""

import dataclasses
import json
import os
import time
from typing import Any, Callable, NamedTuple

from absl import logging
import flax
import flax.linen as nn
import jax
import numpy as np
import tensorboardX

from mmrec import checkpointing
from mmrec import files
from mmrec import sharding

HISTORY_FILE = 'eval_history.json'


@flax.struct.dataclass
class TrainState:
  """step, params, optimizer state, and `extra`: model state outside the
  gradient (momentum encoder, queue, batch statistics, ...)."""
  step: jax.Array
  params: Any
  opt_state: Any
  extra: Any = None


def fold_rng(rng, step):
  return jax.random.fold_in(rng, step)


class MetricWriter:
  """Scalars to `metrics.jsonl` and TensorBoard events (process 0 only)."""

  def __init__(self, workdir, filename='metrics.jsonl'):
    self._active = jax.process_index() == 0
    if self._active:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, filename), 'a')
      self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, 'tb'))

  def write(self, step, scalars, prefix=''):
    if not self._active:
      return
    values = {f'{prefix}{k}': float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({'step': int(step), **values}) + '\n')
    self._jsonl.flush()
    for k, v in values.items():
      # TensorBoard rejects '@' in tags ('accuracy@1').
      self._tb.add_scalar(k.replace('@', '_at_'), v, int(step))

  def close(self):
    if self._active:
      self._jsonl.close()
      self._tb.close()


def read_metrics(workdir, filename='metrics.jsonl'):
  """The rows a MetricWriter wrote (for reports and tests)."""
  with open(os.path.join(workdir, filename)) as f:
    return [json.loads(line) for line in f if line.strip()]


class Progress:
  """Logs step, steps/s, examples/s and ETA every `every_s` seconds."""

  def __init__(self, total_steps, batch_size, name='train', every_s=10.0):
    self.total, self.batch, self.name, self.every = (
        total_steps, batch_size, name, every_s)
    self._t0 = self._last_t = time.time()
    self._first_step = None

  def update(self, step, metrics=None, force=False):
    now = time.time()
    if self._first_step is None:  # first call: after compilation
      self._t0, self._last_t, self._first_step = now, now, step
      return
    if not force and now - self._last_t < self.every:
      return
    # Averaged since the first step: with asynchronous dispatch a short
    # window measures how fast steps are queued, not computed.
    rate = (step - self._first_step) / max(now - self._t0, 1e-9)
    eta = (self.total - step) / rate if rate > 0 else float('inf')
    extra = ''
    if metrics:
      extra = ' ' + ' '.join(f'{k}={float(v):.4g}' for k, v in metrics.items())
    logging.info('%s step %d/%d  %.2f steps/s  %.0f examples/s  ETA %s%s',
                 self.name, step, self.total, rate, rate * self.batch,
                 _duration(eta), extra)
    self._last_t = now


class _QuietLibraries(logging.logging.Filter):
  """Drops INFO chatter of orbax / tfds / grain, so progress lines stand out."""
  _NOISY = ('/orbax/', '/tensorflow_datasets/', '/grain/', '/etils/')

  def filter(self, record):
    return record.levelno > logging.logging.INFO or not any(
        n in record.pathname for n in self._NOISY)


def quiet_library_logs():
  """Progress at INFO on absl's handler, without the libraries' INFO lines."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())


def _duration(seconds):
  if not np.isfinite(seconds):
    return '?'
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


# --------------------------------------------------------------------------
# Compiled programs and the loop.


class Programs(NamedTuple):
  """What `fit` runs: the state's shardings, its jitted init and step."""
  shardings: Any  # of the TrainState
  init_state: Callable  # jitted rng -> TrainState (unboxed, sharded)
  train_step: Callable  # jitted (state, batch, rng, *args) -> (state, metrics)


def compile_programs(init_fn, step_fn, mesh, arg_shardings=(),
                     rules=sharding.DEFAULT_RULES):
  """Shardings from `jax.eval_shape(init_fn)`, init and step jitted on `mesh`.

  `step_fn(state, batch, rng, *args)`: the batch is sharded on 'data', the
  state keeps its shardings and is donated; `args` (e.g. a frozen vector
  table) enter with `arg_shardings` and are not donated.
  """
  shardings = sharding.state_shardings(init_fn, jax.random.key(0), mesh=mesh,
                                       rules=rules)
  repl = sharding.replicated(mesh)
  init_state = jax.jit(lambda rng: nn.unbox(init_fn(rng)),
                       out_shardings=shardings)
  step = jax.jit(
      step_fn,
      in_shardings=(shardings, sharding.batch_sharding(mesh), repl,
                    *arg_shardings),
      out_shardings=(shardings, repl),
      donate_argnums=(0,))
  return Programs(shardings, init_state, step)


@dataclasses.dataclass
class Loop:
  """One training run: where, how long, how often, and its hooks.

  Restore precedence: the workdir's latest checkpoint -> `resume` (a run to
  continue: state, data position and eval history) -> `init_from` (params
  only, through `on_init_from`) -> fresh. `on_start` runs on a state that did
  not come from a checkpoint of this run (fresh or init_from).

  `evaluate(state, step) -> (metrics, outputs)` runs at `eval_steps` and, with
  `final_eval`, on the final state; its metrics form the eval history, which
  is kept in memory, saved inside every checkpoint (so a resumed run has its
  past evaluations) and written once to `eval_history.json` at the end.
  """
  name: str
  workdir: str
  num_steps: int
  batch_size: int  # global, for the progress line
  seed: int
  config: Any  # saved with every checkpoint
  checkpoint_every: int
  log_every: int
  resume: str = ''
  init_from: str = ''
  on_init_from: Callable | None = None  # (state, params) -> state
  on_start: Callable | None = None  # state -> state
  evaluate: Callable | None = None  # (state, step) -> (metrics, outputs)
  eval_steps: tuple[int, ...] = ()
  final_eval: bool = False
  stop_at: int = 0  # > 0: stop (checkpointed) after this step
  # Metrics that must stay finite: checked before every checkpoint, so a
  # NaN or infinite value stops the run (NonFiniteError) before a state it
  # produced is saved.
  finite_metrics: tuple[str, ...] = ()


class NonFiniteError(FloatingPointError):
  """A metric in `Loop.finite_metrics` went NaN or infinite; nothing after
  the step before it was saved."""


class FitResult(NamedTuple):
  state: Any
  step: int
  history: list  # [{'step': s, **metrics}] in step order
  last_eval: Any  # (step, metrics, outputs) of the last evaluation, or None


def _check_finite(loop, watched):
  """Raises NonFiniteError at the first step in `watched` whose metrics in
  `loop.finite_metrics` are not all finite."""
  host = sharding.to_host([v for _, v in watched])  # one transfer
  for (step, _), values in zip(watched, host):
    values = [float(v) for v in values]
    if not np.isfinite(values).all():
      raise NonFiniteError(
          f'{loop.name}: step {step} has '
          f'{dict(zip(loop.finite_metrics, values))}: stopped before saving '
          f'a checkpoint (the last saved state in {loop.workdir} is still '
          'good); check the data and the learning rate')


def fit(loop: Loop, programs: Programs, it, mesh, step_args=()):
  """Trains (or resumes) one run; returns a FitResult.

  The data iterator is checkpointed with the state, the step's rng is
  fold_in(seed + 1, step) and the final step is always saved, so a resumed
  run reproduces the uninterrupted one bit for bit. `it`: a checkpointable
  iterator of host batches (pipelines.iterator): the loop knows no dataset.
  """
  os.makedirs(loop.workdir, exist_ok=True)
  state = programs.init_state(jax.random.key(loop.seed))
  history = {}  # step -> {'step': step, **metrics}
  source = checkpointing.restore_precedence(loop.workdir, loop.resume,
                                            loop.init_from)
  if source.source in ('workdir', 'resume'):
    state, _ = checkpointing.restore_from(source.path, state, it)
    history = {h['step']: h for h in checkpointing.read_history(source.path)}
    logging.info('%s: resumed from %s at step %d', loop.name, source.path,
                 int(state.step))
  elif source.source == 'init_from':
    restored, _ = checkpointing.restore_from(
        source.path, {'params': state.params}, partial=True)
    params = jax.device_put(restored['params'], programs.shardings.params)
    state = (loop.on_init_from(state, params) if loop.on_init_from
             else state.replace(params=params))
    logging.info('%s: initialised params from %s', loop.name, source.path)
  if source.source in ('fresh', 'init_from') and loop.on_start:
    state = jax.device_put(loop.on_start(state), programs.shardings)

  stop = min(loop.num_steps, loop.stop_at) if loop.stop_at else loop.num_steps
  step = int(state.step)
  writer = MetricWriter(loop.workdir)
  last_eval = None

  def evaluate(state, step):
    metrics, outputs = loop.evaluate(state, step)
    metrics = {k: float(v) for k, v in metrics.items()}
    writer.write(step, metrics, prefix='eval/')
    history[step] = {'step': step, **metrics}
    return step, metrics, outputs

  def history_list():
    return [history[s] for s in sorted(history)]

  cfg_dict = (json.loads(loop.config.to_json_best_effort())
              if hasattr(loop.config, 'to_json_best_effort') else loop.config)
  with checkpointing.Checkpointer(
      os.path.join(loop.workdir, checkpointing.SUBDIR),
      save_interval_steps=loop.checkpoint_every) as ckpt:
    if step < stop:
      logging.info('%s: training steps %d..%d of %d (batch %d)', loop.name,
                   step, stop, loop.num_steps, loop.batch_size)
    progress = Progress(stop, loop.batch_size, name=loop.name)
    rng = jax.random.key(loop.seed + 1)
    eval_steps = set(loop.eval_steps)
    watched = []  # (step, device scalars) since the last checkpoint
    while step < stop:
      batch = sharding.shard_batch(next(it), mesh)
      state, metrics = programs.train_step(state, batch, fold_rng(rng, step),
                                           *step_args)
      step += 1
      if loop.finite_metrics:  # device scalars: no sync per step
        watched.append((step, [metrics[k] for k in loop.finite_metrics]))
      if step % loop.log_every == 0 or step == stop:
        metrics = sharding.to_host(metrics)
        writer.write(step, metrics, prefix='train/')
        progress.update(step, metrics, force=True)
      else:
        progress.update(step)
      if step in eval_steps and loop.evaluate:
        last_eval = evaluate(state, step)
      if step % loop.checkpoint_every == 0 or step == stop:
        _check_finite(loop, watched)
        watched = []
        ckpt.save(step, state, data_iterator=it, config=cfg_dict,
                  history=history_list(), force=step == stop)
    # The final state: evaluated unless just done (or, for an eval step,
    # restored with its evaluation).
    if loop.evaluate and (last_eval is None or last_eval[0] != step) and (
        loop.final_eval or (step in eval_steps and step not in history)):
      last_eval = evaluate(state, step)
  writer.close()
  if jax.process_index() == 0 and history:
    files.write_json(os.path.join(loop.workdir, HISTORY_FILE), history_list())
  return FitResult(state, step, history_list(), last_eval)
