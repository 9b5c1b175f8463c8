"""Tests for the impression log's byte budget (mmrec.serving.impression_log):
a batch that does not fit is refused whole, the segments the near-line job
committed are deleted first (oldest first, only as many as needed), and a
reopened log counts what is on disk."""

import json
import os
import tempfile

from absl.testing import absltest
import numpy as np

from mmrec.serving import impression_log


def _batch(n, start=0):
  ids = np.arange(start, start + n)
  return {'user_id': ids, 'item_id': ids + 1, 'label': ids % 2,
          'seq_item': np.tile(np.arange(20), (n, 1)),
          'seq_mask': np.ones((n, 20), bool)}


def _numbers(log_dir):
  return [n for n, _ in impression_log.closed_segments(log_dir)]


def _nearline(committed):
  """A near-line workdir as nearline.py leaves it: COMMITTED markers in the
  directories of segments `committed`, and a started, uncommitted one
  after them."""
  path = tempfile.mkdtemp()
  for n in list(committed) + [max(committed, default=-1) + 1]:
    os.makedirs(os.path.join(path, f'seg-{n:06d}'))
  for n in committed:
    with open(os.path.join(path, f'seg-{n:06d}', 'COMMITTED'), 'w') as f:
      json.dump({'segment': n, 'steps': 1, 'global_step': 10 + n,
                 'checkpoint': f'seg-{n:06d}/checkpoints/1',
                 'version': 10 + n}, f)
  return path


class BudgetTest(absltest.TestCase):

  def _log(self, nearline_dir=None):
    """4 closed segments of 5 records each, then a budget just above it."""
    log = tempfile.mkdtemp()
    writer = impression_log.SegmentWriter(log, max_records=5,
                                          max_seconds=1e9,
                                          nearline_dir=nearline_dir)
    writer.write_batch(_batch(20))
    self.assertEqual(_numbers(log), [0, 1, 2, 3])
    writer.max_bytes = writer.used_bytes() + 100
    return log, writer

  def test_a_batch_past_the_budget_is_refused_whole(self):
    log, writer = self._log()
    sizes = [os.path.getsize(p) for _, p in
             impression_log.closed_segments(log)]
    with self.assertRaisesRegex(impression_log.LogFull,
                                'budget.*no near-line job has named'):
      writer.write_batch(_batch(3))
    writer.close()
    self.assertEqual([os.path.getsize(p) for _, p in
                      impression_log.closed_segments(log)], sizes)
    self.assertEqual(_numbers(log), [0, 1, 2, 3])  # nothing opened either

  def test_committed_segments_are_retired_oldest_first(self):
    # Near-line committed 0 and 1 (and started 2): 2 and 3 are kept.
    log, writer = self._log(_nearline([0, 1]))
    writer.max_bytes = writer.used_bytes()  # full: a record needs room
    writer.write_batch(_batch(1, 100))
    self.assertEqual(_numbers(log), [1, 2, 3])  # one segment was enough
    self.assertEqual(writer.retired, 1)
    writer.max_bytes = writer.used_bytes()
    writer.write_batch(_batch(3, 200))
    self.assertEqual(_numbers(log), [2, 3])
    # Nothing committed is left: refused, 2 and 3 kept for near-line.
    writer.max_bytes = writer.used_bytes()
    with self.assertRaisesRegex(impression_log.LogFull,
                                'has committed no more'):
      writer.write_batch(_batch(1, 300))
    self.assertEqual(_numbers(log), [2, 3])
    writer.close()
    # What was logged reads back: the first write's record, then the next.
    rows = impression_log.read_rows(impression_log.segment_path(log, 4),
                                    range(4))
    np.testing.assert_array_equal(rows['user_id'], [100, 200, 201, 202])

  def test_the_markers_say_what_is_committed(self):
    # Only marked segments: a started one (a directory, even with later
    # ones) is not, nor is a gap.
    nearline = _nearline([0, 2, 3])
    self.assertEqual(impression_log.committed_segments(nearline,
                                                       [0, 1, 2, 3, 4]),
                     {0, 2, 3})
    self.assertEqual(impression_log.committed_segments(_nearline([]),
                                                       [0, 1]), set())
    self.assertEqual(impression_log.committed_segments(None, [0]), set())
    self.assertEqual(impression_log.committed_markers(nearline)[2]
                     ['global_step'], 12)

  def test_a_bad_marker_retires_nothing_and_says_why(self):
    nearline = _nearline([0, 1])
    marker = os.path.join(nearline, 'seg-000001', 'COMMITTED')
    with open(marker, 'w') as f:
      json.dump({'segment': 7, 'steps': 1}, f)
    with self.assertRaisesRegex(ValueError, f'{marker}: expected a commit '
                                'marker of segment 1'):
      impression_log.committed_markers(nearline)
    log, writer = self._log(nearline)
    writer.max_bytes = writer.used_bytes()
    with self.assertRaisesRegex(impression_log.LogFull,
                                'expected a commit marker'):
      writer.write_batch(_batch(1, 100))
    self.assertEqual(_numbers(log), [0, 1, 2, 3])

  def test_the_log_finds_the_nearline_job_that_named_itself_there(self):
    # No workdir given: the one near-line wrote into the log is read when
    # the budget is spent (a job started after the writer counts too).
    log, writer = self._log()
    writer.max_bytes = writer.used_bytes()
    with self.assertRaisesRegex(impression_log.LogFull,
                                'no near-line job has named'):
      writer.write_batch(_batch(1, 100))
    with open(os.path.join(log, impression_log.NEARLINE_POINTER), 'w') as f:
      json.dump({'workdir': _nearline([0, 1, 2])}, f)
    writer.write_batch(_batch(1, 100))
    self.assertEqual(_numbers(log), [1, 2, 3])
    writer.close()

  def test_a_reopened_log_counts_its_segments_and_what_was_cleared(self):
    log, writer = self._log()
    writer.close()
    again = impression_log.SegmentWriter(log, max_records=5,
                                         max_seconds=1e9,
                                         max_bytes=writer.max_bytes)
    self.assertEqual(again.used_bytes(), writer.used_bytes())
    with self.assertRaises(impression_log.LogFull):
      again.write_batch(_batch(3))
    os.remove(impression_log.segment_path(log, 0))  # an operator clears one
    again.write_batch(_batch(3))
    again.close()
    self.assertEqual(_numbers(log), [1, 2, 3, 4])

  def test_bad_budget(self):
    with self.assertRaisesRegex(ValueError, 'max_bytes'):
      impression_log.SegmentWriter(tempfile.mkdtemp(), max_bytes=0)


if __name__ == '__main__':
  absltest.main()
