"""Taxonomy, concepts and their hidden semantic vectors.

A concept is (leaf category, colour, pattern, style). Its semantic vector is a
weighted sum of random unit vectors for its parts, so concepts of one leaf with
similar attributes are close. Leaves come in look-alike pairs: nearly the same
shape on screen, unrelated semantics. No model ever reads the semantic vectors;
they drive clicks and purchases and go to the oracle file only.
"""

import dataclasses

import numpy as np

TOP_NAMES = ('tops', 'bottoms', 'shoes', 'bags', 'home', 'beauty',
             'electronics', 'toys', 'sports', 'kitchen', 'jewelry', 'outdoor')
LEAF_NAMES = (
    ('shirt', 'blouse', 'tee', 'sweater', 'hoodie', 'vest'),
    ('jeans', 'trousers', 'skirt', 'shorts', 'leggings', 'culottes'),
    ('sneaker', 'boot', 'sandal', 'loafer', 'heel', 'slipper'),
    ('backpack', 'tote', 'clutch', 'satchel', 'wallet', 'duffel'),
    ('lamp', 'vase', 'pillow', 'rug', 'clock', 'mirror'),
    ('lipstick', 'perfume', 'cream', 'serum', 'palette', 'brush'),
    ('phone', 'tablet', 'speaker', 'headphone', 'charger', 'camera'),
    ('doll', 'robot', 'puzzle', 'ball', 'kite', 'blocks'),
    ('racket', 'helmet', 'glove', 'bat', 'mat', 'bottle'),
    ('pan', 'kettle', 'mug', 'plate', 'bowl', 'knife'),
    ('ring', 'necklace', 'bracelet', 'earring', 'watch', 'brooch'),
    ('tent', 'lantern', 'chair', 'cooler', 'hammock', 'stove'),
)
COLOURS = (
    ('red', (0.85, 0.12, 0.12)), ('orange', (0.95, 0.55, 0.10)),
    ('yellow', (0.95, 0.88, 0.15)), ('green', (0.15, 0.65, 0.20)),
    ('teal', (0.10, 0.60, 0.60)), ('blue', (0.15, 0.35, 0.90)),
    ('navy', (0.08, 0.10, 0.40)), ('purple', (0.55, 0.20, 0.70)),
    ('pink', (0.95, 0.55, 0.70)), ('brown', (0.50, 0.30, 0.12)),
    ('black', (0.08, 0.08, 0.08)), ('grey', (0.55, 0.55, 0.55)),
    ('white', (0.97, 0.97, 0.97)), ('olive', (0.45, 0.50, 0.15)),
)
PATTERNS = ('plain', 'striped', 'ribbed', 'dotted', 'checked', 'diagonal')
STYLES = ('casual', 'formal', 'sporty', 'vintage', 'minimal', 'bold')

# Columns of `Taxonomy.leaf_shape`, read by `render.py`.
SHAPE_FIELDS = ('ax', 'ay', 'power', 'taper', 'arm', 'arm_y', 'arm_w',
                'arm_h', 'hole')


@dataclasses.dataclass(frozen=True)
class Taxonomy:
  """Leaves, concepts and hidden semantic vectors (K concepts, D dims)."""
  top_names: tuple[str, ...]
  leaf_names: tuple[str, ...]
  leaf_top: np.ndarray  # (num_leaves,) int32
  leaf_twin: np.ndarray  # (num_leaves,) look-alike leaf, or -1
  leaf_shape: np.ndarray  # (num_leaves, len(SHAPE_FIELDS)) float32
  concept_leaf: np.ndarray  # (K,) int32; concepts are sorted by leaf
  concept_colour: np.ndarray  # (K,) int32
  concept_pattern: np.ndarray  # (K,) int32
  concept_style: np.ndarray  # (K,) int32
  concept_vec: np.ndarray  # (K, D) float32, unit norm; hidden

  @property
  def num_leaves(self):
    return len(self.leaf_names)

  @property
  def num_concepts(self):
    return len(self.concept_leaf)

  def similarity(self):
    """(K, K) cosine similarity of the hidden concept vectors."""
    return self.concept_vec @ self.concept_vec.T


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _names(cfg):
  tops = [TOP_NAMES[t] if t < len(TOP_NAMES) else f'top{t}'
          for t in range(cfg.num_top_categories)]
  leaves = []
  for t in range(cfg.num_top_categories):
    for j in range(cfg.leaves_per_top):
      known = t < len(LEAF_NAMES) and j < len(LEAF_NAMES[t])
      leaves.append(LEAF_NAMES[t][j] if known else f'{tops[t]}{j}')
  return tuple(tops), tuple(leaves)


