"""Bring your own data: Parquet tables -> a dataset in mmrec's format.

Input, one directory (docs/data_format.md, "Your own data"):
  impressions.parquet, or impressions/*.parquet shards (read in name order):
    user, item   ids: integers or strings, any values (remapped)
    label        0 / 1 (1 = click)
    time         epoch seconds, a timestamp or date, or an ISO-8601 string;
                 or instead `split` ('train' / 'validation' / 'test') for
                 data shipped split
    history      optional list of item ids, oldest first: the behaviours
                 before this impression (else built from earlier clicks)
  items.parquet (optional): item, optional `title` (text) and `image` (a
    path relative to the directory); every other column is a categorical
    field (integer or string) or, when a list, a bag (genres, tags)
  users.parquet (optional): user + categorical fields / bags (the CTR
    model embeds every one, as the items')
  vectors.parquet (optional): item, vector (list of numbers): shipped item
    vectors, written as the dataset's item_vectors.npz
  search.parquet (optional): search -> purchase sessions for pre-training
    (search_sessions.py)
  candidates.parquet (optional): item: the candidates held-out retrieval
    ranks (else the whole catalogue; retrieval_eval.py)

What the conversion does:
  * days: day = whole days since midnight (UTC) of the first impression; the
    last `test_days` days are the test split, the `validation_days` before
    them the validation day(s) (held out of training by the CTR job's
    `--config.validation`). With `split` instead of time: train = day 0,
    validation (if any) = day 1, test = the day after.
  * ids: 0 is reserved for "rare or unknown" (users and items), real ids run
    1..N in sorted order of the raw ids. A user or item with fewer than
    `min_count` occurrences in the training days (impressions, and history
    entries for items) maps to 0, except items never shown in training but
    shown on a later day: the new items, kept for the content route.
  * histories: right-aligned `seq_item` (L = seq_len) + `seq_len` as the
    world's; built when not given from the user's clicks on days before the
    impression's day (oldest first), as the world's behaviour sequences.
  * items: launch_day = the first day an item was shown (new items:
    launch_day >= first test day); categorical values remapped to 1..V-1 by
    sorted value (0 = missing); bags to fixed width `max_bag`; titles
    tokenised by a WordPiece tokenizer trained on the titles of the items of
    the training days (titles.py); images read, converted to RGB and resized
    to `image_size`.
  * streaming: impressions are read in chunks of `chunk_rows`, never whole:
    the time column alone (days), then every column once (counts, clicks).
    That pass keeps what the dataset stores of each row (ids, label, day and
    the kept end of its history) in a scratch file per split inside the
    dataset directory, from which the rows are written; items and users
    (catalogue-sized) are read whole.
The dataset is built aside and renamed into place (`dataset_job.py`).
"""

import dataclasses
import os
import tempfile

from absl import logging
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmrec.data import builders
from mmrec.data import catalogue_tables
from mmrec.data import columns
from mmrec.data import images
from mmrec.data import manifest as manifest_lib
from mmrec.data import search_sessions
from mmrec.data import titles

DAY = 86400
SPLITS = ('train', 'validation', 'test')  # values of a `split` column
ITEM_RESERVED = ('item', 'title', 'image')


@dataclasses.dataclass(frozen=True)
class Options:
  """Conversion settings (config.convert of experiments/configs/data.py)."""
  name: str = 'parquet'
  source: str = ''
  test_days: int = 1
  validation_days: int = 1
  min_count: int = 1
  seq_len: int = 50
  # > 0: also store the last `long_seq_len` behaviours (`long_seq_item`,
  # `long_seq_len`): SimTier over a long history and GSU retrieval
  # (config.retrieve_top_k), the MUSE code's 1000-long setting.
  long_seq_len: int = 0
  image_size: int = 32
  title_length: int = 16
  vocab_size: int = 8000
  max_bag: int = 8
  max_hard_negatives: int = 3  # slots per search session (search.parquet)
  chunk_rows: int = 65536
  # Item categorical fields the behaviours carry too (a prefix of the item
  # fields in column order); None = the first item field, if any.
  seq_features: tuple | None = None
  # [leaf, top] fields for id_stats' category shares; None = the first.
  category_fields: tuple | None = None

  @classmethod
  def from_config(cls, c):
    d = {f.name: c[f.name] for f in dataclasses.fields(cls) if f.name in c}
    for k in ('seq_features', 'category_fields'):
      if d.get(k) is not None:
        d[k] = tuple(d[k])
    return cls(**d)


