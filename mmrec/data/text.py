"""Vocabulary, item titles, search queries and generic captions.

Every noun and attribute is a synonym set of three words: the canonical word,
a seller synonym (`word~s`) and buyer slang (`word~b`). Sellers write the
canonical word or, at `synonym_rate`, the seller synonym; buyers' queries also
use slang that no title contains, so only search -> purchase pairs can teach
an encoder what it means. Token 0 is padding; sequences are left-aligned.
"""

import dataclasses

import numpy as np

from mmrec.data import taxonomy as taxonomy_lib

PAD, UNK = 0, 1
_FILLER = ('new', 'hot', 'sale', 'free', 'shipping', 'official', 'quality',
           'premium', 'deal', 'gift', 'best', 'top', 'season', 'trend',
           'limited', 'original', 'genuine', 'fast', 'cheap', 'popular')
_CAPTION = ('a', 'an', 'object', 'thing', 'item', 'photo', 'picture', 'on',
            'background', 'bright', 'dark', 'image', 'shot', 'of')


@dataclasses.dataclass(frozen=True)
class Vocab:
  """Token strings and the id ranges of each word class."""
  words: tuple[str, ...]
  leaf: np.ndarray  # (num_leaves, 3): canonical, seller synonym, buyer slang
  top: np.ndarray  # (num_top,)
  colour: np.ndarray  # (num_colours, 3)
  pattern: np.ndarray  # (num_patterns, 3)
  style: np.ndarray  # (num_styles, 3)
  brand: np.ndarray  # (num_shops,)
  filler: np.ndarray  # (num_filler,)
  caption: dict[str, int]

  @property
  def size(self):
    return len(self.words)

  def decode(self, ids):
    return ' '.join(self.words[i] for i in np.asarray(ids) if i != PAD)


def build_vocab(cfg, tax):
  words = ['<pad>', '<unk>']

  def add(names, synonyms):
    start = len(words)
    for n in names:
      words.extend([n, f'{n}~s', f'{n}~b'] if synonyms else [n])
    ids = np.arange(start, len(words), dtype=np.int32)
    return ids.reshape(-1, 3) if synonyms else ids

  colours = [n for n, _ in taxonomy_lib.COLOURS[:cfg.num_colours]]
  leaf = add(tax.leaf_names, True)
  top = add(tax.top_names, False)
  colour = add(colours, True)
  pattern = add(taxonomy_lib.PATTERNS[:cfg.num_patterns], True)
  style = add(taxonomy_lib.STYLES[:cfg.num_styles], True)
  brand = add([f'brand{s}' for s in range(cfg.num_shops)], False)
  filler = add([_FILLER[k] if k < len(_FILLER) else f'promo{k}'
                for k in range(cfg.num_filler_words)], False)
  caption = dict(zip(_CAPTION, add(_CAPTION, False).tolist()))
  return Vocab(tuple(words), leaf, top, colour, pattern, style, brand, filler,
               caption)


def _pack(slots, length, rng, shuffle=True):
  """Left-aligns the non-negative slots of each row in random order."""
  keys = rng.random(slots.shape) if shuffle else np.tile(
      np.arange(slots.shape[1], dtype=np.float64), (len(slots), 1))
  keys = np.where(slots < 0, np.inf, keys)  # missing slots go last
  order = np.argsort(keys, axis=1, kind='stable')
  packed = np.take_along_axis(slots, order, axis=1)[:, :length]
  if packed.shape[1] < length:
    packed = np.pad(packed, ((0, 0), (0, length - packed.shape[1])),
                    constant_values=-1)
  return np.where(packed < 0, PAD, packed).astype(np.int32)


def _pick(synsets, idx, rng, rate, allow_slang):
  """Picks canonical words, replaced by a synonym at `rate`."""
  alt = rng.integers(1, 3 if allow_slang else 2, size=len(idx))
  which = np.where(rng.random(len(idx)) < rate, alt, 0)
  return synsets[idx, which]


def titles(cfg, tax, vocab, concept, shop, rng):
  """(N, title_length) titles: noun, attributes, brand, filler; any order."""
  n = len(concept)
  mention = lambda: rng.random(n) < cfg.attribute_mention_rate
  rate = cfg.synonym_rate
  slots = [
      _pick(vocab.leaf, tax.concept_leaf[concept], rng, rate, False),
      np.where(rng.random(n) < 0.3,
               vocab.top[tax.leaf_top[tax.concept_leaf[concept]]], -1),
      np.where(mention(), _pick(vocab.colour, tax.concept_colour[concept],
                                rng, rate, False), -1),
      np.where(mention(), _pick(vocab.pattern, tax.concept_pattern[concept],
                                rng, rate, False), -1),
      np.where(mention(), _pick(vocab.style, tax.concept_style[concept],
                                rng, rate, False), -1),
      np.where(rng.random(n) < 0.8, vocab.brand[shop], -1),
  ]
  num_filler = rng.integers(0, 5, size=n)
  for k in range(4):
    word = vocab.filler[rng.integers(0, len(vocab.filler), size=n)]
    slots.append(np.where(k < num_filler, word, -1))
  return _pack(np.stack(slots, axis=1), cfg.title_length, rng)


def queries(cfg, tax, vocab, concept, rng):
  """(N, title_length) search queries of 2..query_text_max_len tokens."""
  n = len(concept)
  rate = cfg.query_synonym_rate
  noun = _pick(vocab.leaf, tax.concept_leaf[concept], rng, rate, True)
  attrs = np.stack([
      _pick(vocab.colour, tax.concept_colour[concept], rng, rate, True),
      _pick(vocab.pattern, tax.concept_pattern[concept], rng, rate, True),
      _pick(vocab.style, tax.concept_style[concept], rng, rate, True)], 1)
  num_attrs = rng.integers(1, cfg.query_text_max_len, size=n)  # 1..max-1
  keep = np.argsort(rng.random(attrs.shape), axis=1) < num_attrs[:, None]
  slots = np.concatenate([noun[:, None], np.where(keep, attrs, -1)], axis=1)
  return _pack(slots, cfg.title_length, rng)


def captions(cfg, vocab, colour, pattern, bg_colour, bright, rng):
  """Generic appearance captions: colours, pattern, background; no category."""
  n = len(colour)
  c = vocab.caption
  noun = np.array([c['object'], c['thing'], c['item'], c['image']])
  slots = np.stack([
      np.where(rng.random(n) < 0.5, c['a'], c['photo']),
      np.where(rng.random(n) < 0.5, c['of'], -1),
      np.where(bright, c['bright'], c['dark']),
      vocab.colour[colour, 0],
      np.where(rng.random(n) < 0.8, vocab.pattern[pattern, 0], -1),
      noun[rng.integers(0, len(noun), size=n)],
      np.full(n, c['on']),
      vocab.colour[bg_colour, 0],
      np.full(n, c['background']),
  ], axis=1)
  return _pack(slots, cfg.title_length, rng, shuffle=False)
