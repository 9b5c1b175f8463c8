"""Tests for the CTR loop (mmrec.train_ctr), 8 fake CPU devices.

Compilation dominates on CPU, so the runs are shared: `RunTest.setUpClass`
trains 'id' three times (uninterrupted; stopped half-way; resumed) and
'simtier_make' once on a small world, and the tests inspect what those runs
wrote. Runs in one process share compiled programs (`ctr_steps.programs`).
"""

import hashlib
import json
import os
import shutil
import tempfile
import warnings

from absl.testing import absltest
from absl.testing import parameterized
import fixtures
import jax
import numpy as np

from experiments.configs import ctr as ctr_config
from mmrec import checkpointing
from mmrec import ctr_data
from mmrec import ctr_eval
from mmrec import ctr_model
from mmrec import ctr_steps
from mmrec import int8
from mmrec import metrics
from mmrec import sharding
from mmrec import train_ctr
from mmrec import train_lib
from mmrec import vector_table
from mmrec.data import builders
from mmrec.data import manifest


_world_dir = fixtures.small_ctr_world_dir
_vectors_path = fixtures.oracle_vectors_path
_config = fixtures.ctr_run_config


def _restore(workdir, step=None):
  ckpt_dir = os.path.join(workdir, checkpointing.SUBDIR)
  with checkpointing.Checkpointer(ckpt_dir, read_only=True) as ckpt, \
      warnings.catch_warnings():
    warnings.filterwarnings('ignore', 'Sharding info not provided')
    state, _ = ckpt.restore(step)
  return jax.tree.map(np.asarray, state)  # A dict: saved without a target.


def _assert_trees_equal(test, a, b):
  test.assertEqual(jax.tree.structure(a), jax.tree.structure(b))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


