"""Bad own-data input: each case stops the data job with a message naming the
file, column (and row), value and what was expected, and leaves nothing
behind that could pass for a dataset."""

import json
import os
import struct
import tempfile
import zlib

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import fixtures
from mmrec.data import columns
from mmrec.data import dataset_job
from mmrec.data import manifest


def _edit(directory, table, fn):
  path = os.path.join(directory, f'{table}.parquet')
  pq.write_table(fn(pq.read_table(path)), path)


def _set(t, name, values, type_=None):
  i = t.column_names.index(name)
  return t.set_column(i, name, pa.array(values, type_))


def _missing_file(d):
  os.remove(os.path.join(d, 'impressions.parquet'))


def _renamed_column(d):
  _edit(d, 'impressions', lambda t: t.rename_columns(
      ['user', 'item', 'time', 'clicked']))


def _float_labels(d):
  _edit(d, 'impressions', lambda t: _set(
      t, 'label', t['label'].to_numpy().astype(np.float64)))


def _label_two(d):
  def fn(t):
    y = t['label'].to_numpy().copy()
    y[7] = 2
    return _set(t, 'label', y)
  _edit(d, 'impressions', fn)


def _null_user(d):
  def fn(t):
    u = t['user'].to_pylist()
    u[11] = None
    return _set(t, 'user', u, pa.string())
  _edit(d, 'impressions', fn)


def _bad_time(d):
  def fn(t):
    s = [str(np.datetime64(int(x), 's')) for x in t['time'].to_numpy()]
    s[5] = 'yesterday'
    return _set(t, 'time', s)
  _edit(d, 'impressions', fn)


def _empty_test_split(d):
  _edit(d, 'impressions', lambda t: t.drop_columns(['time']).append_column(
      'split', pa.array(['train'] * len(t))))


def _truncated(d):
  path = os.path.join(d, 'impressions.parquet')
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) // 2])


def _missing_image(d):
  os.remove(os.path.join(d, 'img', '3.png'))


def _unreadable_image(d):
  with open(os.path.join(d, 'img', '3.png'), 'wb') as f:
    f.write(b'not a png')


def _short_vector(d):
  def fn(t):
    v = t['vector'].to_pylist()
    v[2] = v[2][:7]
    return _set(t, 'vector', v)
  _edit(d, 'vectors', fn)


def _nan_vector(d):
  def fn(t):
    v = t['vector'].to_pylist()
    v[4][0] = float('nan')
    return _set(t, 'vector', v)
  _edit(d, 'vectors', fn)


def _duplicate_item(d):
  def fn(t):
    ids = t['item'].to_numpy().copy()
    ids[6] = ids[5]
    return _set(t, 'item', ids)
  _edit(d, 'items', fn)


def _null_in_history(d):
  # Row 9's list holds the 11th value of the flattened lists (lengths 0, 1,
  # 2, 0, 1, ...): the error names the row, not the value.
  def fn(t):
    items = t['item'].to_pylist()
    h = [items[:i % 3] for i in range(len(t))]
    h[9] = [items[0], None]
    return t.append_column('history', pa.array(h, pa.list_(pa.int64())))
  _edit(d, 'impressions', fn)


def _null_in_tags(d):
  def fn(t):
    tags = t['tags'].to_pylist()
    tags[5] = ['a', None]
    return _set(t, 'tags', tags)
  _edit(d, 'items', fn)


def _float_category(d):
  _edit(d, 'items', lambda t: t.append_column(
      'price', pa.array(np.linspace(1, 9, len(t)))))


def _mixed_id_kinds(d):
  _edit(d, 'users', lambda t: _set(t, 'user', np.arange(len(t))))


def _sharded_items(d):
  os.makedirs(os.path.join(d, 'items'))
  os.rename(os.path.join(d, 'items.parquet'),
            os.path.join(d, 'items', 'part-0.parquet'))


def _unknown_candidates(d):
  pq.write_table(pa.table({'item': np.array([5, 6], np.int64)}),
                 os.path.join(d, 'candidates.parquet'))


def _time_in_ms(d):
  def fn(t):
    x = t['time'].to_numpy().copy()
    x[13] *= 1000  # one row in milliseconds: 19.6M days
    return _set(t, 'time', x)
  _edit(d, 'impressions', fn)


def _one_row_a_year_later(d):
  def fn(t):
    x = t['time'].to_numpy().copy()
    x[13] = x.max() + 365 * fixtures.DAY  # the test split: that one row
    return _set(t, 'time', x)
  _edit(d, 'impressions', fn)


def _image_bytes(d):
  _edit(d, 'items', lambda t: _set(
      t, 'image', [b'\x89PNG...'] * len(t), pa.binary()))


def _image_ints(d):
  _edit(d, 'items', lambda t: _set(t, 'image', np.arange(len(t))))


