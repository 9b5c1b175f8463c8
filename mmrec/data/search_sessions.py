"""Own-data search sessions (the search log) -> the mmrec_search table.

The log is `search.parquet`, or the shards `search/*.parquet` read in name
order as one table (every shard with the same optional columns). Schema
(docs/data_format.md): `item` (the purchased item, required), a query as
`query_text` (text) and/or `query_image` (a path relative to the source
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

Streamed, never read whole: a first pass over every column but the images
(ids, time or split, the query strings: `chunk_rows` rows at a time) checks
every session, decides its split and counts the splits before anything is
written; then each split's writer reads the log again and decodes the images
and tokenises the text of its own sessions only, at most `DECODE_ROWS` at a
time, so each image is decoded once. What is kept between the passes is one
byte per session. Rows are numbered across the shards: a session's id, the
every-10th fallback and the row an error names are that global position.
"""

import contextlib
import os

from absl import logging
import numpy as np

from mmrec.data import columns
from mmrec.data import images
from mmrec.data import titles

HELD_OUT_EVERY = 10  # without time or split: every 10th session
# Sessions decoded at once: at most 4096 (12 MiB of 32 x 32 query images)
# and 64 MiB of images; the first pass decodes none and takes chunk_rows.
DECODE_ROWS = 4096
DECODE_BYTES = 1 << 26
OPTIONAL = ('query_text', 'query_image', 'hard_negatives', 'user', 'time',
            'split')
SPLITS = ('train', 'test')
# What the first pass decides per session: dropped (the purchased item has
# no id), or the index + 1 of its split.
_DROPPED, _TRAIN, _TEST = 0, 1, 2


def convert(conv, has_titles):
  """The search log's `Sessions`, or None without a log.

  `conv`: the converter's `impression_scan.ImpressionScan` (ids, days,
  options, source directory); `has_titles`: whether items have titles (text
  queries need the text tower they train). The first pass runs here; set
  `tok` (the tokenizer, trained on the titles and `train_texts`) before the
  tables are written.
  """
  paths = columns.table_files(conv.src, 'search', required=False)
  return Sessions(conv, has_titles, paths) if paths else None


