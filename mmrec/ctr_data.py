"""The CTR job's data: a dataset's lookup tables, id-vocabulary sizes and
impression pipelines, read once per run. Sizes, declared fields and days come
from the dataset's manifest (mmrec/data/manifest.py), whoever produced it.

Splits: 'train' (the training days) and 'test' (the test days), as stored.
With `validation=True` the dataset's validation day(s) (the manifest's last
`validation_days` training days; the world: one) are held out: 'train' is the
days before them and 'validation' those days, so every tuning decision can be
made without touching the test day.
"""

import dataclasses
import functools

from absl import logging
import numpy as np

from mmrec import ctr_model
from mmrec import embedding
from mmrec import vector_table
from mmrec.data import builders
from mmrec.data import manifest
from mmrec.data import pipelines

def embedding_sizes(m):
  """EmbeddingConfig kwargs (sizes and declared fields) of a manifest."""
  cat = m.categorical
  ctr = m.ctr
  return dict(
      num_users=m.num_users, num_items=m.num_items,
      user_features=tuple((f, cat[manifest.USERS][f])
                          for f in ctr.get('user_features', ())),
      item_features=tuple((f, cat[manifest.ITEMS][f])
                          for f in ctr.get('item_features', ())),
      seq_features=tuple(ctr.get('seq_features', ())),
      item_bags=tuple((f, m.bags[manifest.ITEMS][f])
                      for f in ctr.get('item_bags', ())),
      user_bags=tuple((f, m.bags[manifest.USERS][f])
                      for f in ctr.get('user_bags', ())),
      match_bags=manifest.match_bags(ctr))


def world_sizes(data_dir):
  """`embedding_sizes` of a dataset directory's manifest."""
  return embedding_sizes(manifest.load(data_dir))


def sizes(wc):
  """`world_sizes` of a world config dict (built or not)."""
  return embedding_sizes(manifest.from_world_config(wc))


@dataclasses.dataclass
class CtrData:
  """A dataset's directory, lookup tables and sizes (read once per run)."""
  data_dir: str
  items: dict
  users: dict
  sizes: dict
  first_test_day: int
  validation: bool = False
  validation_days: int = 1

  @classmethod
  def load(cls, data_dir, validation=False):
    m = manifest.load(data_dir)
    # A catalogue and a search log only (own data without impressions):
    # pre-training data, nothing to train a CTR model on.
    m.require('CTR training', manifest.IMPRESSIONS,
              why='needs impressions (impressions.parquet)')
    return cls(data_dir,
               builders.load_table(data_dir, manifest.ITEMS, 'catalogue'),
               builders.load_table(data_dir, manifest.USERS, 'catalogue'),
               embedding_sizes(m), m.first_test_day, validation,
               m.validation_days)

  def _stored(self, split):
    """(stored split, row indices or None) of a split name."""
    if split == 'test' or (split == 'train' and not self.validation):
      return split, None
    if not self.validation or split not in ('train', 'validation'):
      raise ValueError(f'unknown split {split!r} (validation='
                       f'{self.validation}): expected train, test'
                       f'{", validation" if self.validation else ""}')
    day = train_columns(self.data_dir)['day']
    if not self.validation_days:
      raise ValueError(f'{self.data_dir}: the dataset declares no validation '
                       'split (manifest validation_days = 0); evaluate on its '
                       'test split (config.validation=False)')
    held = self.first_test_day - self.validation_days
    if not (day < held).any():
      raise ValueError(f'{self.data_dir}: a validation day needs at least two '
                       f'training days; the only one is day {held}')
    rows = np.flatnonzero(day >= held if split == 'validation' else day < held)
    return 'train', rows

  def dataset(self, split, batch_size, *, seed=0, shuffle=False,
              num_epochs=1, **kwargs):
    stored, rows = self._stored(split)
    return pipelines.ctr_dataset(
        self.data_dir, stored, batch_size=batch_size, seed=seed,
        shuffle=shuffle, num_epochs=num_epochs, items=self.items,
        users=self.users, rows=rows,
        columns=impression_columns(self.data_dir, stored), **kwargs)

  def num_rows(self, split):
    stored, rows = self._stored(split)
    if rows is not None:
      return len(rows)
    return len(builders.data_source(self.data_dir, 'mmrec_impressions',
                                    stored))

  def train_item_ids(self):
    """Item ids of the impressions trained on (for the exposure groups)."""
    _, rows = self._stored('train')
    ids = train_columns(self.data_dir)['item_id']
    return ids if rows is None else ids[rows]

  def steps_per_epoch(self, batch_size):
    """Steps of one epoch: full global batches (the same on every process)."""
    n = self.num_rows('train')
    steps = n // batch_size
    if steps < 1:
      raise ValueError(f'batch_size {batch_size} is larger than the {n} '
                       'training impressions')
    return steps


