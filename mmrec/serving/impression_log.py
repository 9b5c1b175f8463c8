"""Impressions as rotated ArrayRecord segments: the near-line trainer's input.

  <log_dir>/seg-000000.array_record   closed segments, numbered in order
  <log_dir>/.seg-000001.open          the segment being written
  <log_dir>/NEARLINE.json             {"workdir": the near-line job's}

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

A writer holds the log to a byte budget (`max_bytes`: closed segments as
they are on disk, the open one as the JSON written to it, an upper bound of
its compressed size). A batch that would pass it first retires the closed
segments the near-line job has committed (`committed_segments`: its
COMMITTED markers; its workdir as the writer is given it, or as the job
named it in this log, NEARLINE_POINTER), then, if it still does not fit, is
refused whole (`LogFull`: the service's 507), so a flood of impressions
fills its budget, not the disk. Retiring is safe: a restarted near-line job
resumes after its newest marker, never from the segments left.

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
DEFAULT_MAX_BYTES = 1 << 30  # the service's default budget (1 GiB)
# The near-line job's workdir as nearline.py writes it (read here: the
# runtime imports no job): segment n is trained in seg-{n:06d}/ and, once
# trained and its version exported, committed by the marker COMMITTED there
# (JSON written aside and renamed: segment, steps, global_step, checkpoint,
# version). The job names its workdir in the log it reads (NEARLINE_POINTER),
# so the log's writer finds whose markers say what it may retire.
NEARLINE_SEGMENT, NEARLINE_COMMITTED = 'seg-{:06d}', 'COMMITTED'
NEARLINE_POINTER = 'NEARLINE.json'
MARKER_FIELDS = ('segment', 'steps', 'global_step', 'checkpoint', 'version')

class LogFull(Exception):
  """The log's byte budget is spent: nothing of the batch was written."""


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


def committed_markers(nearline_dir):
  """{segment number: its COMMITTED marker} of a near-line workdir (empty if
  there is none); ValueError naming the file for a marker that is not one."""
  out = {}
  if not nearline_dir or not os.path.isdir(nearline_dir):
    return out
  for name in os.listdir(nearline_dir):
    number = name[len(PREFIX):]
    path = os.path.join(nearline_dir, name, NEARLINE_COMMITTED)
    if not (name.startswith(PREFIX) and number.isdigit() and
            os.path.exists(path)):
      continue
    try:
      with open(path) as f:
        marker = json.load(f)
    except (OSError, ValueError) as e:
      raise ValueError(f'{path}: unreadable near-line commit marker '
                       f'({e})') from e
    if (not isinstance(marker, dict) or
        any(k not in marker for k in MARKER_FIELDS) or
        marker['segment'] != int(number) or
        not isinstance(marker['global_step'], int)):
      raise ValueError(f'{path}: expected a commit marker of segment '
                       f'{int(number)} with fields {list(MARKER_FIELDS)}, '
                       f'got {str(marker)[:200]}')
    out[int(number)] = marker
  return out


def committed_segments(nearline_dir, numbers):
  """Those of segment `numbers` the near-line job in `nearline_dir` has
  committed (its COMMITTED markers)."""
  markers = committed_markers(nearline_dir)
  return {n for n in numbers if n in markers}


def nearline_workdir(log_dir):
  """The workdir of the near-line job last started on `log_dir` (the
  pointer it writes there), or None."""
  path = os.path.join(log_dir, NEARLINE_POINTER)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      workdir = json.load(f)['workdir']
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f'{path}: expected {{"workdir": <near-line '
                     f'workdir>}} ({e!r})') from e
  return workdir

