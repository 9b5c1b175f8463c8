"""Plumbing shared by the trainers: state, sharded init and steps, metrics,
progress.

A trainer supplies `init_fn(rng) -> TrainState` (params boxed with logical
axis names) and a pure `step_fn(state, batch, rng) -> (state, metrics)`;
this module turns them into jitted functions over a ('data', 'model') mesh:
state shardings come from `jax.eval_shape` + the logical rules, init runs
under `out_shardings`, the step donates the state.
"""

import json
import os
import time
from typing import Any, Callable

from absl import logging
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np
import tensorboardX

from mmrec import sharding


@flax.struct.dataclass
class TrainState:
  """step, params, optimizer state, and `extra`: model state outside the
  gradient (momentum encoder, queue, batch statistics, ...)."""
  step: jax.Array
  params: Any
  opt_state: Any
  extra: Any = None


def init_state(init_fn: Callable[[jax.Array], TrainState], rng, mesh,
               rules=sharding.DEFAULT_RULES):
  """Runs `init_fn` jitted, straight into its shardings; returns both."""
  shardings = sharding.state_shardings(init_fn, rng, mesh=mesh, rules=rules)
  state = jax.jit(lambda r: nn.unbox(init_fn(r)), out_shardings=shardings)(rng)
  return state, shardings


def jit_step(step_fn, state_shardings, mesh):
  """jit of `step_fn(state, batch, rng) -> (state, metrics)` on the mesh.

  The batch is sharded on 'data'; the state keeps its shardings and is
  donated, so the update happens in place.
  """
  repl = sharding.replicated(mesh)
  return jax.jit(
      step_fn,
      in_shardings=(state_shardings, sharding.batch_sharding(mesh), repl),
      out_shardings=(state_shardings, repl),
      donate_argnums=(0,))


def jit_eval(eval_fn, state_shardings, mesh):
  """jit of `eval_fn(state, batch) -> outputs`, outputs sharded like the batch."""
  return jax.jit(
      eval_fn,
      in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
      out_shardings=sharding.batch_sharding(mesh))


def pad_batch(batch, size):
  """Pads axis 0 of every array to `size` (repeating row 0); returns (batch, n).

  The last batch of an evaluation pass is smaller: padding keeps one compiled
  shape, and the caller drops the padded rows by `n`.
  """
  n = len(next(iter(batch.values())))
  if n > size:
    raise ValueError(f'batch of {n} rows is larger than the pad size {size}')
  if n == size:
    return batch, n
  idx = np.concatenate([np.arange(n), np.zeros(size - n, np.int64)])
  return {k: v[idx] for k, v in batch.items()}, n


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


def to_host(tree):
  """Global arrays -> numpy on every host (metrics, predictions).

  On several hosts a batch-sharded output is not addressable from one
  process, so it is all-gathered (concatenated in process order).
  """
  if jax.process_count() == 1:
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def global_norm(tree):
  return jnp.sqrt(sum(jnp.vdot(x, x).real for x in jax.tree.leaves(tree)))
