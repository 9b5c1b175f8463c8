"""Jobs killed -9 at random points, then rerun (bench_faults.py's
`export_kill`, `nearline_kill`, `convert_kill` rows).

Each job runs as `python -m experiments.main` in its own process. An
uninterrupted run first gives the reference output and the window in which
the job writes (from its first file to its exit); kills then land uniformly
in that window, in chains of `faults_chain` kills (each run a rerun of the
killed one) followed by an uninterrupted rerun, whose output must start (a
serving directory) and equal the reference: byte for byte (the data job;
export's model, store and index) or the served version (near-line).
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import ml_collections
import numpy as np

from experiments import bench_data
from experiments import bench_serving
from experiments.configs import ctr as ctr_config
from experiments.configs import world as world_config
from mmrec import files
from mmrec import train_ctr
from mmrec import vector_table
from mmrec.data import build
from mmrec.serving import layout
from mmrec.serving import state as state_lib

COLUMNS = ('trials', 'acknowledged', 'lost', 'corrupt', '5xx')


def row(**kw):
  """A row of the fault table: COLUMNS, and notes on every failure."""
  out = dict({k: 0 for k in COLUMNS}, notes=[])
  out.update(kw)
  return out



def run_job(args, log, kill_at=None):
  """Runs `python -m experiments.main *args`; kills it -9 after `kill_at`
  seconds. (return code or None if killed, seconds, first-write seconds)."""
  with open(log, 'ab') as f:
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, '-m', 'experiments.main', *args],
                         cwd=bench_serving.REPO, stdout=f, stderr=f)
    try:
      rc = p.wait(timeout=kill_at)
    except subprocess.TimeoutExpired:
      p.send_signal(signal.SIGKILL)
      p.wait()
      rc = None
  return rc, time.perf_counter() - t0


def _first_write(args, log, watch):
  """An uninterrupted run: (seconds until something appears in `watch`,
  seconds in all)."""
  t0 = time.perf_counter()
  first = []

  def poll():
    while not first and not done.is_set():
      parent = os.path.dirname(watch.rstrip('/'))
      base = os.path.basename(watch.rstrip('/'))
      if os.path.isdir(parent) and any(
          n == base or n.startswith(f'.{base}.') for n in os.listdir(parent)):
        first.append(time.perf_counter() - t0)
      time.sleep(0.05)

  done = threading.Event()
  t = threading.Thread(target=poll)
  t.start()
  rc, total = run_job(args, log)
  done.set()
  t.join()
  if rc != 0:
    raise RuntimeError(f'{args}: exit {rc} without a fault; see {log}')
  return (first[0] if first else 0.0), total


def _tree(directory, skip=('jax_cache',), strip=None):
  """{relative path: sha256} of every file under `directory`; `strip`: a
  path that manifests may record, the same for every run."""
  out = {}
  for root, dirs, names in os.walk(directory):
    dirs[:] = sorted(d for d in dirs if d not in skip)
    for n in names:
      p = os.path.join(root, n)
      with open(p, 'rb') as f:
        data = f.read()
      if strip:
        data = data.replace(os.path.abspath(strip).encode(), b'<run>')
      if n.endswith('.json'):  # a manifest's creation time differs
        data = json.dumps(_timeless(json.loads(data)), sort_keys=True).encode()
      out[os.path.relpath(p, directory)] = hashlib.sha256(data).hexdigest()
  return out


def _timeless(obj):
  if isinstance(obj, dict):
    return {k: _timeless(v) for k, v in obj.items() if k != 'created'}
  if isinstance(obj, list):
    return [_timeless(v) for v in obj]
  return obj


def _startable(serving):
  try:
    state_lib.Serving(serving, reload_interval_s=0).close()
    return None
  except Exception as e:  # pylint: disable=broad-except
    return f'{type(e).__name__}: {e}'


def _kill_chains(name, kills, chain, rng, make_args, window, check, out):
  """`kills` kills, in chains of up to `chain` (each run a rerun of the
  killed one; a run that finishes before its kill time ends the chain),
  each chain followed by an uninterrupted rerun, then `check(target)`."""
  result, done = row(), 0
  first, total = window
  # Kill times from a second before the first write to halfway through the
  # rest: a rerun is often faster than the timed run (warm caches), and a
  # run that finishes before its kill is no trial.
  lo, hi = max(0.0, first - 1.0), first + 0.5 * max(0.0, total - first)
  k = 0
  while done < kills and k < 10 * kills:  # reruns may finish before a kill
    target, log = make_args(k)
    killed = 0
    for _ in range(min(chain, kills - done)):
      rc, seconds = run_job(target, log, kill_at=rng.uniform(lo, hi))
      if rc is None:
        killed += 1
        continue
      if rc != 0:
        result['notes'].append(f'chain {k}: a rerun exited {rc} ({log})')
      # It finished before its kill: later kills land within this run's
      # time (the timed run may have been slowed by a loaded machine, and
      # ten runs that all outran their kills left the row with no trial).
      hi = min(hi, 0.9 * seconds)
      lo = min(lo, 0.5 * hi)
      break
    rc, _ = run_job(target, log)
    problem = (f'the final rerun exited {rc} ({log})' if rc != 0
               else check(k))
    result['trials'] += killed
    done += killed
    if problem:
      result['corrupt'] += 1
      result['notes'].append(f'chain {k} ({killed} kills): {problem}')
    k += 1
  out[name] = result


def setup_ctr(root):
  """A tiny world and a 10-step CTR run (batch model for export and
  near-line; validation day held out to replay)."""
  wc = world_config.get_world_config('tiny')
  wc.update(num_users=300, num_items=400)
  world = os.path.join(root, 'world')
  build.run(ml_collections.ConfigDict({'world': wc}), world)
  v = np.random.default_rng(0).normal(size=(wc.num_items, 16))
  vectors = os.path.join(root, vector_table.FILE)
  vector_table.save(vectors, (v / np.linalg.norm(v, axis=1, keepdims=True)
                              ).astype(np.float32), {'method': 'random'})
  c = ctr_config.get_config('id,tiny')
  c.update(data_dir=world, validation=True, vectors_path=vectors,
           max_steps=10)
  ctr = os.path.join(root, 'ctr')
  train_ctr.run(c, ctr)
  return ctr


def _served(serving, strip):
  """The served model version's files ({} if none)."""
  models = os.path.join(serving, layout.MODELS)
  name = files.read_pointer(models)
  return ({'CURRENT': name, **_tree(os.path.join(models, name), strip=strip)}
          if name else {})


