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
  config.benchmarks = 'world'  # comma-separated subset of experiments.bench
  config.world = world.get_world_config(arg)
  return config
