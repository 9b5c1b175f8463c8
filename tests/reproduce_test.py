"""End-to-end test of the paper pipeline (experiments/reproduce.py, :tiny).

The pipeline runs once, through colab/quickstart.ipynb executed in a fresh
kernel: that tests the notebook and the pipeline for the price of one run.
"""

import json
import math
import os
import re
import shutil
import tempfile
from unittest import mock

from absl.testing import absltest
import nbclient
import nbformat

from experiments import claims
from experiments import ctr_sweep
from experiments import report
from experiments import reproduce
from experiments import results as results_lib
from experiments import stages
from experiments.configs import paper

METHODS = {'raw_pixels', 'bag_of_tokens', 'clip_o', 'clip_e', 'scl',
           'scl_no_queue', 'scl_no_hard_neg', 'i2i'}
VARIANTS = {'id', 'vector', 'simscore', 'simtier_paper', 'simtier_official',
            'make', 'simtier_make', 'id_stats', 'simtier_make@ids'}
STAGES = {'world', 'pretrain', 'ctr', 'extra', 'world_cw0', 'ctr_cw0',
          'report'}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, 'colab', 'quickstart.ipynb')


def _strict_json(path):
  def reject(name):
    raise ValueError(f'{path} holds {name}')
  with open(path) as f:
    return json.load(f, parse_constant=reject)


def _numbers(tree, where='results'):
  """Every (path, number) in a JSON tree."""
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _numbers(v, f'{where}.{k}')
  elif isinstance(tree, list):
    for i, v in enumerate(tree):
      yield from _numbers(v, f'{where}[{i}]')
  elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
    yield where, tree


class ReproduceTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.workdir = tempfile.mkdtemp(prefix='mmrec_reproduce_')
    cls.notebook = nbformat.read(NOTEBOOK, as_version=4)
    # The kernel inherits the environment: the workdir, conftest's compile
    # settings and cache, and one CPU device, as on a user's CPU or a free
    # Colab runtime (conftest fakes 8 for the tests whose subject is a mesh;
    # on 2 cores the pipeline ran 8-26% faster on one).
    saved = os.environ.copy()
    os.environ['MMREC_WORKDIR'] = cls.workdir
    os.environ['XLA_FLAGS'] = re.sub(
        r'--xla_force_host_platform_device_count=\d+',
        '--xla_force_host_platform_device_count=1', os.environ['XLA_FLAGS'])
    try:
      nbclient.NotebookClient(
          cls.notebook, timeout=1200, kernel_name='python3',
          resources={'metadata': {'path': ROOT}}).execute()
    finally:
      os.environ.clear()
      os.environ.update(saved)
    cls.results = _strict_json(os.path.join(cls.workdir,
                                            results_lib.RESULTS_FILE))
    cls.progress = _strict_json(os.path.join(cls.workdir,
                                             stages.PROGRESS_FILE))

  def test_notebook_shows_table_and_two_plots(self):
    outputs = [o for c in self.notebook.cells if c.cell_type == 'code'
               for o in c.get('outputs', [])]
    self.assertEmpty([o for o in outputs if o.output_type == 'error'])
    markdown = [o['data']['text/markdown'] for o in outputs
                if 'text/markdown' in o.get('data', {})]
    self.assertLen(markdown, 1)
    for variant in VARIANTS:
      self.assertIn(f'| {variant} |', markdown[0])
    pngs = [o for o in outputs if 'image/png' in o.get('data', {})]
    self.assertLen(pngs, 2)

  def test_results_structure(self):
    r = self.results
    self.assertEqual(set(r), {'world', 'pretraining', 'pretraining_validation',
                              'ctr', 'content_curve', 'claims',
                              'ctr_baseline', 'flags', 'data'})
    # Two parts of the held-out queries: tables of both, the test part's
    # the larger count nowhere assumed, each part's own numbers.
    ev = r['data']['pretraining']['eval']
    self.assertGreater(ev['queries'], 0)
    self.assertGreater(ev['validation_queries'], 0)
    self.assertEqual(set(r['pretraining_validation']), set(r['pretraining']))
    # The built world serves every method, variant and section.
    self.assertEqual(r['data']['dataset'], 'world')
    self.assertEqual(r['data']['pretraining']['ran'],
                     paper.get_config('tiny').pretrain.methods.split(','))
    self.assertEqual(r['data']['pretraining']['eval']['task'], 'search')
    for k in ('skipped', 'ctr_skipped'):
      self.assertEqual(r['data'][k], {})
    self.assertEqual(r['data']['pretraining']['skipped'], {})
    self.assertEqual((r['data']['ctr_vectors']['source'],
                      r['data']['ctr_vectors']['method']),
                     ('pretrained', 'scl_no_queue'))
    # The tiny curve: the world's own content_weight and 0.
    curve = r['content_curve']
    self.assertEqual([p['content_weight'] for p in curve],
                     [0.0, paper.get_config('tiny').world.content_weight])
    for p in curve:
      # Against the baseline chosen on validation, not the test day's best.
      self.assertEqual(p['best_id_gauc_split'], 'validation')
      best = p['variants'][p['best_id_gauc']]['gauc']
      self.assertAlmostEqual(
          p['gain_gauc_pct'],
          100 * (p['variants']['simtier_make']['gauc'] - best) / best)
    # The main sweep's baseline: id and id_stats each ran once on the
    # validation day, and the claims name the stronger per metric.
    base = r['ctr_baseline']
    self.assertIsNone(base['why'])
    for m in ('auc', 'gauc'):
      self.assertEqual(base[m]['split'], 'validation')
      self.assertEqual(set(base[m]['values']), {'id', 'id_stats'})
      self.assertEqual(base[m]['variant'],
                       max(base[m]['values'], key=base[m]['values'].get))
    ctr_dir = self.progress['stages']['ctr']['dir']
    for b in ('id', 'id_stats'):
      with open(os.path.join(ctr_dir, 'validation', b, 'seed_0',
                             'ctr_eval.json')) as f:
        self.assertEqual(json.load(f)['split'], 'validation')
    self.assertEqual(r['world']['statistics']['users'], 500)
    self.assertEqual(set(r['world']['oracle_ceiling']),
                     {'auc', 'gauc', 'logloss'})
    self.assertEqual(set(r['pretraining']), METHODS)
    for method, row in r['pretraining'].items():
      self.assertEqual(set(row), {'image', 'text', 'image_new', 'text_new',
                                  'image_catalogue', 'text_catalogue',
                                  'image_new_catalogue', 'text_new_catalogue',
                                  'image_concept', 'text_concept',
                                  'image_on_image', 'text_on_text',
                                  'image_on_image_catalogue',
                                  'text_on_text_catalogue'})
      for cell in row.values():
        if cell is not None:
          self.assertEqual(set(cell), {'accuracy@1', 'recall@10'})
          self.assertContainsSubset({'mean', 'std'}, cell['recall@10'])
    self.assertIsNone(r['pretraining']['raw_pixels']['text'])
    self.assertIsNotNone(r['pretraining']['scl']['image'])
    self.assertEqual(set(r['ctr']), VARIANTS)
    for variant, row in r['ctr'].items():
      self.assertContainsSubset({'auc', 'gauc', 'logloss', 'slices'}, row)
      self.assertContainsSubset({'mean', 'std'}, row['gauc'])
      self.assertContainsSubset({'new', 'group_0'}, row['slices'])
      if variant != 'id':
        self.assertContainsSubset({'mean', 'std'}, row['delta_gauc_pct'])
    ids = [c['id'] for c in r['claims']]
    self.assertContainsSubset(
        {'scl_over_clip_e_over_clip_o_image',
         'scl_over_clip_e_over_clip_o_text', 'queue_adds_image', 'queue_adds_text', 'hard_negatives_add_image',
         'hard_negatives_add_text',
         'simtier_and_make_beat_vector_and_simscore', 'simtier_make_gauc_gain',
         'simtier_make_auc_gain', 'gains_largest_on_long_tail',
         'gains_largest_on_new_items', 'content_beats_id_similarity'},
        ids)
    for c in r['claims']:
      self.assertIsInstance(c['reproduced'], bool)
      self.assertIsInstance(c['claim'], str)
      self.assertIn(c['verdict'], claims.VERDICTS)
      self.assertEqual(c['reproduced'], c['verdict'] == claims.REPRODUCED)
      self.assertTrue(c['statement'].startswith(c['verdict']))
    self.assertIn('bootstrap', r['ctr']['simtier_make'])
    by_id = dict(zip(ids, r['claims']))
    gain = by_id['simtier_make_gauc_gain']
    base = r['ctr_baseline']['gauc']['variant']
    self.assertEqual(gain['baseline'], base)
    self.assertAlmostEqual(
        gain['measured']['delta_gauc_pct'],
        r['ctr']['simtier_make']['bootstrap'][f'vs_{base}']['all']['gauc'][
            'delta_pct'])
    control = by_id['content_beats_id_similarity']
    self.assertEqual(control['model'], 'simtier_make')
    self.assertIn('simtier_make - simtier_make@ids GAUC', control['statement'])
    # Per query modality, each with its own intervals.
    self.assertIn('scl - clip_e recall@10',
                  by_id['scl_over_clip_e_over_clip_o_image']['statement'])
    for f in r['flags']:
      self.assertEqual(set(f), {'id', 'text'})

  def test_every_number_is_finite(self):
    numbers = list(_numbers(self.results))
    self.assertGreater(len(numbers), 100)
    for where, x in numbers:
      self.assertTrue(math.isfinite(x), where)

  def test_report_and_plots(self):
    with open(os.path.join(self.workdir, report.REPORT_FILE)) as f:
      text = f.read()
    for section in ('## Claims', '## World', '## Pre-training', '## CTR',
                    'oracle (ceiling)', 'Wall time', '95% CI',
                    'the interval overlaps the band 0.5x-2x',
                    'Claims are judged against the stronger ID baseline on '
                    'the validation split',
                    'the tables and claims are on the test part',
                    'Validation part (what the pipeline chooses on'):
      self.assertIn(section, text)
    # :tiny runs one seed: no "± 0.000" anywhere.
    self.assertNotIn('± 0.000', text)
    for f in self.results['flags']:
      self.assertIn(f'- {f["text"]}', text)
    if self.results['flags']:
      self.assertIn('## Flags', text)
    for c in self.results['claims']:  # wording follows results.json
      self.assertIn(f'**{c["verdict"]}**', text)
    for name in report.PLOTS:
      path = os.path.join(self.workdir, name)
      self.assertTrue(os.path.exists(path), name)
      with open(path, 'rb') as f:
        self.assertEqual(f.read(8), b'\x89PNG\r\n\x1a\n', name)
      self.assertIn(f']({name})', text)

  def test_second_run_skips_every_stage(self):
    self.assertEqual({k: v['status'] for k, v in
                      self.progress['stages'].items()},
                     dict.fromkeys(STAGES, 'ran'))
    again = reproduce.run(paper.get_config('tiny'), self.workdir)
    self.assertEqual(again, self.results)
    progress = _strict_json(os.path.join(self.workdir,
                                         stages.PROGRESS_FILE))
    self.assertEqual({k: v['status'] for k, v in progress['stages'].items()},
                     dict.fromkeys(STAGES, 'skipped'))

  def test_changed_config_reruns_only_downstream_stages(self):
    workdir = os.path.join(tempfile.mkdtemp(), 'copy')
    shutil.copytree(self.workdir, workdir)
    config = paper.get_config('tiny')
    # Both are the 'extra' stage's: E = 1 reads the sweep's own MAKE run
    # (stage_a_epochs = 1 in :tiny), so the rerun trains only the ID model,
    # one epoch.
    self.assertEqual(config.ctr.ctr.make.stage_a_epochs, 1)
    config.make_epochs = (1,)
    config.one_epoch.num_epochs = 1
    reproduce.run(config, workdir)
    progress = _strict_json(os.path.join(workdir, stages.PROGRESS_FILE))
    self.assertEqual({k: v['status'] for k, v in progress['stages'].items()},
                     {'world': 'skipped', 'pretrain': 'skipped',
                      'ctr': 'skipped', 'extra': 'ran', 'world_cw0': 'skipped',
                      'ctr_cw0': 'skipped', 'report': 'ran'})
    with open(os.path.join(progress['stages']['extra']['dir'],
                           reproduce.CURVES_FILE)) as f:
      curves = json.load(f)
    self.assertEqual([r['stage_a_epochs'] for r in curves['make_epochs']],
                     [1])
    self.assertEqual(curves['one_epoch']['num_epochs'], 1)


