"""Amazon Reviews 2023 (McAuley lab) -> convert's schema, streamed.

Files of one category (config.amazon.category, or the only one present),
JSON lines, plain or gzipped (.jsonl / .jsonl.gz):
  <Category>.jsonl       one review per line
  meta_<Category>.jsonl  one item per line
Review fields and what becomes of them:
  user_id            user
  parent_asin        item (a product; its variants, `asin`, are one item,
                     as in the metadata)
  timestamp          time (milliseconds -> seconds)
  rating, title, text, images, asin, helpful_vote, verified_purchase
                     not read: every review is a positive whatever its
                     rating (implicit feedback), and the review's words
                     and photos come after the purchase, not before a click
Metadata fields:
  parent_asin        item
  title              title (text)
  main_category      categorical (first item field: behaviours carry it,
                     id_stats uses it); null = missing
  store              categorical; null = missing
  categories         bag (the category path, top first; first max_bag)
  images, videos     not read: URLs only. Images come from
                     config.amazon.image_dir/<parent_asin>.jpg instead
                     ('' = no images); items without that file have none
                     (zeros), and how many is printed
  average_rating, rating_number
                     not read: aggregates over all reviews, test days
                     included (a leak)
  features, description, details, price, bought_together
                     not read: free text, free-form dicts, a number (the
                     schema has titles, categoricals and bags only)
Missing or null required fields (user_id, parent_asin, timestamp; meta:
parent_asin), a value of the wrong kind or a line that is not JSON stop
with the file, line, field and what was expected; the optional metadata
fields may be missing or null.

Impressions (implicit feedback): each review is a click (label 1) on
parent_asin at its time. For each, config.amazon.negatives non-clicks
(label 0) are drawn at the same time, uniformly and independently (with
replacement) from the items that exist then (first reviewed at or before
it) and that the user never reviews (config.amazon.seed; a review whose
user reviewed every existing item gets fewer). Items are the reviewed
parent_asins; metadata of items never reviewed is skipped.
Ids: user_id and parent_asin strings are numbered 1.. in sorted order here
(the staged ids are integers, so the converter's ids follow that order).
Days: the converter's (config.convert.test_days / validation_days; the
reviews span decades, so a month each by default). No search log.
Memory: the files are read in chunks of chunk_rows lines; the reviews are
kept as three numbers each (user, item, time: 16 bytes), as the converter
keeps every click.
"""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmrec.data import columns
from mmrec.data.readers import staging

SUFFIXES = ('.jsonl', '.jsonl.gz')
META = 'meta_'
REVIEW_FIELDS = {'user_id': ('str', True), 'parent_asin': ('str', True),
                 'timestamp': ('int', True)}
META_FIELDS = {'parent_asin': ('str', True), 'title': ('str', False),
               'main_category': ('str', False), 'store': ('str', False),
               'categories': ('list<str>', False)}
ITEM_FIELDS = ('title', 'main_category', 'store', 'categories')
MAX_DRAWS = 100  # rejection rounds of the negative sampler


def categories(source_dir):
  """The categories with a review file in `source_dir`, sorted."""
  found = set()
  for name in os.listdir(source_dir):
    for suffix in SUFFIXES:
      if name.endswith(suffix) and not name.startswith(META):
        found.add(name[:-len(suffix)])
  return sorted(found)


def _path(source_dir, stem):
  for suffix in SUFFIXES:
    path = os.path.join(source_dir, stem + suffix)
    if os.path.isfile(path):
      return path
  raise columns.InputError(
      f'{source_dir}: missing {stem}.jsonl (or {stem}.jsonl.gz); found '
      f'{sorted(os.listdir(source_dir))[:12]}')


