"""MicroLens_1M_x1 (the BARS release) -> convert's schema.

Files: train.parquet, valid.parquet, test.parquet with user_id, item_seq
(the user's earlier items, oldest first, 0 = padding), likes_level,
views_level, item_id, label (test may lack labels: BARS keeps them for its
leaderboard); item_info.parquet with item_id, item_tags (list of tag ids,
0 = padding), item_emb_d128 (the release's 128-d item vectors), row 0 the
padding item.
Mapping: the splits are shipped (train = day 0, valid = day 1, the held-out
validation day, test = day 2); item_seq is the history; likes_level and
views_level (per row in the release, per item in truth) become item
categoricals from each item's first row; item_tags a bag; item_emb_d128 the
dataset's item_vectors.npz. Without test labels, valid is the test split and
no validation day is declared. No titles, images or search log.
"""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmrec.data import columns
from mmrec.data.readers import staging

ROW = ['user_id', 'item_seq', 'likes_level', 'views_level', 'item_id']
LEVELS = ['likes_level', 'views_level']


def _splits(source_dir):
  """[(our split, path)]: valid is the test split when test has no labels."""
  train, valid, test = staging.require(source_dir, 'train.parquet',
                                       'valid.parquet', 'test.parquet')
  if 'label' in columns.open_file(test).schema_arrow.names:
    return [('train', train), ('validation', valid), ('test', test)]
  return [('train', train), ('test', valid)]


def stage(source_dir, out_dir, config):
  """Writes impressions/, items.parquet and vectors.parquet into `out_dir`."""
  staged = staging.Staged(out_dir, 'impressions')
  levels = staging.FirstSeen('item_id', LEVELS)
  for split, path in _splits(source_dir):
    for _, _, b in columns.chunks([path], ROW + ['label'], (),
                                  config.convert.chunk_rows):
      t = pa.Table.from_batches([b])
      staged.write(pa.table({
          'user': t.column('user_id'), 'item': t.column('item_id'),
          'label': t.column('label'), 'split': pa.array([split] * len(t)),
          'history': staging.drop_padding(t.column('item_seq'))}))
      levels.add(t)
  info_path, = staging.require(source_dir, 'item_info.parquet')
  info = columns.read_all(info_path, ['item_id', 'item_tags',
                                      'item_emb_d128'])
  real = pa.compute.not_equal(info.column('item_id'), 0)  # row 0: padding
  info = info.filter(real)
  if not pa.types.is_list(info.schema.field('item_tags').type):
    raise columns.InputError(f"{info_path}, column 'item_tags': expected a "
                             'list of tag ids, got '
                             f"{info.schema.field('item_tags').type}")
  ids = columns.ids(info.column('item_id'), info_path, 'item_id')
  lv = levels.table(['item', *LEVELS])
  keys = lv.column('item').to_numpy()
  order = np.argsort(keys)
  pos = np.minimum(np.searchsorted(keys[order], ids), max(len(keys) - 1, 0))
  found = keys[order][pos] == ids if len(keys) else np.zeros(len(ids), bool)
  take = pa.array(order[pos], mask=~found)  # items never shown: null levels
  pq.write_table(pa.table({
      'item': info.column('item_id'),
      'tags': staging.drop_padding(info.column('item_tags')),
      **{k: lv.column(k).take(take) for k in LEVELS}}),
                 os.path.join(out_dir, 'items.parquet'))
  vec = columns.vectors(info.column('item_emb_d128').combine_chunks(),
                        info_path, 'item_emb_d128', dim=128)
  pq.write_table(pa.table({'item': info.column('item_id'),
                           'vector': list(vec)}),
                 os.path.join(out_dir, 'vectors.parquet'))
