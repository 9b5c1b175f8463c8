"""Pre-training accuracy: held-out search sessions, or held-out co-clicks.

Search (where the dataset has a search log): each held-out (query, purchased
item) pair is ranked two ways.
- paper.md's protocol (`query_ranks`): by cosine similarity against a fixed
  pool: the purchased items of the whole held-out set plus the session's own
  hard negatives (clicked, not bought), each item once. Slices 'image',
  'text', 'image_new', 'text_new' (queries that bought a new item, never
  seen in pre-training).
- Against the catalogue (`query_ranks` with `candidates`): every distinct
  item content (or the dataset's declared candidate set), so an item the
  pool leaves out (another listing of the sought concept, an unsold
  bestseller) counts against the target as it would in a real search.
  Slices '<slice>_catalogue'.
Reported: accuracy@1 and recall@10 per slice, and each session's rank, for
paired bootstraps of two encoders over the same queries.

Co-clicks (`catalogue_ranks`, for data without a search log): the query is
an item a user clicked before the test days (the newest behaviour of a
test-day click's history), the answer the item clicked on the test day,
ranked against the catalogue. Why this task: it is the similarity the
CTR stage reads (SimTier and MAKE compare the target with the history's
items by cosine), it exists in every dataset with clicks and histories, and
every method can be scored on the same queries, the one-modality references
included. Image -> title retrieval of held-out items would measure only the
image-title alignment CLIP-E is trained for, which the references cannot
do and the CTR stage never uses.

Validation and test: the held-out queries are split in two fixed parts
(`validation_part`: a hash of the session's id, or of the co-click pair), each
query in the same part for every method, seed and run. What a pipeline
chooses (a default, the CTR stage's vectors) is chosen on 'validation'; the
tables and claims report 'test'. The ranking itself is shared: every query is
ranked once, against the same pool or catalogue, and each part's metrics are
its queries' ranks (so the pool of paper.md's protocol still holds the
purchased items of all held-out sessions).

Duplicates are removed in both catalogue rankings: items with identical
content (every vector table is a function of image and title) are one
candidate (`canonical_items`), each co-click (query, answer) pair counts
once, and a co-click query's own item is not a candidate. A dataset may
declare its candidate set (manifest `retrieval_candidates`); the targets
are always candidates.
"""

import hashlib

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


# The share of held-out queries in the validation part. Half: the selection
# compares methods whose recall@10 differ by a few points, and the test
# claims keep half the queries (intervals ~1.4x those of the whole set).
VALIDATION_SHARE = 0.5
PARTS = ('validation', 'test')


def _mix64(x):
  """splitmix64's finaliser: a fixed, well-spread hash of uint64 keys."""
  x = np.asarray(x).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def validation_part(keys, share=VALIDATION_SHARE):
  """(N,) bool: True for the held-out queries of the validation part.

  keys: (N,) non-negative ints naming each query apart from where it sits:
  a search session's `session_id`, a co-click pair's `co_click_keys`. A
  hash of the key, not a draw over rows: a query stays in its part whatever
  else is held out, in whatever order, for every method, seed and run.
  """
  keys = np.asarray(keys)
  if keys.size and keys.min() < 0:
    raise ValueError(f'query keys must be non-negative, got {keys.min()}')
  return (_mix64(keys) >> np.uint64(11)) < np.uint64(int(share * 2 ** 53))


def co_click_keys(pairs):
  """(Q,) uint64 key of each (query, target) pair of canonical ids: both
  ids, so a pair is one query wherever it was read."""
  pairs = np.asarray(pairs, np.int64)
  if len(pairs) and (pairs.min() < 0 or pairs.max() >= 2 ** 32):
    raise ValueError('co-click item ids must be in [0, 2**32)')
  return (pairs[:, 0].astype(np.uint64) << np.uint64(32)) | pairs[:, 1].astype(
      np.uint64)


def hits(rank, k=(1, 10)):
  """{'accuracy@1', 'recall@<k>'..., 'queries'} of 0-based ranks, or None
  without queries or where a rank is -1 (not asked)."""
  if not len(rank) or (rank < 0).any():
    return None
  res = {('accuracy@1' if x == 1 else f'recall@{x}'): float(np.mean(rank < x))
         for x in k}
  res['queries'] = int(len(rank))
  return res


