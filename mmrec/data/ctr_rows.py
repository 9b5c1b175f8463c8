"""The CTR model's input rows: ids joined with user and item fields.

One definition of the row layout for every producer of rows: the training
pipeline (pipelines.JoinCtrFields, over the catalogues) and the scoring
service (serving/rows.py, over the vector store's item attributes). numpy
only, so the service can import it.

Shape letters: B rows, L history length, K bag width. A history is stored
right-aligned: the last `seq_len` of its L slots hold the behaviours, the
most recent last; padded slots hold id 0 and mask False.
"""

import numpy as np


def history(seq, seq_len, item_fields, seq_fields, prefix='seq_'):
  """A (B, L) right-aligned history -> {prefix + 'item', prefix + 'mask',
  prefix + f for f in `seq_fields`}; `item_fields[f]` is indexed by item
  ids (a catalogue column, or the service's store columns; a bag's gives
  (B, L, K))."""
  length = seq.shape[1]
  mask = np.arange(length)[None] >= length - np.asarray(seq_len)[:, None]
  out = {f'{prefix}item': np.where(mask, seq, 0), f'{prefix}mask': mask}
  for k in seq_fields:
    v = item_fields[k][seq]  # (B, L), or (B, L, K) of a bag
    out[f'{prefix}{k}'] = np.where(
        mask.reshape(mask.shape + (1,) * (v.ndim - 2)), v, 0)
  return out


def user_key(rows):
  """(N,) the real user of each row: what per-user evaluation (GAUC, the
  user-level bootstrap) groups by.

  A converted dataset stores `user_key`, since its `user_id` maps every
  user unseen (or rare) in training to 0; in the world every user id is a
  real user.
  """
  return rows['user_key'] if 'user_key' in rows else rows['user_id']


def join(b, item_fields, user_fields, seq_fields):
  """Stored impression rows `b` -> the model's rows.

  `b`: user_id, item_id, seq_item (B, L), seq_len, label, day (and, with a
  long history, long_seq_item (B, Lh), long_seq_len). Output: user_id, the
  `user_fields`, item_id, the `item_fields` (a bag: (B, K)), the history
  (`history`), label, day; with a long history also long_seq_item,
  long_seq_<f>, long_seq_mask; and user_key (`user_key`), which no model
  reads. The world: user_id, age, gender, city,
  item_id, category, shop, seq_item, seq_category, seq_mask, label, day.
  """
  out = {k: v[b['user_id']] for k, v in user_fields.items()}
  out.update(user_id=b['user_id'], user_key=user_key(b),
             item_id=b['item_id'])
  out.update({k: v[b['item_id']] for k, v in item_fields.items()})
  out.update(history(b['seq_item'], b['seq_len'], item_fields, seq_fields),
             label=b['label'], day=b['day'])
  if 'long_seq_item' in b:  # a long history (converted real data)
    out.update(history(b['long_seq_item'], b['long_seq_len'], item_fields,
                       seq_fields, prefix='long_seq_'))
  return out