def _decompression_bomb(d):
  # A 90-byte PNG whose header claims 100000 x 100000 pixels.
  def chunk(kind, data):
    return (struct.pack('>I', len(data)) + kind + data +
            struct.pack('>I', zlib.crc32(kind + data)))
  with open(os.path.join(d, 'img', '3.png'), 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n' + chunk(
        b'IHDR', struct.pack('>IIBBBBB', 100_000, 100_000, 8, 2, 0, 0, 0)) +
            chunk(b'IDAT', zlib.compress(b'\0' * 64)) + chunk(b'IEND', b''))


def _items_of_another_log(d):
  _edit(d, 'items', lambda t: _set(t, 'item', t['item'].to_numpy() + 5))


CASES = (
    ('time_in_ms', _time_in_ms,
     r"impressions.parquet, column 'time', row 13: \d+ \(.*\) lies \d+ days "
     r'after the first impression .*more than max_days=36525. A time in '
     r'milliseconds\?'),
    ('one_row_a_year_later', _one_row_a_year_later,
     r'the test split \(day 370 of 371, 1 rows\) has 0 user\(s\) with both a '
     r'click and a non-click, fewer than min_test_users=1'),
    ('image_bytes', _image_bytes,
     r"items.parquet, column 'image', row 0: bytes b'\\x89PNG...', expected "
     r'the path of an image file'),
    ('image_ints', _image_ints,
     r"items.parquet, column 'image', row 0: int 0, expected the path of an "
     r'image file'),
    ('decompression_bomb', _decompression_bomb,
     r"items.parquet, column 'image', row 3: image .*3.png refused: Image "
     r'size \(10000000000 pixels\) exceeds limit'),
    ('items_of_another_log', _items_of_another_log,
     r"items.parquet, column 'item': none of its ids is a item of the "
     r'impressions.*\(so no item has a title\)'),
    ('missing_file', _missing_file,
     r'no impressions.parquet \(or impressions/\) and no search.parquet'),
    ('renamed_column', _renamed_column,
     r"impressions.parquet: missing column\(s\) \['label'\]; found "
     r"\['user', 'item', 'time', 'clicked'\]"),
    ('float_labels', _float_labels,
     r"impressions.parquet, column 'label'.*expected 0/1 labels.*got double"),
    ('label_two', _label_two,
     r"impressions.parquet, column 'label', row 7: label 2, expected 0 or 1"),
    ('null_user', _null_user,
     r"impressions.parquet, column 'user', row 11: missing value"),
    ('unparseable_time', _bad_time,
     r"impressions.parquet, column 'time', row 5: unparseable time "
     r"'yesterday'; expected"),
    ('empty_test_split', _empty_test_split, r'the test split is empty'),
    ('truncated_parquet', _truncated,
     r'impressions.parquet: not a readable Parquet file'),
    ('missing_image', _missing_image,
     r"items.parquet, column 'image', row 3: image 'img/3.png' not found"),
    ('unreadable_image', _unreadable_image,
     r"items.parquet, column 'image', row 3: cannot read image .*3.png"),
    ('short_vector', _short_vector,
     r"vectors.parquet, column 'vector', row 2: vector of length 7, "
     r'expected 8'),
    ('nan_vector', _nan_vector,
     r"vectors.parquet, column 'vector', row 4: vector holds NaN"),
    ('null_in_history', _null_in_history,
     r"impressions.parquet, column 'history', row 9: a missing \(null\) id "
     r'in the list'),
    ('null_in_tags', _null_in_tags,
     r"items.parquet, column 'tags', row 5: a missing \(null\) id in the "
     r'list'),
    ('duplicate_item', _duplicate_item,
     r"items.parquet, column 'item': id .* appears twice \(rows \[5, 6\]\)"),
    ('float_category', _float_category,
     r"items.parquet, column 'price': a categorical field must hold "
     r'integers or strings'),
    ('mixed_id_kinds', _mixed_id_kinds,
     r"users.parquet, column 'user': int user ids, but .*impressions.parquet "
     r"column 'user' has str ones"),
    ('sharded_items', _sharded_items,
     r'items: items is read whole; give it as one file, .*items.parquet'),
    ('unknown_candidates', _unknown_candidates,
     r'candidates.parquet: no candidate is a known item \(of 2 rows\)'),
)


class BadInputTest(parameterized.TestCase):

  @parameterized.named_parameters(*CASES)
  def test_clear_error_and_nothing_left(self, corrupt, message):
    src = tempfile.mkdtemp()
    fixtures.write_own_data(src, num_users=20, num_items=12, rows=200)
    corrupt(src)
    parent = tempfile.mkdtemp()
    with self.assertRaisesRegex(columns.InputError, message):
      dataset_job.run(fixtures.own_data_config(src), os.path.join(parent, 'd'))
    self.assertEqual(os.listdir(parent), [])  # no half-written dataset