def _queries(sessions, image_query_vectors, text_query_vectors):
  """(modality, its sessions' rows, their unit query vectors or None where
  the encoder has no such side or no session asks) for image and text."""
  for modality, queries in (('image', image_query_vectors),
                            ('text', text_query_vectors)):
    rows = np.flatnonzero(sessions['query_is_image'] == (modality == 'image'))
    q = (_unit(np.asarray(queries)[rows])
         if queries is not None and len(rows) else None)
    yield modality, rows, q


def query_ranks(sessions, item_vectors, image_query_vectors=None,
                text_query_vectors=None, candidates=None, canonical=None,
                chunk=256):
  """Each held-out session's 0-based rank of its purchased item.

  Args: as `evaluate`, and
    candidates: None (paper.md's pool of held-out purchases and hard
      negatives), or sorted (C,) item ids ranked instead (`candidates`),
      holding every purchased item's canonical id.
    canonical: (num_items,) `canonical_items`, with `candidates`: the
      purchased item is ranked as its canonical id.
    chunk: queries scored at once against the candidates.

  Returns:
    {'image': (S,), 'text': (S,)} int64: the rank (metrics.retrieval_ranks:
    random tie-breaking) for the sessions of that query modality, -1 for the
    others and everywhere when the encoder has no such side. Session i is
    row i of the held-out split: the same query for every encoder, so ranks
    of two encoders pair by row.
  """
  items = _unit(item_vectors)
  purchased = sessions['purchased_item']
  if candidates is not None:
    return _catalogue_query_ranks(sessions, items, image_query_vectors,
                                  text_query_vectors, candidates,
                                  canonical[purchased], chunk)
  pool = np.unique(purchased)
  pos = np.searchsorted(pool, purchased)
  hard = sessions['hard_negatives']
  hard_mask = _distinct_outside(hard, sessions['hard_negative_mask'], pool)
  out = {}
  for modality, rows, q in _queries(sessions, image_query_vectors,
                                    text_query_vectors):
    rank = np.full(len(purchased), -1, np.int64)
    if q is not None:
      sim = np.concatenate([q @ items[pool].T,
                            np.einsum('qd,qhd->qh', q, items[hard[rows]])], 1)
      mask = np.concatenate([np.ones((len(rows), len(pool)), bool),
                             hard_mask[rows]], 1)
      rank[rows] = metrics.retrieval_ranks(sim, pos[rows], mask)
    out[modality] = rank
  return out


def _catalogue_query_ranks(sessions, items, image_query_vectors,
                           text_query_vectors, candidates, target, chunk):
  pos = np.searchsorted(candidates, target)
  if (pos >= len(candidates)).any() or (candidates[np.minimum(
      pos, len(candidates) - 1)] != target).any():
    raise ValueError('every purchased item must be a candidate')
  cand = items[candidates]
  out = {}
  for modality, rows, q in _queries(sessions, image_query_vectors,
                                    text_query_vectors):
    rank = np.full(len(target), -1, np.int64)
    if q is not None:
      for lo in range(0, len(rows), chunk):
        sel = rows[lo:lo + chunk]
        rank[sel] = metrics.retrieval_ranks(q[lo:lo + chunk] @ cand.T,
                                            pos[sel], seed=lo)
    out[modality] = rank
  return out


