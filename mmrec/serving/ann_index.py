"""Nearest-neighbour index over item vectors (faiss), keyed by item id.

Cosine similarity = inner product of L2-normalised vectors (the store's int8
rows are dequantised and renormalised). Kinds:
  'ivf'   inverted lists over k-means cells (IVF,Flat), the default: on 100k
          clustered 128-d vectors and 2 CPU cores it builds 3x faster than
          HNSW (12 s vs 37 s at M=16) at the same recall@10 (0.99 at nprobe 8
          vs ef 32), and adding an item is one nearest-centroid search. Its
          cells are trained once, on the catalogue of the build: rebuild
          from a merged store version when the catalogue has drifted;
  'hnsw'  graph index (faiss IndexHNSWFlat): no training step, no drift as
          items are added, slower to build;
  'flat'  exact search: the reference for the others (tests, recall).
Ids are item ids (IndexIDMap2 around HNSW / flat, native in IVF).

On disk (`save(dir)`): `index.faiss` + `index.json` (kind, parameters, dim,
count, and the vector-store version and item count it covers), each written
to a temporary name and renamed; `index.json` last, so an index whose
metadata is present is whole. After a restart, `catch_up(store)` adds the
store's items the saved index does not hold yet.

The index is not safe for a search concurrent with an add: callers that do
both from several threads (the service) hold a lock.
"""

import json
import os

import faiss
import numpy as np

from mmrec import int8

INDEX = 'index.faiss'
META = 'index.json'
KINDS = ('hnsw', 'ivf', 'flat')
# ivf: nlist 0 = 4·sqrt(N) lists (faiss's guideline is 4-16·sqrt(N)), at
# most N/40 (k-means wants ~40 points a list); trained on 40 points a list.
# nprobe 128: recall@10 0.969 on 1M generated 128-d catalogue vectors (4,000
# lists; 0.937 at 64, 0.896 at 32), p50 1.5 ms a query (make bench: ann).
DEFAULTS = {'hnsw': {'m': 32, 'ef_construction': 80, 'ef_search': 96},
            'ivf': {'nlist': 0, 'nprobe': 128},
            'flat': {}}


class AnnIndexError(ValueError):
  """An index is missing, corrupt, or does not fit its store."""


def set_threads(n):
  """faiss's OpenMP threads for this process. A server wants 1: one query or
  one add is too small to split, and on a busy CPU OpenMP's waiting threads
  turned a 0.05 ms search into 20 ms (measured on the 2-core machine)."""
  faiss.omp_set_num_threads(n)


