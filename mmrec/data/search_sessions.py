"""Own-data search sessions (search.parquet) -> the mmrec_search table.

Schema (docs/data_format.md): `item` (the purchased item, required), a query
as `query_text` (text) and/or `query_image` (a path relative to the source
directory; an image query when present), optional `hard_negatives` (list of
items clicked but not bought), optional `user`, and `time` (sessions on the
test days are held out) or `split` ('train' / 'test'). Without either, every
10th session is held out. Sessions buying a new item (first shown on a test
day) are always held out, as the world's: pre-training never sees new items.

Stored as the world's search table: session_id, user_id, query_is_image,
query_image (S, S, 3), query_text (T,) with the titles' tokenizer,
purchased_item, hard_negatives (H,), hard_negative_mask (H,), held_out;
split into 'train' and 'test' (= held out). A session whose purchased item
has no id (rare: below the frequency cut-off, or unknown) is dropped; so is
an unknown hard negative (its mask is False).
"""

import numpy as np

from mmrec.data import columns
from mmrec.data import images
from mmrec.data import titles

HELD_OUT_EVERY = 10  # without time or split: every 10th session


def convert(conv, tok):
  """{'train': table, 'test': table} of search.parquet, or None without it.

  `conv`: the `convert.Converter` (ids, days, options, source directory);
  `tok`: the titles' tokenizer (None without titles).
  """
  paths = columns.table_files(conv.src, 'search', required=False)
  if not paths:
    return None
  path = paths[0]
  names = columns.open_file(path).schema_arrow.names
  optional = [c for c in ('query_text', 'query_image', 'hard_negatives',
                          'user', 'time', 'split') if c in names]
  t = columns.read_all(path, ['item'], optional)
  if 'query_text' not in optional and 'query_image' not in optional:
    raise columns.InputError(f'{path}: a search session needs a query: a '
                             f"'query_text' or 'query_image' column (found "
                             f'{names})')
  n = t.num_rows
  raw = conv.kinds.check('item', columns.ids(t.column('item'), path, 'item'),
                         path, 'item')
  bought = conv.items(raw)
  image_q = (np.array([bool(x) for x in t.column('query_image').to_pylist()])
             if 'query_image' in optional else np.zeros(n, bool))
  text = (t.column('query_text').to_pylist() if 'query_text' in optional
          else [None] * n)
  no_query = ~image_q & np.array([not x for x in text])
  if no_query.any():
    r = int(np.flatnonzero(no_query)[0])
    raise columns.InputError(f"{path}, row {r}: no query (neither "
                             "'query_text' nor 'query_image')")
  if (~image_q).any() and tok is None:
    raise columns.InputError(f'{path}: text queries need item titles (the '
                             'tokenizer is trained on them); items.parquet '
                             "has no 'title' column")
  held = _held_out(conv, t, path, optional)
  held |= conv.launch_day[bought] >= conv.first_test_day
  keep = np.flatnonzero(bought > 0)
  H = conv.opt.max_hard_negatives
  hard = np.zeros((n, H), np.int32)
  if 'hard_negatives' in optional:
    offsets, flat = columns.id_lists(
        t.column('hard_negatives').combine_chunks(), path, 'hard_negatives')
    ids = conv.items(conv.kinds.check('item', flat, path, 'hard_negatives')
                     if len(flat) else flat)
    for r in range(n):
      got = ids[offsets[r]:offsets[r + 1]]
      got = got[got > 0][:H]
      hard[r, :len(got)] = got
  s = conv.opt.image_size
  query_image = np.zeros((n, s, s, 3), np.uint8)
  rows = np.flatnonzero(image_q)
  if len(rows):
    paths_ = np.asarray(t.column('query_image').to_pylist(), object)[rows]
    query_image[rows] = images.read_many(conv.src, paths_, s, path,
                                         'query_image', rows)
  query_text = np.zeros((n, conv.opt.title_length), np.int32)
  rows = np.flatnonzero(~image_q)
  if len(rows):
    query_text[rows] = titles.encode(tok, [text[r] for r in rows],
                                     conv.opt.title_length)
  user = (conv.users(conv.kinds.check('user', columns.ids(
      t.column('user'), path, 'user'), path, 'user'))
          if 'user' in optional else np.zeros(n, np.int32))
  table = {'session_id': np.arange(n, dtype=np.int32), 'user_id': user,
           'query_is_image': image_q, 'query_image': query_image,
           'query_text': query_text, 'purchased_item': bought,
           'hard_negatives': hard, 'hard_negative_mask': hard > 0,
           'held_out': held}
  out = {split: {k: v[keep[held[keep] == (split == 'test')]]
                 for k, v in table.items()} for split in ('train', 'test')}
  for split, rows_ in out.items():
    if not len(rows_['session_id']):
      raise columns.InputError(f'{path}: no {split} search sessions (of {n}; '
                               f'{int((bought == 0).sum())} buy an item '
                               'without an id)')
  return out


def _held_out(conv, t, path, optional):
  n = t.num_rows
  if 'time' in optional and not conv.by_split:
    sec = columns.times(t.column('time'), path, 'time')
    return (sec - conv.t0) // 86400 >= conv.first_test_day
  if 'split' in optional:
    s = np.asarray(t.column('split').to_pylist(), object)
    bad = (s != 'train') & (s != 'test')
    if bad.any():
      r = int(np.flatnonzero(bad)[0])
      raise columns.InputError(f"{path}, column 'split', row {r}: {s[r]!r}, "
                               "expected 'train' or 'test'")
    return s == 'test'
  return np.arange(n) % HELD_OUT_EVERY == HELD_OUT_EVERY - 1

