"""Tests for the CTR model, its variants, layers (Dice; TargetAttention: see
attention_test.py), ID embeddings and the optimizer."""

import contextlib
import dataclasses
import functools
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import fixtures
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.configs import ctr as ctr_config
from mmrec import ctr_model
from mmrec import embedding
from mmrec import layers
from mmrec import make
from mmrec import optimizer
from mmrec import sharding
from mmrec import simtier

B, L, DV = fixtures.TINY_B, fixtures.TINY_L, fixtures.TINY_DV
EMB = fixtures.TINY_EMB
tiny_config, tiny_data = fixtures.tiny_ctr_config, fixtures.tiny_ctr_data


@functools.lru_cache(maxsize=None)
def tiny_model_and_logits(variant, freeze=True):
  """(model, variables, eval logits); init's forward pass is in eval mode."""
  model = ctr_model.CtrModel(tiny_config(variant, freeze))
  batch, vectors = tiny_data()
  logits, variables = model.init_with_output(jax.random.key(0), batch,
                                             vectors)
  return model, variables, logits


def tiny_model(variant, freeze=True):
  return tiny_model_and_logits(variant, freeze)[:2]



class MatchFeaturesTest(absltest.TestCase):

  def test_matches_numpy(self):
    batch, _ = tiny_data()
    got = np.asarray(ctr_model.match_features(
        batch, ('seq_item', 'seq_category')))
    mask = batch['seq_mask']
    same = (batch['seq_category'] == batch['category'][:, None]) & mask
    n, length = same.sum(1), mask.sum(1)
    want = np.stack([n / np.maximum(length, 1), np.log1p(n),
                     np.log1p(length)], 1)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    self.assertEqual(got[1].tolist(), [0.0, 0.0, 0.0])  # the empty history

  def test_bag_share_matches_numpy(self):
    # A category bag (MovieLens genres, K = 3 slots, 0 = empty): the share
    # of real behaviours sharing any value with the target's bag.
    batch, _ = tiny_data()
    rng = np.random.default_rng(3)
    bags = rng.integers(0, 4, (20, 3))  # per item id
    bags[5] = 0  # an item with no genre shares nothing
    b = dict(batch, genres=bags[batch['item_id']],
             seq_genres=bags[batch['seq_item']])
    got = np.asarray(ctr_model.match_features(b, ('seq_item',),
                                              ('seq_genres',)))
    mask = batch['seq_mask']
    want_n = np.array([[bool(set(bags[s][bags[s] > 0]) &
                             set(bags[t][bags[t] > 0])) and m
                        for s, m in zip(seq, ms)]
                       for t, seq, ms in zip(batch['item_id'],
                                             batch['seq_item'], mask)]).sum(1)
    length = mask.sum(1)
    want = np.stack([want_n / np.maximum(length, 1), np.log1p(want_n),
                     np.log1p(length)], 1)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    self.assertGreater(want_n.sum(), 0)
    # One shared history row (serving) gives the same features.
    shared = dict(b, **{k: b[k][:1] for k in ('seq_item', 'seq_mask',
                                              'seq_genres')})
    rows = dict(b, **{k: np.repeat(b[k][:1], B, 0)
                      for k in ('seq_item', 'seq_mask', 'seq_genres')})
    np.testing.assert_allclose(
        ctr_model.match_features(shared, ('seq_item',), ('seq_genres',)),
        ctr_model.match_features(rows, ('seq_item',), ('seq_genres',)))

  def test_tower_input_grows_only_with_the_option(self):
    batch, _ = tiny_data()
    widths = {}
    for on in (True, False):
      cfg = dataclasses.replace(tiny_config('id'), match_features=on)
      params = ctr_model.CtrModel(cfg).init(jax.random.key(0), batch)[
          'params']
      widths[on] = nn.unbox(params)['tower_0']['kernel'].shape[0]
    self.assertEqual(widths[True] - widths[False], 3)

