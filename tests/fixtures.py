"""Shared test helpers: cached test worlds (built once per test process),
raw source data in each reader's format, tiny CTR batches and configs, and
numpy references used by more than one test module.

No test module imports another: what two of them share lives here.
"""

import functools
import os
import shutil
import tempfile

import flax.linen as nn
import jax
import numpy as np
from PIL import Image
import pyarrow as pa
import pyarrow.parquet as pq

from experiments.configs import ctr as ctr_config
from experiments.configs import data as data_config
from experiments.configs import export as export_config
from experiments.configs import scl as scl_config
from experiments.configs import world as world_config
from mmrec import checkpointing
from mmrec import ctr_data
from mmrec import ctr_eval
from mmrec import ctr_model
from mmrec import ctr_steps
from mmrec import embedding
from mmrec import int8
from mmrec import item_encoder
from mmrec import make
from mmrec import sharding
from mmrec import train_ctr
from mmrec import vector_table
from mmrec.data import builders
from mmrec.data import dataset_job
from mmrec.data import world as world_lib
from mmrec.serving import export
from mmrec.serving import layout
from mmrec.serving import model_export
from mmrec.serving import vector_store


def tiny_config(**overrides):
  cfg = world_config.get_world_config('tiny')
  cfg.update(overrides)
  return cfg


@functools.lru_cache(maxsize=None)
def tiny_world():
  return world_lib.generate(tiny_config())


@functools.lru_cache(maxsize=None)
def tiny_world_dir():
  """The tiny world written through the TFDS builders (read-only for tests)."""
  path = tempfile.mkdtemp(prefix='mmrec_tiny_world_')
  builders.write(tiny_world(), path)
  return path


@functools.lru_cache(maxsize=None)
def small_ctr_world_dir():
  """The tiny world shrunk to 500 users, 800 items (~7.5k training rows).

  CTR runs read whole epochs and test days: reading dominates.
  """
  path = tempfile.mkdtemp(prefix='mmrec_ctr_world_')
  builders.write(world_lib.generate(tiny_config(num_users=500,
                                                num_items=800)), path)
  return path


@functools.lru_cache(maxsize=None)
def oracle_vectors_path():
  """Oracle concept vectors + noise for the small CTR world's items."""
  path = os.path.join(tempfile.mkdtemp(prefix='mmrec_ctr_vectors_'),
                      'item_vectors.npz')
  oracle = builders.load_oracle(small_ctr_world_dir())
  v = oracle['concept_vec'][oracle['item_concept']]
  v = v + 0.3 * np.random.default_rng(0).normal(size=v.shape)
  v /= np.linalg.norm(v, axis=1, keepdims=True)
  vector_table.save(path, v.astype(np.float32), {'method': 'oracle_noise'})
  return path


@functools.lru_cache(maxsize=None)
def exported_ctr(variant):
  """A short CTR run (plumbing, not learning) of `variant` on the small CTR
  world, exported with export.py:tiny: (config, ctr workdir, serving dir,
  model version dir). Read-only for tests: copy the serving dir to change it.
  """
  c = ctr_config.get_config(f'{variant},tiny')
  c.data_dir = small_ctr_world_dir()
  c.vectors_path = oracle_vectors_path()
  c.tower, c.attention_mlp, c.embed_dim = (16, 8), (8,), 8
  c.max_steps = 10
  root = tempfile.mkdtemp(prefix=f'mmrec_export_{variant}_')
  workdir, serving = os.path.join(root, 'ctr'), os.path.join(root, 'serving')
  train_ctr.run(c, workdir)
  return c, workdir, serving, export.export(export_config.get_config('tiny'),
                                            workdir, serving)


def serving_copy(variant):
  """A writable copy of `exported_ctr(variant)`'s serving directory."""
  _, _, serving, _ = exported_ctr(variant)
  path = os.path.join(tempfile.mkdtemp(), 'serving')
  shutil.copytree(serving, path)
  return path


@functools.lru_cache(maxsize=None)
def untrained_encoder():
  """(model, params) of scl.py:scl,tiny's item encoder for the small CTR
  world, untrained (the export path does not care about the weights)."""
  data_dir = small_ctr_world_dir()
  model = item_encoder.encoder_model(scl_config.get_config('scl,tiny'), data_dir)
  ex = item_encoder.example_inputs(data_dir)
  params = nn.unbox(model.init(jax.random.key(0), ex['image'],
                               ex['text'])['params'])
  return model, jax.tree.map(np.asarray, params)


