"""Tests of the pre-training comparison table."""

import json
import os
import tempfile

from absl.testing import absltest
import fixtures

from experiments import pretrain_sweep
from experiments.configs import pretrain_sweep as sweep_config


class SweepTest(absltest.TestCase):

  def test_reference_methods_table_and_skip_finished(self):
    c = sweep_config.get_config('tiny')
    c.methods = 'raw_pixels,bag_of_tokens'
    c.seeds = 2
    c.data_dir = fixtures.tiny_world_dir()
    workdir = tempfile.mkdtemp()
    table = pretrain_sweep.run(c, workdir)
    self.assertIsNone(table['raw_pixels']['text'])
    cell = table['bag_of_tokens']['text']['recall@10']
    self.assertEqual(cell['runs'], 2)
    self.assertBetween(cell['mean'], 0.0, 1.0)
    with open(os.path.join(workdir, 'pretrain_table.json')) as f:
      self.assertEqual(json.load(f), table)
    with open(os.path.join(workdir, 'pretrain_table.md')) as f:
      self.assertIn('| raw_pixels |', f.read())
    # A finished run is read back, not recomputed.
    path = os.path.join(workdir, 'raw_pixels', 'seed_0', 'pretrain_eval.json')
    with open(path) as f:
      res = json.load(f)
    res['metrics']['image']['recall@10'] = 0.5
    with open(path, 'w') as f:
      json.dump(res, f)
    with open(path.replace('seed_0', 'seed_1')) as f:
      seed1 = json.load(f)['metrics']['image']['recall@10']
    again = pretrain_sweep.run(c, workdir)
    self.assertAlmostEqual(again['raw_pixels']['image']['recall@10']['mean'],
                           (0.5 + seed1) / 2)

  def test_clip_e_needs_clip_o(self):
    c = sweep_config.get_config('tiny')
    c.methods = 'clip_e'
    c.data_dir = fixtures.tiny_world_dir()
    with self.assertRaisesRegex(ValueError, 'clip_o'):
      pretrain_sweep.run(c, tempfile.mkdtemp())


if __name__ == '__main__':
  absltest.main()
