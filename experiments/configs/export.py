r"""Export a trained CTR model for serving (and build the store it reads).

  python -m experiments.main --config=experiments/configs/export.py \
      --config.ctr_workdir=/tmp/mmrec/ctr_id --workdir=/tmp/mmrec/serving

Reads the CTR run's latest checkpoint and writes, under `serving_dir`
(default: the workdir), `models/v{step}/` (jax.export program, variables,
manifest) and points `models/CURRENT` at it; builds `vectors/` (the int8
vector store with item attributes) and `index/` (faiss IVF) from the run's
`item_vectors.npz` unless the store already holds that table. A new table
(the next batch embedding) becomes a new store version that also holds the
items added through the service since (same ids), and the service switches
to it with the model version exported against it. Seconds on a 2-core CPU
for the demo world. `:tiny` shrinks the item capacity and buckets.
`--config.only_if_none=True` (make serve) exports only into a serving
directory that has no current model version yet.
"""

import ml_collections


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.job = 'export'
  c.ctr_workdir = ''
  c.serving_dir = ''  # '' = the workdir
  # The store's table for a model that reads no vectors ('id'); '' = the
  # CTR run's config.vectors_path (always used for models reading vectors).
  c.vectors_path = ''
  # Rows of the served item tables: room for items added after training
  # (new items get a zero ID embedding). Past it, export again, larger.
  c.item_capacity = 65536
  # Padded batch sizes: one compiled program each (a request of 100
  # candidates runs at 128).
  c.buckets = (8, 32, 128, 512)
  # True: a serving_dir whose models/CURRENT names a whole version is left
  # as it is (no export, CURRENT not moved back from a newer near-line
  # version); `make serve` sets it unless EXPORT=1.
  c.only_if_none = False
  if arg == 'tiny':
    c.item_capacity = 4096
    c.buckets = (8, 64)
  return c
