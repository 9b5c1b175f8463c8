"""Tests for mmrec.sharding (8 fake CPU devices, see conftest.py)."""

from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

from mmrec import sharding


class _Tower(nn.Module):
  """Embedding table (V, D) with logical axes, then a dense head."""
  vocab: int = 16
  embed: int = 4

  @nn.compact
  def __call__(self, ids):  # ids: (B,) int -> (B,) float
    table = self.param(
        'table',
        nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                     ('vocab', 'embed')),
        (self.vocab, self.embed))
    x = jnp.take(table, ids, axis=0)
    return nn.Dense(1)(x)[:, 0]  # Unboxed kernel: replicated.


def _init_fn(model, tx):
  def init(rng):
    params = model.init(rng, jnp.zeros((2,), jnp.int32))['params']
    return {'params': params, 'opt': tx.init(params)}
  return init


class MeshTest(parameterized.TestCase):

  @parameterized.parameters((8, 1), (4, 2), (1, 8))
  def test_shapes(self, data, model):
    mesh = sharding.make_mesh(data, model)
    self.assertEqual(dict(mesh.shape), {'data': data, 'model': model})
    self.assertEqual(mesh.axis_types, (jax.sharding.AxisType.Auto,) * 2)

  def test_minus_one_means_rest(self):
    self.assertEqual(dict(sharding.make_mesh(model=2).shape),
                     {'data': 4, 'model': 2})
    self.assertEqual(dict(sharding.make_mesh(2, -1).shape),
                     {'data': 2, 'model': 4})
    mesh = sharding.make_mesh(devices=jax.devices()[:2])
    self.assertEqual(dict(mesh.shape), {'data': 2, 'model': 1})

  @parameterized.parameters((-1, 3), (9, 1), (4, 4), (-1, -1), (0, 1))
  def test_bad_shape(self, data, model):
    with self.assertRaisesRegex(ValueError, 'devices'):
      sharding.make_mesh(data, model)

  def test_smaller_mesh_takes_the_first_devices_in_one_process(self):
    mesh = sharding.make_mesh(3, 1)
    self.assertEqual(list(mesh.devices.flat), jax.devices()[:3])
    self.assertEqual(list(sharding.make_mesh(1, 1).devices.flat),
                     jax.devices()[:1])
    # Across processes a partial mesh would leave the others' collectives
    # waiting: refused.
    with mock.patch.object(jax, 'process_count', return_value=2):
      with self.assertRaisesRegex(ValueError, 'must use every device'):
        sharding.make_mesh(1, 1)
      self.assertEqual(sharding.make_mesh(8, 1).devices.size, 8)


class _Dev:

  def __init__(self, process_index):
    self.process_index = process_index


class ProcessBlocksTest(absltest.TestCase):

  def test_data_axis_must_be_split_into_process_blocks(self):
    grid = lambda rows: [[_Dev(p) for p in row] for row in rows]
    sharding.check_process_blocks(grid([[0, 0], [0, 0]]))  # One process.
    sharding.check_process_blocks(grid([[0, 0], [0, 0], [1, 1], [1, 1]]))
    sharding.check_process_blocks(grid([[0, 0, 1, 1]]), data_axis=1)
    for bad in ([[0, 1], [0, 1]],  # 'model' across processes
                [[1, 1], [0, 0]],  # Out of process order.
                [[0, 0], [1, 1], [0, 0], [1, 1]]):  # Interleaved.
      with self.assertRaisesRegex(ValueError, 'contiguous blocks'):
        sharding.check_process_blocks(grid(bad))