def concept_ranks(sessions, item_vectors, image_query_vectors,
                  text_query_vectors, candidates, concept, top=10, chunk=256):
  """Each held-out session's 0-based place of the first candidate of the
  purchased item's concept against the catalogue (the world's diagnostic).

  `concept`: (num_items,) the oracle's item_concept. The world's buyer picks
  one of ~20 listings of the sought concept, which no encoder can tell apart
  by content, so exact-item ranking against the catalogue is capped near
  10 / 20 at recall@10; this slice shows whether the concept was found.

  Returns {'image': (S,), 'text': (S,)} int64 as `query_ranks`: the place
  among the top `top` candidates, `top` when none of them is of the concept,
  -1 for sessions of the other modality and where the encoder has no such
  query.
  """
  items = _unit(item_vectors)[candidates]
  cand_concept = concept[candidates]
  want = concept[sessions['purchased_item']]
  out = {}
  for modality, rows, q in _queries(sessions, image_query_vectors,
                                    text_query_vectors):
    first = np.full(len(want), -1, np.int64)
    for lo in range(0, len(rows) if q is not None else 0, chunk):
      sim = q[lo:lo + chunk] @ items.T
      best = np.argpartition(-sim, top - 1, axis=1)[:, :top]
      order = np.take_along_axis(sim, best, 1).argsort(1)[:, ::-1]
      best = np.take_along_axis(best, order, 1)
      hit = cand_concept[best] == want[rows[lo:lo + chunk], None]
      first[rows[lo:lo + chunk]] = np.where(hit.any(1), hit.argmax(1), top)
    out[modality] = first
  return out


def summarise(ranks, sessions, new_items=None, k=(1, 10)):
  """{'image'|'text'|'image_new'|'text_new': {'accuracy@1', 'recall@10',
  'queries'} or None} from `query_ranks` (the modalities `ranks` has)."""
  out = {}
  purchased = sessions['purchased_item']
  for modality in ('image', 'text'):
    if modality not in ranks:
      continue
    rank = ranks[modality]
    want = sessions['query_is_image'] == (modality == 'image')
    subsets = {modality: want}
    if new_items is not None:
      subsets[f'{modality}_new'] = want & new_items[purchased]
    for name, rows in subsets.items():
      out[name] = hits(rank[rows], k)
  return out