def normalise(vectors):
  """int8 rows (dequantised) or floats -> float32 unit rows."""
  x = np.asarray(vectors)
  x = int8.dequantize(x) if x.dtype == np.int8 else x.astype(np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class AnnIndex:
  """A faiss index of item vectors; `search(queries, k)` -> (scores, ids)."""

  def __init__(self, index, kind, dim, params, covers=None):
    self.index, self.kind, self.dim = index, kind, dim
    self.params = dict(params)
    self.covers = dict(covers or {})  # {'store_version', 'store_count'}
    self._apply_search_params()

  @classmethod
  def build(cls, vectors, ids=None, kind='ivf', seed=0, **params):
    """An index of (N, D) vectors (int8 rows or floats) with ids (default
    0..N-1)."""
    if kind not in KINDS:
      raise AnnIndexError(f'index kind {kind!r}, expected one of {KINDS}')
    unknown = set(params) - set(DEFAULTS[kind])
    if unknown:
      raise AnnIndexError(f'unknown {kind} parameters {sorted(unknown)}; '
                          f'known: {sorted(DEFAULTS[kind])}')
    params = dict(DEFAULTS[kind], **params)
    x = normalise(vectors)
    n, dim = x.shape
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == 'hnsw':
      inner = faiss.IndexHNSWFlat(dim, params['m'], ip)
      inner.hnsw.efConstruction = params['ef_construction']
      index = faiss.IndexIDMap2(inner)
    elif kind == 'flat':
      index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    else:
      nlist = params['nlist'] or int(4 * np.sqrt(n))
      nlist = max(1, min(nlist, n // 40))
      params['nlist'] = nlist
      index = faiss.index_factory(dim, f'IVF{nlist},Flat', ip)
      rng = np.random.default_rng(seed)
      index.train(x[rng.permutation(n)[:40 * nlist]])
    out = cls(index, kind, dim, params)
    out.add(x, np.arange(n) if ids is None else ids)
    return out

  def _apply_search_params(self):
    if self.kind == 'hnsw':
      faiss.downcast_index(self.index.index).hnsw.efSearch = (
          self.params['ef_search'])
    elif self.kind == 'ivf':
      faiss.extract_index_ivf(self.index).nprobe = self.params['nprobe']

  @property
  def count(self):
    return int(self.index.ntotal)

  def add(self, vectors, ids):
    x = normalise(vectors)
    ids = np.asarray(ids, np.int64).reshape(-1)
    if x.ndim != 2 or x.shape != (len(ids), self.dim):
      raise AnnIndexError(f'add: vectors {x.shape} and {len(ids)} ids; the '
                        f'index holds {self.dim}-d vectors')
    self.index.add_with_ids(x, ids)

  def search(self, queries, k):
    """(Q, D) queries -> scores (Q, k) float32 and ids (Q, k) int64; ids are
    -1 (score -inf) where fewer than k items exist."""
    q = normalise(np.atleast_2d(queries))
    if q.shape[1] != self.dim:
      raise AnnIndexError(f'queries are {q.shape[1]}-d, the index is '
                        f'{self.dim}-d')
    scores, ids = self.index.search(q, k)
    scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
    return scores, ids

  # -------------------------------------------------------------- persist

  def save(self, directory, store_version=None, store_count=None):
    """Writes index.faiss then index.json (each by rename)."""
    os.makedirs(directory, exist_ok=True)
    if store_version is not None:
      self.covers = {'store_version': store_version,
                     'store_count': store_count}
    tmp = os.path.join(directory, f'.{INDEX}.tmp-{os.getpid()}')
    faiss.write_index(self.index, tmp)
    os.replace(tmp, os.path.join(directory, INDEX))
    meta = {'kind': self.kind, 'dim': self.dim, 'params': self.params,
            'count': self.count, **self.covers}
    tmp = os.path.join(directory, f'.{META}.tmp-{os.getpid()}')
    with open(tmp, 'w') as f:
      json.dump(meta, f, indent=1)
    os.replace(tmp, os.path.join(directory, META))

  @classmethod
  def load(cls, directory):
    meta_path = os.path.join(directory, META)
    if not os.path.exists(meta_path):
      raise AnnIndexError(f'no index at {directory} (no {META})')
    with open(meta_path) as f:
      meta = json.load(f)
    try:
      index = faiss.read_index(os.path.join(directory, INDEX))
    except RuntimeError as e:
      raise AnnIndexError(f'{directory}/{INDEX} is corrupt or truncated: '
                        f'{e}') from e
    if index.ntotal < meta['count'] or index.d != meta['dim']:
      raise AnnIndexError(
          f'{directory}/{INDEX} holds {index.ntotal} {index.d}-d vectors, '
          f'{META} says {meta["count"]} {meta["dim"]}-d')
    covers = {k: meta[k] for k in ('store_version', 'store_count') if k in meta}
    return cls(index, meta['kind'], meta['dim'], meta['params'], covers)

  def catch_up(self, store):
    """Adds the store's items beyond those the index holds; returns how many.

    Items are added in id order, so an index holding `count` items of a
    store holds ids 0..count-1.
    """
    if store.dim != self.dim:
      raise AnnIndexError(f'store vectors are {store.dim}-d, the index is '
                        f'{self.dim}-d')
    start, stop = self.count, store.count
    if start > stop:
      raise AnnIndexError(f'the index holds {start} items, more than the '
                        f'store ({stop}): it was built from another store')
    if stop > start:
      self.add(store.dense(start, stop), np.arange(start, stop))
    self.covers = {'store_version': store.version, 'store_count': stop}
    return stop - start


def exact_search(vectors, queries, k):
  """Exact top-k by cosine (numpy): the reference of tests and recall."""
  x, q = normalise(vectors), normalise(np.atleast_2d(queries))
  scores = q @ x.T
  top = np.argsort(-scores, axis=1, kind='stable')[:, :k]
  return np.take_along_axis(scores, top, 1), top


def recall_at_k(found, exact):
  """Mean fraction of the exact top-k ids found: (Q, k) id arrays."""
  return float(np.mean([len(set(f) & set(e)) / len(e)
                        for f, e in zip(found, exact)]))
