"""TFDS builders that write the world as array_record, and their readers.

One builder per table: items, users, search (train / test = held-out
sessions), impressions (train = training days, test = test days) and captions.
Each writes `<data_dir>/<name>/1.0.0/` and is read back with
`tfds.builder_from_directory(...).as_data_source(split)` (random access, no
TensorFlow). Features are inferred from the arrays, with the field docs below
so that `features.json` describes the data. The oracle is not a dataset: it is
an .npz beside them that only evaluation code opens.

TFDS writes the metadata and picks the shards; the examples are serialised a
block of rows at a time by `tf_example` (the bytes of TFDS's per-row
serialiser, ~1.5 us a row instead of ~40) and written with TFDS's
array_record adapter.
"""

import collections
import json
import os
import shutil
import tempfile

from absl import logging
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import shard_utils

from mmrec import files
from mmrec.data import manifest as manifest_lib
from mmrec.data import tf_example

VERSION = '1.0.0'
ORACLE_FILE = 'oracle.npz'
VOCAB_FILE = 'vocab.json'
CONFIG_FILE = 'world_config.json'

FIELD_DOCS = {
    'item_id': 'item id in [0, num_items)',
    'category': 'leaf category id',
    'top_category': 'top category id',
    'shop': 'shop id',
    'launch_day': 'first day the item can be shown',
    'image': 'catalogue image, RGB uint8',
    'title': 'title token ids, left-aligned, 0 = padding',
    'user_id': 'user id in [0, num_users)',
    'user_key': 'the real user (own ids for cold / rare users): evaluation',
    'age': 'age bucket', 'gender': 'gender id', 'city': 'city id',
    'session_id': 'search session id',
    'query_is_image': 'True: image query, False: text query',
    'query_image': 'user photo of the sought concept (zeros for text queries)',
    'query_text': 'query token ids (zeros for image queries)',
    'purchased_item': 'item bought at the end of the session',
    'hard_negatives': 'clicked-but-not-bought item ids (see mask)',
    'hard_negative_mask': 'which hard_negatives slots are real',
    'held_out': 'True for held-out sessions (the test split)',
    'day': 'day of the impression',
    'label': '1 = click',
    'seq_item': 'behaviour item ids before this impression, right-aligned, '
                '0 = pad',
    'seq_len': 'number of real (right-most) entries of seq_item',
    'caption': 'generic appearance caption token ids',
}


def _feature(name, column):
  doc = FIELD_DOCS.get(name)
  if column.ndim == 1:
    return tfds.features.Scalar(column.dtype, doc=doc)
  # One bytes blob per tensor: much cheaper to encode than int lists.
  return tfds.features.Tensor(shape=column.shape[1:], dtype=column.dtype,
                              encoding='bytes', doc=doc)


class TableBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes {split: table} tables; subclasses set `name`.

  A table is {field: array}, or (to stream a table larger than memory) a
  zero-argument callable returning an iterator of such chunks; then
  `example` ({field: array} with any number of rows) gives the features.
  """
  VERSION = tfds.core.Version(VERSION)

  def __init__(self, *, splits=None, example=None, **kwargs):
    self._splits = splits
    self._example = example
    super().__init__(file_format='array_record', **kwargs)

  def _info(self):
    first = self._example or next(iter(self._splits.values()))
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=tfds.features.FeaturesDict(
            {k: _feature(k, v) for k, v in first.items()}),
        disable_shuffling=True)  # keep generation order: byte-identical files

  # TFDS prints "Downloading and preparing dataset Unknown size ..." to
  # stdout for every builder: nothing is downloaded here, so say what we do.
  def _log_download_bytes(self):
    logging.info('writing %s to %s', self.name, self.data_dir)

  def _log_download_done(self):
    pass

  # TFDS's abstract hooks of its row-at-a-time writer, which
  # `_generate_splits` replaces.
  def _split_generators(self, dl_manager):
    raise NotImplementedError

  def _generate_examples(self, **kwargs):
    raise NotImplementedError

  def _generate_splits(self, dl_manager, download_config):
    """Writes every split (replaces TFDS's row-at-a-time split writer)."""
    del dl_manager
    if not self.info.disable_shuffling:
      raise ValueError('rows are written in generation order only')
    return [self._write_split(name, table, download_config.get_shard_config())
            for name, table in self._splits.items()]

  def _write_split(self, split, table, shard_config):
    """Serialises `table` to a scratch file, then into TFDS's shards.

    The number of shards depends on the total size, known only at the end:
    as TFDS's own writer, the examples wait on disk (bounded memory).
    """
    template = self._get_filename_template(split_name=split)
    spec = {k: (f.np_dtype, f.shape) for k, f in self.info.features.items()}
    lengths = []
    with tempfile.TemporaryFile(dir=template.data_dir) as scratch:
      for chunk in (table() if callable(table) else [table]):
        if not len(next(iter(chunk.values()))):
          continue
        for data, n in tf_example.serialize_blocks(chunk, spec):
          scratch.write(data)
          lengths.append(n)
      if not lengths:
        raise AssertionError(f'{self.name}: no examples in split {split!r}')
      lengths = np.concatenate(lengths)
      total = int(lengths.sum())
      num_shards = shard_config.get_number_shards(total, len(lengths))
      ends = shard_utils.get_shard_boundaries(len(lengths), num_shards)
      scratch.seek(0)
      writer = self._example_writer()
      for i, (lo, hi) in enumerate(zip([0] + ends[:-1], ends)):
        writer.write(
            template.sharded_filepath(shard_index=i, num_shards=num_shards),
            ((None, scratch.read(n)) for n in lengths[lo:hi].tolist()))
    logging.info('wrote %s %s: %d examples, %d shards', self.name, split,
                 len(lengths), num_shards)
    return tfds.core.SplitInfo(
        name=split, shard_lengths=[hi - lo for lo, hi in
                                   zip([0] + ends[:-1], ends)],
        num_bytes=total, filename_template=template)


class Items(TableBuilder, skip_registration=True):
  """Catalogue items: image, title, category, shop, launch day."""
  name = 'mmrec_items'


class Users(TableBuilder, skip_registration=True):
  """Users: profile fields."""
  name = 'mmrec_users'


class Search(TableBuilder, skip_registration=True):
  """Search -> purchase sessions (pre-training only)."""
  name = 'mmrec_search'


class Impressions(TableBuilder, skip_registration=True):
  """Display impressions with behaviour sequences (CTR)."""
  name = 'mmrec_impressions'


class Captions(TableBuilder, skip_registration=True):
  """Generic (image, appearance caption) pairs for CLIP-O."""
  name = 'mmrec_captions'


def _split_rows(table, mask):
  return {k: v[mask] for k, v in table.items()}


def write_tables(data_dir, tables):
  """Writes [(builder class, splits, example or None)] into `data_dir`.

  See `TableBuilder` for splits and example (streamed tables).
  """
  tfds.disable_progress_bar()  # our own logging reports progress
  for cls, splits, example in tables:
    logging.info('writing %s (%s)', cls.name, {
        k: 'streamed' if callable(v) else f'{len(next(iter(v.values())))} rows'
        for k, v in splits.items()})
    cls(splits=splits, example=example,
        data_dir=data_dir).download_and_prepare()
  # TFDS leaves an empty downloads/ tree: nothing is downloaded, don't say so.
  downloads = os.path.join(data_dir, 'downloads')
  if os.path.isdir(downloads) and not any(
      names for _, _, names in os.walk(downloads)):
    shutil.rmtree(downloads)


def world_config_dict(cfg):
  return json.loads(cfg.to_json_best_effort(sort_keys=True))


def write(world, data_dir):
  """Writes every table of `world` into the new directory `data_dir`.

  Plus oracle, vocabulary and manifest; the config file is written last, so
  its presence marks a finished world. Jobs call this only through
  `resolver.build_world`, which builds aside and renames into place.
  """
  os.makedirs(data_dir, exist_ok=True)
  config_path = os.path.join(data_dir, CONFIG_FILE)
  wanted = world_config_dict(world.config)
  day = world.impressions['day']
  held = world.search['held_out']
  builders = [
      (Items, {'catalogue': world.items}),
      (Users, {'catalogue': world.users}),
      (Search, {'train': _split_rows(world.search, ~held),
                'test': _split_rows(world.search, held)}),
      (Impressions, {
          'train': _split_rows(world.impressions, day < world.first_test_day),
          'test': _split_rows(world.impressions, day >= world.first_test_day)}),
      (Captions, {'train': world.captions}),
  ]
  write_tables(data_dir, [(cls, splits, None) for cls, splits in builders])
  files.write_npz(os.path.join(data_dir, ORACLE_FILE), world.oracle)
  files.write_json(os.path.join(data_dir, VOCAB_FILE),
                   {'words': list(world.vocab.words)})
  rows = {cls.name: {k: len(next(iter(v.values()))) for k, v in splits.items()}
          for cls, splits in builders}
  fields = {cls.name: list(next(iter(splits.values())))
            for cls, splits in builders}
  manifest_lib.write(data_dir, manifest_lib.from_world_config(
      wanted, rows, len(world.vocab.words), fields))
  files.write_json(config_path, wanted, sort_keys=True)


def load_world_config(data_dir):
  """The config a finished world was built from, as a plain dict."""
  path = os.path.join(data_dir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'no finished world in {data_dir} (missing {CONFIG_FILE}); build it '
        'with: python -m experiments.main '
        '--config=experiments/configs/world.py --workdir=...')
  with open(path) as f:
    return json.load(f)


def first_test_day(world_config):
  """Days before it are training days; items launched on or after it are new."""
  return world_config['num_days'] - world_config['num_test_days']


def vocab_size(data_dir):
  with open(os.path.join(data_dir, VOCAB_FILE)) as f:
    return len(json.load(f)['words'])


def is_complete(data_dir):
  """A finished dataset: a world (its config) or any producer's manifest."""
  return manifest_lib.exists(data_dir)


def is_world(data_dir):
  return os.path.exists(os.path.join(data_dir, CONFIG_FILE))


def dataset_dir(data_dir, name):
  path = os.path.join(data_dir, name, VERSION)
  if not os.path.exists(os.path.join(path, 'dataset_info.json')):
    raise FileNotFoundError(
        f'no dataset {name!r} under {data_dir} (expected {path}); build the '
        'world first: python -m experiments.main '
        '--config=experiments/configs/world.py --workdir=...')
  return path


def data_source(data_dir, name, split):
  """Random-access source over one split: `len()`, `[i]`, `__getitems__`."""
  builder = tfds.builder_from_directory(dataset_dir(data_dir, name))
  if split not in builder.info.splits:
    raise ValueError(f'dataset {name!r} has splits '
                     f'{sorted(builder.info.splits)}, not {split!r}')
  return builder.as_data_source(split)


def read_rows(source, indices):
  """Reads rows by index into a dict of stacked numpy arrays.

  Batched reads (`__getitems__`) are ~4x faster than one row at a time, and
  scalars come back as Python numbers, so the stored dtypes are restored.
  """
  rows = source.__getitems__(list(map(int, indices)))
  features = source.dataset_info.features
  return {k: np.asarray([r[k] for r in rows], dtype=features[k].np_dtype)
          for k in rows[0]}


# Whole splits already decoded in this process, newest last. A pipeline
# reads the same catalogue, search log and impressions in every run of its
# sweeps and evaluations, and TFDS decodes ~100 us a row: a tenth of a tiny
# paper pipeline's time went to decoding the same rows again. Keyed by the
# dataset's files and their sizes and mtimes, so a rewritten dataset is read
# afresh; the arrays are read-only, so no caller changes another's copy.
_TABLES = collections.OrderedDict()
TABLES_MAX_BYTES = 256 << 20  # a split larger than this is never kept


def _files_signature(path):
  return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns)
                      for e in os.scandir(path) if e.is_file()))


def load_table(data_dir, name, split, chunk=8192):
  """Reads a whole split into memory (for lookup tables: items, users).

  Read-only arrays, shared by every caller in this process (copy to change).
  """
  path = dataset_dir(data_dir, name)
  key = (os.path.realpath(path), split, _files_signature(path))
  if key in _TABLES:
    _TABLES.move_to_end(key)
    return dict(_TABLES[key])
  source = data_source(data_dir, name, split)
  parts = [read_rows(source, range(i, min(i + chunk, len(source))))
           for i in range(0, len(source), chunk)]
  table = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  for v in table.values():
    v.flags.writeable = False
  if sum(v.nbytes for v in table.values()) <= TABLES_MAX_BYTES:
    _TABLES[key] = table
    while sum(v.nbytes for t in _TABLES.values()
              for v in t.values()) > TABLES_MAX_BYTES:
      _TABLES.popitem(last=False)
  return dict(table)


def load_oracle(data_dir):
  with np.load(os.path.join(data_dir, ORACLE_FILE)) as f:
    return dict(f)
