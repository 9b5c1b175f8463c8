"""The ID baselines chosen on validation (experiments/baselines.py): the ID
model's settings and the stronger of id / id_stats, on fake validation runs
(no training), and one real check of the epochs the search reads off a
longer run."""

import os
import tempfile

from absl.testing import absltest
import fixtures

from experiments import baselines
from experiments import ctr_sweep
from experiments.configs import ctr_sweep as sweep_config


def _score(settings):
  """A made-up validation GAUC: 2 epochs and a lower LR help; 'dot' hurts."""
  return (0.70 + 0.02 * (settings['num_epochs'] == 2) +
          0.01 * (settings['dense_lr'] == 3e-4) -
          0.03 * (settings.get('attention') == 'dot'))


class SearchTest(absltest.TestCase):

  def test_coordinate_ascent_keeps_each_better_value(self):
    calls = []
    base = {'num_epochs': 1, 'dense_lr': 1e-3, 'attention': 'din'}
    knobs = {'num_epochs': [1, 2], 'dense_lr': [1e-3, 3e-4],
             'attention': ['din', 'dot']}
    rec = baselines.search(
        base, knobs, lambda s: calls.append(s) or {'gauc': _score(s)}, 8)
    self.assertEqual(rec['chosen'], {'num_epochs': 2, 'dense_lr': 3e-4,
                                     'attention': 'din'})
    # The base, then one run per other value, each from the best so far.
    self.assertLen(calls, 4)
    self.assertEqual(calls[2], {'num_epochs': 2, 'dense_lr': 3e-4,
                                'attention': 'din'})
    self.assertFalse(rec['exhausted'])
    self.assertEqual([r['chosen'] for r in rec['runs']],
                     [False, False, True, False])
    self.assertEqual(rec['runs'][0]['label'], 'defaults')
    self.assertEqual(rec['runs'][3]['label'],
                     'num_epochs=2, dense_lr=0.0003, attention=dot')
    text = baselines.search_markdown(rec)
    self.assertIn('| **num_epochs=2, dense_lr=0.0003** | **0.7300** |', text)
    self.assertIn('4 settings tried of a budget of 8, 4 of them trained',
                  text)

  def test_budget_stops_the_search_and_says_so(self):
    base = {'num_epochs': 1, 'dense_lr': 1e-3}
    knobs = {'num_epochs': [1, 2], 'dense_lr': [1e-3, 3e-4]}
    rec = baselines.search(base, knobs, lambda s: {'gauc': _score(s)}, 2)
    self.assertLen(rec['runs'], 2)
    self.assertTrue(rec['exhausted'])
    self.assertEqual(rec['chosen'], {'num_epochs': 2, 'dense_lr': 1e-3})
    self.assertIn('the budget ran out', baselines.search_markdown(rec))
    with self.assertRaisesRegex(ValueError, 'id_search_budget'):
      baselines.search(base, knobs, lambda s: {'gauc': 0.5}, 0)

  def test_a_failed_metric_never_wins(self):
    base = {'num_epochs': 1}
    rec = baselines.search(base, {'num_epochs': [1, 2]},
                           lambda s: {'gauc': None if s['num_epochs'] == 2
                                      else 0.6}, 4)
    self.assertEqual(rec['chosen'], base)


