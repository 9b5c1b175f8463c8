"""Tests of the atomic-write helpers: files, directories, pointers, and the
finished-run rule every sweep uses."""

import json
import os
import socket
import subprocess
import tempfile

from absl.testing import absltest

from mmrec import files


class BuildAsideTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = tempfile.mkdtemp()
    self.target = os.path.join(self.root, 'v1')

  def _fill(self, text):
    def fill(tmp):
      with open(os.path.join(tmp, 'a.txt'), 'w') as f:
        f.write(text)
    return fill

  def test_builds_into_place_and_leaves_nothing_else(self):
    files.build_aside(self.target, self._fill('one'))
    self.assertEqual(os.listdir(self.root), ['v1'])
    with open(os.path.join(self.target, 'a.txt')) as f:
      self.assertEqual(f.read(), 'one')

  def test_failure_leaves_no_directory(self):
    def fill(tmp):
      self._fill('half')(tmp)
      raise KeyboardInterrupt  # a kill mid-build
    with self.assertRaises(KeyboardInterrupt):
      files.build_aside(self.target, fill)
    self.assertEqual(os.listdir(self.root), [])

  def test_a_killed_builds_leftovers_go_but_live_ones_stay(self):
    host = socket.gethostname()
    gone = subprocess.Popen(['true'])
    gone.wait()
    alive = subprocess.Popen(['sleep', '60'])  # a concurrent build's owner
    self.addCleanup(alive.wait)
    self.addCleanup(alive.kill)
    names = {
        'dead': f'.v1.building-{host}-{gone.pid}-x1',
        'dead_old': f'.v1.old-{host}-{gone.pid}-x2',
        'live': f'.v1.building-{host}-{alive.pid}-x3',
        'foreign_recent': '.v1.building-elsewhere-1-x4',
        'foreign_ancient': '.v1.building-elsewhere-2-x5',
        'other_target': f'.v2.building-{host}-{gone.pid}-x6',
    }
    for name in names.values():
      os.makedirs(os.path.join(self.root, name, 'part'))
    ancient = os.path.join(self.root, names['foreign_ancient'])
    t = os.path.getmtime(ancient) - files.FOREIGN_STALE_S - 60
    os.utime(ancient, (t, t))
    files.build_aside(self.target, self._fill('one'))
    self.assertEqual(
        sorted(os.listdir(self.root)),
        sorted(['v1', names['live'], names['foreign_recent'],
                names['other_target']]))

  def test_refuses_a_non_empty_target_unless_replacing(self):
    files.build_aside(self.target, self._fill('one'))
    with self.assertRaises(OSError):
      files.build_aside(self.target, self._fill('two'))
    with open(os.path.join(self.target, 'a.txt')) as f:
      self.assertEqual(f.read(), 'one')  # untouched
    files.build_aside(self.target, self._fill('two'), replace=True)
    with open(os.path.join(self.target, 'a.txt')) as f:
      self.assertEqual(f.read(), 'two')
    self.assertEqual(os.listdir(self.root), ['v1'])

  def test_a_failed_replacement_keeps_the_old_directory(self):
    files.build_aside(self.target, self._fill('one'))
    def fill(tmp):
      raise ValueError('bad')
    with self.assertRaises(ValueError):
      files.build_aside(self.target, fill, replace=True)
    with open(os.path.join(self.target, 'a.txt')) as f:
      self.assertEqual(f.read(), 'one')
    self.assertEqual(os.listdir(self.root), ['v1'])


class PointerTest(absltest.TestCase):

  def test_round_trip_and_absent(self):
    d = tempfile.mkdtemp()
    self.assertIsNone(files.read_pointer(d))
    files.write_pointer(d, 'v3')
    self.assertEqual(files.read_pointer(d), 'v3')
    files.write_pointer(d, 'v4')
    self.assertEqual(files.read_pointer(d), 'v4')
    self.assertEqual(os.listdir(d), [files.POINTER])  # no temporary left


class FinishedTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.d = tempfile.mkdtemp()

  def _write(self, name, obj=None):
    with open(os.path.join(self.d, name), 'w') as f:
      json.dump(obj or {}, f)

  def test_needs_every_file(self):
    self.assertIsNone(files.finished(self.d, ('r.json', 'p.npz')))
    self._write('r.json', {'auc': 0.7})
    self.assertIsNone(files.finished(self.d, ('r.json', 'p.npz')))
    self._write('p.npz')
    self.assertEqual(files.finished(self.d, ('r.json', 'p.npz')),
                     {'auc': 0.7})

  def test_a_run_stopped_early_is_not_finished(self):
    self._write('r.json', {'complete': False})
    self.assertIsNone(files.finished(self.d, ('r.json',)))
    self._write('r.json', {'complete': True})
    self.assertEqual(files.finished(self.d, ('r.json',)), {'complete': True})


if __name__ == '__main__':
  absltest.main()
