"""The bench job's harness (experiments/bench.py): a loaded machine is
named in the log, since under load two programs' ratio moves too."""

import os
import tempfile
from unittest import mock

from absl.testing import absltest

from experiments import bench
from experiments.configs import bench as bench_config


class LoadWarningTest(absltest.TestCase):

  def _run(self, load):
    config = bench_config.get_config('tiny')
    config.benchmarks = 'dummy'
    with mock.patch.dict(bench.BENCHMARKS, {'dummy': lambda c, w: {'x': 1}}), \
         mock.patch.object(os, 'getloadavg', return_value=(load, 0, 0)), \
         mock.patch.object(os, 'cpu_count', return_value=2), \
         self.assertLogs('absl', 'INFO') as logs:
      bench.run(config, tempfile.mkdtemp())
    return [r for r in logs.records if r.levelname == 'WARNING']

  def test_loaded_machine_is_named(self):
    warnings = self._run(3.5)
    self.assertLen(warnings, 1)
    self.assertIn('load average 3.5 on 2 CPUs', warnings[0].getMessage())

  def test_quiet_machine_is_not(self):
    self.assertEmpty(self._run(0.4))


if __name__ == '__main__':
  absltest.main()
