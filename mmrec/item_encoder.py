"""Item encoders: build, restore and run them (no training, no evaluation).

`build_encoder` / `encoder_model` make the MultimodalEncoder of a
pre-training config (for a dataset's vocabulary and title length): the
trainer, the embedding job, export and every reader of an encoder checkpoint
use them. `Encoder` wraps trained parameters: sharded batch inference over
the 'data' axis for the catalogue (padded to one compiled shape) and a warm
single-item path for new items (`encode_one`). `ReferenceEncoder` is the
untrained reference of the comparison: a fixed random projection of raw
pixels or of bag-of-token counts. `load_encoder` restores the encoder of a
pre-training workdir.
"""

import os

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from mmrec import checkpointing
from mmrec import multimodal_encoder
from mmrec import sharding
from mmrec.data import builders
from mmrec.data import manifest

REFERENCE_METHODS = ('raw_pixels', 'bag_of_tokens')


def build_encoder(config, vocab_size, max_len, modalities=None):
  """The MultimodalEncoder of `config.encoder` for a vocabulary and length.

  `modalities`: the towers to build (default both). An `item_mode` naming a
  modality not among them becomes the one there is (a method whose item
  vector is the image tower, on titles only, embeds items by their titles).
  """
  enc = config.encoder.to_dict()
  mods = tuple(modalities or multimodal_encoder.MODALITIES)
  # Without a text tower its config is never built into a module, but the
  # dataclass wants a vocabulary and length.
  enc['text'] = dict(enc['text'], vocab_size=vocab_size or 2,
                     max_len=max_len or 1)
  if enc.get('item_mode', 'fused') not in mods + ('fused',):
    enc['item_mode'] = mods[0]
  enc.update(min_temperature=config.min_temperature,
             max_temperature=config.max_temperature, modalities=mods)
  return multimodal_encoder.MultimodalEncoder(
      multimodal_encoder.MultimodalConfig.from_dict(enc))


def modalities(m, method=None):
  """The towers an encoder of `method` has on manifest `m`: the item
  modalities (('image', 'text'), one of them, or () with no content), and
  both for CLIP-O where the dataset has (image, caption) pairs: it trains
  on them whatever the items hold."""
  if method == 'clip_o' and m.has(manifest.CAPTIONS, 'image', 'caption'):
    return multimodal_encoder.MODALITIES
  return tuple(k for k, field in (('image', 'image'), ('text', 'title'))
               if m.has(manifest.ITEMS, field))


def item_shapes(data_dir, method=None):
  """(vocabulary size, text length, image size, modalities) of an encoder
  of `method` on a dataset (None for the sizes of a modality it has not); a
  dataset without item images or titles cannot feed an encoder."""
  m = manifest.load(data_dir)
  mods = modalities(m, method)
  if not mods:
    m.require('pre-training', manifest.ITEMS, ('title',),
              why='the item encoder needs item images or titles')
  vocab = length = None
  if 'text' in mods:
    vocab, length = _vocab_size(m, data_dir), m.text['length']
  return vocab, length, (m.image_size if 'image' in mods else None), mods


def _vocab_size(m, data_dir):
  return m.text.get('vocab_size') or builders.vocab_size(data_dir)


def encoder_model(config, data_dir):
  """`build_encoder` for the vocabulary, title length and modalities of a
  dataset."""
  vocab, length, _, mods = item_shapes(data_dir, config.get('method'))
  return build_encoder(config, vocab, length, mods)


def example_inputs(data_dir, method=None):
  """Dummy (image, text) inputs with the dataset's shapes, for `init` (None
  for a modality the encoder has not)."""
  _, t, s, _ = item_shapes(data_dir, method)
  return {'image': None if s is None else np.zeros((1, s, s, 3), np.uint8),
          'text': None if t is None else np.ones((1, t), np.int32)}


