"""Resumable stages keyed by config hash (the pipeline of reproduce.py).

A stage is a directory `<workdir>/<name>-<hash>/`: `Pipeline.stage` runs its
function there unless the stage's `stage.json` marker exists, and records
what ran or was skipped, with the seconds, in `<workdir>/progress.json`.
`config_hash` keys a stage on the config subtrees that produced it (and the
hashes of the stages it reads), without the keys the pipeline sets itself;
`sub` makes the editable config copies the stages run with.
"""

import hashlib
import json
import os
import time

from absl import logging
import ml_collections

from mmrec import files

MARKER = 'stage.json'
PROGRESS_FILE = 'progress.json'
# Set by the pipeline (paths) or shared (the world): not part of a stage key.
_UNHASHED = frozenset({'world', 'data_dir', 'vectors_path', 'job'})


def _plain(tree):
  """A config (sub)tree as plain JSON-able data, pipeline-set keys dropped."""
  if isinstance(tree, ml_collections.ConfigDict):
    tree = tree.to_dict()
  if isinstance(tree, dict):
    return {k: _plain(v) for k, v in tree.items() if k not in _UNHASHED}
  if isinstance(tree, (list, tuple)):
    return [_plain(v) for v in tree]
  return tree


def config_hash(*parts):
  blob = json.dumps([_plain(p) for p in parts], sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:10]


def read_json(path):
  with open(path) as f:
    return json.load(f)


class Pipeline:
  """Runs or skips stages; records what happened in progress.json."""

  def __init__(self, workdir):
    self.workdir, self.t0 = workdir, time.time()
    self.progress = {'stages': {}, 'wall_seconds': None}

  def stage(self, name, h, config, fn):
    """`fn(stage_dir)` unless the stage's marker exists; returns the dir."""
    path = os.path.join(self.workdir, f'{name}-{h}')
    marker = os.path.join(path, MARKER)
    if os.path.exists(marker):
      seconds = read_json(marker)['seconds']
      logging.info('stage %s: finished before in %s (%.0fs of compute); '
                   'skipping', name, path, seconds)
      self.record(name, 'skipped', path, h, seconds)
      return path
    logging.info('stage %s: running in %s', name, path)
    t0 = time.time()
    os.makedirs(path, exist_ok=True)
    fn(path)
    seconds = time.time() - t0
    files.write_json(marker, {'stage': name, 'hash': h, 'seconds': seconds,
                              'config': _plain(config)})
    logging.info('stage %s: done in %.1fs (%.0fs since start)', name, seconds,
                 time.time() - self.t0)
    self.record(name, 'ran', path, h, seconds)
    return path

  def record(self, name, status, path, h, seconds):
    self.progress['stages'][name] = {'status': status, 'dir': path, 'hash': h,
                                     'seconds': seconds}
    files.write_json(os.path.join(self.workdir, PROGRESS_FILE), self.progress)

  def finish(self):
    self.progress['wall_seconds'] = time.time() - self.t0
    files.write_json(os.path.join(self.workdir, PROGRESS_FILE), self.progress)
    return self.progress['wall_seconds']


def sub(tree, **fields):
  """A resolved, editable copy of a config subtree with fields set."""
  c = tree.copy_and_resolve_references()
  c.unlock()
  for k, v in fields.items():
    setattr(c, k, v)
  return c
