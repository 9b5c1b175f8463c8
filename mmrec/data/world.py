"""The synthetic marketplace: validation and generation.

`generate(cfg)` returns a `World`: plain numpy tables (items, users, search,
impressions, captions) that models may read, and `oracle`, which no model
reads (hidden concept vectors, item quality, user propensity, true click
probabilities). Defaults and the reason for each knob live in
experiments/configs/world.py. Generation is deterministic for `cfg.seed`; each
stage draws from its own child seed, so changing one stage's size does not
reshuffle the others.
"""

import dataclasses
import time
from typing import Any

from absl import logging
import numpy as np

from mmrec.data import logs
from mmrec.data import render
from mmrec.data import taxonomy as taxonomy_lib
from mmrec.data import text

# field -> (lower, upper, kind); kind 'int' or 'float'; None = unbounded.
_RANGES = {
    'seed': (0, None, 'int'),
    'num_top_categories': (1, None, 'int'),
    'leaves_per_top': (1, None, 'int'),
    'confusable_pair_share': (0.0, 1.0, 'float'),
    'concepts_per_leaf': (2, None, 'int'),
    'num_colours': (2, len(taxonomy_lib.COLOURS), 'int'),
    'num_patterns': (1, len(taxonomy_lib.PATTERNS), 'int'),
    'num_styles': (1, len(taxonomy_lib.STYLES), 'int'),
    'concept_dim': (2, None, 'int'),
    'num_items': (1, None, 'int'),
    'num_shops': (1, None, 'int'),
    'image_size': (8, 256, 'int'),
    'item_jitter': (0.0, 0.5, 'float'),
    'image_noise': (0.0, 1.0, 'float'),
    'quality_std': (0.0, None, 'float'),
    'new_item_share': (0.0, 1.0, 'float'),
    'late_launch_share': (0.0, 1.0, 'float'),
    'title_length': (6, None, 'int'),
    'synonym_rate': (0.0, 1.0, 'float'),
    'query_synonym_rate': (0.0, 1.0, 'float'),
    'attribute_mention_rate': (0.0, 1.0, 'float'),
    'num_filler_words': (1, None, 'int'),
    'num_users': (1, None, 'int'),
    'num_age_buckets': (1, None, 'int'),
    'num_cities': (1, None, 'int'),
    'mean_interests': (1.0, 8.0, 'float'),
    'activity_sigma': (0.0, None, 'float'),
    'num_days': (2, None, 'int'),
    'num_test_days': (1, None, 'int'),
    'impressions_per_user_day': (0.0, None, 'float'),
    'seq_len': (1, None, 'int'),
    'initial_history_mean': (0.0, None, 'float'),
    'popular_share': (0.0, 1.0, 'float'),
    'zipf_exponent': (0.0, None, 'float'),
    'explore_near_rate': (0.0, 1.0, 'float'),
    'affinity_scale': (0.0, None, 'float'),
    'content_weight': (0.0, None, 'float'),
    'taste_noise': (0.0, None, 'float'),
    'user_propensity_std': (0.0, None, 'float'),
    'click_noise_std': (0.0, None, 'float'),
    'target_ctr': (1e-4, 0.5, 'float'),
    'num_search_sessions': (1, None, 'int'),
    'image_query_share': (0.0, 1.0, 'float'),
    'held_out_search_share': (0.0, 1.0, 'float'),
    'purchase_noise': (0.0, 1.0, 'float'),
    'max_hard_negatives': (0, None, 'int'),
    'hard_negative_rate': (0.0, 1.0, 'float'),
    'query_text_max_len': (2, None, 'int'),
    'photo_noise': (0.0, 1.0, 'float'),
    'num_captions': (1, None, 'int'),
}


