"""The impression log of own data: streamed passes -> ids, days, stored rows.

The converter's (convert.py) reading of impressions.parquet (or its shards),
in chunks of `chunk_rows`, never whole: `ImpressionScan.scan_days` reads the
time (or split) column alone and fixes day 0, the number of days and the
test days; `scan_ids` reads every column once, counts ids over the training
days into the id maps (id_maps.py), notes launch days and clicks, and keeps
what the dataset stores of each row in a scratch file per split (`_Spill`);
`impressions` then yields the stored rows with their behaviour sequences
(given histories, or built from the user's clicks strictly before the row's
time -- earlier that day too; data shipped split has no time, so there
earlier splits). The search log
(search_sessions.py) reads its ids and days through the same scan.
(Just over the house's ~450 lines: the passes share one chunked reader
and its scratch files, and read better together.)
"""

import os

from absl import logging
import numpy as np
import pyarrow as pa

from mmrec.data import columns
from mmrec.data import id_maps

DAY = 86400
SPLITS = ('train', 'validation', 'test')  # values of a `split` column


def split_policy(opt):
  """The split of convert.Options `opt`, in words."""
  if opt.split == 'share':
    return (f'split=share: test days holding >= {opt.test_share:.0%} of the '
            f'impressions, validation days >= {opt.validation_share:.0%}')
  return (f'split=days: test_days={opt.test_days}, '
          f'validation_days={opt.validation_days}')


def _days_covering(counts, end, rows):
  """The latest day d < end such that days d..end-1 hold >= `rows`
  impressions (at least one day; day 0 if none does)."""
  held = np.cumsum(counts[:end][::-1])  # rows of the last k + 1 days
  k = min(int(np.searchsorted(held, rows)), end - 1)
  return end - 1 - k


def split_days(counts, opt):
  """(first test day, validation days) of impressions per day `counts`.

  split='days': the last `test_days` days, the `validation_days` before;
  split='share': the fewest last days holding `test_share` of the
  impressions, then the fewest days before them holding `validation_share`
  (0: no validation day). A fixed number of days is the wrong unit for a
  log that thins out towards its end (MovieLens: a week held 2% of ml-100k).
  """
  if opt.split == 'days':
    return len(counts) - opt.test_days, opt.validation_days
  if opt.split != 'share':
    raise columns.InputError(f"convert.split={opt.split!r}: expected 'days' "
                             "or 'share'")
  for name in ('test_share', 'validation_share'):
    if not 0 <= getattr(opt, name) < 1:
      raise columns.InputError(f'convert.{name}={getattr(opt, name)}: '
                               'expected a share in [0, 1)')
  total = counts.sum()
  first_test = _days_covering(counts, len(counts), opt.test_share * total)
  validation = 0
  if opt.validation_share > 0 and first_test > 0:
    validation = first_test - _days_covering(counts, first_test,
                                             opt.validation_share * total)
  return first_test, validation


def _when(t):
  return np.datetime64(int(t), 's')


class _Spill:
  """The rows of one split that the dataset stores, from scan to writing.

  An Arrow IPC stream in the scratch directory, one batch per input chunk:
  raw ids, label, day and either the kept behaviours (given histories) or
  the row's time (histories built from earlier clicks); a fraction of the
  input when histories are long, and read back without parsing.
  """

  def __init__(self, path):
    self.path, self.sink, self.writer = path, None, None

  def add(self, mine, user, item, label, day, history, when=None):
    if not mine.any():
      return
    item = pa.array(item[mine])
    cols = {'user': pa.array(user[mine]), 'item': item,
            'label': pa.array(label[mine]), 'day': pa.array(day[mine])}
    if when is not None:
      cols['when'] = pa.array(when[mine])
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
    """(user, item, label, day, history or None, when or None) numpy
    chunks."""
    if self.writer is None:
      return
    with pa.OSFile(self.path) as source:
      for batch in pa.ipc.open_stream(source):
        user, item, label, day = (
            batch.column(k).to_numpy(zero_copy_only=False)
            for k in ('user', 'item', 'label', 'day'))
        history = when = None
        if 'history' in batch.schema.names:
          col = batch.column('history')
          history = (col.offsets.to_numpy(),
                     col.values.to_numpy(zero_copy_only=False))
        if 'when' in batch.schema.names:
          when = batch.column('when').to_numpy()
        yield user, item, label, day, history, when


