"""Pre-training accuracy as paper.md defines it, on held-out search sessions.

For each held-out (query, purchased item) pair the purchased item is ranked
by cosine similarity against a fixed candidate set: the purchased items of the
whole held-out set plus the session's own hard negatives (clicked, not
bought), each item once. Reported: accuracy@1 and recall@10, separately for
image and text queries, on all held-out sessions and on those that bought a
new item (never seen in pre-training); and each session's rank
(query_ranks), for paired bootstraps of two encoders over the same queries.
"""

import numpy as np

from mmrec import metrics


def _unit(x):
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _distinct_outside(hard, mask, pool):
  """(S, H) mask of the hard negatives that add a candidate: real, not
  already in `pool` and not an earlier column's item of the same session.
  A duplicate scored twice would count one wrong item twice against the
  purchased one."""
  keep = mask.astype(bool) & ~np.isin(hard, pool)
  for j in range(1, hard.shape[1]):
    keep[:, j] &= ~(hard[:, :j] == hard[:, j:j + 1]).any(1)
  return keep


def query_ranks(sessions, item_vectors, image_query_vectors=None,
                text_query_vectors=None):
  """Each held-out session's 0-based rank of its purchased item.

  Args: as `evaluate`.

  Returns:
    {'image': (S,), 'text': (S,)} int64: the rank (metrics.retrieval_ranks:
    ties pessimistic) for the sessions of that query modality, -1 for the
    others and everywhere when the encoder has no such side. Session i is
    row i of the held-out split: the same query for every encoder, so ranks
    of two encoders pair by row.
  """
  items = _unit(item_vectors)
  purchased = sessions['purchased_item']
  pool = np.unique(purchased)
  pos = np.searchsorted(pool, purchased)
  hard = sessions['hard_negatives']
  hard_mask = _distinct_outside(hard, sessions['hard_negative_mask'], pool)
  out = {}
  for modality, queries in (('image', image_query_vectors),
                            ('text', text_query_vectors)):
    rank = np.full(len(purchased), -1, np.int64)
    rows = np.flatnonzero(sessions['query_is_image'] == (modality == 'image'))
    if queries is not None and len(rows):
      q = _unit(np.asarray(queries)[rows])
      sim = np.concatenate([q @ items[pool].T,
                            np.einsum('qd,qhd->qh', q, items[hard[rows]])], 1)
      mask = np.concatenate([np.ones((len(rows), len(pool)), bool),
                             hard_mask[rows]], 1)
      rank[rows] = metrics.retrieval_ranks(sim, pos[rows], mask)
    out[modality] = rank
  return out


def summarise(ranks, sessions, new_items=None, k=(1, 10)):
  """{'image'|'text'|'image_new'|'text_new': {'accuracy@1', 'recall@10',
  'queries'} or None} from `query_ranks`."""
  out = {}
  purchased = sessions['purchased_item']
  for modality in ('image', 'text'):
    rank = ranks[modality]
    want = sessions['query_is_image'] == (modality == 'image')
    subsets = {modality: want}
    if new_items is not None:
      subsets[f'{modality}_new'] = want & new_items[purchased]
    for name, rows in subsets.items():
      r = rank[rows]
      if not len(r) or (r < 0).any():
        out[name] = None
        continue
      res = {('accuracy@1' if x == 1 else f'recall@{x}'): float(np.mean(
          r < x)) for x in k}
      res['queries'] = int(len(r))
      out[name] = res
  return out


def evaluate(sessions, item_vectors, image_query_vectors=None,
             text_query_vectors=None, new_items=None, k=(1, 10)):
  """Retrieval metrics of one encoder.

  Args:
    sessions: the held-out search split as a dict of arrays
      (query_is_image, purchased_item, hard_negatives, hard_negative_mask).
    item_vectors: (num_items, D) vectors of every catalogue item.
    image_query_vectors: (S, D) vectors of every session's query image (rows
      of text sessions are ignored), or None if the encoder has no image side.
    text_query_vectors: (S, D) likewise for query texts.
    new_items: optional (num_items,) bool, True for items new on the test day.
    k: retrieval cut-offs.

  Returns:
    {'image': {...}, 'text': {...}, 'image_new': ..., 'text_new': ...}, each
    {'accuracy@1', 'recall@10', 'queries'}; None where not applicable.
  """
  return summarise(query_ranks(sessions, item_vectors, image_query_vectors,
                               text_query_vectors), sessions, new_items, k)
