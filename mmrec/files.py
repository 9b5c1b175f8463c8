"""Atomic file writes: a reader sees the old file or the whole new one.

Every result file (summaries, evaluations, tables) is written to a temporary
name in the same directory and renamed over the target, so an interrupted job
never leaves a partial file that looks complete.
"""

import json
import os


def write_with(path, write_fn):
  """Calls `write_fn(tmp_path)`, then renames the result to `path`."""
  tmp = f'{path}.tmp-{os.getpid()}'
  try:
    write_fn(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path, text):
  def write(tmp):
    with open(tmp, 'w') as f:
      f.write(text)
  write_with(path, write)


def write_json(path, obj, **kwargs):
  write_text(path, json.dumps(obj, indent=1, **kwargs))