class ExtraStageTest(absltest.TestCase):
  """The extra stage's runs train on the ID settings the sweep chose, as the
  sweep's own runs did: its MAKE curve reuses the sweep's run for one point,
  and a curve of mixed settings would compare two models. (It trained on the
  config's defaults: the default world's ID search chose `dot` attention, so
  the curve's E = 1, 2 points had DIN attention and its E = 3 point `dot`.)"""

  def test_extra_runs_on_the_searched_settings(self):
    tmp = self.create_tempdir().full_path
    ctr_dir = os.path.join(tmp, 'ctr')
    chosen = {'num_epochs': 1, 'attention': 'dot', 'dense_lr': 3e-4}
    os.makedirs(ctr_dir)
    os.makedirs(os.path.join(tmp, 'extra'))
    with open(os.path.join(ctr_dir, f'{ctr_sweep.TABLE_FILE}.json'), 'w') as f:
      json.dump({'variants': {}, 'id_search': {'chosen': chosen}}, f)
    config = paper.get_config('tiny')
    config.one_epoch.num_epochs = 3
    config.make_epochs = (2, 5)  # neither is the sweep's: both train
    ctr_cfg = stages.sub(config.ctr, data_dir='w', vectors_path='v.npz')
    self.assertNotEqual(ctr_cfg.ctr.attention, 'dot')
    seen = []

    def run_one(c, variant, seed, data_dir, workdir):
      seen.append((variant, c.ctr.attention, c.ctr.dense_lr,
                   c.ctr.num_epochs, c.ctr.make.stage_a_epochs))
      return {'auc': 0.7, 'gauc': 0.7, 'logloss': 0.2, 'history': []}

    with mock.patch.object(ctr_sweep, 'run_one', run_one):
      reproduce._extra(config, ['id', 'make'], 'w', ctr_cfg, ctr_dir,
                       os.path.join(tmp, 'extra'))
    self.assertEqual(seen, [('id', 'dot', 3e-4, 3, mock.ANY),
                            ('make', 'dot', 3e-4, 1, 2),
                            ('make', 'dot', 3e-4, 1, 5)])


if __name__ == '__main__':
  absltest.main()
