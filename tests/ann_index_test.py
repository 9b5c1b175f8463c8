"""Tests for the nearest-neighbour index (mmrec.serving.ann_index): recall against
exact numpy search, incremental adds, save / reload / catch-up with a store."""

import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from mmrec import int8
from mmrec.serving import ann_index
from mmrec.serving import vector_store


def _clustered(n, d, seed=0, clusters=50):
  """Unit vectors around random centres: the shape of an item catalogue."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(clusters, d))
  x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.normal(size=(n, d))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class AnnIndexTest(parameterized.TestCase):

  @parameterized.parameters('hnsw', 'ivf', 'flat')
  def test_recall_against_exact(self, kind):
    x = int8.quantize(_clustered(4000, 32))
    q = _clustered(100, 32, seed=1)
    index = ann_index.AnnIndex.build(x, kind=kind)
    _, found = index.search(q, 10)
    exact_scores, exact = ann_index.exact_search(x, q, 10)
    recall = ann_index.recall_at_k(found, exact)
    self.assertGreaterEqual(recall, 1.0 if kind == 'flat' else 0.95)
    if kind == 'flat':
      scores, _ = index.search(q, 10)
      np.testing.assert_allclose(scores, exact_scores, atol=1e-5)

  def test_incremental_add_then_restart(self):
    x = _clustered(1000, 16)
    root, index_dir = tempfile.mkdtemp(), tempfile.mkdtemp()
    vector_store.create(root, x[:900])
    with vector_store.VectorStore(root, writable=True) as store:
      index = ann_index.AnnIndex.build(store.dense())
      index.save(index_dir, store.version, store.count)
      for v in x[900:950]:  # new items after the index was saved
        store.add(v)
      new = store.add(x[950])
      index.catch_up(store)
      self.assertEqual(index.count, 951)
      _, ids = index.search(x[950], 1)
      self.assertEqual(ids[0, 0], new)  # a new item finds itself
      before = index.search(x[:20], 10)
      index.save(index_dir, store.version, store.count)
      store.add(x[951])
    # Restart: reload the index, catch up with the store's later items.
    reloaded = ann_index.AnnIndex.load(index_dir)
    self.assertEqual(reloaded.covers, {'store_version': 1, 'store_count': 951})
    after = reloaded.search(x[:20], 10)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[0], before[0])
    with vector_store.VectorStore(root) as store:
      self.assertEqual(reloaded.catch_up(store), 1)
    _, ids = reloaded.search(x[951], 1)
    self.assertEqual(ids[0, 0], 951)

  def test_errors(self):
    with self.assertRaisesRegex(ann_index.AnnIndexError, 'kind'):
      ann_index.AnnIndex.build(_clustered(10, 4), kind='lsh')
    with self.assertRaisesRegex(ann_index.AnnIndexError, 'unknown ivf'):
      ann_index.AnnIndex.build(_clustered(10, 4), ef_search=3)
    index = ann_index.AnnIndex.build(_clustered(10, 4), kind='flat')
    with self.assertRaisesRegex(ann_index.AnnIndexError, '3-d'):
      index.search(np.ones((1, 3)), 2)
    scores, ids = index.search(np.ones(4), 12)  # more than it holds
    self.assertEqual(ids[0, -1], -1)
    self.assertEqual(scores[0, -1], -np.inf)
    with self.assertRaisesRegex(ann_index.AnnIndexError, 'no index'):
      ann_index.AnnIndex.load(tempfile.mkdtemp())


if __name__ == '__main__':
  absltest.main()