def export_untrained_encoder(serving_dir):
  """`untrained_encoder` exported into a serving dir, as if it had made the
  store's table (so the service accepts it)."""
  model, params = untrained_encoder()
  wc = builders.load_world_config(small_ctr_world_dir())
  with vector_store.VectorStore(os.path.join(serving_dir, layout.VECTORS),
                                verify=False) as store:
    sha = store.manifest['source']['table_sha256']
  return model_export.write_encoder(
      serving_dir, model, params, image_size=wc['image_size'],
      title_length=wc['title_length'],
      vocab_size=builders.vocab_size(small_ctr_world_dir()),
      table_sha256=sha)


@functools.lru_cache(maxsize=None)
def long_history_dir():
  """A converted Taobao-MM-format dataset (readers_test's shards) with a
  30-long history beside the 10-long one, and its int8 vector table."""
  src = tempfile.mkdtemp(prefix='mmrec_long_src_')
  write_taobao_shards(src)
  c = data_config.get_config('taobao_mm,tiny')
  c.source_dir = src
  c.convert.long_seq_len = 30
  out = os.path.join(tempfile.mkdtemp(prefix='mmrec_long_'), 'data')
  dataset_job.run(c, out)
  return out


@functools.lru_cache(maxsize=None)
def exported_long_ctr(kind):
  """As `exported_ctr`, for a model trained with the long history:
  kind 'simtier' = DIN over the recent 10 + SimTier over the 30-long
  history (the official setting, small), 'gsu' = attention over the top 8
  of the long history (retrieve_top_k), SimTier over the recent."""
  data_dir = long_history_dir()
  c = ctr_config.get_config('simtier_official,tiny')
  c.data_dir = data_dir
  c.vectors_path = os.path.join(data_dir, vector_table.FILE)
  c.tower, c.attention_mlp, c.embed_dim = (16, 8), (8,), 8
  c.batch_size, c.eval_batch_size, c.max_steps = 32, 128, 6
  c.retrieve_top_k = 8 if kind == 'gsu' else 0
  root = tempfile.mkdtemp(prefix=f'mmrec_export_long_{kind}_')
  workdir, serving = os.path.join(root, 'ctr'), os.path.join(root, 'serving')
  train_ctr.run(c, workdir)
  return c, workdir, serving, export.export(export_config.get_config('tiny'),
                                            workdir, serving)


# Raw source data in the readers' formats ---------------------------------

DAY = 86400
# Own data (the documented Parquet schema): its first day and length.
OWN_T0 = 1_700_000_000 - 1_700_000_000 % DAY + 3600  # 01:00 UTC of some day
OWN_NUM_DAYS = 6
OWN_WORDS = ['red', 'blue', 'cotton', 'shirt', 'jeans', 'dress', 'wool', 'hat']
OWN_ZH = ['红色', '棉', '衬衫', '连衣裙', '帽子']
OWN_INTERESTS = ['p', 'q', 'r', 's']  # sorted: ids 1..4


# MovieLens and Amazon fixtures: their first day.
READERS_T0 = 978_307_200  # 2001-01-01 00:00 UTC


