"""The catalogue-sized tables of own data: items, users, vectors, candidates.

Read whole (one file each: a folder of shards is an error, not a table of
which one shard would be read) and mapped to the dataset's ids by the
converter's id maps (id_maps.py). Categorical columns become ids 1..V-1 by
sorted value (0 = missing), list columns fixed-width bags.
"""

import os

from absl import logging
import numpy as np
import pyarrow as pa

from mmrec import vector_table
from mmrec.data import columns
from mmrec.data import id_maps

CANDIDATES_FILE = 'retrieval_candidates.npy'


def read(src, table, key, id_map, kinds, max_bag, reserved=()):
  """(`{field: (len(id_map),) or (.., max_bag) array}`, categorical sizes, bag
  sizes, {reserved field: (raw values, ids, keep)}, path or None) of
  `<table>.parquet`, keyed by `key` and mapped by `id_map`; a bag keeps its
  first `max_bag` ids."""
  paths = columns.table_files(src, table, required=False, shards=False)
  out = {f'{key}_id': np.arange(len(id_map), dtype=np.int32)}
  cats, bags, raw = {}, {}, {}
  if not paths:
    return out, cats, bags, raw, None
  path = paths[0]
  names = columns.open_file(path).schema_arrow.names
  t = columns.read_all(path, [key], [n for n in names if n != key])
  keys = kinds.check(key, columns.ids(t.column(key), path, key), path, key)
  uniq, first, counts = np.unique(keys, return_index=True,
                                  return_counts=True)
  if (counts > 1).any():
    k = uniq[counts > 1][0]
    rows = np.flatnonzero(keys == k)[:2].tolist()
    raise columns.InputError(f'{path}, column {key!r}: id {k!r} appears '
                             f'twice (rows {rows})')
  ids = id_map(keys)
  keep = ids > 0
  if len(keys) and not keep.any():
    # Said here, as its fields then hold nothing (the converter refuses
    # titles that no impression's item has: convert.py).
    logging.warning('%s', unmatched(path, key, id_map, keys[0]))
  elif not keep.all():
    # A row without an id is left out, and said, not silently (issue 22):
    # items only when rarer than min_count in training (the catalogue's
    # other items are kept, shown or not: impression_scan.scan_ids); users
    # never seen in training, whose ids the CTR model has no row for.
    logging.warning(
        '%s: %d of %d %ss %s and are left out of the dataset (id 0: no row, '
        'no content); e.g. %s', path, int((~keep).sum()), len(keys), key,
        'are rarer than convert.min_count in the training days'
        if key == 'item' else 'never appear in the training impressions (or '
        'are rarer than convert.min_count)',
        ', '.join(map(repr, keys[~keep][:3].tolist())))
  for name in t.column_names:
    if name == key:
      continue
    col = t.column(name).combine_chunks()
    if name in reserved:
      raw[name] = (np.asarray(col.to_pylist(), dtype=object), ids, keep)
      continue
    out[name], size, is_bag = _field(col, path, name, ids, keep,
                                     len(id_map), max_bag)
    (bags if is_bag else cats)[name] = size
  return out, cats, bags, raw, path


def unmatched(path, key, id_map, example=None):
  """The message for a table none of whose ids is one of the impressions'."""
  there = id_map.keys[0] if len(id_map.keys) else None
  here = f'{example!r} here, ' if example is not None else ''
  return (f'{path}, column {key!r}: none of its ids is a {key} of the '
          f'impressions (e.g. {here}{there!r} there; or all below '
          'min_count): another id scheme, or the wrong file?')


def _field(col, path, name, ids, keep, n, max_bag):
  """One categorical (or bag) column -> (table, vocabulary size, is_bag)."""
  is_bag = pa.types.is_list(col.type) or pa.types.is_large_list(col.type)
  if is_bag:
    offsets, values = columns.id_lists(col, path, name)
  elif columns.id_kind(col.type) is None:
    raise columns.InputError(
        f'{path}, column {name!r}: a categorical field must hold integers '
        f'or strings (or lists of them for a bag), got {col.type}; drop '
        'the column or convert it')
  else:
    present = ~col.is_null().to_numpy(zero_copy_only=False)
    values = columns.ids(col.filter(pa.array(present)), path, name)
  vocab = np.unique(values)
  coded = (np.searchsorted(vocab, values) + 1).astype(np.int32)
  size = len(vocab) + 1  # 0 = missing / empty slot
  if not is_bag:
    full = np.zeros(len(col), np.int32)
    full[present] = coded
    table = np.zeros(n, np.int32)
    table[ids[keep]] = full[keep]
    return table, size, False
  table = np.zeros((n, max_bag), np.int32)
  rows = np.flatnonzero(keep)
  lengths = np.minimum(np.diff(offsets), max_bag)[rows]
  start = offsets[rows]
  table[np.repeat(ids[rows], lengths),
        columns.spans(np.zeros_like(lengths), lengths)] = coded[
            columns.spans(start, start + lengths)]
  return table, size, True


def item_keys(src):
  """(path, raw item ids) of items.parquet (the catalogue), or None.

  Every listed item gets an id (impression_scan.scan_ids), shown or not: the
  content route (pre-training, retrieval against the catalogue, new items
  at serving) needs no impression of it. Their id kind is checked there,
  after the impressions' (whose errors come first)."""
  got = _by_item(src, id_maps.Kinds(), 'items', [])
  return None if got is None else (got[0], got[2])


def _by_item(src, kinds, table, columns_):
  """(path, pyarrow table, raw item ids) of `<table>.parquet`, or None."""
  paths = columns.table_files(src, table, required=False, shards=False)
  if not paths:
    return None
  path = paths[0]
  t = columns.read_all(path, ['item'] + columns_)
  raw = kinds.check('item', columns.ids(t.column('item'), path, 'item'), path,
                    'item')
  return path, t, raw


def vectors(src, kinds, items, directory):
  """vectors.parquet -> the dataset's item_vectors.npz (its file name), or
  None without one."""
  got = _by_item(src, kinds, 'vectors', ['vector'])
  if got is None:
    return None
  path, t, keys = got
  v = columns.vectors(t.column('vector').combine_chunks(), path, 'vector')
  table = np.zeros((len(items), v.shape[1]), np.float32)
  ids = items(keys)
  norm = np.linalg.norm(v, axis=1, keepdims=True)
  table[ids[ids > 0]] = (v / np.maximum(norm, 1e-12))[ids > 0]
  covered = float((ids > 0).sum()) / max(len(items) - 1, 1)
  vector_table.save(os.path.join(directory, vector_table.FILE), table,
                    {'method': 'imported', 'source': path,
                     'item_coverage': covered})
  return vector_table.FILE


def candidates(src, kinds, items, directory):
  """candidates.parquet (`item`) -> the declared retrieval candidates' file
  name, or None without one."""
  got = _by_item(src, kinds, 'candidates', [])
  if got is None:
    return None
  path, _, raw = got
  mapped = items(raw)
  unknown = int((mapped == 0).sum())
  if unknown:
    # Not an error: a frequency cut-off maps rare items to 0, which is no
    # candidate; said, not silently dropped.
    logging.warning('%s: %d of %d candidates are unknown or rare items '
                    '(id 0, below min_count) and are left out', path,
                    unknown, len(raw))
  ids = np.unique(mapped[mapped > 0])
  if not len(ids):
    raise columns.InputError(f'{path}: no candidate is a known item (of '
                             f'{len(raw)} rows)')
  np.save(os.path.join(directory, CANDIDATES_FILE), ids.astype(np.int64))
  return CANDIDATES_FILE
