"""Tests for the image and text towers and the multimodal encoder.

Compile time dominates on CPU (~0.5 s per tower in a forward graph, ~1.5 s in
a backward one), so: one small model is initialised once and shared (the
'image' and 'text' item modes reuse the 'fused' parameters minus `fuse_head`,
a tree `jax.eval_shape` checks); the outputs of every method come from one
cached jit (`_probe`) that several tests read; structure-only checks use
`jax.eval_shape`, which traces without compiling.
"""

import dataclasses
import functools

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmrec import contrastive
from mmrec import image_encoder
from mmrec import multimodal_encoder
from mmrec import sharding
from mmrec import text_encoder

B, S, T, V, E = 3, 16, 8, 50, 16  # S = 16: the tiny world's image side.
SMALL_IMAGE = image_encoder.ImageEncoderConfig(
    width=32, depth=1, num_heads=2, mlp_dim=64)
SMALL_TEXT = text_encoder.TextEncoderConfig(
    vocab_size=V, max_len=16, width=32, depth=1, num_heads=2, mlp_dim=64)


def _config(item_mode='fused'):
  return multimodal_encoder.MultimodalConfig(
      image=SMALL_IMAGE, text=SMALL_TEXT, embed_dim=E, item_mode=item_mode,
      fuse_hidden=32)


def _model(item_mode='fused'):
  return multimodal_encoder.MultimodalEncoder(_config(item_mode))


def _inputs(seed=0, lead=(B,), t=T):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, lead + (S, S, 3), dtype=np.uint8)
  tokens = rng.integers(1, V, lead + (t,)).astype(np.int32)
  lengths = rng.integers(1, t + 1, lead)
  tokens[np.arange(t) >= lengths[..., None]] = 0  # Trailing padding.
  return images, tokens


@functools.lru_cache(maxsize=None)
def _fused_variables():
  images, tokens = _inputs()
  # unsafe_rbg: the init compiles ~2 s faster than threefry on CPU.
  key = jax.random.key(0, impl='unsafe_rbg')
  return nn.unbox(jax.jit(_model().init)(key, images, tokens))


def _variables(item_mode='fused'):
  v = _fused_variables()
  if item_mode == 'fused':
    return v
  params = {k: x for k, x in v['params'].items() if k != 'fuse_head'}
  return {'params': params}


@functools.lru_cache(maxsize=None)
def _probe():
  """Inputs and the outputs of every method of the fused model, one jit."""
  model = _model()
  q_images, q_tokens = _inputs(3)
  q_tokens[1] = 0  # An all-padding row.
  items, titles = _inputs(4, lead=(B, 2), t=T + 2)  # Titles: T + 2 long.
  is_image = np.array([True, False, True])
  inputs = dict(q_images=q_images, q_tokens=q_tokens, items=items,
                titles=titles, is_image=is_image)

  @jax.jit
  def run(variables):
    def call(method, *args):
      return model.apply(variables, *args, method=method)
    query, batch_items = call('encode_batch', is_image, q_images, q_tokens,
                              items, titles)
    return dict(
        image=call('encode_image', q_images),
        image_f32=call('encode_image', q_images.astype(np.float32)),
        text=call('encode_text', q_tokens),
        text_padded=call('encode_text', np.pad(q_tokens, ((0, 0), (0, 5)))),
        query=call('encode_query', is_image, q_images, q_tokens),
        batch_query=query, batch_items=batch_items,
        items_flat=call('encode_item', items.reshape(-1, S, S, 3),
                        titles.reshape(-1, T + 2)),
        temperature=call('temperature'))

  return inputs, jax.tree.map(np.asarray, run(_variables()))


def _norms(x):
  return np.linalg.norm(np.asarray(x), axis=-1)


