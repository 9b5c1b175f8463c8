"""Atomic file writes: a reader sees the old file or the whole new one.

Every result file (summaries, evaluations, tables) is written to a temporary
name in the same directory and renamed over the target, so an interrupted job
never leaves a partial file that looks complete.
"""

import json
import math
import os

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


def write_npz(path, arrays):
  """A dict of numpy arrays as an .npz, atomically."""
  def write(tmp):
    with open(tmp, 'wb') as f:
      np.savez(f, **arrays)
  write_with(path, write)


def write_text(path, text):
  def write(tmp):
    with open(tmp, 'w') as f:
      f.write(text)
  write_with(path, write)


def write_json(path, obj, **kwargs):
  write_text(path, json.dumps(obj, indent=1, **kwargs))


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
