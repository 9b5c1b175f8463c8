"""grain input pipelines: pre-training batches and CTR batches.

Every pipeline is index-level: `MapDataset.range(n)` -> shuffle (seeded,
reseeded each epoch) -> global batches of indices -> this process's slice of
each -> repeat -> one batched read from the TFDS source -> joins and
augmentations. Reading a batch at once is ~4x faster than row by row, and
shuffling indices keeps the whole pipeline deterministic for a seed and its
iterator state tiny (an index), so it round-trips through a checkpoint.

Batches are host-local: `batch_size` is global, every one of the P processes
of a multi-host job builds the same global order and global batches, and
process p reads rows `[p * batch_size / P, (p + 1) * batch_size / P)` of each
global batch. `sharding.shard_batch` concatenates the slices in process order,
so the global batch, and hence training, is the same for any P. Random
augmentations draw for the whole global batch and keep this process's slice
(`augment.AugmentImages`), so they do not depend on P either.
"""

import dataclasses

import grain
import jax
import numpy as np

from mmrec.data import augment as augment_lib
from mmrec.data import builders
from mmrec.data import ctr_rows
from mmrec.data import manifest


@dataclasses.dataclass(frozen=True)
class ReadRows(grain.transforms.Map):
  """Batch of row indices -> dict of stacked arrays from a TFDS source."""
  source: object

  def map(self, indices):
    return builders.read_rows(self.source, indices)


@dataclasses.dataclass(frozen=True)
class TakeColumns(grain.transforms.Map):
  """Batch of row indices -> those rows of a split held in memory (`columns`:
  name -> array over the split's rows, as `builders.load_table` returns):
  the same arrays `ReadRows` decodes from the source, without decoding."""
  columns: dict

  def map(self, indices):
    return {k: v[indices] for k, v in self.columns.items()}


@dataclasses.dataclass(frozen=True)
class JoinCtrFields(grain.transforms.Map):
  """Adds item and user fields by id: the CTR model's input (ctr_rows.join)."""
  item_fields: dict  # name -> (num_items,) or (num_items, K) ids
  user_fields: dict  # name -> (num_users,) or (num_users, K) ids
  seq_fields: tuple = ()  # names of item_fields the behaviours carry

  def map(self, b):
    return ctr_rows.join(b, self.item_fields, self.user_fields,
                         self.seq_fields)


@dataclasses.dataclass(frozen=True)
class JoinSearchFields(grain.transforms.Map):
  """Adds the purchased item's and hard negatives' images and titles.

  Output (B batch, H hard negatives): query_is_image, query_image, query_text,
  pos_item, pos_image, pos_title, neg_item (B, H), neg_image (B, H, ...),
  neg_title (B, H, T), neg_mask (B, H). A catalogue without images (or
  titles), `item_image` (`item_title`) None, gives no *_image (*_title).
  """
  item_image: np.ndarray | None
  item_title: np.ndarray | None

  def map(self, b):
    pos, neg = b['purchased_item'], b['hard_negatives']
    out = {
        'query_is_image': b['query_is_image'],
        'query_image': b['query_image'], 'query_text': b['query_text'],
        'pos_item': pos, 'neg_item': neg, 'neg_mask': b['hard_negative_mask'],
    }
    for name, table in (('image', self.item_image),
                        ('title', self.item_title)):
      if table is not None:
        out[f'pos_{name}'], out[f'neg_{name}'] = table[pos], table[neg]
    return out


def _shard(process_index, process_count):
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in '
                     f'[0, {process_count})')
  return process_index, process_count


@dataclasses.dataclass(frozen=True)
class _Slice(grain.transforms.Map):
  """Global batch of indices -> rows [start, stop) of it (maybe fewer)."""
  start: int
  stop: int

  def map(self, indices):
    return indices[self.start:self.stop]


def _non_empty(indices):
  return len(indices) > 0


def index_batches(num_rows, batch_size, *, seed, shuffle, num_epochs,
                  drop_remainder, process_index=None, process_count=None):
  """Batches of row indices for this process (see module docstring).

  Every process shuffles and batches all `num_rows` alike and keeps its
  contiguous slice of each global batch, so every process runs the same
  number of steps. Without `drop_remainder` (evaluation), the last global
  batch is short: a process's slice of it may be short or, when empty,
  absent (its iterator ends one batch early).
  """
  index, count = _shard(process_index, process_count)
  if batch_size % count:
    raise ValueError(f'batch_size {batch_size} (global) must be divisible by '
                     f'the number of processes {count}')
  if batch_size > num_rows and drop_remainder:
    raise ValueError(f'batch_size {batch_size} is larger than the '
                     f'{num_rows} rows available')
  local_batch = batch_size // count
  ds = grain.MapDataset.range(num_rows)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  if count > 1:
    ds = ds.map(_Slice(index * local_batch, (index + 1) * local_batch))
    last = num_rows % batch_size
    if not drop_remainder and 0 < last <= index * local_batch:
      ds = ds.filter(_non_empty)  # Its slice of the last batch is empty.
  # Batch before repeating, so epochs end on a batch boundary; repeat reseeds
  # the shuffle every epoch.
  return ds if num_epochs == 1 else ds.repeat(num_epochs)