def evaluate(sessions, item_vectors, image_query_vectors=None,
             text_query_vectors=None, new_items=None, k=(1, 10),
             candidates=None, canonical=None):
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
    candidates, canonical: as `query_ranks` (None: paper.md's pool).

  Returns:
    {'image': {...}, 'text': {...}, 'image_new': ..., 'text_new': ...}, each
    {'accuracy@1', 'recall@10', 'queries'}; None where not applicable.
  """
  return summarise(query_ranks(sessions, item_vectors, image_query_vectors,
                               text_query_vectors, candidates, canonical),
                   sessions, new_items, k)


# --------------------------------------------------------------------------
# Held-out co-clicks ranked against the catalogue (data without a search log).


def canonical_items(items, fields=('image', 'title')):
  """(N,) int: each item's smallest id with identical content.

  Content is the item's `fields` that the table has: two listings of one
  product (or items with neither image nor title) get identical vectors from
  every encoder, so they are one candidate, not a tie the target loses.
  """
  present = [f for f in fields if f in items]
  n = len(next(iter(items.values())))
  if not present:
    return np.arange(n)
  parts = [np.ascontiguousarray(np.asarray(items[f]).reshape(n, -1))
           for f in present]
  # A digest per item instead of np.unique over whole rows: the rows of a
  # large catalogue's images are gigabytes.
  keys = np.array([hashlib.blake2b(b''.join(p[i].tobytes() for p in parts),
                                   digest_size=16).digest()
                   for i in range(n)], dtype='S16')
  _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
  return first[inverse.reshape(-1)]


def co_click_pairs(query_item, target_item, canonical, max_pairs=None):
  """Distinct (query, target) pairs in canonical ids, in first-seen order.

  Drops pairs involving item 0 (converted data's rare-or-unknown bucket, no
  one item's content) and pairs whose two items are one (canonical) item.
  """
  q = canonical[np.asarray(query_item)]
  t = canonical[np.asarray(target_item)]
  keep = (np.asarray(query_item) > 0) & (np.asarray(target_item) > 0) & (
      q != t)
  pairs = np.stack([q[keep], t[keep]], 1)
  if not len(pairs):
    return np.zeros((0, 2), np.int64)
  _, first = np.unique(pairs, axis=0, return_index=True)
  pairs = pairs[np.sort(first)]
  return pairs[:max_pairs] if max_pairs else pairs


def catalogue_candidates(canonical, targets=(), declared=None,
                         reserved_zero=True):
  """Sorted candidate ids: one per distinct content, canonical ids.

  Args:
    canonical: (num_items,) `canonical_items`.
    targets: item ids that must be candidates (the answers ranked).
    declared: the dataset's candidate set (item ids), or None for the
      whole catalogue.
    reserved_zero: item 0 is converted data's rare-or-unknown bucket (no one
      item's content) and no candidate; the world's item 0 is a real item.
  """
  base = np.arange(len(canonical)) if declared is None else np.asarray(
      declared, np.int64)
  if reserved_zero:
    base = base[base > 0]
  return np.union1d(canonical[base],
                    canonical[np.asarray(targets, np.int64)])


def catalogue_ranks(query_vectors, pairs, item_vectors, candidates,
                    chunk=256):
  """(Q,) 0-based rank of each pair's target among the candidates.

  Args:
    query_vectors: (Q, D) the query of each pair (e.g. a vector table's row
      of the query item).
    pairs: (Q, 2) (query item, target item), the target in `candidates`.
    item_vectors: (num_items, D) the table ranked.
    candidates: sorted (C,) item ids.
    chunk: queries scored at once ((chunk, C) similarities).

  The count of other candidates scoring above the target plus its place
  among the tied ones, drawn uniformly (metrics.retrieval_ranks), never
  counting the query's own item (a candidate or not).
  """
  cand = _unit(np.asarray(item_vectors)[candidates])
  q = _unit(query_vectors)
  pos_t = np.searchsorted(candidates, pairs[:, 1])
  out = np.empty(len(pairs), np.int64)
  for lo in range(0, len(pairs), chunk):
    hi = min(lo + chunk, len(pairs))
    sim = q[lo:hi] @ cand.T
    mask = candidates[None, :] != pairs[lo:hi, :1]
    out[lo:hi] = metrics.retrieval_ranks(sim, pos_t[lo:hi], mask, seed=lo)
  return out


# The co-click slices: name -> (the query's table, the table ranked).
CO_CLICK_RUNS = {'item': ('item', 'item'), 'image': ('image', 'item'),
                 'text': ('text', 'item'),
                 'image_on_image': ('image', 'image'),
                 'text_on_text': ('text', 'text')}


def co_click_ranks(tables, pairs, candidates):
  """{slice: (Q,) rank} of one encoder's vector tables on co-click pairs, -1
  where the encoder has no such table.

  tables: {'item', optionally 'image', 'text'}: (num_items, D) tables, as
  Encoder.item_tables; pairs, candidates: as catalogue_ranks. Slices (a
  query is the query item's vector in a table): 'item' (item table on item
  table: SimTier's cosine), 'image' / 'text' (that tower's vector on the
  item table, as a search query of that modality), 'image_on_image' /
  'text_on_text' (on its own table).
  """
  ranks = {}
  for name, (query, ranked) in CO_CLICK_RUNS.items():
    rank = np.full(len(pairs), -1, np.int64)
    if query in tables and ranked in tables and len(pairs):
      rank = catalogue_ranks(tables[query][pairs[:, 0]], pairs,
                             tables[ranked], candidates)
    ranks[name] = rank
  return ranks


def co_click_summary(ranks, pairs, new_items=None, k=(1, 10)):
  """{slice: {'accuracy@1', 'recall@10', 'queries'} or None} from
  `co_click_ranks` (of any subset of the pairs, with those pairs), plus
  '<slice>_new' of 'item', 'image', 'text' where `new_items` (a (num_items,)
  bool) is given: the pairs whose target is new."""
  out = {}
  new = (np.zeros(len(pairs), bool) if new_items is None else
         np.asarray(new_items)[pairs[:, 1]])
  for name in CO_CLICK_RUNS:
    rank = ranks[name]
    subsets = {name: np.ones(len(pairs), bool)}
    if new_items is not None and '_on_' not in name:
      subsets[f'{name}_new'] = new
    for sub, rows in subsets.items():
      out[sub] = hits(rank[rows], k)
  return out
