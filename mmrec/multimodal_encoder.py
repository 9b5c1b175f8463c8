"""Image and text towers -> L2-normalised query and item vectors.

Shape letters: B batch (any leading dims are accepted and kept), S image side,
T tokens, E embedding width (embed_dim).

One module holds both towers, a linear projection head per tower, the 'fused'
item head (only when item_mode == 'fused') and the learnable log-temperature.
Queries are encoded with the tower of their modality (`encode_image`,
`encode_text`, or `encode_query` for a mixed batch); items with
`config.item_mode`: the image tower, the text tower, or an MLP over both tower
features. Towers and heads are shared by queries and items, so an image query
and an image item land in the same space. `encode_batch` does queries and
items together with one pass per tower (what a train step wants).

`config.modalities` names the towers that exist: a dataset with titles only
(MovieLens) or images only has one, and every method then reads None for the
other's inputs; 'fused' is then the fused head over that one tower's features
(the same method on any dataset, not a fallback to another vector).

Use: `variables = model.init(rng, images, tokens)` (`__call__` touches every
submodule, so all parameters exist; None for an absent modality), then
`model.apply(variables, x, method='encode_image')` etc.
Parameter tree: image_tower, text_tower, image_head, text_head (those of
`modalities`), [fuse_head], log_temperature (a scalar at the top level).
"""

import dataclasses
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmrec import image_encoder
from mmrec import layers
from mmrec import text_encoder

ITEM_MODES = ('image', 'text', 'fused')
MODALITIES = ('image', 'text')


@dataclasses.dataclass(frozen=True, kw_only=True)
class MultimodalConfig:
  """Both towers plus the heads; see `from_dict` for ConfigDicts."""
  image: image_encoder.ImageEncoderConfig = image_encoder.ImageEncoderConfig()
  text: text_encoder.TextEncoderConfig
  embed_dim: int = 128
  item_mode: str = 'fused'
  modalities: tuple = MODALITIES  # the towers built (a non-empty subset)
  fuse_hidden: int = 256  # Hidden width of the 'fused' item MLP.
  init_temperature: float = 0.07
  min_temperature: float = 0.01
  max_temperature: float = 1.0

  def __post_init__(self):
    if self.item_mode not in ITEM_MODES:
      raise ValueError(f'item_mode must be one of {ITEM_MODES}, got '
                       f'{self.item_mode!r}.')
    mods = tuple(self.modalities)
    if not mods or set(mods) - set(MODALITIES) or len(set(mods)) < len(mods):
      raise ValueError(f'modalities must be a non-empty subset of '
                       f'{MODALITIES}, got {mods!r}.')
    if self.item_mode != 'fused' and self.item_mode not in mods:
      raise ValueError(f'item_mode {self.item_mode!r} needs that tower, but '
                       f'modalities are {mods!r}.')
    if not (self.min_temperature <= self.init_temperature
            <= self.max_temperature):
      raise ValueError(
          f'init_temperature {self.init_temperature} outside '
          f'[{self.min_temperature}, {self.max_temperature}].')

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'MultimodalConfig':
    """From a (Config)Dict with sub-dicts `image` and `text`.

    Unknown keys raise TypeError, so config typos fail loudly.
    """
    d = dict(d.to_dict() if hasattr(d, 'to_dict') else d)
    image = image_encoder.ImageEncoderConfig(**dict(d.pop('image', {})))
    text = text_encoder.TextEncoderConfig(**dict(d.pop('text')))
    if 'modalities' in d:
      d['modalities'] = tuple(d['modalities'])
    return cls(image=image, text=text, **d)


def _flat(x, trailing):
  """(..., *trailing shape) -> (prod(...), *trailing), and the leading dims."""
  lead = x.shape[:x.ndim - trailing]
  return x.reshape((-1,) + x.shape[x.ndim - trailing:]), lead


