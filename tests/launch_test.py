"""Tests of `experiments.launch`: N processes over jax.distributed == 1 process.

Each run is a subprocess tree (launcher -> workers) on loopback with a
timeout; the whole session is killed if it runs over. The runs share one
persistent compilation cache, so a restart does not recompile.
"""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

from absl.testing import absltest
import fixtures
import jax
import numpy as np

from experiments import launch
from mmrec import checkpointing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300
STEPS = 6  # Checkpoints at 3 and 6.


# Run with a worker's environment: jax.distributed as experiments.main starts
# it, then the local addresses listening on the coordinator's port (argv[1]),
# from /proc/net/tcp{,6}, as hex ('0100007F' is 127.0.0.1, 32 zeros [::]).
_LISTENING = """
import json, sys
import jax
jax.config.update('jax_cpu_collectives_implementation', 'gloo')
jax.distributed.initialize(num_processes=1, process_id=0)
port = '%04X' % int(sys.argv[1])
found = []
for name in ('/proc/net/tcp', '/proc/net/tcp6'):
  with open(name) as f:
    for line in list(f)[1:]:
      local, state = line.split()[1], line.split()[3]
      if state == '0A' and local.endswith(':' + port):  # LISTEN
        found.append(local.rsplit(':', 1)[0])
print(json.dumps(found))
jax.distributed.shutdown()
"""


class _Launch:
  """`experiments.launch` of experiments.main, started now (output to files,
  so concurrent runs never block on a full pipe)."""

  def __init__(self, cache_dir, num_processes, devices, workdir, config,
               *flags, env=None):
    self.cmd = [sys.executable, '-m', 'experiments.launch',
                f'--num_processes={num_processes}',
                f'--devices_per_process={devices}', '--', f'--config={config}',
                f'--workdir={workdir}', '--config.mesh.data=-1', *flags]
    env = {**os.environ, 'JAX_COMPILATION_CACHE_DIR': cache_dir,
           'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0', **(env or {})}
    self._out, self._err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    self._deadline = time.time() + TIMEOUT_S
    self._proc = subprocess.Popen(self.cmd, cwd=ROOT, env=env,
                                  stdout=self._out, stderr=self._err,
                                  start_new_session=True)

  def wait(self):
    """-> (returncode, stdout, stderr); kills the whole tree on timeout."""
    try:
      self._proc.wait(max(1.0, self._deadline - time.time()))
    except subprocess.TimeoutExpired:
      os.killpg(self._proc.pid, signal.SIGKILL)  # Launcher and workers.
      self._proc.wait()
    out, err = (f.seek(0) or f.read().decode(errors='replace')
                for f in (self._out, self._err))
    if self._proc.returncode == -signal.SIGKILL:
      raise AssertionError(f'{self.cmd} ran over {TIMEOUT_S}s:\n'
                           f'{err[-3000:]}')
    return self._proc.returncode, out, err


def _final_state(workdir, step, target=None):
  path = os.path.join(workdir, checkpointing.SUBDIR, str(step))
  return checkpointing.restore_from(path, target)[0]


def _assert_states_close(test, got, want):
  test.assertEqual(jax.tree.structure(got), jax.tree.structure(want))
  for (path, g), w in zip(jax.tree_util.tree_flatten_with_path(got)[0],
                          jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g, np.float64),
                               np.asarray(w, np.float64), rtol=1e-4,
                               atol=1e-4, err_msg=jax.tree_util.keystr(path))


class LauncherUnitTest(absltest.TestCase):

  def test_parses_own_arguments_and_passes_the_rest(self):
    args, rest = launch.parse_args(['--num_processes=3', '--',
                                    '--config=x.py', '--workdir=/w'])
    self.assertEqual((args.num_processes, args.devices_per_process), (3, 1))
    self.assertEqual(rest, ['--config=x.py', '--workdir=/w'])

  def test_first_failure_is_the_first_to_exit(self):
    sh = lambda script: subprocess.Popen(['sh', '-c', script])
    procs = [sh('sleep 1.5; exit 3'), sh('sleep 0.2; kill -9 $$'),
             sh('exit 0')]
    self.assertEqual(launch.first_failure(procs), (1, -signal.SIGKILL))
    launch.stop(procs)
    self.assertEqual(procs[0].returncode, -signal.SIGTERM)
    self.assertIsNone(launch.first_failure([sh('exit 0'), sh('exit 0')]))

  def test_worker_env(self):
    base = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8 --foo',
            'JAX_PROCESS_ID': '7'}
    env = launch.worker_env(1, 2, 4, '127.0.0.1:1234', base)
    self.assertEqual(env['XLA_FLAGS'],
                     '--foo --xla_force_host_platform_device_count=4')
    self.assertEqual(env['JAX_PLATFORMS'], 'cpu')
    self.assertEqual((env['JAX_COORDINATOR_ADDRESS'], env['JAX_NUM_PROCESSES'],
                      env['JAX_PROCESS_ID']), ('127.0.0.1:1234', '2', '1'))
    single = launch.worker_env(0, 1, 8, '127.0.0.1:1234', base)
    self.assertNotIn('JAX_PROCESS_ID', single)
    self.assertNotIn('JAX_COORDINATOR_ADDRESS', single)
    self.assertNotIn('JAX_COORDINATOR_BIND_ADDRESS', single)

  def test_coordinator_listens_on_loopback_only(self):
    """The coordinator rank 0 starts from the launcher's environment listens
    on 127.0.0.1, not on every interface (jax's default, [::]:port)."""
    env = launch.worker_env(0, 2, 1, f'127.0.0.1:{launch.free_port()}')
    self.assertTrue(env['JAX_COORDINATOR_BIND_ADDRESS'].startswith(
        '127.0.0.1:'))
    port = int(env['JAX_COORDINATOR_ADDRESS'].rsplit(':', 1)[1])
    env['JAX_NUM_PROCESSES'] = '1'  # no peer to wait for: it starts at once
    out = subprocess.run(
        [sys.executable, '-c', _LISTENING, str(port)], env=env, cwd=ROOT,
        capture_output=True, text=True, timeout=120, check=True).stdout
    found = json.loads(out)
    self.assertNotEmpty(found)
    # 127.0.0.1, as IPv4 or IPv4-mapped IPv6 (gRPC's choice), and only it.
    self.assertContainsSubset(found, {'0100007F',
                                      '0000000000000000FFFF00000100007F'})


