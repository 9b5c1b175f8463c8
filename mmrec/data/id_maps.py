"""Raw ids -> the dataset's dense ids, and what the converter counts them with.

The own-data converter (convert.py) reads user and item ids of any values
(integers or strings) and stores dense ids: `IdMap` maps kept raw ids to
1..N (0 = rare or unknown); `Counter` counts occurrences (or reduces values,
e.g. the first day an item was shown) per raw key chunk by chunk, in bounded
memory; `lookup` reads a value per raw key back; `Kinds` keeps one id kind
(int or str) per id space across files and columns.
"""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmrec.data import columns


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


class Counter:
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


def lookup(keys, values, raw, default):
  """values[keys == raw] per raw key (default when absent)."""
  if not len(keys):
    return np.full(len(raw), default, values.dtype)
  idx = np.minimum(np.searchsorted(keys, raw), len(keys) - 1)
  return np.where(keys[idx] == raw, values[idx], default)


class Kinds:
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