class SweepSearchTest(absltest.TestCase):
  """search_id and select: validation runs of the ID model, one per setting,
  in their own directories, on the sweep's data."""

  def test_runs_on_validation_and_returns_the_chosen_run(self):
    c = sweep_config.get_config('tiny')
    c.data_dir = fixtures.small_ctr_world_dir()
    c.id_search.update(dict(num_epochs=(1, 2), dense_lr=(c.ctr.dense_lr,
                                                         3e-4)))
    workdir = tempfile.mkdtemp()
    seen = []

    def fake_run(config, variant, seed, data_dir, out):
      seen.append((config.ctr.validation, variant, seed, out))
      s = {k: config.ctr[k] for k in ('num_epochs', 'dense_lr')}
      # Evaluated after every epoch (the search reads 1 epoch off the run).
      self.assertTrue(config.ctr.eval_history)
      self.assertEqual(tuple(config.ctr.eval_points_in_first_epochs), ())
      return {'gauc': _score(s), 'settings': s, 'history': [
          {'epoch_fraction': float(e), 'gauc': _score(dict(s, num_epochs=e))}
          for e in range(1, s['num_epochs'] + 1)]}

    rec, chosen = baselines.search_id(c, c.data_dir, workdir, fake_run)
    self.assertEqual(rec['chosen'], {'num_epochs': 2, 'dense_lr': 3e-4})
    self.assertEqual(chosen['settings'], rec['chosen'])
    self.assertTrue(all(v and var == 'id' and seed == 0
                        for v, var, seed, _ in seen))
    # One epoch is read off the 2-epoch run; only 2-epoch runs train.
    dirs = [os.path.relpath(out, workdir) for *_, out in seen]
    self.assertEqual(dirs[0], os.path.join('validation', 'id_search',
                                           'num_epochs-2'))
    self.assertLen(set(dirs), 2)
    self.assertEqual(rec['runs'][0]['read_off'], 'epoch 1 of the 2-epoch run')
    self.assertEqual(rec['runs'][0]['value'], 0.70)
    self.assertIn('3 settings tried of a budget of 8, 2 of them trained',
                  baselines.search_markdown(rec))
    # Off: no search, no run.
    c.id_search = type(c.id_search)()
    self.assertEqual(baselines.search_id(c, c.data_dir, workdir, fake_run),
                     (None, None))
    c.id_search.update(dict(num_epoch=(1, 2)))
    with self.assertRaisesRegex(ValueError, 'id_search.num_epoch'):
      baselines.search_id(c, c.data_dir, workdir, fake_run)

  def test_after_one_epoch_wins_other_knobs_train_one_epoch(self):
    # Reading 1 epoch off a 2-epoch run is for the base only: once 1 epoch
    # is chosen, the other knobs' runs train 1 epoch, not 2.
    c = sweep_config.get_config('tiny')
    c.data_dir = fixtures.small_ctr_world_dir()
    c.id_search.update(dict(dense_lr=(c.ctr.dense_lr, 3e-4),
                            num_epochs=(1, 2)))
    epochs = []

    def fake_run(config, variant, seed, data_dir, out):
      e = config.ctr.num_epochs
      epochs.append(e)
      score = lambda k: 0.7 - 0.02 * (k == 2) + 0.01 * (
          config.ctr.dense_lr == 3e-4)
      return {'gauc': score(e), 'history': [
          {'epoch_fraction': float(k), 'gauc': score(k)}
          for k in range(1, e + 1)]}

    rec, _ = baselines.search_id(c, c.data_dir, tempfile.mkdtemp(), fake_run)
    self.assertEqual(rec['chosen'], {'num_epochs': 1, 'dense_lr': 3e-4})
    self.assertEqual(epochs, [2, 2, 1])  # base's twin, its reuse, the LR
    self.assertEqual(rec['trained'], 2)

  def test_baseline_is_the_stronger_on_validation(self):
    c = sweep_config.get_config('tiny')
    c.data_dir = fixtures.small_ctr_world_dir()
    c.ctr.validation = True  # the sweep's own runs are on validation
    results = {'id': [{'auc': 0.70, 'gauc': 0.66}],
               'id_stats': [{'auc': 0.69, 'gauc': 0.68}]}
    got = baselines.select(c, ['id', 'id_stats'], c.data_dir,
                           tempfile.mkdtemp(), results, None)
    self.assertEqual((got['auc']['variant'], got['gauc']['variant']),
                     ('id', 'id_stats'))
    self.assertEqual(got['gauc']['values'], {'id': 0.66, 'id_stats': 0.68})
    self.assertEqual(got['auc']['split'], 'validation')
    self.assertIsNone(got['why'])
    self.assertIn('GAUC against **id_stats** (validation GAUC: id 0.6600, '
                  'id_stats 0.6800)', baselines.text(got))
    self.assertIsNone(baselines.select(c, ['id_stats'], c.data_dir, '',
                                       results, None))


class ReadOffTest(absltest.TestCase):

  def test_epoch_one_of_a_two_epoch_search_run_is_the_one_epoch_run(self):
    """What lets the search read fewer epochs off its longest run."""
    c = sweep_config.get_config('tiny')
    c.data_dir = fixtures.small_ctr_world_dir()
    c.id_search.update(dict(num_epochs=(1, 2)))
    c.id_search_budget = 2
    c.ctr.batch_size = 256
    workdir = tempfile.mkdtemp()
    rec, _ = baselines.search_id(c, c.data_dir, workdir, ctr_sweep.run_one)
    read = rec['runs'][0]
    self.assertEqual(read['read_off'], 'epoch 1 of the 2-epoch run')
    one = c.copy_and_resolve_references()
    one.ctr.update(num_epochs=1, validation=True)
    got = ctr_sweep.run_one(one, 'id', 0, c.data_dir, tempfile.mkdtemp())
    self.assertAlmostEqual(read['value'], got['gauc'], places=6)


if __name__ == '__main__':
  absltest.main()
