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
  config.benchmarks = 'world,scl_train,embed,ctr_train,gauc'  # see bench.py
  config.world = world.get_world_config(arg)
  config.scl_batch_size = 256
  config.timed_steps = 10
  # The SCL step again with both towers this wide (mlp 2x): FLOP fraction vs.
  # width. The default encoder is 64 wide.
  config.scl_widths = (128, 256)
  config.embed_items = 20_000
  config.embed_batch_size = 2048
  config.latency_calls = 200
  # CTR: the trainer's step on the world's vocabulary; L = world.seq_len.
  config.ctr_batch_size = 1000
  config.ctr_num_batches = 4  # different batches, cycled
  config.ctr_tiny = False  # True: the ctr.py:VARIANT,tiny models
  config.long_history = 1000  # the official code's lifelong history
  config.gsu_top_k = 50  # behaviours retrieved from it (official keep_top)
  # The own-data converter (issue 11): 1M impressions with 1000-long
  # histories (Taobao-MM's), of which the last seq_len are kept.
  config.convert_rows = 1_000_000
  config.convert_history = 1000
  config.convert_seq_len = 50
  config.convert_users = 100_000
  config.convert_items = 200_000
  config.convert_chunk_rows = 8192
  config.gauc_rows = 10_000_000
  config.gauc_reference_fraction = 0.01  # of users, for the slow reference
  if arg == 'tiny':
    config.scl_batch_size = 16
    config.timed_steps = 2
    config.scl_widths = (32,)
    config.embed_items = 64
    config.embed_batch_size = 32
    config.latency_calls = 5
    config.ctr_batch_size = 32
    config.ctr_num_batches = 2
    config.ctr_tiny = True
    config.long_history = 40
    config.gsu_top_k = 8
    config.convert_rows = 2000
    config.convert_history = 40
    config.convert_seq_len = 10
    config.convert_users = 100
    config.convert_items = 300
    config.convert_chunk_rows = 500
    config.gauc_rows = 20_000
    config.gauc_reference_fraction = 0.1
  return config
