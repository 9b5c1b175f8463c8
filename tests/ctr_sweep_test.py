"""Tests of the CTR comparison table."""

import json
import os
import tempfile

from absl.testing import absltest
import fixtures
import numpy as np

from experiments import baselines
from experiments import ctr_sweep
from experiments.configs import ctr_sweep as sweep_config
from mmrec import vector_table


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

  @classmethod
  def setUpClass(cls):
    # One sweep for every variant kind the tests below read (one ID model,
    # one oracle, one bootstrap): the table, MAKE's shared stage A, the
    # ID-similarity control and the per-modality tables.
    super().setUpClass()
    cls.workdir = tempfile.mkdtemp()
    c = _config('id,simtier_official,make,simtier_make,simtier_official@ids,'
                'simtier_official@image,simtier_official@text')
    cls.tables = tempfile.mkdtemp()
    vectors, _ = vector_table.load(c.vectors_path)
    vector_table.save(os.path.join(cls.tables, vector_table.FILE), vectors)
    vector_table.save(os.path.join(cls.tables,
                                   vector_table.file_name('image')),
                      vectors[:, ::-1])
    c.vectors_path = os.path.join(cls.tables, vector_table.FILE)
    cls.summary = ctr_sweep.run(c, cls.workdir)

  def test_table_deltas_oracle_and_shared_stage_a(self):
    workdir, summary = self.workdir, self.summary
    v = summary['variants']
    self.assertEqual(set(v), {'id', 'simtier_official', 'make',
                              'simtier_make', 'simtier_official@ids',
                              'simtier_official@image'})
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
    # Bootstrap intervals vs. the ID model, paired with the seed means.
    for name in ('simtier_official', 'make', 'simtier_make'):
      vs_id = v[name]['bootstrap']['vs_id']
      self.assertEqual(set(vs_id), {'all', 'tail', 'new', 'tail_minus_all',
                                    'new_minus_all'})
      cell = vs_id['all']['gauc']
      self.assertEqual(vs_id['all']['resamples'], 200)
      self.assertAlmostEqual(cell['delta_pct'],
                             v[name]['delta_gauc_pct']['mean'], places=6)
      lo, hi = cell['ci_pct']
      self.assertLessEqual(lo, hi)
    self.assertEqual(set(v['make']['bootstrap']), {'vs_id'})  # no pairs here
    self.assertNotIn('bootstrap', v['id'])
    with open(os.path.join(workdir, 'ctr_table.json')) as f:
      self.assertEqual(json.load(f), json.loads(json.dumps(summary)))
    with open(os.path.join(workdir, 'ctr_table.md')) as f:
      text = f.read()
    self.assertIn('oracle (ceiling)', text)
    self.assertIn('95% CI', text)
    # One seed: numbers alone, no "± 0.0000" posing as a measured spread.
    self.assertNotIn('±', text)
    self.assertIn(f'| {v["id"]["auc"]["mean"]:.4f} |', text)
    # No id_stats in this sweep: the claims' baseline is id, and says why.
    self.assertEqual(summary['baseline']['gauc']['variant'], 'id')
    self.assertIn('id_stats did not run', summary['baseline']['why'])
    self.assertIn('Claims are judged against id: id_stats did not run', text)
    self.assertFalse(os.path.exists(os.path.join(workdir,
                                                 baselines.VALIDATION_DIR)))

  def test_intervals_pair_variants_and_slices(self):
    rng = np.random.default_rng(0)
    n, users = 3000, 150
    groups = np.arange(n) % 10 - 1  # -1 new, 0..8 exposure groups
    rows = {'label': (rng.random(n) < 0.3).astype(np.int32),
            'user_id': rng.integers(0, users, n),
            'item_id': np.arange(n), 'exposure_group': groups}
    tail = (groups >= 0) & (groups < ctr_sweep.TAIL_GROUPS)
    run = lambda logit: dict(rows, logit=logit.astype(np.float32))
    noise = lambda: rng.normal(size=n)
    # vector = id; make is better than both, on the tail only.
    base = [rows['label'] + 2 * noise() for _ in range(2)]
    better = [np.where(tail, rows['label'] + 0.5 * noise(), b) for b in base]
    preds = {'id': [run(b) for b in base], 'vector': [run(b) for b in base],
             'make': [run(b) for b in better]}
    out = ctr_sweep.intervals(preds, resamples=100)
    self.assertEqual(set(out), {'vector', 'make'})
    self.assertEqual(set(out['make']), {'vs_id', 'vs_vector'})
    self.assertEqual(out['vector']['vs_id']['all']['gauc']['ci'], [0.0, 0.0])
    make = out['make']['vs_id']
    self.assertGreater(make['tail_minus_all']['auc']['ci_pct'][0], 0)
    self.assertEqual(make['new']['auc']['ci'], [0.0, 0.0])
    self.assertEqual(out['make']['vs_vector']['all'], make['all'])
    self.assertEqual(make['tail']['users_both'],
                     len({u for u, l, t in zip(rows['user_id'], rows['label'],
                                              tail) if t and l} &
                         {u for u, l, t in zip(rows['user_id'], rows['label'],
                                              tail) if t and not l}))
    # With the ID-statistics LR: every variant against both baselines, the
    # LR itself against the ID model only.
    preds['id_stats'] = [run(b) for b in better]
    out = ctr_sweep.intervals(preds, resamples=100)
    self.assertEqual(set(out['id_stats']), {'vs_id'})
    self.assertContainsSubset({'vs_id', 'vs_id_stats'}, set(out['make']))
    self.assertEqual(set(out['make']['vs_id_stats']),
                     {'all', 'tail', 'new', 'tail_minus_all', 'new_minus_all'})
    self.assertEqual(out['make']['vs_id_stats']['all']['gauc']['ci'],
                     [0.0, 0.0])  # the same logits
    preds['make'][1] = dict(preds['make'][1], user_id=rows['user_id'] + 1)
    with self.assertRaisesRegex(ValueError, 'not paired'):
      ctr_sweep.intervals(preds, resamples=10)

  def test_id_similarity_control_runs_on_its_own_table(self):
    workdir, summary = self.workdir, self.summary
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

  def test_modality_variant_reads_the_table_beside_vectors_path(self):
    workdir, summary, tables = self.workdir, self.summary, self.tables
    with open(os.path.join(workdir, 'simtier_official@image', 'seed_0',
                           'ctr_eval.json')) as f:
      used = json.load(f)
    self.assertEqual(used['vectors_path'],
                     os.path.join(tables, vector_table.file_name('image')))
    # No text table was written: that variant is skipped, with the reason.
    self.assertNotIn('simtier_official@text', summary['variants'])
    self.assertIn('no text table', summary['skipped']['simtier_official@text'])

  def test_vectors_path_required(self):
    c = _config('id,simscore')
    c.vectors_path = ''
    with self.assertRaisesRegex(ValueError, 'vectors_path'):
      ctr_sweep.run(c, tempfile.mkdtemp())


if __name__ == '__main__':
  absltest.main()
