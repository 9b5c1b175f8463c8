"""Serving benchmarks (part of `make bench`, see bench.py).

- `ann`: the nearest-neighbour index on generated catalogue vectors (items
  around concepts, ~20 per concept, as the world's): build time, recall@10
  against exact search, single-query search and add-one latency, size.
- `nearline`: a batch CTR model trained without the last training day, the
  service started on its export, and the near-line trainer replaying that
  day as segments: each segment's time from the trainer taking it to the
  service serving its version (a client polls /health), and the test-day
  AUC / GAUC of the frozen and the near-line model.
- `serving`: the scoring service in its own process on loopback, under a
  fixed-concurrency load of /score requests (100 candidates, 50 behaviours)
  while new items arrive (/items, each then scored: time-to-servable) and a
  new model version is published mid-load (hot reload; every request must
  succeed). The model is the real-size CTR model of the default world,
  untrained (latency does not depend on the weights' values).
"""

import concurrent.futures
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import faiss
import flax.linen as nn
import httpx
import jax
import ml_collections
import numpy as np

from experiments.configs import ctr as ctr_config
from experiments.configs import export as export_config
from experiments.configs import nearline as nearline_config
from experiments.configs import scl as scl_config
from experiments.configs import world as world_config
from mmrec import ctr_data
from mmrec import ctr_model
from mmrec import files
from mmrec import int8
from mmrec import train_ctr
from mmrec import train_scl
from mmrec import vector_table
from mmrec.data import build
from mmrec.serving import ann_index
from mmrec.serving import export
from mmrec.serving import layout
from mmrec.serving import model_export
from mmrec.serving import nearline
from mmrec.serving import service

# httpx logs every request at INFO: under load that is the client's main
# cost (and a flood in the log), so the measured latency included it.
logging.getLogger('httpx').setLevel(logging.WARNING)

