"""The embedding job: an encoder checkpoint -> the item-vector table.

`config.job = 'embed'` (experiments/configs/embed.py) restores an encoder
from a pre-training workdir (item_encoder.load_encoder) and writes
`<workdir>/item_vectors.npz` (see vector_table.py) atomically. The items come
from `config.data_dir`, by default the dataset the encoder was trained on
(recorded, resolved, in its checkpoint's config). Inference only: it imports
neither the trainer nor the pre-training evaluation.
"""

import os
import time

from absl import logging

from mmrec import item_encoder
from mmrec import vector_table
from mmrec.data import builders


def run(config, workdir):
  """The embedding job: encoder checkpoint -> item-vector table."""
  if not config.encoder_workdir:
    raise ValueError('config.encoder_workdir must name a pre-training workdir')
  encoder, enc_config, step, data_dir = item_encoder.load_encoder(
      config.encoder_workdir, config.data_dir or None,
      batch_size=config.batch_size)
  items = builders.load_table(data_dir, 'mmrec_items', 'catalogue')
  t0 = time.time()
  tables = encoder.item_tables(items.get('image'), items.get('title'))
  seconds = time.time() - t0
  meta = vector_table.save_tables(workdir, tables, {
      'encoder_workdir': os.path.abspath(config.encoder_workdir),
      'encoder_step': step, 'encoder_config': enc_config.to_dict(),
      'method': enc_config.method, 'data_dir': os.path.abspath(data_dir)})
  n = len(tables['item'])
  logging.info('embedded %d items (%s) in %.1fs (%.0f items/s) -> %s', n,
               ', '.join(tables), seconds, n / seconds, workdir)
  return meta
