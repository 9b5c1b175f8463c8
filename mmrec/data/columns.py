"""Reading Parquet columns, checked: every error names file, column, row, value.

The converter (convert.py) and the readers read user data only through these
functions, so bad input fails early and says what was expected instead of
surfacing as a shape error three jobs later. Files are read batch by batch
(`chunks`): memory is bounded by `chunk_rows`, not by the file.
"""

import glob
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


class InputError(ValueError):
  """User data that does not match the documented schema."""


def table_files(source_dir, table, required=True, shards=True):
  """`<table>.parquet`, or the shards `<table>/*.parquet` in name order.

  shards: False for the tables read whole (catalogue-sized): a folder is an
  error rather than a table of which only one shard would be read.
  """
  single = os.path.join(source_dir, f'{table}.parquet')
  folder = os.path.join(source_dir, table)
  if os.path.isfile(single):
    return [single]
  if os.path.isdir(folder) and not shards:
    raise InputError(f'{folder}: {table} is read whole; give it as one file, '
                     f'{single} (shards are for impressions and search)')
  if os.path.isdir(folder):
    shards = sorted(glob.glob(os.path.join(folder, '*.parquet')))
    if not shards:
      raise InputError(f'{folder}: a folder without *.parquet shards')
    return shards
  if required:
    raise InputError(f'{source_dir}: missing {table}.parquet (or a folder '
                     f'{table}/ of *.parquet shards); see docs/data_format.md')
  return []


# Column chunks are read through a buffer of this size, batch by batch;
# pre-buffered or unbuffered (pyarrow's defaults), a whole row group is read
# at once: hundreds of MB for a row group of 1000-long histories.
READ_BUFFER_BYTES = 1 << 20


def open_file(path):
  try:
    return pq.ParquetFile(path, buffer_size=READ_BUFFER_BYTES,
                          pre_buffer=False)
  except (pa.ArrowInvalid, OSError) as e:
    raise InputError(f'{path}: not a readable Parquet file (truncated or not '
                     f'Parquet?): {e}') from e


def check_columns(path, schema, required, optional=()):
  """The columns of `required` + present `optional`; errors list the found."""
  names = schema.names
  missing = [c for c in required if c not in names]
  if missing:
    raise InputError(f'{path}: missing column(s) {missing}; found {names} '
                     f'(expected {list(required)}'
                     f'{" + optional " + str(list(optional)) if optional else ""})')
  return list(required) + [c for c in optional if c in names]


def chunks(paths, required, optional=(), chunk_rows=65536):
  """Yields (path, first row, pyarrow.RecordBatch) over every file."""
  for path in paths:
    f = open_file(path)
    cols = check_columns(path, f.schema_arrow, required, optional)
    row = 0
    try:
      for batch in f.iter_batches(batch_size=chunk_rows, columns=cols):
        yield path, row, batch
        row += batch.num_rows
    except (pa.ArrowInvalid, OSError) as e:
      raise InputError(f'{path}: cannot read rows after row {row} (truncated '
                       f'or corrupt?): {e}') from e


def read_all(path, required, optional=()):
  """A whole (catalogue-sized) file as a pyarrow.Table."""
  f = open_file(path)
  cols = check_columns(path, f.schema_arrow, required, optional)
  try:
    return f.read(columns=cols)
  except (pa.ArrowInvalid, OSError) as e:
    raise InputError(f'{path}: cannot read (truncated or corrupt?): {e}') from e


def _where(path, column, row0, index=None):
  at = f', row {row0 + int(index)}' if index is not None else ''
  return f'{path}, column {column!r}{at}'


def _no_nulls(col, path, name, row0):
  if col.null_count:
    first = int(np.flatnonzero(col.is_null().to_numpy(
        zero_copy_only=False))[0])
    raise InputError(f'{_where(path, name, row0, first)}: missing value '
                     '(null); every row needs one')


def id_kind(arrow_type):
  if pa.types.is_integer(arrow_type):
    return 'int'
  if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
    return 'str'
  return None


def ids(col, path, name, row0=0):
  """Raw ids (integers -> int64, strings -> object array of str)."""
  kind = id_kind(col.type)
  if kind is None:
    raise InputError(f'{_where(path, name, row0)}: expected integer or string '
                     f'ids, got {col.type}')
  _no_nulls(col, path, name, row0)
  if kind == 'int':
    return col.to_numpy().astype(np.int64)
  return col.to_numpy(zero_copy_only=False).astype(object)