@dataclasses.dataclass(frozen=True)
class TakeRows(grain.transforms.Map):
  """Batch of positions -> the row indices at those positions of `rows`."""
  rows: np.ndarray

  def map(self, positions):
    return self.rows[positions]


def table_dataset(data_dir, name, split, *, batch_size, seed=0, shuffle=True,
                  num_epochs=1, drop_remainder=None, process_index=None,
                  process_count=None, rows=None, columns=None):
  """Raw batches of any stored table (e.g. items for CLIP-E, captions).

  `rows`: only these row indices of the split (in this order before any
  shuffle), e.g. the days of a split held out for validation.
  `columns`: the whole split already in memory (`builders.load_table`), read
  from there instead of the source: the same batches, without decoding
  every row again (a sweep's runs share one copy: mmrec/ctr_data.py).
  """
  if columns is None:
    source = builders.data_source(data_dir, name, split)
    n = len(source)
  else:
    n = len(next(iter(columns.values())))
  if drop_remainder is None:
    drop_remainder = shuffle  # evaluation passes keep every row
  n = n if rows is None else len(rows)
  ds = index_batches(n, batch_size, seed=seed, shuffle=shuffle,
                     num_epochs=num_epochs, drop_remainder=drop_remainder,
                     process_index=process_index, process_count=process_count)
  if rows is not None:
    ds = ds.map(TakeRows(np.asarray(rows)))
  return ds.map(ReadRows(source) if columns is None else TakeColumns(columns))


def ctr_dataset(data_dir, split, *, batch_size, seed=0, shuffle=True,
                num_epochs=1, items=None, users=None, **kwargs):
  """CTR batches (see `JoinCtrFields`) of the impressions split.

  The joined fields are those the dataset's manifest declares for the CTR
  model (`ctr` section). `items` / `users` are the loaded lookup tables;
  pass them when building several pipelines to read them once.
  """
  ctr = manifest.load(data_dir).ctr
  items = items or builders.load_table(data_dir, manifest.ITEMS, 'catalogue')
  users = users or builders.load_table(data_dir, manifest.USERS, 'catalogue')
  ds = table_dataset(data_dir, manifest.IMPRESSIONS, split,
                     batch_size=batch_size, seed=seed, shuffle=shuffle,
                     num_epochs=num_epochs, **kwargs)
  item_names = list(ctr.get('item_features', ())) + list(
      ctr.get('item_bags', ()))
  return ds.map(JoinCtrFields(
      {k: items[k] for k in item_names},
      {k: users[k] for k in list(ctr.get('user_features', ())) + list(
          ctr.get('user_bags', ()))},
      tuple(ctr.get('seq_features', ())) + manifest.match_bags(ctr)))


def pretrain_dataset(data_dir, split='train', *, batch_size, seed=0,
                     shuffle=True, num_epochs=1, augment=None, items=None,
                     **kwargs):
  """Pre-training batches (see `JoinSearchFields`) of the search log.

  `augment`: an `augment.Options`, or a mapping of its fields (the config's
  `augment` ConfigDict); None or all off: no augmentation.
  """
  items = items or builders.load_table(data_dir, 'mmrec_items', 'catalogue')
  ds = table_dataset(data_dir, 'mmrec_search', split, batch_size=batch_size,
                     seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                     **kwargs)
  ds = ds.map(JoinSearchFields(items.get('image'), items.get('title')))
  if augment is not None and not isinstance(augment, augment_lib.Options):
    augment = augment_lib.Options(**dict(augment))
  # A catalogue without images has no image tower to augment for.
  if augment is not None and augment.enabled and 'image' in items:
    index, count = _shard(kwargs.get('process_index'),
                          kwargs.get('process_count'))
    fields = ('query_image', 'pos_image', 'neg_image')
    ds = ds.random_map(augment_lib.AugmentImages(
        fields, augment, process_index=index, process_count=count), seed=seed)
  return ds


def iterator(ds, prefetch_threads=0, prefetch_batches=2):
  """A checkpointable iterator over a pipeline.

  Threads overlap reading with training. Plain `iter(ds)` would use grain's
  defaults (16 threads, 500 elements ahead), which reads hundreds of batches
  before the first step: costly for big batches and short runs.
  """
  return iter(ds.to_iter_dataset(grain.ReadOptions(
      num_threads=prefetch_threads,
      prefetch_buffer_size=prefetch_batches if prefetch_threads else 0)))
