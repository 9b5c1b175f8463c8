"""Atomic writes: a reader sees the old file (directory) or the whole new one.

Every result file (summaries, evaluations, tables) is written to a temporary
name in the same directory and renamed over the target, so an interrupted job
never leaves a partial file that looks complete. Directories (a world, a
converted dataset, a store version, a model version) are built aside and
renamed into place (`build_aside`); a version directory is chosen by a
one-line pointer file renamed over the old one (`write_pointer`).
"""

import json
import math
import os
import shutil
import socket
import tempfile
import time

import numpy as np


def write_with(path, write_fn):
  """Calls `write_fn(tmp_path)`, then renames the result to `path`."""
  tmp = f'{path}.tmp-{os.getpid()}'
  try:
    write_fn(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


# Aside directories of builds on another host (a shared file system, where
# a process id says nothing) are stale once untouched for this long.
FOREIGN_STALE_S = 7 * 86400
_live = set()  # aside directories this process is building now


def _aside_prefix(base, kind):
  return f'.{base}.{kind}-{socket.gethostname()}-'


def _owner_dead(name, prefix):
  """True if the aside directory `name` (prefix + pid-XXXX) was made by a
  process of this host that no longer runs."""
  pid = name[len(prefix):].split('-', 1)[0]
  if not pid.isdigit():
    return False
  if int(pid) == os.getpid():  # an earlier run that had this pid (containers)
    return True
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return True
  except PermissionError:  # another user's live process
    return False
  return False


def clean_stale(target):
  """Removes aside directories of `target` left by killed builds: made on
  this host by a process that is gone, or on another host and untouched for
  FOREIGN_STALE_S. A live build's (here or elsewhere) is never removed.
  Returns the names removed."""
  parent = os.path.dirname(os.path.abspath(target))
  base = os.path.basename(target)
  if not os.path.isdir(parent):
    return []
  removed = []
  for name in sorted(os.listdir(parent)):
    path = os.path.join(parent, name)
    if path in _live:
      continue
    for kind in ('building', 'old'):
      if not name.startswith(f'.{base}.{kind}-'):
        continue
      ours = _aside_prefix(base, kind)
      try:
        age = time.time() - os.path.getmtime(path)
      except FileNotFoundError:
        break
      if (_owner_dead(name, ours) if name.startswith(ours)
          else age > FOREIGN_STALE_S):
        shutil.rmtree(path, ignore_errors=True)
        removed.append(name)
      break
  return removed


def build_aside(target, fill, replace=False):
  """`fill(tmp)` a new directory beside `target`, then rename it to `target`.

  On any failure the half-built directory is removed: a reader sees no
  directory or a whole one. `target` must be absent or empty, unless
  `replace`: then one already there is swapped out only once the new one is
  whole (and removed after). A kill -9 leaves its aside directory: the next
  build of `target` removes it (`clean_stale`); the names carry host and pid.
  """
  parent = os.path.dirname(os.path.abspath(target))
  os.makedirs(parent, exist_ok=True)
  base = os.path.basename(target)
  clean_stale(target)
  tmp = tempfile.mkdtemp(
      dir=parent, prefix=f'{_aside_prefix(base, "building")}{os.getpid()}-')
  _live.add(tmp)
  old = None
  try:
    fill(tmp)
    if os.path.isdir(target):
      if replace:
        old = tempfile.mkdtemp(
            dir=parent, prefix=f'{_aside_prefix(base, "old")}{os.getpid()}-')
        _live.add(old)
        os.rename(target, os.path.join(old, base))
      else:
        os.rmdir(target)  # empty (checked by the caller)
    os.rename(tmp, target)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  finally:
    _live.discard(tmp)
    if old:
      shutil.rmtree(old, ignore_errors=True)
      _live.discard(old)


POINTER = 'CURRENT'


def write_pointer(directory, name, pointer=POINTER):
  """Points `directory/pointer` at `name` (one line), durably and atomically:
  readers see the old name or the new one."""
  write_text(os.path.join(directory, pointer), name + '\n', durable=True)


def read_pointer(directory, pointer=POINTER):
  """The name `directory/pointer` holds, or None if there is no pointer."""
  path = os.path.join(directory, pointer)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return f.read().strip()


def write_npz(path, arrays):
  """A dict of numpy arrays as an .npz, atomically."""
  def write(tmp):
    with open(tmp, 'wb') as f:
      np.savez(f, **arrays)
  write_with(path, write)


def write_text(path, text, durable=False):
  """`text` at `path`, atomically; `durable`: synced to disk before the
  rename (a commit marker or pointer that must survive a power cut)."""
  def write(tmp):
    with open(tmp, 'w') as f:
      f.write(text)
      if durable:
        f.flush()
        os.fsync(f.fileno())
  write_with(path, write)


def write_json(path, obj, durable=False, **kwargs):
  write_text(path, json.dumps(obj, indent=1, **kwargs), durable)


def finished(workdir, result_files):
  """The result of a finished run in `workdir`, or None (run it).

  The one rule every sweep skips runs by: a run is finished when all of its
  `result_files` exist (the first is its JSON result; the others are what
  readers of the result need, e.g. per-row predictions for paired
  bootstraps) and the result does not say `complete: false` (a run stopped
  early on purpose). A run from before a companion file existed runs again:
  it resumes from its final checkpoint, it is not retrained.
  """
  paths = [os.path.join(workdir, f) for f in result_files]
  if not all(os.path.exists(p) for p in paths):
    return None
  with open(paths[0]) as f:
    result = json.load(f)
  return result if result.get('complete', True) else None


def json_safe(x):
  """Python scalars, NaN/inf -> None: results hold only finite numbers."""
  if isinstance(x, dict):
    return {str(k): json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [json_safe(v) for v in x]
  if isinstance(x, (bool, np.bool_)):
    return bool(x)
  if isinstance(x, (int, np.integer)):
    return int(x)
  if isinstance(x, (float, np.floating)):
    return float(x) if math.isfinite(x) else None
  return x
