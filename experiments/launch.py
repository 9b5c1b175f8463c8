r"""N processes of `experiments.main` on this machine, over jax.distributed.

  python -m experiments.launch --num_processes=2 --devices_per_process=4 -- \
      --config=experiments/configs/ctr.py:id,tiny --config.mesh.data=-1 \
      --workdir=/tmp/mmrec/ctr_mp

Everything after `--` goes to every worker, `python -m experiments.main`.
Each worker gets JAX_PLATFORMS=cpu, `devices_per_process` fake CPU devices
(XLA_FLAGS, other XLA flags kept) and, with several processes, a loopback
coordinator (JAX_COORDINATOR_ADDRESS=127.0.0.1:<free port>,
JAX_NUM_PROCESSES, JAX_PROCESS_ID, read by `main._maybe_initialize_distributed`;
CPU collectives go through gloo). The coordinator listens on that loopback
address only (JAX_COORDINATOR_BIND_ADDRESS, read by jax): jax's default is
every interface, which would let anyone on the network join the job. The
job then runs as on several hosts: one global mesh over all processes' devices,
each process reading its slice of every global batch, checkpoints written
collectively to the shared workdir.

Worker output lines are prefixed with `[rank] `. If a worker fails (non-zero
exit or a signal), the others are terminated and the launcher exits non-zero
naming it; rerunning the same command resumes from the workdir's last
checkpoint. Workers die with the launcher (Linux: PR_SET_PDEATHSIG).

Only experiments/main.py defines absl flags: this file parses its own two
arguments with argparse.
"""

import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time

DEVICE_FLAG = '--xla_force_host_platform_device_count'
GRACE_S = 10  # SIGTERM -> SIGKILL


def parse_args(argv):
  """(launcher options, worker arguments) from `[options] -- [main flags]`."""
  split = argv.index('--') if '--' in argv else len(argv)
  parser = argparse.ArgumentParser(
      prog='python -m experiments.launch',
      usage='%(prog)s [--num_processes=N] [--devices_per_process=K] -- '
            '<experiments.main flags>')
  parser.add_argument('--num_processes', type=int, default=2)
  parser.add_argument('--devices_per_process', type=int, default=1)
  args = parser.parse_args(argv[:split])
  if args.num_processes < 1 or args.devices_per_process < 1:
    parser.error('--num_processes and --devices_per_process must be >= 1')
  return args, argv[split + 1:]


def free_port():
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def worker_env(rank, num_processes, devices, address, base=None):
  env = dict(os.environ if base is None else base)
  flags = [f for f in env.get('XLA_FLAGS', '').split()
           if not f.startswith(DEVICE_FLAG)]
  env.update(JAX_PLATFORMS='cpu',
             XLA_FLAGS=' '.join(flags + [f'{DEVICE_FLAG}={devices}']))
  for k in ('JAX_COORDINATOR_ADDRESS', 'JAX_COORDINATOR_BIND_ADDRESS',
            'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID'):
    env.pop(k, None)
  if num_processes > 1:
    # Bound where the workers reach it (loopback), not jax's [::]:port.
    env.update(JAX_COORDINATOR_ADDRESS=address,
               JAX_COORDINATOR_BIND_ADDRESS=address,
               JAX_NUM_PROCESSES=str(num_processes),
               JAX_PROCESS_ID=str(rank))
  return env


def _die_with_parent():
  """Runs in the child before exec: SIGKILL it when the launcher dies."""
  ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _pump(stream, out, prefix, lock):
  for line in iter(stream.readline, b''):
    with lock:
      out.buffer.write(prefix + line)
      out.flush()
  stream.close()


def describe(code):
  if code < 0:
    return f'signal {signal.Signals(-code).name}'
  return f'exit code {code}'


def stop(procs):
  """SIGTERM the live workers, SIGKILL those still alive after GRACE_S."""
  for p in procs:
    if p.poll() is None:
      p.terminate()
  deadline = time.time() + GRACE_S
  for p in procs:
    try:
      p.wait(max(0.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()


def main(argv):
  args, main_args = parse_args(argv)
  n, k = args.num_processes, args.devices_per_process
  address = f'127.0.0.1:{free_port()}'
  print(f'launch: {n} worker(s) x {k} CPU device(s), coordinator {address}',
        file=sys.stderr, flush=True)
  # A SIGTERM to the launcher unwinds through `finally`, stopping the workers.
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
  linux = sys.platform.startswith('linux')
  procs, threads, lock = [], [], threading.Lock()
  try:
    # All workers start before any thread: fork + preexec_fn with threads
    # running can deadlock.
    for rank in range(n):
      procs.append(subprocess.Popen(
          [sys.executable, '-m', 'experiments.main', *main_args],
          env=worker_env(rank, n, k, address), stdin=subprocess.DEVNULL,
          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
          preexec_fn=_die_with_parent if linux else None))
    print('launch: worker pids ' + ' '.join(str(p.pid) for p in procs),
          file=sys.stderr, flush=True)
    for rank, p in enumerate(procs):
      prefix = f'[{rank}] '.encode()
      for stream, out in ((p.stdout, sys.stdout), (p.stderr, sys.stderr)):
        threads.append(threading.Thread(target=_pump, daemon=True,
                                        args=(stream, out, prefix, lock)))
        threads[-1].start()
    failure = first_failure(procs)
    if failure:
      stop(procs)
    for t in threads:
      t.join(5)
    if not failure:
      return 0
    rank, code = failure
    print(f'launch: worker {rank} (pid {procs[rank].pid}) failed with '
          f'{describe(code)}; stopped the other workers.', file=sys.stderr,
          flush=True)
    return code if code > 0 else 128 - code
  finally:
    stop(procs)


def first_failure(procs):
  """Waits for the workers in the order they exit -> (rank, code) of the
  first that fails, or None when all succeed.

  Exit order matters: a worker's death soon makes the others fail too (a
  collective loses its peer), and the first one is the cause.
  """
  rank_of = {p.pid: rank for rank, p in enumerate(procs)}
  left = set(rank_of)
  while left:
    if hasattr(os, 'waitid'):  # Blocks until a child exits; leaves it unreaped.
      pid = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT).si_pid
    else:
      time.sleep(0.1)
      pid = next((p.pid for p in procs
                  if p.pid in left and p.poll() is not None), None)
    if pid not in rank_of and pid is not None:
      os.waitpid(pid, 0)  # Not a worker: reap it, or waitid returns it again.
    if pid not in left:
      continue
    left.discard(pid)
    rank = rank_of[pid]
    code = procs[rank].wait()
    if code:
      return rank, code
  return None


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