class QuerySlicesTest(parameterized.TestCase):
  """Own data's query_slices.json is kept when it names search-log rows, and
  refused, naming the file and the slice, when it does not."""

  def _src(self, slices):
    src = tempfile.mkdtemp()
    fixtures.write_own_data(src, num_users=20, num_items=12, rows=200,
                            sessions=40)
    with open(os.path.join(src, manifest.QUERY_SLICES_FILE), 'w') as f:
      f.write(slices if isinstance(slices, str) else json.dumps(slices))
    return src

  def test_kept_beside_the_tables(self):
    m, d = fixtures.convert(fixtures.own_data_config(
        self._src({'slices': {'odd': [1, 3, 39]}})))
    self.assertEqual(sum(m.tables[manifest.SEARCH]['splits'].values()), 40)
    got = manifest.load_query_slices(
        os.path.join(d, manifest.QUERY_SLICES_FILE))
    np.testing.assert_array_equal(got['odd'], [1, 3, 39])

  @parameterized.named_parameters(
      ('not_json', '{"slices": [1,', 'not a readable JSON file'),
      ('no_slices', {'odd': [1]}, r'expected \{"slices"'),
      ('not_ids', {'slices': {'odd': [1, 'x']}},
       "slice 'odd': expected a list of integer session ids"),
      ('past_the_log', {'slices': {'odd': [1, 40]}},
       r"slice 'odd': session id 40 is not a row of the search log \(0..39\)"))
  def test_bad_file_fails_the_job_and_leaves_nothing(self, slices, message):
    src = self._src(slices)
    parent = tempfile.mkdtemp()
    with self.assertRaisesRegex(manifest.DatasetError,
                                manifest.QUERY_SLICES_FILE + '.*' + message):
      dataset_job.run(fixtures.own_data_config(src), os.path.join(parent, 'd'))
    self.assertEqual(os.listdir(parent), [])


# Search logs of 60 sessions cut into shards search/{0,1}.parquet at row 30;
# each case spoils the second shard (rows 30..59; even rows: image queries).
def _search_time(t):
  s = [str(np.datetime64(int(x), 's')) for x in t['time'].to_numpy()]
  s[35] = 'yesterday'
  return _set(t, 'time', s)


def _search_image(t):
  paths = t['query_image'].to_pylist()
  paths[34] = 'img/nope.png'
  return _set(t, 'query_image', paths)


def _search_hard_negative(t):
  lists = t['hard_negatives'].to_pylist()
  lists[41] = [lists[0][0] if lists[0] else 17, None]
  return _set(t, 'hard_negatives', lists, pa.list_(pa.int64()))


def _search_kind(t):
  return _set(t, 'item', [str(x) for x in t['item'].to_pylist()])


SHARD = r'search/1.parquet'
ACROSS = (r'\(rows are numbered across the 2 shards of the search log in name '
          r'order; this shard starts at row 30\)')

SEARCH_CASES = (
    ('unparseable_time', _search_time, None,
     rf"{SHARD}, column 'time', row 35: unparseable time 'yesterday'.*"
     rf'{ACROSS}'),
    ('missing_query_image', _search_image, None,
     rf"{SHARD}, column 'query_image', row 34: image 'img/nope.png' not "
     rf'found.*{ACROSS}'),
    ('null_hard_negative', _search_hard_negative, None,
     rf"{SHARD}, column 'hard_negatives', row 41: a missing \(null\) id in "
     r'the list'),
    ('string_items', None, _search_kind,
     rf"{SHARD}, column 'item': str item ids, but .*impressions.parquet "
     r"column 'item' has int ones"),
    ('other_columns', None, lambda t: t.drop_columns(['hard_negatives']),
     rf"{SHARD}: optional columns \['query_text', 'query_image', 'time'\], "
     r'but .*search/0.parquet has .*every shard of the search log needs the '
     r'same columns'),
)


class ShardedSearchTest(parameterized.TestCase):
  """A bad value in a later shard names that shard and the row in the log."""

  @parameterized.named_parameters(*SEARCH_CASES)
  def test_clear_error_and_nothing_left(self, log_edit, shard_edit, message):
    src = tempfile.mkdtemp()
    fixtures.write_own_data(src, num_users=20, num_items=12, rows=200,
                                sessions=60)
    fixtures.shard_search(src, [30], log_edit)
    if shard_edit:
      _edit(os.path.join(src, 'search'), '1', shard_edit)
    parent = tempfile.mkdtemp()
    with self.assertRaisesRegex(columns.InputError, message):
      dataset_job.run(fixtures.own_data_config(src), os.path.join(parent, 'd'))
    self.assertEqual(os.listdir(parent), [])


if __name__ == '__main__':
  absltest.main()
