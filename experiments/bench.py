"""The benchmark job: run named benchmarks, write results.json + results.md.

Each benchmark is a function `(config, workdir) -> dict` of flat, named
measurements; the host is recorded with them so numbers stay comparable.
"""

import functools
import os
import platform
import tempfile
import time

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.configs import scl as scl_config
from mmrec import ctr_model
from mmrec import embed
from mmrec import embedding
from mmrec import files
from mmrec import metrics
from mmrec import optimizer
from mmrec import sharding
from mmrec import train_lib
from mmrec import train_scl
from mmrec import vector_table
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


def _scl_setup(config, width=None):
  """SCL model (default, or both towers at `width`), synthetic batch."""
  wc = config.world
  tax = taxonomy.build(wc, np.random.default_rng(0))
  vocab = text.build_vocab(wc, tax)
  scl = scl_config.get_config()
  scl.batch_size = config.scl_batch_size
  if width:
    for tower in (scl.encoder.image, scl.encoder.text):
      tower.update(width=width, mlp_dim=2 * width)
  model = embed.build_encoder(scl, vocab.size, wc.title_length)
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


def _scl_step_throughput(config, width=None):
  """Seconds per SCL train step and its FLOPs (XLA's cost analysis)."""
  scl, model, batch, _ = _scl_setup(config, width)
  mesh = sharding.make_mesh()
  tx = train_scl.build_optimizer(scl)
  objective = train_scl.objective(scl)
  example = {'image': batch['pos_image'][:1], 'text': batch['pos_title'][:1]}
  progs = train_lib.compile_programs(
      train_scl.init_fn(model, objective, tx, example),
      functools.partial(train_scl.train_step, model=model,
                        objective=objective, tx=tx), mesh)
  state, step = progs.init_state(jax.random.key(0)), progs.train_step
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
  return scl, (time.perf_counter() - t0) / n, flops


def bench_scl_train(config, workdir):
  """SCL train-step throughput of the default encoder; FLOP/s vs a matmul.

  Also the same step with both towers widened (config.scl_widths): on a CPU
  the default 64-wide, 16-token towers spend most of their time outside
  large matmuls, and the sweep shows how the fraction grows with width.
  """
  del workdir
  scl, seconds, flops = _scl_step_throughput(config)
  peak = _matmul_flops_per_s()
  b, h = scl.batch_size, config.world.max_hard_negatives
  images = b * (3 + h)  # query + online & momentum positive + hard negatives
  out = {
      'batch_size': b, 'step_seconds': round(seconds, 4),
      'sessions_per_second': round(b / seconds, 1),
      'images_per_second': round(images / seconds, 1),
      'step_gflop': round(flops / 1e9, 3),
      'achieved_gflop_per_second': round(flops / seconds / 1e9, 2),
      'matmul_gflop_per_second': round(peak / 1e9, 2),
      'fraction_of_matmul': round(flops / seconds / peak, 3),
  }
  for width in config.scl_widths:
    _, seconds, flops = _scl_step_throughput(config, width)
    out[f'width_{width}_images_per_second'] = round(images / seconds, 1)
    out[f'width_{width}_fraction_of_matmul'] = round(flops / seconds / peak, 3)
  return out


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


def _ctr_batch(rng, b, seq_len, num_items, long_len=0):
  def ids(n, *shape):
    return rng.integers(0, n, shape).astype(np.int32)
  lens = rng.integers(0, seq_len + 1, b)
  mask = np.arange(seq_len)[None] >= seq_len - lens[:, None]
  batch = {'user_id': ids(20_000, b), 'age': ids(7, b), 'gender': ids(2, b),
           'city': ids(40, b), 'item_id': ids(num_items, b),
           'category': ids(48, b), 'shop': ids(500, b),
           'seq_item': np.where(mask, ids(num_items, b, seq_len), 0),
           'seq_category': np.where(mask, ids(48, b, seq_len), 0),
           'seq_mask': mask, 'label': ids(2, b)}
  if long_len:
    batch['long_seq_item'] = ids(num_items, b, long_len)
    batch['long_seq_mask'] = np.ones((b, long_len), bool)
  return batch


def _ctr_examples_per_second(variant, batch, vectors, steps):
  """Train-step throughput of the CTR model on a preloaded batch."""
  emb = embedding.EmbeddingConfig(
      num_users=20_000, num_ages=7, num_genders=2, num_cities=40,
      num_items=len(vectors), num_categories=48, num_shops=500, dim=16)
  model = ctr_model.CtrModel(ctr_model.CtrConfig(emb, variant=variant))
  variables = model.init(jax.random.key(0), batch, vectors)
  params, stats = nn.unbox(variables['params']), variables.get(
      'batch_stats', {})
  tx = optimizer.build_optimizer(params)
  opt = tx.init(params)

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
  def step(params, stats, opt, batch, vectors):
    def loss_fn(p):
      logits, new = model.apply({'params': p, 'batch_stats': stats}, batch,
                                vectors, train=True, mutable=['batch_stats'])
      loss = optax.sigmoid_binary_cross_entropy(
          logits, batch['label'].astype(jnp.float32)).mean()
      return loss, new['batch_stats']
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), stats, opt, loss

  batch, vectors = jax.device_put((batch, vectors))
  for _ in range(3):
    params, stats, opt, loss = step(params, stats, opt, batch, vectors)
  loss.block_until_ready()
  t0 = time.perf_counter()
  for _ in range(steps):
    params, stats, opt, loss = step(params, stats, opt, batch, vectors)
  loss.block_until_ready()
  return len(batch['label']) * steps / (time.perf_counter() - t0)


def bench_ctr_train(config, workdir):
  """CTR training examples/s: default model at L=50, and the official
  code's setting (DIN + SimTier over the 50 most recent behaviours, cosine
  pass over a 1000-long history, batch 1000, 16-d ids, 128-d int8 vectors).
  """
  del workdir
  rng = np.random.default_rng(0)
  n_items, b = config.world.num_items, config.ctr_batch_size
  vectors = rng.normal(size=(n_items, 128)).astype(np.float32)
  vectors = vector_table.quantize(
      vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
  out = {'batch_size': b, 'seq_len': 50, 'long_history': config.long_history}
  short = _ctr_batch(rng, b, 50, n_items)
  out['id_examples_per_second'] = round(_ctr_examples_per_second(
      'id', short, vectors, config.timed_steps))
  out['simtier_make_examples_per_second'] = round(_ctr_examples_per_second(
      'simtier_make', short, vectors, config.timed_steps))
  official = _ctr_batch(rng, b, 50, n_items, long_len=config.long_history)
  out['official_setting_examples_per_second'] = round(
      _ctr_examples_per_second('simtier_official', official, vectors,
                               config.timed_steps))
  return out


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
    'world': bench_world,
    'scl_train': bench_scl_train,
    'embed': bench_embed,
    'ctr_train': bench_ctr_train,
    'gauc': bench_gauc,
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
  files.write_json(os.path.join(workdir, 'results.json'), results)
  files.write_text(os.path.join(workdir, 'results.md'), _markdown(results))
  print(_markdown(results))
  return results
