"""Tests of the pre-training loop, its baselines and the embedding job."""

import functools
import glob
import json
import os
import shutil
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import fixtures
import flax.linen as nn
import jax
import numpy as np
import optax

from experiments.configs import embed as embed_config
from experiments.configs import scl as scl_config
from mmrec import checkpointing
from mmrec import embed
from mmrec import int8
from mmrec import item_encoder
from mmrec import pretrain_eval
from mmrec import sharding
from mmrec import train_lib
from mmrec import train_scl
from mmrec import vector_table
from mmrec.data import builders
from mmrec.data import pipelines
from mmrec.data import world as world_lib


def _config(method='scl', **overrides):
  c = scl_config.get_config(f'{method},tiny')
  c.data_dir = fixtures.tiny_world_dir()
  c.batch_size = 32
  c.num_steps = 7  # not a multiple of checkpoint_every: the last step is forced
  c.checkpoint_every = 3
  c.log_every = 3
  c.queue_size = 64
  c.update(overrides)
  return c


@functools.cache
def _items():
  return builders.load_table(fixtures.tiny_world_dir(), 'mmrec_items',
                             'catalogue')


def _batch(config):
  ds = train_scl.objective(config).dataset(config.data_dir, _items())
  return next(pipelines.iterator(ds))


def _init(config, model, tx):
  return train_scl.init_fn(model, train_scl.objective(config), tx,
                           item_encoder.example_inputs(config.data_dir))


def _loss(params, extra, batch, model, config):
  return train_scl.objective(config).loss(params, extra, batch, model)[0]


def _np_in_batch(q, k, t, ids):
  """Per-row in-batch InfoNCE in float64, same-item keys skipped."""
  q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
  out = []
  for i in range(len(q)):
    logits = np.array([q[i] @ k[j] / t for j in range(len(k))
                       if j == i or ids[j] != ids[i]])
    pos = q[i] @ k[i] / t
    out.append(np.log(np.exp(logits - logits.max()).sum()) + logits.max()
               - pos)
  return np.array(out)


def _step(model, config, tx):
  return jax.jit(functools.partial(
      train_scl.train_step, model=model,
      objective=train_scl.objective(config), tx=tx))