class SharedHistoryTest(parameterized.TestCase):
  """One user's history (1, L) with C candidates = the per-row batch."""

  @parameterized.product(variant=ctr_model.VARIANTS,
                         attention=layers.ATTENTION_FORMS)
  def test_equals_the_repeated_rows(self, variant, attention):
    cfg = dataclasses.replace(tiny_config(variant), attention=attention)
    model = ctr_model.CtrModel(cfg)
    batch, vectors = tiny_data()
    vectors = np.round(vectors * 127).astype(np.int8)  # as served
    variables = model.init(jax.random.key(1), batch, vectors)
    c = 7
    rng = np.random.default_rng(5)
    user = {k: v[:1] for k, v in batch.items()
            if k in EMB.user_fields + EMB.seq_fields + ('seq_mask',)}
    user['seq_item'] = user['seq_item'].copy()
    user['seq_item'][0, -1] = 3
    cands = {'item_id': rng.integers(0, 20, c), 'category':
             rng.integers(0, 5, c), 'shop': rng.integers(0, 6, c)}
    cands['item_id'][0] = 3  # a candidate also in the history
    rows = dict({k: np.repeat(v, c, 0) for k, v in user.items()}, **cands)
    shared = dict({k: v if k.startswith('seq_') else np.repeat(v, c, 0)
                   for k, v in user.items()}, **cands)
    self.assertTrue(ctr_model.shares_history(shared))
    self.assertFalse(ctr_model.shares_history(rows))
    f = jax.jit(lambda b: model.apply(variables, b, vectors))
    np.testing.assert_allclose(f(shared), f(rows), rtol=0, atol=1e-5)


class VariantsTest(parameterized.TestCase):

  @parameterized.parameters(*ctr_model.VARIANTS)
  def test_forward(self, variant):
    model, variables, logits = tiny_model_and_logits(variant)
    batch, vectors = tiny_data()
    top = set(variables['params'])
    self.assertContainsSubset(
        {'embed', 'attention', 'tower_0', 'dice_0', 'tower_1', 'head'}, top)
    self.assertEqual('simtier' in top, variant in ('simtier_official',
                                                   'simtier_make'))
    self.assertEqual('make' in top, variant in ('make', 'simtier_make'))
    self.assertEqual(logits.shape, (B,))
    self.assertTrue(np.isfinite(logits).all())
    logits_t, updates = model.apply(variables, batch, vectors, train=True,
                                    mutable=['batch_stats'])
    self.assertEqual(logits_t.shape, (B,))
    self.assertTrue(np.isfinite(logits_t).all())
    new, old = updates['batch_stats'], variables['batch_stats']
    self.assertFalse(np.array_equal(new['dice_0']['bn']['mean'],
                                    old['dice_0']['bn']['mean']))
    if 'make' in top:  # Frozen MAKE runs in eval mode: stats as loaded.
      jax.tree.map(np.testing.assert_array_equal, new['make'], old['make'])

  def test_bad_variant(self):
    with self.assertRaisesRegex(ValueError, 'variant'):
      tiny_config('vectors')

  def test_missing_vectors(self):
    model, variables = tiny_model('simtier_paper')
    with self.assertRaisesRegex(ValueError, 'vectors'):
      model.apply(variables, tiny_data()[0])

  def test_make_taps_argument(self):
    """Precomputed taps give the same logits as the 'make' submodule."""
    model, variables = tiny_model('make')
    batch, vectors = tiny_data()
    make_vars = {col: tree['make'] for col, tree in variables.items()}
    _, taps = make.MakeModel(model.config.make).apply(make_vars, batch,
                                                      vectors)
    self.assertEqual(taps['attention'].shape, (B, DV))
    self.assertEqual(taps['hidden'].shape, (B, 6))
    np.testing.assert_allclose(
        model.apply(variables, batch, make_taps=taps),
        model.apply(variables, batch, vectors), rtol=1e-6)

  def test_vectors_get_no_gradient(self):
    # Every variant gathers through embedding.item_vectors; 'vector' feeds the
    # raw vectors everywhere. SimTier + trainable MAKE: see OptimizerTest.
    model, variables = tiny_model('vector')
    batch, vectors = tiny_data()

    def loss(vecs, params):
      return jnp.sum(model.apply({**variables, 'params': params}, batch, vecs,
                                 train=True, mutable=['batch_stats'])[0] ** 2)

    g_vec, g_params = jax.jit(jax.grad(loss, argnums=(0, 1)))(
        vectors, variables['params'])
    np.testing.assert_array_equal(g_vec, np.zeros_like(vectors))
    # ...while the model itself does learn.
    self.assertGreater(
        float(jnp.abs(g_params['head']['kernel'].unbox()).sum()), 0.0)

  def test_int8_table_equals_dequantised_float(self):
    model, variables = tiny_model('simtier_make')
    batch, vectors = tiny_data()
    q = np.round(vectors * 127).astype(np.int8)
    np.testing.assert_allclose(
        model.apply(variables, batch, q),
        model.apply(variables, batch, q.astype(np.float32) / 127.0),
        rtol=1e-6, atol=1e-7)


