r"""Near-line training: the batch CTR model keeps learning from logged
impressions, one closed segment at a time, and each result is served.

  python -m experiments.main --config=experiments/configs/nearline.py \
      --config.ctr_workdir=<batch ctr run> --config.serving_dir=<serving> \
      --workdir=/tmp/mmrec/nearline

Warm-starts from the batch run's latest checkpoint, trains on every closed
segment of `log_dir` in order (mmrec/serving/nearline.py: committed atomically,
restartable at any point), exports each result into `serving_dir` (if set)
and points its `models/CURRENT` there. `replay_split` first writes a stored
split's impressions as segments (the batch run trained with
`--config.validation=True` and `replay_split='validation'` replays the held-
out last training day: the model then catches up on the day before the
test day). With `evaluate`, writes the test-day AUC / GAUC of the frozen
batch model and of the near-line one to `nearline.json`.
`:tiny`: small segments.
"""

import ml_collections


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.job = 'nearline'
  c.ctr_workdir = ''  # the batch run: model, optimizer state, config
  c.log_dir = ''  # '' = <workdir>/log
  c.serving_dir = ''  # '' = train only, export nothing
  c.replay_split = ''  # e.g. 'validation' or 'test': write it as segments
  c.replay_rows = 0  # 0 = the whole split
  c.segment_records = 20_000  # a multiple of the batch size: no rows left
  c.batch_size = 0  # 0 = the batch run's
  c.checkpoint_every = 10
  c.max_segments = 0  # 0 = all
  c.follow = False  # True: keep polling log_dir for newly closed segments
  c.poll_s = 5.0
  c.evaluate = False
  # Export (as experiments/configs/export.py).
  c.item_capacity = 65536
  c.buckets = (8, 32, 128, 512)
  if arg == 'tiny':
    c.segment_records = 512
    c.checkpoint_every = 2
    c.item_capacity = 4096
    c.buckets = (8, 64)
  return c
