"""The benchmark job: run named benchmarks, write results.json + results.md.

Each benchmark is a function `(config, workdir) -> dict` of flat, named
measurements; the host is recorded with them so numbers stay comparable.
The benchmarks live by concept: bench_data.py (world generation, the
own-data converter), bench_train.py (SCL and CTR train steps, the embedding
encoder), bench_serving.py (ANN index, the service under load, near-line),
bench_faults.py (kills, corruption, a full disk: `make faults`), bench_peer.py
(our CTR step beside the authors' MUSE code; optional); GAUC's, a metric's,
is here. A run of some benchmarks keeps the others' earlier results in
results.json (`make faults` beside `make bench`).
"""

import json
import os
import platform
import time

from absl import logging
import jax
import numpy as np

from experiments import bench_data
from experiments import bench_faults
from experiments import bench_peer
from experiments import bench_serving
from experiments import bench_train
from mmrec import files
from mmrec import metrics


def bench_gauc(config, workdir):
  """GAUC on many rows: metrics.gauc vs a pandas groupby reference."""
  del workdir
  import pandas as pd  # pylint: disable=g-import-not-at-top
  from sklearn import metrics as sk  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  n = config.gauc_rows
  users = rng.integers(0, n // 10, n)
  labels = (rng.random(n) < 0.05).astype(np.int32)
  scores = np.round(rng.random(n) + 0.3 * labels, 3).astype(np.float32)
  t0 = time.perf_counter()
  ours = metrics.gauc(labels, scores, users)
  ours_s = time.perf_counter() - t0
  # The reference a researcher would write: per-user sklearn AUC through a
  # pandas groupby, weighted by impressions, on a sample of users (the full
  # run takes too long) and extrapolated by rows.
  df = pd.DataFrame({'u': users, 'y': labels, 's': scores})
  sample = df[df.u < (n // 10) * config.gauc_reference_fraction]
  t0 = time.perf_counter()

  def per_user(g):
    if g.y.min() == g.y.max():
      return None
    return sk.roc_auc_score(g.y, g.s) * len(g)
  parts = sample.groupby('u')[['y', 's']].apply(per_user).dropna()
  ref_s = (time.perf_counter() - t0) * n / max(len(sample), 1)
  weights = sample.groupby('u').size()[parts.index]
  ref = float(parts.sum() / weights.sum())
  sample_ours = metrics.gauc(sample.y.values, sample.s.values, sample.u.values)
  return {
      'rows': n, 'users': int(n // 10),
      'gauc_seconds': round(ours_s, 3),
      'pandas_groupby_seconds_extrapolated': round(ref_s, 1),
      'speedup': round(ref_s / ours_s, 1),
      'reference_sample_rows': int(len(sample)),
      'agreement_on_sample': abs(ref - sample_ours) < 1e-9,
      'gauc': round(float(ours), 6),
  }


BENCHMARKS = {
    'world': bench_data.bench_world,
    'convert': bench_data.bench_convert,
    'scl_train': bench_train.bench_scl_train,
    'embed': bench_train.bench_embed,
    'ctr_train': bench_train.bench_ctr_train,
    'gauc': bench_gauc,
    'ann': bench_serving.bench_ann,
    'serving': bench_serving.bench_serving,
    'nearline': bench_serving.bench_nearline,
    'faults': bench_faults.bench_faults,  # make faults (not in make bench)
    # Optional (not in make bench): needs config.peer.muse_dir and torch.
    'peer': bench_peer.bench_peer,
}


def _host():
  return {
      'platform': platform.platform(), 'python': platform.python_version(),
      'cpu_count': os.cpu_count(), 'jax': jax.__version__,
      'backend': jax.default_backend(),
      'devices': [str(d) for d in jax.devices()],
  }


def _markdown(results):
  lines = [f'# Benchmarks\n\nHost: `{results["host"]["platform"]}`, '
           f'{results["host"]["cpu_count"]} CPUs, jax '
           f'{results["host"]["jax"]} ({results["host"]["backend"]}).\n']
  for name, res in results['benchmarks'].items():
    lines += [f'## {name}\n', '| measurement | value |', '|---|---|']
    lines += [f'| {k} | {v} |' for k, v in res.items()]
    lines.append('')
  return '\n'.join(lines)


def run(config, workdir):
  names = [n.strip() for n in config.benchmarks.split(',') if n.strip()]
  unknown = sorted(set(names) - set(BENCHMARKS))
  if unknown:
    raise ValueError(f'config.benchmarks names unknown benchmarks {unknown}; '
                     f'known: {sorted(BENCHMARKS)}')
  results = {'host': _host(), 'benchmarks': {}}
  path = os.path.join(workdir, 'results.json')
  if os.path.exists(path):
    with open(path) as f:
      results['benchmarks'] = json.load(f).get('benchmarks', {})
  for name in names:
    logging.info('benchmark %s ...', name)
    # The machine may be shared: its load beside each entry says how far
    # the numbers can be trusted. Not only absolute ones: two programs under
    # the same load need not slow alike (MUSE's torch step ran 5-7x slower at
    # load 3.5-8 on 2 cores, ours 2x, so their ratio doubled; docs/ctr.md).
    load = os.getloadavg()[0]
    if load > 0.5 * os.cpu_count():
      logging.warning('benchmark %s starts at load average %.1f on %d CPUs: '
                      'its numbers, ratios included, may reflect the load',
                      name, load, os.cpu_count())
    results['benchmarks'][name] = BENCHMARKS[name](config, workdir)
    results['benchmarks'][name].update(
        load_average_1min_start=round(load, 2),
        load_average_1min_end=round(os.getloadavg()[0], 2))
    logging.info('benchmark %s: %s', name, results['benchmarks'][name])
  files.write_json(path, results)
  files.write_text(os.path.join(workdir, 'results.md'), _markdown(results))
  print(_markdown(results))
  return results
