r"""The synthetic marketplace ("the world"): every knob, its default and why.

Builds the world, writes it through the TFDS builders, and prints its
statistics and the honesty table (oracle / ID-only / content-only / random AUC
on the test day):

  python -m experiments.main --config=experiments/configs/world.py \
      --workdir=/tmp/mmrec/world

Default: ~20k items, 20k users, ~1M impressions over 7 days. On a 2-core CPU
the numpy generation takes ~20 s and writing the array_record files ~1 min.
`:tiny` (~2k items, ~40k impressions, 16x16 images) builds in a few seconds and
is what the tests use.

This file is the one place where the world's defaults are documented: each
field carries the reason for its value. `mmrec.data.world.validate` checks
every field at start.
"""

import ml_collections


def get_world_config(arg=None):
  """The world's ConfigDict (`config.world` in other experiment configs)."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  # --- Taxonomy and concepts ------------------------------------------------
  # 8 top categories x 6 leaves: enough leaves that category alone is a
  # coarse signal, few enough that each leaf has many items.
  c.num_top_categories = 8
  c.leaves_per_top = 6
  # Leaves come in look-alike pairs (shirt vs. blouse): nearly the same shape,
  # unrelated semantics. Raw pixels confuse them; titles and purchases do not.
  c.confusable_pair_share = 0.5
  # 20 (colour, pattern, style) concepts per leaf: ~21 items per concept, so
  # a concept is learnable from content but no single item ID dominates it.
  c.concepts_per_leaf = 20
  c.num_colours = 12
  c.num_patterns = 6
  c.num_styles = 4
  c.concept_dim = 32
  # Weights of the parts in a concept's hidden semantic vector. Leaf and top
  # dominate (buyers shop by product type), then colour, pattern and style.
  c.semantic_weights = (1.0, 1.0, 0.6, 0.4, 0.4)  # top, leaf, col, pat, sty

  # --- Items and shops --------------------------------------------------------
  c.num_items = 20_000
  c.num_shops = 500
  c.image_size = 32
  # Per-item presentation jitter on top of the shop's style: two items of one
  # concept and shop never render pixel-identical.
  c.item_jitter = 0.05
  c.image_noise = 0.03  # mean catalogue pixel noise (std, pixels in [0, 1])
  # ID-level quality (price, reputation, creative appeal): independent of
  # content, only learnable from the item's own clicks. 0.6 logits of spread
  # makes item IDs matter for head items without drowning the content signal.
  c.quality_std = 0.6
  # 5% of items launch on the test day: the new-item slice (no training
  # impressions), and 5% launch on a random training day after day 0.
  c.new_item_share = 0.05
  c.late_launch_share = 0.05

  # --- Titles ------------------------------------------------------------------
  c.title_length = 12
  # Sellers use the canonical attribute word with prob 1 - synonym_rate, else
  # a seller synonym. Buyers' queries also use slang no seller writes.
  c.synonym_rate = 0.3
  c.query_synonym_rate = 0.5
  c.attribute_mention_rate = 0.8  # a title names each attribute w.p. this
  c.num_filler_words = 60

  # --- Users -------------------------------------------------------------------
  c.num_users = 20_000
  c.num_age_buckets = 7
  c.num_cities = 40
  c.mean_interests = 3.0  # concepts per user (1 + Poisson(mean - 1), <= 8)
  c.activity_sigma = 0.6  # log-normal spread of user activity

  # --- Display impression log ------------------------------------------------
  c.num_days = 7
  c.num_test_days = 1  # train on days 0..5, test on day 6 (as the paper)
  c.impressions_per_user_day = 7.0  # x 20k users x 7 days ~= 1M impressions
  c.seq_len = 50  # behaviour sequence length L
  c.initial_history_mean = 20.0  # clicks before day 0 (mean, capped at L)
  # Half the impressions come from a Zipf popularity over items (the long
  # tail), half are matched to one of the user's interests.
  c.popular_share = 0.5
  c.zipf_exponent = 1.1
  c.explore_near_rate = 0.3  # interest route shows a sibling concept instead
  # p = sigmoid(b0 + a * (category + content_weight * taste) + q_item +
  # u_user + noise), category and taste each standardised over day 0
  # (mmrec/data/logs.py). category: does the item's leaf / top category match
  # one of the user's interests (what category IDs see). taste: the user's
  # preference for the item's colour, pattern and style (what varies within a
  # leaf: visible in images and titles, to IDs only through each item's own
  # clicks). a = 1: the category term has one logit of spread, the size of
  # q_item + u_user.
  c.affinity_scale = 1.0
  # THE CONTENT KNOB: logits of within-category taste per logit of category.
  # 0 = category IDs see everything content could add. 0.5 (default): taste
  # spreads clicks half as much as category does -- a within-leaf preference
  # that is real but secondary, as colour / style are next to product type in
  # shopping. Headroom it leaves (honesty table, make demo's world): the
  # ID-statistics LR 0.745 test AUC, + true concept features 0.759, i.e.
  # +1.8% relative, about twice the paper's +0.75% AUC -- room for a gain of
  # the paper's size, not a world built for a big win. (c = 0: 0.696 ->
  # 0.702; c = 1: 0.801 -> 0.830.) Reports sweep it (paper.py:full) rather
  # than trust one value.
  c.content_weight = 0.5
  # Idiosyncratic part of a user's taste (std, vs. the interests' weights,
  # which sum to 1 per attribute): about half of it is not in the interests.
  c.taste_noise = 0.3
  c.user_propensity_std = 0.4
  c.click_noise_std = 0.3
  c.target_ctr = 0.045  # b0 is solved for this on day 0 (paper: 3-6%)

  # --- Search -> purchase log (pre-training only) ----------------------------
  c.num_search_sessions = 40_000
  c.image_query_share = 0.5
  c.held_out_search_share = 0.1  # plus every session that buys a new item
  c.purchase_noise = 0.1  # buys a near concept of the same leaf instead
  c.max_hard_negatives = 3
  c.hard_negative_rate = 0.6  # each of the slots is a clicked-not-bought item
  c.query_text_max_len = 4
  c.photo_noise = 0.08  # user photos: stronger noise, blur, clutter, crop

  # --- Generic captions (CLIP-O) ---------------------------------------------
  c.num_captions = 20_000

  if arg == 'tiny':
    c.num_top_categories = 4
    c.leaves_per_top = 4
    c.concepts_per_leaf = 8
    c.num_items = 2_000
    c.num_shops = 60
    c.image_size = 16
    c.num_users = 2_000
    c.num_days = 4
    c.impressions_per_user_day = 5.0
    c.seq_len = 10
    c.initial_history_mean = 5.0
    c.num_search_sessions = 2_000
    c.num_captions = 1_000
    c.num_filler_words = 20
  elif arg not in (None, ''):
    raise ValueError(f'world config arg must be "" or "tiny", got {arg!r}')
  return c


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.job = 'world'
  config.world = get_world_config(arg)
  return config
