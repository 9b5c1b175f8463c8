"""The benchmark job: run named benchmarks, write results.json + results.md.

Each benchmark is a function `(config, workdir) -> dict` of flat, named
measurements; the host is recorded with them so numbers stay comparable.
"""

import functools
import json
import os
import platform
import tempfile
import time

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from experiments.configs import scl as scl_config
from mmrec import embed
from mmrec import sharding
from mmrec import train_lib
from mmrec import train_scl
from mmrec.data import builders
from mmrec.data import taxonomy
from mmrec.data import text
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


def _matmul_flops_per_s(n=2048, repeats=10):
  """FLOP/s of a large float32 matmul on the default device: the roofline."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(repeats):
    out = f(a)
  out.block_until_ready()
  return 2 * n**3 * repeats / (time.perf_counter() - t0)


def _scl_setup(config):
  """Default SCL model, state and a synthetic batch of the world's shapes."""
  wc = config.world
  tax = taxonomy.build(wc, np.random.default_rng(0))
  vocab = text.build_vocab(wc, tax)
  scl = scl_config.get_config()
  scl.batch_size = config.scl_batch_size
  model = train_scl.build_model(scl, vocab.size, wc.title_length)
  rng = np.random.default_rng(0)
  b, h, s, t = scl.batch_size, wc.max_hard_negatives, wc.image_size, (
      wc.title_length)
  img = lambda *shape: rng.integers(0, 256, shape + (s, s, 3), np.uint8)
  tok = lambda *shape: rng.integers(1, vocab.size, shape + (t,), np.int32)
  batch = {
      'query_is_image': rng.random(b) < 0.5, 'query_image': img(b),
      'query_text': tok(b), 'pos_item': rng.integers(0, wc.num_items, b),
      'pos_image': img(b), 'pos_title': tok(b),
      'neg_item': rng.integers(0, wc.num_items, (b, h)),
      'neg_image': img(b, h), 'neg_title': tok(b, h),
      'neg_mask': np.ones((b, h), bool)}
  return scl, model, batch, vocab


def bench_scl_train(config, workdir):
  """SCL train-step throughput of the default encoder; FLOP/s vs a matmul."""
  del workdir
  scl, model, batch, _ = _scl_setup(config)
  mesh = sharding.make_mesh()
  tx = train_scl.make_optimizer(scl)
  example = {'image': batch['pos_image'][:1], 'text': batch['pos_title'][:1]}
  state, shardings = train_lib.init_state(
      train_scl._init_fn(model, scl, tx, example), jax.random.key(0), mesh)  # pylint: disable=protected-access
  step = train_lib.jit_step(functools.partial(
      train_scl.train_step, model=model, config=scl, tx=tx), shardings, mesh)
  x = sharding.shard_batch(batch, mesh)
  rng = jax.random.key(1)
  flops = step.lower(state, x, rng).compile().cost_analysis()
  flops = (flops[0] if isinstance(flops, list) else flops).get('flops', 0.0)
  for _ in range(3):
    state, m = step(state, x, rng)
  jax.block_until_ready(m)
  n = config.timed_steps
  t0 = time.perf_counter()
  for _ in range(n):
    state, m = step(state, x, rng)
  jax.block_until_ready(m)
  seconds = (time.perf_counter() - t0) / n
  peak = _matmul_flops_per_s()
  b, h = scl.batch_size, config.world.max_hard_negatives
  images = b * (3 + h)  # query + online & momentum positive + hard negatives
  return {
      'batch_size': b, 'step_seconds': round(seconds, 4),
      'sessions_per_second': round(b / seconds, 1),
      'images_per_second': round(images / seconds, 1),
      'step_gflop': round(flops / 1e9, 3),
      'achieved_gflop_per_second': round(flops / seconds / 1e9, 2),
      'matmul_gflop_per_second': round(peak / 1e9, 2),
      'fraction_of_matmul': round(flops / seconds / peak, 3),
  }


def bench_embed(config, workdir):
  """Embedding-job throughput and single-item latency (warm)."""
  del workdir
  scl, model, batch, vocab = _scl_setup(config)
  del vocab
  params = nn.unbox(model.init(jax.random.key(0), batch['pos_image'][:1],
                               batch['pos_title'][:1])['params'])
  encoder = embed.Encoder(model, params, sharding.make_mesh(),
                          batch_size=config.embed_batch_size)
  n = config.embed_items
  reps = -(-n // len(batch['pos_image']))
  images = np.tile(batch['pos_image'], (reps, 1, 1, 1))[:n]
  titles = np.tile(batch['pos_title'], (reps, 1))[:n]
  encoder.items(images[:encoder.batch_size], titles[:encoder.batch_size])
  t0 = time.perf_counter()
  encoder.items(images, titles)
  items_s = n / (time.perf_counter() - t0)
  for i in range(5):
    encoder.encode_one(images[i], titles[i])
  lat = []
  for i in range(config.latency_calls):
    t0 = time.perf_counter()
    encoder.encode_one(images[i % n], titles[i % n])
    lat.append(time.perf_counter() - t0)
  lat = np.array(lat) * 1e3
  del scl
  return {
      'items': n, 'batch_size': encoder.batch_size,
      'items_per_second': round(items_s, 1),
      'new_item_latency_ms_p50': round(float(np.percentile(lat, 50)), 3),
      'new_item_latency_ms_p99': round(float(np.percentile(lat, 99)), 3),
  }


BENCHMARKS = {
    'world': bench_world,
    'scl_train': bench_scl_train,
    'embed': bench_embed,
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