class LaunchTest(absltest.TestCase):
  """2 processes x 4 CPU devices against 1 process x 8 on the same config."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data_dir = fixtures.small_ctr_world_dir()
    cls.cache_dir = tempfile.mkdtemp(prefix='mmrec_launch_cache_')

  def _start(self, n, k, workdir, config, *flags, env=None):
    return _Launch(self.cache_dir, n, k, workdir, config,
                   f'--config.data_dir={self.data_dir}', *flags, env=env)

  def test_scl_two_processes_train_and_evaluate_as_one(self):
    flags = ('experiments/configs/scl.py:scl,tiny',
             f'--config.num_steps={STEPS}', '--config.checkpoint_every=3')
    one, two = tempfile.mkdtemp(), tempfile.mkdtemp()
    # Concurrently: each run waits on collectives and barriers part of the
    # time, so two runs share the cores better than one after the other.
    runs = [self._start(1, 8, one, *flags), self._start(2, 4, two, *flags)]
    for run in runs:
      rc, _, err = run.wait()
      self.assertEqual(rc, 0, err[-3000:])
    want = _final_state(one, STEPS)
    _assert_states_close(self, _final_state(two, STEPS, want), want)
    metrics = []
    for workdir in (one, two):
      with open(os.path.join(workdir, 'pretrain_eval.json')) as f:
        metrics.append(json.load(f)['metrics'])
    self.assertEqual(metrics[0].keys(), metrics[1].keys())
    for name, m in metrics[0].items():
      for key, value in m.items():
        self.assertAlmostEqual(metrics[1][name][key], value, places=6,
                               msg=f'{name}/{key}')

  def test_ctr_killed_worker_stops_all_and_resume_matches_one_process(self):
    flags = ('experiments/configs/ctr.py:id,tiny',
             f'--config.max_steps={STEPS}', '--config.checkpoint_every=3')
    one, two = tempfile.mkdtemp(), tempfile.mkdtemp()
    reference = self._start(1, 8, one, *flags)  # Runs alongside.

    # Worker 1 dies (SIGKILL) when asked to save step 6, after step 3's save.
    rc, _, err = self._start(2, 4, two, *flags, env={
        checkpointing.KILL_AT_SAVE: f'1:{STEPS}'}).wait()
    self.assertNotEqual(rc, 0)
    self.assertRegex(err, r'launch: worker 1 \(pid \d+\) failed with signal '
                     r'SIGKILL; stopped the other workers')
    for pid in re.search(r'launch: worker pids (.*)', err).group(1).split():
      with self.assertRaises(ProcessLookupError):  # Gone and reaped.
        os.kill(int(pid), 0)
    with checkpointing.Checkpointer(os.path.join(two, checkpointing.SUBDIR),
                                    read_only=True) as ckpt:
      self.assertEqual(ckpt.all_steps(), [3])
    self.assertFalse(os.path.exists(os.path.join(two, 'ctr_eval.json')))

    # The same command resumes from step 3 and finishes as one process does.
    rc, _, err = self._start(2, 4, two, *flags).wait()
    self.assertEqual(rc, 0, err[-3000:])
    self.assertRegex(err, r'\[0\] .*resumed from .*checkpoints/3 at step 3')
    self.assertRegex(err, r'\[1\] .*resumed from .*checkpoints/3 at step 3')
    rc, _, err = reference.wait()
    self.assertEqual(rc, 0, err[-3000:])
    want = _final_state(one, STEPS)
    _assert_states_close(self, _final_state(two, STEPS, want), want)
    results = []
    for workdir in (one, two):
      with open(os.path.join(workdir, 'ctr_eval.json')) as f:
        results.append(json.load(f))
    for key in ('auc', 'gauc', 'logloss', 'num_test', 'step'):
      self.assertAlmostEqual(results[1][key], results[0][key], places=5,
                             msg=key)


if __name__ == '__main__':
  absltest.main()