class SegmentWriter:
  """Appends impressions; rotates segments by count and age; holds the log
  to `max_bytes` (None: no budget), retiring the segments near-line
  committed when it is spent: the markers in `nearline_dir`, or (None) in
  the workdir of the near-line job last started on this log (its pointer
  here). Thread-safe."""

  def __init__(self, log_dir, max_records=10000, max_seconds=60.0,
               max_bytes=None, nearline_dir=None):
    if max_records < 1 or max_seconds <= 0:
      raise ValueError(f'max_records ({max_records}) must be >= 1 and '
                       f'max_seconds ({max_seconds}) > 0')
    if max_bytes is not None and max_bytes < 1:
      raise ValueError(f'max_bytes ({max_bytes}) must be >= 1 (or None)')
    self.log_dir, self.max_records, self.max_seconds = (
        log_dir, max_records, max_seconds)
    self.max_bytes, self.nearline_dir = max_bytes, nearline_dir
    os.makedirs(log_dir, exist_ok=True)
    for name in os.listdir(log_dir):
      if name.endswith(OPEN):  # a crashed writer's unfinished segment
        os.remove(os.path.join(log_dir, name))
    segments = closed_segments(log_dir)
    self._next = segments[-1][0] + 1 if segments else 0
    self._lock = threading.Lock()
    self._writer, self._count, self._opened = None, 0, 0.0
    self._open_bytes = 0  # JSON written to the open segment
    self._closed_bytes = self._measure()
    self.retired = 0  # segments deleted to keep to the budget
    self.fields = None  # of the first record: the model's input + label

  def _open_path(self):
    return os.path.join(self.log_dir, f'.{PREFIX}{self._next:06d}{OPEN}')

  def write(self, record):
    """Appends one impression (a dict with REQUIRED and the features of
    the writer's first record); `LogFull` if over the budget."""
    self._append([self._encode(record)])

  def write_batch(self, batch):
    """Appends every row of a batch (dict of arrays, as `write`): all of
    them, or none (`LogFull`)."""
    self._append([self._encode({f: v[i] for f, v in batch.items()})
                  for i in range(len(batch['label']))])

  def _encode(self, record):
    fields = tuple(f for f in record if f not in NOT_LOGGED)
    missing = [f for f in REQUIRED if f not in record]
    if missing:
      raise ValueError(f'impression lacks fields {missing}')
    data = json.dumps({f: np.asarray(record[f]).tolist() for f in fields})
    return fields, data.encode()

  def _append(self, records):
    with self._lock:
      # A segment must read back as one batch layout (nearline.py).
      for fields, _ in records:
        if self.fields is None:
          self.fields = fields
        elif set(fields) != set(self.fields):
          raise ValueError(f'impression has fields {sorted(fields)}, this '
                           f'log {sorted(self.fields)}')
      self._make_room(sum(len(data) for _, data in records))
      for _, data in records:
        if self._writer is None:
          self._writer = array_record_module.ArrayRecordWriter(
              self._open_path(), 'group_size:1')
          self._count, self._opened, self._open_bytes = (
              0, time.monotonic(), 0)
        self._writer.write(data)
        self._count += 1
        self._open_bytes += len(data)
        if self._count >= self.max_records or (
            time.monotonic() - self._opened >= self.max_seconds):
          self._close()

  def used_bytes(self):
    """What the log holds by the budget's count (closed + open)."""
    return self._closed_bytes + self._open_bytes

  def _measure(self):
    return sum(os.path.getsize(p) for _, p in closed_segments(self.log_dir))

  def _make_room(self, need):
    """Retires committed segments until `need` more bytes fit the budget,
    or raises LogFull."""
    if self.max_bytes is None or self.used_bytes() + need <= self.max_bytes:
      return
    self._closed_bytes = self._measure()  # an operator may have cleared some
    segments = closed_segments(self.log_dir)
    try:  # read now: a near-line job may have started since
      nearline = self.nearline_dir or nearline_workdir(self.log_dir)
      committed, why = committed_segments(nearline,
                                          [n for n, _ in segments]), None
    except ValueError as e:  # retire nothing on a guess
      committed, why = set(), str(e)
    for n, path in segments:
      if self.used_bytes() + need <= self.max_bytes:
        break
      if n in committed:
        size = os.path.getsize(path)
        os.remove(path)
        self._closed_bytes -= size
        self.retired += 1
    if self.used_bytes() + need > self.max_bytes:
      trained = (f'; {why}' if why else
                 f'; near-line ({nearline}) has committed no more of its '
                 'segments' if nearline else
                 '; no near-line job has named its workdir here, so no '
                 'segment is known to be trained')
      raise LogFull(
          f'the impression log {self.log_dir} holds {self.used_bytes()} '
          f'bytes of its {self.max_bytes}-byte budget; {need} more do not '
          f'fit{trained}')

  def maybe_close(self):
    """Closes the open segment if it is older than max_seconds (call it
    periodically: a quiet log still closes its segments)."""
    with self._lock:
      if self._writer is not None and (
          time.monotonic() - self._opened >= self.max_seconds):
        self._close()

  def _close(self):
    self._writer.close()
    final = segment_path(self.log_dir, self._next)
    os.rename(self._open_path(), final)
    self._closed_bytes += os.path.getsize(final)
    self._writer, self._open_bytes = None, 0
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
