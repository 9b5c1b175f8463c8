"""The training batches of each pre-training family (grain, repeat forever).

  search      search -> purchase sessions with hard negatives (SCL family):
              `pipelines.pretrain_dataset`
  captions    generic (image, caption) pairs (CLIP-O)
  catalogue   (item image, item title) of items launched before the first
              test day, so new items stay unseen (CLIP-E)
  co_clicks   consecutive clicks of behaviour sequences (i2i)
  co_click_sessions  the same pairs as search sessions (the SCL family on a
              dataset without a search log): the earlier item's content is
              the query, the later item the purchase, no hard negatives

A catalogue with one modality (titles only, images only) gives batches
without the other's fields: the encoder has no tower for it.

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


def _content(items, prefix, ids):
  """{prefix_image, prefix_title} of `ids`, for the modalities items have."""
  return {f'{prefix}_{k}': items[k][ids] for k in ('image', 'title')
          if k in items}


def co_clicks(data_dir, items, *, batch_size, seed, num_pairs):
  pairs = co_click_pairs(data_dir, num_pairs, seed)

  def gather(idx):
    a, b = pairs[idx, 0], pairs[idx, 1]
    return {**_content(items, 'a', a), **_content(items, 'b', b),
            'a_item': a, 'b_item': b}
  return _forever(len(pairs), batch_size, seed).map(_Gather(gather))


def co_click_sessions(data_dir, items, *, batch_size, seed, num_pairs):
  """Co-click pairs in the search batches' layout (pipelines.
  JoinSearchFields): query = the earlier item's image (even pair index, when
  items have images) or title, purchase = the later item, one hard-negative
  slot, masked out (a co-click log has no clicked-not-bought item)."""
  pairs = co_click_pairs(data_dir, num_pairs, seed)
  has_image, has_title = 'image' in items, 'title' in items

  def gather(idx):
    a, b = pairs[idx, 0], pairs[idx, 1]
    n = len(idx)
    is_image = (idx % 2 == 0) if has_image and has_title else np.full(
        n, has_image)
    neg = np.zeros((n, 1), b.dtype)
    out = {'query_is_image': is_image, 'query_item': a, 'pos_item': b,
           'neg_item': neg,
           'neg_mask': np.zeros((n, 1), bool),
           **_content(items, 'pos', b), **_content(items, 'neg', neg)}
    if has_image:
      out['query_image'] = items['image'][a]
    if has_title:
      out['query_text'] = items['title'][a]
    return out
  return _forever(len(pairs), batch_size, seed).map(_Gather(gather))
