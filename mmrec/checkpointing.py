"""Checkpoints of train state, data-iterator state and config (the only module importing orbax).

Layout, one directory per step under `directory` (usually workdir/checkpoints):

  <step>/state/      the train-state pytree (orbax PyTree, sharded arrays ok)
  <step>/data/       grain iterator state, one JSON file per process
  <step>/config/     the config as JSON
  <step>/history/    the run's evaluations so far (JSON), if it has any
  <step>/integrity/  fingerprints of the above, checked on restore

Orbax writes a step into `<step>.orbax-checkpoint-tmp-*` and renames it when
complete, so a crash mid-save leaves a tmp directory that is never listed (and
is removed when the next Checkpointer opens the directory). A step directory
missing its metadata or integrity record is set aside as `<step>.incomplete-*`
on open: left in place it would be listed and block later saves.

Orbax/tensorstore catch truncated files, but a flipped byte inside an array's
data restores silently as wrong numbers. So every save records a fingerprint
per array (a position-weighted sum of its bits, mod 2^64, independent of the
sharding) and a CRC of the iterator state and config; restore recomputes them
and raises `CheckpointError` naming the step and path on any mismatch.

Several processes (jax.distributed, e.g. `experiments.launch`) save and
restore collectively into one shared directory: every process calls `save`
and `restore` for the same steps; arrays are written shard by shard, the
grain iterator state one file per process, and orbax renames the step when
all are done. Test hook: `MMREC_TEST_KILL_AT_SAVE=<process>:<step>` in the
environment makes that process SIGKILL itself when asked to save `step`, once
its earlier saves are on disk (tests/launch_test.py kills one worker of a
multi-process run this way); nothing else reads or should set it.
"""

import json
import os
import signal
import time
from typing import Any, NamedTuple
import zlib

from absl import logging
from etils import epath
import grain
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

SUBDIR = 'checkpoints'  # Checkpointer(os.path.join(workdir, SUBDIR)).
KILL_AT_SAVE = 'MMREC_TEST_KILL_AT_SAVE'  # Test hook, see module docstring.
_STATE, _DATA, _CONFIG, _HISTORY, _INTEGRITY = (
    'state', 'data', 'config', 'history', 'integrity')
_METADATA = '_CHECKPOINT_METADATA'
_BLOCK = 1 << 22  # Elements per fingerprint block (bounds host memory).


class CheckpointError(RuntimeError):
  """A checkpoint is corrupt, truncated or does not fit the restore target."""