class ShardingTest(parameterized.TestCase):
  """Loss and logits of one batch are the same on any mesh."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.world = ctr_data.CtrData.load(_world_dir())
    # Includes rows whose target is among its own behaviours (cosine 1, on
    # an official SimTier bin edge): simtier.table_cosine's clip keeps them stable.
    batch = cls.world.dataset('train', 256, shuffle=True)[0]
    own = ((batch['seq_item'] == batch['item_id'][:, None]) &
           batch['seq_mask']).any(1)
    rows = np.concatenate([np.flatnonzero(own)[:4],
                           np.flatnonzero(~own)[:12]])
    assert len(rows) == 16 and own[rows].any()
    cls.batch = {k: v[rows] for k, v in batch.items()}
    cls.vectors, _ = vector_table.load(_vectors_path(), dtype='int8')

  def _programs(self, variant, mesh):
    config = _config(variant)
    model = ctr_model.build_model(config, self.world.sizes)
    vectors = None if variant == 'id' else self.vectors
    return model, vectors, ctr_steps.programs(
        model, ctr_steps.opt_spec(config, model), mesh,
        ctr_steps.shape_key({k: v[:2] for k, v in self.batch.items()}),
        ctr_steps.shape_key(vectors))

  def _loss_and_logits(self, variant, mesh, state):
    model, vectors, progs = self._programs(variant, mesh)
    state = jax.device_put(state, progs.train.shardings)
    vecs = vector_table.put(vectors, mesh)
    if vecs is not None and mesh.shape['model'] > 1:
      self.assertEqual(vecs.sharding.spec[0], 'model')  # Rows sharded.

    def fn(state, batch, vectors):
      loss, (logits_t, _) = ctr_steps.loss_fn(
          state.params, state.extra, batch, vectors, model, True)
      _, (logits_e, _) = ctr_steps.loss_fn(
          state.params, state.extra, batch, vectors, model, False)
      return loss, logits_t, logits_e

    out = jax.jit(fn, in_shardings=(
        progs.train.shardings, sharding.batch_sharding(mesh),
        vector_table.table_sharding(vectors, mesh)),
                  out_shardings=sharding.replicated(mesh))(
                      state, sharding.shard_batch(self.batch, mesh), vecs)
    return jax.tree.map(np.asarray, out)

  @parameterized.parameters('id', 'simtier_official')
  def test_meshes_agree(self, variant):
    one = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    # The same values on every mesh: init once on one device, then place.
    state = self._programs(variant, one)[2].train.init_state(jax.random.key(0))
    single = self._loss_and_logits(variant, one, state)
    self.assertTrue(np.isfinite(single[0]))
    for data, model in ((8, 1), (4, 2)):
      got = self._loss_and_logits(variant, sharding.make_mesh(data, model),
                                  state)
      for name, a, b in zip(('loss', 'train logits', 'eval logits'), got,
                            single):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5,
                                   err_msg=f'{name} on mesh ({data}, {model})')


class EvalPointsTest(absltest.TestCase):

  def test_one_epoch_has_no_intermediate_points(self):
    self.assertEqual(ctr_eval.eval_points(1, 100, (0.25, 0.5)), {})

  def test_first_two_epochs_and_every_epoch_end(self):
    self.assertEqual(
        ctr_eval.eval_points(3, 100, (0.25, 0.5, 0.75)),
        {25: 0.25, 50: 0.5, 75: 0.75, 100: 1.0, 125: 1.25, 150: 1.5,
         175: 1.75, 200: 2.0, 300: 3.0})


class RunTest(absltest.TestCase):
  """End-to-end runs, kill-and-resume, MAKE's freeze."""
  N = 12

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    root = tempfile.mkdtemp(prefix='mmrec_ctr_runs_')
    cls.full_dir = os.path.join(root, 'id_full')
    cls.split_dir = os.path.join(root, 'id_split')
    cls.make_dir = os.path.join(root, 'simtier_make')
    n = cls.N
    cls.full = train_ctr.run(
        _config('id', max_steps=n, checkpoint_every=5), cls.full_dir)
    cls.half = train_ctr.run(
        _config('id', max_steps=n // 2, checkpoint_every=5), cls.split_dir)
    cls.resumed = train_ctr.run(
        _config('id', max_steps=n, checkpoint_every=5), cls.split_dir)
    # MAKE stage A: one epoch in large batches; stage B stopped early.
    cls.make_result = train_ctr.run(cls._make_config(), cls.make_dir)

  @classmethod
  def _make_config(cls):
    c = _config('simtier_make', batch_size=256, max_steps=6,
                checkpoint_every=5)
    c.make.stage_a_epochs = 1
    return c

  def _check_eval_file(self, workdir, variant):
    with open(os.path.join(workdir, train_ctr.EVAL_FILE)) as f:
      res = json.load(f)
    self.assertEqual(res['variant'], variant)
    self.assertEqual(res['split'], 'test')
    for k in ('auc', 'gauc', 'logloss'):
      self.assertTrue(np.isfinite(res[k]), k)
    self.assertEqual(res['num_test'], self.world_test_rows())
    slices = res['slices']
    self.assertIn('new', slices)
    self.assertEqual({f'group_{i}' for i in range(9)}, set(slices) - {'new'})
    self.assertEqual(sum(s['count'] for s in slices.values()),
                     res['num_test'])
    for s in slices.values():
      self.assertTrue(np.isfinite(s['auc']))
    # predictions.npz: the same test rows, row by row, as the metrics saw.
    pred = ctr_eval.load_predictions(workdir)
    self.assertEqual(pred['logit'].dtype, np.float32)
    self.assertLen(pred['label'], res['num_test'])
    self.assertAlmostEqual(metrics.gauc(pred['label'], pred['logit'],
                                        pred['user_id']), res['gauc'],
                           places=6)
    self.assertEqual(int((pred['exposure_group'] == -1).sum()),
                     slices['new']['count'])
    return res

  def world_test_rows(self):
    return len(builders.data_source(_world_dir(),
                                    'mmrec_impressions', 'test'))

  def test_end_to_end_id(self):
    res = self._check_eval_file(self.full_dir, 'id')
    self.assertEqual(res['step'], self.N)
    self.assertFalse(res['complete'])  # Stopped by max_steps.
    self.assertNotIn('history', res)  # One evaluation point.
    rows = train_lib.read_metrics(self.full_dir)
    self.assertTrue(any('train/loss' in r for r in rows))
    self.assertTrue(any('eval/auc' in r for r in rows))
    # The default attention ('din') logs its weights' entropy with the loss.
    train = [r for r in rows if 'train/loss' in r]
    self.assertEqual([r['step'] for r in train], [5, 10, self.N])
    for r in train:
      self.assertBetween(r['train/attention_entropy'], 0.0, 1.0)

  def test_end_to_end_simtier_make(self):
    res = self._check_eval_file(self.make_dir, 'simtier_make')
    self.assertEqual(res, json.loads(json.dumps(self.make_result)))
    # The checkpoint records the resolved dataset and table (what export
    # and near-line read back), not the config's spelling of them.
    ckpt = os.path.join(self.make_dir, checkpointing.SUBDIR)
    with checkpointing.Checkpointer(ckpt, read_only=True) as c:
      step = c.latest_step()
    with warnings.catch_warnings():
      warnings.filterwarnings('ignore', 'Sharding info not provided')
      _, saved = checkpointing.restore_from(os.path.join(ckpt, str(step)),
                                            None)
    self.assertEqual(saved['data_dir'], os.path.abspath(_world_dir()))
    self.assertEqual(saved['vectors_path'],
                     vector_table.resolve(_vectors_path()))
    self.assertTrue(saved['vectors_path'].endswith(vector_table.FILE))
    hist = res['stage_a_history']
    self.assertLen(hist, 1)
    self.assertEqual(hist[0]['epoch_fraction'], 1.0)
    self.assertTrue(np.isfinite(hist[0]['auc']))
    self.assertTrue(np.isfinite(hist[0]['gauc']))

  def test_resume_is_bit_identical(self):
    self.assertEqual(self.half['step'], self.N // 2)
    _assert_trees_equal(self, _restore(self.full_dir),
                        _restore(self.split_dir))
    self.assertEqual(self.full['auc'], self.resumed['auc'])
    self.assertEqual(self.full['gauc'], self.resumed['gauc'])

  def test_frozen_make_keeps_stage_a_params(self):
    stage_a = _restore(os.path.join(self.make_dir, train_ctr.STAGE_A_DIR))
    mid, end = _restore(self.make_dir, 5), _restore(self.make_dir, 6)
    for stage_b in (mid, end):
      _assert_trees_equal(self, stage_a['params'], stage_b['params']['make'])
      _assert_trees_equal(self, stage_a['extra']['batch_stats'],
                          stage_b['extra']['batch_stats']['make'])
    # ...while the rest of the model trains.
    self.assertFalse(np.array_equal(mid['params']['head']['kernel'],
                                    end['params']['head']['kernel']))
    self.assertFalse(np.array_equal(
        mid['extra']['batch_stats']['dice_0']['bn']['mean'],
        end['extra']['batch_stats']['dice_0']['bn']['mean']))

  def test_rerun_restores_instead_of_training(self):
    stage_a_dir = os.path.join(self.make_dir, train_ctr.STAGE_A_DIR)

    def train_rows():
      return (len([r for r in train_lib.read_metrics(stage_a_dir)
                   if 'train/loss' in r]),
              len([r for r in train_lib.read_metrics(self.make_dir)
                   if 'train/loss' in r]))

    before = train_rows()
    again = train_ctr.run(self._make_config(), self.make_dir)
    self.assertEqual(train_rows(), before)  # Neither stage trained again.
    self.assertEqual(again['auc'], self.make_result['auc'])
    self.assertEqual(again['stage_a_history'],
                     self.make_result['stage_a_history'])


class ValidationTest(absltest.TestCase):
  """config.validation holds out the last training day for tuning."""

  def test_splits_and_runs_evaluate_on_the_held_out_day(self):
    full = ctr_data.CtrData.load(_world_dir())
    data = ctr_data.CtrData.load(_world_dir(), validation=True)
    day = ctr_data.train_columns(_world_dir())['day']
    held = full.first_test_day - 1
    n_held = int((day == held).sum())
    self.assertGreater(n_held, 0)
    self.assertEqual(data.num_rows('validation'), n_held)
    self.assertEqual(data.num_rows('train') + n_held, full.num_rows('train'))
    self.assertEqual(data.num_rows('test'), full.num_rows('test'))
    self.assertTrue((data.dataset('validation', 64)[0]['day'] == held).all())
    self.assertTrue((data.dataset('train', 64, shuffle=True)[0]['day']
                     < held).all())
    self.assertLen(data.train_item_ids(), full.num_rows('train') - n_held)
    with self.assertRaisesRegex(ValueError, 'unknown split'):
      full.dataset('validation', 64)
    for variant in ('id', 'id_stats'):
      res = train_ctr.run(_config(variant, validation=True, max_steps=3),
                          tempfile.mkdtemp())
      self.assertEqual(res['split'], 'validation', variant)
      self.assertEqual(res['num_test'], n_held, variant)
      self.assertTrue(np.isfinite(res['auc']), variant)


class BadInputTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.world = ctr_data.CtrData.load(_world_dir())
    cls.num_items = cls.world.sizes['num_items']

  def _table(self, vectors):
    """Writes a table like vector_table.save, but without its checks."""
    path = os.path.join(tempfile.mkdtemp(), 'item_vectors.npz')
    vectors = np.asarray(vectors, np.float32)
    meta = {'num_items': vectors.shape[0], 'dim': vectors.shape[1],
            'sha256': hashlib.sha256(vectors).hexdigest(),
            'format_version': 1}
    with open(path, 'wb') as f:
      np.savez(f, float32=vectors, int8=int8.quantize(
          np.nan_to_num(vectors)), metadata=np.array(json.dumps(meta)))
    return path

  def test_item_id_outside_vocabulary(self):
    model = ctr_model.build_model(_config('id'), self.world.sizes)
    batch = dict(self.world.dataset('train', 16)[0])
    batch['item_id'] = batch['item_id'].copy()
    batch['item_id'][3] = self.num_items
    with self.assertRaisesRegex(ValueError, r"first train batch.*'item_id'.*"
                                'num_items'):
      ctr_data.check_batch(batch, model, 'first train batch')

  def test_run_checks_ids_before_compiling(self):
    # A world whose config claims fewer items than its impressions use.
    data_dir = os.path.join(tempfile.mkdtemp(), 'world')
    shutil.copytree(_world_dir(), data_dir)
    path = os.path.join(data_dir, manifest.FILE)
    with open(path) as f:
      m = json.load(f)
    with open(path, 'w') as f:
      json.dump(dict(m, num_items=10), f)
    with self.assertRaisesRegex(
        ValueError, r"first train batch of .*'item_id'.*num_items = 10"):
      train_ctr.run(_config('id', data_dir=data_dir), tempfile.mkdtemp())

  def test_train_rows_in_test_days(self):
    model = ctr_model.build_model(_config('id'), self.world.sizes)
    batch = self.world.dataset('test', 16)[0]
    with self.assertRaisesRegex(ValueError, 'train split must hold days'):
      ctr_data.check_batch(batch, model, 'x', self.world.first_test_day)

  def test_missing_vectors_path(self):
    config = _config('simtier_paper', vectors_path='')
    with self.assertRaisesRegex(ValueError, 'config.vectors_path'):
      train_ctr.run(config, tempfile.mkdtemp())

  def test_wrong_dimension(self):
    config = _config('simtier_paper', vectors_dim=16)  # The table has 32.
    with self.assertRaisesRegex(vector_table.VectorTableError,
                                'config.vectors_path.*dimension 32'):
      train_ctr.run(config, tempfile.mkdtemp())

  def test_wrong_count(self):
    path = self._table(np.eye(self.num_items - 1, 8))
    config = _config('make', vectors_path=path)
    with self.assertRaisesRegex(vector_table.VectorTableError,
                                'config.vectors_path.*799 items'):
      vector_table.load_vectors(config, self.num_items)

  def test_nan_vectors(self):
    v = np.eye(self.num_items, 8)
    v[5, 2] = np.nan
    config = _config('vector', vectors_path=self._table(v),
                     vectors_dtype='float32')
    with self.assertRaisesRegex(vector_table.VectorTableError,
                                'config.vectors_path.*NaN'):
      vector_table.load_vectors(config, self.num_items)

  def test_bad_config_arg(self):
    with self.assertRaisesRegex(ValueError, 'VARIANT'):
      ctr_config.get_config('simtier,tiny')


if __name__ == '__main__':
  absltest.main()