class LongHistoryTest(parameterized.TestCase):
  """SimTier over a separate long history (the official code's setting)."""

  @parameterized.parameters('simtier_official', 'simtier_paper')
  def test_long_history_feeds_simtier_only(self, variant):
    model, variables, logits = tiny_model_and_logits(variant)
    batch, vectors = tiny_data()
    same = dict(batch, long_seq_item=batch['seq_item'],
                long_seq_mask=batch['seq_mask'])
    np.testing.assert_allclose(model.apply(variables, same, vectors), logits,
                               rtol=1e-6)
    rng = np.random.default_rng(1)
    longer = dict(batch, long_seq_item=rng.integers(0, 20, (B, 30)),
                  long_seq_mask=np.ones((B, 30), bool))
    other = model.apply(variables, longer, vectors)
    self.assertEqual(other.shape, (B,))
    self.assertFalse(np.allclose(other, logits))


TL, K = 12, 3  # long-history length, behaviours retrieved


@functools.lru_cache(maxsize=None)
def long_data(b=B):
  """A batch with a TL-long history whose last L behaviours are the short one.

  As the official code: the recent history is the long one's newest end.
  Long lengths: full, none, 2 (< K), then 7 (and random for b > 4).
  """
  batch, vectors = tiny_data()
  rng = np.random.default_rng(5)
  item_category = rng.integers(0, 5, 20).astype(np.int32)
  lengths = np.concatenate([[TL, 0, 2, 7], rng.integers(0, TL + 1, b - 4)])
  mask = np.arange(TL)[None] >= TL - lengths[:, None]
  items = np.where(mask, rng.integers(0, 20, (b, TL)), 0).astype(np.int32)
  cats = np.where(mask, item_category[items], 0).astype(np.int32)
  out = {k: np.resize(v, (b,) + v.shape[1:]) for k, v in batch.items()
         if k not in ('seq_item', 'seq_category', 'seq_mask')}
  out.update(long_seq_item=items, long_seq_category=cats, long_seq_mask=mask,
             seq_item=items[:, -L:], seq_category=cats[:, -L:],
             seq_mask=mask[:, -L:])
  return out, vectors


def retrieving(variant, k=K):
  return ctr_model.CtrModel(dataclasses.replace(tiny_config(variant),
                                                retrieve_top_k=k))


def np_retrieved(batch, vectors, k=K):
  """The batch's seq_* fields as the numpy reference retrieves them."""
  want = fixtures.np_top_k(vectors, batch['item_id'],
                                 batch['long_seq_item'],
                                 batch['long_seq_mask'], k)
  cats = np.take_along_axis(batch['long_seq_category'], want['positions'], 1)
  return {'seq_item': want['ids'], 'seq_mask': want['mask'],
          'seq_category': np.where(want['mask'], cats, 0).astype(np.int32)}