class Checkpointer:
  """Saves and restores (state, data iterator, config) per step.

  Saves are asynchronous: `save` returns once arrays are copied off the
  devices (so the state may be donated afterwards); `wait()` blocks until the
  step is on disk. `latest_step()` lists only steps complete on disk.
  """

  def __init__(self, directory, max_to_keep: int | None = 3,
               save_interval_steps: int = 1, async_save: bool = True,
               read_only: bool = False):
    self.directory = epath.Path(directory)
    if not read_only:
      _set_aside_incomplete(self.directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else max_to_keep,
        save_interval_steps=0 if read_only else save_interval_steps,
        create=not read_only, read_only=read_only,
        cleanup_tmp_directories=not read_only,
        enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={
            _STATE: ocp.PyTreeCheckpointHandler(
                type_handler_registry=_type_handlers()),
            _DATA: grain.checkpoint.CheckpointHandler(),
            _CONFIG: ocp.JsonCheckpointHandler(),
            _HISTORY: ocp.JsonCheckpointHandler(),
            _INTEGRITY: ocp.JsonCheckpointHandler(),
        })

  def save(self, step: int, state: Any, data_iterator=None,
           config: Any = None, history: list | None = None,
           force: bool = False) -> bool:
    """Saves if `force` or due; True if it did.

    Due (orbax's policy): any step while the directory holds no checkpoint,
    else multiples of `save_interval_steps`; steps <= the latest never.
    """
    step = int(step)
    self._maybe_kill_for_test(step)
    if not force and not self._manager.should_save(step):
      return False
    integrity = {_STATE: _fingerprints(state)}
    args = {_STATE: ocp.args.PyTreeSave(state)}
    if data_iterator is not None:
      integrity[_DATA] = _gather_crcs(_crc(data_iterator.get_state()))
      args[_DATA] = grain.checkpoint.CheckpointSave(data_iterator)
    if config is not None:
      config = config.to_dict() if hasattr(config, 'to_dict') else config
      config = json.loads(json.dumps(config, default=str))
      integrity[_CONFIG] = _crc(config)
      args[_CONFIG] = ocp.args.JsonSave(config)
    if history is not None:
      integrity[_HISTORY] = _crc(history)
      args[_HISTORY] = ocp.args.JsonSave(history)
    args[_INTEGRITY] = ocp.args.JsonSave(integrity)
    return self._manager.save(step, args=ocp.args.Composite(**args),
                              force=force)

  def _maybe_kill_for_test(self, step):
    spec = os.environ.get(KILL_AT_SAVE)
    if spec and tuple(map(int, spec.split(':'))) == (jax.process_index(),
                                                     step):
      self.wait()  # The earlier steps' saves reach the disk first.
      logging.warning('%s=%s: killing process %d before saving step %d.',
                      KILL_AT_SAVE, spec, jax.process_index(), step)
      os.kill(os.getpid(), signal.SIGKILL)

  def all_steps(self) -> list[int]:
    return sorted(s for s in self._manager.all_steps()
                  if _is_complete(self.directory / str(s)))

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def restore(self, step: int | None = None, target_state: Any = None,
              data_iterator=None, partial: bool = False) -> tuple[Any, Any]:
    """Returns (state, config dict or None); restores `data_iterator` in place.

    Args:
      step: defaults to the latest complete step.
      target_state: pytree of jax.ShapeDtypeStruct (with `sharding`) or arrays
        giving structure, dtypes and shardings, e.g.
        `jax.eval_shape(jax.jit(init, out_shardings=shardings), ...)`. None
        restores the saved tree as saved (same topology only).
      data_iterator: a grain DatasetIterator over the same pipeline.
      partial: restore only the subtree in `target_state` (e.g. params only,
        for `init_from`).
    """
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f'No complete checkpoint in {self.directory}.')
    path = self.directory / str(step)
    if step not in self.all_steps():
      raise FileNotFoundError(
          f'No complete checkpoint for step {step} at {path}; complete steps: '
          f'{self.all_steps()}.')
    if data_iterator is not None and not (path / _DATA).exists():
      raise ValueError(f'Checkpoint {path} (step {step}) has no data-iterator '
                       'state; pass data_iterator=None.')
    if target_state is None:
      state_args = ocp.args.PyTreeRestore()
    else:
      state_args = ocp.args.PyTreeRestore(
          item=target_state,
          restore_args=ocp.checkpoint_utils.construct_restore_args(
              target_state),
          partial_restore=partial)
    args = {_STATE: state_args, _INTEGRITY: ocp.args.JsonRestore()}
    if data_iterator is not None:
      args[_DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
    if (path / _CONFIG).exists():
      args[_CONFIG] = ocp.args.JsonRestore()
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # Orbax/tensorstore/json raise many types.
      raise CheckpointError(
          f'Cannot restore checkpoint step {step} at {path}: it is corrupt, '
          f'truncated or does not match the restore target. '
          f'{type(e).__name__}: {e}') from e
    self._verify(restored, data_iterator, step, path)
    return restored[_STATE], restored.get(_CONFIG)

  def restore_history(self, step: int) -> list:
    """The eval history saved with `step` ([] if none), checked."""
    path = self.directory / str(step)
    if not (path / _HISTORY).exists():
      return []
    args = {_HISTORY: ocp.args.JsonRestore(),
            _INTEGRITY: ocp.args.JsonRestore()}
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # Orbax/json raise many types.
      raise CheckpointError(f'Cannot read the eval history of checkpoint '
                            f'step {step} at {path}: {e}') from e
    history = restored[_HISTORY]
    if _crc(history) != restored[_INTEGRITY].get(_HISTORY):
      raise CheckpointError(f'Checkpoint step {step} at {path} is corrupt: '
                            'its eval history differs from the one saved.')
    return history

  def _verify(self, restored, data_iterator, step, path):
    """Raises CheckpointError if restored values differ from those saved."""
    integrity = restored[_INTEGRITY]
    bad = []
    saved = integrity[_STATE]
    got = _fingerprints(restored[_STATE])
    common = saved.keys() & got.keys()
    if got and not common:
      logging.warning('Checkpoint %s: restored tree shares no paths with the '
                      'saved one; array fingerprints not checked.', path)
    bad += [f'array {k}' for k in sorted(common) if saved[k] != got[k]]
    if data_iterator is not None:
      crc = integrity[_DATA][jax.process_index()]
      if _crc(data_iterator.get_state()) != crc:
        bad.append('data-iterator state')
    if _CONFIG in integrity and _crc(restored.get(_CONFIG)) != integrity[
        _CONFIG]:
      bad.append('config')
    if bad:
      raise CheckpointError(
          f'Checkpoint step {step} at {path} is corrupt: restored values differ '
          f'from those saved for {", ".join(bad)}.')

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _type_handlers():
  """orbax's standard type handlers, with jax.Arrays saved by one replica.

  Replica-parallel saving (orbax's default except on GPU) has every replica
  write a slice of each replicated array, taking each slice with a jitted
  `lax.slice`: one compile per array shape and device. For our many small
  replicated arrays that made the first save of a process take ~20 s on a
  2-core CPU (60 arrays, 8 devices; 0.3 s without), for no gain in writing.
  """
  th = ocp.type_handlers
  default = th.get_type_handler(jax.Array)
  array = th.ArrayHandler(
      use_replica_parallel=False,
      array_metadata_store=getattr(default, '_array_metadata_store', None))
  return th.create_type_handler_registry(*[
      (ty, array if ty is jax.Array else th.get_type_handler(ty))
      for ty in th.supported_types()])


def restore_from(path, target_state: Any = None, data_iterator=None,
                 partial: bool = False) -> tuple[Any, Any]:
  """`Checkpointer.restore` of one step directory (e.g. from restore_precedence)."""
  path = epath.Path(path)
  with Checkpointer(path.parent, read_only=True) as ckpt:
    return ckpt.restore(int(path.name), target_state, data_iterator, partial)


def read_history(path) -> list:
  """`Checkpointer.restore_history` of one step directory."""
  path = epath.Path(path)
  with Checkpointer(path.parent, read_only=True) as ckpt:
    return ckpt.restore_history(int(path.name))


class RestoreSource(NamedTuple):
  source: str  # 'workdir', 'resume', 'init_from' or 'fresh'.
  path: epath.Path | None  # Step directory to restore, None when fresh.


def restore_precedence(workdir, resume=None, init_from=None) -> RestoreSource:
  """Where a run starts: workdir latest → `resume` → `init_from` → fresh.

  `resume`/`init_from` may name a workdir, its checkpoints/ directory or one
  step directory; a name given but holding no complete checkpoint is an error
  (a typo must not silently start a fresh run).
  """
  own = _latest_step_dir(epath.Path(workdir) / SUBDIR)
  if own is not None:
    return RestoreSource('workdir', own)
  for source, given in (('resume', resume), ('init_from', init_from)):
    if given:
      path = epath.Path(given)
      found = path if _is_complete(path) else _latest_step_dir(
          path / SUBDIR if (path / SUBDIR).is_dir() else path)
      if found is None:
        raise FileNotFoundError(
            f'{source}={given} holds no complete checkpoint.')
      return RestoreSource(source, found)
  return RestoreSource('fresh', None)


def _is_complete(path: epath.Path) -> bool:
  return (path.name.isdigit() and (path / _METADATA).exists()
          and (path / _STATE).is_dir() and (path / _INTEGRITY).is_dir())


def _latest_step_dir(directory: epath.Path) -> epath.Path | None:
  if not directory.is_dir():
    return None
  steps = [int(p.name) for p in ocp.utils.checkpoint_steps_paths(directory)
           if _is_complete(p)]
  return directory / str(max(steps)) if steps else None


def _set_aside_incomplete(directory: epath.Path):
  """Renames step directories orbax would list but that are incomplete."""
  if jax.process_index() == 0 and directory.is_dir():
    for p in ocp.utils.checkpoint_steps_paths(directory):
      if not _is_complete(p):
        aside = p.parent / f'{p.name}.incomplete-{int(time.time())}'
        logging.warning('Setting aside incomplete checkpoint %s as %s.', p,
                        aside)
        p.rename(aside)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('mmrec_checkpointing_set_aside')


def _crc(obj) -> int:
  return zlib.crc32(json.dumps(obj, sort_keys=True).encode())


def _gather_crcs(crc: int) -> list[int]:
  """This process's CRC -> list of all processes' CRCs (by process index)."""
  if jax.process_count() == 1:
    return [crc]
  parts = np.array([crc >> 16, crc & 0xFFFF], np.int32)  # No x64 needed.
  gathered = np.asarray(multihost_utils.process_allgather(parts))
  return [int(hi) << 16 | int(lo) for hi, lo in gathered]


def _block_sum(data: np.ndarray, starts, global_shape) -> int:
  """sum(bits(x_i) * (2 i + 1)) mod 2^64, i the global row-major position."""
  if data.dtype == np.bool_:
    data = data.view(np.uint8)
  bits = data.view(f'u{data.dtype.itemsize}').astype(np.uint64)
  strides = np.cumprod((1,) + tuple(global_shape[:0:-1]))[::-1]
  pos = np.zeros(data.shape, np.uint64)
  for d, (start, stride) in enumerate(zip(starts, strides)):
    shape = [1] * data.ndim
    shape[d] = data.shape[d]
    pos = pos + ((start + np.arange(data.shape[d], dtype=np.uint64))
                 * np.uint64(stride)).reshape(shape)
  return int(np.sum(bits * (pos * np.uint64(2) + np.uint64(1)),
                    dtype=np.uint64))


def _leaf_sum(x) -> int | None:
  """This process's share of a leaf's fingerprint; None for non-arrays."""
  if isinstance(x, jax.Array):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    shards = [(s.index, s.data) for s in x.addressable_shards
              if s.replica_id == 0]  # Each element counted once globally.
  elif isinstance(x, (np.ndarray, np.generic)):
    # Host values are the same on every process: count them once.
    shards = [((), x)] if jax.process_index() == 0 else []
  else:
    return None
  shape = x.shape or (1,)
  total = 0
  for index, data in shards:
    data = np.asarray(data).reshape(-1) if not x.shape else np.asarray(data)
    starts = [sl.start or 0 for sl in index] + [0] * (len(shape) - len(index))
    rows = max(1, _BLOCK // max(1, int(np.prod(data.shape[1:]))))
    for r in range(0, data.shape[0], rows):
      total += _block_sum(data[r:r + rows], [starts[0] + r] + starts[1:],
                          shape)
  return total % (1 << 64)


def _fingerprints(tree) -> dict[str, str]:
  """{leaf path: hex fingerprint} of the array leaves, summed over processes."""
  keys, sums = [], []
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    s = _leaf_sum(x)
    if s is not None:
      keys.append('/'.join(_key_name(k) for k in path))
      sums.append(s)
  if jax.process_count() > 1 and sums:
    # Split into 16-bit pieces: int32 survives any jax x64 setting.
    parts = np.array([[(s >> (16 * j)) & 0xFFFF for j in range(4)]
                      for s in sums], np.int32)
    gathered = np.asarray(multihost_utils.process_allgather(parts)).astype(
        object).sum(axis=0)
    sums = [sum(int(p) << (16 * j) for j, p in enumerate(row)) % (1 << 64)
            for row in gathered]
  return {k: f'{s:016x}' for k, s in zip(keys, sums)}


def _key_name(k) -> str:
  """Path entry -> name, the same whether a node is a dict, dataclass or tuple."""
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)
