"""The training batches of each pre-training family (grain, repeat forever).

  search      search -> purchase sessions with hard negatives (SCL family):
              `pipelines.pretrain_dataset`
  captions    generic (image, caption) pairs (CLIP-O)
  catalogue   (item image, item title) of items launched before the first
              test day, so new items stay unseen (CLIP-E)
  co_clicks   consecutive clicks of behaviour sequences (i2i)

Every family's batches come from `pipelines.index_batches` (seeded shuffle,
this process's share of each global batch), so their iterator state is an
index and round-trips through a checkpoint.
"""

import functools

import grain
import numpy as np

from mmrec.data import builders
from mmrec.data import manifest
from mmrec.data import pipelines


class _Gather(grain.transforms.Map):
  """Index batch -> rows of in-memory arrays (small tables, pairs)."""

  def __init__(self, fn):
    self._fn = fn

  def map(self, idx):
    return self._fn(idx)


def _forever(n, batch_size, seed):
  return pipelines.index_batches(n, batch_size, seed=seed, shuffle=True,
                                 num_epochs=None, drop_remainder=True)


def search_sessions(data_dir, items, *, batch_size, seed, augment):
  return pipelines.pretrain_dataset(data_dir, 'train', augment=augment,
                                    items=items, batch_size=batch_size,
                                    seed=seed, num_epochs=None)


def captions(data_dir, *, batch_size, seed):
  ds = pipelines.table_dataset(data_dir, 'mmrec_captions', 'train',
                               batch_size=batch_size, seed=seed,
                               num_epochs=None)
  return ds.map(_Gather(lambda b: {'image': b['image'],
                                   'text': b['caption']}))


def old_items(data_dir, items):
  """Ids of the items launched before the first test day."""
  first = manifest.load(data_dir).first_test_day
  return np.flatnonzero(items['launch_day'] < first)


def catalogue(data_dir, items, *, batch_size, seed):
  old = old_items(data_dir, items)
  return _forever(len(old), batch_size, seed).map(_Gather(
      lambda idx: {'image': items['image'][old[idx]],
                   'text': items['title'][old[idx]]}))


@functools.cache
def co_click_pairs(data_dir, num_pairs, seed):
  """Consecutive clicks in behaviour sequences: the i2i positives."""
  source = builders.data_source(data_dir, 'mmrec_impressions', 'train')
  # Rows are in day order: the last day's sequences are the longest.
  n = min(len(source), max(num_pairs // 4, 1000))
  rows = builders.read_rows(source, range(len(source) - n, len(source)))
  seq, length = rows['seq_item'], rows['seq_len']
  valid = np.arange(seq.shape[1])[None] >= seq.shape[1] - length[:, None]
  both = valid[:, 1:] & valid[:, :-1]
  pairs = np.stack([seq[:, :-1][both], seq[:, 1:][both]], 1)
  pairs = np.unique(pairs[pairs[:, 0] != pairs[:, 1]], axis=0)
  rng = np.random.default_rng(seed)
  return pairs[rng.permutation(len(pairs))[:num_pairs]]


def co_clicks(data_dir, items, *, batch_size, seed, num_pairs):
  pairs = co_click_pairs(data_dir, num_pairs, seed)

  def gather(idx):
    a, b = pairs[idx, 0], pairs[idx, 1]
    return {'a_image': items['image'][a], 'a_title': items['title'][a],
            'b_image': items['image'][b], 'b_title': items['title'][b],
            'a_item': a, 'b_item': b}
  return _forever(len(pairs), batch_size, seed).map(_Gather(gather))