def files(source_dir, category=''):
  """(category, reviews path, metadata path)."""
  if not category:
    found = categories(source_dir)
    if not found:
      raise columns.InputError(
          f'{source_dir}: no Amazon Reviews 2023 review files '
          '(<Category>.jsonl[.gz]); found '
          f'{sorted(os.listdir(source_dir))[:12]}')
    if len(found) > 1:
      raise columns.InputError(
          f'{source_dir}: {len(found)} Amazon Reviews 2023 review files '
          f'(<Category>.jsonl[.gz]): {", ".join(found[:12])}; set '
          '--config.amazon.category to one')
    category = found[0]
  return (category, _path(source_dir, category),
          _path(source_dir, META + category))


class _Codes:
  """Strings -> codes in order of first appearance, chunk by chunk."""

  def __init__(self):
    self.index = {}

  def add(self, col):
    d = col.dictionary_encode()
    codes = np.fromiter(
        (self.index.setdefault(s, len(self.index))
         for s in d.dictionary.to_pylist()), np.int64, len(d.dictionary))
    return codes[d.indices.to_numpy()]

  def sorted(self):
    """(keys in sorted order, rank 1.. of each first-appearance code)."""
    keys = np.asarray(list(self.index), dtype=object)
    order = np.argsort(keys, kind='stable')
    rank = np.empty(len(keys), np.int64)
    rank[order] = np.arange(1, len(keys) + 1)
    return keys[order], rank