def write_own_data(directory, num_users=60, num_items=40, rows=1500, seed=0,
                   with_vectors=True, sessions=0):
  """Own data in the documented schema; returns the raw impressions."""
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(directory, 'img'), exist_ok=True)
  # Raw ids are sparse strings / large ints, as real logs have.
  users = np.array([f'u{i * 7 + 3}' for i in range(num_users)], dtype=object)
  items = (np.arange(num_items) * 1_000_003 + 17).astype(np.int64)
  # The last 4 items are only shown on the test day: the new items.
  old, new = items[:-4], items[-4:]
  day = rng.integers(0, OWN_NUM_DAYS, rows)
  item = np.where(day == OWN_NUM_DAYS - 1, rng.choice(items, rows),
                  rng.choice(old, rows))
  imp = {'user': users[rng.integers(0, num_users, rows)], 'item': item,
         'time': OWN_T0 + day * DAY + rng.integers(0, DAY - 7200, rows),
         'label': (rng.random(rows) < 0.3).astype(np.int64)}
  pq.write_table(pa.table(imp), os.path.join(directory, 'impressions.parquet'))
  titles_ = [' '.join(rng.choice(OWN_WORDS if i % 3 else OWN_ZH, 3))
             for i in range(num_items)]
  paths = []
  for i in range(num_items):
    px = np.full((12, 10, 3), (i * 6) % 256, np.uint8)
    name = f'img/{i}.png'
    Image.fromarray(px).save(os.path.join(directory, name))
    paths.append(name)
  pq.write_table(pa.table({
      'item': items, 'title': titles_, 'image': paths,
      'genre': [['drama', 'comedy', 'action'][i % 3] for i in range(num_items)],
      'brand': (np.arange(num_items) % 5 * 100).astype(np.int64),
      'tags': [['a', 'b', 'c', 'd'][:i % 4 + 1] for i in range(num_items)],
  }), os.path.join(directory, 'items.parquet'))
  pq.write_table(pa.table({
      'user': users, 'gender': ['f', 'm'] * (num_users // 2),
      'age': (np.arange(num_users) % 4).astype(np.int64),
      # A user bag, empty for every fifth user.
      'interests': [OWN_INTERESTS[:i % 5] for i in range(num_users)]}),
                 os.path.join(directory, 'users.parquet'))
  if sessions:
    # Search sessions: image queries (photos of the bought item) and text
    # queries (words of its title); 0-2 hard negatives; over all days.
    bought = rng.integers(0, num_items, sessions)
    image = np.arange(sessions) % 2 == 0
    pq.write_table(pa.table({
        'item': items[bought],
        'query_image': [paths[b] if q else None
                        for b, q in zip(bought, image)],
        'query_text': [None if q else titles_[b].split()[0]
                       for b, q in zip(bought, image)],
        'hard_negatives': [list(rng.choice(old, k)) for k in
                           rng.integers(0, 3, sessions)],
        'time': OWN_T0 + rng.integers(0, OWN_NUM_DAYS * DAY - 7200, sessions),
    }), os.path.join(directory, 'search.parquet'))
  if with_vectors:
    v = rng.normal(size=(num_items, 8)).astype(np.float32)
    pq.write_table(pa.table({'item': items, 'vector': list(v)}),
                   os.path.join(directory, 'vectors.parquet'))
  return imp


def shard_search(directory, cuts, edit=None):
  """Moves search.parquet into shards search/{0,1,..}.parquet at `cuts`.

  `edit(table)` changes the log before it is cut.
  """
  path = os.path.join(directory, 'search.parquet')
  t = pq.read_table(path)
  t = edit(t) if edit else t
  os.remove(path)
  os.makedirs(os.path.join(directory, 'search'))
  for k, (lo, hi) in enumerate(zip([0] + cuts, cuts + [len(t)])):
    pq.write_table(t.slice(lo, hi - lo),
                   os.path.join(directory, 'search', f'{k}.parquet'))


def data_config_for(source, src, **convert):
  """The data job's `source`,tiny config reading `src`."""
  c = data_config.get_config(f'{source},tiny')
  c.source_dir = src
  c.convert.update(convert)
  return c


def own_data_config(src, **convert):
  """data.py:parquet,tiny reading own data in `src` (`write_own_data`)."""
  return data_config_for('parquet', src, **convert)


def convert(config):
  """(manifest, dataset directory) of the data job on `config`."""
  out = os.path.join(tempfile.mkdtemp(), 'data')
  return dataset_job.run(config, out), out


def _ratings(rng, n=600, users=30, items=25, days=30):
  return (rng.integers(1, users + 1, n), rng.integers(1, items + 1, n),
          rng.integers(1, 6, n), READERS_T0 + rng.integers(0, days * DAY, n))


def write_movielens(directory, release, seed=0):
  """A MovieLens copy of `release`; returns (user, item, rating, time)."""
  rng = np.random.default_rng(seed)
  r = _ratings(rng)
  genres = ['Action', 'Comedy', 'Drama', "Children's"]
  titles = [f'Movie {i} ({1990 + i % 9})' for i in range(1, 26)]
  titles[1] = 'Café, The (1995)'  # latin-1 in 100k / 1m, a comma for csv

  def write(name, lines, encoding='latin-1'):
    with open(os.path.join(directory, name), 'w', encoding=encoding) as f:
      f.write(''.join(line + '\n' for line in lines))

  if release == 'ml-100k':
    write('u.data', [f'{u}\t{i}\t{x}\t{t}' for u, i, x, t in zip(*r)])
    write('u.item', [f'{i}|{titles[i - 1]}|01-Jan-1995||http://x|' +
                     '|'.join('1' if g == i % 19 or g == 5 else '0'
                              for g in range(19)) for i in range(1, 26)])
    write('u.user', [f'{u}|{20 + u}|{"MF"[u % 2]}|writer|{10000 + u}'
                     for u in range(1, 31)])
  elif release == 'ml-1m':
    write('ratings.dat', [f'{u}::{i}::{x}::{t}' for u, i, x, t in zip(*r)])
    write('movies.dat', [f'{i}::{titles[i - 1]}::{genres[i % 4]}|Drama'
                         for i in range(1, 26)])
    write('users.dat', [f'{u}::{"MF"[u % 2]}::{[1, 18, 25][u % 3]}::{u % 7}'
                        f'::{10000 + u}' for u in range(1, 31)])
  else:
    write('ratings.csv', ['userId,movieId,rating,timestamp'] + [
        f'{u},{i},{x}.0,{t}' for u, i, x, t in zip(*r)], 'utf8')
    write('movies.csv', ['movieId,title,genres'] + [
        f'{i},"{titles[i - 1]}",{genres[i % 4] if i % 5 else "(no genres listed)"}'
        for i in range(1, 26)], 'utf8')
  return r


def write_taobao_shards(directory, seed=0, rows=400, users=40, items=30):
  """The full release's layout: train/ and test/ shards (samples joined with
  user features), item_features.parquet, the SCL int8 table."""
  rng = np.random.default_rng(seed)
  uid = rng.integers(-2**62, 2**62, users)
  iid = rng.integers(-2**62, 2**62, items)
  cat = rng.integers(-2**62, 2**62, 5)
  for split, shards in (('train', 3), ('test', 1)):
    os.makedirs(os.path.join(directory, split))
    for s in range(shards):
      n = rows // 4
      y = (rng.random(n) < 0.3).astype(np.int8)
      hist = [list(rng.choice(iid, rng.integers(0, 1000))) + [0] * 3
              for _ in range(n)]
      t = {'label_0': [[1 - v, v] for v in y],
           '129_1': rng.choice(uid, n), '205': rng.choice(iid, n)}
      t.update({f'130_{k}': rng.integers(0, 3, n).astype(np.int64)
                for k in range(1, 6)})
      t['150_2_180'] = hist
      t['151_2_180'] = [[1] * len(h) for h in hist]
      tab = pa.table(t).cast(pa.schema(
          [('label_0', pa.list_(pa.int8()))] + [
              (k, pa.int64()) for k in t if k.startswith(('129', '205',
                                                          '130'))] +
          [('150_2_180', pa.list_(pa.int64())),
           ('151_2_180', pa.list_(pa.int64()))]))
      pq.write_table(tab, os.path.join(directory, split,
                                       f'{split}-shard-{s:05d}.parquet'))
  pq.write_table(pa.table({'205': iid, '206': rng.choice(cat, items),
                           '213': rng.integers(0, 4, items),
                           '214': rng.integers(0, 4, items)}),
                 os.path.join(directory, 'item_features.parquet'))
  vec = rng.integers(-60, 60, (items, 128)).astype(np.int8)
  pq.write_table(pa.table({'205': iid, '205_c': pa.array(
      list(vec), pa.list_(pa.int8()))}),
                 os.path.join(directory, 'scl_embedding_int8_p90.parquet'))
  return iid, vec



# Tiny CTR inputs (no dataset) -------------------------------------------

TINY_B, TINY_L, TINY_DV = 4, 5, 8
TINY_EMB = embedding.EmbeddingConfig.world(
    num_users=10, num_ages=3, num_genders=2, num_cities=4, num_items=20,
    num_categories=5, num_shops=6, dim=4)


def tiny_ctr_config(variant, freeze=True):
  return ctr_model.CtrConfig(
      TINY_EMB, variant=variant, attention_mlp=(8, 4), tower=(8, 4),
      make=make.MakeConfig(attention_mlp=(8,), mlp=(6,), freeze=freeze))


@functools.lru_cache(maxsize=None)
def tiny_ctr_data():
  """A batch (full row, all-padded row, two partial rows) and a vector table."""
  rng = np.random.default_rng(0)
  mask = np.arange(TINY_L)[None] >= TINY_L - np.array([TINY_L, 0, 2, 3])[:, None]
  batch = {
      'user_id': rng.integers(0, 10, TINY_B), 'age': rng.integers(0, 3, TINY_B),
      'gender': rng.integers(0, 2, TINY_B), 'city': rng.integers(0, 4, TINY_B),
      'item_id': rng.integers(0, 20, TINY_B), 'category': rng.integers(0, 5, TINY_B),
      'shop': rng.integers(0, 6, TINY_B),
      'seq_item': np.where(mask, rng.integers(0, 20, (TINY_B, TINY_L)), 0),
      'seq_category': np.where(mask, rng.integers(0, 5, (TINY_B, TINY_L)), 0),
      'seq_mask': mask, 'label': np.array([1, 0, 1, 0], np.int32),
      'day': np.zeros(TINY_B, np.int32)}
  batch = {k: v.astype(np.int32) if v.dtype == np.int64 else v
           for k, v in batch.items()}
  vectors = rng.normal(size=(20, TINY_DV)).astype(np.float32)
  vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
  return batch, vectors



# CTR runs on the small CTR world -------------------------------------------

def ctr_run_config(variant, **overrides):
  """ctr.py:<variant>,tiny on the small CTR world, shrunk further."""
  c = ctr_config.get_config(f'{variant},tiny')
  c.data_dir = small_ctr_world_dir()
  c.vectors_path = '' if variant == 'id' else oracle_vectors_path()
  # Smaller than :tiny: these tests check plumbing, not learning.
  c.tower = (16, 8)
  c.attention_mlp = (8,)
  c.make.attention_mlp = (8,)
  c.make.mlp = (8,)
  c.embed_dim = 8
  c.log_every = 5
  c.update(overrides)
  return c


def offline_predictions(c, workdir):
  """`ctr_eval.predict` of the run's latest checkpoint on the test day."""
  data = ctr_data.CtrData.load(c.data_dir)
  model = ctr_model.build_model(c, data.sizes)
  host_vectors = ctr_data.host_vectors(c, data.sizes['num_items'])
  mesh = sharding.make_mesh(c.mesh.data, c.mesh.model)
  first = data.dataset('test', c.eval_batch_size)[0]
  example = {k: v[:2] for k, v in first.items()}
  progs = ctr_steps.programs(model, ctr_steps.opt_spec(c, model), mesh,
                             ctr_steps.shape_key(example),
                             ctr_steps.shape_key(host_vectors))
  ckpt = os.path.join(workdir, checkpointing.SUBDIR)
  with checkpointing.Checkpointer(ckpt, read_only=True) as cp:
    step = cp.latest_step()
  state, _ = checkpointing.restore_from(
      os.path.join(ckpt, str(step)), progs.train.init_state(jax.random.key(0)))
  vectors = vector_table.put(host_vectors, mesh)
  return ctr_eval.predict(progs.eval_step, state, vectors, data,
                          c.eval_batch_size, mesh, 'test')



# numpy references ------------------------------------------------------------

def np_top_k(table, target, seq, mask, k):
  """Row by row: real behaviours by (-cosine, position), then padding."""
  table = np.asarray(table)
  if table.dtype == np.int8:
    table = int8.dequantize(table)
  table = table.astype(np.float64)
  norms = np.linalg.norm(table, axis=1)
  k = min(k, seq.shape[1])
  out = {f: np.zeros((len(seq), k), d) for f, d in (
      ('ids', np.int32), ('mask', bool), ('positions', np.int32),
      ('scores', np.float64))}
  for b in range(len(seq)):
    cos = {}
    for t in range(seq.shape[1]):
      if mask[b, t]:
        denom = max(norms[target[b]], 1e-8) * max(norms[seq[b, t]], 1e-8)
        cos[t] = float(np.clip(table[target[b]] @ table[seq[b, t]] / denom,
                               -1, 1))
    # The test data must not hold near-ties that float32 could reorder.
    vals = sorted(cos.values())
    for a, c in zip(vals, vals[1:]):
      assert a == c or c - a > 1e-5, (b, a, c)
    real = sorted(cos, key=lambda t: (-cos[t], t))
    pad = [t for t in range(seq.shape[1]) if not mask[b, t]]
    for j, t in enumerate((real + pad)[:k]):
      is_real = t in cos
      out['positions'][b, j] = t
      out['mask'][b, j] = is_real
      out['ids'][b, j] = seq[b, t] if is_real else 0
      out['scores'][b, j] = cos[t] if is_real else 0.0
  return out
