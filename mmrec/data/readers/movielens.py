"""MovieLens (ml-100k, ml-1m, ml-latest, ml-latest-small) -> convert's schema.

Which release is told by its files:
  ml-100k   u.data (user, item, rating, time; tabs), u.item ('|', latin-1:
            id, title, release date, video date, URL, 19 genre flags),
            u.user ('|': id, age, gender, occupation, zip)
  ml-1m     ratings.dat, movies.dat (id, title, 'A|B' genres), users.dat
            (id, gender, age bucket, occupation, zip); '::', latin-1
  ml-latest ratings.csv (userId, movieId, rating, timestamp), movies.csv
            (movieId, title, genres); header lines, quoted titles, utf-8;
            no users table
Every rating is an impression, a click when rating >= config.label_threshold
(4 of 5 stars: "liked"), at its timestamp. Items: title (the tokenizer is
trained on them) and the genres as a bag; users (100k, 1m): their profile
fields as categoricals. MovieLens has no images and no search log.
"""

import os

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmrec.data import columns
from mmrec.data.readers import staging

GENRES_100K = ('unknown', 'Action', 'Adventure', 'Animation', "Children's",
               'Comedy', 'Crime', 'Documentary', 'Drama', 'Fantasy',
               'Film-Noir', 'Horror', 'Musical', 'Mystery', 'Romance',
               'Sci-Fi', 'Thriller', 'War', 'Western')
RATING_TYPES = (pa.int64(), pa.int64(), pa.float64(), pa.int64())


def release(source_dir):
  for name, marker in (('ml-100k', 'u.data'), ('ml-1m', 'ratings.dat'),
                       ('ml-latest', 'ratings.csv')):
    if os.path.isfile(os.path.join(source_dir, marker)):
      return name
  raise columns.InputError(
      f'{source_dir}: not a MovieLens copy (no u.data, ratings.dat or '
      f'ratings.csv; found {sorted(os.listdir(source_dir))[:12]})')


def _ratings(path, threshold, chunk_rows, **fmt):
  names = ['user', 'item', 'rating', 'time']
  if fmt.get('header'):
    names_in_file = ['userId', 'movieId', 'rating', 'timestamp']
  else:
    names_in_file = names
  for b in staging.batches(path, names_in_file, RATING_TYPES,
                               chunk_rows=chunk_rows, **fmt):
    rating = b.column(2)
    yield pa.table({'user': b.column(0), 'item': b.column(1),
                    'label': pc.cast(pc.greater_equal(rating, threshold),
                                     pa.int8()),
                    'time': b.column(3)})


def _one(path, names, types, **fmt):
  parts = list(staging.batches(path, names, types, **fmt))
  return pa.Table.from_batches(parts) if parts else pa.table(
      {n: pa.array([], t) for n, t in zip(names, types)})


def _split_genres(col):
  """'A|B' -> ['A', 'B']; '' and ml-latest's '(no genres listed)' -> []."""
  return pa.array([g.split('|') if g and g != '(no genres listed)' else []
                   for g in col.to_pylist()], pa.list_(pa.string()))


def stage(source_dir, out_dir, config):
  """Writes impressions/, items.parquet and users.parquet into `out_dir`."""
  which = release(source_dir)
  chunk = config.convert.chunk_rows
  thr = float(config.label_threshold)
  staged = staging.Staged(out_dir, 'impressions')
  s, i64 = pa.string(), pa.int64()
  if which == 'ml-100k':
    data, item, user = staging.require(source_dir, 'u.data', 'u.item',
                                           'u.user')
    for t in _ratings(data, thr, chunk, delimiter='\t', quoted=False):
      staged.write(t)
    flags = [f'g{i}' for i in range(len(GENRES_100K))]
    it = _one(item, ['item', 'title', 'date', 'video', 'url'] + flags,
              [i64, s, s, s, s] + [pa.int8()] * len(flags), delimiter='|',
              encoding='latin-1', quoted=False)
    genres = [[g for g, f in zip(GENRES_100K, row) if f]
              for row in zip(*(it.column(f).to_pylist() for f in flags))]
    items = pa.table({'item': it.column('item'), 'title': it.column('title'),
                      'genres': pa.array(genres, pa.list_(s))})
    users = _one(user, ['user', 'age', 'gender', 'occupation', 'zip'],
                 [i64, i64, s, s, s], delimiter='|', encoding='latin-1',
                 quoted=False)
  elif which == 'ml-1m':
    data, item, user = staging.require(source_dir, 'ratings.dat',
                                           'movies.dat', 'users.dat')
    for t in _ratings(data, thr, chunk, delimiter='::', encoding='latin-1'):
      staged.write(t)
    it = _one(item, ['item', 'title', 'genres'], [i64, s, s],
              delimiter='::', encoding='latin-1')
    items = pa.table({'item': it.column('item'), 'title': it.column('title'),
                      'genres': _split_genres(it.column('genres'))})
    users = _one(user, ['user', 'gender', 'age', 'occupation', 'zip'],
                 [i64, s, i64, i64, s], delimiter='::', encoding='latin-1')
  else:
    data, item = staging.require(source_dir, 'ratings.csv', 'movies.csv')
    for t in _ratings(data, thr, chunk, header=True):
      staged.write(t)
    it = _one(item, ['movieId', 'title', 'genres'], [i64, s, s], header=True)
    items = pa.table({'item': it.column('movieId'),
                      'title': it.column('title'),
                      'genres': _split_genres(it.column('genres'))})
    users = None
  if not staged.n:
    raise columns.InputError(f'{data}: no ratings')
  pq.write_table(items, os.path.join(out_dir, 'items.parquet'))
  if users is not None:
    pq.write_table(users, os.path.join(out_dir, 'users.parquet'))
  return which