# The most bytes of impressions `impression_columns` keeps in memory per split.
IN_MEMORY_BYTES = 1 << 30


@functools.lru_cache(maxsize=4)
def impression_columns(data_dir, split):
  """A stored impressions split as in-memory columns (`builders.load_table`),
  or None where it would take more than IN_MEMORY_BYTES (a long history of a
  large converted dataset): then every batch is read from disk.

  Cached: decoding array_record rows costs ~6 s per 100k impressions on a
  2-core CPU, each epoch and test pass read the split again, and a sweep
  trains a dozen runs on the same splits in one process. The batches are
  the same arrays either way (pipelines.TakeColumns).
  """
  source = builders.data_source(data_dir, 'mmrec_impressions', split)
  if not len(source):
    return None
  row = builders.read_rows(source, [0])
  if sum(v.nbytes for v in row.values()) * len(source) > IN_MEMORY_BYTES:
    return None
  out = builders.load_table(data_dir, 'mmrec_impressions', split)
  for v in out.values():
    v.flags.writeable = False  # shared by every caller of the cache
  return out


@functools.lru_cache(maxsize=4)
def train_columns(data_dir):
  """{'item_id', 'day'} of every stored training impression.

  Cached: reading every training row costs ~10 s per 200k rows, and a sweep
  asks once per run for the same world (from `impression_columns` where it
  holds the split).
  """
  held = impression_columns(data_dir, 'train')
  if held is not None:
    return {k: held[k] for k in ('item_id', 'day')}
  source = builders.data_source(data_dir, 'mmrec_impressions', 'train')
  chunk = 16384
  parts = [builders.read_rows(source, range(i, min(i + chunk, len(source))))
           for i in range(0, len(source), chunk)]
  out = {k: np.concatenate([p[k] for p in parts]) for k in ('item_id', 'day')}
  for v in out.values():
    v.flags.writeable = False  # shared by every caller of the cache
  return out


def host_vectors(config, num_items):
  """The frozen (V, Dv) table a CTR config's model reads
  (vector_table.load_vectors), or None for a model that reads none."""
  if ctr_model.reads_vectors(config):
    return vector_table.load_vectors(config, num_items)
  if config.vectors_path:
    logging.info("variant 'id' (no retrieval) reads no item vectors; "
                 'ignoring config.vectors_path=%s', config.vectors_path)
  return None


def check_batch(batch, model, where, first_test_day=None, test=False):
  """Ids against `model`'s vocabularies, days against the train/test split."""
  emb = model.config.embedding
  try:
    embedding.check_ids(batch, emb)
  except ValueError as e:
    raise ValueError(f'{where}: {e}') from e
  if first_test_day is not None and 'day' in batch:
    day = np.asarray(batch['day'])
    bad = day < first_test_day if test else day >= first_test_day
    if bad.any():
      raise ValueError(
          f'{where}: holds day {int(day[bad][0])}, but the '
          f'{"test" if test else "train"} split must hold days '
          f'{">=" if test else "<"} {first_test_day} (first test day).')
