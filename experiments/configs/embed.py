r"""The embedding job: a pre-trained encoder -> the catalogue's vector table.

  python -m experiments.main --config=experiments/configs/embed.py \
      --config.encoder_workdir=/tmp/mmrec/scl --workdir=/tmp/mmrec/embed

Restores the latest checkpoint of the pre-training workdir, encodes every
catalogue item (sharded over the 'data' axis in batches of `batch_size`) and
writes `item_vectors.npz` (float32 + int8 + metadata) atomically. The world
is read from `data_dir` (default: the encoder's world).
"""

import ml_collections


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.job = 'embed'
  c.encoder_workdir = ''
  c.data_dir = ''
  c.batch_size = 256 if arg == 'tiny' else 2048
  return c
