"""tf.Example bytes of many table rows at once, as TFDS serialises each row.

TFDS encodes an example through Python protobuf objects, ~40 us a row, most
of a large conversion. Our tables hold only scalar numbers and fixed-shape
tensors stored as raw bytes (`builders._feature`), so every row has the same
layout up to the widths of a few varints: numpy builds the bytes of a block
of rows together. The result is exactly what TFDS's `ExampleSerializer` gives
with `SerializeToString(deterministic=True)` (features in key order); the
tests check it against protobuf itself.

Protobuf wire format of tensorflow/core/example/{example,feature}.proto:
  Example  = 0x0a len Features
  Features = (0x0a len Entry)...              one entry per key, keys sorted
  Entry    = 0x0a len key  0x12 len Feature   (map<string, Feature>)
  Feature  = 0x0a len BytesList | 0x12 len FloatList | 0x1a len Int64List
  List     = 0x0a len values                  bytes: one value; float:
                                              packed fixed32; int64: packed
                                              varints
"""

import numpy as np

_SHIFTS = np.arange(10, dtype=np.uint64) * np.uint64(7)
BLOCK_BYTES = 1 << 24  # bound on the bytes one block of rows is built in


def _varint(values):
  """(N, <= 10) base-128 groups of int64 `values` and their byte counts."""
  u = np.asarray(values, np.int64).view(np.uint64)
  shifted = u[:, None] >> _SHIFTS
  n = 1 + np.count_nonzero(shifted[:, 1:], axis=1)
  groups = (shifted & np.uint64(0x7f)).astype(np.uint8)
  groups |= (np.arange(10) < (n - 1)[:, None]).astype(np.uint8) << 7
  return groups[:, :n.max(initial=1)], n


class _Row:
  """Byte segments of every row, in order.

  Parts: bytes (the same in every row), or ((N, width) uint8, (N,) valid
  lengths or None = full width).
  """

  def __init__(self, n):
    self.n, self.parts = n, []

  def const(self, data):
    data = bytes(data)
    if self.parts and isinstance(self.parts[-1], bytes):
      self.parts[-1] += data  # fewer, wider segments
    else:
      self.parts.append(data)
    return len(data)

  def varint(self, values):
    if np.ndim(values) == 0:  # one value for every row
      groups, n = _varint(np.reshape(values, 1))
      return self.const(groups[0, :n[0]].tobytes())
    groups, n = _varint(values)
    self.parts.append((groups, n))
    return n

  def raw(self, data):
    self.parts.append((data, None))
    return data.shape[1]

  def extend(self, other):
    for part in other.parts:
      if isinstance(part, bytes):
        self.const(part)
      else:
        self.parts.append(part)

  def length(self):
    return sum(len(p) if isinstance(p, bytes) else
               p[0].shape[1] if p[1] is None else p[1] for p in self.parts)

  def join(self):
    """(flat uint8 of all rows back to back, (N,) lengths)."""
    data, valid = [], []
    for p in self.parts:
      if isinstance(p, bytes):
        p = (np.broadcast_to(np.frombuffer(p, np.uint8), (self.n, len(p))),
             None)
      data.append(p[0])
      valid.append(np.ones(p[0].shape, bool) if p[1] is None
                   else np.arange(p[0].shape[1]) < p[1][:, None])
    data, valid = np.concatenate(data, axis=1), np.concatenate(valid, axis=1)
    return data[valid], valid.sum(1)


def _feature(row, column, dtype, shape):
  """Appends one Feature message; returns its byte length per row."""
  n = len(column)
  if shape:
    column = np.asarray(column)
    if column.dtype != dtype or column.shape[1:] != tuple(shape):
      raise ValueError(f'{column.dtype}{column.shape[1:]} column for a '
                       f'{np.dtype(dtype)}{tuple(shape)} tensor feature')
    data = np.ascontiguousarray(column).view(np.uint8).reshape(n, -1)
    size = data.shape[1]
    listed = _Row(n)
    listed.const(b'\x0a')
    length = 1 + listed.varint(size) + listed.raw(data)
    tag = b'\x0a'  # bytes_list
  elif np.issubdtype(dtype, np.floating):
    listed = _Row(n)
    length = listed.const(b'\x0a\x04') + listed.raw(
        np.asarray(column, dtype).astype('<f4').view(np.uint8).reshape(n, 4))
    tag = b'\x12'  # float_list
  elif np.issubdtype(dtype, np.integer) or np.dtype(dtype) == bool:
    # As TFDS: cast to the feature's dtype, then stored as int64 (bools
    # 0 / 1, uint64 bit-cast).
    values = np.asarray(column).astype(dtype)
    values = (values.view(np.int64) if values.dtype == np.uint64
              else values.astype(np.int64))
    listed = _Row(n)
    listed.const(b'\x0a')
    width = _Row(n)
    digits = width.varint(values)
    listed.varint(digits)
    listed.extend(width)
    length = 2 + digits
    tag = b'\x1a'  # int64_list
  else:
    raise ValueError(f'no tf.Example encoding here for {np.dtype(dtype)} '
                     f'scalars (numbers and fixed-shape tensors only)')
  row.const(tag)
  size = 1 + row.varint(length)
  row.extend(listed)
  return size + length


def serialize(table, spec):
  """Serialised tf.Examples of every row of `table`.

  Args:
    table: {key: array}, N rows each.
    spec: {key: (numpy dtype, shape)} of the TFDS features: shape () is a
      Scalar (stored as a one-value int64 / float list), any other shape a
      Tensor stored as its raw bytes (`encoding='bytes'`).

  Returns:
    (uint8 array of the N examples back to back, (N,) int64 byte lengths).
  """
  if set(table) != set(spec):
    raise ValueError(f'table fields {sorted(table)} != features '
                     f'{sorted(spec)}')
  n = len(next(iter(table.values())))
  features = _Row(n)
  for key in sorted(spec, key=lambda k: k.encode()):
    name = key.encode()
    if len(name) > 127:
      raise ValueError(f'feature name longer than 127 bytes: {key!r}')
    entry = _Row(n)
    entry.const(bytes([0x0a, len(name)]) + name + b'\x12')
    feature = _Row(n)
    size = _feature(feature, table[key], *spec[key])
    entry.varint(size)
    entry.extend(feature)
    features.const(b'\x0a')
    features.varint(entry.length())
    features.extend(entry)
  example = _Row(n)
  example.const(b'\x0a')
  example.varint(features.length())
  example.extend(features)
  data, lengths = example.join()
  return data, lengths.astype(np.int64)


def serialize_blocks(table, spec, block_bytes=BLOCK_BYTES):
  """`serialize` over blocks of about `block_bytes`: yields (data, lengths)."""
  n = len(next(iter(table.values())))
  width = sum(np.asarray(v[:1]).nbytes + 32 for v in table.values())
  step = max(1, block_bytes // max(width, 1))
  for lo in range(0, n, step):
    yield serialize({k: v[lo:lo + step] for k, v in table.items()}, spec)
