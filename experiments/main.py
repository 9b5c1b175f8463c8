r"""The one entry point: `python -m experiments.main --config=... --workdir=...`.

The config's `job` field picks what runs (see experiments/README.md):
  world  build the synthetic marketplace (experiments/configs/world.py)
  data   convert a local copy of real data (experiments/configs/data.py)
  scl    pre-train an item encoder: SCL or a baseline (configs/scl.py)
  embed  encoder checkpoint -> item-vector table (configs/embed.py)
  export  CTR checkpoint -> servable model version + vector store + index
          (configs/export.py)
  nearline  the batch CTR model trained on logged impression segments, each
            result exported for the service (configs/nearline.py)
  pretrain_sweep  every pre-training method x seeds -> table
  queue_study  SCL negatives x keys, queue size, momentum -> table
               (configs/queue_study.py)
  ctr    train + evaluate a CTR model / integration variant (configs/ctr.py)
  ctr_sweep  every CTR variant x seeds -> table vs. the ID model
  bench  benchmarks, results as JSON + markdown (experiments/configs/bench.py)
  reproduce  the paper end to end -> results.json + report.md + plots
             (experiments/configs/paper.py)

Override any config field from the command line, e.g.
`--config=experiments/configs/world.py:tiny --config.world.seed=3`.
Multi-host: when the environment names a coordinator (JAX_COORDINATOR_ADDRESS,
or a SLURM / cloud TPU job), `jax.distributed.initialize()` runs first, with
JAX_NUM_PROCESSES / JAX_PROCESS_ID when set (jax reads only the address).
`python -m experiments.launch` starts N such processes on one machine.
"""

import importlib
import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from mmrec import train_lib

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file, optionally with ":arg".',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for all outputs.')
flags.mark_flags_as_required(['config', 'workdir'])

COMPILATION_CACHE = 'jax_cache'  # in the workdir

# job -> module with `run(config, workdir)`.
JOBS = {
    'world': 'mmrec.data.build',
    'data': 'mmrec.data.dataset_job',
    'bench': 'experiments.bench',
    'scl': 'mmrec.train_scl',
    'embed': 'mmrec.embed',
    'export': 'mmrec.serving.export',
    'nearline': 'mmrec.serving.nearline',
    'ctr': 'mmrec.train_ctr',
    'pretrain_sweep': 'experiments.pretrain_sweep',
    'realdata_bench': 'experiments.realdata_bench',
    'queue_study': 'experiments.queue_study',
    'ctr_sweep': 'experiments.ctr_sweep',
    'reproduce': 'experiments.reproduce',
}


def _maybe_initialize_distributed():
  env = os.environ
  if not any(k in env for k in ('JAX_COORDINATOR_ADDRESS', 'SLURM_JOB_ID',
                                'TPU_WORKER_HOSTNAMES')):
    return
  if jax.config.jax_cpu_collectives_implementation in (None, 'none'):
    # Cross-process collectives on CPU (gloo is the default from jax 0.5 on).
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  kwargs = {}
  if 'JAX_NUM_PROCESSES' in env:  # Else auto-detected (SLURM, TPU).
    kwargs['num_processes'] = int(env['JAX_NUM_PROCESSES'])
  if 'JAX_PROCESS_ID' in env:
    kwargs['process_id'] = int(env['JAX_PROCESS_ID'])
  jax.distributed.initialize(**kwargs)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  train_lib.quiet_library_logs()
  _maybe_initialize_distributed()
  config = _CONFIG.value
  if config.job not in JOBS:
    raise app.UsageError(f'config.job = {config.job!r}; known jobs: '
                         f'{sorted(JOBS)}')
  logging.info('job %s, process %d of %d, devices: %s', config.job,
               jax.process_index(), jax.process_count(), jax.devices())
  workdir = os.path.abspath(os.path.expanduser(_WORKDIR.value))
  created = not os.path.exists(workdir)
  os.makedirs(workdir, exist_ok=True)
  try:
    _run(config, workdir)
  except BaseException:
    if created:  # A failed run leaves no empty directory behind.
      _remove_if_empty(workdir)
    raise


def _remove_if_empty(workdir):
  """Removes `workdir` if it holds nothing but an empty compilation cache."""
  for path in (os.path.join(workdir, COMPILATION_CACHE), workdir):
    try:
      os.rmdir(path)  # only ever removes an empty directory
    except OSError:
      pass


def _run(config, workdir):
  """The job of `config` in `workdir` (which exists)."""
  # The world and data jobs' workdir is the dataset itself (built aside,
  # renamed in): they compile nothing, so no cache there.
  if (config.job not in ('world', 'data') and
      not jax.config.jax_compilation_cache_dir):
    # Seeds and variants of a sweep compile the same programs: on a 2-core
    # CPU the persistent cache saves ~5 s per run. JAX_COMPILATION_CACHE_DIR
    # in the environment takes precedence.
    jax.config.update('jax_compilation_cache_dir',
                      os.path.join(workdir, COMPILATION_CACHE))
  importlib.import_module(JOBS[config.job]).run(config, workdir)


if __name__ == '__main__':
  app.run(main)
