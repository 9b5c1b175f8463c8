"""The CTR job's data: a dataset's lookup tables, id-vocabulary sizes and
impression pipelines (train / test splits), read once per run.
"""

import dataclasses

from mmrec.data import builders
from mmrec.data import pipelines

NUM_GENDERS = 2  # The world generates a binary gender field.


def world_sizes(data_dir):
  """Vocabulary sizes of a dataset's id fields (EmbeddingConfig kwargs)."""
  return sizes(builders.load_world_config(data_dir))


def sizes(wc):
  """`world_sizes` of a world config dict (built or not)."""
  return dict(
      num_users=wc['num_users'], num_ages=wc['num_age_buckets'],
      num_genders=NUM_GENDERS, num_cities=wc['num_cities'],
      num_items=wc['num_items'],
      num_categories=wc['num_top_categories'] * wc['leaves_per_top'],
      num_shops=wc['num_shops'])


@dataclasses.dataclass
class CtrData:
  """A dataset's directory, lookup tables and sizes (read once per run)."""
  data_dir: str
  items: dict
  users: dict
  sizes: dict
  first_test_day: int

  @classmethod
  def load(cls, data_dir):
    return cls(data_dir,
               builders.load_table(data_dir, 'mmrec_items', 'catalogue'),
               builders.load_table(data_dir, 'mmrec_users', 'catalogue'),
               world_sizes(data_dir),
               builders.first_test_day(builders.load_world_config(data_dir)))

  def dataset(self, split, batch_size, *, seed=0, shuffle=False,
              num_epochs=1, **kwargs):
    return pipelines.ctr_dataset(
        self.data_dir, split, batch_size=batch_size, seed=seed,
        shuffle=shuffle, num_epochs=num_epochs, items=self.items,
        users=self.users, **kwargs)

  def num_rows(self, split):
    return len(builders.data_source(self.data_dir, 'mmrec_impressions', split))

  def steps_per_epoch(self, batch_size):
    """Steps of one epoch: full global batches (the same on every process)."""
    n = self.num_rows('train')
    steps = n // batch_size
    if steps < 1:
      raise ValueError(f'batch_size {batch_size} is larger than the {n} '
                       'training impressions')
    return steps
