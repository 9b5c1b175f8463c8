"""The item-vector table: what the embedding job writes and the CTR model reads.

Its format, loading, validation and placement on a device mesh all live
here; producers (embed.py) and consumers (train_ctr.py, serving) meet only
through the file.

One `.npz` per table with `float32` (N, D) L2-normalised vectors, `int8`
(N, D) = round(127 v) (dequantised as int8 / 127, within 1/254 of the float
vector per entry), and `metadata` (JSON: encoder checkpoint, config, dim,
count, sha256 of the float table). Written to a temporary file and renamed,
so a reader never sees a partial table; on load the shapes, the values and
the checksum are checked so a truncated or corrupt table fails with a clear
error instead of feeding garbage to a model.
"""

import hashlib
import json
import os
import zipfile

from absl import logging
import jax
import numpy as np

from mmrec import files
from mmrec import int8
from mmrec import sharding

FILE = 'item_vectors.npz'  # in the embedding / pre-training job's workdir
# Beside FILE (the encoder's item vector: fused, or its item_mode's tower),
# the encoders write one table per modality: the image tower's vector of the
# item image and the text tower's vector of the title. The paper's positives
# are per modality and its online result is for image representations, so
# the CTR side can read either (ctr_sweep's `<variant>@image`).
MODALITIES = ('image', 'text')


class VectorTableError(ValueError):
  """A vector table is missing, corrupt, or does not fit its consumer."""


def file_name(modality=None):
  """FILE for the item vector (modality None), else the modality's table."""
  if modality is None:
    return FILE
  if modality not in MODALITIES:
    raise VectorTableError(f'modality must be one of {MODALITIES} or None, '
                           f'got {modality!r}')
  return f'item_vectors_{modality}.npz'


def resolve(path):
  """The item table a `vectors_path` names: the file itself, or FILE in the
  job workdir it names (absolute; '' stays '')."""
  if not path:
    return path
  path = os.path.abspath(os.path.expanduser(path))
  return os.path.join(path, FILE) if os.path.isdir(path) else path


def modality_path(path, modality):
  """The `modality` table beside a table (or in a job's workdir) `path`."""
  return os.path.join(os.path.dirname(resolve(path)), file_name(modality))


def _digest(vectors):
  return hashlib.sha256(np.ascontiguousarray(vectors, np.float32)).hexdigest()


def save(path, vectors, metadata=None):
  """Writes a table atomically; returns the metadata written."""
  vectors = np.asarray(vectors, np.float32)
  if vectors.ndim != 2:
    raise VectorTableError(f'vectors must be (num_items, dim), got shape '
                           f'{vectors.shape}')
  if not np.isfinite(vectors).all():
    bad = np.flatnonzero(~np.isfinite(vectors).all(1))
    raise VectorTableError(f'{len(bad)} item vectors are not finite (first '
                           f'item ids: {bad[:5].tolist()}); refusing to save')
  meta = dict(metadata or {})
  meta.update(num_items=int(vectors.shape[0]), dim=int(vectors.shape[1]),
              sha256=_digest(vectors), format_version=1)
  def write(tmp):
    with open(tmp, 'wb') as f:
      np.savez(f, float32=vectors, int8=int8.quantize(vectors),
               metadata=np.array(json.dumps(meta, sort_keys=True)))
  files.write_with(path, write)
  return meta


def load(path, *, dtype='float32', num_items=None, dim=None):
  """Reads and checks a table; returns (vectors, metadata).

  Args:
    path: the .npz written by `save`.
    dtype: 'float32' or 'int8' (the quantised copy, as stored).
    num_items: if given, the table must have exactly this many rows.
    dim: if given, the vectors must have this dimension.
  """
  if dtype not in ('float32', 'int8'):
    raise VectorTableError(f"dtype must be 'float32' or 'int8', got {dtype!r}")
  if not os.path.exists(path):
    raise VectorTableError(f'no vector table at {path}; run the embedding '
                           'job (config.job = "embed") first')
  try:
    with np.load(path, allow_pickle=False) as f:
      meta = json.loads(str(f['metadata']))
      vectors = f['float32']
      table = vectors if dtype == 'float32' else f['int8']
  except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as e:
    raise VectorTableError(
        f'vector table {path} is corrupt or truncated ({type(e).__name__}: '
        f'{e}); re-run the embedding job') from e
  where = f'vector table {path}'
  if vectors.shape != (meta['num_items'], meta['dim']):
    raise VectorTableError(f'{where}: float32 shape {vectors.shape} does not '
                           f'match its metadata ({meta["num_items"]}, '
                           f'{meta["dim"]})')
  if _digest(vectors) != meta['sha256']:
    raise VectorTableError(f'{where}: checksum mismatch, the file is corrupt')
  if not np.isfinite(vectors).all():
    raise VectorTableError(f'{where}: holds NaN or infinite vectors')
  if table.shape != vectors.shape:
    raise VectorTableError(f'{where}: {dtype} copy has shape {table.shape}, '
                           f'expected {vectors.shape}')
  if num_items is not None and meta['num_items'] != num_items:
    raise VectorTableError(f'{where}: has {meta["num_items"]} items, the data '
                           f'has {num_items} (item ids must index the table)')
  if dim is not None and meta['dim'] != dim:
    raise VectorTableError(f'{where}: dimension {meta["dim"]}, the model '
                           f'expects {dim}')
  return table, meta


def load_from(path, *, field, dtype='float32', num_items=None, dim=None):
  """`load` of a table named by a config field (a table or its job's workdir).

  Errors name the field and its value, so the fix is obvious from the message.
  """
  if not path:
    raise VectorTableError(
        f'{field} is empty: set it to the embedding job\'s {FILE} (or its '
        'workdir).')
  try:
    return load(resolve(path), dtype=dtype, num_items=num_items, dim=dim)
  except VectorTableError as e:
    raise VectorTableError(f'{field}={path}: {e}') from e


def table_sharding(table, mesh):
  """Rows shard on 'model' like the ID tables (when the model axis divides
  V), else the table is replicated; None (no table) is replicated."""
  if table is None:
    return sharding.replicated(mesh)
  return sharding.logical_to_sharding(('vocab', None), mesh, shapes=table)


def put(table, mesh):
  """Host table -> device array on the mesh (once per run); None stays None."""
  if table is None:
    return None
  return jax.device_put(table, table_sharding(table, mesh))


def save_tables(workdir, tables, metadata):
  """Writes each table of an encoder's `item_tables` ({'item', 'image',
  'text'}) to `workdir` (file_name); returns the item table's metadata."""
  for m in MODALITIES:
    if m in tables:
      save(os.path.join(workdir, file_name(m)), tables[m],
           dict(metadata, modality=m))
  return save(os.path.join(workdir, FILE), tables['item'],
              dict(metadata, modality='item'))


def load_vectors(config, num_items):
  """The (V, Dv) host table a CTR config names (`config.vectors_path`, in
  `config.vectors_dtype`, checked against `num_items` and
  `config.vectors_dim`)."""
  dim = config.vectors_dim or None
  table, meta = load_from(
      config.vectors_path, field='config.vectors_path',
      dtype=config.vectors_dtype, num_items=num_items, dim=dim)
  logging.info('item vectors %s: %s %s (encoder: %s)', config.vectors_path,
               table.dtype, table.shape, meta.get('method', '?'))
  return table
