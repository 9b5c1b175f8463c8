"""The serving side's item store: versioned int8 vectors + item attributes,
looked up by item id, with a delta log for items added since the batch job.
(Over the house's ~450 lines on purpose: a version's base rows and its delta
log are read, appended, rolled back and carried under one lock, and read
better as one class than split.)

Layout under a store root:

  CURRENT            'v{k}': the version servers open (replaced atomically)
  v{k}/manifest.json version, count, dim, scale, attribute names, sha256 of
                     rows.int8 and attrs.int32, where the vectors came from
                     (encoder checkpoint, method, source table)
  v{k}/rows.int8     (count, dim) int8 = round(127 v), row i = item id i
  v{k}/attrs.int32   (count, A) int32 item attributes (e.g. category, shop)
  v{k}/delta.log     items added since: fixed-size records
                     [item id int64 | attrs int32 x A | vector int8 x dim |
                      crc32 of the preceding bytes]

A version is written into a temporary directory and renamed into place, and
CURRENT is rewritten by rename, so a reader never sees half a version. The
base rows are memory-mapped (read-only, shared by every process that opens
the store); only the delta lives in memory. Delta records are appended,
flushed and fsynced before `add` returns, so an acknowledged item survives a
crash. New items take the next free id: ids stay dense, so a model's table
can be indexed by them, and an id is never handed out twice.

Damage to delta.log: a final record shorter than a record (a crash
mid-append, or an append still being written) is not read; the writer cuts
it off when it opens the log (`_cut_torn_tail` says why that is safe). A bad
record with records after it is corruption, not a torn append: opening or
refreshing raises StoreError naming the file, the byte and how many records
follow, and nothing is cut (that would lose those items and give their ids
to the next ones). A whole final record failing its CRC is ignored by
readers and refused by a writer (it may be an acknowledged item). Readers
never write the log.

The next batch embedding becomes a new version with `create_carrying`: the
batch table's rows, then the items the current version holds beyond them,
ids unchanged; a service that kept adding to the old version carries those
over too when it opens the new one (`carry_from_source`).

Numpy only: the scoring process reads the store without jax or the training
code. `create` takes arrays; reading the embedding job's table is the
exporter's business (export.py).
"""

import errno
import fcntl
import hashlib
import json
import os
import struct
import threading
import time
import zlib

import numpy as np

from mmrec import files
from mmrec import int8

CURRENT = files.POINTER
MANIFEST = 'manifest.json'
ROWS = 'rows.int8'
ATTRS = 'attrs.int32'
DELTA = 'delta.log'
FORMAT_VERSION = 1


class StoreError(ValueError):
  """A store is missing, corrupt, or asked for something it does not hold."""


class StoreWriteError(StoreError):
  """An add whose delta record could not be written (e.g. a full disk);
  `errno` is the OSError's. Rolled back unless the message says not."""

  def __init__(self, msg, error_number):
    super().__init__(msg)
    self.errno = error_number


def _as_int8(vectors):
  """Stored int8 rows as they are; float unit vectors quantised."""
  if vectors.dtype == np.int8:
    return vectors
  if not np.isfinite(vectors).all():
    raise StoreError('vectors hold NaN or infinite values')
  return int8.quantize(vectors)


def _sha256(array):
  return hashlib.sha256(np.ascontiguousarray(array)).hexdigest()


def versions(root):
  """Sorted version numbers present under `root` (complete ones only)."""
  if not os.path.isdir(root):
    return []
  out = []
  for name in os.listdir(root):
    if (name.startswith('v') and name[1:].isdigit() and
        os.path.exists(os.path.join(root, name, MANIFEST))):
      out.append(int(name[1:]))
  return sorted(out)


def current_version(root):
  name = files.read_pointer(root, CURRENT)
  if name is None:
    raise StoreError(f'no vector store at {root} (no {CURRENT} file): build '
                     'one with the export job (config.job = "export")')
  if not (name.startswith('v') and name[1:].isdigit()):
    raise StoreError(f'{os.path.join(root, CURRENT)} holds {name!r}, '
                     'expected v<number>')
  return int(name[1:])


