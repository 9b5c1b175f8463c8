"""The data job: a local copy of real data -> a dataset in mmrec's format.

  python -m experiments.main --config=experiments/configs/data.py:SOURCE \\
      --config.source_dir=YOUR_COPY --workdir=NEW_DIR

SOURCE picks a reader (mmrec/data/readers/): each maps its dataset's files
onto the Parquet schema of convert.py (staged in the build directory, never
in the source directory), then `convert.Converter` writes the dataset. The
dataset is built beside NEW_DIR and renamed into place; NEW_DIR must be new
or empty, or already hold this very conversion (then it is reused): the
same config and the same source files (names, sizes, mtimes:
`source_fingerprint`), so a source that changed is refused, never reused.
"""

import dataclasses
import hashlib
import importlib
import json
import os
import shutil
import time

from absl import logging

from mmrec import bootstrap
from mmrec import files
from mmrec.data import convert
from mmrec.data import manifest

CONVERSION_FILE = 'conversion.json'  # the config a dataset was built from
STAGING = '_staging'  # the reader's Parquet tables, removed when done
# config.source -> reader module (a `stage(source_dir, out_dir, config)`
# returning the directory holding the Parquet schema of convert.py).
READERS = {
    'parquet': None,  # already the schema: read in place
    'movielens': 'mmrec.data.readers.movielens',
    'taobao_mm': 'mmrec.data.readers.taobao_mm',
    'microlens': 'mmrec.data.readers.microlens',
    'taobao_ad': 'mmrec.data.readers.taobao_ad',
    'amazon': 'mmrec.data.readers.amazon',
    'emoji': 'mmrec.data.readers.emoji',
}
# Files a reader (or your own data) stages beside the tables that the
# dataset keeps: the source's licences and attribution (the dataset holds
# images derived from it) and named slices of the search sessions.
STAGED_EXTRAS = ('LICENSES.md', manifest.QUERY_SLICES_FILE)


def source_fingerprint(source_dir):
  """Files, bytes and a digest of (path, size, mtime) of every file under
  `source_dir`: a source that gained, lost or rewrote a file converts again
  (reading no file's contents: a listing is cheap at any size)."""
  h = hashlib.sha256()
  count = size = 0
  for root, dirs, names in os.walk(source_dir):
    dirs.sort()
    for name in sorted(names):
      path = os.path.join(root, name)
      st = os.stat(path)
      rel = os.path.relpath(path, source_dir)
      h.update(f'{rel}\0{st.st_size}\0{st.st_mtime_ns}\n'.encode())
      count += 1
      size += st.st_size
  return {'files': count, 'bytes': size, 'sha256': h.hexdigest()}


def _conversion(config):
  source_dir = os.path.abspath(os.path.expanduser(config.source_dir))
  out = {'source': config.source, 'source_dir': source_dir,
         'source_files': source_fingerprint(source_dir),
         'convert': json.loads(config.convert.to_json_best_effort())}
  # A reader's own settings (config.<source>, e.g. Amazon's negatives) shape
  # the dataset too: a rerun with other ones must not reuse it.
  if config.source in config:
    out[config.source] = json.loads(
        config[config.source].to_json_best_effort())
  if config.source == 'movielens':  # which ratings are clicks
    out['label_threshold'] = float(config.label_threshold)
  return out


def _inside(path, parent):
  path, parent = os.path.realpath(path), os.path.realpath(parent)
  return path == parent or path.startswith(parent + os.sep)


