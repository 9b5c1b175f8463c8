"""The two logs of the world: display impressions (CTR) and search -> purchase.

Impressions, day by day: each user sees Poisson(activity x rate) items, drawn
from a Zipf popularity over launched items or matched to one of the user's
interests, and clicks with

  p = sigmoid(b0 + a * (category + c * taste) + q_item + u_user + noise),

  category = max over the user's interests k of
             [leaf(item) == leaf(k)] + 0.5 [top(item) == top(k)]
  taste    = mean over colour, pattern, style of the user's preference for
             the item's value of that attribute

each of `category` and `taste` standardised over day 0's impressions, so a
(`affinity_scale`) and c (`content_weight`) are in logits of spread. The
category term is what category IDs see (the history's category shares
estimate it); the taste term varies *within* a leaf category and shows only in
images and titles, or in each item's own clicks: c is how much content matters
beyond category. Neither term reads the behaviour sequence: tastes are
properties of the user, and the history is evidence of them (interest-matched
impressions carry the interests' attributes, and clicks favour the preferred
ones). So no statistic of the history -- SimTier's cosine histogram, a mean or
max similarity -- is the click model's own; each is an estimator of a hidden
taste. b0 is solved on day 0 for the target CTR.
Clicks of day d enter the sequences of day d + 1. Sequences hold item ids,
right-aligned (oldest first, newest at index L - 1), padded on the left with
0; `seq_len` says how many are real.
"""

import numpy as np

from mmrec.data import render
from mmrec.data import text


class _ConceptIndex:
  """Item ids grouped by concept, restricted to a set of items."""

  def __init__(self, item_concept, num_concepts, allowed):
    ids = np.flatnonzero(allowed)
    self.items = ids[np.argsort(item_concept[ids], kind='stable')]
    self.counts = np.bincount(item_concept[ids], minlength=num_concepts)
    self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])

  def sample(self, concept, rng):
    """A random allowed item of each concept, or -1 where it has none."""
    count = self.counts[concept]
    pos = self.starts[concept] + (rng.random(len(concept)) * count).astype(int)
    safe = np.minimum(pos, max(len(self.items) - 1, 0))
    return np.where(count > 0, self.items[safe] if len(self.items) else -1, -1)


def _pick_interest(interests, weights, rng):
  """One interest concept per row, by the user's interest weights."""
  cum = weights.cumsum(1)
  slot = (rng.random((len(weights), 1)) > cum).sum(1)
  slot = np.minimum(slot, weights.shape[1] - 1)
  return interests[np.arange(len(interests)), slot]


def _sibling(concept, concept_leaf, per_leaf, rng):
  """A random concept of the same leaf (possibly the same concept)."""
  return concept_leaf[concept] * per_leaf + rng.integers(0, per_leaf,
                                                         len(concept))


def _category_affinity(tax, oracle, user, item):
  """(N,) max over the user's interests of leaf match + 0.5 top match."""
  leaf = tax.concept_leaf[oracle['item_concept'][item]]
  ints = oracle['user_interests'][user]
  has = oracle['user_interest_weights'][user] > 0
  int_leaf = tax.concept_leaf[ints]
  match = ((int_leaf == leaf[:, None]) +
           0.5 * (tax.leaf_top[int_leaf] == tax.leaf_top[leaf][:, None]))
  return np.where(has, match, 0.0).max(1)


def _taste(tax, oracle, user, item):
  """(N,) mean preference of each user for the item's attribute values."""
  c = oracle['item_concept'][item]
  return (oracle['user_taste_colour'][user, tax.concept_colour[c]] +
          oracle['user_taste_pattern'][user, tax.concept_pattern[c]] +
          oracle['user_taste_style'][user, tax.concept_style[c]]) / 3


def _solve_bias(z, target):
  """b0 such that mean(sigmoid(b0 + z)) == target (bisection)."""
  lo, hi = -20.0, 20.0
  for _ in range(60):
    mid = (lo + hi) / 2
    if np.mean(1 / (1 + np.exp(-(mid + z)))) < target:
      lo = mid
    else:
      hi = mid
  return (lo + hi) / 2