def create(root, vectors, attrs=None, attr_names=(), metadata=None,
           make_current=True):
  """Writes a new version v{max+1} (int8 or float vectors); returns it.

  Args:
    root: the store directory (created if missing).
    vectors: (N, D) int8 (as stored) or float (unit vectors, quantised).
    attrs: (N, A) integer attributes, columns named by `attr_names`.
    metadata: JSON-able provenance (encoder checkpoint, method, source).
    make_current: point CURRENT at the new version.
  """
  vectors = np.asarray(vectors)
  if vectors.ndim != 2 or not vectors.size:
    raise StoreError(f'vectors must be a non-empty (num_items, dim) array, '
                     f'got shape {vectors.shape}')
  vectors = _as_int8(vectors)
  n, dim = vectors.shape
  attr_names = tuple(attr_names)
  attrs = (np.zeros((n, 0), np.int32) if attrs is None
           else np.asarray(attrs).astype(np.int32).reshape(n, -1))
  if attrs.shape[1] != len(attr_names):
    raise StoreError(f'attrs has {attrs.shape[1]} columns but attr_names '
                     f'names {len(attr_names)}: {attr_names}')
  os.makedirs(root, exist_ok=True)
  version = (versions(root) or [0])[-1] + 1
  manifest = {
      'format_version': FORMAT_VERSION, 'version': version, 'count': n,
      'dim': dim, 'scale': int8.SCALE, 'attributes': list(attr_names),
      'sha256_rows': _sha256(vectors), 'sha256_attrs': _sha256(attrs),
      'created': time.time(), 'source': metadata or {}}

  def fill(tmp):
    np.ascontiguousarray(vectors).tofile(os.path.join(tmp, ROWS))
    np.ascontiguousarray(attrs).tofile(os.path.join(tmp, ATTRS))
    with open(os.path.join(tmp, MANIFEST), 'w') as f:
      json.dump(manifest, f, indent=1, sort_keys=True)
  files.build_aside(os.path.join(root, f'v{version}'), fill)
  if make_current:
    files.write_pointer(root, f'v{version}', CURRENT)
  return version