def check_target(source_dir, target, wanted):
  """True if `target` already holds this conversion; raises if unusable."""
  if _inside(target, source_dir):
    raise ValueError(f'--workdir={target} is inside config.source_dir='
                     f'{source_dir}: mmrec never writes into the directory of '
                     'your source data; choose a workdir elsewhere')
  if manifest.exists(target):
    path = os.path.join(target, CONVERSION_FILE)
    found = None
    if os.path.exists(path):
      with open(path) as f:
        found = json.load(f)
    if found and found.get('source_files') != wanted['source_files'] and (
        dict(found, source_files=None) == dict(wanted, source_files=None)):
      was, now = found.get('source_files'), wanted['source_files']
      if was is None:
        raise FileExistsError(
            f'{target} holds a dataset converted before conversions recorded '
            "their source's files, so whether the source changed since is "
            'unknown: point config.data_dir at it as it is, or convert into '
            'a new --workdir')
      raise FileExistsError(
          f'{target} holds a dataset converted from {source_dir} when it had '
          f'{was["files"]} files, {was["bytes"]} bytes; it '
          f'now has {now["files"]} files, {now["bytes"]} bytes (or changed '
          'files): the source changed since. Convert it into a new '
          '--workdir (or remove this one); the old dataset is not reused')
    if found != wanted:
      raise FileExistsError(
          f'{target} already holds a dataset built from another source or '
          'config; use another --workdir, or point config.data_dir at it')
    return True
  if os.path.isdir(target) and os.listdir(target):
    raise FileExistsError(
        f'{target} holds files but no complete dataset '
        f'({", ".join(sorted(os.listdir(target))[:8])}); refusing to write '
        'into it. Remove it, or choose another --workdir.')
  return False


def run(config, workdir):
  """Converts `config.source_dir` into `workdir`; returns its manifest."""
  if config.source not in READERS:
    raise ValueError(f'config.source = {config.source!r}; known sources: '
                     f'{sorted(READERS)}')
  if not config.source_dir:
    raise ValueError('config.source_dir is empty: set it to your local copy '
                     f'of the {config.source} data')
  source_dir = os.path.abspath(os.path.expanduser(config.source_dir))
  if not os.path.isdir(source_dir):
    raise FileNotFoundError(f'config.source_dir={config.source_dir}: no such '
                            'directory')
  wanted = _conversion(config)
  if check_target(source_dir, workdir, wanted):
    logging.info('%s already holds this dataset; reusing it', workdir)
    return manifest.load(workdir)
  t0 = time.time()
  options = dataclasses.replace(convert.Options.from_config(config.convert),
                                source=f'{config.source}:{source_dir}')

  def fill(tmp):
    staged = source_dir
    if READERS[config.source]:
      reader = importlib.import_module(READERS[config.source])
      staged = os.path.join(tmp, STAGING)
      os.makedirs(staged)
      reader.stage(source_dir, staged, config)
    converter = convert.Converter(staged, options)
    m = converter.write(tmp)
    slices = os.path.join(staged, manifest.QUERY_SLICES_FILE)
    if os.path.isfile(slices):  # checked before it is kept
      search = m.tables.get(manifest.SEARCH)
      if search is None:
        raise manifest.DatasetError(f'{slices} names search sessions, but '
                                    'the data has no search log')
      manifest.load_query_slices(slices, sum(search['splits'].values()))
    for name in STAGED_EXTRAS:
      if os.path.isfile(os.path.join(staged, name)):
        shutil.copyfile(os.path.join(staged, name), os.path.join(tmp, name))
    # None: no impressions (a catalogue and a search log), no CTR split.
    fill.test_users_both = converter.scan.test_users_both
    shutil.rmtree(os.path.join(tmp, STAGING), ignore_errors=True)
    if source_fingerprint(source_dir) != wanted['source_files']:
      raise RuntimeError(f'{source_dir} changed while it was converted; '
                         'nothing was written: run again once it is whole')
    files.write_json(os.path.join(tmp, CONVERSION_FILE), wanted)
    fill.manifest = m

  files.build_aside(workdir, fill)
  m = fill.manifest
  if (fill.test_users_both is not None and
      fill.test_users_both < bootstrap.MIN_USERS):
    logging.warning(
        '%s: the test split has %d users with both a click and a non-click; '
        'the paired bootstrap needs %d for intervals (every claim on it will '
        'read "insufficient data"): choose more test days '
        '(--config.convert.test_days, or --config.convert.split=share with '
        'a larger --config.convert.test_share)', workdir,
        fill.test_users_both, bootstrap.MIN_USERS)
  rows = (f'impressions {m.tables[manifest.IMPRESSIONS]["splits"]}'
          if manifest.IMPRESSIONS in m.tables else
          f'no impressions (pre-training only), search sessions '
          f'{m.tables[manifest.SEARCH]["splits"]}')
  print(f'{m.name}: {m.num_users} users, {m.num_items} items, '
        f'{m.num_days} days (test from day {m.first_test_day}), {rows}; '
        f'written in {time.time() - t0:.1f}s to {workdir}')
  return m