def _append_clicks(hist, user, item, num_users):
  """Appends clicked items (grouped by user, in time order) to histories."""
  if not len(user):
    return hist
  n_click = np.bincount(user, minlength=num_users)
  starts = np.concatenate([[0], np.cumsum(n_click)[:-1]])
  m = n_click.max()
  rank = np.arange(len(user)) - starts[user]
  new = np.full((num_users, m), -1, np.int32)
  new[user, m - n_click[user] + rank] = item
  comb = np.concatenate([hist, new], axis=1)
  # Stable sort on validity moves padding left and keeps time order.
  order = np.argsort(comb >= 0, axis=1, kind='stable')
  return np.take_along_axis(comb, order, axis=1)[:, -hist.shape[1]:]


def impressions(cfg, tax, items, oracle, rng):
  """The display impression log and its hidden click probabilities."""
  num_users, num_items = cfg.num_users, cfg.num_items
  k, per_leaf, seq_len = tax.num_concepts, cfg.concepts_per_leaf, cfg.seq_len
  concept = oracle['item_concept']
  interests = oracle['user_interests']
  weights = oracle['user_interest_weights']
  activity = oracle['user_activity']
  launch = items['launch_day']
  popularity = rng.permutation(num_items) + 1.0
  popularity = popularity**-cfg.zipf_exponent

  def interest_items(user, index, available):
    c = _pick_interest(interests[user], weights[user], rng)
    near = rng.random(len(user)) < cfg.explore_near_rate
    c = np.where(near, _sibling(c, tax.concept_leaf, per_leaf, rng), c)
    item = index.sample(c, rng)
    return np.where(item >= 0, item, popular_items(len(user), available))

  def popular_items(n, available):
    cdf = np.cumsum(popularity * available)
    return np.searchsorted(cdf, rng.random(n) * cdf[-1], side='right')

  # Clicks before day 0: interest-matched items, random length.
  avail0 = launch <= 0
  index0 = _ConceptIndex(concept, k, avail0)
  n0 = np.minimum(rng.poisson(cfg.initial_history_mean * activity), seq_len)
  hist = np.full((num_users, seq_len), -1, np.int32)
  rows = np.repeat(np.arange(num_users), n0)
  cols = seq_len - n0[rows] + (np.arange(len(rows)) -
                               np.repeat(np.cumsum(n0) - n0, n0))
  hist[rows, cols] = interest_items(rows, index0, avail0)

  out = {k_: [] for k_ in ('user_id', 'item_id', 'day', 'label', 'seq_item',
                           'seq_len')}
  hidden = {'impression_p': [], 'impression_category': [],
            'impression_taste': []}
  b0 = None
  for day in range(cfg.num_days):
    available = launch <= day
    index = _ConceptIndex(concept, k, available)
    n = rng.poisson(cfg.impressions_per_user_day * activity)
    user = np.repeat(np.arange(num_users), n)
    user = user[np.lexsort((rng.random(len(user)), user))]  # time in user
    route_pop = rng.random(len(user)) < cfg.popular_share
    item = np.where(route_pop, popular_items(len(user), available),
                    interest_items(user, index, available))
    h = hist[user]
    cat = _category_affinity(tax, oracle, user, item)
    taste = _taste(tax, oracle, user, item)
    if b0 is None:
      norm = [(x.mean(), max(x.std(), 1e-6)) for x in (cat, taste)]
    cat = ((cat - norm[0][0]) / norm[0][1]).astype(np.float32)
    taste = ((taste - norm[1][0]) / norm[1][1]).astype(np.float32)
    z = (cfg.affinity_scale * (cat + cfg.content_weight * taste) +
         oracle['item_quality'][item] + oracle['user_propensity'][user] +
         rng.normal(0, cfg.click_noise_std, len(user)))
    if b0 is None:
      b0 = _solve_bias(z, cfg.target_ctr)
    p = (1 / (1 + np.exp(-(b0 + z)))).astype(np.float32)
    label = (rng.random(len(user)) < p).astype(np.int32)
    out['user_id'].append(user.astype(np.int32))
    out['item_id'].append(item.astype(np.int32))
    out['day'].append(np.full(len(user), day, np.int32))
    out['label'].append(label)
    out['seq_item'].append(np.maximum(h, 0))
    out['seq_len'].append((h >= 0).sum(1).astype(np.int32))
    hidden['impression_p'].append(p)
    hidden['impression_category'].append(cat)
    hidden['impression_taste'].append(taste)
    clicked = label == 1
    hist = _append_clicks(hist, user[clicked], item[clicked].astype(np.int32),
                          num_users)
  out = {k_: np.concatenate(v) for k_, v in out.items()}
  hidden = {k_: np.concatenate(v) for k_, v in hidden.items()}
  hidden['click_bias'] = np.float32(b0)
  return out, hidden


