"""TaobaoAd_x1 (BARS: Alimama's Taobao display-ad clicks) -> convert's schema.

Files: train.csv (the first 7 days, 2017-05-06..12) and test.csv (the 8th
day), comma-separated with a header line, one row per ad impression. BARS'
x1 split has no valid.csv (a valid.csv, if you add one, becomes the
validation day). Columns as BARS spells them (its FuxiCTR config of
TaobaoAd_x1); a missing one stops naming it. What becomes of each:
  clk                 label (1 = click)
  userid              user
  adgroup_id          item (the ad)
  cate_id, campaign_id, customer, brand
                      item categoricals from each ad's first row (constant
                      per ad in the release: its ad_feature table); cate_id
                      first, so behaviours carry it and id_stats uses it
  cms_segid, cms_group_id, final_gender_code, age_level, pvalue_level,
  shopping_level, occupation, new_user_class_level
                      user categoricals from each user's first row (the
                      release's user_profile); empty = missing
  cate_his, brand_his, btag_his
                      '^'-separated category / brand / behaviour-type
                      (pv, cart, fav, buy) ids of the user's earlier
                      behaviours, oldest first -> user bags of the user's
                      first row, its last max_bag entries, which the CTR
                      model embeds (mean-pooled, as item bags). Not
                      behaviour sequences: the schema's are item ids, which
                      the release does not have.
  pid                 not read: the ad slot, a per-impression context (the
                      schema has no impression-level fields)
  btag, price         not read where present (BARS' config lists them):
                      btag is per impression, price numeric (the schema
                      has no numeric fields)
  any other column    not read; named in a warning
Days: the release has no timestamp, so the split is the shipped one:
train = day 0, test = day 1, and no validation day (valid.csv: train 0,
validation 1, test 2). Histories: every row's is empty. Built from earlier
days' clicks (the converter's default) the training rows, all on day 0,
would get none and the test rows the whole training week: a model would
train without behaviours and be tested with them. So this dataset is for ID
features (user bags included), not for behaviour-sequence methods; SimTier /
MAKE see no behaviours here.
Ids are the release's integers (remapped by the converter); categoricals
and bag tokens are read as strings (empty = missing), so '3' and '3.0'
spellings are not merged.
"""

import os

from absl import logging
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmrec.data import columns
from mmrec.data.readers import staging

LABEL, USER, ITEM = 'clk', 'userid', 'adgroup_id'
ITEM_FIELDS = ('cate_id', 'campaign_id', 'customer', 'brand')
USER_FIELDS = ('cms_segid', 'cms_group_id', 'final_gender_code', 'age_level',
               'pvalue_level', 'shopping_level', 'occupation',
               'new_user_class_level')
HISTORIES = ('cate_his', 'brand_his', 'btag_his')
READ = (LABEL, USER, ITEM, *ITEM_FIELDS, *USER_FIELDS, *HISTORIES)
TYPES = (pa.int64(),) * 3 + (pa.string(),) * (len(READ) - 3)


def splits(source_dir):
  """[(our split, path)] of the files present."""
  train, test = staging.require(source_dir, 'train.csv', 'test.csv')
  out = [('train', train)]
  valid = os.path.join(source_dir, 'valid.csv')
  if os.path.isfile(valid):
    out.append(('validation', valid))
  return out + [('test', test)]


def _missing(col):
  """'' -> null: a missing value is the converter's 0, not a category."""
  return pc.if_else(pc.equal(col, ''), pa.scalar(None, pa.string()), col)


def last_tokens(col, k):
  """'a^b^c' -> list of its last `k` non-empty tokens (oldest first)."""
  col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
  lists = pc.split_pattern(col.fill_null(''), '^')
  off = lists.offsets.to_numpy()
  values = lists.values
  keep = pc.not_equal(values, '').to_numpy(zero_copy_only=False)
  cum = np.concatenate([[0], np.cumsum(keep)])
  end = cum[off[1:]]
  start = np.maximum(cum[off[:-1]], end - k)
  lengths = end - start
  new_off = np.concatenate([[0], np.cumsum(lengths)])
  idx = np.arange(new_off[-1]) + np.repeat(start - new_off[:-1], lengths)
  return pa.ListArray.from_arrays(pa.array(new_off.astype(np.int32)),
                                  values.filter(pa.array(keep)).take(
                                      pa.array(idx, pa.int64())))


def stage(source_dir, out_dir, config):
  """Writes impressions/, items.parquet and users.parquet into `out_dir`."""
  files = splits(source_dir)
  for _, path in files:
    extra = [c for c in staging.check_header(path, READ) if c not in READ]
    if extra:
      logging.warning('%s: columns not read (see mmrec/data/readers/'
                      'taobao_ad.py): %s', path, extra)
  k = config.convert.max_bag
  staged = staging.Staged(out_dir, 'impressions')
  items = staging.FirstSeen(ITEM, ITEM_FIELDS)
  users = staging.FirstSeen(USER, USER_FIELDS + HISTORIES)
  for split, path in files:
    row0 = 0
    for b in staging.batches(path, list(READ), list(TYPES), header=True):
      t = pa.Table.from_batches([b])
      # Checked here so errors name the release's file, not the staged one.
      columns.ids(t.column(USER), path, USER, row0)
      columns.ids(t.column(ITEM), path, ITEM, row0)
      label = columns.labels(t.column(LABEL), path, LABEL, row0)
      staged.write(pa.table({
          'user': t.column(USER), 'item': t.column(ITEM),
          'label': pa.array(label), 'split': pa.array([split] * len(t)),
          'history': pa.array([[]] * len(t), pa.list_(pa.int64()))}))
      for name in HISTORIES:
        t = t.set_column(t.schema.get_field_index(name), name,
                         last_tokens(t.column(name), k))
      items.add(t)
      users.add(t)
      row0 += len(t)
  it = items.table(['item', *ITEM_FIELDS])
  pq.write_table(pa.table({'item': it.column('item'), **{
      f: _missing(it.column(f)) for f in ITEM_FIELDS}}),
                 os.path.join(out_dir, 'items.parquet'))
  us = users.table(['user', *USER_FIELDS, *HISTORIES])
  pq.write_table(pa.table({'user': us.column('user'), **{
      f: _missing(us.column(f)) for f in USER_FIELDS}, **{
          h: us.column(h) for h in HISTORIES}}),
                 os.path.join(out_dir, 'users.parquet'))
  return [s for s, _ in files]