def spans(start, end):
  """Concatenated aranges [start_i, end_i) (vectorised)."""
  lengths = end - start
  total = int(lengths.sum())
  if not total:
    return np.zeros(0, np.int64)
  shift = np.repeat(np.cumsum(lengths) - lengths - start, lengths)
  return np.arange(total, dtype=np.int64) - shift


def id_lists(col, path, name, row0=0, last=None):
  """(offsets (N + 1,), flat raw ids) of a list<id> column; nulls = empty.

  A null inside a list is an error that names the list's row.

  `last`: only the last `last` ids of each list, the only ones converted
  (a history may be 20x longer than what is kept of it).
  """
  if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
    raise InputError(f'{_where(path, name, row0)}: expected a list of ids, '
                     f'got {col.type}')
  col = col.fill_null(pa.scalar([], col.type)) if col.null_count else col
  offsets = col.offsets.to_numpy().astype(np.int64)
  offsets = offsets - offsets[0]
  flat = col.flatten()
  if flat.null_count:
    # The row of the list, not the null's place among all rows' values.
    i = int(np.flatnonzero(flat.is_null().to_numpy(zero_copy_only=False))[0])
    row = int(np.searchsorted(offsets, i, side='right')) - 1
    raise InputError(f'{_where(path, name, row0, row)}: a missing (null) id in '
                     'the list; a list may be empty or null, not hold nulls')
  if last is not None:
    kept = np.minimum(np.diff(offsets), last)
    flat = flat.take(spans(offsets[1:] - kept, offsets[1:]))
    offsets = np.concatenate([[0], np.cumsum(kept)])
  return offsets, ids(flat, path, f'{name}[]', row0) if len(flat) else (
      np.zeros(0, np.int64))


def labels(col, path, name, row0=0):
  """0 / 1 int8 labels."""
  if not (pa.types.is_integer(col.type) or pa.types.is_boolean(col.type)):
    raise InputError(f'{_where(path, name, row0)}: expected 0/1 labels '
                     f'(integer or boolean), got {col.type}')
  _no_nulls(col, path, name, row0)
  y = col.to_numpy(zero_copy_only=False).astype(np.int64)
  bad = (y != 0) & (y != 1)
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    raise InputError(f'{_where(path, name, row0, i)}: label {y[i]}, expected '
                     '0 or 1')
  return y.astype(np.int8)


def times(col, path, name, row0=0):
  """Epoch seconds (int64) of integer seconds, timestamps, dates or ISO
  strings."""
  _no_nulls(col, path, name, row0)
  t = col.type
  if pa.types.is_integer(t):
    return col.to_numpy().astype(np.int64)
  if pa.types.is_timestamp(t) or pa.types.is_date(t):
    return pc.cast(pc.cast(col, pa.timestamp('s')), pa.int64()).to_numpy()
  if pa.types.is_string(t) or pa.types.is_large_string(t):
    try:
      return pc.cast(pc.cast(col, pa.timestamp('s')), pa.int64()).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
      for i, v in enumerate(col.to_pylist()):
        try:
          pc.cast(pa.array([v]), pa.timestamp('s'))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
          raise InputError(
              f'{_where(path, name, row0, i)}: unparseable time {v!r}; '
              'expected epoch seconds, a timestamp, or ISO-8601 such as '
              "'2024-03-01 12:00:00'") from None
      raise
  raise InputError(f'{_where(path, name, row0)}: expected a time (integer '
                   f'epoch seconds, timestamp, date or ISO-8601 string), got '
                   f'{t}')


def vectors(col, path, name, dim=None, row0=0):
  """(N, D) float32 of a list<number> column; every row the same length."""
  if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)
          or pa.types.is_fixed_size_list(col.type)):
    raise InputError(f'{_where(path, name, row0)}: expected a list of numbers '
                     f'per row, got {col.type}')
  _no_nulls(col, path, name, row0)
  lengths = pc.list_value_length(col).to_numpy()
  want = dim if dim is not None else (int(lengths[0]) if len(lengths) else 0)
  bad = lengths != want
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    raise InputError(f'{_where(path, name, row0, i)}: vector of length '
                     f'{lengths[i]}, expected {want}')
  flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
  out = flat.reshape(len(col), want)
  finite = np.isfinite(out).all(1)
  if not finite.all():
    i = int(np.flatnonzero(~finite)[0])
    raise InputError(f'{_where(path, name, row0, i)}: vector holds NaN or '
                     'infinite values')
  return out