def validate(cfg):
  """Raises ValueError naming the first field outside its allowed range."""
  missing = sorted(set(_RANGES) - set(cfg.keys()))
  if missing:
    raise ValueError(f'world config is missing fields: {missing}')
  for name, (lo, hi, kind) in _RANGES.items():
    v = cfg[name]
    allowed = f'[{lo}, {"inf" if hi is None else hi}]'
    if kind == 'int' and (isinstance(v, bool) or not isinstance(
        v, (int, np.integer))):
      raise ValueError(f'world.{name} must be an integer in {allowed}, '
                       f'got {v!r}')
    if not isinstance(v, (int, float, np.number)) or not np.isfinite(v):
      raise ValueError(f'world.{name} must be a finite number in {allowed}, '
                       f'got {v!r}')
    if v < lo or (hi is not None and v > hi):
      raise ValueError(f'world.{name} = {v!r} is outside the allowed range '
                       f'{allowed}')
  if cfg.num_test_days >= cfg.num_days:
    raise ValueError(
        f'world.num_test_days = {cfg.num_test_days} must be smaller than '
        f'world.num_days = {cfg.num_days}: at least one training day is '
        'needed (allowed range [1, num_days - 1])')
  if cfg.new_item_share + cfg.late_launch_share > 1:
    raise ValueError(
        'world.new_item_share + world.late_launch_share = '
        f'{cfg.new_item_share + cfg.late_launch_share} must be <= 1')
  n_attr = cfg.num_colours * cfg.num_patterns * cfg.num_styles
  if cfg.concepts_per_leaf > n_attr:
    raise ValueError(
        f'world.concepts_per_leaf = {cfg.concepts_per_leaf} exceeds the '
        f'{n_attr} distinct (colour, pattern, style) combinations; allowed '
        f'range [2, {n_attr}]')
  num_concepts = (cfg.num_top_categories * cfg.leaves_per_top *
                  cfg.concepts_per_leaf)
  if cfg.num_items < 2 * num_concepts:
    raise ValueError(
        f'world.num_items = {cfg.num_items} must be at least 2 per concept '
        f'({2 * num_concepts} for {num_concepts} concepts)')
  if len(cfg.semantic_weights) != 5 or min(cfg.semantic_weights) < 0:
    raise ValueError('world.semantic_weights must be 5 non-negative numbers '
                     f'(top, leaf, colour, pattern, style), got '
                     f'{tuple(cfg.semantic_weights)}')


@dataclasses.dataclass
class World:
  """A generated marketplace. Tables are dicts of equal-length arrays."""
  config: Any
  taxonomy: taxonomy_lib.Taxonomy
  vocab: text.Vocab
  items: dict[str, np.ndarray]
  users: dict[str, np.ndarray]
  search: dict[str, np.ndarray]
  impressions: dict[str, np.ndarray]
  captions: dict[str, np.ndarray]
  oracle: dict[str, np.ndarray]  # never read by a model

  @property
  def first_test_day(self):
    return self.config.num_days - self.config.num_test_days


def _items(cfg, tax, vocab, rng):
  """Items: concept, shop, launch day, quality, image, title."""
  k = tax.num_concepts
  # Every concept gets at least two items; the rest are spread uniformly.
  concept = np.concatenate([np.repeat(np.arange(k), 2),
                            rng.integers(0, k, cfg.num_items - 2 * k)])
  concept = rng.permutation(concept).astype(np.int32)
  leaf = tax.concept_leaf[concept]
  top = tax.leaf_top[leaf]
  # Shops specialise in one top category; 20% of items come from any shop.
  shop_top = rng.integers(0, cfg.num_top_categories, cfg.num_shops)
  shop = rng.integers(0, cfg.num_shops, cfg.num_items)
  for t in range(cfg.num_top_categories):
    mine = np.flatnonzero(shop_top == t)
    pick = (top == t) & (rng.random(cfg.num_items) < 0.8)
    if len(mine):
      shop[pick] = mine[rng.integers(0, len(mine), pick.sum())]
  first_test = cfg.num_days - cfg.num_test_days
  u = rng.random(cfg.num_items)
  launch = np.zeros(cfg.num_items, np.int32)
  late = (u >= cfg.new_item_share) & (u < cfg.new_item_share +
                                       cfg.late_launch_share)
  if first_test > 1:
    launch[late] = rng.integers(1, first_test, late.sum())
  launch[u < cfg.new_item_share] = first_test
  pres = render.catalogue_presentation(cfg, shop, rng)
  return {
      'item_id': np.arange(cfg.num_items, dtype=np.int32),
      'category': leaf.astype(np.int32),
      'top_category': top.astype(np.int32),
      'shop': shop.astype(np.int32),
      'launch_day': launch,
      'image': render.render_concepts(cfg, tax, concept, pres, rng),
      'title': text.titles(cfg, tax, vocab, concept, shop, rng),
  }, {
      'item_concept': concept,
      'item_quality': rng.normal(0, cfg.quality_std, cfg.num_items).astype(
          np.float32),
  }


