"""The dataset resolver never writes into a directory a user named, and
builds worlds aside, atomically."""

import hashlib
import json
import os
import tempfile
from unittest import mock

from absl.testing import absltest
import fixtures

from experiments.configs import ctr as ctr_config
from experiments.configs import scl as scl_config
from mmrec import train_ctr
from mmrec import train_scl
from mmrec.data import builders
from mmrec.data import resolver


def _snapshot(path):
  """{relative path: sha256} of every file under `path`."""
  out = {}
  for root, _, names in os.walk(path):
    for n in names:
      p = os.path.join(root, n)
      with open(p, 'rb') as f:
        out[os.path.relpath(p, path)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _foreign_dir():
  """A user's dataset directory that is not (yet) a complete mmrec dataset."""
  path = tempfile.mkdtemp(prefix='user_data_')
  with open(os.path.join(path, builders.VOCAB_FILE), 'w') as f:
    json.dump({'words': ['<pad>', '<unk>'] + [f'w{i}' for i in range(1394)]},
              f)
  os.makedirs(os.path.join(path, 'mmrec_items'))
  with open(os.path.join(path, 'mmrec_items', 'part-0'), 'wb') as f:
    f.write(b'user bytes')
  return path


class NamedDirectoryTest(absltest.TestCase):

  def test_jobs_never_modify_a_named_directory_without_a_dataset(self):
    for job, config in (
        (train_scl.run, scl_config.get_config('scl,tiny')),
        (train_ctr.run, ctr_config.get_config('id,tiny'))):
      data = _foreign_dir()
      before = _snapshot(data)
      config.data_dir = data
      with self.assertRaisesRegex(FileNotFoundError,
                                  'no complete dataset there.*never writes'):
        job(config, tempfile.mkdtemp())
      self.assertEqual(_snapshot(data), before)

  def test_complete_dataset_is_used_as_it_is(self):
    data = fixtures.tiny_world_dir()
    before = _snapshot(data)
    # config.world differs from the dataset's: a named dataset is never
    # rebuilt or checked against it.
    got = resolver.data_dir(data, fixtures.tiny_config(seed=99), '/nowhere')
    self.assertEqual(got, os.path.abspath(data))
    self.assertEqual(_snapshot(data), before)


class BuildWorldTest(absltest.TestCase):

  def test_builds_aside_then_reuses(self):
    workdir = tempfile.mkdtemp()
    cfg = fixtures.tiny_config(num_users=300, num_items=300)
    path = resolver.data_dir('', cfg, workdir)
    self.assertEqual(path, os.path.join(workdir, resolver.WORLD_SUBDIR))
    self.assertTrue(builders.is_complete(path))
    self.assertEqual(os.listdir(workdir), [resolver.WORLD_SUBDIR])  # no tmp
    before = _snapshot(path)
    self.assertFalse(resolver.build_world(cfg, path))  # reused
    self.assertEqual(_snapshot(path), before)
    with self.assertRaisesRegex(ValueError, 'another config.*seed'):
      resolver.build_world(fixtures.tiny_config(num_users=300, num_items=300,
                                                seed=7), path)
    self.assertEqual(_snapshot(path), before)

  def test_refuses_a_directory_with_other_files(self):
    data = _foreign_dir()
    before = _snapshot(data)
    with self.assertRaisesRegex(FileExistsError,
                                'holds files but no complete world.*vocab'):
      resolver.build_world(fixtures.tiny_config(), data)
    self.assertEqual(_snapshot(data), before)

  def test_a_failed_build_leaves_nothing(self):
    workdir = tempfile.mkdtemp()
    target = os.path.join(workdir, 'world')
    with mock.patch.object(builders, 'write', side_effect=OSError('disk full')):
      with self.assertRaisesRegex(OSError, 'disk full'):
        resolver.build_world(fixtures.tiny_config(), target)
    self.assertEqual(os.listdir(workdir), [])


if __name__ == '__main__':
  absltest.main()