class RetrievalTest(parameterized.TestCase):
  """GSU: attention over the top K of the long history, SimTier short."""

  @parameterized.parameters('id', 'simtier_official', 'simtier_paper')
  def test_attends_over_retrieved_simtier_over_recent(self, variant):
    model = retrieving(variant)
    batch, vectors = long_data()
    plain, variables = tiny_model(variant)
    got = model.apply(variables, batch, vectors)
    ref = np_retrieved(batch, vectors)
    # The plain model attends over seq_* and runs SimTier over long_seq_*:
    # give it the reference's retrieved behaviours and the short history.
    same = dict({k: v for k, v in batch.items() if not k.startswith('long')},
                **ref)
    if variant != 'id':
      same.update(long_seq_item=batch['seq_item'],
                  long_seq_mask=batch['seq_mask'])
    np.testing.assert_allclose(got, plain.apply(variables, same, vectors),
                               rtol=1e-5, atol=1e-6)
    # ...which is not what it attends over without retrieval (the recent L),
    # nor what the long history's most recent K would give.
    self.assertFalse(np.array_equal(ref['seq_item'][0],
                                    batch['long_seq_item'][0, -K:]))
    self.assertFalse(np.allclose(got, plain.apply(variables, batch, vectors),
                                 rtol=1e-4))

  def test_no_long_history_no_change(self):
    model = retrieving('simtier_official')
    plain, variables, logits = tiny_model_and_logits('simtier_official')
    batch, vectors = tiny_data()
    np.testing.assert_array_equal(model.apply(variables, batch, vectors),
                                  logits)
    del plain

  @parameterized.parameters(*ctr_model.VARIANTS)
  def test_every_variant_runs(self, variant):
    model = retrieving(variant)
    batch, vectors = long_data()
    logits, variables = model.init_with_output(jax.random.key(0), batch,
                                               vectors)
    self.assertEqual(logits.shape, (B,))
    self.assertTrue(np.isfinite(logits).all())
    self.assertEqual(jax.tree.structure(variables),
                     jax.tree.structure(tiny_model(variant)[1]))

  def test_needs_vectors_and_long_categories(self):
    model = retrieving('id')
    _, variables = tiny_model('id')
    batch, vectors = long_data()
    with self.assertRaisesRegex(ValueError, 'vectors'):
      model.apply(variables, batch)
    no_cat = {k: v for k, v in batch.items() if k != 'long_seq_category'}
    with self.assertRaisesRegex(ValueError, 'long_seq_category'):
      model.apply(variables, no_cat, vectors)
    with self.assertRaisesRegex(ValueError, 'retrieve_top_k'):
      dataclasses.replace(tiny_config('id'), retrieve_top_k=-1)

  def test_config_field_reaches_the_model(self):
    sizes = {f.name: getattr(EMB, f.name)
             for f in dataclasses.fields(EMB) if f.name.startswith('num_')}
    config = ctr_config.get_config('simtier_official,tiny')
    self.assertEqual(config.retrieve_top_k, 0)  # Off by default.
    self.assertEqual(
        ctr_model.build_model(config, sizes).config.retrieve_top_k, 0)
    config.retrieve_top_k = 7
    self.assertEqual(
        ctr_model.build_model(config, sizes).config.retrieve_top_k, 7)

  def test_gradients_finite_on_8_device_mesh(self):
    """Train-mode grads on a data-sharded batch: finite, equal to 1 device."""
    model = retrieving('simtier_official')
    _, variables = tiny_model('simtier_official')
    batch, vectors = long_data(8)
    params = nn.unbox(variables['params'])
    labels = jnp.asarray(batch['label'], jnp.float32)

    def loss(params, batch, vecs):
      logits, _ = model.apply(
          {'params': params, 'batch_stats': variables['batch_stats']}, batch,
          vecs, train=True, mutable=['batch_stats'])
      return optax.sigmoid_binary_cross_entropy(logits, labels).mean(), logits

    grad = jax.jit(jax.grad(loss, argnums=(0, 2), has_aux=True))
    mesh = sharding.make_mesh()
    self.assertEqual(mesh.devices.size, 8)
    (g, g_vec), logits = grad(
        jax.device_put(params, sharding.replicated(mesh)),
        sharding.shard_batch(batch, mesh),
        jax.device_put(vectors, sharding.replicated(mesh)))
    self.assertEqual(logits.shape, (8,))
    self.assertEqual(logits.sharding.spec[0], 'data')
    for leaf in jax.tree.leaves(g):
      self.assertTrue(np.isfinite(leaf).all())
    np.testing.assert_array_equal(g_vec, 0.0)  # The table stays frozen.
    self.assertGreater(
        float(jnp.abs(g['attention']['score']['kernel']).sum()), 0.0)
    (g1, _), logits1 = grad(params, batch, vectors)
    np.testing.assert_allclose(logits, logits1, rtol=1e-5, atol=1e-6)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4,
                                   atol=1e-6), g, g1)