class LossOnMeshesTest(parameterized.TestCase):
  """Loss and gradients on (8, 1) and (4, 2) meshes equal one device's."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.config = _config('scl')
    cls.model = item_encoder.encoder_model(cls.config, cls.config.data_dir)
    mesh1 = sharding.make_mesh(devices=jax.devices()[:1])
    tx = train_scl.build_optimizer(cls.config)
    state = jax.jit(lambda r: nn.unbox(_init(cls.config, cls.model, tx)(r)))(
        jax.random.key(0))
    # Fill part of the queues with real keys so they take part in the loss.
    step = _step(cls.model, cls.config, tx)
    state, _ = step(state, _batch(cls.config), jax.random.key(1))
    cls.state = jax.device_get(state)
    cls.batch = _batch(_config('scl', seed=5))
    cls.reference = cls._loss_and_grad(cls, mesh1)

  def _loss_and_grad(self, mesh):
    fn = jax.jit(jax.value_and_grad(
        lambda p, e, b: _loss(p, e, b, self.model, self.config)))
    repl = sharding.replicated(mesh)
    params, extra = jax.device_put((self.state.params, self.state.extra), repl)
    return jax.device_get(fn(params, extra,
                             sharding.shard_batch(self.batch, mesh)))

  @parameterized.parameters((8, 1), (4, 2))
  def test_matches_single_device(self, data, model):
    loss, grads = self._loss_and_grad(sharding.make_mesh(data, model))
    ref_loss, ref_grads = self.reference
    self.assertTrue(np.isfinite(ref_loss))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                         atol=1e-6),
                 grads, ref_grads)


class MethodsTest(parameterized.TestCase):
  """Every training objective gives a finite loss with gradients."""

  @parameterized.parameters('scl_no_hard_neg', 'clip_o', 'clip_e', 'i2i')
  def test_loss_is_finite_and_trains_the_item_side(self, method):
    config = _config(method)
    model = item_encoder.encoder_model(config, config.data_dir)
    tx = train_scl.build_optimizer(config)
    state = jax.jit(lambda r: nn.unbox(_init(config, model, tx)(r)))(
        jax.random.key(0))
    if method.startswith('scl') and config.negatives == 'queue':
      # An empty queue leaves InfoNCE with no negatives: fill it once.
      state, _ = _step(model, config, tx)(state, _batch(config),
                                          jax.random.key(1))
    params, extra = state.params, state.extra
    batch = _batch(config)
    loss, grads = jax.jit(jax.value_and_grad(
        lambda p: _loss(p, extra, batch, model, config)))(params)
    self.assertTrue(np.isfinite(loss))
    norms = {k: float(optax.tree.norm(v))
             for k, v in grads.items()}
    self.assertGreater(norms['image_tower'], 0)
    self.assertGreater(norms['log_temperature'], 0)


def _np_clip(a, b, t, same):
  """Symmetric in-batch InfoNCE in float64; k_j drops out where same[i, j]."""
  def one(q, k, s):
    logits = (q.astype(np.float64) @ k.astype(np.float64).T) / t
    s = s & ~np.eye(len(q), dtype=bool)
    logits[s] = -np.inf
    m = logits.max(1, keepdims=True)
    return (m[:, 0] + np.log(np.exp(logits - m).sum(1))) - np.diag(logits)
  return 0.5 * (one(a, b, same) + one(b, a, same.T))


class DuplicateMaskTest(parameterized.TestCase):
  """Each objective's in-batch loss on a hand-made batch with duplicates
  equals the numpy loss with those rows masked (and, with
  mask_duplicates=False, the unmasked one)."""

  def _setup(self, method):
    config = _config(method)
    model = item_encoder.encoder_model(config, config.data_dir)
    ex = item_encoder.example_inputs(config.data_dir)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), ex['image'],
                                           ex['text'])['params'])
    batch = {k: np.array(v) for k, v in _batch(config).items()}
    return config, model, params, batch

  def _check(self, config, model, params, batch, vectors, want_same,
             metric='loss'):
    apply = functools.partial(model.apply, {'params': params})
    a, b = (np.asarray(v) for v in vectors(apply, batch))
    t = float(apply(method='temperature'))
    for mask in (True, False):
      c = config.copy_and_resolve_references()
      c.mask_duplicates = mask
      obj = train_scl.objective(c)
      extra = obj.init_extra(params, c.encoder.embed_dim)
      _, (metrics, _) = jax.jit(functools.partial(obj.loss, model=model))(
          params, extra, batch)
      same = want_same if mask else np.eye(len(a), dtype=bool)
      np.testing.assert_allclose(metrics[metric],
                                 np.mean(_np_clip(a, b, t, same)),
                                 rtol=1e-5)

  @parameterized.parameters('clip_o', 'clip_e')
  def test_clip_masks_identical_text(self, method):
    config, model, params, batch = self._setup(method)
    text = batch['text']
    text[[2, 5]] = text[0]  # three identical captions / titles
    batch['image'][7], text[7] = batch['image'][1], text[1]  # one item twice
    same = np.array([[np.array_equal(x, y) for y in text] for x in text])
    self.assertEqual(same.sum(), len(text) + 6 + 2)
    self._check(config, model, params, batch,
                train_scl.Clip(config).pair, same)

  def test_i2i_masks_pairs_sharing_an_item(self):
    config, model, params, batch = self._setup('i2i')
    def put(row, side, item, src_row, src_side):
      batch[f'{side}_item'][row] = item
      for f in ('image', 'title'):
        batch[f'{side}_{f}'][row] = batch[f'{src_side}_{f}'][src_row]
    put(3, 'a', batch['a_item'][0], 0, 'a')  # same a
    put(4, 'b', batch['a_item'][1], 1, 'a')  # b of one is a of the other
    a, b = batch['a_item'], batch['b_item']
    same = np.array([[bool({a[i], b[i]} & {a[j], b[j]}) for j in range(len(a))]
                     for i in range(len(a))])
    self.assertGreater(same.sum(), len(a))
    self._check(config, model, params, batch, train_scl.I2i(config).pair,
                same)

  def test_scl_in_batch_masks_same_item_and_same_text_query(self):
    config, model, params, batch = self._setup('scl_no_queue')
    text_rows = np.flatnonzero(~batch['query_is_image'])
    i, j = text_rows[:2]
    batch['query_text'][j] = batch['query_text'][i]  # same words, other item
    for f in ('item', 'image', 'title'):  # same item, other query
      batch[f'pos_{f}'][5] = batch[f'pos_{f}'][4]
    pos, qt, is_text = batch['pos_item'], batch['query_text'], text_rows
    same = pos[:, None] == pos[None]
    same[np.ix_(is_text, is_text)] |= np.array(
        [[np.array_equal(qt[x], qt[y]) for y in is_text] for x in is_text])
    self.assertTrue(same[i, j] and same[j, i] and same[4, 5])

    def vectors(apply, b):
      query, items = apply(b['query_is_image'], b['query_image'],
                           b['query_text'], b['pos_image'][:, None],
                           b['pos_title'][:, None], method='encode_batch')
      return query, items[:, 0]
    # Unmasked (mask_duplicates=False) still drops the same item.
    apply = functools.partial(model.apply, {'params': params})
    q, p = (np.asarray(v) for v in vectors(apply, batch))
    t = float(apply(method='temperature'))
    for mask, want in ((True, same), (False, pos[:, None] == pos[None])):
      c = config.copy_and_resolve_references()
      c.mask_duplicates = mask
      obj = train_scl.objective(c)
      _, (metrics, _) = jax.jit(functools.partial(obj.loss, model=model))(
          params, obj.init_extra(params, c.encoder.embed_dim), batch)
      np.testing.assert_allclose(metrics['nce'],
                                 np.mean(_np_clip(q, p, t, want)), rtol=1e-5)




class NegativesAndKeysTest(parameterized.TestCase):
  """The two factors of the no-queue ablation, alone and together."""

  @parameterized.parameters(('queue', 'momentum'), ('queue', 'online'),
                            ('in_batch', 'momentum'), ('in_batch', 'online'))
  def test_trains_a_few_steps(self, negatives, key_encoder):
    config = _config('scl', negatives=negatives, key_encoder=key_encoder,
                     momentum_schedule='cosine')
    model = item_encoder.encoder_model(config, config.data_dir)
    tx = train_scl.build_optimizer(config)
    state = jax.jit(lambda r: nn.unbox(_init(config, model, tx)(r)))(
        jax.random.key(0))
    self.assertEqual('queue_items' in state.extra, negatives == 'queue')
    step = _step(model, config, tx)
    for seed in (0, 1):
      state, metrics = step(state, _batch(_config(seed=seed)),
                            jax.random.key(seed))
      self.assertTrue(np.isfinite(metrics['loss']))
      self.assertGreater(metrics['grad_norm'], 0)
    # The momentum encoder trails the online one (and moved off its init).
    self.assertEqual(int(state.step), 2)
    diff = optax.tree.norm(jax.tree.map(lambda a, b: a - b, state.params,
                                        state.extra['momentum']))
    self.assertGreater(diff, 0)
    if negatives == 'queue':
      q = state.extra['queue_items']
      self.assertEqual(int(q['valid'].sum()), 2 * config.batch_size)


class InBatchMomentumLossTest(absltest.TestCase):

  def test_matches_numpy(self):
    # Online queries against the momentum keys of the batch's items (and
    # online items against momentum query keys), same items masked.
    config = _config('scl', negatives='in_batch', key_encoder='momentum',
                     triplet_weight=0.0)
    model = item_encoder.encoder_model(config, config.data_dir)
    tx = train_scl.build_optimizer(config)
    params = jax.jit(lambda r: nn.unbox(_init(config, model, tx)(r)))(
        jax.random.key(0)).params
    rng = np.random.default_rng(0)
    # A momentum encoder that differs from the online one, so that using the
    # wrong keys changes the loss.
    momentum = jax.tree.map(
        lambda x: x + 0.1 * rng.normal(size=x.shape).astype(x.dtype), params)
    batch = _batch(config)
    # Hand-made duplicates: rows that bought the same item are not negatives
    # of each other (the mask reads only the ids).
    ids = np.array(batch['pos_item'])
    ids[[1, 5, 9]] = ids[[0, 0, 4]]
    batch = dict(batch, pos_item=ids)

    def encode(p):
      return model.apply({'params': p}, batch['query_is_image'],
                         batch['query_image'], batch['query_text'],
                         batch['pos_image'][:, None],
                         batch['pos_title'][:, None], method='encode_batch')
    query, items = encode(params)
    m_query, m_items = encode(momentum)
    t = float(model.apply({'params': params}, method='temperature'))
    want = 0.5 * np.mean(_np_in_batch(query, m_items[:, 0], t, ids)
                         + _np_in_batch(items[:, 0], m_query, t, ids))
    got = _loss(params, {'momentum': momentum}, batch, model, config)
    np.testing.assert_allclose(got, want, rtol=1e-4)
    online = _loss(params, {'momentum': momentum}, batch, model,
                   _config('scl_no_queue', triplet_weight=0.0))
    self.assertGreater(abs(float(online) - want), 1e-3)


class MomentumTest(parameterized.TestCase):

  @parameterized.parameters(('constant', 0), ('constant', 5), ('cosine', 0),
                            ('cosine', 3), ('cosine', 7))
  def test_momentum_encoder_is_an_ema_of_the_online_params(self, schedule,
                                                           step):
    rng = np.random.default_rng(6)
    f32 = lambda *s: rng.normal(size=s).astype(np.float32)
    online = {'a': f32(3, 2), 'b': [f32(4)]}
    target = {'a': f32(3, 2), 'b': [f32(4)]}
    config = _config('scl_no_queue', momentum=0.9, momentum_schedule=schedule)
    m = 0.9 if schedule == 'constant' else (
        1 - 0.1 * (1 + np.cos(np.pi * step / config.num_steps)) / 2)
    got = jax.jit(lambda o, t, s: train_scl.objective(config).update_extra(
        {'momentum': t}, o, None, None, s))(
            online, target, np.int32(step))['momentum']
    np.testing.assert_allclose(
        got['a'], m * target['a'] + (1 - m) * online['a'], rtol=1e-5)
    np.testing.assert_allclose(
        got['b'][0], m * target['b'][0] + (1 - m) * online['b'][0],
        rtol=1e-5)

  def test_cosine_schedule_matches_numpy(self):
    steps = np.arange(0, 601, 7)
    got = jax.jit(jax.vmap(lambda s: train_scl.momentum_at(
        s, 0.99, 600, 'cosine')))(steps)
    want = 1 - (1 - 0.99) * (np.cos(np.pi * steps / 600) + 1) / 2
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    self.assertAlmostEqual(float(got[0]), 0.99, places=6)
    self.assertAlmostEqual(float(train_scl.momentum_at(600, 0.99, 600,
                                                       'cosine')), 1.0)
    np.testing.assert_array_equal(
        train_scl.momentum_at(steps, 0.99, 600, 'constant'), np.float32(0.99))
    with self.assertRaisesRegex(ValueError, 'momentum_schedule'):
      train_scl.momentum_at(0, 0.99, 600, 'linear')


class TrainAndResumeTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.full = tempfile.mkdtemp()
    cls.full_result = train_scl.run(_config(), cls.full)

  def _params(self, workdir):
    steps = sorted(int(os.path.basename(p)) for p in glob.glob(
        os.path.join(workdir, 'checkpoints', '[0-9]*')))
    state, _ = checkpointing.restore_from(
        os.path.join(workdir, 'checkpoints', str(steps[-1])))
    return state['params']

  def test_kill_and_resume_reproduces_the_run_exactly(self):
    # "Killed" after step 3's checkpoint: the full run's step-3 checkpoint
    # alone (the same state a run stopped there saved; copying it spares a
    # second training and evaluation).
    parted = tempfile.mkdtemp()
    shutil.copytree(os.path.join(self.full, 'checkpoints', '3'),
                    os.path.join(parted, 'checkpoints', '3'))
    with self.assertLogs(level='INFO') as logs:
      result = train_scl.run(_config(), parted)  # resumed
    self.assertTrue(any('resumed from' in r and 'at step 3' in r
                        for r in logs.output), logs.output)
    self.assertEqual(result['step'], 7)
    jax.tree.map(np.testing.assert_array_equal, self._params(parted),
                 self._params(self.full))

  def test_writes_eval_metrics_and_table(self):
    with open(os.path.join(self.full, pretrain_eval.EVAL_FILE)) as f:
      res = json.load(f)
    for name in ('image', 'text', 'image_new', 'text_new'):
      self.assertBetween(res['metrics'][name]['recall@10'], 0.0, 1.0)
    vectors, meta = vector_table.load(os.path.join(self.full,
                                                   vector_table.FILE))
    self.assertEqual(vectors.shape, (2000, 32))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    self.assertEqual(meta['method'], 'scl')
    self.assertEqual(meta['modality'], 'item')
    # Per-modality tables: the towers' own vectors of item image and title,
    # and retrieval of each query modality on its own table.
    encoder, _, _, data_dir = item_encoder.load_encoder(self.full)
    items = builders.load_table(data_dir, 'mmrec_items', 'catalogue')
    for m, fn, inputs in (('image', encoder.image_queries, items['image']),
                          ('text', encoder.text_queries, items['title'])):
      table, meta = vector_table.load(os.path.join(
          self.full, vector_table.file_name(m)))
      self.assertEqual(meta['modality'], m)
      np.testing.assert_allclose(table, fn(inputs), atol=1e-5)
      self.assertGreater(np.abs(table - vectors).max(), 1e-3)  # not fused
      self.assertBetween(res['metrics'][f'{m}_on_{m}']['recall@10'], 0, 1)
    with np.load(os.path.join(self.full, pretrain_eval.QUERIES_FILE)) as z:
      ranks = dict(z)
    validation = ranks.pop(pretrain_eval.VALIDATION_KEY)
    self.assertEqual(set(ranks), {'image_rank', 'text_rank',
                                  'image_catalogue_rank',
                                  'text_catalogue_rank',
                                  'image_concept_rank', 'text_concept_rank',
                                  'image_on_image_rank', 'text_on_text_rank',
                                  'image_on_image_catalogue_rank',
                                  'text_on_text_catalogue_rank'})
    # The result's metrics are the test part's; the validation part's apart.
    for part, rows in (('metrics', ~validation),
                       ('validation_metrics', validation)):
      rank = ranks['text_rank'][rows]
      cell = res[part]['text']
      self.assertEqual(cell['queries'], (rank >= 0).sum())
      self.assertAlmostEqual(cell['recall@10'], (rank[rank >= 0] < 10).mean())
      rank = ranks['image_concept_rank'][rows]
      self.assertAlmostEqual(res[part]['image_concept']['accuracy@1'],
                             (rank[rank >= 0] < 1).mean())
    for name in ('image_on_image_rank', 'image_catalogue_rank',
                 'image_on_image_catalogue_rank'):
      np.testing.assert_array_equal(ranks[name] >= 0,
                                    ranks['image_rank'] >= 0)
    # The world's catalogue holds paper.md's pool and more (for the item
    # table and each modality's own table).
    for m in ('image', 'text'):
      asked = ranks[f'{m}_rank'] >= 0
      for pool, catalogue in ((f'{m}_rank', f'{m}_catalogue_rank'),
                              (f'{m}_on_{m}_rank',
                               f'{m}_on_{m}_catalogue_rank')):
        self.assertTrue((ranks[catalogue][asked] >=
                         ranks[pool][asked]).all())
    rows = train_lib.read_metrics(self.full)
    self.assertTrue(any('train/loss' in r for r in rows))
    self.assertTrue(any('eval/image/recall@10' in r for r in rows))

  def test_final_step_is_on_disk(self):
    steps = sorted(int(os.path.basename(p)) for p in glob.glob(
        os.path.join(self.full, 'checkpoints', '[0-9]*')))
    self.assertEqual(steps[-1], 7)  # 7 % checkpoint_every != 0

  def test_embedding_job_with_defaults_matches_the_final_step(self):
    # The encoder was trained with --config.data_dir=X; the embedding job is
    # given no data_dir and must find X (recorded in the checkpoint).
    out = tempfile.mkdtemp()
    cfg = _config()
    cfg_embed = embed_config.get_config()
    cfg_embed.encoder_workdir = self.full
    embed.run(cfg_embed, out)
    for name in (vector_table.file_name('image'),
                 vector_table.file_name('text'), vector_table.FILE):
      table, meta = vector_table.load(os.path.join(out, name))
      ref, _ = vector_table.load(os.path.join(self.full, name))
      np.testing.assert_allclose(table, ref, atol=1e-5)
      self.assertEqual(meta['encoder_step'], 7)
    q, _ = vector_table.load(os.path.join(out, vector_table.FILE),
                             dtype='int8')
    self.assertLessEqual(np.abs(int8.dequantize(q) - table).max(),
                         1 / 127)
    encoder = item_encoder.load_encoder(self.full, cfg.data_dir)[0]
    items = _items()
    one = encoder.encode_one(items['image'][7], items['title'][7])
    np.testing.assert_allclose(one, table[7], atol=1e-5)

  def test_corrupt_checkpoint_fails_clearly(self):
    broken = tempfile.mkdtemp()
    os.rmdir(broken)
    shutil.copytree(self.full, broken)
    files = [p for p in glob.glob(os.path.join(
        broken, 'checkpoints', '7', 'state', '**', '*'), recursive=True)
             if os.path.isfile(p) and os.path.getsize(p) > 1000]
    self.assertNotEmpty(files)
    for p in files:
      with open(p, 'r+b') as f:
        f.truncate(os.path.getsize(p) // 2)
    with self.assertRaisesRegex(checkpointing.CheckpointError, 'step 7'):
      item_encoder.load_encoder(broken, _config().data_dir)


class ReferenceAndChainTest(absltest.TestCase):

  def test_reference_encoders(self):
    for method, side in (('raw_pixels', 'image'), ('bag_of_tokens', 'text')):
      result = train_scl.run(_config(method),
                                            tempfile.mkdtemp())
      other = 'text' if side == 'image' else 'image'
      self.assertIsNone(result['metrics'][other])
      self.assertGreater(result['metrics'][side]['recall@10'], 0.0)

  def test_clip_e_starts_from_clip_o(self):
    clip_o = tempfile.mkdtemp()
    train_scl.run(_config('clip_o', num_steps=2), clip_o)
    clip_e = tempfile.mkdtemp()
    result = train_scl.run(
        _config('clip_e', num_steps=2, init_from=clip_o), clip_e)
    self.assertEqual(result['step'], 2)
    self.assertIsNotNone(result['metrics']['text'])



class ImageSizeTest(absltest.TestCase):
  """Nothing in pre-training assumes the default image side (real data
  arrives larger): a 24 px world trains SCL, with every augmentation on, and
  embeds its catalogue."""

  def test_scl_on_a_24_px_world(self):
    data_dir = self.create_tempdir().full_path  # removed after the test
    world = world_lib.generate(fixtures.tiny_config(
        image_size=24, num_items=600, num_users=300))
    builders.write(world, data_dir)
    c = _config(num_steps=2, data_dir=data_dir)
    c.augment.update(crop_min_scale=0.7, rotate=0.3, clutter=0.5, colour=0.1,
                     saturation=0.3, blur=0.5, noise=0.03)
    items = builders.load_table(data_dir, 'mmrec_items', 'catalogue')
    batch = next(pipelines.iterator(
        train_scl.objective(c).dataset(data_dir, items)))
    for k in ('query_image', 'pos_image'):
      self.assertEqual(batch[k].shape[1:], (24, 24, 3))
    result = train_scl.run(c, tempfile.mkdtemp())
    self.assertEqual(result['step'], 2)
    self.assertGreater(result['metrics']['image']['queries'], 0)


if __name__ == '__main__':
  absltest.main()
