r"""Benchmarks (`make bench`): long measurements, never timed tests.

  python -m experiments.main --config=experiments/configs/bench.py \
      --workdir=bench_results

Writes `results.json` and `results.md` (one table per benchmark) to the
workdir. `--config.benchmarks=world` runs a subset; `faults` (`make faults`,
bench_faults.py: kills, corruption, a full disk; ~10 min) is not in the
default list and also writes `faults.json` / `faults.md`. The `:tiny` variant
shrinks every workload so the harness itself can be tested in seconds.
"""

import ml_collections

from experiments.configs import world


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.job = 'bench'
  config.benchmarks = ('world,scl_train,embed,ctr_train,gauc,ann,'
                       'serving,nearline')  # see bench.py, bench_serving.py
  config.world = world.get_world_config(arg)
  config.scl_batch_size = 256
  config.timed_steps = 10
  # The SCL step again with both towers this wide (mlp 2x): FLOP fraction vs.
  # width. The default encoder is 64 wide.
  config.scl_widths = (128, 256)
  config.scl_kinds = ('vit', 'conv')  # image towers (image_encoder.KINDS)
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
  # Nearest-neighbour index: generated catalogue (~20 items per concept).
  config.ann_items = 1_000_000
  config.ann_dim = 128
  config.ann_queries = 1000
  config.ann_adds = 1000
  config.ann_kinds = 'ivf'  # 'ivf,hnsw' also builds HNSW (~10x slower)
  config.ann_search_values = (16, 32, 64, 128)  # ivf nprobe / hnsw ef
  # The service under load (loopback, its own process): the default world's
  # model (simtier_official, untrained), 100 candidates per request.
  config.serving_dim = 128
  config.serving_requests = 2000
  config.serving_concurrency = 4
  config.serving_candidates = 100
  config.serving_buckets = (8, 32, 128, 512)
  config.serving_new_items = 200  # at most, one every add_interval_s
  config.serving_add_interval_s = 0.05
  config.serving_reload_after_s = 3.0  # then CURRENT -> v2 (hot reload)
  # Near-line: the 4,000-user demo world (overrides of world.py), the 'id' model
  # trained without its last training day, which is then replayed.
  config.nearline_world = dict(num_users=4000, num_items=3000, num_shops=150,
                               num_days=4)
  config.nearline_segment_records = 20_000
  # The near-line trainer runs in its own process at this niceness (beside
  # the service, as on a shared machine) while this many clients send /score
  # requests (0 = no load): the service's latency while versions publish.
  config.nearline_nice = 10
  config.nearline_load_concurrency = 2
  # Faults (bench_faults.py; `make faults`, not in the default list): kill -9
  # counts, kills per chain before an uninterrupted rerun, how long a burst
  # of adds runs before its kill (uniform, seconds), the own data's rows.
  config.faults_seed = 0
  config.faults_service_kills = 20
  config.faults_export_kills = 10
  config.faults_nearline_kills = 5
  config.faults_convert_kills = 5
  config.faults_chain = 5
  config.faults_burst_s = (0.3, 2.0)
  config.faults_convert_rows = 20_000
  # `peer` (optional, not in the default list; bench_peer.py): our CTR step
  # (the ctr_train GSU setting) beside the authors' MUSE code's `din` step
  # on the same batches, alternating. muse_dir: a checkout of
  # github.com/alimama-tech/MUSE; python: an interpreter with torch, pandas
  # and pyarrow (the [peer] extra; '' = this one).
  config.peer = ml_collections.ConfigDict(dict(
      muse_dir='', python='', method='din', batch_size=1000, history=1000,
      top_k=50, num_batches=4, runs=4, steps=5, seed=0,
      # Test AUC / GAUC of both after one pass over this many batches of a
      # learnable world, per seed (0 = skip); quality_epochs passes over
      # them, scored after each.
      quality_steps=20, quality_epochs=1, quality_test_batches=3,
      quality_seeds=(0, 1, 2)))
  if arg == 'tiny':
    config.scl_batch_size = 16
    config.timed_steps = 2
    config.scl_widths = (32,)
    config.scl_kinds = ('conv',)  # the default tower's row: no ViT compile
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
    config.ann_items = 5000
    config.ann_dim = 32
    config.ann_queries = 50
    config.ann_adds = 20
    config.ann_kinds = 'ivf,hnsw'
    config.serving_dim = 32
    config.serving_requests = 60
    config.serving_concurrency = 2
    config.serving_candidates = 20
    config.serving_buckets = (8, 32)
    config.serving_new_items = 5
    config.serving_reload_after_s = 0.5
    config.nearline_world = {}
    config.nearline_segment_records = 1024
    # The service's faults and one converter kill; the export and near-line
    # kills need a CTR run: the full fault job only.
    config.faults_service_kills = 2
    config.faults_export_kills = 0
    config.faults_nearline_kills = 0
    config.faults_convert_kills = 1
    config.faults_chain = 1
    config.faults_burst_s = (0.3, 0.8)
    config.faults_convert_rows = 2000
    # MUSE's trainer slices the 50 most recent: the history stays above it.
    config.peer.update(batch_size=16, history=60, top_k=8, num_batches=2,
                       runs=2, steps=1, quality_steps=2,
                       quality_test_batches=1, quality_seeds=(0,))
  return config
