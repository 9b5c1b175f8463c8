"""End-to-end tests of the documented commands (`experiments.main`)."""

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
import numpy as np

from experiments import bench_fault_jobs
from experiments.configs import world as world_config
from mmrec.data import build


def _main(*args):
  # One CPU device (no forced device count), compiled with conftest's other
  # flags: the bench harness is tested, not its speed.
  xla_flags = ' '.join(f for f in os.environ['XLA_FLAGS'].split()
                       if 'device_count' not in f)
  return subprocess.run(
      [sys.executable, '-m', 'experiments.main', *args],
      capture_output=True, text=True, timeout=600,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
      env={**os.environ, 'XLA_FLAGS': xla_flags})


class WorldJobTest(absltest.TestCase):

  def test_world_tiny_builds_reports_and_is_reused(self):
    workdir = tempfile.mkdtemp()
    args = ('--config=experiments/configs/world.py:tiny',
            '--config.world.num_users=500', '--config.world.num_items=800',
            f'--workdir={workdir}')
    first = _main(*args)
    self.assertEqual(first.returncode, 0, first.stderr[-3000:])
    self.assertIn('orderings: OK', first.stdout)
    self.assertIn('(ii) ID-only', first.stdout)
    with open(os.path.join(workdir, 'world_summary.json')) as f:
      summary = json.load(f)
    self.assertEqual(summary['honesty_problems'], [])
    self.assertEqual(summary['statistics']['users'], 500)
    # The second run in this process (the command itself ran above): the
    # world job finds its world and prints the report again.
    config = world_config.get_config('tiny')
    config.world.update(num_users=500, num_items=800)
    out = io.StringIO()
    with self.assertLogs('absl', 'INFO') as logs, \
        contextlib.redirect_stdout(out):
      build.run(config, workdir)
    self.assertTrue(any('reusing' in m for m in logs.output), logs.output)
    self.assertIn('orderings: OK', out.getvalue())

  def test_bad_config_fails_at_start_naming_the_field(self):
    workdir = os.path.join(tempfile.mkdtemp(), 'new')
    result = _main('--config=experiments/configs/world.py:tiny',
                   '--config.world.num_test_days=7', f'--workdir={workdir}')
    self.assertNotEqual(result.returncode, 0)
    self.assertIn('num_test_days', result.stderr)
    self.assertIn('allowed range', result.stderr)
    self.assertFalse(os.path.exists(workdir))  # a failed run leaves nothing


class FailedRunTest(absltest.TestCase):

  def test_refused_workdir_inside_the_source_is_not_left_behind(self):
    src = tempfile.mkdtemp()
    workdir = os.path.join(src, 'converted')
    result = _main('--config=experiments/configs/data.py:parquet',
                   f'--config.source_dir={src}', f'--workdir={workdir}')
    self.assertNotEqual(result.returncode, 0)
    self.assertIn('is inside config.source_dir', result.stderr)
    self.assertEqual(os.listdir(src), [])


class BenchJobTest(absltest.TestCase):

  def test_bench_tiny_writes_json_and_markdown(self):
    workdir = tempfile.mkdtemp()
    result = _main('--config=experiments/configs/bench.py:tiny',
                   '--config.benchmarks=world,scl_train',
                   f'--workdir={workdir}')
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    with open(os.path.join(workdir, 'results.json')) as f:
      res = json.load(f)
    self.assertGreater(res['benchmarks']['world']['generate_seconds'], 0)
    scl = res['benchmarks']['scl_train']
    for key in ('images_per_second', 'fraction_of_matmul',
                'width_32_images_per_second', 'width_32_fraction_of_matmul',
                'conv_images_per_second', 'conv_fraction_of_matmul'):
      self.assertGreater(scl[key], 0, key)
    ceilings = [k for k in scl if k.startswith('conv3x3_')]
    self.assertLen(ceilings, 6)  # 3 stages x (1, 4) x their widths
    for key in ceilings:
      self.assertGreater(scl[key], 0, key)
    self.assertTrue(os.path.exists(os.path.join(workdir, 'results.md')))

  def test_fault_job_tiny_loses_nothing(self):
    """bench.py:tiny's `faults`: one kill -9 of the service during adds, a
    flipped delta byte, a full disk, one kill of the data job; the table is
    written and every row is clean (export and near-line kills: make
    faults only)."""
    workdir = tempfile.mkdtemp()
    result = _main('--config=experiments/configs/bench.py:tiny',
                   '--config.benchmarks=faults',
                   '--config.faults_service_kills=1', f'--workdir={workdir}')
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    with open(os.path.join(workdir, 'faults.json')) as f:
      rows = json.load(f)['faults']
    self.assertEqual(sorted(rows), ['convert_kill', 'delta_corrupt',
                                    'full_disk', 'service_kill'])
    self.assertGreater(rows['service_kill']['acknowledged'], 0)
    self.assertGreater(rows['full_disk']['acknowledged'], 0)
    for name, row in rows.items():
      self.assertGreaterEqual(row['trials'], 1, name)
      for column in ('lost', 'corrupt', '5xx'):
        self.assertEqual(row[column], 0, (name, column, row['notes']))
    self.assertIn('refused: delta.log', rows['delta_corrupt']['notes'][0])
    with open(os.path.join(workdir, 'faults.md')) as f:
      self.assertIn('| fault | trials | acknowledged | lost | corrupt | 5xx',
                    f.read())


class KillChainsTest(absltest.TestCase):

  def test_kills_land_within_runs_faster_than_the_timed_one(self):
    """A timed run slowed by load (first write at 10 s of 30) and reruns
    that take 2 s: the kill window shrinks to what the reruns take, so the
    row still gets its trials (it once got none: ten runs outran their
    kills)."""
    def fake_run(args, log, kill_at=None):
      del args, log
      if kill_at is not None and kill_at < 2.0:
        return None, kill_at  # killed
      return 0, 2.0
    out = {}
    with mock.patch.object(bench_fault_jobs, 'run_job', fake_run):
      bench_fault_jobs._kill_chains(  # pylint: disable=protected-access
          'convert_kill', 3, 1, np.random.default_rng(0),
          lambda k: (['x'], 'log'), (10.0, 30.0), lambda k: None, out)
    self.assertEqual(out['convert_kill']['trials'], 3)
    self.assertEqual(out['convert_kill']['corrupt'], 0)


if __name__ == '__main__':
  absltest.main()
