"""Impressions as rotated ArrayRecord segments: the near-line trainer's input.

  <log_dir>/seg-000000.array_record   closed segments, numbered in order
  <log_dir>/.seg-000001.open          the segment being written

A record is one impression with the CTR model's input fields as they were
served (user profile, target item and its attributes, the right-aligned
behaviour sequence: whichever fields the dataset declares) and its click
label, as JSON. One writer's records all carry the same fields. The writer closes a
segment after `max_records` records or `max_seconds` after its first one,
whichever comes first: the open file is finished and renamed to its final
name, so a reader lists only whole segments, in order, and a closed segment
never changes. A crash loses the open segment (its `.open` file is removed
when a writer next opens the directory): logging is at most once, training
on what was logged exactly once (nearline.py).

Producers: the service's impression logger (POST /impressions), or
`replay` of a stored world day. Reading needs array_record only (the
service imports this module; nearline.py wraps `read_rows` in grain).
"""

import json
import os
import threading
import time

from array_record.python import array_record_data_source
from array_record.python import array_record_module
import numpy as np

PREFIX, SUFFIX, OPEN = 'seg-', '.array_record', '.open'
# Every record has these; the dataset's declared features come on top.
REQUIRED = ('user_id', 'item_id', 'seq_item', 'seq_mask', 'label')
NOT_LOGGED = ('day',)  # a stored day's batches carry it; the model does not


def segment_path(log_dir, n):
  return os.path.join(log_dir, f'{PREFIX}{n:06d}{SUFFIX}')


def closed_segments(log_dir):
  """[(number, path)] of the closed segments, in order."""
  if not os.path.isdir(log_dir):
    return []
  out = []
  for name in os.listdir(log_dir):
    if name.startswith(PREFIX) and name.endswith(SUFFIX):
      number = name[len(PREFIX):-len(SUFFIX)]
      if number.isdigit():
        out.append((int(number), os.path.join(log_dir, name)))
  return sorted(out)


class SegmentWriter:
  """Appends impressions; rotates segments by count and age. Thread-safe."""

  def __init__(self, log_dir, max_records=10000, max_seconds=60.0):
    if max_records < 1 or max_seconds <= 0:
      raise ValueError(f'max_records ({max_records}) must be >= 1 and '
                       f'max_seconds ({max_seconds}) > 0')
    self.log_dir, self.max_records, self.max_seconds = (
        log_dir, max_records, max_seconds)
    os.makedirs(log_dir, exist_ok=True)
    for name in os.listdir(log_dir):
      if name.endswith(OPEN):  # a crashed writer's unfinished segment
        os.remove(os.path.join(log_dir, name))
    segments = closed_segments(log_dir)
    self._next = segments[-1][0] + 1 if segments else 0
    self._lock = threading.Lock()
    self._writer, self._count, self._opened = None, 0, 0.0
    self.fields = None  # of the first record: the model's input + label

  def _open_path(self):
    return os.path.join(self.log_dir, f'.{PREFIX}{self._next:06d}{OPEN}')

  def write(self, record):
    """Appends one impression (a dict with REQUIRED and the features of
    the writer's first record)."""
    fields = tuple(f for f in record if f not in NOT_LOGGED)
    missing = [f for f in REQUIRED if f not in record]
    if missing:
      raise ValueError(f'impression lacks fields {missing}')
    data = json.dumps({f: np.asarray(record[f]).tolist() for f in fields})
    with self._lock:
      # A segment must read back as one batch layout (nearline.py).
      if self.fields is None:
        self.fields = fields
      elif set(fields) != set(self.fields):
        raise ValueError(f'impression has fields {sorted(fields)}, this log '
                         f'{sorted(self.fields)}')
      if self._writer is None:
        self._writer = array_record_module.ArrayRecordWriter(
            self._open_path(), 'group_size:1')
        self._count, self._opened = 0, time.monotonic()
      self._writer.write(data.encode())
      self._count += 1
      if self._count >= self.max_records or (
          time.monotonic() - self._opened >= self.max_seconds):
        self._close()

  def write_batch(self, batch):
    """Appends every row of a batch (dict of arrays, as `write`)."""
    for i in range(len(batch['label'])):
      self.write({f: v[i] for f, v in batch.items()})

  def maybe_close(self):
    """Closes the open segment if it is older than max_seconds (call it
    periodically: a quiet log still closes its segments)."""
    with self._lock:
      if self._writer is not None and (
          time.monotonic() - self._opened >= self.max_seconds):
        self._close()

  def _close(self):
    self._writer.close()
    os.rename(self._open_path(), segment_path(self.log_dir, self._next))
    self._writer = None
    self._next += 1

  def close(self):
    """Closes the open segment (if any records) and the writer."""
    with self._lock:
      if self._writer is not None:
        self._close()


def num_records(path):
  reader = array_record_module.ArrayRecordReader(path)
  try:
    return reader.num_records()
  finally:
    reader.close()


def read_rows(path, indices):
  """Records `indices` of a closed segment -> a batch dict of their
  fields: int32 ids, bool masks (`*_mask`)."""
  source = array_record_data_source.ArrayRecordDataSource([path])
  rows = [json.loads(r) for r in source.__getitems__(list(indices))]
  if not rows:
    raise ValueError(f'{path}: no records at {list(indices)}')
  return {f: np.asarray([r[f] for r in rows],
                        bool if f.endswith('_mask') else np.int32)
          for f in rows[0]}


def replay(batches, log_dir, max_records):
  """Writes CTR batches (e.g. a stored world day, in order) as segments of
  `max_records`; returns the closed segments' paths."""
  writer = SegmentWriter(log_dir, max_records=max_records,
                         max_seconds=float('inf'))
  for b in batches:
    writer.write_batch(b)
  writer.close()
  return [p for _, p in closed_segments(log_dir)]
