"""Taobao-MM (the MUSE release) -> convert's schema, shard by shard.

Two layouts of one format (column names are the release's feature ids):
  full release  train/*.parquet, test/*.parquet: one row per impression,
                samples already joined with the user features
  demo files    {train,test}_samples.parquet + {train,test}_user_features
                .parquet, joined here by user id
Both with item_features.parquet and, optional, scl_embedding_int8_p90
.parquet (or scl_embedding*.parquet).
Columns: label_0 list<int8>[2] = [1 - y, y]; 129_1 user id; 205 item id;
130_1..130_5 user profile fields; 150_2_180 the item history (up to 1000,
oldest first); 151_2_180 its categories (not read: the converter looks the
behaviours' categories up in the item table); item_features: 205, 206
(category), 213, 214; SCL table: 205 -> 205_c list<int8>[128] =
trunc(127 v).
All ids are hashed signed int64 (the converter remaps them). The release is
split, not timed: train = day 0, test = day 1 (no validation day).
Renamed fields: 206 -> category, 213 -> i213, 214 -> i214, 130_k -> u130_k.
The SCL vectors become the dataset's item_vectors.npz (int8 / 127,
L2-normalised).
"""

import glob
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmrec.data import columns
from mmrec.data.readers import staging

USER, ITEM, LABEL, HISTORY = '129_1', '205', 'label_0', '150_2_180'
PROFILE = ('130_1', '130_2', '130_3', '130_4', '130_5')
ITEM_FIELDS = {'206': 'category', '213': 'i213', '214': 'i214'}
VECTOR = '205_c'
VECTOR_DIM = 128


def _labels(col, path, row0):
  """y of label_0 = [1 - y, y]; anything else is an error."""
  if not pa.types.is_list(col.type) and not pa.types.is_fixed_size_list(
      col.type):
    raise columns.InputError(f'{path}, column {LABEL!r}: expected list<int8>'
                             f'[2] = [1 - y, y], got {col.type}')
  lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
  pairs = col.flatten().to_numpy(zero_copy_only=False)
  ok = lengths == 2
  if ok.all():
    pairs = pairs.reshape(-1, 2)
    ok = ((pairs == 0) | (pairs == 1)).all(1) & (pairs.sum(1) == 1)
  if not ok.all():
    i = int(np.flatnonzero(~ok)[0])
    raise columns.InputError(f'{path}, column {LABEL!r}, row {row0 + i}: '
                             f'{col[i].as_py()}, expected [1, 0] or [0, 1]')
  return pa.array(pairs[:, 1].astype(np.int8))


def _layout(source_dir):
  if os.path.isdir(os.path.join(source_dir, 'train')):
    return 'shards'
  if os.path.isfile(os.path.join(source_dir, 'train_samples.parquet')):
    return 'demo'
  raise columns.InputError(
      f'{source_dir}: not a Taobao-MM copy (no train/ shards and no '
      f'train_samples.parquet; found {sorted(os.listdir(source_dir))[:12]})')


def _user_features(path):
  t = columns.read_all(path, [USER, HISTORY, *PROFILE])
  user = columns.ids(t.column(USER), path, USER)
  order = np.argsort(user, kind='stable')
  return user[order], t.take(pa.array(order))


def _join(samples, features):
  """Adds the user features of each sample's user (missing: null)."""
  keys, table = features
  user = samples.column(USER).to_numpy()
  idx = np.minimum(np.searchsorted(keys, user), max(len(keys) - 1, 0))
  found = (keys[idx] == user) if len(keys) else np.zeros(len(user), bool)
  take = pa.array(idx, mask=~found)
  joined = table.take(take) if len(keys) else None
  out = samples
  for c in (HISTORY, *PROFILE):
    if c not in out.column_names:
      out = out.append_column(c, joined.column(c) if joined is not None else
                              pa.nulls(len(user), table.schema.field(c).type))
  return out


def _impression_chunks(source_dir, layout, chunk_rows):
  """Yields (split, path, first row, pyarrow.Table) with the user features."""
  need = [LABEL, USER, ITEM]
  for split in ('train', 'test'):
    if layout == 'shards':
      paths = columns.table_files(source_dir, split)
      for path, row0, b in columns.chunks(paths, need + [HISTORY, *PROFILE],
                                          (), chunk_rows):
        yield split, path, row0, pa.Table.from_batches([b])
    else:
      features = _user_features(os.path.join(source_dir,
                                              f'{split}_user_features.parquet'))
      path = os.path.join(source_dir, f'{split}_samples.parquet')
      for path, row0, b in columns.chunks([path], need, (), chunk_rows):
        yield split, path, row0, _join(pa.Table.from_batches([b]), features)


def stage(source_dir, out_dir, config):
  """Writes impressions/, items.parquet, users.parquet [, vectors.parquet]."""
  layout = _layout(source_dir)
  staged = staging.Staged(out_dir, 'impressions')
  profiles = staging.FirstSeen(USER, PROFILE)
  for split, path, row0, t in _impression_chunks(
      source_dir, layout, config.convert.chunk_rows):
    columns.ids(t.column(USER), path, USER, row0)
    columns.ids(t.column(ITEM), path, ITEM, row0)
    staged.write(pa.table({
        'user': t.column(USER), 'item': t.column(ITEM),
        'label': _labels(t.column(LABEL).combine_chunks(), path, row0),
        'split': pa.array([split] * len(t)),
        # The release pads histories with id 0.
        'history': staging.drop_padding(t.column(HISTORY)),
    }))
    profiles.add(t)
  item_path = os.path.join(source_dir, 'item_features.parquet')
  items = columns.read_all(item_path, [ITEM, *ITEM_FIELDS])
  pq.write_table(items.rename_columns(['item', *ITEM_FIELDS.values()]),
                 os.path.join(out_dir, 'items.parquet'))
  pq.write_table(profiles.table(['user'] + [f'u{c}' for c in PROFILE]),
                 os.path.join(out_dir, 'users.parquet'))
  scl = sorted(glob.glob(os.path.join(source_dir, 'scl_embedding*.parquet')))
  if scl:
    v = columns.read_all(scl[0], [ITEM, VECTOR])
    vec = columns.vectors(v.column(VECTOR).combine_chunks(), scl[0], VECTOR,
                          dim=VECTOR_DIM)
    pq.write_table(pa.table({'item': v.column(ITEM),
                             'vector': list(vec / 127.0)}),
                   os.path.join(out_dir, 'vectors.parquet'))
  return layout
