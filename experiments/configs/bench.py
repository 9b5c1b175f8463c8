r"""Benchmarks (`make bench`): long measurements, never timed tests.

  python -m experiments.main --config=experiments/configs/bench.py \
      --workdir=bench_results

Writes `results.json` and `results.md` (one table per benchmark) to the
workdir. `--config.benchmarks=world` runs a subset. The `:tiny` variant
shrinks every workload so the harness itself can be tested in seconds.
"""

import ml_collections

from experiments.configs import world


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.job = 'bench'
  config.benchmarks = 'world,scl_train,embed'  # subset of experiments.bench
  config.world = world.get_world_config(arg)
  config.scl_batch_size = 256
  config.timed_steps = 10
  config.embed_items = 20_000
  config.embed_batch_size = 2048
  config.latency_calls = 200
  if arg == 'tiny':
    config.scl_batch_size = 16
    config.timed_steps = 2
    config.embed_items = 64
    config.embed_batch_size = 32
    config.latency_calls = 5
  return config