def search(cfg, tax, vocab, items, oracle, rng):
  """Search -> purchase sessions with query image/text and hard negatives."""
  n, k, per_leaf = cfg.num_search_sessions, tax.num_concepts, cfg.concepts_per_leaf
  sim = tax.similarity()
  concept = oracle['item_concept']
  act = oracle['user_activity']
  user = np.searchsorted(np.cumsum(act), rng.random(n) * act.sum(),
                         side='right').clip(0, cfg.num_users - 1)
  intended = np.where(
      rng.random(n) < 0.7,
      _pick_interest(oracle['user_interests'][user],
                     oracle['user_interest_weights'][user], rng),
      rng.integers(0, k, n))
  # The nearest other concept of the same leaf: what a noisy purchase buys.
  same_leaf = tax.concept_leaf[:, None] == tax.concept_leaf[None, :]
  near = np.where(same_leaf & ~np.eye(k, dtype=bool), sim, -np.inf).argmax(1)
  bought = np.where(rng.random(n) < cfg.purchase_noise, near[intended],
                    intended)
  purchased = _ConceptIndex(concept, k, np.ones(len(concept), bool)).sample(
      bought, rng)

  # Hard negatives: clicked-not-bought items of sibling concepts, the more
  # similar to what was bought the likelier. New items are never used, so
  # they stay unseen by pre-training.
  first_test = cfg.num_days - cfg.num_test_days
  old_index = _ConceptIndex(concept, k, items['launch_day'] < first_test)
  sib = (tax.concept_leaf[:, None] * per_leaf + np.arange(per_leaf)[None])
  logits = np.where(sib == np.arange(k)[:, None], -np.inf,
                    5 * np.take_along_axis(sim, sib, 1))
  prob = np.exp(logits - logits.max(1, keepdims=True))
  cum = (prob / prob.sum(1, keepdims=True)).cumsum(1)
  h = cfg.max_hard_negatives
  hard = np.zeros((n, h), np.int32)
  hard_mask = np.zeros((n, h), bool)
  for j in range(h):
    slot = (rng.random((n, 1)) > cum[bought]).sum(1).clip(0, per_leaf - 1)
    neg = old_index.sample(sib[bought, slot], rng)
    active = (rng.random(n) < cfg.hard_negative_rate) & (neg >= 0)
    hard[:, j] = np.where(active, neg, 0)
    hard_mask[:, j] = active

  is_image = rng.random(n) < cfg.image_query_share
  query_image = np.zeros((n, cfg.image_size, cfg.image_size, 3), np.uint8)
  idx = np.flatnonzero(is_image)
  query_image[idx] = render.render_concepts(
      cfg, tax, intended[idx], render.photo_presentation(cfg, len(idx), rng),
      rng)
  query_text = np.zeros((n, cfg.title_length), np.int32)
  idx = np.flatnonzero(~is_image)
  query_text[idx] = text.queries(cfg, tax, vocab, intended[idx], rng)
  held_out = ((items['launch_day'][purchased] >= first_test) |
              (rng.random(n) < cfg.held_out_search_share))
  return {
      'session_id': np.arange(n, dtype=np.int32),
      'user_id': user.astype(np.int32),
      'query_is_image': is_image,
      'query_image': query_image,
      'query_text': query_text,
      'purchased_item': purchased.astype(np.int32),
      'hard_negatives': hard,
      'hard_negative_mask': hard_mask,
      'held_out': held_out,
  }
