"""Tests for mmrec.checkpointing (8 fake CPU devices, see conftest.py)."""

import gc
import os
import re
import sys

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np
import optax

from mmrec import checkpointing
from mmrec import sharding


def _init(rng):
  """A small train state: boxed params, adam moments, step."""
  k1, k2 = jax.random.split(rng)
  params = {
      'table': nn.with_logical_partitioning(
          lambda k: jax.random.normal(k, (16, 4)), ('vocab', 'embed'))(k1),
      'big': jax.random.normal(k2, (64, 64)),  # Own data file on disk.
      'flag': jnp.array([True, False]),
  }
  return {'params': params, 'opt': optax.adam(1e-3).init(params),
          'step': jnp.array(7, jnp.int32)}


def _state():
  state = nn.unbox(_init(jax.random.key(0)))
  # Non-zero moments so a wrong restore cannot pass by accident.
  state['opt'][0].mu['big'] = state['params']['big'] * 2
  return state


def _abstract(tree):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      tree)


def _dataset():
  return grain.MapDataset.range(100).shuffle(seed=1).batch(4)


def _collect_quietly():
  """Collects the read coroutines orbax leaves behind after a failed restore.

  Else their 'Exception ignored' reports surface as warnings in a later test.
  """
  hook, sys.unraisablehook = sys.unraisablehook, lambda _: None
  try:
    gc.collect()
  finally:
    sys.unraisablehook = hook


def _assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


class CheckpointerTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = os.path.join(self.create_tempdir().full_path, 'checkpoints')

  def _saved(self, step=1, **kwargs):
    """Saves _state() at `step`; returns (state, step directory)."""
    state = _state()
    with checkpointing.Checkpointer(self.dir) as ckpt:
      self.assertTrue(ckpt.save(step, state, **kwargs))
    return state, os.path.join(self.dir, str(step))

  def test_roundtrip(self):
    config = ml_collections.ConfigDict({'lr': 1e-3, 'sizes': (2, 3)})
    state, _ = self._saved(3, config=config)
    with checkpointing.Checkpointer(self.dir) as ckpt:
      self.assertEqual(ckpt.latest_step(), 3)
      restored, cfg = ckpt.restore(target_state=_abstract(state))
    _assert_trees_equal(restored, state)
    self.assertEqual(int(restored['opt'][0].count), 0)
    self.assertIsInstance(restored['opt'][0], optax.ScaleByAdamState)
    self.assertEqual(cfg, {'lr': 1e-3, 'sizes': [2, 3]})

  def test_restore_onto_mesh(self):
    state, _ = self._saved()
    mesh = sharding.make_mesh(4, 2)
    shardings = sharding.state_shardings(_init, jax.random.key(0), mesh=mesh)
    target = jax.eval_shape(
        jax.jit(lambda k: nn.unbox(_init(k)), out_shardings=shardings),
        jax.random.key(0))
    with checkpointing.Checkpointer(self.dir) as ckpt:
      restored, cfg = ckpt.restore(1, target)
    self.assertIsNone(cfg)
    _assert_trees_equal(restored, state)
    self.assertEqual(restored['params']['table'].sharding.spec,
                     P('model', None))
    self.assertEqual(restored['opt'][0].mu['table'].sharding.spec,
                     P('model', None))
    self.assertTrue(restored['opt'][0].count.sharding.is_fully_replicated)
    self.assertEqual(restored['opt'][0].count.sharding.mesh, mesh)

  def test_partial_restore(self):
    state, path = self._saved()
    params, _ = checkpointing.restore_from(
        path, {'params': _abstract(state['params'])}, partial=True)
    self.assertEqual(set(params), {'params'})
    _assert_trees_equal(params['params'], state['params'])

  def test_data_iterator_roundtrip(self):
    it = iter(_dataset())
    for _ in range(3):
      next(it)
    state = _state()
    with checkpointing.Checkpointer(self.dir) as ckpt:
      ckpt.save(3, state, data_iterator=it)
      # Async save: advancing now must not change what was saved.
      expected = [next(it) for _ in range(4)]
    fresh = iter(_dataset())
    with checkpointing.Checkpointer(self.dir) as ckpt:
      ckpt.restore(target_state=_abstract(state), data_iterator=fresh)
    for want in expected:
      np.testing.assert_array_equal(next(fresh), want)
    # A checkpoint without iterator state says so.
    self._saved(4)
    with checkpointing.Checkpointer(self.dir) as ckpt:
      with self.assertRaisesRegex(ValueError, 'no data-iterator state'):
        ckpt.restore(4, _abstract(state), data_iterator=iter(_dataset()))

  def test_steps_interval_and_max_to_keep(self):
    state = {'w': jnp.arange(4.0)}
    with checkpointing.Checkpointer(
        self.dir, max_to_keep=2, save_interval_steps=2) as ckpt:
      self.assertIsNone(ckpt.latest_step())
      saved = [ckpt.save(s, state) for s in range(1, 7)]
      self.assertTrue(ckpt.save(7, state, force=True))
      ckpt.wait()
      # Orbax always takes the first save, then every 2nd step.
      self.assertEqual(saved, [True, True, False, True, False, True])
      self.assertEqual(ckpt.all_steps(), [6, 7])
      self.assertEqual(ckpt.latest_step(), 7)
    self.assertEqual(sorted(os.listdir(self.dir)), ['6', '7'])

  def test_incomplete_checkpoints_ignored(self):
    state, _ = self._saved(2)
    # What a crash leaves: orbax's tmp dir, or a step dir missing its parts.
    for name in ('5.orbax-checkpoint-tmp-1234', '9'):
      os.makedirs(os.path.join(self.dir, name, 'state'))
    with checkpointing.Checkpointer(self.dir) as ckpt:
      self.assertEqual(ckpt.latest_step(), 2)
      self.assertTrue(ckpt.save(3, state))  # Not blocked by step 9.
      ckpt.wait()
      self.assertEqual(ckpt.all_steps(), [2, 3])
    names = os.listdir(self.dir)
    self.assertNotIn('5.orbax-checkpoint-tmp-1234', names)
    self.assertTrue(any(n.startswith('9.incomplete') for n in names))
    source = checkpointing.restore_precedence(os.path.dirname(self.dir))
    self.assertEqual(source.path.name, '3')

  @parameterized.named_parameters(
      ('truncate_array', 'state', 'truncate'),
      ('flip_array_byte', 'state', 'flip'),
      ('truncate_iterator', 'data', 'truncate'),
      ('edit_iterator', 'data', 'edit'),
      ('edit_config', 'config', 'edit'),
      ('drop_metadata', 'state', 'delete_metadata'),
  )
  def test_corrupt_checkpoint_raises(self, item, how):
    state, path = self._saved(1, data_iterator=iter(_dataset()),
                              config={'seed': 1})
    files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(path, item))
             for f in fs if f != 'commit_success.txt']
    target = max(files, key=os.path.getsize)
    with open(target, 'rb') as f:
      data = bytearray(f.read())
    if how == 'truncate':
      data = data[:len(data) // 2]
    elif how == 'flip':  # Silent garbage for orbax: only fingerprints see it.
      data[len(data) // 2] ^= 0x10
    elif how == 'edit':  # Still valid JSON, different numbers.
      data = bytearray(re.sub(rb'\d', b'7', bytes(data), count=1))
    if how == 'delete_metadata':
      os.remove(os.path.join(path, 'state', '_METADATA'))
    else:
      with open(target, 'wb') as f:
        f.write(bytes(data))
    with checkpointing.Checkpointer(self.dir) as ckpt:
      with self.assertRaisesRegex(
          checkpointing.CheckpointError,
          f'step 1 at {re.escape(path)}.*(corrupt|truncated)'):
        ckpt.restore(1, _abstract(state), data_iterator=iter(_dataset()))
    _collect_quietly()

  def test_missing_step(self):
    with checkpointing.Checkpointer(self.dir) as ckpt:
      with self.assertRaisesRegex(FileNotFoundError, 'No complete checkpoint'):
        ckpt.restore()


class RestorePrecedenceTest(absltest.TestCase):

  def test_order(self):
    root = self.create_tempdir().full_path
    work, other, pre = (os.path.join(root, n) for n in ('w', 'o', 'p'))
    state = {'w': jnp.arange(3.0)}
    for d, steps in ((other, (4, 5)), (pre, (9,))):
      with checkpointing.Checkpointer(os.path.join(d, 'checkpoints')) as c:
        for s in steps:
          c.save(s, state)

    def rp(*args, **kwargs):
      source, path = checkpointing.restore_precedence(*args, **kwargs)
      return source, path if path is None else str(path)

    self.assertEqual(rp(work), ('fresh', None))
    self.assertEqual(rp(work, init_from=pre),
                     ('init_from', os.path.join(pre, 'checkpoints', '9')))
    self.assertEqual(rp(work, resume=other, init_from=pre),
                     ('resume', os.path.join(other, 'checkpoints', '5')))
    step4 = os.path.join(other, 'checkpoints', '4')
    self.assertEqual(rp(work, resume=step4), ('resume', step4))
    self.assertEqual(rp(work, init_from=os.path.join(pre, 'checkpoints')),
                     ('init_from', os.path.join(pre, 'checkpoints', '9')))
    with checkpointing.Checkpointer(os.path.join(work, 'checkpoints')) as c:
      c.save(1, state)
    self.assertEqual(rp(work, resume=other, init_from=pre),
                     ('workdir', os.path.join(work, 'checkpoints', '1')))
    with self.assertRaisesRegex(FileNotFoundError, 'resume=.*nowhere'):
      rp(os.path.join(root, 'new'), resume=os.path.join(root, 'nowhere'))
    restored, _ = checkpointing.restore_from(step4, _abstract(state))
    np.testing.assert_array_equal(restored['w'], state['w'])


if __name__ == '__main__':
  absltest.main()