class VectorStore:
  """One version of a store, opened for lookups (and appends, if writable).

  `lookup(ids)` -> (n, dim) int8 rows; `attributes(ids)` -> (n, A) int32;
  `add(vector, attrs)` -> the new item's id. Thread-safe for one writer and
  many readers in one process.
  """

  def __init__(self, root, version=None, writable=False, verify=True):
    self.root = root
    self.version = current_version(root) if version is None else version
    self.path = os.path.join(root, f'v{self.version}')
    where = f'vector store {self.path}'
    try:
      with open(os.path.join(self.path, MANIFEST)) as f:
        self.manifest = json.load(f)
    except (OSError, ValueError) as e:
      raise StoreError(f'{where}: cannot read {MANIFEST} ({e})') from e
    m = self.manifest
    self.dim, self.base_count = int(m['dim']), int(m['count'])
    self.attr_names = tuple(m['attributes'])
    a = len(self.attr_names)
    for name, dtype, cols in ((ROWS, np.int8, self.dim), (ATTRS, np.int32, a)):
      size = os.path.getsize(os.path.join(self.path, name))
      want = self.base_count * cols * np.dtype(dtype).itemsize
      if size != want:
        raise StoreError(f'{where}: {name} has {size} bytes, the manifest '
                         f'({self.base_count} items x {cols}) needs {want}')
    self._rows = np.memmap(os.path.join(self.path, ROWS), np.int8, 'r',
                           shape=(self.base_count, self.dim))
    self._attrs = (np.memmap(os.path.join(self.path, ATTRS), np.int32, 'r',
                             shape=(self.base_count, a)) if a else
                   np.zeros((self.base_count, 0), np.int32))
    if verify:
      for name, arr, key in ((ROWS, self._rows, 'sha256_rows'),
                             (ATTRS, self._attrs, 'sha256_attrs')):
        if _sha256(arr) != m[key]:
          raise StoreError(f'{where}: checksum mismatch in {name}; the file '
                           'is corrupt (rebuild the version)')
    self._record = struct.Struct(f'<q{a}i{self.dim}bI')
    self._lock = threading.Lock()
    # The delta in growable arrays: rows [0, _n) are valid. A reader takes
    # _n first, so a concurrent append (which fills a row, then bumps _n)
    # never shows it a half-written row.
    self._dv = np.zeros((16, self.dim), np.int8)
    self._da = np.zeros((16, a), np.int32)
    self._n = 0
    self._offset = 0  # bytes of delta.log read so far (whole records)
    self._log = None
    self._unwritable = None  # why adds are refused: a failed rollback
    if writable:
      # Unbuffered: a failed write leaves no bytes queued to go out with
      # the next add (under the same id); `add` writes whole records.
      self._log = open(os.path.join(self.path, DELTA), 'ab', buffering=0)
      try:
        fcntl.flock(self._log, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        self._log.close()
        raise StoreError(f'{where}: another process has it open for '
                         'writing (one writer per store)') from e
    try:
      self.refresh()
      if writable:
        self._cut_torn_tail()
    except BaseException:
      self.close()
      raise

  # ------------------------------------------------------------------ delta

  def _append(self, item, attrs, vector):
    if item != self.count:
      raise StoreError(f'{self.path}/{DELTA}: record for item {item}, '
                       f'expected {self.count}')
    if self._n == len(self._dv):
      self._dv = np.concatenate([self._dv, np.zeros_like(self._dv)])
      self._da = np.concatenate([self._da, np.zeros_like(self._da)])
    self._dv[self._n], self._da[self._n] = vector, attrs
    self._n += 1

  def _bad(self, rec):
    return zlib.crc32(rec[:-4]) != self._record.unpack(rec)[-1]

  def refresh(self):
    """Reads delta records appended since the last call (by this or another
    process); returns how many. A bad final record is left unread (torn, or
    being appended now: read once whole); a bad record followed by more is
    corruption: StoreError, nothing read past it. Never writes the log."""
    path = os.path.join(self.path, DELTA)
    if not os.path.exists(path):
      return 0
    with open(path, 'rb') as f:
      f.seek(self._offset)
      data = f.read()
    size, a, added = self._record.size, len(self.attr_names), 0
    for off in range(0, len(data) - size + 1, size):
      rec = data[off:off + size]
      if self._bad(rec):
        if len(data) - off > size:
          raise self._corrupt(path, self._offset, data[off + size:])
        break
      fields = self._record.unpack(rec)
      self._append(fields[0], fields[1:1 + a], fields[1 + a:-1])
      self._offset += size
      added += 1
    return added

  def _corrupt(self, path, offset, later):
    size = self._record.size
    whole = [later[i:i + size] for i in range(0, len(later) - size + 1, size)]
    valid = sum(not self._bad(rec) for rec in whole)
    n = -(-len(later) // size)  # a torn one at the end counts
    follow = f'{n} later record' + (' follows' if n == 1 else 's follow')
    return StoreError(
        f'{path}: the record at byte {offset} (item {self.count}) fails its '
        f'CRC check and {follow} it '
        f'({valid} whole and valid): the log is corrupt, not torn by a '
        'crash. It is not opened and not cut (cutting would lose those items '
        'and give their ids to new ones): restore it from a copy, or cut it '
        f'at byte {offset} by hand knowing that')

  def _cut_torn_tail(self):
    """The writer's open: cuts a torn final record, so appends follow the
    last whole one (appended after it, a torn record would be a bad one
    mid-log). Safe only here: `add` acknowledges an item once its whole
    record is fsynced, so a final record shorter than a record was never
    acknowledged and its id never handed out; and the exclusive lock (taken
    before `refresh`) means no append is in flight that the cut could
    tear. A whole bad final record is not cut: it may be an acknowledged
    item with a damaged byte, and the next add would reuse its id."""
    path = os.path.join(self.path, DELTA)
    tail = os.path.getsize(path) - self._offset
    if not tail:
      return
    if tail >= self._record.size:  # == (refresh raised for more)
      raise StoreError(
          f'{path}: the final record (byte {self._offset}, item '
          f'{self.count}) is whole but fails its CRC check: it may be an '
          'acknowledged item with a damaged byte, so it is not cut (its id '
          'would be handed out again); readers ignore it. Restore the log '
          f'from a copy, or cut it at byte {self._offset} by hand')
    os.ftruncate(self._log.fileno(), self._offset)
    os.fsync(self._log.fileno())

  def add(self, vector, attrs=()):
    """Appends one item (unit float vector or int8 row); returns its id.

    Durable (fsynced) when it returns."""
    if self._log is None:
      raise StoreError(f'vector store {self.path} is open read-only')
    vector = np.asarray(vector)
    if vector.shape != (self.dim,):
      raise StoreError(f'vector has shape {vector.shape}, the store holds '
                       f'({self.dim},) vectors')
    vector = _as_int8(vector)
    attrs = np.asarray(attrs).reshape(-1)
    if len(attrs) != len(self.attr_names):
      raise StoreError(f'attrs has {len(attrs)} values, the store needs '
                       f'{self.attr_names}')
    attrs = attrs.astype(np.int32)
    with self._lock:
      if self._unwritable:
        raise StoreWriteError(self._unwritable, errno.EIO)
      item = self.count
      head = struct.pack(f'<q{len(attrs)}i{self.dim}b', item, *attrs.tolist(),
                         *vector.tolist())
      record = memoryview(head + struct.pack('<I', zlib.crc32(head)))
      fd = self._log.fileno()
      try:
        while record:  # os.write may write part (a file-size limit)
          record = record[os.write(fd, record):]
        os.fsync(fd)
      except OSError as e:
        self._roll_back(item, e)
      self._offset += self._record.size
      self._append(item, attrs, vector)
    return item

  def _roll_back(self, item, error):
    """After a failed append: cuts the log back to its last whole record
    (what is left of this one was never acknowledged), so the next add
    starts at a record boundary; raises StoreWriteError."""
    path = os.path.join(self.path, DELTA)
    what = f'{path}: writing item {item} failed ({error.strerror or error})'
    try:
      os.ftruncate(self._log.fileno(), self._offset)  # needs no space
      os.fsync(self._log.fileno())
    except OSError as e:
      # The log may end in part of a record: no add may follow it. A new
      # writer's open cuts a torn tail (or reads the record, if whole).
      self._unwritable = (f'{what} and rolling it back failed '
                          f'({e.strerror or e}): no more adds until the '
                          'store is reopened')
      raise StoreWriteError(self._unwritable, error.errno) from error
    raise StoreWriteError(f'{what}; rolled back, the item was not added',
                          error.errno) from error

  # ---------------------------------------------------------------- lookups

  @property
  def count(self):
    return self.base_count + self._n

  @property
  def delta_count(self):
    return self._n

  def _gather(self, ids, base, delta, width, dtype):
    n = self._n  # before `delta`: see __init__
    delta = delta()
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
      raise StoreError(f'item ids must be integers, got {ids.dtype}')
    count = self.base_count + n
    bad = (ids < 0) | (ids >= count)
    if bad.any():
      raise StoreError(f'unknown item id {int(ids[bad].flat[0])} (the store '
                       f'holds ids 0..{count - 1})')
    flat = ids.reshape(-1)
    out = np.empty((len(flat), width), dtype)
    old = flat < self.base_count
    out[old] = base[flat[old]]
    out[~old] = delta[flat[~old] - self.base_count]
    return out.reshape(ids.shape + (width,))

  def lookup(self, ids):
    """int8 rows of item ids (any shape) -> ids.shape + (dim,)."""
    return self._gather(ids, self._rows, lambda: self._dv, self.dim, np.int8)

  def attributes(self, ids):
    """int32 attributes of item ids -> ids.shape + (A,)."""
    return self._gather(ids, self._attrs, lambda: self._da,
                        len(self.attr_names), np.int32)

  def vectors(self, ids):
    """Dequantised float32 vectors (int8 / 127)."""
    return int8.dequantize(self.lookup(ids))

  def dense(self, start=0, stop=None):
    """int8 rows [start, stop) in one array (an index build, a model table)."""
    stop = self.count if stop is None else stop
    return self.lookup(np.arange(start, stop))

  def dense_attributes(self):
    return self.attributes(np.arange(self.count))

  def carry_from_source(self):
    """Appends the items of the version this one carried over from (see
    `create_carrying`) that were added there after this version was
    written: a service kept adding to it until it switched. Same ids;
    returns how many. Writable stores only."""
    carried = self.manifest['source'].get('carried')
    if not carried or carried['from_version'] not in versions(self.root):
      return 0
    with VectorStore(self.root, carried['from_version'], verify=False) as old:
      start, stop = self.count, old.count
      if stop <= start:  # (once a service has switched, old is closed)
        return 0
      ids = np.arange(start, stop)
      rows = old.lookup(ids)
      attrs = _columns(old.attributes(ids), old.attr_names, self.attr_names)
    for i, row, a in zip(ids, rows, attrs):
      if self.add(row, a) != i:
        raise StoreError(f'{self.path}: carrying item {i} from '
                         f'v{carried["from_version"]} would change its id')
    return len(ids)

  def close(self):
    if self._log is not None:
      self._log.close()
      self._log = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _columns(attrs, names, want):
  """(n, len(names)) attributes -> the columns `want` (0 where absent)."""
  out = np.zeros((len(attrs), len(want)), np.int32)
  for j, name in enumerate(want):
    if name in names:
      out[:, j] = attrs[:, names.index(name)]
  return out


def create_carrying(root, vectors, attrs=None, attr_names=(), metadata=None):
  """Writes a new batch table (ids 0..N-1) as a new current version that
  also holds the current version's items beyond it (ids N.., added through
  the service's delta or merged into its base): the next batch embedding
  over a store that has served new items. Their ids, vectors and
  attributes (matched by column name; 0 where the old version lacks one)
  stay as they were; the old version is left as it is. Returns the new
  version. Without a current version, `create`."""
  vectors = _as_int8(np.asarray(vectors))
  n = len(vectors)
  attr_names = tuple(attr_names)
  attrs = (np.zeros((n, 0), np.int32) if attrs is None
           else np.asarray(attrs).astype(np.int32).reshape(n, -1))
  try:
    old = VectorStore(root, verify=False)
  except StoreError:
    return create(root, vectors, attrs, attr_names, metadata)
  with old:
    ids = np.arange(n, old.count)
    if old.dim != vectors.shape[1] and len(ids):
      raise StoreError(f'{root} v{old.version} holds {len(ids)} new items of '
                       f'{old.dim}-d vectors, the new table is '
                       f'{vectors.shape[1]}-d: they cannot be carried over')
    rows = old.lookup(ids).reshape(len(ids), vectors.shape[1])
    extra = _columns(old.attributes(ids), old.attr_names, attr_names)
    metadata = dict(metadata or {}, carried={
        'from_version': old.version, 'ids': [n, n + len(ids)]})
  return create(root, np.concatenate([vectors, rows]),
                np.concatenate([attrs, extra]), attr_names, metadata)


def merge(root, metadata=None):
  """Folds the current version's delta into a new version (the next batch
  job's starting point); returns the new version number."""
  with VectorStore(root) as store:
    rows, attrs = store.dense(), store.dense_attributes()
    meta = dict(store.manifest['source'], merged_from=store.version,
                **(metadata or {}))
    names = store.attr_names
  return create(root, rows, attrs, names, meta)
