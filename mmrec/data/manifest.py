"""The dataset manifest: what a dataset on disk holds, in one JSON file.

Every producer (the synthetic world, the Parquet converter and the readers
built on it) writes `manifest.json` into the dataset directory, last: its
presence marks a complete dataset. Consumers (the CTR data, id_stats, the
pre-training jobs, the report) read sizes, splits and declared fields from it,
never from the producer's config. docs/data_format.md documents every key.

A world built before manifests existed holds only `world_config.json`; `load`
derives its manifest from that, so old worlds stay usable.
"""

import dataclasses
import json
import os

import numpy as np

from mmrec import files

FILE = 'manifest.json'
FORMAT_VERSION = 1
WORLD_CONFIG_FILE = 'world_config.json'  # builders.CONFIG_FILE (no import
# cycle: builders imports this module)

ITEMS, USERS = 'mmrec_items', 'mmrec_users'
IMPRESSIONS, SEARCH, CAPTIONS = ('mmrec_impressions', 'mmrec_search',
                                 'mmrec_captions')
# Optional, beside the tables: {"slices": {name: [session id, ...]}}, named
# subsets of the search sessions that evaluation reports on their own (e.g.
# the emoji set's image queries drawn by the item's maker or another).
QUERY_SLICES_FILE = 'query_slices.json'


class DatasetError(ValueError):
  """A dataset lacks what a job needs, or its manifest is malformed."""


@dataclasses.dataclass(frozen=True)
class Manifest:
  """A dataset's declaration (see docs/data_format.md).

  tables: {table: {'splits': {split: num_rows or None}, 'fields': [...]}}.
  categorical: {table: {field: vocabulary size}}: scalar ids in [0, size).
  bags: {table: {field: vocabulary size}}: fixed-width id lists, 0 = empty
    slot (multi-valued fields: genres, tags).
  ctr: which categorical fields the CTR model embeds: 'user_features',
    'item_features' (the target's), 'seq_features' (a prefix of
    item_features: also looked up for every behaviour), 'item_bags',
    'user_bags' (bags the target / the user is embedded with),
    'category_fields' ([leaf, top] for id_stats' category shares, may be
    []), 'category_bag' (a bag of items standing in for them when there is
    no categorical item field, e.g. MovieLens genres; absent or None: none).
  """
  name: str
  source: str
  num_users: int
  num_items: int
  num_days: int
  first_test_day: int
  validation_days: int
  tables: dict
  categorical: dict
  bags: dict = dataclasses.field(default_factory=dict)
  ctr: dict = dataclasses.field(default_factory=dict)
  image_size: int | None = None
  text: dict | None = None  # {'tokenizer', 'vocab_size', 'length'}
  vectors: str | None = None  # an item_vectors.npz shipped with the data
  oracle: str | None = None  # world only: true click probabilities
  # An .npy of item ids in the dataset directory: the candidates held-out
  # retrieval ranks (retrieval_eval.py); None: the whole catalogue.
  retrieval_candidates: str | None = None
  seq_len: int = 0
  long_seq_len: int = 0  # > 0: impressions also hold long_seq_item
  format_version: int = FORMAT_VERSION

  def to_dict(self):
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d, where='manifest'):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise DatasetError(f'{where}: unknown keys {unknown} (known: '
                         f'{sorted(known)})')
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING}
    missing = sorted(required - set(d))
    if missing:
      raise DatasetError(f'{where}: missing keys {missing}')
    if d.get('format_version', FORMAT_VERSION) > FORMAT_VERSION:
      raise DatasetError(f'{where}: format_version {d["format_version"]} is '
                         f'newer than this mmrec reads ({FORMAT_VERSION})')
    m = cls(**d)
    m.check(where)
    return m

  def check(self, where='manifest'):
    """Internal consistency: sizes positive, ctr fields declared."""
    for key in ('num_users', 'num_items', 'num_days'):
      if getattr(self, key) < 1:
        raise DatasetError(f'{where}: {key} = {getattr(self, key)}, expected '
                           '>= 1')
    if not 0 < self.first_test_day < self.num_days + 1:
      raise DatasetError(f'{where}: first_test_day {self.first_test_day} not '
                         f'in [1, num_days = {self.num_days}]')
    for table, fields in list(self.categorical.items()) + list(
        self.bags.items()):
      for field, size in fields.items():
        if size < 1:
          raise DatasetError(f'{where}: {table}.{field} has vocabulary size '
                             f'{size}, expected >= 1')
    item_cat = self.categorical.get(ITEMS, {})
    for key, table in (('user_features', USERS), ('item_features', ITEMS)):
      for f in self.ctr.get(key, ()):
        if f not in self.categorical.get(table, {}):
          raise DatasetError(f'{where}: ctr.{key} names {f!r}, not a declared '
                             f'categorical field of {table} '
                             f'({sorted(self.categorical.get(table, {}))})')
    for key, table in (('item_bags', ITEMS), ('user_bags', USERS)):
      for f in self.ctr.get(key, ()):
        if f not in self.bags.get(table, {}):
          raise DatasetError(f'{where}: ctr.{key} names {f!r}, not a declared '
                             f'bag of {table} '
                             f'({sorted(self.bags.get(table, {}))})')
    seq = list(self.ctr.get('seq_features', ()))
    if seq != list(self.ctr.get('item_features', ()))[:len(seq)]:
      raise DatasetError(f'{where}: ctr.seq_features {seq} must be a prefix '
                         f'of ctr.item_features '
                         f'{self.ctr.get("item_features")}')
    for f in self.ctr.get('category_fields', ()):
      if f not in item_cat:
        raise DatasetError(f'{where}: ctr.category_fields names {f!r}, not a '
                           'categorical item field')
    bag = self.ctr.get('category_bag')
    if bag is not None and bag not in self.bags.get(ITEMS, {}):
      raise DatasetError(f'{where}: ctr.category_bag names {bag!r}, not a '
                         f'declared bag of {ITEMS} '
                         f'({sorted(self.bags.get(ITEMS, {}))})')

  # --- What a dataset has ---------------------------------------------------

  def has(self, table, *fields):
    t = self.tables.get(table)
    return t is not None and all(f in t['fields'] for f in fields)

  def require(self, job, table, fields=(), why='', can_run=None):
    """Raises DatasetError naming what `job` needs and what it lacks.

    E.g. require('scl', SEARCH, why='SCL needs query -> purchase pairs',
    can_run=['clip_e', 'i2i']).
    """
    if self.has(table, *fields):
      return
    if table not in self.tables:
      what = f'no {table} table'
    else:
      lacking = [f for f in fields if f not in self.tables[table]['fields']]
      what = f'no field(s) {lacking} in {table}'
    msg = f'dataset {self.name!r} has {what}'
    if why:
      msg += f': {job} {why}' if not why.startswith(job) else f': {why}'
    if can_run is not None:
      msg += f'; methods that can run: {", ".join(can_run) or "none"}'
    raise DatasetError(msg)

  @property
  def item_zero_reserved(self):
    """Id 0 is converted data's rare-or-unknown bucket; the world (the one
    producer with an oracle) has no such bucket: its item 0 is an item."""
    return self.oracle is None

  def split_rows(self, table, split):
    return self.tables.get(table, {}).get('splits', {}).get(split)

  @property
  def first_validation_day(self):
    return self.first_test_day - self.validation_days


