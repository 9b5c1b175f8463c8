"""Tests of the CTR row join against a per-row loop."""

from absl.testing import absltest
import numpy as np

from mmrec.data import ctr_rows


def _reference_history(seq, seq_len, item_fields, seq_fields, prefix):
  b, length = seq.shape
  out = {f'{prefix}item': np.zeros((b, length), np.int64),
         f'{prefix}mask': np.zeros((b, length), bool)}
  out.update({f'{prefix}{k}': np.zeros((b, length) + np.shape(
      item_fields[k])[1:], np.int64) for k in seq_fields})
  for r in range(b):
    for j in range(length - seq_len[r], length):  # right-aligned
      out[f'{prefix}item'][r, j] = seq[r, j]
      out[f'{prefix}mask'][r, j] = True
      for k in seq_fields:
        out[f'{prefix}{k}'][r, j] = item_fields[k][seq[r, j]]
  return out


class CtrRowsTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(0)
    self.items = {'category': rng.integers(0, 9, 50),
                  'tags': rng.integers(0, 30, (50, 3))}
    self.users = {'age': rng.integers(0, 5, 20)}
    b, length, long_len = 6, 4, 7
    self.b = {
        'user_id': rng.integers(0, 20, b), 'item_id': rng.integers(0, 50, b),
        'seq_item': rng.integers(1, 50, (b, length)),
        'seq_len': np.array([0, 1, 4, 2, 3, 4]),
        'long_seq_item': rng.integers(1, 50, (b, long_len)),
        'long_seq_len': np.array([7, 0, 3, 1, 5, 2]),
        'label': rng.integers(0, 2, b), 'day': np.full(b, 3)}

  def test_join_matches_a_per_row_loop(self):
    out = ctr_rows.join(self.b, self.items, self.users, ('category',))
    b = self.b
    np.testing.assert_array_equal(out['age'], self.users['age'][b['user_id']])
    np.testing.assert_array_equal(out['tags'],
                                  self.items['tags'][b['item_id']])
    for prefix, seq, n in (('seq_', b['seq_item'], b['seq_len']),
                           ('long_seq_', b['long_seq_item'],
                            b['long_seq_len'])):
      want = _reference_history(seq, n, self.items, ('category',), prefix)
      for k, v in want.items():
        np.testing.assert_array_equal(out[k], v, err_msg=k)
    self.assertCountEqual(out, [
        'age', 'user_id', 'user_key', 'item_id', 'category', 'tags', 'seq_item',
        'seq_mask', 'seq_category', 'label', 'day', 'long_seq_item',
        'long_seq_mask', 'long_seq_category'])

  def test_behaviours_carry_a_bag(self):
    # A category bag (MovieLens genres) the match features read: (B, L, K),
    # zero at padded slots.
    out = ctr_rows.join(self.b, self.items, self.users, ('category', 'tags'))
    want = _reference_history(self.b['seq_item'], self.b['seq_len'],
                              self.items, ('tags',), 'seq_')
    self.assertEqual(out['seq_tags'].shape, (6, 4, 3))
    np.testing.assert_array_equal(out['seq_tags'], want['seq_tags'])
    self.assertEqual(out['long_seq_tags'].shape, (6, 7, 3))
    self.assertFalse(out['seq_tags'][0].any())  # an empty history

  def test_user_key_is_the_stored_real_user_else_the_user_id(self):
    # The world's user ids are real users; a converted dataset stores the
    # real user apart, as its cold users all have user_id 0.
    out = ctr_rows.join(self.b, self.items, self.users, ())
    np.testing.assert_array_equal(out['user_key'], self.b['user_id'])
    key = np.arange(6) + 100
    out = ctr_rows.join(dict(self.b, user_key=key), self.items, self.users,
                        ())
    np.testing.assert_array_equal(out['user_key'], key)

  def test_no_long_history_no_long_fields(self):
    b = {k: v for k, v in self.b.items() if not k.startswith('long_')}
    out = ctr_rows.join(b, self.items, self.users, ('category',))
    self.assertFalse([k for k in out if k.startswith('long_')])


if __name__ == '__main__':
  absltest.main()
