"""Item vectors made of IDs only: the control for "similarity from content".

A multimodal integration (SimTier, MAKE, ...) could win merely because any
similarity structure over the catalogue helps, not because of what images and
titles show. This table gives every item the unit vector

  [sqrt(w_leaf) onehot(leaf), sqrt(w_top) onehot(top), sqrt(w_shop) onehot(shop)]
  / sqrt(w_leaf + w_top + w_shop)

so the cosine of two items is the weighted count of their matching category
and shop IDs (1 = same leaf, top category and shop; 0 = nothing shared).
Run through the same integration, it measures what ID-level similarity alone
adds; the multimodal gain is then read against it too.
"""

import os

import numpy as np

from mmrec import vector_table

# Leaf and top category weigh as much as each other and twice the shop: the
# leaf is the product type, the top category its department, and a shop
# mixes products (20% of a shop's items lie outside its top category).
WEIGHTS = {'category': 1.0, 'top_category': 1.0, 'shop': 0.5}


def table(items, weights=None):
  """(num_items, D) float32 unit vectors from the items' ID fields.

  `items` holds integer arrays named like `WEIGHTS`' keys, indexed by item id.
  """
  weights = WEIGHTS if weights is None else weights
  missing = [f for f in weights if f not in items]
  if missing:
    raise ValueError(f'ID-similarity vectors need the item fields {missing} '
                     f'(the items table has {sorted(items)})')
  n = len(items[next(iter(weights))])
  parts = []
  for field, w in weights.items():
    ids = np.asarray(items[field])
    if ids.min() < 0:
      raise ValueError(f'item field {field!r} has a negative id {ids.min()}')
    onehot = np.zeros((n, int(ids.max()) + 1), np.float32)
    onehot[np.arange(n), ids] = np.sqrt(w)
    parts.append(onehot)
  return np.concatenate(parts, 1) / np.sqrt(sum(weights.values()))


def write(path, items, weights=None):
  """Writes the table as an item-vector file (vector_table format)."""
  weights = WEIGHTS if weights is None else weights
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  return vector_table.save(path, table(items, weights),
                           {'method': 'id_similarity', 'weights': weights})