class MultimodalEncoder(nn.Module):
  """Query and item encoder with a learnable temperature."""
  config: MultimodalConfig

  def setup(self):
    cfg = self.config
    if 'image' in cfg.modalities:
      self.image_tower = image_encoder.ImageEncoder(cfg.image)
      self.image_head = layers.dense(cfg.embed_dim)
    if 'text' in cfg.modalities:
      self.text_tower = text_encoder.TextEncoder(cfg.text)
      self.text_head = layers.dense(cfg.embed_dim)
    if cfg.item_mode == 'fused':
      self.fuse_head = layers.MLP((cfg.fuse_hidden, cfg.embed_dim))
    # A scalar: replicated, no logical axes needed.
    self.log_temperature = self.param(
        'log_temperature',
        nn.initializers.constant(math.log(cfg.init_temperature)), ())

  def _has(self, modality):
    return modality in self.config.modalities

  def _image_features(self, images):
    x, lead = _flat(images, 3)
    x = self.image_tower(x)
    return x.reshape(lead + x.shape[-1:])

  def _text_features(self, tokens):
    x, lead = _flat(tokens, 1)
    x = self.text_tower(x)
    return x.reshape(lead + x.shape[-1:])

  def _fuse(self, image_feats, text_feats):
    """The fused item head over the features of the towers that exist."""
    feats = [f for f in (image_feats, text_feats) if f is not None]
    return self.fuse_head(jnp.concatenate(feats, -1))

  def encode_image(self, images: jax.Array) -> jax.Array:
    """(..., S, S, 3) pixels in [0, 255] -> (..., E) unit vectors."""
    return layers.l2_normalize(
        self.image_head(self._image_features(images)))

  def encode_text(self, tokens: jax.Array) -> jax.Array:
    """(..., T) token ids, 0 = pad -> (..., E) unit vectors."""
    return layers.l2_normalize(
        self.text_head(self._text_features(tokens)))

  def encode_query(self, is_image: jax.Array, images: jax.Array,
                   tokens: jax.Array) -> jax.Array:
    """Mixed-modality queries: (B,) bool, (B, S, S, 3), (B, T) -> (B, E).

    Runs both towers on every row and keeps the one matching the query's
    modality: static shapes under jit, at the cost of the unused tower. With
    one tower every query goes through it.
    """
    if not self._has('image'):
      return self.encode_text(tokens)
    if not self._has('text'):
      return self.encode_image(images)
    return jnp.where(is_image[..., None], self.encode_image(images),
                     self.encode_text(tokens))

  def encode_item(self, images: jax.Array | None = None,
                  titles: jax.Array | None = None) -> jax.Array:
    """Items -> (..., E) unit vectors, per `config.item_mode`.

    'image' ignores `titles`, 'text' ignores `images` (either may be None),
    'fused' reads the inputs of the towers that exist.
    """
    mode = self.config.item_mode
    if mode == 'image':
      return self.encode_image(images)
    if mode == 'text':
      return self.encode_text(titles)
    return layers.l2_normalize(self._fuse(
        self._image_features(images) if self._has('image') else None,
        self._text_features(titles) if self._has('text') else None))

  def encode_tables(self, images: jax.Array | None, titles: jax.Array | None):
    """Items -> dict(item=encode_item, image=encode_image of the item image,
    text=encode_text of the title), each (..., E), one pass per tower (the
    embedding job's three tables); a modality without a tower or without
    inputs (None) has no table."""
    image_feats = (self._image_features(images)
                   if self._has('image') and images is not None else None)
    text_feats = (self._text_features(titles)
                  if self._has('text') and titles is not None else None)
    tables = {}
    if image_feats is not None:
      tables['image'] = self.image_head(image_feats)
    if text_feats is not None:
      tables['text'] = self.text_head(text_feats)
    mode = self.config.item_mode
    tables['item'] = tables[mode] if mode != 'fused' else self._fuse(
        image_feats, text_feats)
    return {k: layers.l2_normalize(v) for k, v in tables.items()}

  def _encode_together(self, images, texts, item_image, item_title):
    """One pass per tower over queries and items stacked on the batch axis.

    Returns (B, E) image-query, (B, E) text-query (None without that tower)
    and (B, ..., E) item vectors. Text inputs of different lengths are
    right-padded to a common one, which the text tower's padding invariance
    makes exact.
    """
    mode = self.config.item_mode
    b = images.shape[0] if images is not None else texts.shape[0]
    image_feats = text_feats = None
    if self._has('image'):
      images = [images]
      if mode in ('image', 'fused'):
        images.append(_flat(item_image, 3)[0])
        lead = item_image.shape[:-3]
      image_feats = self._image_features(jnp.concatenate(images, 0))
    if self._has('text'):
      texts = [texts]
      if mode in ('text', 'fused'):
        texts.append(_flat(item_title, 1)[0])
        lead = item_title.shape[:-1]
      t = max(x.shape[-1] for x in texts)
      texts = [jnp.pad(x, ((0, 0), (0, t - x.shape[-1]))) for x in texts]
      text_feats = self._text_features(jnp.concatenate(texts, 0))
    q_image = q_text = None
    if image_feats is not None:
      q_image = layers.l2_normalize(self.image_head(image_feats[:b]))
    if text_feats is not None:
      q_text = layers.l2_normalize(self.text_head(text_feats[:b]))
    if mode == 'image':
      item = self.image_head(image_feats[b:])
    elif mode == 'text':
      item = self.text_head(text_feats[b:])
    else:
      item = self._fuse(None if image_feats is None else image_feats[b:],
                        None if text_feats is None else text_feats[b:])
    item = layers.l2_normalize(item)
    return q_image, q_text, item.reshape(lead + item.shape[-1:])

  def encode_batch(self, query_is_image: jax.Array, query_image: jax.Array,
                   query_text: jax.Array, item_image: jax.Array | None = None,
                   item_title: jax.Array | None = None):
    """Queries and items with one pass per tower (the SCL train step).

    Args:
      query_is_image: (B,) bool.
      query_image: (B, S, S, 3) (None without an image tower).
      query_text: (B, T) (None without a text tower).
      item_image: (B, ..., S, S, 3), e.g. the positive and the hard negatives
        stacked as (B, 1 + H, ...); may be None in item_mode 'text' or
        without an image tower.
      item_title: (B, ..., T'), T' may differ from T; may be None in
        item_mode 'image' or without a text tower.

    Returns:
      (B, E) queries as `encode_query`, (B, ..., E) items as `encode_item`.
      Stacking the query and item inputs of a tower into one batch gives each
      tower one (larger) pass instead of two, which halves the compiled graph.
    """
    q_image, q_text, item = self._encode_together(
        query_image, query_text, item_image, item_title)
    if q_image is None or q_text is None:
      return (q_text if q_image is None else q_image), item
    return jnp.where(query_is_image[:, None], q_image, q_text), item

  def temperature(self) -> jax.Array:
    """The softmax temperature: exp(log_temperature), clipped."""
    cfg = self.config
    return layers.clip_temperature(
        self.log_temperature, cfg.min_temperature, cfg.max_temperature)

  def __call__(self, images: jax.Array, tokens: jax.Array):
    """Touches every submodule (use it for `init`), one pass per tower.

    Args:
      images: (B, S, S, 3), used as image queries and as item images (None
        without an image tower).
      tokens: (B, T), used as text queries and as item titles (None without
        a text tower).

    Returns:
      dict(image=(B, E), text=(B, E), item=(B, E), temperature=scalar), as
      `encode_image`, `encode_text`, `encode_item` and `temperature` give;
      no 'image' / 'text' entry without that tower.
    """
    q_image, q_text, item = self._encode_together(images, tokens, images,
                                                  tokens)
    out = dict(item=item, temperature=self.temperature())
    if q_image is not None:
      out['image'] = q_image
    if q_text is not None:
      out['text'] = q_text
    return out