# The near-line trainer's subprocess runs `-m experiments.main` from here.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def catalogue(n, dim, seed=0, per_concept=20, noise=0.6, chunk=100_000):
  """(n, dim) int8 unit vectors: concept centre + noise, as the store holds."""
  rng = np.random.default_rng(seed)
  concepts = max(1, n // per_concept)
  centres = rng.normal(size=(concepts, dim)).astype(np.float32)
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  out = np.empty((n, dim), np.int8)
  for lo in range(0, n, chunk):
    m = min(chunk, n - lo)
    e = rng.normal(size=(m, dim)).astype(np.float32)
    x = centres[rng.integers(0, concepts, m)] + noise * e / np.linalg.norm(
        e, axis=1, keepdims=True)
    out[lo:lo + m] = int8.quantize(ann_index.normalise(x))
  return out


def _ms(values, q):
  return round(float(np.percentile(np.asarray(values) * 1e3, q)), 3)


def bench_ann(config, workdir):
  del workdir
  n, dim = config.ann_items, config.ann_dim
  t0 = time.perf_counter()
  x = catalogue(n, dim)
  gen_s = time.perf_counter() - t0
  rng = np.random.default_rng(1)
  queries = x[rng.integers(0, n, config.ann_queries)]  # similar items
  flat = faiss.IndexFlatIP(dim)
  flat.add(ann_index.normalise(x))
  _, exact = flat.search(ann_index.normalise(queries), 10)
  del flat
  out = {'items': n, 'dim': dim, 'generate_seconds': round(gen_s, 1)}
  for kind in [k for k in config.ann_kinds.split(',') if k]:
    t0 = time.perf_counter()
    index = ann_index.AnnIndex.build(x, kind=kind)
    build_s = time.perf_counter() - t0
    ann_index.set_threads(1)  # single queries and adds, as the service
    knob = {'ivf': 'nprobe', 'hnsw': 'ef_search'}.get(kind)
    default = index.params.get(knob)
    for value in (config.ann_search_values if knob else [None]):
      if knob:
        index.params[knob] = value
        index._apply_search_params()  # pylint: disable=protected-access
      _, found = index.search(queries, 10)
      search = []
      for q in queries[:200]:
        t0 = time.perf_counter()
        index.search(q, 10)
        search.append(time.perf_counter() - t0)
      tag = f'{kind}_{knob}_{value}' if knob else kind
      out.update({
          f'{tag}_recall_at_10': round(ann_index.recall_at_k(found, exact),
                                       4),
          f'{tag}_search_p50_ms': _ms(search, 50),
          f'{tag}_search_p99_ms': _ms(search, 99)})
    if knob:
      index.params[knob] = default
      index._apply_search_params()  # pylint: disable=protected-access
    new = catalogue(config.ann_adds, dim, seed=2)
    adds = []
    for i, v in enumerate(new):
      t0 = time.perf_counter()
      index.add(v[None], [n + i])
      adds.append(time.perf_counter() - t0)
    out.update({
        f'{kind}_params': str(index.params),
        f'{kind}_build_seconds': round(build_s, 1),
        f'{kind}_add_one_p50_ms': _ms(adds, 50),
        f'{kind}_add_one_p99_ms': _ms(adds, 99),
        f'{kind}_size_mb': round(len(faiss.serialize_index(index.index)) /
                                 2**20, 1)})
    ann_index.set_threads(os.cpu_count())
  return out


# --------------------------------------------------------------------------
# The service under load.


def start_service(directory, timeout_s=300, **popen):
  """uvicorn in its own process on a free loopback port; returns (process,
  url) once /health answers. `popen`: more subprocess.Popen arguments (a
  preexec_fn, stderr)."""
  port = _free_port()
  env = dict(os.environ, **{service.ENV_DIR: directory})
  server = subprocess.Popen(
      [sys.executable, '-m', 'uvicorn', '--factory',
       'mmrec.serving.service:app_from_env', '--host', '127.0.0.1', '--port',
       str(port), '--log-level', 'warning'], env=env, cwd=REPO, **popen)
  url = f'http://127.0.0.1:{port}'
  t0 = time.perf_counter()
  while True:
    try:
      if httpx.get(f'{url}/health').status_code == 200:
        return server, url
    except httpx.TransportError:
      pass
    if server.poll() is not None or time.perf_counter() - t0 > timeout_s:
      server.kill()
      server.wait()
      raise RuntimeError(
          f'the service did not start (exit {server.returncode})')
    time.sleep(0.2)


def bench_nearline(config, workdir):
  root = os.path.join(workdir, 'nearline_bench')
  shutil.rmtree(root, ignore_errors=True)
  tiny = 'tiny' if config.ctr_tiny else None
  world_dir = os.path.join(root, 'world')
  wc = world_config.get_world_config(tiny)
  wc.update(dict(config.nearline_world))
  build.run(ml_collections.ConfigDict({'world': wc}), world_dir)
  raw = scl_config.get_config('raw_pixels' + (',tiny' if tiny else ''))
  raw.data_dir = world_dir
  train_scl.run(raw, os.path.join(root, 'raw'))
  batch = ctr_config.get_config('id' + (',tiny' if tiny else ''))
  batch.update(data_dir=world_dir, validation=True, vectors_path=os.path.join(
      root, 'raw', vector_table.FILE))
  batch_dir, serving = os.path.join(root, 'batch'), os.path.join(root,
                                                                 'serving')
  train_ctr.run(batch, batch_dir)
  export.export(export_config.get_config(tiny), batch_dir, serving)
  server, url = start_service(serving)
  live, stop = [], threading.Event()

  def watch():  # when each version went live
    with httpx.Client(base_url=url, timeout=10) as c:
      while not stop.is_set():
        v = c.get('/health').json()['model_version']
        if not live or live[-1][1] != v:
          live.append((time.time(), v))
        time.sleep(0.05)

  nl_dir = os.path.join(root, 'nearline')
  result = {}

  def train():
    """The near-line trainer in its own process at a lower priority, as one
    would run it beside a service on the same machine; returns once the
    service serves its last version."""
    args = [sys.executable, '-m', 'experiments.main',
            '--config=experiments/configs/nearline.py' + (':tiny' if tiny
                                                          else ''),
            f'--config.ctr_workdir={batch_dir}',
            f'--config.serving_dir={serving}',
            '--config.replay_split=validation', '--config.evaluate=True',
            f'--config.segment_records={config.nearline_segment_records}',
            f'--workdir={nl_dir}']
    subprocess.run(args, check=True, cwd=REPO,
                   preexec_fn=lambda: os.nice(config.nearline_nice))
    with open(os.path.join(nl_dir, nearline.RESULT_FILE)) as f:
      result.update(json.load(f))
    _wait_for_version(url, f'v{result["final_step"]}')

  watcher = threading.Thread(target=watch)
  watcher.start()
  try:
    if config.nearline_load_concurrency:
      sizes = ctr_data.sizes(wc)
      # The world declares no bags.
      sizes['schema'] = layout.serving_schema(sizes, {}, {})
      load = _load(config, url, sizes, wc.seq_len, during=train,
                   concurrency=config.nearline_load_concurrency,
                   min_requests=0)
    else:
      train()
      load = {}
  finally:
    stop.set()
    watcher.join()
    server.terminate()
    server.wait(timeout=30)
  went = {v: t for t, v in reversed(live)}
  to_live = [went[f'v{e["global_step"]}'] - e['started_at']
             for e in result['segments']
             if e['steps'] and f'v{e["global_step"]}' in went]
  out = {'segments': len(result['segments']),
         'segment_records': config.nearline_segment_records,
         'versions_served': ','.join(v for _, v in live)}
  if to_live:  # the first segment also compiles the train step
    out.update(first_segment_to_serving_seconds=round(to_live[0], 2),
               segment_to_serving_p50_seconds=round(float(np.median(
                   to_live[1:] or to_live)), 2),
               segment_to_serving_max_seconds=round(max(to_live[1:] or
                                                        to_live), 2))
  for which in ('frozen', 'nearline'):
    for m in ('auc', 'gauc'):
      out[f'{which}_test_{m}'] = round(result[which][m], 4)
  out.update({f'under_load_{k}': v for k, v in load.items()})
  return out


def _wait_for_version(url, version, timeout_s=60):
  """Until the service at `url` serves `version` (its /health says so)."""
  deadline = time.time() + timeout_s
  with httpx.Client(base_url=url, timeout=10) as c:
    while c.get('/health').json()['model_version'] != version:
      if time.time() > deadline:
        raise RuntimeError(f'the service did not load {version} in '
                           f'{timeout_s} s')
      time.sleep(0.05)


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def build_serving_dir(directory, config):
  """An untrained real-size model (v1, and v2 to reload) + store + index."""
  wc = config.world
  sizes = ctr_data.sizes(wc)
  c = ctr_config.get_config('simtier_official' +
                            (',tiny' if config.ctr_tiny else ''))
  model = ctr_model.build_model(c, sizes)
  rng = np.random.default_rng(0)
  dim = config.serving_dim
  table = catalogue(sizes['num_items'], dim)
  schema = layout.serving_schema(sizes, {}, {})  # the world: no bags
  attrs = np.stack([rng.integers(0, size, sizes['num_items'])
                    for size in schema['item'].values()], 1)
  store = layout.build_store(directory, table, attrs,
                             layout.item_attributes(schema),
                             {'table_sha256': 'bench', 'method': 'generated'})
  L = wc.seq_len
  emb = model.config.embedding
  example = {f: np.zeros((2,), np.int32)
             for f in emb.user_fields + emb.target_fields}
  example.update({f: np.zeros((2, L), np.int32) for f in emb.seq_fields})
  example['seq_mask'] = np.ones((2, L), bool)
  variables = jax.tree.map(np.asarray, nn.unbox(model.init(
      jax.random.key(0), example, table)))
  models = os.path.join(directory, layout.MODELS)
  for step in (1, 2):
    model_export.write_version(
        models, step, model, variables, variant=c.variant, sizes=sizes,
        schema=schema, seq_len=L, store=store, uses_vectors=True,
        capacity=sizes['num_items'] + config.serving_new_items + 1024,
        buckets=config.serving_buckets)
  files.write_pointer(models, 'v1')
  return dict(sizes, schema=schema)


def bench_serving(config, workdir):
  directory = os.path.join(workdir, 'serving_bench')
  shutil.rmtree(directory, ignore_errors=True)
  sizes = build_serving_dir(directory, config)
  t0 = time.perf_counter()
  server, url = start_service(directory)
  try:
    start_s = time.perf_counter() - t0

    def reload():  # a new version published mid-load: hot reload
      time.sleep(config.serving_reload_after_s)
      files.write_pointer(os.path.join(directory, layout.MODELS), 'v2')
      _wait_for_version(url, 'v2')
      time.sleep(config.serving_reload_after_s)  # load on the new version

    return dict(_load(config, url, sizes, config.world.seq_len,
                      during=reload, concurrency=config.serving_concurrency,
                      min_requests=config.serving_requests),
                service_start_seconds=round(start_s, 1))
  finally:
    server.terminate()
    server.wait(timeout=30)


def _load(config, url, sizes, L, during, concurrency, min_requests):
  """/score requests from `concurrency` clients while new items arrive and
  `during()` runs (a publication); stops once `during` has returned and
  at least `min_requests` were sent. Latencies, failures, versions seen and
  new items' time to servable."""
  rng = np.random.default_rng(0)
  n_items = sizes['num_items']
  cands = config.serving_candidates

  def request():
    user = {f: int(rng.integers(size))
            for f, size in sizes['schema']['user'].items()}
    return {'user': dict(user_id=int(rng.integers(sizes['num_users'])),
                         **user),
            'history': rng.integers(0, n_items, L).tolist(),
            'candidates': rng.integers(0, n_items, cands).tolist()}

  bodies = [request() for _ in range(256)]
  with httpx.Client(base_url=url, timeout=60) as c:  # warm the path
    for b in bodies[:20]:
      c.post('/score', json=b).raise_for_status()
  latencies, statuses, versions = [], [], set()
  lock = threading.Lock()
  published, done = threading.Event(), threading.Event()

  def client():
    with httpx.Client(base_url=url, timeout=60) as c:
      while True:
        with lock:
          i = len(statuses)
          if published.is_set() and i >= min_requests:
            return
        t0 = time.perf_counter()
        r = c.post('/score', json=bodies[i % len(bodies)])
        dt = time.perf_counter() - t0
        with lock:
          statuses.append(r.status_code)
          if r.status_code == 200:
            latencies.append(dt)
            versions.add(r.json()['model_version'])

  servable, new_ids = [], []

  def new_items():
    vecs = catalogue(config.serving_new_items, config.serving_dim, seed=3)
    with httpx.Client(base_url=url, timeout=60) as c:
      for v in vecs:
        if done.is_set():
          break
        t0 = time.perf_counter()
        r = c.post('/items', json={
            'vector': (v.astype(np.float32) / 127).tolist(),
            **{f: int(rng.integers(size))
               for f, size in sizes['schema']['item'].items()}})
        item = r.json()['item_id']
        body = dict(bodies[0], candidates=[item])
        s = c.post('/score', json=body)
        if s.status_code == 200:
          servable.append(time.perf_counter() - t0)
          new_ids.append(item)
        time.sleep(config.serving_add_interval_s)

  t0 = time.perf_counter()
  adder = threading.Thread(target=new_items)
  adder.start()
  with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
    futures = [pool.submit(client) for _ in range(concurrency)]
    try:
      during()
    finally:
      published.set()
    for f in futures:
      f.result()
  wall = time.perf_counter() - t0
  done.set()
  adder.join()
  with httpx.Client(base_url=url, timeout=60) as c:
    metrics = c.get('/metrics').json()
    similar = c.get(f'/items/{new_ids[-1]}/similar?k=5').status_code if (
        new_ids) else None
  return {
      'requests': len(statuses), 'concurrency': concurrency,
      'candidates_per_request': cands, 'history_length': L,
      'failed_requests': sum(s != 200 for s in statuses),
      'qps': round(len(statuses) / wall, 1),
      'candidates_scored_per_second': round(len(statuses) * cands / wall),
      'score_p50_ms': _ms(latencies, 50), 'score_p90_ms': _ms(latencies, 90),
      'score_p99_ms': _ms(latencies, 99),
      'server_score_p99_ms': round(metrics['latency']['/score']['p99_ms'], 3),
      'model_versions_seen': ','.join(sorted(versions)),
      'reloads': metrics['reloads'],
      'new_items': len(servable),
      'new_item_to_servable_p50_ms': _ms(servable, 50) if servable else None,
      'new_item_to_servable_p99_ms': _ms(servable, 99) if servable else None,
      'new_item_similar_status': similar,
  }