def match_bags(ctr):
  """The item bags the behaviours carry (`seq_<bag>` (B, L, K)) for the ID
  model's match features, of a manifest's `ctr` section: its category bag
  (a multi-valued field standing in for the category, e.g. MovieLens
  genres), where it declares one."""
  bag = ctr.get('category_bag')
  return (bag,) if bag and bag in ctr.get('item_bags', ()) else ()


def retrieval_candidates(data_dir, m):
  """The declared candidate item ids (int64), or None: the catalogue."""
  if m.retrieval_candidates is None:
    return None
  path = os.path.join(data_dir, m.retrieval_candidates)
  try:
    ids = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise DatasetError(f'{path}: the declared retrieval candidates cannot be '
                       f'read (expected a .npy of item ids): {e}') from e
  if ids.ndim != 1 or not len(ids) or not np.issubdtype(ids.dtype,
                                                          np.integer):
    raise DatasetError(f'{path}: expected a non-empty 1-D array of integer '
                       f'item ids, got {ids.dtype} of shape {ids.shape}')
  bad = np.flatnonzero((ids < 0) | (ids >= m.num_items))
  if len(bad):
    raise DatasetError(f'{path}, row {bad[0]}: item id {ids[bad[0]]}, '
                       f'expected one in [0, num_items = {m.num_items})')
  return ids.astype(np.int64)


def write(data_dir, manifest):
  manifest.check(os.path.join(data_dir, FILE))
  files.write_json(os.path.join(data_dir, FILE), manifest.to_dict(),
                   sort_keys=True)


def exists(data_dir):
  return any(os.path.exists(os.path.join(data_dir, f))
             for f in (FILE, WORLD_CONFIG_FILE))