class TowersTest(parameterized.TestCase):

  @parameterized.parameters('gap', 'cls')
  def test_image_tower_shapes(self, pool):
    cfg = image_encoder.ImageEncoderConfig(pool=pool)  # Default sizes.
    tower = image_encoder.ImageEncoder(cfg)
    images = jax.ShapeDtypeStruct((B, S, S, 3), jnp.uint8)
    variables = jax.eval_shape(tower.init, jax.random.key(0), images)
    params = nn.unbox(variables)['params']
    self.assertEqual(params['pos_embedding'].shape, (1, (S // 4) ** 2, 128))
    self.assertEqual('cls' in params, pool == 'cls')
    out = jax.eval_shape(tower.apply, variables, images)
    self.assertEqual(out.shape, (B, 128))

  def test_image_tower_rejects_bad_config_and_sizes(self):
    tower = image_encoder.ImageEncoder(SMALL_IMAGE)
    with self.assertRaisesRegex(ValueError, 'divisible'):
      jax.eval_shape(tower.init, jax.random.key(0),
                     jnp.zeros((1, 18, 18, 3), jnp.uint8))
    with self.assertRaisesRegex(ValueError, 'pool'):
      image_encoder.ImageEncoderConfig(pool='max')

  @parameterized.parameters(16, 24, 32)
  def test_conv_tower_takes_any_image_size(self, side):
    cfg = image_encoder.ImageEncoderConfig(kind='conv', conv_widths=(8, 16),
                                           blocks_per_stage=2)
    tower = image_encoder.ImageEncoder(cfg)
    images = np.random.default_rng(0).integers(0, 256, (B, side, side, 3),
                                               dtype=np.uint8)
    # Jitted: op-by-op a conv tower's forward and backward cost more to
    # dispatch than to compile whole.
    variables = nn.unbox(jax.jit(tower.init)(jax.random.key(0), images))
    apply = jax.jit(tower.apply)
    out = apply(variables, images)
    self.assertEqual(out.shape, (B, cfg.features))
    self.assertEqual(cfg.features, 16)
    # Rows are independent (GroupNorm, no batch statistics): a row's feature
    # does not depend on the rest of the batch.
    np.testing.assert_allclose(apply(variables, images[:1])[0], out[0],
                               rtol=1e-4, atol=1e-4)
    # Every block starts as the identity (zero last conv) yet gets gradient.
    grads = jax.jit(jax.grad(lambda p: jnp.sum(tower.apply(
        {'params': p}, images) ** 2)))(variables['params'])
    last = grads['stage_1_block_1']['conv_1']['kernel']
    self.assertGreater(float(jnp.abs(last).max()), 0.0)

  def test_conv_tower_rejects_bad_config(self):
    for bad in (dict(kind='resnet'), dict(conv_widths=()),
                dict(blocks_per_stage=0), dict(stem_stride=0)):
      with self.assertRaises(ValueError):
        image_encoder.ImageEncoderConfig(**bad)

  def test_multimodal_encoder_with_conv_tower(self):
    cfg = multimodal_encoder.MultimodalConfig(
        image=image_encoder.ImageEncoderConfig(kind='conv', conv_widths=(8,)),
        text=SMALL_TEXT, embed_dim=E)
    model = multimodal_encoder.MultimodalEncoder(cfg)
    images, tokens = _inputs()
    variables = nn.unbox(model.init(jax.random.key(0), images, tokens))
    out = model.apply(variables, images, tokens)
    for name in ('image', 'text', 'item'):
      np.testing.assert_allclose(_norms(out[name]), 1.0, atol=1e-5)

  def test_text_tower_param_axes_and_max_len(self):
    tower = text_encoder.TextEncoder(SMALL_TEXT)
    variables = jax.eval_shape(tower.init, jax.random.key(0),
                               jnp.ones((1, T), jnp.int32))
    spec = nn.get_partition_spec(variables)['params']
    self.assertEqual(tuple(spec['embedding']['embedding']), ('vocab', 'embed'))
    with self.assertRaisesRegex(ValueError, 'max_len'):
      jax.eval_shape(tower.init, jax.random.key(0),
                     jnp.ones((1, 17), jnp.int32))


class MultimodalEncoderTest(parameterized.TestCase):

  @parameterized.parameters('image', 'text', 'fused')
  def test_init_creates_all_params(self, item_mode):
    images, tokens = _inputs()
    abstract = nn.unbox(jax.eval_shape(_model(item_mode).init,
                                       jax.random.key(0), images, tokens))
    want = {'image_tower', 'text_tower', 'image_head', 'text_head',
            'log_temperature'}
    if item_mode == 'fused':
      want.add('fuse_head')
    self.assertEqual(set(abstract['params']), want)
    # The shared test variables have exactly this structure.
    self.assertEqual(
        jax.tree.map(lambda x: x.shape, abstract),
        jax.tree.map(lambda x: x.shape, _variables(item_mode)))

  @parameterized.parameters('image', 'text')
  def test_item_mode_uses_its_tower(self, item_mode):
    model = _model(item_mode)
    images, tokens = _inputs(2)

    # __call__ feeds the same inputs as queries and as items.
    out = jax.jit(model.apply)(_variables(item_mode), images, tokens)
    self.assertEqual(out['item'].shape, (B, E))
    np.testing.assert_allclose(_norms(out['item']), 1.0, rtol=1e-5)
    # Items go through the same tower and head as queries of that modality.
    np.testing.assert_allclose(out['item'], out[item_mode], atol=1e-6)

  @parameterized.parameters('fused', 'image', 'text')
  def test_encode_tables_is_each_encoder(self, item_mode):
    model, variables = _model(item_mode), _variables(item_mode)
    images, tokens = _inputs(3)
    apply = lambda method, *x: jax.jit(functools.partial(
        model.apply, method=method))(variables, *x)
    tables = apply('encode_tables', images, tokens)
    np.testing.assert_allclose(tables['item'],
                               apply('encode_item', images, tokens), atol=1e-6)
    np.testing.assert_allclose(tables['image'], apply('encode_image', images),
                               atol=1e-6)
    np.testing.assert_allclose(tables['text'], apply('encode_text', tokens),
                               atol=1e-6)

  def test_one_tower_reads_only_its_modality(self):
    # A titles-only catalogue (MovieLens): the text tower alone, None for
    # images; its outputs are the two-tower model's text path.
    images, tokens = _inputs(2)
    model = multimodal_encoder.MultimodalEncoder(dataclasses.replace(
        _config('text'), modalities=('text',)))
    abstract = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), None,
                                       tokens))
    self.assertEqual(set(abstract['params']),
                     {'text_tower', 'text_head', 'log_temperature'})
    variables = {'params': {k: v for k, v in _variables('text')[
        'params'].items() if k in abstract['params']}}
    full = jax.jit(_model('text').apply)(_variables('text'), images, tokens)
    out = jax.jit(model.apply)(variables, None, tokens)
    self.assertNotIn('image', out)
    np.testing.assert_allclose(out['item'], full['text'], atol=1e-6)
    # Every query goes through the one tower, whatever its flag says.
    query, items = jax.jit(functools.partial(
        model.apply, method='encode_batch'))(
            variables, np.array([True, False, True]), None, tokens, None,
            tokens[:, None])
    np.testing.assert_allclose(query, full['text'], atol=1e-5)
    np.testing.assert_allclose(items[:, 0], full['text'], atol=1e-5)
    tables = jax.jit(functools.partial(model.apply, method='encode_tables'))(
        variables, None, tokens)
    self.assertEqual(set(tables), {'item', 'text'})
    # Fused over one tower: the fused head reads that tower's features alone.
    fused = multimodal_encoder.MultimodalEncoder(dataclasses.replace(
        _config('fused'), modalities=('image',)))
    abstract = nn.unbox(jax.eval_shape(fused.init, jax.random.key(0), images,
                                       None))['params']
    self.assertEqual(set(abstract), {'image_tower', 'image_head', 'fuse_head',
                                     'log_temperature'})
    kernels = [x.shape for x in jax.tree.leaves(abstract['fuse_head'])
               if x.ndim == 2]  # (image width 32 -> 32 hidden -> E), not 64
    self.assertEqual(sorted(kernels), [(32, E), (SMALL_IMAGE.width, 32)])
    with self.assertRaisesRegex(ValueError, "item_mode 'image' needs that "
                                'tower'):
      dataclasses.replace(_config('image'), modalities=('text',))

  def test_outputs_are_unit_vectors(self):
    _, out = _probe()
    for name in ('image', 'batch_items', 'items_flat'):
      np.testing.assert_allclose(_norms(out[name]), 1.0, rtol=1e-5,
                                 err_msg=name)
    # Row 1 is an all-padding text query: zeros, not NaN.
    for name in ('text', 'query', 'batch_query'):
      np.testing.assert_allclose(_norms(out[name]), [1.0, 0.0, 1.0],
                                 rtol=1e-5, err_msg=name)
    self.assertEqual(out['image'].shape, (B, E))
    self.assertAlmostEqual(float(out['temperature']), 0.07, places=6)

  def test_image_uint8_and_float_agree(self):
    _, out = _probe()
    # Both dtypes mean pixel values in [0, 255].
    np.testing.assert_allclose(out['image'], out['image_f32'], atol=1e-6)

  def test_text_padding_invariance(self):
    _, out = _probe()
    np.testing.assert_allclose(out['text'], out['text_padded'], atol=1e-5)
    self.assertTrue(np.isfinite(out['text']).all())

  def test_leading_dims_and_query_selection(self):
    inputs, out = _probe()
    self.assertEqual(out['batch_items'].shape, (B, 2, E))
    np.testing.assert_allclose(out['batch_items'].reshape(-1, E),
                               out['items_flat'], atol=1e-5)
    want = np.where(inputs['is_image'][:, None], out['image'], out['text'])
    np.testing.assert_allclose(out['query'], want, atol=1e-6)
    np.testing.assert_allclose(out['batch_query'], want, atol=1e-5)

  def test_from_dict(self):
    d = ml_collections.ConfigDict(dict(
        image=dict(patch_size=2, width=32),
        text=dict(vocab_size=10, max_len=4), embed_dim=8, item_mode='text'))
    cfg = multimodal_encoder.MultimodalConfig.from_dict(d)
    self.assertEqual(cfg.image.patch_size, 2)
    self.assertEqual(cfg.image.depth, 2)  # Default kept.
    self.assertEqual(cfg.text.vocab_size, 10)
    self.assertEqual(cfg.item_mode, 'text')
    d.item_mod = 'text'
    with self.assertRaises(TypeError):  # Typos fail loudly.
      multimodal_encoder.MultimodalConfig.from_dict(d)
    with self.assertRaisesRegex(ValueError, 'item_mode'):
      _config('both')

  def test_state_shardings(self):
    images, tokens = _inputs()
    mesh = sharding.make_mesh(data=4, model=2)
    shardings = sharding.state_shardings(
        _model().init, jax.random.key(0), images, tokens, mesh=mesh)['params']
    table = shardings['text_tower']['embedding']['embedding']
    self.assertEqual(tuple(table.spec), ('model', None))
    self.assertEqual(tuple(shardings['log_temperature'].spec), ())

  def test_tiny_forward_backward(self):
    """An SCL-style loss (queue InfoNCE + triplet) on a tiny-world batch."""
    h = 2
    q_images, q_tokens = _inputs(5)
    item_images, item_titles = _inputs(6, lead=(B, 1 + h))
    item_titles[0, 2] = 0  # An all-padding title: gradients must stay finite.
    batch = dict(query_is_image=np.array([True, False, True]),
                 query_image=q_images, query_text=q_tokens,
                 item_image=item_images, item_title=item_titles,
                 neg_mask=np.array([[True, False], [False, False],
                                    [True, True]]))

    def loss_fn(model, params, batch, queue):
      variables = {'params': params}
      # Positive and hard negatives stacked as items: (B, 1 + H, E).
      q, k = model.apply(
          variables, batch['query_is_image'], batch['query_image'],
          batch['query_text'], batch['item_image'], batch['item_title'],
          method='encode_batch')
      queue = contrastive.enqueue(queue, jax.lax.stop_gradient(k[:, 0]))
      temperature = model.apply(variables, method='temperature')
      nce = contrastive.info_nce(q, k[:, 0], queue['keys'], temperature,
                                 queue['valid'])
      trip = contrastive.triplet_loss(q, k[:, 0], k[:, 1:],
                                      batch['neg_mask'], 0.2)
      return (nce + trip).mean()

    # Default tower sizes: traced only (compiling them costs seconds).
    model = multimodal_encoder.MultimodalEncoder(
        multimodal_encoder.MultimodalConfig(
            text=text_encoder.TextEncoderConfig(vocab_size=1000, max_len=T)))
    params = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), q_images,
                                     q_tokens))['params']
    grads = jax.eval_shape(
        jax.grad(functools.partial(loss_fn, model)), params, batch,
        contrastive.init_queue(8, 128))
    self.assertEqual(grads['text_tower']['embedding']['embedding'].shape,
                     (1000, 128))

    # The small model: compiled and run.
    model, params = _model(), _variables()['params']
    loss, grads = jax.jit(jax.value_and_grad(
        functools.partial(loss_fn, model)))(
            params, batch, contrastive.init_queue(8, E))
    self.assertTrue(np.isfinite(loss))
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
      self.assertTrue(np.isfinite(g).all(), jax.tree_util.keystr(path))
    self.assertNotEqual(float(grads['log_temperature']), 0.0)
    for name in ('image_tower', 'text_tower', 'image_head', 'text_head',
                 'fuse_head'):
      self.assertGreater(
          sum(float(np.abs(g).sum()) for g in jax.tree.leaves(grads[name])),
          0.0, name)


if __name__ == '__main__':
  absltest.main()