def reference_paths():
  """The long-history computations before the fast paths: cosines through
  the gathered (B, T, Dv) rows, SimTier counts through a one-hot."""
  def counts(bins, weights, num_bins):
    return jnp.einsum('btn,bt->bn', jax.nn.one_hot(bins, num_bins), weights)
  stack = contextlib.ExitStack()
  stack.enter_context(mock.patch.object(simtier, 'table_cosine',
                                        simtier.gathered_cosine))
  stack.enter_context(mock.patch.object(simtier, 'bin_counts', counts))
  return stack


class FastPathTest(parameterized.TestCase):
  """The official and GSU settings on an int8 table (all-pairs cosines,
  scatter-add counts) give the logits of the reference paths. (Gradients
  follow: no gradient flows through the cosines or the counts.)"""

  @parameterized.named_parameters(('official', 0, True), ('gsu', K, False))
  def test_equals_reference(self, k, mask_padding):
    model = ctr_model.CtrModel(dataclasses.replace(
        tiny_config('simtier_official'), retrieve_top_k=k,
        simtier_mask_padding=mask_padding))
    batch, vectors = long_data()
    q = np.round(vectors * 127).astype(np.int8)
    variables = model.init(jax.random.key(0), batch, q)
    # A fresh trace each time, so that the patches take effect.
    logits = jax.jit(lambda b: model.apply(variables, b, q))(batch)
    with reference_paths():
      want = jax.jit(lambda b: model.apply(variables, b, q))(batch)
    np.testing.assert_allclose(logits, want, rtol=0, atol=1e-6)


