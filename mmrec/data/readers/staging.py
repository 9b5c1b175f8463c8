"""Staging: what readers share to map a release onto convert.py's schema.

Delimited text files (CSV, TSV, '::'-separated) -> checked Arrow batches,
streamed in blocks (pyarrow.csv for one-character delimiters, a line reader
for MovieLens-1M's '::'), so memory is bounded by a block, and a malformed
line fails naming the file and line; JSON-lines files (plain or gzip) ->
checked Arrow tables of chunks of lines, with the same errors; staged
Parquet shards; first-seen per-id fields of row-level data; padding removal
from id lists.
"""

import csv
import gzip
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from mmrec.data import columns

BLOCK_BYTES = 1 << 22


def require(directory, *names):
  """Paths of `names` in `directory`; a clear error for the first missing."""
  out = []
  for name in names:
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
      raise columns.InputError(f'{directory}: missing {name} (found '
                               f'{sorted(os.listdir(directory))[:12]})')
    out.append(path)
  return out


def batches(path, names, types, *, delimiter=',', header=False,
            encoding='utf8', quoted=True, chunk_rows=65536):
  """Yields pyarrow.RecordBatch of columns `names` typed as `types`.

  `header`: the file's first line names its columns (they must include
  `names`); else the columns are `names` in order.
  """
  if len(delimiter) > 1:
    yield from _split_lines(path, names, types, delimiter, header, encoding,
                            chunk_rows)
    return
  read = pacsv.ReadOptions(
      column_names=None if header else names, encoding=encoding,
      block_size=BLOCK_BYTES)
  parse = pacsv.ParseOptions(delimiter=delimiter,
                             quote_char='"' if quoted else False)
  convert = pacsv.ConvertOptions(column_types=dict(zip(names, types)),
                                 include_columns=names)
  try:
    reader = pacsv.open_csv(path, read_options=read, parse_options=parse,
                            convert_options=convert)
    for batch in reader:
      yield batch
  except (pa.ArrowInvalid, KeyError) as e:
    # pyarrow names the column but not the line: find it (error path only).
    where = _first_bad_line(path, names, types, delimiter, header, encoding,
                            quoted) if isinstance(e, pa.ArrowInvalid) else None
    raise columns.InputError(where or (
        f'{path}: {e} (expected columns {names} as '
        f'{[str(t) for t in types]}, separated by {delimiter!r})')) from None


def header(path, delimiter=',', encoding='utf8'):
  """The column names on the first line of a delimited file."""
  with open(path, encoding=encoding, newline='') as f:
    return next(csv.reader(f, delimiter=delimiter), [])


def check_header(path, names, delimiter=',', encoding='utf8'):
  """The header's names; a clear error naming the missing ones of `names`."""
  found = header(path, delimiter, encoding)
  missing = [n for n in names if n not in found]
  if missing:
    raise columns.InputError(f'{path}: missing column(s) {missing} on the '
                             f'header line; found {found}')
  return found


def _first_bad_line(path, names, types, delimiter, header_line, encoding,
                    quoted):
  """'file, line n, column c: value, expected type' of the first value
  pyarrow.csv cannot convert (None if none is found)."""
  nulls = set(pacsv.ConvertOptions().null_values)
  try:
    with open(path, encoding=encoding, newline='') as f:
      rows = csv.reader(f, delimiter=delimiter,
                        quoting=csv.QUOTE_MINIMAL if quoted else
                        csv.QUOTE_NONE)
      if header_line:
        first = next(rows, [])
        width, index = len(first), [first.index(n) for n in names]
      else:
        width, index = len(names), range(len(names))
      for row in rows:
        if not row:
          continue
        if len(row) != width:
          return (f'{path}, line {rows.line_num}: {len(row)} fields, '
                  f'expected {width} separated by {delimiter!r}')
        for name, i, t in zip(names, index, types):
          v = row[i]
          if v in nulls and not pa.types.is_string(t):
            continue
          try:
            pa.array([v], pa.string()).cast(t)
          except (pa.ArrowInvalid, ValueError):
            return (f'{path}, line {rows.line_num}, column {name!r}: {v!r}, '
                    f'expected {t}')
  except (OSError, ValueError, csv.Error):
    pass
  return None


def _split_lines(path, names, types, delimiter, header, encoding,
                 chunk_rows):
  rows, first_line = [], 1
  with open(path, encoding=encoding, newline='') as f:
    if header:
      f.readline()
      first_line = 2
    for n, line in enumerate(f, first_line):
      line = line.rstrip('\r\n')
      if not line:
        continue
      parts = line.split(delimiter)
      if len(parts) != len(names):
        raise columns.InputError(
            f'{path}, line {n}: {len(parts)} fields, expected {len(names)} '
            f'({", ".join(names)}) separated by {delimiter!r}: {line[:80]!r}')
      rows.append(parts)
      if len(rows) == chunk_rows:
        yield _typed(path, n, rows, names, types)
        rows = []
  if rows:
    yield _typed(path, n, rows, names, types)


def _typed(path, last_line, rows, names, types):
  cols = list(zip(*rows))
  arrays = []
  for name, col, t in zip(names, cols, types):
    try:
      arrays.append(pa.array(col, pa.string()).cast(t))
    except (pa.ArrowInvalid, ValueError) as e:
      raise columns.InputError(
          f'{path}, column {name!r} (lines up to {last_line}): {e}; expected '
          f'{t}') from None
  return pa.RecordBatch.from_arrays(arrays, names)