class ShardingTest(parameterized.TestCase):

  def _shardings(self, mesh_shape, vocab=16):
    mesh = sharding.make_mesh(*mesh_shape)
    init = _init_fn(_Tower(vocab=vocab), optax.adam(1e-2))
    return mesh, sharding.state_shardings(init, jax.random.key(0), mesh=mesh)

  def test_table_row_sharded_on_model(self):
    _, sh = self._shardings((4, 2))
    table = sh['params']['table']
    self.assertEqual(table.spec, P('model', None))
    self.assertEqual(table.shard_shape((16, 4)), (8, 4))
    # Adam moments built from boxed params follow the table.
    self.assertEqual(sh['opt'][0].mu['table'].spec, P('model', None))
    # Step counter and unboxed params are replicated on the mesh.
    for s in (sh['opt'][0].count, sh['params']['Dense_0']['kernel']):
      self.assertTrue(s.is_fully_replicated)
      self.assertLen(s.device_set, 8)

  def test_replicated_when_model_axis_is_one(self):
    _, sh = self._shardings((8, 1))
    self.assertTrue(sh['params']['table'].is_fully_replicated)

  @parameterized.parameters(((4, 2), 15), ((1, 8), 12))
  def test_non_divisible_rows_replicated(self, mesh_shape, vocab):
    _, sh = self._shardings(mesh_shape, vocab)
    self.assertEqual(sh['params']['table'].spec, P(None, None))
    self.assertTrue(sh['params']['table'].is_fully_replicated)

  def test_logical_to_sharding(self):
    mesh = sharding.make_mesh(4, 2)
    abstract = jax.eval_shape(_Tower().init, jax.random.key(0),
                              jnp.zeros((2,), jnp.int32))
    sh = sharding.logical_to_sharding(nn.get_partition_spec(abstract), mesh)
    self.assertEqual(sh['params']['table'].spec, P('model', None))
    self.assertEqual(sh['params']['Dense_0']['bias'].spec, P())
    tree = {'a': ('batch', 'embed'), 'b': None, 'c': ('vocab', 'vocab')}
    sh = sharding.logical_to_sharding(tree, mesh)
    self.assertEqual(sh['a'].spec, P('data', None))
    self.assertEqual(sh['b'].spec, P())
    self.assertEqual(sh['c'].spec, P('model', None))  # An axis used once.
    shapes = {'a': np.zeros((6, 2)), 'b': None, 'c': np.zeros((4, 4))}
    sh = sharding.logical_to_sharding(tree, mesh, shapes=shapes)
    self.assertEqual(sh['a'].spec, P(None, None))  # 6 rows, data=4.

  def test_shard_batch(self):
    mesh = sharding.make_mesh(4, 2)
    batch = {'ids': np.arange(16, dtype=np.int32),
             'x': np.arange(48, dtype=np.float32).reshape(16, 3)}
    out = sharding.shard_batch(batch, mesh)
    for k, v in out.items():
      self.assertEqual(v.sharding, sharding.batch_sharding(mesh))
      np.testing.assert_array_equal(v, batch[k])
      self.assertLen(v.addressable_shards, 8)
      for shard in v.addressable_shards:
        # Rows [4i, 4i + 4) live on both devices of mesh row i.
        i = int(np.argwhere(mesh.devices == shard.device)[0, 0])
        self.assertEqual(shard.index[0], slice(4 * i, 4 * i + 4))
        np.testing.assert_array_equal(shard.data, batch[k][4 * i:4 * i + 4])

  def test_shard_batch_not_divisible(self):
    mesh = sharding.make_mesh(4, 2)
    with self.assertRaisesRegex(ValueError, "'data'"):
      sharding.shard_batch({'x': np.zeros((6, 2))}, mesh)

  @parameterized.parameters((4, 2), (1, 8))
  def test_jit_matches_single_device(self, data, model):
    mesh = sharding.make_mesh(data, model)
    tower, tx = _Tower(), optax.adam(1e-2)
    init = _init_fn(tower, tx)
    state_sh = sharding.state_shardings(init, jax.random.key(0), mesh=mesh)
    state = jax.jit(lambda k: nn.unbox(init(k)),
                    out_shardings=state_sh)(jax.random.key(0))

    def step(state, batch):
      def loss_fn(params):
        logits = tower.apply({'params': params}, batch['ids'])
        return optax.sigmoid_binary_cross_entropy(logits, batch['y']).mean()
      loss, grads = jax.value_and_grad(loss_fn)(state['params'])
      updates, opt = tx.update(grads, state['opt'], state['params'])
      return {'params': optax.apply_updates(state['params'], updates),
              'opt': opt}, loss

    rng = np.random.default_rng(0)
    batch = {'ids': rng.integers(0, 16, 8).astype(np.int32),
             'y': rng.integers(0, 2, 8).astype(np.float32)}
    sharded_step = jax.jit(
        step, in_shardings=(state_sh, sharding.batch_sharding(mesh)),
        out_shardings=(state_sh, sharding.replicated(mesh)))
    new_state, loss = sharded_step(state, sharding.shard_batch(batch, mesh))

    cpu0 = jax.devices()[0]
    ref_state, ref_loss = jax.jit(step)(
        jax.device_put(nn.unbox(init(jax.random.key(0))), cpu0),
        jax.device_put(batch, cpu0))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
                 new_state, ref_state)
    self.assertEqual(new_state['params']['table'].sharding,
                     state_sh['params']['table'])


if __name__ == '__main__':
  absltest.main()