def export_kills(config, ctr, root, rng, out):
  def args(k):
    return (['--config=experiments/configs/export.py:tiny',
             f'--config.ctr_workdir={ctr}',
             f'--workdir={os.path.join(root, f"export_{k}")}'],
            os.path.join(root, f'export_{k}.log'))
  base = os.path.join(root, 'export_base')
  window = _first_write(*args('base'), base)
  want = _tree(base, strip=base)

  def check(k):
    d = os.path.join(root, f'export_{k}')
    got = _tree(d, strip=d)  # before a start opens the store for writing
    problem = _startable(d)
    if problem:
      return f'not startable: {problem}'
    diff = sorted(set(got) ^ set(want)) + sorted(
        f for f in set(got) & set(want) if got[f] != want[f])
    return f'differs from an uninterrupted export: {diff[:5]}' if diff else None

  _kill_chains('export_kill', config.faults_export_kills,
               config.faults_chain, rng, args, window, check, out)


def nearline_kills(config, ctr, serving, root, rng, out):
  def args(k):
    d = os.path.join(root, f'nearline_{k}')
    if not os.path.exists(d):
      shutil.copytree(serving, os.path.join(d, 'serving'))
    return (['--config=experiments/configs/nearline.py:tiny',
             f'--config.ctr_workdir={ctr}',
             f'--config.serving_dir={os.path.join(d, "serving")}',
             '--config.replay_split=validation',
             f'--workdir={os.path.join(d, "work")}'],
            os.path.join(root, f'nearline_{k}.log'))
  base_args, log = args('base')
  base = os.path.join(root, 'nearline_base')
  window = _first_write(base_args, log, os.path.join(base, 'work'))
  want = _served(os.path.join(base, 'serving'), base)

  def check(k):
    d = os.path.join(root, f'nearline_{k}', 'serving')
    got = _served(d, os.path.dirname(d))
    problem = _startable(d)
    if problem:
      return f'not startable: {problem}'
    if got != want:
      diff = sorted(f for f in set(got) | set(want)
                    if got.get(f) != want.get(f))
      return f'served version differs from an uninterrupted run: {diff[:5]}'
    return None

  _kill_chains('nearline_kill', config.faults_nearline_kills,
               config.faults_chain, rng, args, window, check, out)


def convert_kills(config, root, rng, out):
  src = os.path.join(root, 'own_data')
  bench_data.write_history_fixture(
      src, config.faults_convert_rows, 20, config.faults_convert_rows // 20,
      config.faults_convert_rows // 10)

  def args(k):
    return (['--config=experiments/configs/data.py:parquet,tiny',
             f'--config.source_dir={src}',
             f'--workdir={os.path.join(root, f"data_{k}", "d")}'],
            os.path.join(root, f'data_{k}.log'))
  base = os.path.join(root, 'data_base', 'd')
  window = _first_write(*args('base'), base)
  want = _tree(base)

  def check(k):
    d = os.path.join(root, f'data_{k}', 'd')
    left = [n for n in os.listdir(os.path.dirname(d)) if n != 'd']
    got = _tree(d)
    diff = sorted(f for f in set(got) | set(want)
                  if got.get(f) != want.get(f))
    if diff:
      return f'files differ from an uninterrupted run: {diff[:5]}'
    return f'left behind: {left}' if left else None

  _kill_chains('convert_kill', config.faults_convert_kills,
               config.faults_chain, rng, args, window, check, out)


def job_kills(config, root, rng, out):
  """The export, near-line and data job rows (config.faults_*_kills)."""
  if config.faults_export_kills or config.faults_nearline_kills:
    ctr = setup_ctr(os.path.join(root, 'setup'))
    if config.faults_export_kills:
      export_kills(config, ctr, root, rng, out)
    if config.faults_nearline_kills:
      exported = os.path.join(root, 'setup', 'serving')
      rc, _ = run_job(['--config=experiments/configs/export.py:tiny',
                       f'--config.ctr_workdir={ctr}', f'--workdir={exported}'],
                      os.path.join(root, 'setup', 'export.log'))
      if rc != 0:
        raise RuntimeError(f'export for near-line: exit {rc} ({root}/setup)')
      nearline_kills(config, ctr, exported, root, rng, out)
  if config.faults_convert_kills:
    convert_kills(config, root, rng, out)