class DiceTest(absltest.TestCase):

  def test_matches_numpy(self):
    rng = np.random.default_rng(3)
    x = rng.normal(1.0, 2.0, (16, 3)).astype(np.float32)
    dice = layers.Dice()
    variables = dice.init(jax.random.key(0), x)
    alpha = np.array([0.0, 0.25, -0.5], np.float32)
    variables = {'params': {'alpha': alpha},
                 'batch_stats': variables['batch_stats']}

    def np_dice(x, mean, var):
      p = 1 / (1 + np.exp(-(x - mean) / np.sqrt(var + 1e-8)))
      return p * x + (1 - p) * alpha * x

    # Train: batch statistics, running averages updated with momentum 0.9.
    y, upd = dice.apply(variables, x, train=True, mutable=['batch_stats'])
    mean, var = x.mean(0), x.var(0)
    np.testing.assert_allclose(y, np_dice(x, mean, var), rtol=1e-5,
                               atol=1e-6)
    stats = upd['batch_stats']['bn']
    np.testing.assert_allclose(stats['mean'], 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(stats['var'], 0.9 + 0.1 * var, rtol=1e-5)
    # Eval: running statistics, so a row's output ignores the other rows.
    ev = {'params': variables['params'], 'batch_stats': upd['batch_stats']}
    y_eval = dice.apply(ev, x)
    np.testing.assert_allclose(
        y_eval, np_dice(x, stats['mean'], stats['var']), rtol=1e-5,
        atol=1e-6)
    np.testing.assert_array_equal(dice.apply(ev, x[:1]), y_eval[:1])


class CheckIdsTest(parameterized.TestCase):

  def test_ok(self):
    embedding.check_ids(tiny_data()[0], EMB)

  @parameterized.parameters(
      ('seq_item', (2, 3), 20, r"'seq_item'.*20.*\[0, 19\]"),
      ('age', (0,), -1, r"'age'.*-1.*\[0, 2\]"),
      ('shop', (1,), 99, r"'shop'.*99.*\[0, 5\]"))
  def test_out_of_range_names_field(self, field, index, value, regex):
    batch = {k: v.copy() for k, v in tiny_data()[0].items()}
    batch[field][index] = value
    with self.assertRaisesRegex(ValueError, regex):
      embedding.check_ids(batch, EMB)

  def test_missing_field(self):
    batch = dict(tiny_data()[0])
    del batch['city']
    with self.assertRaisesRegex(ValueError, "'city'"):
      embedding.check_ids(batch, EMB)

  def test_sequence_features_zero_at_padding(self):
    batch = tiny_data()[0]
    emb = embedding.IdEmbeddings(EMB)
    variables = emb.init(jax.random.key(0), batch)
    user, target, seq = emb.apply(variables, batch)
    self.assertEqual(user.shape, (B, 4 * EMB.dim))
    self.assertEqual(target.shape, (B, 3 * EMB.dim))
    self.assertEqual(seq.shape, (B, L, 2 * EMB.dim))
    np.testing.assert_array_equal(np.asarray(seq)[~batch['seq_mask']], 0.0)
    # Shared tables: a behaviour equal to the target embeds the same.
    table = variables['params']['item']['embedding']
    self.assertEqual(table.names, ('vocab', 'embed'))
    np.testing.assert_array_equal(target[:, :EMB.dim],
                                  table.value[batch['item_id']])

  def test_seq_shop(self):
    """With seq_shop behaviours carry all three item fields, like the target."""
    cfg = dataclasses.replace(EMB, seq_features=('category', 'shop'))
    batch = dict(tiny_data()[0])
    with self.assertRaisesRegex(ValueError, "'seq_shop'"):
      embedding.check_ids(batch, cfg)
    batch['seq_shop'] = np.where(batch['seq_mask'], 5, 0).astype(np.int32)
    embedding.check_ids(batch, cfg)
    emb = embedding.IdEmbeddings(cfg)
    _, _, seq = emb.apply(emb.init(jax.random.key(0), batch), batch)
    self.assertEqual(seq.shape, (B, L, 3 * EMB.dim))


class OptimizerTest(parameterized.TestCase):

  def test_labels(self):
    _, variables = tiny_model('make')
    params = variables['params']
    labels = optimizer.param_labels(params, ('make',))
    self.assertEqual(labels, optimizer.param_labels(nn.unbox(params),
                                                    ('make',)))
    flat = {jax.tree_util.keystr(p): l for p, l in
            jax.tree_util.tree_flatten_with_path(labels)[0]}
    for path, label in flat.items():
      if path.startswith("['make']"):
        want = 'frozen'
      elif path.startswith("['embed']"):
        want = 'embedding'
      else:
        want = 'dense'
      self.assertEqual(label, want, path)
    self.assertEqual(
        sum(l == 'embedding' for l in flat.values()), 7)  # One per table.
    with self.assertRaisesRegex(ValueError, 'mkae'):
      optimizer.build_optimizer(params, frozen_prefixes=('mkae',))

  @parameterized.parameters(True, False)
  def test_frozen_make_stays_bit_identical(self, freeze):
    (params, stats), (p, new_stats), _ = tiny_training_run(freeze)
    same = lambda a, b: bool(jax.tree.all(jax.tree.map(np.array_equal, a, b)))
    self.assertEqual(same(p['make'], params['make']), freeze)
    self.assertEqual(same(new_stats['make'], stats['make']), freeze)
    self.assertFalse(same(p['embed'], params['embed']))
    self.assertFalse(same(p['simtier'], params['simtier']))
    self.assertFalse(same(p['tower_0'], params['tower_0']))

  def test_trainable_make_gives_vectors_no_gradient(self):
    *_, vector_grads = tiny_training_run(False)
    for g in vector_grads:
      np.testing.assert_array_equal(g, 0.0)


@functools.lru_cache(maxsize=None)
def tiny_training_run(freeze, steps=3):
  """'simtier_make' trained a few steps with the real optimizer.

  Returns (params, batch_stats) before and after, and the gradient w.r.t. the
  vector table at each step.
  """
  model, variables = tiny_model('simtier_make', freeze=freeze)
  batch, vectors = tiny_data()
  params = nn.unbox(variables['params'])
  tx = optimizer.build_optimizer(
      params, frozen_prefixes=('make',) if freeze else ())
  labels = jnp.asarray(batch['label'], jnp.float32)

  @jax.jit
  def step(params, stats, opt):
    def loss(p, vecs):
      logits, upd = model.apply({'params': p, 'batch_stats': stats}, batch,
                                vecs, train=True, mutable=['batch_stats'])
      return optax.sigmoid_binary_cross_entropy(logits, labels).mean(), upd
    (grads, g_vec), upd = jax.grad(loss, argnums=(0, 1), has_aux=True)(
        params, vectors)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), upd['batch_stats'], opt, g_vec

  p, stats, opt, vector_grads = params, variables['batch_stats'], tx.init(
      params), []
  for _ in range(steps):
    p, stats, opt, g_vec = step(p, stats, opt)
    vector_grads.append(g_vec)
  return (params, variables['batch_stats']), (p, stats), vector_grads


if __name__ == '__main__':
  absltest.main()
