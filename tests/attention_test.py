"""Tests for the target-attention forms (mmrec.layers.TargetAttention) and
the attention-entropy statistic. (train_ctr_test checks that a training run
logs the statistic.)"""

import dataclasses
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import fixtures
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmrec import ctr_model
from mmrec import ctr_steps
from mmrec import layers

B, L = fixtures.TINY_B, fixtures.TINY_L


def _inputs():
  rng = np.random.default_rng(4)
  q = rng.normal(size=(B, 3)).astype(np.float32)
  k = rng.normal(size=(B, L, 3)).astype(np.float32)
  v = rng.normal(size=(B, L, 2)).astype(np.float32)
  extra = rng.normal(size=(B, L, 1)).astype(np.float32)
  # Rows: all valid, all padded, 2 valid, 3 valid.
  mask = fixtures.tiny_ctr_data()[0]['seq_mask']
  return q, k, v, mask, extra


def np_entropy(weights, mask):
  """Per-row normalised entropy of |w| over the valid positions, or None."""
  out = []
  for w, m in zip(np.abs(weights), mask):
    w = w[m]
    if len(w) < 2 or w.sum() == 0:
      out.append(None)
      continue
    p = w / w.sum()
    p = p[p > 0]
    out.append(float(-(p * np.log(p)).sum() / np.log(len(w))))
  return out


def np_scores(form, p, q, k, mask, extra, train):
  """Per-position scores (B, L) of `form` before masking / softmax."""
  if form == 'dot':
    qp = q @ p['query']['kernel'] + p['query']['bias']
    kp = k @ p['key']['kernel'] + p['key']['bias']
    s = np.einsum('bd,btd->bt', qp, kp) / np.sqrt(q.shape[-1])
    return s + (extra @ p['extra']['kernel'])[..., 0]
  qb = np.broadcast_to(q[:, None], k.shape)
  h = np.concatenate([qb, k, qb - k, qb * k, extra], axis=-1)
  if form == 'mlp_softmax':
    h = 1 / (1 + np.exp(-(h @ p['mlp']['dense_0']['kernel'] +
                          p['mlp']['dense_0']['bias'])))
  else:
    h = h @ p['dense_0']['kernel'] + p['dense_0']['bias']
    if form == 'din_prelu':
      h = np.where(h >= 0, h, p['prelu_0']['alpha'] * h)
    else:  # Dice: batch statistics of the valid positions, or running (0, 1).
      mean, var = ((h[mask].mean(0), h[mask].var(0)) if train else (0.0, 1.0))
      hp = 1 / (1 + np.exp(-(h - mean) / np.sqrt(var + 1e-8)))
      h = hp * h + (1 - hp) * p['dice_0']['alpha'] * h
  return (h @ p['score']['kernel'] + p['score']['bias'])[..., 0]


