"""Own data without impressions: a catalogue and a search log, for
pre-training only.

What the converter (convert.py) reads of an impression log
(impression_scan.ImpressionScan: ids, days, launch days), made from
items.parquet and search.parquet instead: every listed item gets an id (the
catalogue), no user does (the CTR model has nothing to train on), days come
from the search log's `time` (day 0 = midnight UTC of the first session; the
split policy over sessions per day, as over impressions) or its `split`
column, and no item is new (launch day 0), so each session is held out by
its own day or split. The dataset has no impressions table: the CTR jobs
refuse it naming what is missing; the SCL family, CLIP-E and CLIP-O (with
captions) and the references train and are evaluated on the held-out
search sessions.
"""

import numpy as np

from mmrec.data import columns
from mmrec.data import id_maps
from mmrec.data import impression_scan

DAY = impression_scan.DAY


class CatalogueScan:
  """`impression_scan.ImpressionScan`'s attributes without impressions."""

  has_impressions = False
  test_users_both = None  # no CTR test split to count users of

  def __init__(self, source_dir, options):
    self.src = source_dir
    self.opt = options
    self.kinds = id_maps.Kinds()
    self.search = columns.table_files(source_dir, 'search', required=False)
    if not self.search:
      raise columns.InputError(
          f'{source_dir}: no impressions.parquet (or impressions/) and no '
          'search.parquet (or search/): without impressions the search log is '
          'what pre-training trains and is evaluated on')
    names = columns.open_file(self.search[0]).schema_arrow.names
    # Sessions split by their `split` column when they have no time
    # (search_sessions.py reads `by_split` as "no time to split by").
    self.by_split = 'time' not in names
    self.has_time = 'time' in names
    self.has_history = False
    self.rows = {}

  def scan_days(self):
    """Day 0, the number of days and the test days of the search log."""
    if not self.has_time:
      # 'split' (train / test) or every 10th session held out.
      self.t0, self.num_days, self.first_test_day = 0, 2, 1
      self.validation_days = 0
      return
    per_day, lo = id_maps.Counter(), None
    for path, row0, batch in columns.chunks(self.search, ['time'], (),
                                            self.opt.chunk_rows):
      t = columns.times(batch.column(0), path, 'time', row0)
      if len(t):
        lo = int(t.min()) if lo is None else min(lo, int(t.min()))
        per_day.add(t // DAY)
    if lo is None:
      raise columns.InputError(f'{self.search[0]}: no search sessions')
    days, n = per_day.result()
    self.t0 = lo - lo % DAY
    self.num_days = int(days[-1] - days[0]) + 1
    counts = np.zeros(self.num_days, np.int64)
    counts[days - days[0]] = n
    self.first_test_day, self.validation_days = impression_scan.split_days(
        counts, self.opt)
    if self.first_test_day < 1:
      raise columns.InputError(
          f'{self.search[0]}: the search sessions span {self.num_days} '
          f'day(s); {impression_scan.split_policy(self.opt)} leaves no '
          'training day')

  def scan_ids(self, scratch, catalogue=None):
    """Ids: every item of items.parquet (required), no user."""
    del scratch  # no rows to keep
    if catalogue is None:
      raise columns.InputError(
          f'{self.src}: no impressions.parquet and no items.parquet: without '
          'impressions, items.parquet is the catalogue')
    path, keys = catalogue
    self.kinds.check('item', keys, path, 'item')
    self.items = id_maps.IdMap(np.unique(keys))
    self.users = id_maps.IdMap(np.zeros(0, np.int64))
    self.trained_items = self.items.keys  # every listed title trains it
    self.launch_day = np.zeros(len(self.items), np.int32)

  # Checked raw ids of a search-log chunk, as the impressions' are.
  raw_ids = impression_scan.ImpressionScan.raw_ids


def catalogue_only(source_dir):
  """Whether `source_dir` has no impression log (a catalogue and a search
  log: pre-training only)."""
  return not columns.table_files(source_dir, 'impressions', required=False)

