"""Tests for the serving store (mmrec.serving.vector_store): lookups against the
arrays it was built from, the delta log, restarts, torn records, versions."""

import errno
import json
import os
import subprocess
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
import numpy as np

from mmrec import int8
from mmrec.serving import vector_store


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A writer under a file-size limit (a full disk, as the kernel reports it
# with SIGXFSZ ignored: EFBIG) from the 3rd add until room is made before
# the 5th (argv: the store root, the limit in bytes) -> JSON [[id or None,
# the vector or the error], ...] for 6 adds.
_FULL_DISK_WRITER = """
import json, resource, signal, sys
import numpy as np
from mmrec.serving import vector_store
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
rng = np.random.default_rng(0)
out = []
with vector_store.VectorStore(sys.argv[1], writable=True) as s:
  resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), hard))
  for i in range(6):
    if i == 4:
      resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # room again
    v = rng.normal(size=s.dim)
    v /= np.linalg.norm(v)
    try:
      out.append([s.add(v, (i, i)), v.tolist()])
    except (vector_store.StoreError, OSError) as e:
      out.append([None, str(e)])
print(json.dumps(out))
"""


def _unit(n, d, seed=0):
  x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


class VectorStoreTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = tempfile.mkdtemp()
    self.vecs = _unit(50, 8)
    self.attrs = np.stack([np.arange(50) % 7, np.arange(50) % 3], 1)
    self.version = vector_store.create(self.root, self.vecs, self.attrs,
                                       ('category', 'shop'), {'method': 't'})

  def test_lookup_matches_quantised_input(self):
    with vector_store.VectorStore(self.root) as s:
      self.assertEqual((s.version, s.count, s.dim), (1, 50, 8))
      ids = np.array([[3, 0], [49, 3]])
      np.testing.assert_array_equal(s.lookup(ids),
                                    int8.quantize(self.vecs)[ids])
      np.testing.assert_array_equal(s.attributes(ids), self.attrs[ids])
      np.testing.assert_allclose(s.vectors([5])[0], self.vecs[5],
                                 atol=0.5 / 127)
      self.assertEqual(s.manifest['source'], {'method': 't'})

  def test_unknown_ids_and_read_only_are_errors(self):
    with vector_store.VectorStore(self.root) as s:
      with self.assertRaisesRegex(vector_store.StoreError, 'unknown item id 5'):
        s.lookup([1, 50])
      with self.assertRaisesRegex(vector_store.StoreError, 'unknown item id -'):
        s.lookup([-1])
      with self.assertRaisesRegex(vector_store.StoreError, 'read-only'):
        s.add(self.vecs[0], (1, 1))

  def test_delta_survives_restart_and_torn_record(self):
    new = _unit(3, 8, seed=1)
    with vector_store.VectorStore(self.root, writable=True) as s:
      ids = [s.add(v, (9, i)) for i, v in enumerate(new)]
      self.assertEqual(ids, [50, 51, 52])
      with self.assertRaisesRegex(vector_store.StoreError, 'shape'):
        s.add(np.zeros(4), (1, 1))
      with self.assertRaisesRegex(vector_store.StoreError, 'attrs'):
        s.add(new[0], (1,))
    # A crash mid-append: half a record at the end of the log.
    with open(os.path.join(self.root, 'v1', vector_store.DELTA), 'ab') as f:
      f.write(b'\x07' * 11)
    reader = vector_store.VectorStore(self.root)  # read-only: ignores it
    self.assertEqual(reader.count, 53)
    with vector_store.VectorStore(self.root, writable=True) as s:
      self.assertEqual(s.count, 53)
      np.testing.assert_array_equal(s.lookup([52, 1]), np.stack(
          [int8.quantize(new[2]), int8.quantize(self.vecs[1])]))
      np.testing.assert_array_equal(s.attributes([51]), [[9, 1]])
      self.assertEqual(s.add(new[0], (0, 0)), 53)  # after the cut-off tail
    self.assertEqual(reader.refresh(), 1)  # another process's appends
    self.assertEqual(reader.count, 54)

  def _delta_with_five(self):
    """Five items added to the delta -> (delta path, record size, bytes)."""
    with vector_store.VectorStore(self.root, writable=True) as s:
      for i, v in enumerate(_unit(5, 8, seed=4)):
        s.add(v, (i, i))
      size = s._record.size  # pylint: disable=protected-access
    path = os.path.join(self.root, 'v1', vector_store.DELTA)
    with open(path, 'rb') as f:
      return path, size, f.read()

  def _flip(self, path, offset):
    with open(path, 'r+b') as f:
      f.seek(offset)
      byte = f.read(1)
      f.seek(offset)
      f.write(bytes([byte[0] ^ 0x10]))

  def test_corrupt_byte_mid_log_refuses_to_open_and_cuts_nothing(self):
    path, size, good = self._delta_with_five()
    self._flip(path, 2 * size + 13)  # item 52's record; 53 and 54 follow
    with open(path, 'rb') as f:
      damaged = f.read()
    for writable in (False, True):
      with self.assertRaisesRegex(
          vector_store.StoreError,
          f'{path}: the record at byte {2 * size} .*2 later records'):
        vector_store.VectorStore(self.root, writable=writable)
      with open(path, 'rb') as f:
        self.assertEqual(f.read(), damaged)  # not truncated
    # Undamaged again, and a reader refreshing while an append is torn (or
    # still being written) waits for it.
    self._flip(path, 2 * size + 13)
    reader = vector_store.VectorStore(self.root)
    self.assertEqual(reader.count, 55)
    with open(path, 'ab') as f:
      f.write(b'\x07' * 5)
    self.assertEqual(reader.refresh(), 0)
    # A whole record after a bad one: the bad one is no torn tail.
    with open(path, 'r+b') as f:
      f.truncate(6 * size)
    with open(path, 'ab') as f:
      f.write(good[-size:])
    with self.assertRaisesRegex(vector_store.StoreError,
                                f'byte {5 * size} .*1 later record'):
      reader.refresh()
    self.assertEqual(os.path.getsize(path), 7 * size)

  def test_whole_bad_final_record_is_ignored_not_cut(self):
    """A whole final record failing its CRC may be an acknowledged item
    with a damaged byte: readers ignore it, a writer does not cut it (the
    next add would hand its id out again)."""
    path, size, _ = self._delta_with_five()
    self._flip(path, 4 * size + 20)  # item 54's vector
    with vector_store.VectorStore(self.root) as s:
      self.assertEqual(s.count, 54)
    with self.assertRaisesRegex(vector_store.StoreError,
                                f'{path}: the final record .*item 54'):
      vector_store.VectorStore(self.root, writable=True)
    self.assertEqual(os.path.getsize(path), 5 * size)
    # Torn, i.e. shorter than a record: a crash mid-append, never
    # acknowledged. The writer cuts it and the next add takes its id.
    with open(path, 'r+b') as f:
      f.truncate(4 * size + 20)
    with vector_store.VectorStore(self.root, writable=True) as s:
      self.assertEqual(s.count, 54)
      self.assertEqual(os.path.getsize(path), 4 * size)
      self.assertEqual(s.add(self.vecs[0], (1, 1)), 54)
    with vector_store.VectorStore(self.root) as s:
      self.assertEqual(s.count, 55)
      np.testing.assert_array_equal(s.lookup([54])[0],
                                    int8.quantize(self.vecs[0]))

  def test_failed_write_is_rolled_back_and_adds_resume(self):
    with vector_store.VectorStore(self.root) as s:
      size = s._record.size  # pylint: disable=protected-access
    path = os.path.join(self.root, 'v1', vector_store.DELTA)
    # Room for 2.5 records: the 3rd add's write is cut short, the 4th's too.
    run = subprocess.run(
        [sys.executable, '-c', _FULL_DISK_WRITER, self.root,
         str(2 * size + size // 2)], cwd=ROOT, capture_output=True,
        text=True, timeout=120, check=False)
    self.assertEqual(run.returncode, 0, run.stderr)
    got = json.loads(run.stdout)
    self.assertEqual([i for i, _ in got], [50, 51, None, None, 52, 53])
    self.assertEqual(os.path.getsize(path), 4 * size)
    # A restart (the writer's open, too) holds every acknowledged item.
    for writable in (False, True):
      with vector_store.VectorStore(self.root, writable=writable) as s:
        self.assertEqual(s.count, 54)
        np.testing.assert_array_equal(
            s.lookup([50, 51, 52, 53]),
            int8.quantize(np.array([v for i, v in got if i is not None])))
        np.testing.assert_array_equal(s.attributes([52, 53]),
                                      [[4, 4], [5, 5]])
    for _, error in got[2:4]:  # a StoreError saying what happened
      self.assertRegex(error, f'{path}: writing item 52 failed .*File too '
                       'large.*rolled back')

  def test_full_disk_and_a_failed_rollback_stop_adds_until_reopened(self):
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with vector_store.VectorStore(self.root, writable=True) as s:
      self.assertEqual(s.add(self.vecs[0], (1, 1)), 50)
      with mock.patch.object(vector_store.os, 'write', side_effect=full):
        with self.assertRaisesRegex(vector_store.StoreWriteError,
                                    'No space left.*rolled back') as e:
          s.add(self.vecs[1], (1, 1))
      self.assertEqual((e.exception.errno, s.count), (errno.ENOSPC, 51))
      # The cut fails too: the log may end in part of a record, so no add
      # may follow until a writer's open has looked at it.
      with mock.patch.object(vector_store.os, 'write', side_effect=full), \
           mock.patch.object(vector_store.os, 'ftruncate',
                             side_effect=OSError(errno.EIO, 'I/O error')):
        with self.assertRaisesRegex(vector_store.StoreWriteError,
                                    'rolling it back failed'):
          s.add(self.vecs[1], (1, 1))
      with self.assertRaisesRegex(vector_store.StoreWriteError,
                                  'no more adds until the store is reopened'):
        s.add(self.vecs[1], (1, 1))
    with vector_store.VectorStore(self.root, writable=True) as s:
      self.assertEqual(s.add(self.vecs[1], (1, 1)), 51)

  def test_one_writer(self):
    with vector_store.VectorStore(self.root, writable=True):
      with self.assertRaisesRegex(vector_store.StoreError, 'one writer'):
        vector_store.VectorStore(self.root, writable=True)

  def test_corruption_is_detected(self):
    path = os.path.join(self.root, 'v1', vector_store.ROWS)
    with open(path, 'r+b') as f:
      f.seek(17)
      f.write(b'\x55')
    with self.assertRaisesRegex(vector_store.StoreError, 'checksum'):
      vector_store.VectorStore(self.root)
    with open(path, 'ab') as f:
      f.write(b'\x00')
    with self.assertRaisesRegex(vector_store.StoreError, 'rows.int8 has 401'):
      vector_store.VectorStore(self.root)

  def test_versions_and_merge(self):
    with vector_store.VectorStore(self.root, writable=True) as s:
      s.add(self.vecs[0], (1, 2))
    self.assertEqual(vector_store.merge(self.root), 2)
    self.assertEqual(vector_store.versions(self.root), [1, 2])
    with vector_store.VectorStore(self.root) as s:
      self.assertEqual((s.version, s.base_count, s.delta_count), (2, 51, 0))
      self.assertEqual(s.manifest['source']['merged_from'], 1)
      np.testing.assert_array_equal(s.attributes([50]), [[1, 2]])
    with vector_store.VectorStore(self.root, version=1) as s:  # still there
      self.assertEqual(s.count, 51)
    with self.assertRaisesRegex(vector_store.StoreError, 'no vector store'):
      vector_store.VectorStore(os.path.join(self.root, 'nope'))

  def test_next_batch_table_carries_over_new_items(self):
    new = _unit(3, 8, seed=1)
    with vector_store.VectorStore(self.root, writable=True) as s:
      ids = [s.add(v, (9, i)) for i, v in enumerate(new[:2])]
    self.assertEqual(ids, [50, 51])
    # The next batch embedding: other vectors for the 50 catalogue items,
    # and a column order the old version does not have.
    batch = _unit(50, 8, seed=2)
    attrs = np.stack([np.arange(50) % 3, np.arange(50) % 7], 1)
    v2 = vector_store.create_carrying(self.root, batch, attrs,
                                      ('shop', 'category'), {'method': 'u'})
    self.assertEqual(v2, 2)
    with vector_store.VectorStore(self.root) as s:
      self.assertEqual((s.version, s.base_count, s.delta_count), (2, 52, 0))
      self.assertEqual(s.manifest['source'], {
          'method': 'u', 'carried': {'from_version': 1, 'ids': [50, 52]}})
      np.testing.assert_array_equal(s.dense(0, 50),
                                    int8.quantize(batch))
      np.testing.assert_array_equal(s.lookup([50, 51]),
                                    int8.quantize(new[:2]))
      np.testing.assert_array_equal(s.attributes([50, 51]), [[0, 9], [1, 9]])
      np.testing.assert_array_equal(s.attributes([3]), [[0, 3]])
    # The old version is as it was; a writer still on it (a service not yet
    # switched) adds one more, which the new version takes when opened.
    with vector_store.VectorStore(self.root, version=1, writable=True) as s:
      self.assertEqual((s.base_count, s.count), (50, 52))
      np.testing.assert_array_equal(s.dense(0, 50),
                                    int8.quantize(self.vecs))
      self.assertEqual(s.add(new[2], (4, 5)), 52)
    with vector_store.VectorStore(self.root, writable=True) as s:
      self.assertEqual(s.carry_from_source(), 1)
      self.assertEqual(s.carry_from_source(), 0)
      np.testing.assert_array_equal(s.lookup([52])[0],
                                    int8.quantize(new[2]))
      np.testing.assert_array_equal(s.attributes([52]), [[5, 4]])
      self.assertEqual(s.add(new[0], (1, 1)), 53)
    with vector_store.VectorStore(self.root, writable=True) as s:
      self.assertEqual((s.count, s.carry_from_source()), (54, 0))
    # A batch table covering the new ids replaces them (ids are identity).
    self.assertEqual(vector_store.create_carrying(
        self.root, _unit(53, 8, seed=3), None, ()), 3)
    with vector_store.VectorStore(self.root) as s:
      self.assertEqual(s.count, 54)
      self.assertEqual(s.manifest['source']['carried']['ids'], [53, 54])
    # Without a store: a first version, nothing carried.
    other = os.path.join(self.root, 'fresh')
    self.assertEqual(vector_store.create_carrying(other, batch), 1)
    with vector_store.VectorStore(other) as s:
      self.assertNotIn('carried', s.manifest['source'])


if __name__ == '__main__':
  absltest.main()