class TargetAttentionTest(parameterized.TestCase):

  @parameterized.parameters(
      ('din', False), ('din', True), ('din_prelu', False), ('dot', False),
      ('mlp_softmax', False))
  def test_matches_numpy_and_masks(self, form, train):
    q, k, v, mask, extra = _inputs()
    att = layers.TargetAttention(hidden=(5,), form=form)
    variables = nn.unbox(att.init(jax.random.key(1), q, k, v, mask, extra))
    self.assertNotIn('intermediates', variables)
    params = {'params': variables['params']}
    if 'batch_stats' in variables:
      params['batch_stats'] = variables['batch_stats']
    got, sown = att.apply(params, q, k, v, mask, extra, train=train,
                          mutable=['batch_stats', 'intermediates'])
    got = np.asarray(got)

    p = jax.tree.map(np.asarray, variables['params'])
    s = np_scores(form, p, q, k, mask, extra, train)
    w = np.zeros((B, L))
    for b in range(B):
      valid = mask[b]
      if form in ('dot', 'mlp_softmax') and valid.any():
        e = np.exp(s[b, valid] - s[b, valid].max())
        w[b, valid] = e / e.sum()
      elif form.startswith('din'):  # No softmax: the raw scores.
        w[b, valid] = s[b, valid]
    want = np.einsum('bt,bte->be', w, v)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[1], 0.0)  # All-padded row.
    # The sown weights and their entropy.
    inter = sown['intermediates']
    np.testing.assert_allclose(inter['weights'][0], w, rtol=1e-5, atol=1e-6)
    ent, counted = map(np.asarray, inter['entropy'][0])
    want_ent = np_entropy(w, mask)
    np.testing.assert_array_equal(counted, [e is not None for e in want_ent])
    np.testing.assert_allclose(ent, [e or 0.0 for e in want_ent], rtol=1e-5,
                               atol=1e-6)
    # Padded positions' keys and values have no influence.
    k2, v2 = k.copy(), v.copy()
    k2[~mask], v2[~mask] = 1e3, 1e3
    got2 = att.apply(params, q, k2, v2, mask, extra, train=train,
                     mutable=['batch_stats'])[0]
    np.testing.assert_allclose(got2, got, rtol=1e-6, atol=1e-6)

  def test_din_weights_are_not_normalised(self):
    q, k, v, mask, extra = _inputs()
    att = layers.TargetAttention(hidden=(5,), form='din')
    variables = att.init(jax.random.key(1), q, k, v, mask, extra)
    _, sown = att.apply(variables, q, k, v, mask, extra,
                        mutable=['intermediates'])
    sums = np.asarray(sown['intermediates']['weights'][0]).sum(-1)
    self.assertGreater(np.abs(sums[mask.sum(-1) > 1] - 1).max(), 1e-3)

  def test_bad_form(self):
    with self.assertRaisesRegex(ValueError, 'form'):
      layers.TargetAttention(form='softmax').init(
          jax.random.key(0), *_inputs())
    with self.assertRaisesRegex(ValueError, 'attention'):
      dataclasses.replace(fixtures.tiny_ctr_config('id'),
                          attention='softmax')


class AttentionEntropyTest(absltest.TestCase):

  def test_matches_numpy(self):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 7)).astype(np.float32)  # Signed, as DIN's.
    mask = rng.random((6, 7)) < 0.6
    mask[0], mask[1] = False, False
    mask[1, 3] = True  # One valid behaviour: not counted.
    mask[2] = True
    w[3] = np.where(mask[3], 0.0, w[3])  # All-zero valid weights: not counted.
    mask[4, :3] = True
    w[4] = np.where(mask[4], -0.5, w[4])  # Uniform: 1.
    ent, counted = map(np.asarray, layers.attention_entropy(w, mask))
    want = np_entropy(w, mask)
    self.assertAlmostEqual(want[4], 1.0)
    np.testing.assert_array_equal(counted, [e is not None for e in want])
    np.testing.assert_allclose(ent, [e or 0.0 for e in want], rtol=1e-5)

  def test_train_metrics(self):
    """train_step's attention_entropy is the mean over the counted rows."""
    ent = np.array([0.5, 0.0, 0.9], np.float32)
    counted = np.array([True, False, True])
    got = ctr_steps.attention_metrics(
        {'attention': {'entropy': ((ent, counted),)}})
    np.testing.assert_allclose(got['attention_entropy'], 0.7, rtol=1e-6)
    self.assertEqual(ctr_steps.attention_metrics({}), {})

  def test_category_excess_matches_numpy(self):
    rng = np.random.default_rng(0)
    b, length = 6, 5
    mask = np.arange(length)[None] >= length - np.array(
        [5, 0, 3, 5, 2, 4])[:, None]
    cat = rng.integers(0, 3, b)
    seq_cat = rng.integers(0, 3, (b, length))
    w = np.where(mask, rng.normal(size=(b, length)), 0).astype(np.float32)
    batch = {'category': cat, 'seq_category': seq_cat, 'seq_mask': mask}
    ent = np.zeros(b, np.float32), np.ones(b, bool)
    got = ctr_steps.attention_metrics(
        {'attention': {'entropy': (ent,), 'weights': (w,)}}, batch)
    want = []
    for i in range(b):
      same = (seq_cat[i] == cat[i]) & mask[i]
      other = ~same & mask[i]
      if same.any() and other.any():
        a = np.abs(w[i])
        want.append(a[same].sum() / a[mask[i]].sum() -
                    same.sum() / mask[i].sum())
    self.assertNotEmpty(want)
    np.testing.assert_allclose(got['attention_category_excess'],
                               np.mean(want), rtol=1e-5)
    # Uniform weights are blind to category: excess 0.
    got = ctr_steps.attention_metrics(
        {'attention': {'entropy': (ent,),
                       'weights': (mask.astype(np.float32),)}}, batch)
    self.assertAlmostEqual(float(got['attention_category_excess']), 0.0,
                           places=6)