def load_query_slices(path, num_sessions=None):
  """{name: (n,) int64 session ids} of a QUERY_SLICES_FILE, checked: a
  `{"slices": {name: [session id, ...]}}` object whose ids are rows of the
  search log (< num_sessions where given)."""
  try:
    with open(path, encoding='utf8') as f:
      obj = json.load(f)
  except (OSError, ValueError) as e:
    raise DatasetError(f'{path}: not a readable JSON file ({e})') from e
  slices = obj.get('slices') if isinstance(obj, dict) else None
  if not isinstance(slices, dict) or not slices:
    raise DatasetError(f'{path}: expected {{"slices": {{name: [session id, '
                       f'...]}}}} with at least one slice, got '
                       f'{str(obj)[:200]}')
  out = {}
  for name, ids in slices.items():
    if not isinstance(ids, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in ids):
      raise DatasetError(f'{path}: slice {name!r}: expected a list of '
                         f'integer session ids, got {str(ids)[:200]}')
    a = np.asarray(ids, np.int64)
    known = '>= 0' if num_sessions is None else f'0..{num_sessions - 1}'
    bad = a[(a < 0) | (num_sessions is not None and a >= num_sessions)]
    if bad.size:
      raise DatasetError(f'{path}: slice {name!r}: session id {bad[0]} is not '
                         f'a row of the search log ({known})')
    out[name] = a
  return out


def load(data_dir):
  """The manifest of a complete dataset (or of a pre-manifest world)."""
  path = os.path.join(data_dir, FILE)
  if os.path.exists(path):
    try:
      with open(path) as f:
        d = json.load(f)
    except json.JSONDecodeError as e:
      raise DatasetError(f'{path}: not valid JSON ({e})') from e
    return Manifest.from_dict(d, where=path)
  world = os.path.join(data_dir, WORLD_CONFIG_FILE)
  if os.path.exists(world):
    with open(world) as f:
      return from_world_config(json.load(f))
  raise FileNotFoundError(
      f'no complete dataset in {data_dir} (missing {FILE}); build one with '
      '`python -m experiments.main --config=experiments/configs/world.py '
      '--workdir=NEW_DIR` (the synthetic world) or '
      '`--config=experiments/configs/data.py:SOURCE '
      '--config.source_dir=YOUR_COPY --workdir=NEW_DIR` (real data)')


# --- The synthetic world as one producer -------------------------------------

WORLD_FIELDS = {
    ITEMS: ['item_id', 'category', 'top_category', 'shop', 'launch_day',
            'image', 'title'],
    USERS: ['user_id', 'age', 'gender', 'city'],
    SEARCH: ['session_id', 'user_id', 'query_is_image', 'query_image',
             'query_text', 'purchased_item', 'hard_negatives',
             'hard_negative_mask', 'held_out'],
    IMPRESSIONS: ['user_id', 'item_id', 'day', 'label', 'seq_item',
                  'seq_len'],
    CAPTIONS: ['image', 'caption'],
}
WORLD_SPLITS = {ITEMS: ['catalogue'], USERS: ['catalogue'],
                SEARCH: ['train', 'test'], IMPRESSIONS: ['train', 'test'],
                CAPTIONS: ['train']}
NUM_GENDERS = 2  # the world generates a binary gender field


def from_world_config(wc, rows=None, vocab_size=None, fields=None):
  """The manifest of a world built from config dict `wc`.

  `rows`: {table: {split: num_rows}} when known (at write time); `fields`:
  {table: [field, ...]} as written (default: the world's usual fields).
  """
  rows = rows or {}
  fields = fields or WORLD_FIELDS
  num_leaves = wc['num_top_categories'] * wc['leaves_per_top']
  return Manifest(
      name='world', source=f'synthetic world (seed {wc["seed"]})',
      num_users=wc['num_users'], num_items=wc['num_items'],
      num_days=wc['num_days'],
      first_test_day=wc['num_days'] - wc['num_test_days'],
      validation_days=1,
      tables={t: {'fields': list(fields[t]),
                  'splits': {s: rows.get(t, {}).get(s) for s in splits}}
              for t, splits in WORLD_SPLITS.items()},
      categorical={
          ITEMS: {'category': num_leaves,
                  'top_category': wc['num_top_categories'],
                  'shop': wc['num_shops']},
          USERS: {'age': wc['num_age_buckets'], 'gender': NUM_GENDERS,
                  'city': wc['num_cities']}},
      # The ID model of the paper's team: (category, shop) per target,
      # category per behaviour; top_category only feeds id_stats.
      ctr={'user_features': ['age', 'gender', 'city'],
           'item_features': ['category', 'shop'],
           'seq_features': ['category'], 'item_bags': [],
           'category_fields': ['category', 'top_category']},
      image_size=wc['image_size'],
      text={'tokenizer': 'vocab.json', 'vocab_size': vocab_size,
            'length': wc['title_length']},
      oracle='oracle.npz', seq_len=wc['seq_len'])
