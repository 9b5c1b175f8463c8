"""The benchmark job: run named benchmarks, write results.json + results.md.

Each benchmark is a function `(config, workdir) -> dict` of flat, named
measurements; the host is recorded with them so numbers stay comparable.
"""

import json
import os
import platform
import tempfile
import time

from absl import logging
import jax

from mmrec.data import builders
from mmrec.data import world as world_lib


def bench_world(config, workdir):
  """Generation and array_record writing time of the configured world."""
  del workdir
  t0 = time.perf_counter()
  world = world_lib.generate(config.world)
  generate_s = time.perf_counter() - t0
  with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    builders.write(world, tmp)
    write_s = time.perf_counter() - t0
  n = len(world.impressions['label'])
  return {
      'items': config.world.num_items, 'users': config.world.num_users,
      'impressions': n,
      'generate_seconds': round(generate_s, 2),
      'write_seconds': round(write_s, 2),
      'impressions_written_per_second': round(n / write_s),
  }


BENCHMARKS = {
    'world': bench_world,
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
  for name in names:
    logging.info('benchmark %s ...', name)
    results['benchmarks'][name] = BENCHMARKS[name](config, workdir)
    logging.info('benchmark %s: %s', name, results['benchmarks'][name])
  for fname, text in (('results.json', json.dumps(results, indent=1)),
                      ('results.md', _markdown(results))):
    path = os.path.join(workdir, fname)
    with open(path + '.tmp', 'w') as f:
      f.write(text)
    os.replace(path + '.tmp', path)
  print(_markdown(results))
  return results