class Encoder:
  """Trained encoder: items / image queries / text queries -> unit vectors."""

  def __init__(self, model, params, mesh, batch_size=1024):
    self.model, self.params, self.mesh = model, params, mesh
    data = mesh.shape['data']
    self.batch_size = max(data, batch_size // data * data)
    apply = lambda method: jax.jit(
        lambda p, *x: model.apply({'params': p}, *x, method=method))
    self._items = apply('encode_item')
    self._images = apply('encode_image')
    self._texts = apply('encode_text')
    self._tables = apply('encode_tables')
    self._one = None

  def has(self, modality):
    return modality in self.model.config.modalities

  def _batched(self, fn, *arrays):
    """`fn(params, *arrays)` in padded, sharded batches; a None array (a
    modality the items have not) stays None."""
    n = len(next(a for a in arrays if a is not None))
    out = []
    for lo in range(0, n, self.batch_size):
      chunk = {str(i): a[lo:lo + self.batch_size] for i, a in enumerate(arrays)
               if a is not None}
      chunk, valid = sharding.pad_batch(chunk, self.batch_size)
      x = sharding.shard_batch(chunk, self.mesh)
      y = fn(self.params, *(x.get(str(i)) for i in range(len(arrays))))
      out.append(jax.tree.map(lambda v: v[:valid], sharding.to_host(y)))
    if not out:
      return np.zeros((0, 0), np.float32)
    return jax.tree.map(lambda *v: np.concatenate(v), *out)

  def items(self, images, titles):
    return self._batched(self._items, images, titles)

  def item_tables(self, images, titles):
    """{'item': the item vector, 'image': the image tower's vector of the
    item image, 'text': the text tower's of the title}: each (N, E).

    Queries and items share the towers and heads, so an item's image vector
    is what an image query of that picture would get.
    """
    return self._batched(self._tables, images, titles)

  def image_queries(self, images):
    """(N, E), or None without an image tower (as ReferenceEncoder)."""
    return self._batched(self._images, images) if self.has('image') else None

  def text_queries(self, tokens):
    return self._batched(self._texts, tokens) if self.has('text') else None

  def encode_one(self, image, title):
    """One new item -> (D,) vector: the path that makes new items servable.

    Runs on one device without the mesh (a single item cannot be split over
    'data'); compiled on first use, warm afterwards.
    """
    if self._one is None:
      device = jax.devices()[0]
      self._one_params = jax.device_put(self.params, device)
      self._one = jax.jit(lambda p, i, t: self.model.apply(
          {'params': p}, None if i is None else i[None],
          None if t is None else t[None], method='encode_item')[0])
    return np.asarray(self._one(self._one_params, image, title))


class ReferenceEncoder:
  """Untrained references: a fixed random projection to `dim` dimensions.

  raw_pixels embeds images (centred pixels) and has no text side;
  bag_of_tokens embeds token counts (titles, query texts) and has no image
  side. The projection preserves cosine similarities approximately
  (Johnson-Lindenstrauss), so retrieval is close to exact nearest neighbour
  in pixel / token-count space.
  """

  def __init__(self, method, dim, data_dir, seed=0):
    if method not in REFERENCE_METHODS:
      raise ValueError(f'unknown reference method {method!r}')
    self.method = method
    # Each reads one modality: a dataset with titles only (MovieLens) or
    # images only still has its reference.
    m = manifest.load(data_dir)
    if method == 'raw_pixels':
      m.require(method, manifest.ITEMS, ('image',), why='needs item images')
      width = m.image_size**2 * 3
    else:
      m.require(method, manifest.ITEMS, ('title',), why='needs item titles')
      self.vocab_size = width = _vocab_size(m, data_dir)
    rng = np.random.default_rng(seed)
    self.proj = (rng.normal(size=(width, dim)) / np.sqrt(dim)).astype(
        np.float32)

  def _pixels(self, images):
    x = images.reshape(len(images), -1).astype(np.float32) / 255 - 0.5
    return unit(x @ self.proj)

  def _tokens(self, tokens):
    counts = np.zeros((len(tokens), self.vocab_size), np.float32)
    rows = np.repeat(np.arange(len(tokens)), tokens.shape[1])
    np.add.at(counts, (rows, tokens.reshape(-1)), 1.0)
    counts[:, 0] = 0  # padding
    return unit(counts @ self.proj)

  def items(self, images, titles):
    return (self._pixels(images) if self.method == 'raw_pixels'
            else self._tokens(titles))

  def item_tables(self, images, titles):
    """As Encoder.item_tables: the item vector and its one modality's."""
    vectors = self.items(images, titles)
    modality = 'image' if self.method == 'raw_pixels' else 'text'
    return {'item': vectors, modality: vectors}

  def image_queries(self, images):
    return self._pixels(images) if self.method == 'raw_pixels' else None

  def text_queries(self, tokens):
    return self._tokens(tokens) if self.method == 'bag_of_tokens' else None

  def encode_one(self, image, title):
    return self.items(image[None], title[None])[0]


def unit(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def load_encoder(encoder_workdir, data_dir=None, mesh=None, batch_size=1024):
  """Restores the encoder of a pre-training workdir (latest checkpoint).

  Returns (Encoder, its config, step, the dataset directory: `data_dir` or
  the one the encoder was trained on).
  """
  ckpt_dir = os.path.join(encoder_workdir, checkpointing.SUBDIR)
  with checkpointing.Checkpointer(ckpt_dir, read_only=True) as ckpt:
    step = ckpt.latest_step()
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {ckpt_dir}: train the '
                              'encoder first (config.job = "scl")')
  source = os.path.join(ckpt_dir, str(step))
  _, saved = checkpointing.restore_from(source, None)
  config = ml_collections.ConfigDict(saved)
  data_dir = data_dir or config.data_dir
  mesh = mesh or sharding.make_mesh()
  model = encoder_model(config, data_dir)
  example = example_inputs(data_dir, config.get('method'))
  abstract = jax.eval_shape(lambda: nn.unbox(model.init(
      jax.random.key(0), example['image'], example['text'])['params']))
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=sharding.replicated(mesh)),
      abstract)
  restored, _ = checkpointing.restore_from(source, {'params': abstract},
                                           partial=True)
  return (Encoder(model, restored['params'], mesh, batch_size), config, step,
          data_dir)