class IdMap:
  """Raw id -> dense id: kept raw ids (sorted) get 1..N, the rest 0."""

  def __init__(self, kept):
    self.keys = np.asarray(kept)
    self._set = pa.array(self.keys)

  def __len__(self):
    return len(self.keys) + 1

  def __call__(self, raw):
    if not len(self.keys) or not len(raw):
      return np.zeros(len(raw), np.int32)
    # A hash lookup: ~5x faster than a binary search over 1e5+ keys.
    idx = pc.index_in(pa.array(raw), value_set=self._set).fill_null(-1)
    return (idx.to_numpy() + 1).astype(np.int32)


class _Counter:
  """Occurrences per raw key, merged chunk by chunk (bounded parts).

  With `reduce` (e.g. np.minimum) it reduces given values per key instead.
  """

  PENDING = 1 << 22  # keys counted in one hash pass (32 MiB of int64)

  def __init__(self, reduce=np.add):
    self.parts, self.reduce = [], reduce
    self.pending, self.num_pending = [], 0

  def add(self, keys, values=None):
    if not len(keys):
      return
    if values is None and self.reduce is np.add:
      # Plain counts: hashed a few million keys at a time, as sorting every
      # chunk's history ids was most of the scan.
      self.pending.append(keys)
      self.num_pending += len(keys)
      if self.num_pending >= self.PENDING:
        self._count_pending()
      return
    self._add_part(self._unique(keys, values))

  def _count_pending(self):
    counts = pc.value_counts(pa.array(np.concatenate(self.pending)))
    self.pending, self.num_pending = [], 0
    self._add_part((counts.field('values').to_numpy(zero_copy_only=False),
                    counts.field('counts').to_numpy().astype(np.int64)))

  def _add_part(self, part):
    self.parts.append(part)
    if len(self.parts) > 16:
      self.parts = [self._merged()]

  def _unique(self, keys, values):
    order = np.argsort(keys, kind='stable')
    keys, values = keys[order], values[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return keys[starts], self.reduce.reduceat(values, starts)

  def _merged(self):
    return self._unique(np.concatenate([p[0] for p in self.parts]),
                        np.concatenate([p[1] for p in self.parts]))

  def result(self):
    """(sorted unique keys, their counts or reduced values)."""
    if self.pending:
      self._count_pending()
    if not self.parts:
      return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return self._merged()


def _lookup(keys, values, raw, default):
  """values[keys == raw] per raw key (default when absent)."""
  if not len(keys):
    return np.full(len(raw), default, values.dtype)
  idx = np.minimum(np.searchsorted(keys, raw), len(keys) - 1)
  return np.where(keys[idx] == raw, values[idx], default)


class _Kinds:
  """Keeps one id kind (int / str) per id space across files and columns."""

  def __init__(self):
    self.kinds = {}

  def check(self, space, arr, path, column):
    kind = 'str' if arr.dtype == object else 'int'
    first = self.kinds.setdefault(space, (kind, path, column))
    if first[0] != kind:
      raise columns.InputError(
          f'{path}, column {column!r}: {kind} {space} ids, but {first[1]} '
          f'column {first[2]!r} has {first[0]} ones; one kind per id space')
    return arr


class _Spill:
  """The rows of one split that the dataset stores, from scan to writing.

  An Arrow IPC stream in the scratch directory, one batch per input chunk:
  raw ids, label, day and (given histories) the kept behaviours; a fraction
  of the input when histories are long, and read back without parsing.
  """

  def __init__(self, path):
    self.path, self.sink, self.writer = path, None, None

  def add(self, mine, user, item, label, day, history):
    if not mine.any():
      return
    item = pa.array(item[mine])
    cols = {'user': pa.array(user[mine]), 'item': item,
            'label': pa.array(label[mine]), 'day': pa.array(day[mine])}
    if history is not None:
      offsets, flat = history
      start, end = offsets[:-1][mine], offsets[1:][mine]
      kept = flat[columns.spans(start, end)]
      # Typed as the item column: a chunk of empty histories has no type.
      cols['history'] = pa.LargeListArray.from_arrays(
          np.concatenate([[0], np.cumsum(end - start)]),
          pa.array(kept if len(kept) else [], item.type))
    batch = pa.RecordBatch.from_pydict(cols)
    if self.writer is None:
      self.sink = pa.OSFile(self.path, 'wb')
      self.writer = pa.ipc.new_stream(self.sink, batch.schema)
    self.writer.write_batch(batch)

  def close(self):
    if self.writer is not None:
      self.writer.close()
      self.sink.close()

  def __iter__(self):
    """(user, item, label, day, history or None) numpy chunks."""
    if self.writer is None:
      return
    with pa.OSFile(self.path) as source:
      for batch in pa.ipc.open_stream(source):
        user, item, label, day = (
            batch.column(k).to_numpy(zero_copy_only=False)
            for k in ('user', 'item', 'label', 'day'))
        history = None
        if 'history' in batch.schema.names:
          col = batch.column('history')
          history = (col.offsets.to_numpy(),
                     col.values.to_numpy(zero_copy_only=False))
        yield user, item, label, day, history


class Converter:
  """One conversion of `source_dir` (see the module docstring)."""

  def __init__(self, source_dir, options):
    self.src = source_dir
    self.opt = options
    self.paths = columns.table_files(source_dir, 'impressions')
    first = columns.open_file(self.paths[0]).schema_arrow
    self.by_split = 'time' not in first.names and 'split' in first.names
    if self.by_split:
      # A row's time is its place in all files together (shards in name
      # order): file order across shards, not each shard's own row number.
      counts = [columns.open_file(p).metadata.num_rows for p in self.paths]
      self.file_row0 = dict(zip(self.paths, np.cumsum([0] + counts[:-1])))
    self.has_history = 'history' in first.names
    self.kinds = _Kinds()

  # --- Reading impressions ----------------------------------------------

  def _chunks(self, extra=()):
    when = 'split' if self.by_split else 'time'
    return columns.chunks(self.paths, ['user', 'item', 'label', when],
                          extra, self.opt.chunk_rows)

  def _days(self, path, row0, batch):
    """(day, time) of every row of a chunk."""
    col = batch.column(batch.schema.get_field_index(
        'split' if self.by_split else 'time'))
    if self.by_split:
      s = np.asarray(col.to_pylist(), dtype=object)
      bad = ~np.isin(s, SPLITS)
      if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise columns.InputError(f"{path}, column 'split', row {row0 + i}: "
                                 f'{s[i]!r}, expected one of {SPLITS}')
      day = np.where(s == 'test', self.first_test_day,
                     np.where(s == 'validation', self.first_test_day - 1, 0))
      # Rows of one split keep file order (the time of shipped-split data).
      return day.astype(np.int32), (self.file_row0[path] + row0 +
                                    np.arange(len(s), dtype=np.int64))
    t = columns.times(col, path, 'time', row0)
    return ((t - self.t0) // DAY).astype(np.int32), t

  def raw_ids(self, batch, path, row0, name):
    """Column `name` of a chunk as checked raw ids (user ids for 'user',
    item ids for any other column)."""
    col = batch.column(batch.schema.get_field_index(name))
    space = 'user' if name == 'user' else 'item'
    return self.kinds.check(space, columns.ids(col, path, name, row0), path,
                            name)

  def _histories(self, batch, path, row0):
    """(offsets, raw ids) of the kept behaviours of every row.

    Only the last seq_len (long_seq_len) behaviours are stored, so only
    those are read out, counted and mapped.
    """
    col = batch.column(batch.schema.get_field_index('history'))
    offsets, flat = columns.id_lists(col, path, 'history', row0,
                                     last=self._kept)
    if len(flat):
      self.kinds.check('item', flat, path, 'history')
    return offsets, flat

  def scan_days(self):
    """Pass 1: the time range -> day 0, the number of days, the test days."""
    if self.by_split:
      found = set()
      for _, _, batch in columns.chunks(self.paths, ['split'], (),
                                        self.opt.chunk_rows):
        found.update(batch.column(0).unique().to_pylist())
      # train = day 0, [validation = day 1,] test = the last day.
      self.validation_days = int('validation' in found)
      self.t0, self.num_days = 0, 2 + self.validation_days
      self.first_test_day = self.num_days - 1
      return
    lo, hi = None, None
    for path, row0, batch in columns.chunks(self.paths, ['time'], (),
                                            self.opt.chunk_rows):
      t = columns.times(batch.column(0), path, 'time', row0)
      if len(t):
        lo = t.min() if lo is None else min(lo, t.min())
        hi = t.max() if hi is None else max(hi, t.max())
    if lo is None:
      raise columns.InputError(f'{self.paths[0]}: no impressions')
    self.t0 = int(lo - lo % DAY)
    self.num_days = int((hi - self.t0) // DAY) + 1
    self.first_test_day = self.num_days - self.opt.test_days
    self.validation_days = self.opt.validation_days
    if self.first_test_day - self.validation_days < 1:
      raise columns.InputError(
          f'{self.src}: the impressions span {self.num_days} day(s) '
          f'(from {np.datetime64(int(lo), "s")} to {np.datetime64(int(hi), "s")}'
          f'); test_days={self.opt.test_days} + validation_days='
          f'{self.validation_days} leave no training day')

  def scan_ids(self, scratch):
    """Pass 2: id counts over the training days, launch days, clicks.

    Also keeps the rows of each split in `scratch` (`_Spill`) for
    `impressions`, so that no input file is read a third time.
    """
    users, items, shown = _Counter(), _Counter(), _Counter()
    launch = _Counter(np.minimum)
    clicks = []  # (user, day, time, item) of every click (histories)
    rows = {'train': 0, 'test': 0}
    self.spills = {s: _Spill(os.path.join(scratch, f'{s}.arrows'))
                   for s in rows}
    extra = ('history',) if self.has_history else ()
    for path, row0, batch in self._chunks(extra):
      day, t = self._days(path, row0, batch)
      user = self.raw_ids(batch, path, row0, 'user')
      item = self.raw_ids(batch, path, row0, 'item')
      label = columns.labels(batch.column(batch.schema.get_field_index(
          'label')), path, 'label', row0)
      train = day < self.first_test_day
      rows['train'] += int(train.sum())
      rows['test'] += int((~train).sum())
      users.add(user[train])
      items.add(item[train])
      shown.add(item)
      launch.add(item, day.astype(np.int64))
      history = None
      if self.has_history:
        history = self._histories(batch, path, row0)
        offsets, flat = history
        if len(flat):
          items.add(flat[columns.spans(offsets[:-1][train],
                                       offsets[1:][train])])
      else:
        c = label == 1
        clicks.append((user[c], day[c], t[c], item[c]))
      for split, mine in (('train', train), ('test', ~train)):
        self.spills[split].add(mine, user, item, label, day, history)
    for spill in self.spills.values():
      spill.close()
    for split, n in rows.items():
      if not n:
        raise columns.InputError(
            f'{self.src}: the {split} split is empty (first test day '
            f'{self.first_test_day} of {self.num_days}); check time / split')
    self.rows = rows
    m = self.opt.min_count
    ukeys, ucount = users.result()
    self.users = IdMap(ukeys[ucount >= m])
    ikeys, icount = items.result()
    skeys, _ = shown.result()
    new = skeys[_lookup(ikeys, icount, skeys, 0) == 0]
    self.items = IdMap(np.union1d(ikeys[icount >= m], new))
    self.trained_items = ikeys[icount > 0]
    lkeys, lday = launch.result()
    self.launch_day = np.zeros(len(self.items), np.int32)
    self.launch_day[self.items(lkeys)] = lday
    self.launch_day[0] = 0
    if not self.has_history:
      self._index_clicks(clicks)
    logging.info('converted ids: %d users, %d items (min_count %d); rows %s',
                 len(self.users), len(self.items), m, rows)

  def _index_clicks(self, clicks):
    """Clicks sorted by (user, day) with a searchable key (histories)."""
    user, day, t, item = (np.concatenate([c[k] for c in clicks])
                          for k in range(4))
    # Every raw user (kept or not): histories are per person, not per id.
    self.click_users = np.unique(user)
    u = np.searchsorted(self.click_users, user)
    # By day, then time, per user (oldest first; ties keep file order): a
    # shipped split's days need not follow file order.
    order = np.lexsort((t, day, u))
    self.click_key = u[order] * (self.num_days + 1) + day[order].astype(
        np.int64)
    self.click_item = self.items(item[order])

  def _built_history(self, user, day):
    """(start, end) into the sorted clicks: the user's clicks before day."""
    u = np.searchsorted(self.click_users, user)
    known = (u < len(self.click_users))
    known[known] = self.click_users[u[known]] == user[known]
    base = u.astype(np.int64) * (self.num_days + 1)
    start = np.searchsorted(self.click_key, base)
    end = np.searchsorted(self.click_key, base + day)
    end = np.where(known, end, start)
    return start, end, self.click_item

  @property
  def _kept(self):
    return max(self.opt.seq_len, self.opt.long_seq_len)

  def _sequences(self, start, end, values, L):
    """Right-aligned (N, L) ids and lengths of the last L of [start, end)."""
    n = np.minimum(end - start, L)
    pos = end[:, None] - L + np.arange(L)[None]
    valid = np.arange(L)[None] >= L - n[:, None]
    seq = np.where(valid, values[np.clip(pos, 0, max(len(values) - 1, 0))]
                   if len(values) else 0, 0)
    return seq.astype(np.int32), n.astype(np.int32)

  def impressions(self, split):
    """Pass 3 (one per split): chunks of the stored impression rows."""
    for user, item, label, day, history in self.spills[split]:
      if self.has_history:
        offsets, flat = history
        start, end, values = offsets[:-1], offsets[1:], self.items(flat)
      else:
        start, end, values = self._built_history(user, day)
      seq, n = self._sequences(start, end, values, self.opt.seq_len)
      out = {'user_id': self.users(user), 'item_id': self.items(item),
             'day': day, 'label': label, 'seq_item': seq, 'seq_len': n}
      if self.opt.long_seq_len:
        out['long_seq_item'], out['long_seq_len'] = self._sequences(
            start, end, values, self.opt.long_seq_len)
      yield out

  def impression_example(self):
    L, Lh = self.opt.seq_len, self.opt.long_seq_len
    out = {'user_id': np.zeros(0, np.int32), 'item_id': np.zeros(0, np.int32),
           'day': np.zeros(0, np.int32), 'label': np.zeros(0, np.int8),
           'seq_item': np.zeros((0, L), np.int32),
           'seq_len': np.zeros(0, np.int32)}
    if Lh:
      out.update(long_seq_item=np.zeros((0, Lh), np.int32),
                 long_seq_len=np.zeros(0, np.int32))
    return out

  # --- Catalogue tables -------------------------------------------------

  def _titles(self, raw_titles, ids, keep, num_items, directory):
    text = np.full(num_items, '', dtype=object)
    v = raw_titles
    text[ids[keep]] = [s if isinstance(s, str) else '' for s in v[keep]]
    trained = self.items(self.trained_items)
    corpus = [t for t in text[np.unique(trained[trained > 0])] if t]
    if not corpus:
      raise columns.InputError(f'{self.src}: items.parquet has a title column '
                               'but no item of the training days has a title')
    tok = titles.train(corpus, self.opt.vocab_size)
    titles.save(tok, directory)
    return titles.encode(tok, list(text), self.opt.title_length), tok

  def _images(self, raw_paths, ids, keep, num_items, path):
    out = np.zeros((num_items, self.opt.image_size, self.opt.image_size, 3),
                   np.uint8)
    rows = np.flatnonzero(keep)
    out[ids[rows]] = images.read_many(self.src, raw_paths[rows],
                                      self.opt.image_size, path, 'image', rows)
    return out

  # --- Everything ---------------------------------------------------------

  def write(self, directory):
    """Writes the dataset (tables, tokenizer, vectors, manifest last)."""
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix='.scratch-',
                                     dir=directory) as scratch:
      m = self._write(directory, scratch)
    manifest_lib.write(directory, m)
    return m

  def _write(self, directory, scratch):
    """Everything but the manifest, which it returns."""
    self.scan_days()
    self.scan_ids(scratch)
    items, icats, ibags, iraw, ipath = catalogue_tables.read(
        self.src, 'items', 'item', self.items, self.kinds, self.opt.max_bag,
        ITEM_RESERVED)
    users, ucats, ubags, _, _ = catalogue_tables.read(
        self.src, 'users', 'user', self.users, self.kinds, self.opt.max_bag)
    items['launch_day'] = self.launch_day
    text = image_size = tok = None
    if 'title' in iraw:
      items['title'], tok = self._titles(*iraw['title'], len(self.items),
                                         directory)
      text = {'tokenizer': titles.FILE, 'vocab_size': tok.get_vocab_size(),
              'length': self.opt.title_length}
    if 'image' in iraw:
      items['image'] = self._images(*iraw['image'], len(self.items), ipath)
      image_size = self.opt.image_size
    vectors = catalogue_tables.vectors(self.src, self.kinds, self.items,
                                       directory)
    candidates = catalogue_tables.candidates(self.src, self.kinds, self.items,
                                             directory)
    search = search_sessions.convert(self, tok)
    tables = [
        (builders.Items, {'catalogue': items}, None),
        (builders.Users, {'catalogue': users}, None),
        (builders.Impressions,
         {s: (lambda s=s: self.impressions(s)) for s in ('train', 'test')},
         self.impression_example()),
    ]
    if search:
      tables.append((builders.Search, search.splits, search.example))
    builders.write_tables(directory, tables)
    names = list(icats)
    seq = (self.opt.seq_features if self.opt.seq_features is not None
           else names[:1])
    cat_fields = (self.opt.category_fields
                  if self.opt.category_fields is not None else names[:1])
    m = manifest_lib.Manifest(
        name=self.opt.name, source=self.opt.source or self.src,
        num_users=len(self.users), num_items=len(self.items),
        num_days=self.num_days, first_test_day=self.first_test_day,
        validation_days=self.validation_days,
        tables={
            manifest_lib.ITEMS: {'fields': list(items),
                                 'splits': {'catalogue': len(self.items)}},
            manifest_lib.USERS: {'fields': list(users),
                                 'splits': {'catalogue': len(self.users)}},
            manifest_lib.IMPRESSIONS: {
                'fields': list(self.impression_example()),
                'splits': dict(self.rows)},
            **({manifest_lib.SEARCH: {
                'fields': list(search.example),
                'splits': dict(search.counts)}} if search else {})},
        categorical={manifest_lib.ITEMS: icats, manifest_lib.USERS: ucats},
        bags={manifest_lib.ITEMS: ibags, manifest_lib.USERS: ubags},
        ctr={'user_features': list(ucats), 'item_features': names,
             'seq_features': list(seq), 'item_bags': list(ibags),
             'user_bags': list(ubags),
             'category_fields': list(cat_fields)},
        image_size=image_size, text=text, vectors=vectors,
        retrieval_candidates=candidates,
        seq_len=self.opt.seq_len, long_seq_len=self.opt.long_seq_len)
    return m