def _leaf_shapes(cfg, rng, leaf_top):
  """Shape parameters: a family per top category, varied per leaf."""
  n_top, n_leaf = cfg.num_top_categories, len(leaf_top)
  fam_power = rng.choice([1.2, 2.0, 4.0], size=n_top)
  fam_taper = rng.uniform(-0.5, 0.5, n_top)
  fam_arm = rng.random(n_top) < 0.4
  fam_hole = rng.random(n_top) < 0.25
  s = np.zeros((n_leaf, len(SHAPE_FIELDS)), np.float32)
  t = leaf_top
  s[:, 0] = rng.uniform(0.45, 0.85, n_leaf)  # ax
  s[:, 1] = rng.uniform(0.5, 0.9, n_leaf)  # ay
  s[:, 2] = fam_power[t]
  s[:, 3] = np.clip(fam_taper[t] + rng.uniform(-0.3, 0.3, n_leaf), -0.7, 0.7)
  s[:, 4] = fam_arm[t] ^ (rng.random(n_leaf) < 0.3)
  s[:, 5] = rng.uniform(-0.5, 0.1, n_leaf)  # arm_y
  s[:, 6] = rng.uniform(0.8, 1.0, n_leaf)  # arm_w
  s[:, 7] = rng.uniform(0.12, 0.22, n_leaf)  # arm_h
  s[:, 8] = np.where(fam_hole[t] ^ (rng.random(n_leaf) < 0.2),
                     rng.uniform(0.2, 0.35, n_leaf), 0.0)  # hole radius
  # Look-alike pairs inside a top category: the twin copies the shape with a
  # barely visible change, so pixels alone can hardly tell them apart.
  twin = np.full(n_leaf, -1, np.int32)
  per_top = cfg.leaves_per_top
  num_pairs = int(round(cfg.confusable_pair_share * per_top / 2))
  for top in range(n_top):
    for p in range(num_pairs):
      a, b = top * per_top + 2 * p, top * per_top + 2 * p + 1
      s[b] = s[a]
      s[b, 1] *= 1.08
      s[b, 3] = np.clip(s[a, 3] + 0.08, -0.7, 0.7)
      twin[a], twin[b] = b, a
  return s, twin


def build(cfg, rng):
  """Builds the taxonomy for a world config (see experiments/configs/world)."""
  top_names, leaf_names = _names(cfg)
  n_leaf = len(leaf_names)
  leaf_top = np.repeat(np.arange(cfg.num_top_categories), cfg.leaves_per_top)
  leaf_top = leaf_top.astype(np.int32)
  leaf_shape, leaf_twin = _leaf_shapes(cfg, rng, leaf_top)

  # Distinct (colour, pattern, style) combinations per leaf.
  n_attr = cfg.num_colours * cfg.num_patterns * cfg.num_styles
  per_leaf = cfg.concepts_per_leaf
  combos = np.stack([rng.choice(n_attr, per_leaf, replace=False)
                     for _ in range(n_leaf)]).reshape(-1)
  concept_leaf = np.repeat(np.arange(n_leaf), per_leaf).astype(np.int32)
  colour, rest = np.divmod(combos, cfg.num_patterns * cfg.num_styles)
  pattern, style = np.divmod(rest, cfg.num_styles)

  d = cfg.concept_dim
  top_v = _unit(rng.normal(size=(cfg.num_top_categories, d)))
  leaf_v = _unit(rng.normal(size=(n_leaf, d)))
  col_v = _unit(rng.normal(size=(cfg.num_colours, d)))
  pat_v = _unit(rng.normal(size=(cfg.num_patterns, d)))
  sty_v = _unit(rng.normal(size=(cfg.num_styles, d)))
  w = cfg.semantic_weights
  vec = (w[0] * top_v[leaf_top[concept_leaf]] + w[1] * leaf_v[concept_leaf] +
         w[2] * col_v[colour] + w[3] * pat_v[pattern] + w[4] * sty_v[style])
  return Taxonomy(
      top_names=top_names, leaf_names=leaf_names, leaf_top=leaf_top,
      leaf_twin=leaf_twin, leaf_shape=leaf_shape, concept_leaf=concept_leaf,
      concept_colour=colour.astype(np.int32),
      concept_pattern=pattern.astype(np.int32),
      concept_style=style.astype(np.int32),
      concept_vec=_unit(vec).astype(np.float32))
