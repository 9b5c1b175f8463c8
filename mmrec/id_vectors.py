"""Item vectors made of IDs only: the control for "similarity from content".

A multimodal integration (SimTier, MAKE, ...) could win merely because any
similarity structure over the catalogue helps, not because of what images and
titles show. This table gives every item the unit vector

  [sqrt(w_leaf) onehot(leaf), sqrt(w_top) onehot(top), sqrt(w_shop) onehot(shop)]
  / sqrt(w_leaf + w_top + w_shop)

so the cosine of two items is the weighted count of their matching category
and shop IDs (1 = same leaf, top category and shop; 0 = nothing shared).
Run through the same integration, it measures what ID-level similarity alone
adds; the multimodal gain is then read against it too. Real data uses its
declared category fields, or without one its category bag (`bag_table`:
MovieLens genres), so the control runs there too.
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


def bag_table(bag):
  """(num_items, V) float32 unit vectors of a multi-valued field (a bag,
  (num_items, K) ids, 0 = empty slot): the cosine of two items is their
  shared values over sqrt(|a| |b|) (MovieLens genres standing in for a
  category). An item without values gets column 0 ('none')."""
  bag = np.asarray(bag)
  n = len(bag)
  hot = np.zeros((n, int(bag.max(initial=0)) + 1), np.float32)
  hot[np.repeat(np.arange(n), bag.shape[1]), bag.ravel()] = 1.0
  hot[:, 0] = ~hot[:, 1:].any(1)
  return hot / np.linalg.norm(hot, axis=1, keepdims=True)


def fields_of(items, category_fields=(), category_bag=None):
  """(weights, bag) the control is made of for a dataset: the world's
  WEIGHTS fields if the items have them, else its declared category fields
  (manifest ctr.category_fields: leaf and top weigh alike), else its
  category bag; (None, None) if it has none."""
  weights = {f: w for f, w in WEIGHTS.items() if f in items}
  if weights:
    return weights, None
  if category_fields:
    return {f: 1.0 for f in category_fields}, None
  if category_bag:
    return None, category_bag
  return None, None


def write(path, items, weights=None, bag=None):
  """Writes the table as an item-vector file (vector_table format): of the
  ID fields `weights`, or of the bag field named `bag`."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  if bag is not None:
    return vector_table.save(path, bag_table(items[bag]),
                             {'method': 'id_similarity', 'bag': bag})
  weights = WEIGHTS if weights is None else weights
  return vector_table.save(path, table(items, weights),
                           {'method': 'id_similarity', 'weights': weights})