class Staged:
  """Writes one staged table as Parquet shards of chunk-sized batches."""

  def __init__(self, directory, table):
    self.dir = os.path.join(directory, table)
    os.makedirs(self.dir, exist_ok=True)
    self.n = 0

  def write(self, table):
    if not isinstance(table, pa.Table):
      table = pa.Table.from_batches([table])
    pq.write_table(table, os.path.join(self.dir, f'part-{self.n:05d}.parquet'))
    self.n += 1


class FirstSeen:
  """The first row's `fields` per `key` id, over chunks (a staged table)."""

  def __init__(self, key, fields):
    self.key, self.fields = key, list(fields)
    self.parts, self.seen = [], np.zeros(0, np.int64)

  def add(self, table):
    ids = table.column(self.key).to_numpy()
    _, first = np.unique(ids, return_index=True)
    new = first[~np.isin(ids[first], self.seen)]
    if len(new):
      self.parts.append(table.select([self.key] + self.fields).take(
          pa.array(new)))
      self.seen = np.union1d(self.seen, ids[new])

  def table(self, names):
    """The collected rows with columns renamed to `names`."""
    return pa.concat_tables(self.parts).rename_columns(list(names))


def drop_padding(col, pad=0):
  """A list<id> column without its `pad` entries (nulls become [])."""
  col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
  off = col.offsets.to_numpy()
  vals = col.values.to_numpy()[off[0]:off[-1]]
  keep = vals != pad
  cum = np.concatenate([[0], np.cumsum(keep)])
  return pa.ListArray.from_arrays(pa.array(cum[off - off[0]].astype(np.int32)),
                                  pa.array(vals[keep]))


# JSON-lines fields: kind -> (Arrow type, what the error messages expect).
JSON_KINDS = {
    'str': (pa.string(), 'a string'),
    'int': (pa.int64(), 'an integer'),
    'list<str>': (pa.list_(pa.string()), 'a list of strings'),
}


def _open_text(path):
  return gzip.open(path, 'rb') if path.endswith('.gz') else open(path, 'rb')


def json_lines(path, fields, chunk_rows=65536):
  """Yields (line numbers, pyarrow.Table) of chunks of a JSON-lines file.

  `fields`: {name: (kind, required)} with kind one of JSON_KINDS; other keys
  of a line are not read. A required field must be present, not null and
  (strings) not empty; an optional one may be missing or null (null). A
  line that is not a JSON object, or a value of another kind, stops with
  the file, line, field and what was expected. '.gz' files are gunzipped.
  """
  schema = pa.schema([(n, JSON_KINDS[k][0]) for n, (k, _) in fields.items()])
  lines, numbers, n = [], [], 0
  try:
    with _open_text(path) as f:
      for n, line in enumerate(f, 1):
        if not line.strip():
          continue
        lines.append(line.rstrip(b'\r\n') + b'\n')
        numbers.append(n)
        if len(lines) == chunk_rows:
          yield np.asarray(numbers), _json_table(path, lines, numbers,
                                                 fields, schema)
          lines, numbers = [], []
  except (OSError, EOFError) as e:
    raise columns.InputError(f'{path}: cannot read after line {n} '
                             f'(truncated, or not gzip / text?): {e}') from None
  if lines:
    yield np.asarray(numbers), _json_table(path, lines, numbers, fields,
                                           schema)


def _json_table(path, lines, numbers, fields, schema):
  """pyarrow's parse of the chunk; on any doubt, a line-by-line check that
  names the culprit (and builds the table if pyarrow was the problem)."""
  buf = b''.join(lines)
  try:
    t = pajson.read_json(
        pa.BufferReader(buf),
        read_options=pajson.ReadOptions(use_threads=False,
                                        block_size=len(buf) + 1),
        parse_options=pajson.ParseOptions(explicit_schema=schema,
                                          unexpected_field_behavior='ignore'))
    if len(t) == len(lines) and not _json_missing(t, fields):
      return t.select(schema.names)
  except pa.ArrowInvalid:
    pass
  objs = [_json_line(path, n, line, fields) for n, line in zip(numbers, lines)]
  return pa.Table.from_pylist(objs, schema)


def _json_missing(table, fields):
  for name, (kind, required) in fields.items():
    if not required:
      continue
    col = table.column(name)
    if col.null_count or (kind == 'str' and
                          pc.any(pc.equal(col, '')).as_py()):
      return True
  return False


def _json_line(path, n, line, fields):
  """One line's fields, checked: InputError naming file, line and field."""
  try:
    obj = json.loads(line.rstrip(b'\n'))
  except json.JSONDecodeError as e:
    raise columns.InputError(f'{path}, line {n}: not valid JSON ({e.msg} at '
                             f'column {e.colno}): {line[:80]!r}') from None
  except ValueError as e:  # not UTF-8
    raise columns.InputError(f'{path}, line {n}: not valid JSON text ({e}): '
                             f'{line[:80]!r}') from None
  if not isinstance(obj, dict):
    raise columns.InputError(f'{path}, line {n}: expected a JSON object '
                             f'{{...}}, got {line[:80]!r}')
  out = {}
  for name, (kind, required) in fields.items():
    v = obj.get(name)
    what = JSON_KINDS[kind][1]
    if v is None or (required and v == ''):
      if required:
        state = ('missing' if name not in obj else 'null' if v is None else
                 'empty')
        raise columns.InputError(f'{path}, line {n}: field {name!r} is '
                                 f'{state}; expected {what}')
      out[name] = None
      continue
    if kind == 'str':
      ok = isinstance(v, str)
    elif kind == 'int':
      ok = isinstance(v, int) and not isinstance(v, bool)
    else:
      ok = isinstance(v, list) and all(isinstance(x, str) for x in v)
    if not ok:
      raise columns.InputError(f'{path}, line {n}, field {name!r}: '
                               f'{str(v)[:60]!r}, expected {what}')
    out[name] = v
  return out