def _tastes(cfg, tax, interests, weights, rng):
  """Per-user preferences over each attribute's values (hidden).

  A user's preference for a value is the weight of their interests that
  have it plus taste_noise x N(0, 1): interests make the taste visible in the
  history (interest-matched impressions), the noise makes part of it
  idiosyncratic (shown only by which items the user clicks).
  """
  out = {}
  for name, attr, size in (('colour', tax.concept_colour, cfg.num_colours),
                           ('pattern', tax.concept_pattern, cfg.num_patterns),
                           ('style', tax.concept_style, cfg.num_styles)):
    base = np.zeros((len(interests), size))
    np.add.at(base, (np.arange(len(interests))[:, None], attr[interests]),
              weights)
    out[f'user_taste_{name}'] = (
        base + cfg.taste_noise * rng.normal(size=base.shape)).astype(
            np.float32)
  return out


def _users(cfg, tax, rng):
  """Users: profile fields, activity, interests and tastes (hidden)."""
  n = cfg.num_users
  gender = rng.integers(0, 2, n)
  age = rng.integers(0, cfg.num_age_buckets, n)
  # Top-category taste depends on (gender, age): profile fields correlate
  # with interests, as they do in real logs.
  taste = rng.dirichlet(np.full(cfg.num_top_categories, 0.5),
                        size=(2, cfg.num_age_buckets))
  cum = taste[gender, age].cumsum(-1)
  primary = (rng.random((n, 1)) > cum).sum(-1).clip(
      0, cfg.num_top_categories - 1)
  max_k = 8
  num_k = np.minimum(1 + rng.poisson(cfg.mean_interests - 1, n), max_k)
  per_top = cfg.leaves_per_top * cfg.concepts_per_leaf
  in_primary = rng.random((n, max_k)) < 0.7
  tops = np.where(in_primary, primary[:, None],
                  rng.integers(0, cfg.num_top_categories, (n, max_k)))
  interests = tops * per_top + rng.integers(0, per_top, (n, max_k))
  weights = rng.dirichlet(np.ones(max_k), n) * (np.arange(max_k) < num_k[:, None])
  weights /= weights.sum(1, keepdims=True)
  activity = rng.lognormal(0, cfg.activity_sigma, n)
  city = np.minimum(rng.zipf(1.5, n) - 1, cfg.num_cities - 1)
  users = {
      'user_id': np.arange(n, dtype=np.int32),
      'age': age.astype(np.int32),
      'gender': gender.astype(np.int32),
      'city': city.astype(np.int32),
  }
  hidden = {
      'user_interests': interests.astype(np.int32),
      'user_interest_weights': weights.astype(np.float32),
      'user_activity': (activity / activity.mean()).astype(np.float32),
      'user_propensity': rng.normal(0, cfg.user_propensity_std, n).astype(
          np.float32),
  }
  hidden.update(_tastes(cfg, tax, interests, weights, rng))
  return users, hidden


def _captions(cfg, tax, vocab, rng):
  """Generic (image, caption) pairs for CLIP-O: appearance words only."""
  concept = rng.integers(0, tax.num_concepts, cfg.num_captions)
  pres = render.generic_presentation(cfg, cfg.num_captions, rng)
  palette = np.array([c for _, c in taxonomy_lib.COLOURS[:cfg.num_colours]])
  bg_colour = np.argmin(((pres.bg[:, None] - palette[None])**2).sum(-1), 1)
  image = render.render_concepts(cfg, tax, concept, pres, rng)
  bright = image.reshape(len(image), -1).mean(1) > 128
  caption = text.captions(cfg, vocab, tax.concept_colour[concept],
                          tax.concept_pattern[concept], bg_colour, bright, rng)
  return {'image': image, 'caption': caption}


def generate(cfg):
  """Generates the world for a validated world config."""
  validate(cfg)
  seeds = np.random.SeedSequence(cfg.seed).spawn(6)
  rngs = [np.random.default_rng(s) for s in seeds]
  t0 = time.time()
  tax = taxonomy_lib.build(cfg, rngs[0])
  vocab = text.build_vocab(cfg, tax)
  items, item_hidden = _items(cfg, tax, vocab, rngs[1])
  users, user_hidden = _users(cfg, tax, rngs[2])
  logging.info('world: catalogue and users in %.1fs', time.time() - t0)
  oracle = {'concept_vec': tax.concept_vec, **item_hidden, **user_hidden}
  impressions, imp_hidden = logs.impressions(cfg, tax, items, oracle, rngs[3])
  oracle.update(imp_hidden)
  logging.info('world: %d impressions in %.1fs',
               len(impressions['label']), time.time() - t0)
  search = logs.search(cfg, tax, vocab, items, oracle, rngs[4])
  captions = _captions(cfg, tax, vocab, rngs[5])
  logging.info('world: generated in %.1fs', time.time() - t0)
  return World(cfg, tax, vocab, items, users, search, impressions, captions,
               oracle)
