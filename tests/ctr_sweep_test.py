"""Tests of the CTR comparison table."""

import json
import os
import tempfile

from absl.testing import absltest
import fixtures
import numpy as np

from experiments import ctr_sweep
from experiments.configs import ctr_sweep as sweep_config


def _config(variants):
  c = sweep_config.get_config('tiny')
  c.variants = variants
  c.data_dir = fixtures.small_ctr_world_dir()
  c.vectors_path = fixtures.oracle_vectors_path()
  # Smaller than :tiny: plumbing, not learning.
  c.ctr.update(tower=(16, 8), attention_mlp=(8,), embed_dim=8)
  c.ctr.make.update(attention_mlp=(8,), mlp=(8,), stage_a_epochs=1)
  return c


class CtrSweepTest(absltest.TestCase):

  def test_table_deltas_oracle_and_shared_stage_a(self):
    workdir = tempfile.mkdtemp()
    summary = ctr_sweep.run(_config('id,simtier_official,make,simtier_make'),
                            workdir)
    v = summary['variants']
    self.assertEqual(set(v), {'id', 'simtier_official', 'make',
                              'simtier_make'})
    self.assertNotIn('delta_gauc_pct', v['id'])
    for name in ('simtier_official', 'make', 'simtier_make'):
      row = v[name]
      expected = 100 * (row['gauc']['mean'] - v['id']['gauc']['mean']) / v[
          'id']['gauc']['mean']
      self.assertAlmostEqual(row['delta_gauc_pct']['mean'], expected,
                             places=6)
      self.assertIn('new', row['slices'])
      self.assertIn('group_0', row['slices'])
    o = summary['oracle']
    self.assertGreater(o['auc'], v['id']['auc']['mean'])
    self.assertTrue(np.isfinite(o['logloss']))
    # MAKE stage A ran once for the seed, shared by both MAKE variants.
    self.assertEqual(os.listdir(os.path.join(workdir, 'make_stage_a')),
                     ['seed_0'])
    self.assertFalse(os.path.exists(os.path.join(
        workdir, 'make', 'seed_0', 'make_stage_a')))
    with open(os.path.join(workdir, 'ctr_table.json')) as f:
      self.assertEqual(json.load(f), json.loads(json.dumps(summary)))
    with open(os.path.join(workdir, 'ctr_table.md')) as f:
      self.assertIn('oracle (ceiling)', f.read())

  def test_id_similarity_control_runs_on_its_own_table(self):
    workdir = tempfile.mkdtemp()
    summary = ctr_sweep.run(_config('id,simtier_official@ids'), workdir)
    self.assertIn('simtier_official@ids', summary['variants'])
    with open(os.path.join(workdir, 'simtier_official@ids', 'seed_0',
                           'ctr_eval.json')) as f:
      used = json.load(f)
    table = ctr_sweep.id_vectors_path(workdir)
    self.assertTrue(os.path.exists(table))
    self.assertEqual(used['vectors_path'], table)
    for bad in ('simtier_official@pixels', 'id@ids'):
      with self.assertRaisesRegex(ValueError, bad):
        ctr_sweep.split_variant(bad)

  def test_vectors_path_required(self):
    c = _config('id,simscore')
    c.vectors_path = ''
    with self.assertRaisesRegex(ValueError, 'vectors_path'):
      ctr_sweep.run(c, tempfile.mkdtemp())


if __name__ == '__main__':
  absltest.main()