class PairedFirstLayerTest(parameterized.TestCase):
  """DIN's first scorer layer computed in parts (one (D, F) matrix per
  query) against the concatenated [q, k, q - k, q * k] form it replaced:
  outputs and gradients to 1e-6, alone at the CTR model's widths and inside
  a whole CTR model's training loss."""

  @parameterized.parameters(False, True)
  def test_layer_matches_concatenation(self, with_extra):
    rng = np.random.default_rng(0)
    q = rng.normal(size=(16, 32)).astype(np.float32) * 0.1
    k = rng.normal(size=(16, 50, 32)).astype(np.float32) * 0.1
    extra = (rng.uniform(-1, 1, (16, 50, 1)).astype(np.float32)
             if with_extra else None)

    class First(nn.Module):
      paired: bool

      @nn.compact
      def __call__(self, q, k, extra):
        layer = layers.dense(64, name='dense_0')
        fn = (layers._paired_first_layer if self.paired else
              layers.concat_first_layer)
        return fn(layer, q, k, extra)

    params = First(False).init(jax.random.key(0), q, k, extra)
    self.assertEqual(jax.tree.map(np.shape, params), jax.tree.map(
        np.shape, First(True).init(jax.random.key(0), q, k, extra)))
    cot = rng.normal(size=(16, 50, 64)).astype(np.float32)

    def loss(paired):
      return lambda p, q, k, e: jnp.sum(First(paired).apply(p, q, k, e) * cot)

    args = (params, q, k, extra)
    argnums = (0, 1, 2, 3) if with_extra else (0, 1, 2)
    want = jax.value_and_grad(loss(False), argnums)(*args)
    got = jax.value_and_grad(loss(True), argnums)(*args)
    np.testing.assert_allclose(First(True).apply(params, q, k, extra),
                               First(False).apply(params, q, k, extra),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    for g, w in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
      np.testing.assert_allclose(g, w, rtol=1e-6,
                                 atol=1e-6 * np.abs(w).max())

  @parameterized.parameters('id', 'simscore', 'vector')
  def test_ctr_model_loss_and_gradients(self, variant):
    batch, vectors = fixtures.tiny_ctr_data()
    model = ctr_model.CtrModel(fixtures.tiny_ctr_config(variant))
    variables = model.init(jax.random.key(0), batch, vectors)
    extra = {k: v for k, v in variables.items() if k != 'params'}

    def grads():
      return jax.value_and_grad(ctr_steps.loss_fn, has_aux=True)(
          variables['params'], extra, batch, vectors, model, True)

    (got_loss, (got_logits, _)), got = grads()
    with mock.patch.object(layers, '_paired_first_layer',
                           layers.concat_first_layer):
      (want_loss, (want_logits, _)), want = grads()
    np.testing.assert_allclose(got_logits, want_logits, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(g, w, rtol=1e-6,
                                 atol=1e-6 * max(np.abs(w).max(), 1e-3))


class VariantsTest(parameterized.TestCase):
  """Every form with the variants that change the attention's inputs."""

  @parameterized.product(form=layers.ATTENTION_FORMS,
                         variant=('id', 'simscore', 'vector'))
  def test_forward(self, form, variant):
    batch, vectors = fixtures.tiny_ctr_data()
    model = ctr_model.CtrModel(dataclasses.replace(
        fixtures.tiny_ctr_config(variant), attention=form))
    variables = model.init(jax.random.key(0), batch, vectors)
    self.assertNotIn('intermediates', variables)
    logits, sown = model.apply(variables, batch, vectors, train=True,
                               mutable=['batch_stats', 'intermediates'])
    self.assertTrue(np.isfinite(logits).all())
    metrics = ctr_steps.attention_metrics(sown['intermediates'])
    self.assertBetween(float(metrics['attention_entropy']), 0.0, 1.0)
    if variant == 'simscore':  # The cosines reach the weights.
      other = model.apply(variables, batch, vectors[::-1], train=True,
                          mutable=['batch_stats', 'intermediates'])[1]
      self.assertFalse(np.allclose(
          sown['intermediates']['attention']['weights'][0],
          other['intermediates']['attention']['weights'][0]))


if __name__ == '__main__':
  absltest.main()