class ImpressionScan:
  """The passes over `source_dir`'s impressions (see the module docstring).

  After `scan_days`: t0, num_days, first_test_day, validation_days; after
  `scan_ids`: users, items, user_keys (`id_maps.IdMap`; user_keys maps every
  raw user of every split to its own id), trained_items (raw ids seen in
  training), launch_day (per item id), rows (per split).
  """

  has_impressions = True  # (catalogue_scan.CatalogueScan: none)

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
    self.kinds = id_maps.Kinds()

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
    lo = hi = None  # (time, file, row) of the first and the last row
    per_day = id_maps.Counter()  # impressions per (absolute) day
    for path, row0, batch in columns.chunks(self.paths, ['time'], (),
                                            self.opt.chunk_rows):
      t = columns.times(batch.column(0), path, 'time', row0)
      if len(t):
        i, j = int(t.argmin()), int(t.argmax())
        if lo is None or t[i] < lo[0]:
          lo = (int(t[i]), path, row0 + i)
        if hi is None or t[j] > hi[0]:
          hi = (int(t[j]), path, row0 + j)
        per_day.add(t // DAY)
    if lo is None:
      raise columns.InputError(f'{self.paths[0]}: no impressions')
    self.t0 = int(lo[0] - lo[0] % DAY)
    self.num_days = int((hi[0] - self.t0) // DAY) + 1
    self._check_day_range(lo, hi)
    days, n = per_day.result()
    counts = np.zeros(self.num_days, np.int64)
    counts[days - self.t0 // DAY] = n
    self.first_test_day, self.validation_days = split_days(
        counts, self.opt)
    if self.first_test_day - self.validation_days < 1:
      raise columns.InputError(
          f'{self.src}: the impressions span {self.num_days} day(s) '
          f'(from {_when(lo[0])} to {_when(hi[0])}'
          f'); {split_policy(self.opt)} leaves no training day')
    logging.info(
        'split (%s): test days %d-%d (%d impressions), %d validation day(s) '
        '(%d), %d training day(s) before them (%d)', split_policy(self.opt),
        self.first_test_day, self.num_days - 1,
        counts[self.first_test_day:].sum(), self.validation_days,
        counts[self.first_test_day - self.validation_days:
               self.first_test_day].sum(),
        self.first_test_day - self.validation_days,
        counts[:self.first_test_day - self.validation_days].sum())

  def _check_day_range(self, lo, hi):
    """Refuses a day range no log has: one outlier (a time in milliseconds,
    a year typed wrong) would make the test split that one row."""
    limit = self.opt.max_days
    if limit and self.num_days > limit:
      raise columns.InputError(
          f"{hi[1]}, column 'time', row {hi[2]}: {hi[0]} ({_when(hi[0])}) "
          f'lies {self.num_days - 1} days after the first impression '
          f"({lo[1]}, row {lo[2]}: {_when(lo[0])}); more than max_days="
          f'{limit}. A time in milliseconds? Times are epoch seconds. If the '
          'log really spans that long, set config.convert.max_days=0')

  def _check_test_split(self, both):
    """Refuses a test split too small to evaluate on: fewer than
    min_test_users users with both a click and a non-click (GAUC's)."""
    need = self.opt.min_test_users
    if need and both < need:
      raise columns.InputError(
          f'{self.src}: the test split (day {self.first_test_day} of '
          f'{self.num_days}, {self.rows["test"]} rows) has {both} user(s) '
          f'with both a click and a non-click, fewer than min_test_users='
          f'{need}: an outlier time or split value? (check the time / split '
          'column; set config.convert.min_test_users=0 to convert anyway)')

  def scan_ids(self, scratch, catalogue=None):
    """Pass 2: id counts over the training days, launch days, clicks.

    Also keeps the rows of each split in `scratch` (`_Spill`) for
    `impressions`, so that no input file is read a third time.
    `catalogue`: (path, raw ids) of items.parquet; those never shown keep an
    id too (launch day 0: not new, their search sessions split by time).
    """
    users, items, shown = (id_maps.Counter(), id_maps.Counter(),
                           id_maps.Counter())
    everyone = id_maps.Counter()  # every raw user of every split
    # Test users with a click / a non-click: the bootstrap's unit.
    test_pos, test_neg = id_maps.Counter(), id_maps.Counter()
    launch = id_maps.Counter(np.minimum)
    clicks = []  # (user, when, time, item) of every click (histories)
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
      everyone.add(user)
      test_pos.add(user[~train & (label == 1)])
      test_neg.add(user[~train & (label == 0)])
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
        when = self._when(day, t)
        clicks.append((user[c], when[c], t[c], item[c]))
      for split, mine in (('train', train), ('test', ~train)):
        self.spills[split].add(mine, user, item, label, day, history,
                               None if self.has_history else when)
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
    self.users = id_maps.IdMap(ukeys[ucount >= m])
    # The real person of each row, for per-user evaluation (GAUC, the
    # bootstrap): user_id maps cold and rare users to 0, which would lump
    # them into one 'user'.
    self.user_keys = id_maps.IdMap(everyone.result()[0])
    self.test_users_both = len(np.intersect1d(test_pos.result()[0],
                                              test_neg.result()[0]))
    self._check_test_split(self.test_users_both)
    ikeys, icount = items.result()
    skeys, _ = shown.result()
    # Items never in a training row keep an id whatever min_count says: the
    # new items (shown later) and the catalogue's items never shown.
    listed = np.zeros(0, skeys.dtype)
    if catalogue is not None:
      listed = self._catalogue_only(*catalogue, np.union1d(skeys, ikeys))
    unseen = np.union1d(skeys, listed)
    new = unseen[id_maps.lookup(ikeys, icount, unseen, 0) == 0]
    self.items = id_maps.IdMap(np.union1d(ikeys[icount >= m], new))
    self.trained_items = ikeys[icount > 0]
    lkeys, lday = launch.result()
    self.launch_day = np.zeros(len(self.items), np.int32)
    self.launch_day[self.items(lkeys)] = lday
    self.launch_day[0] = 0
    if not self.has_history:
      self._index_clicks(clicks)
    logging.info('converted ids: %d users, %d items (min_count %d); rows %s',
                 len(self.users), len(self.items), m, rows)

  def _catalogue_only(self, path, listed, logged):
    """The items of items.parquet (`listed`) in no impression or history
    (`logged`). If none of them is logged, the table is of another id scheme
    (or, as the Taobao-MM demo files, of other items), not the catalogue:
    none is kept (catalogue_tables.read warns; titles then stop the job)."""
    self.kinds.check('item', listed, path, 'item')
    if len(listed) and len(logged) and not np.isin(listed, logged).any():
      return listed[:0]
    only = np.setdiff1d(listed, logged)
    if len(only):
      logging.info('%s: %d of %d items are in no impression or history: '
                   'kept (content only, no ID signal)', path, len(only),
                   len(listed))
    return only

  def _when(self, day, t):
    """What orders behaviours: the time (epoch seconds), or for data shipped
    split (no time) the split's day, so that only earlier splits count."""
    return day.astype(np.int64) if self.by_split else t

  def _index_clicks(self, clicks):
    """Clicks sorted by (user, when) with a searchable key (histories)."""
    user, when, t, item = (np.concatenate([c[k] for c in clicks])
                           for k in range(4))
    # Every raw user (kept or not): histories are per person, not per id.
    self.click_users = np.unique(user)
    u = np.searchsorted(self.click_users, user)
    # By when, then time, per user (oldest first; ties keep file order): a
    # shipped split's days need not follow file order.
    order = np.lexsort((t, when, u))
    self.click_times = np.unique(when)
    rank = np.searchsorted(self.click_times, when[order])
    self.click_key = u[order] * (len(self.click_times) + 1) + rank
    self.click_item = self.items(item[order])

  def _built_history(self, user, when):
    """(start, end) into the sorted clicks: the user's clicks strictly before
    `when` (an earlier time; a click at the same time is not yet seen)."""
    u = np.searchsorted(self.click_users, user)
    known = (u < len(self.click_users))
    known[known] = self.click_users[u[known]] == user[known]
    base = u.astype(np.int64) * (len(self.click_times) + 1)
    start = np.searchsorted(self.click_key, base)
    end = np.searchsorted(self.click_key,
                          base + np.searchsorted(self.click_times, when))
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
    for user, item, label, day, history, when in self.spills[split]:
      if self.has_history:
        offsets, flat = history
        start, end, values = offsets[:-1], offsets[1:], self.items(flat)
      else:
        start, end, values = self._built_history(user, when)
      seq, n = self._sequences(start, end, values, self.opt.seq_len)
      out = {'user_id': self.users(user), 'user_key': self.user_keys(user),
             'item_id': self.items(item),
             'day': day, 'label': label, 'seq_item': seq, 'seq_len': n}
      if self.opt.long_seq_len:
        out['long_seq_item'], out['long_seq_len'] = self._sequences(
            start, end, values, self.opt.long_seq_len)
      yield out

  def impression_example(self):
    L, Lh = self.opt.seq_len, self.opt.long_seq_len
    out = {'user_id': np.zeros(0, np.int32),
           'user_key': np.zeros(0, np.int32),
           'item_id': np.zeros(0, np.int32),
           'day': np.zeros(0, np.int32), 'label': np.zeros(0, np.int8),
           'seq_item': np.zeros((0, L), np.int32),
           'seq_len': np.zeros(0, np.int32)}
    if Lh:
      out.update(long_seq_item=np.zeros((0, Lh), np.int32),
                 long_seq_len=np.zeros(0, np.int32))
    return out
