"""Tests of the ID-similarity control table."""

import os
import tempfile

from absl.testing import absltest
import numpy as np

from mmrec import id_vectors
from mmrec import vector_table


class IdVectorsTest(absltest.TestCase):

  def test_cosine_is_weighted_id_match_count(self):
    rng = np.random.default_rng(0)
    items = {'category': rng.integers(0, 6, 40),
             'top_category': rng.integers(0, 2, 40),
             'shop': rng.integers(0, 5, 40)}
    v = id_vectors.table(items)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, atol=1e-6)
    w = id_vectors.WEIGHTS
    expected = sum(w[f] * (items[f][:, None] == items[f][None, :])
                   for f in w) / sum(w.values())
    np.testing.assert_allclose(v @ v.T, expected, atol=1e-6)

  def test_written_table_loads_and_missing_field_is_named(self):
    items = {'category': np.array([0, 1, 1]),
             'top_category': np.array([0, 0, 0]), 'shop': np.array([2, 2, 0])}
    path = os.path.join(tempfile.mkdtemp(), vector_table.FILE)
    id_vectors.write(path, items)
    v, meta = vector_table.load(path, num_items=3)
    self.assertEqual(meta['method'], 'id_similarity')
    self.assertAlmostEqual(float(v[1] @ v[2]), 2.0 / 2.5, places=6)  # leaf + top
    with self.assertRaisesRegex(ValueError, r"\['shop'\]"):
      id_vectors.table({'category': items['category'],
                        'top_category': items['top_category']})

  def test_bag_cosine_is_shared_values_and_fields_are_chosen(self):
    bag = np.array([[0, 0], [1, 2], [2, 0], [3, 0], [2, 1]])  # 0: empty
    v = id_vectors.bag_table(bag)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, atol=1e-6)
    sets = [set(b) - {0} for b in bag.tolist()]
    for i in range(5):
      for j in range(5):
        a, b = sets[i], sets[j]
        want = (len(a & b) / np.sqrt(len(a) * len(b)) if a and b else
                float(not a and not b))
        self.assertAlmostEqual(float(v[i] @ v[j]), want, places=6)
    items = {'genre': np.zeros(5, int), 'genres': bag}
    self.assertEqual(id_vectors.fields_of(items, ['genre']),
                     ({'genre': 1.0}, None))
    self.assertEqual(id_vectors.fields_of(items, [], 'genres'),
                     (None, 'genres'))
    self.assertEqual(id_vectors.fields_of(items), (None, None))
    path = os.path.join(tempfile.mkdtemp(), vector_table.FILE)
    id_vectors.write(path, items, bag='genres')
    table, meta = vector_table.load(path, num_items=5)
    self.assertEqual(meta['bag'], 'genres')
    np.testing.assert_allclose(table, v, atol=1e-6)


if __name__ == '__main__':
  absltest.main()