def _reviews(path, chunk_rows):
  """(user, item, time in seconds) of every review, user and item as ranks
  1.. of their sorted strings, then the sorted user and item strings."""
  users, items, parts = _Codes(), _Codes(), []
  for _, t in staging.json_lines(path, REVIEW_FIELDS, chunk_rows):
    parts.append((users.add(t.column('user_id').combine_chunks()),
                  items.add(t.column('parent_asin').combine_chunks()),
                  t.column('timestamp').to_numpy() // 1000))
  if not parts:
    raise columns.InputError(f'{path}: no reviews')
  user_keys, user_rank = users.sorted()
  item_keys, item_rank = items.sorted()
  user, item, time = (np.concatenate([p[k] for p in parts]) for k in range(3))
  return user_rank[user], item_rank[item], time, user_keys, item_keys


def sample_negatives(user, item, time, per_positive, rng):
  """(positive row, item) pairs: `per_positive` draws per review, uniform
  over the items first reviewed at or before its time that its user never
  reviews (draws that keep hitting reviewed items are dropped)."""
  n = int(item.max()) + 1
  first = np.full(n, np.iinfo(np.int64).max)
  np.minimum.at(first, item, time)
  by_launch = np.argsort(first, kind='stable')
  launched = first[by_launch]
  reviewed = np.unique(user * n + item)
  rows = np.repeat(np.arange(len(user)), per_positive)
  # Items existing at the review's time: a prefix of by_launch (>= 1: the
  # reviewed item itself).
  avail = np.searchsorted(launched, time[rows], side='right')
  out = np.full(len(rows), -1, np.int64)
  pending = np.arange(len(rows))
  for _ in range(MAX_DRAWS):
    if not len(pending):
      break
    draw = by_launch[rng.integers(0, avail[pending])]
    key = user[rows[pending]] * n + draw
    pos = np.minimum(np.searchsorted(reviewed, key), len(reviewed) - 1)
    hit = reviewed[pos] == key
    out[pending[~hit]] = draw[~hit]
    pending = pending[hit]
  ok = out >= 0
  return rows[ok], out[ok]


def _meta(path, item_keys, chunk_rows):
  """Metadata rows of the reviewed items: (item rank, pyarrow.Table)."""
  line_of = np.zeros(len(item_keys) + 1, np.int64)  # 0 = not seen yet
  ranks, parts = [], []
  for lines, t in staging.json_lines(path, META_FIELDS, chunk_rows):
    asin = t.column('parent_asin').to_numpy(zero_copy_only=False).astype(
        object)
    pos = np.minimum(np.searchsorted(item_keys, asin), len(item_keys) - 1)
    known = item_keys[pos] == asin
    rank = pos + 1
    for i in np.flatnonzero(known):
      if line_of[rank[i]]:
        raise columns.InputError(
            f'{path}, line {lines[i]}: parent_asin {asin[i]!r} again (first '
            f'on line {line_of[rank[i]]}); one line per item')
      line_of[rank[i]] = lines[i]
    ranks.append(rank[known])
    parts.append(t.filter(pa.array(known)).select(list(ITEM_FIELDS)))
  schema = pa.schema([(f, staging.JSON_KINDS[META_FIELDS[f][0]][0])
                      for f in ITEM_FIELDS])
  return (np.concatenate(ranks) if ranks else np.zeros(0, np.int64),
          pa.concat_tables(parts) if parts else schema.empty_table())


def _images(image_dir, item_keys):
  """Absolute path of <parent_asin>.jpg per item (None where absent)."""
  image_dir = os.path.abspath(os.path.expanduser(image_dir))
  if not os.path.isdir(image_dir):
    raise columns.InputError(f'config.amazon.image_dir={image_dir}: no such '
                             'directory (a folder of <parent_asin>.jpg)')
  names = set(os.listdir(image_dir))
  return [os.path.join(image_dir, f'{k}.jpg') if f'{k}.jpg' in names
          else None for k in item_keys]


def stage(source_dir, out_dir, config):
  """Writes impressions/ and items.parquet into `out_dir`; returns counts."""
  a = config.amazon
  if int(a.negatives) < 0:
    raise ValueError(f'config.amazon.negatives = {a.negatives}: the number of '
                     'sampled non-clicks per review, >= 0')
  chunk = config.convert.chunk_rows
  category, reviews, meta = files(source_dir, a.category)
  user, item, time, _, item_keys = _reviews(reviews, chunk)
  rows, negative = sample_negatives(user, item, time, int(a.negatives),
                                    np.random.default_rng(a.seed))
  staged = staging.Staged(out_dir, 'impressions')
  # Each chunk: its reviews, then their negatives (rows are sorted).
  for lo in range(0, len(user), chunk):
    hi = min(lo + chunk, len(user))
    a0, a1 = np.searchsorted(rows, [lo, hi])
    r = rows[a0:a1]
    staged.write(pa.table({
        'user': np.concatenate([user[lo:hi], user[r]]),
        'item': np.concatenate([item[lo:hi], negative[a0:a1]]),
        'label': np.concatenate([np.ones(hi - lo, np.int8),
                                 np.zeros(len(r), np.int8)]),
        'time': np.concatenate([time[lo:hi], time[r]])}))
  rank, info = _meta(meta, item_keys, chunk)
  # One row per reviewed item: metadata where there is a line (nulls else).
  where = np.full(len(item_keys) + 1, -1, np.int64)
  where[rank] = np.arange(len(rank))
  where = where[1:]
  take = pa.array(where, mask=where < 0)
  items = {'item': np.arange(1, len(item_keys) + 1)}
  items.update({f: info.column(f).take(take) for f in ITEM_FIELDS})
  missing_images = None
  if a.image_dir:
    paths = _images(a.image_dir, item_keys)
    items['image'] = pa.array(paths, pa.string())
    missing_images = sum(p is None for p in paths)
  pq.write_table(pa.table(items), os.path.join(out_dir, 'items.parquet'))
  counts = {'category': category, 'reviews': len(user),
            'negatives': len(rows),
            'short_of_negatives': len(user) * int(a.negatives) - len(rows),
            'items': len(item_keys), 'items_with_metadata': len(rank),
            'items_without_image': missing_images}
  print(f'amazon {category}: {counts["reviews"]} reviews (clicks), '
        f'{counts["negatives"]} sampled non-clicks '
        f'({counts["short_of_negatives"]} draws short), {counts["items"]} '
        f'items ({counts["items_with_metadata"]} with metadata'
        + (f', {missing_images} without an image in {a.image_dir}'
           if a.image_dir else ', no images') + ')')
  return counts
