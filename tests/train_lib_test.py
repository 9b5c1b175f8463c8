"""train_lib.fit on a toy regression: restore precedence, eval history,
forced final checkpoint, bit-identical resume."""

import json
import os
import tempfile

from absl.testing import absltest
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmrec import checkpointing
from mmrec import sharding
from mmrec import train_lib
from mmrec.data import pipelines

_X = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
_Y = _X @ np.array([1.0, -2.0, 0.5], np.float32)
_TX = optax.sgd(0.1)


def _init(rng):
  params = {'w': jax.random.normal(rng, (3,))}
  return train_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                              opt_state=_TX.init(params))


def _step(state, batch, rng):
  del rng
  loss_fn = lambda p: jnp.mean((batch['x'] @ p['w'] - batch['y'])**2)
  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  updates, opt = _TX.update(grads, state.opt_state)
  return state.replace(step=state.step + 1,
                       params=optax.apply_updates(state.params, updates),
                       opt_state=opt), {'loss': loss}


def _dataset():
  ds = grain.MapDataset.range(64).shuffle(seed=0).batch(8, drop_remainder=True)
  return ds.repeat(None).map(lambda i: {'x': _X[i], 'y': _Y[i]})


class FitTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.mesh = sharding.make_mesh()
    cls.programs = train_lib.compile_programs(_init, _step, cls.mesh)

  def _fit(self, workdir, stop_at=0, **kw):
    evals = []

    def evaluate(state, step):
      evals.append(step)
      err = np.mean((_X @ np.asarray(state.params['w']) - _Y)**2)
      return {'mse': err}, None
    loop = train_lib.Loop(
        name='toy', workdir=workdir, num_steps=7, batch_size=8, seed=0,
        config={'toy': True}, checkpoint_every=3, log_every=2,
        evaluate=evaluate, eval_steps=(2, 5), final_eval=True,
        stop_at=stop_at, **kw)
    return train_lib.fit(loop, self.programs,
                         pipelines.iterator(_dataset(), prefetch_threads=1),
                         self.mesh), evals

  def _steps(self, workdir):
    with checkpointing.Checkpointer(
        os.path.join(workdir, checkpointing.SUBDIR), read_only=True) as c:
      return c.all_steps()

  def test_history_final_checkpoint_and_resume(self):
    full_dir = tempfile.mkdtemp()
    full, evals = self._fit(full_dir)
    self.assertEqual(full.step, 7)
    self.assertEqual(evals, [2, 5, 7])
    self.assertEqual([h['step'] for h in full.history], [2, 5, 7])
    self.assertLess(full.history[-1]['mse'], full.history[0]['mse'])
    self.assertEqual(self._steps(full_dir)[-1], 7)  # 7 % 3 != 0: forced
    with open(os.path.join(full_dir, train_lib.HISTORY_FILE)) as f:
      self.assertEqual(json.load(f), full.history)

    part_dir = tempfile.mkdtemp()
    self._fit(part_dir, stop_at=4)  # "killed" after step 4
    self.assertEqual(self._steps(part_dir)[-1], 4)
    resumed, evals = self._fit(part_dir)
    self.assertEqual(evals, [5, 7])  # step 2's evaluation came back restored
    self.assertEqual(resumed.history, full.history)
    np.testing.assert_array_equal(resumed.state.params['w'],
                                  full.state.params['w'])

    again, evals = self._fit(full_dir)  # finished: nothing trains
    self.assertEqual(again.step, 7)
    self.assertEqual(evals, [7])  # only the final state, for its outputs
    self.assertEqual(again.history, full.history)

  def test_non_finite_loss_stops_before_its_checkpoint(self):
    def batch(b):  # step 5 (batch 4) reads NaN inputs
      x = np.full((8, 3), np.nan, np.float32) if b == 4 else _X[:8]
      return {'x': x, 'y': _Y[:8]}
    workdir = tempfile.mkdtemp()
    loop = train_lib.Loop(
        name='toy', workdir=workdir, num_steps=7, batch_size=8, seed=0,
        config={'toy': True}, checkpoint_every=3, log_every=100,
        finite_metrics=('loss',))
    it = pipelines.iterator(grain.MapDataset.range(7).map(batch),
                            prefetch_threads=1)
    with self.assertRaisesRegex(train_lib.NonFiniteError,
                                r'toy: step 5 has \{.loss.: nan\}'):
      train_lib.fit(loop, self.programs, it, self.mesh)
    self.assertEqual(self._steps(workdir), [3])  # nothing after it saved

  def test_init_from_takes_params_only(self):
    src = tempfile.mkdtemp()
    first, _ = self._fit(src)
    got, _ = self._fit(tempfile.mkdtemp(), init_from=src, stop_at=1)
    # Started from the trained params at step 0, so one more step from there.
    want = _step(jax.device_get(first.state).replace(step=0),
                 next(iter(_dataset())), None)[0]
    np.testing.assert_allclose(got.state.params['w'], want.params['w'],
                               rtol=1e-6)


if __name__ == '__main__':
  absltest.main()