class Sessions:
  """The mmrec_search table of a search log, written split by split.

  Attributes:
    splits: {'train' / 'test': a zero-argument callable returning an
      iterator of {field: array} chunks} (see `builders.TableBuilder`).
    example: {field: array with no rows}: the features.
    counts: {'train' / 'test': number of sessions} (the manifest's).
    train_texts: the text queries of the training sessions (the tokenizer
      learns their words too: titles alone left 97% of Chinese query tokens
      unknown on a real log, issue 22).
    tok: the tokenizer that encodes the text queries (set by the converter).
  """

  def __init__(self, conv, has_titles, paths):
    self.conv, self.has_titles, self.paths = conv, has_titles, paths
    self.tok = None
    self.train_texts = []
    self.log = paths[0] if len(paths) == 1 else (
        f'{os.path.dirname(paths[0])}/*.parquet ({len(paths)} shards)')
    self._schema()
    self.example = self._zeros(0)
    self._scan()
    self.splits = {s: (lambda s=s: self._rows(s)) for s in SPLITS}

  def _schema(self):
    """The optional columns (the same in every shard) and where shards start."""
    first, starts, n = None, {}, 0
    for path in self.paths:
      f = columns.open_file(path)
      names = f.schema_arrow.names
      found = [c for c in OPTIONAL if c in names]
      if first is None:
        first, first_names = found, names
      elif found != first:
        # Else a column of a later shard would be silently ignored, or its
        # sessions read without a column the first shard has.
        raise columns.InputError(
            f'{path}: optional columns {found}, but {self.paths[0]} has '
            f'{first}; every shard of the search log needs the same columns')
      starts[path] = n
      n += f.metadata.num_rows
    if 'query_text' not in first and 'query_image' not in first:
      raise columns.InputError(f'{self.paths[0]}: a search session needs a '
                               "query: a 'query_text' or 'query_image' "
                               f'column (found {first_names})')
    self.optional, self.starts, self.num_rows = first, starts, n
    if 'time' in first and not self.conv.by_split:
      self.when = 'time'
    else:
      self.when = 'split' if 'split' in first else None

  def _chunks(self, cols, chunk_rows):
    """(path, global row of the chunk's first row, batch) over every shard."""
    for path, row0, batch in columns.chunks(self.paths, ['item'] + cols, (),
                                            chunk_rows):
      yield path, self.starts[path] + row0, batch

  @contextlib.contextmanager
  def _numbered(self, path):
    """Says how the row of an error in a later shard counts."""
    try:
      yield
    except columns.InputError as e:
      if not self.starts[path]:  # its rows are the file's own
        raise
      raise columns.InputError(
          f'{e} (rows are numbered across the {len(self.paths)} shards of the '
          f'search log in name order; this shard starts at row '
          f'{self.starts[path]})') from e

  # --- Pass 1: every session's split ----------------------------------------

  def _scan(self):
    """Checks every column but the images; sets the split of each session."""
    conv = self.conv
    cols = [c for c in self.optional
            if c not in ('time', 'split') or c == self.when]
    self.code = np.zeros(self.num_rows, np.int8)
    for path, g, batch in self._chunks(cols, conv.opt.chunk_rows):
      with self._numbered(path):
        bought = self._bought(batch, path, g)
        image_q, text = self._queries(batch, path, g)
        held = self._held_out(batch, path, g)
        if 'user' in self.optional:
          self._users(batch, path, g)
        if 'hard_negatives' in self.optional:
          self._hard_negatives(batch, path, g)
      if (~image_q).any() and not self.has_titles:
        raise columns.InputError(f'{self.log}: text queries need item titles '
                                 '(the tokenizer is trained on them); '
                                 "items.parquet has no 'title' column")
      held |= conv.launch_day[bought] >= conv.first_test_day
      code = np.where(bought > 0, np.where(held, _TEST, _TRAIN), _DROPPED)
      self.code[g:g + batch.num_rows] = code
      self.train_texts += [text[r] for r in np.flatnonzero(
          (code == _TRAIN) & ~image_q)]
    self.counts = {s: int((self.code == k).sum())
                   for s, k in zip(SPLITS, (_TRAIN, _TEST))}
    dropped = int((self.code == _DROPPED).sum())
    if dropped:
      logging.warning(
          '%s: %d of %d search sessions buy an item neither items.parquet '
          'nor the impressions have (or one rarer than convert.min_count): '
          'left out of pre-training',
          self.log, dropped, self.num_rows)
    for split, n in self.counts.items():
      if not n:
        raise columns.InputError(
            f'{self.log}: no {split} search sessions (of {self.num_rows}; '
            f'{int((self.code == _DROPPED).sum())} buy an item without an id)')

  def _held_out(self, batch, path, g):
    n = batch.num_rows
    if self.when == 'time':
      sec = columns.times(batch.column('time'), path, 'time', g)
      return (sec - self.conv.t0) // 86400 >= self.conv.first_test_day
    if self.when == 'split':
      s = np.asarray(batch.column('split').to_pylist(), object)
      bad = (s != 'train') & (s != 'test')
      if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise columns.InputError(f"{path}, column 'split', row {g + r}: "
                                 f"{s[r]!r}, expected 'train' or 'test'")
      return (s == 'test').astype(bool)
    return (g + np.arange(n)) % HELD_OUT_EVERY == HELD_OUT_EVERY - 1

  # --- Columns of a chunk (both passes) ---------------------------------------

  def _bought(self, batch, path, g):
    return self.conv.items(self.conv.raw_ids(batch, path, g, 'item'))

  def _users(self, batch, path, g):
    return self.conv.users(self.conv.raw_ids(batch, path, g, 'user'))

  def _queries(self, batch, path, g):
    """(is an image query, the query texts or Nones) of every row."""
    n = batch.num_rows
    image_q = (np.array([bool(x) for x in
                         batch.column('query_image').to_pylist()], bool)
               if 'query_image' in self.optional else np.zeros(n, bool))
    text = (batch.column('query_text').to_pylist()
            if 'query_text' in self.optional else [None] * n)
    no_query = ~image_q & np.array([not x for x in text], bool)
    if no_query.any():
      r = int(np.flatnonzero(no_query)[0])
      raise columns.InputError(f"{path}, row {g + r}: no query (neither "
                               "'query_text' nor 'query_image')")
    return image_q, text

  def _hard_negatives(self, batch, path, g):
    """(n, H) ids: the first H known hard negatives of each row, 0-padded."""
    col = batch.column('hard_negatives')
    n, H = batch.num_rows, self.conv.opt.max_hard_negatives
    offsets, flat = columns.id_lists(col, path, 'hard_negatives', g)
    if len(flat):
      self.conv.kinds.check('item', flat, path, 'hard_negatives')
    ids = self.conv.items(flat)
    known = ids > 0
    row = np.repeat(np.arange(n), np.diff(offsets))[known]
    rank = np.arange(len(row)) - np.searchsorted(row, row)
    first = rank < H
    hard = np.zeros((n, H), np.int32)
    hard[row[first], rank[first]] = ids[known][first]
    return hard

  # --- Pass 2: the rows of a split ------------------------------------------

  def _zeros(self, m):
    opt = self.conv.opt
    s, T, H = opt.image_size, opt.title_length, opt.max_hard_negatives
    return {'session_id': np.zeros(m, np.int32),
            'user_id': np.zeros(m, np.int32),
            'query_is_image': np.zeros(m, bool),
            'query_image': np.zeros((m, s, s, 3), np.uint8),
            'query_text': np.zeros((m, T), np.int32),
            'purchased_item': np.zeros(m, np.int32),
            'hard_negatives': np.zeros((m, H), np.int32),
            'hard_negative_mask': np.zeros((m, H), bool),
            'held_out': np.zeros(m, bool)}

  def _rows(self, split):
    """Chunks of the split's sessions, in log order."""
    want = _TEST if split == 'test' else _TRAIN
    opt = self.conv.opt
    rows = min(opt.chunk_rows, DECODE_ROWS,
               max(1, DECODE_BYTES // (3 * opt.image_size ** 2)))
    cols = [c for c in self.optional if c not in ('time', 'split')]
    unknown = np.zeros(2, np.int64)  # text queries, mostly unknown ones
    for path, g, batch in self._chunks(cols, rows):
      mine = np.flatnonzero(self.code[g:g + batch.num_rows] == want)
      if len(mine):
        with self._numbered(path):
          out = self._table(batch, path, g, mine, split == 'test')
        text = out['query_text'][~out['query_is_image']]
        unknown += (len(text), titles.mostly_unknown(self.tok, text).sum())
        yield out
    titles.warn_unknown(self.tok, *unknown, f'{split} text queries of '
                        f'{self.log}')

  def _table(self, batch, path, g, mine, held):
    """The stored fields of rows `mine` of a chunk."""
    opt = self.conv.opt
    out = self._zeros(len(mine))
    out['session_id'][:] = g + mine
    out['purchased_item'][:] = self._bought(batch, path, g)[mine]
    if 'user' in self.optional:
      out['user_id'][:] = self._users(batch, path, g)[mine]
    image_q, text = self._queries(batch, path, g)
    image = image_q[mine]
    out['query_is_image'][:] = image
    rows = mine[image]
    if len(rows):
      rel = np.asarray(batch.column('query_image').to_pylist(), object)[rows]
      out['query_image'][image] = images.read_many(
          self.conv.src, rel, opt.image_size, path, 'query_image', g + rows,
          opt.image_background)
    rows = mine[~image]
    if len(rows):
      out['query_text'][~image] = titles.encode(
          self.tok, [text[r] for r in rows], opt.title_length)
    if 'hard_negatives' in self.optional:
      out['hard_negatives'][:] = self._hard_negatives(batch, path, g)[mine]
    out['hard_negative_mask'][:] = out['hard_negatives'] > 0
    out['held_out'][:] = held
    return out
