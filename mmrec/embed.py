"""Item embedding: trained or reference encoders -> the item-vector table.

`encoder_model` builds the MultimodalEncoder of a pre-training config for a
dataset (the trainer and every reader of its checkpoints use it). `Encoder` wraps a trained MultimodalEncoder: sharded batch inference over the
'data' axis for the catalogue (padded to one compiled shape) and a warm
single-item path for new items (`encode_one`). `ReferenceEncoder` is the
untrained reference of the comparison: a fixed random projection of raw
pixels or of bag-of-token counts. `evaluate_encoder` is every method's
held-out evaluation (retrieval_eval.py): search sessions where the dataset
has a search log, else co-clicks ranked against the catalogue.

The embedding job (`config.job = 'embed'`, experiments/configs/embed.py)
restores an encoder from a pre-training workdir and writes
`<workdir>/item_vectors.npz` (see vector_table.py) atomically. The items come
from `config.data_dir`, by default the dataset the encoder was trained on
(recorded, resolved, in its checkpoint's config).
"""

import os
import time

from absl import logging
import flax.linen as nn
import jax
import ml_collections
import numpy as np

from mmrec import checkpointing
from mmrec import multimodal_encoder
from mmrec import retrieval_eval
from mmrec import sharding
from mmrec import train_lib
from mmrec import vector_table
from mmrec.data import builders
from mmrec.data import manifest

REFERENCE_METHODS = ('raw_pixels', 'bag_of_tokens')
# The evaluation tasks (eval_task): held-out search sessions, or held-out
# co-clicks ranked against the catalogue (retrieval_eval.py says why).
SEARCH_EVAL, CO_CLICK_EVAL = 'search', 'co_click'
# Co-click queries drawn from the test split (in a seeded order, each
# distinct (query, answer) pair once): a recall@10 near 0.1 to about +-0.01
# (95%), and the reading stops there on a large log.
CO_CLICK_MAX_PAIRS = 5000


def build_encoder(config, vocab_size, max_len):
  """The MultimodalEncoder of `config.encoder` for a vocabulary and length."""
  enc = config.encoder.to_dict()
  enc['text'] = dict(enc['text'], vocab_size=vocab_size, max_len=max_len)
  enc.update(min_temperature=config.min_temperature,
             max_temperature=config.max_temperature)
  return multimodal_encoder.MultimodalEncoder(
      multimodal_encoder.MultimodalConfig.from_dict(enc))


def item_shapes(data_dir):
  """(vocabulary size, title length, image size) from a dataset's manifest;
  a dataset without item images and titles cannot feed an encoder."""
  m = manifest.load(data_dir)
  m.require('pre-training', manifest.ITEMS, ('image', 'title'),
            why='the item encoder needs item images and titles')
  return _vocab_size(m, data_dir), m.text['length'], m.image_size


def _vocab_size(m, data_dir):
  return m.text.get('vocab_size') or builders.vocab_size(data_dir)


def encoder_model(config, data_dir):
  """`build_encoder` for the vocabulary and title length of a dataset."""
  vocab, length, _ = item_shapes(data_dir)
  return build_encoder(config, vocab, length)


def example_inputs(data_dir):
  """Dummy (image, text) inputs with the dataset's shapes, for `init`."""
  _, t, s = item_shapes(data_dir)
  return {'image': np.zeros((1, s, s, 3), np.uint8),
          'text': np.ones((1, t), np.int32)}


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

  def _batched(self, fn, *arrays):
    n = len(arrays[0])
    out = []
    for lo in range(0, n, self.batch_size):
      chunk = {str(i): a[lo:lo + self.batch_size] for i, a in enumerate(arrays)}
      chunk, valid = train_lib.pad_batch(chunk, self.batch_size)
      x = sharding.shard_batch(chunk, self.mesh)
      y = fn(self.params, *(x[str(i)] for i in range(len(arrays))))
      out.append(jax.tree.map(lambda v: v[:valid], train_lib.to_host(y)))
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
    return self._batched(self._images, images)

  def text_queries(self, tokens):
    return self._batched(self._texts, tokens)

  def encode_one(self, image, title):
    """One new item -> (D,) vector: the path that makes new items servable.

    Runs on one device without the mesh (a single item cannot be split over
    'data'); compiled on first use, warm afterwards.
    """
    if self._one is None:
      device = jax.devices()[0]
      self._one_params = jax.device_put(self.params, device)
      self._one = jax.jit(lambda p, i, t: self.model.apply(
          {'params': p}, i[None], t[None], method='encode_item')[0])
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
    return _unit(x @ self.proj)

  def _tokens(self, tokens):
    counts = np.zeros((len(tokens), self.vocab_size), np.float32)
    rows = np.repeat(np.arange(len(tokens)), tokens.shape[1])
    np.add.at(counts, (rows, tokens.reshape(-1)), 1.0)
    counts[:, 0] = 0  # padding
    return _unit(counts @ self.proj)

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


def _unit(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _new_items(data_dir, items):
  return items['launch_day'] >= manifest.load(data_dir).first_test_day


def eval_task(m):
  """SEARCH_EVAL where manifest `m` declares search sessions, else
  CO_CLICK_EVAL (every dataset has impressions)."""
  return (SEARCH_EVAL if m.has(manifest.SEARCH, 'query_text',
                               'purchased_item') else CO_CLICK_EVAL)


_CO_CLICKS = {}  # (data_dir, max_pairs) -> (pairs, candidates)
_SEARCH = {}  # data_dir -> (candidates, canonical)


def _candidates(data_dir, canonical, targets):
  m = manifest.load(data_dir)
  return retrieval_eval.catalogue_candidates(
      canonical, targets, manifest.retrieval_candidates(data_dir, m),
      m.item_zero_reserved)


def search_candidates(data_dir, items, purchased=None):
  """(candidates, canonical) of the search evaluation's catalogue ranking
  (retrieval_eval.py); computed once per process and dataset. `purchased`:
  the held-out sessions' items, read here when not given."""
  key = os.path.abspath(data_dir)
  if key not in _SEARCH:
    if purchased is None:
      purchased = builders.load_table(data_dir, manifest.SEARCH,
                                      'test')['purchased_item']
    canonical = retrieval_eval.canonical_items(items)
    _SEARCH[key] = (_candidates(data_dir, canonical, purchased), canonical)
  return _SEARCH[key]


def co_click_queries(data_dir, items, max_pairs=CO_CLICK_MAX_PAIRS,
                     chunk=4096, seed=0):
  """The co-click evaluation's (pairs, candidates) (retrieval_eval.py).

  Clicks of the test split whose history is not empty, read in a seeded
  order until `max_pairs` distinct (newest behaviour, clicked item) pairs
  are found: the same queries for every method and seed of a dataset.
  Computed once per process and dataset.
  """
  key = (os.path.abspath(data_dir), max_pairs)
  if key not in _CO_CLICKS:
    canonical = retrieval_eval.canonical_items(items)
    source = builders.data_source(data_dir, manifest.IMPRESSIONS, 'test')
    order = np.random.default_rng(seed).permutation(len(source))
    query, target = [], []
    pairs = np.zeros((0, 2), np.int64)
    for lo in range(0, len(order), chunk):
      rows = builders.read_rows(source, order[lo:lo + chunk])
      clicked = (rows['label'] > 0) & (rows['seq_len'] > 0)
      query.append(rows['seq_item'][clicked, -1])  # newest last
      target.append(rows['item_id'][clicked])
      pairs = retrieval_eval.co_click_pairs(
          np.concatenate(query), np.concatenate(target), canonical,
          max_pairs)
      if len(pairs) >= max_pairs:
        break
    _CO_CLICKS[key] = (pairs, _candidates(data_dir, canonical, pairs[:, 1]))
  return _CO_CLICKS[key]


def check_evaluable(data_dir, items=None, method='pre-training'):
  """Raises manifest.DatasetError when the dataset gives the evaluation no
  query (before any training is spent). `items`: the catalogue, read here
  when needed and not given."""
  m = manifest.load(data_dir)
  if eval_task(m) == SEARCH_EVAL:
    return
  if items is None:
    items = builders.load_table(data_dir, manifest.ITEMS, 'catalogue')
  if not len(co_click_queries(data_dir, items)[0]):
    raise manifest.DatasetError(
        f'dataset {m.name!r} has no search log and no test-split click with '
        'a behaviour history (seq_len > 0) of two distinct known items: '
        f'{method}\'s evaluation ranks the catalogue for held-out searches or '
        'co-clicks and has no query (give search.parquet, or histories)')


def eval_info(data_dir, items):
  """What `evaluate_encoder` ranks on this dataset: {'task', 'queries',
  'candidates'} (co-clicks) or {'task', 'queries'} (search sessions)."""
  if eval_task(manifest.load(data_dir)) == SEARCH_EVAL:
    n = manifest.load(data_dir).split_rows(manifest.SEARCH, 'test')
    return {'task': SEARCH_EVAL, 'queries': n,
            'candidates': int(len(search_candidates(data_dir, items)[0]))}
  pairs, candidates = co_click_queries(data_dir, items)
  return {'task': CO_CLICK_EVAL, 'queries': int(len(pairs)),
          'candidates': int(len(candidates))}


def evaluate_encoder(encoder, data_dir, items):
  """Held-out retrieval with every vector table of the encoder.

  Returns (metrics, tables, ranks): retrieval_eval.summarise slices of the
  item vector ('image', 'text', 'image_new', 'text_new'; the same four with
  '_catalogue' ranked against the catalogue; on the world 'image_concept'
  and 'text_concept', retrieval_eval.concept_hits) plus 'image_on_image'
  and 'text_on_text' (queries of a modality ranked by that modality's item
  table, where the encoder has it); `encoder.item_tables`; and the
  per-query ranks (retrieval_eval.query_ranks) under the same slice names.
  On a dataset without search sessions the queries are co-clicks
  (retrieval_eval.co_click_evaluate), which add the 'item' and 'item_new'
  slices (the item table on itself).
  """
  t0 = time.time()
  tables = encoder.item_tables(items.get('image'), items.get('title'))
  logging.info('encoded %d items (%s) in %.1fs', len(tables['item']),
               ', '.join(tables), time.time() - t0)
  if eval_task(manifest.load(data_dir)) == CO_CLICK_EVAL:
    pairs, candidates = co_click_queries(data_dir, items)
    metrics, ranks = retrieval_eval.co_click_evaluate(
        tables, pairs, candidates, _new_items(data_dir, items))
    return metrics, tables, ranks
  sessions = builders.load_table(data_dir, 'mmrec_search', 'test')
  is_image = sessions['query_is_image']

  def queries(fn, inputs, rows):
    idx = np.flatnonzero(rows)
    got = fn(inputs[idx]) if len(idx) else None
    if got is None:
      return None
    full = np.zeros((len(rows), got.shape[1]), np.float32)
    full[idx] = got
    return full

  q = {'image': queries(encoder.image_queries, sessions['query_image'],
                        is_image),
       'text': queries(encoder.text_queries, sessions['query_text'],
                       ~is_image)}
  new = _new_items(data_dir, items)
  ranks = retrieval_eval.query_ranks(sessions, tables['item'], q['image'],
                                     q['text'])
  metrics = retrieval_eval.summarise(ranks, sessions, new)
  candidates, canonical = search_candidates(data_dir, items,
                                            sessions['purchased_item'])
  catalogue = retrieval_eval.query_ranks(
      sessions, tables['item'], q['image'], q['text'], candidates, canonical)
  for name, res in retrieval_eval.summarise(catalogue, sessions, new).items():
    metrics[f'{name}_catalogue'] = res
  ranks.update({f'{m}_catalogue': r for m, r in catalogue.items()})
  oracle = manifest.load(data_dir).oracle
  if oracle:
    with np.load(os.path.join(data_dir, oracle)) as z:
      concept = z['item_concept']  # not the whole oracle: one array
    metrics.update(retrieval_eval.concept_hits(
        sessions, tables['item'], q['image'], q['text'], candidates,
        concept))
  for m in vector_table.MODALITIES:
    if m in tables and q[m] is not None:
      own = retrieval_eval.query_ranks(sessions, tables[m],
                                       **{f'{m}_query_vectors': q[m]})
      ranks[f'{m}_on_{m}'] = own[m]
      metrics[f'{m}_on_{m}'] = retrieval_eval.summarise(own, sessions)[m]
  return metrics, tables, ranks


def save_tables(workdir, tables, metadata):
  """Writes each table of `item_tables` (vector_table.file_name) to
  `workdir`; returns the item table's metadata."""
  for m in vector_table.MODALITIES:
    if m in tables:
      vector_table.save(os.path.join(workdir, vector_table.file_name(m)),
                        tables[m], dict(metadata, modality=m))
  return vector_table.save(os.path.join(workdir, vector_table.FILE),
                           tables['item'], dict(metadata, modality='item'))


def retrieval_examples(encoder, data_dir, items, vectors, num_queries=8, k=8):
  """The first held-out image queries, their top-k catalogue items by cosine
  and the images of both (what a report draws), or None without an image
  side. Co-clicks: the query is the clicked item's picture, the answer
  ('purchased_item') the item clicked on the test day."""
  if eval_task(manifest.load(data_dir)) == CO_CLICK_EVAL:
    return _co_click_examples(encoder, data_dir, items, vectors, num_queries,
                              k)
  sessions = builders.load_table(data_dir, 'mmrec_search', 'test')
  rows = np.flatnonzero(sessions['query_is_image'])[:num_queries]
  q = encoder.image_queries(sessions['query_image'][rows]) if len(rows) else None
  if q is None:
    return None
  top = np.argsort(-(_unit(q) @ _unit(vectors).T), 1)[:, :k]
  purchased = sessions['purchased_item'][rows]
  return {'query_image': sessions['query_image'][rows], 'top_item': top,
          'top_image': items['image'][top], 'purchased_item': purchased,
          'hit': top == purchased[:, None]}


def _co_click_examples(encoder, data_dir, items, vectors, num_queries, k):
  if 'image' not in items:
    return None
  pairs, candidates = co_click_queries(data_dir, items)
  pairs = pairs[:num_queries]
  q = (encoder.image_queries(items['image'][pairs[:, 0]]) if len(pairs)
       else None)
  if q is None:
    return None
  sim = _unit(q) @ _unit(vectors[candidates]).T
  sim[candidates[None] == pairs[:, :1]] = -np.inf  # not the query's own item
  top = candidates[np.argsort(-sim, 1)[:, :k]]
  return {'query_image': items['image'][pairs[:, 0]], 'top_item': top,
          'top_image': items['image'][top], 'purchased_item': pairs[:, 1],
          'hit': top == pairs[:, 1:]}


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
  example = example_inputs(data_dir)
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


def run(config, workdir):
  """The embedding job: encoder checkpoint -> item-vector table."""
  if not config.encoder_workdir:
    raise ValueError('config.encoder_workdir must name a pre-training workdir')
  encoder, enc_config, step, data_dir = load_encoder(
      config.encoder_workdir, config.data_dir or None,
      batch_size=config.batch_size)
  items = builders.load_table(data_dir, 'mmrec_items', 'catalogue')
  t0 = time.time()
  tables = encoder.item_tables(items['image'], items['title'])
  seconds = time.time() - t0
  meta = save_tables(workdir, tables, {
      'encoder_workdir': os.path.abspath(config.encoder_workdir),
      'encoder_step': step, 'encoder_config': enc_config.to_dict(),
      'method': enc_config.method})
  n = len(tables['item'])
  logging.info('embedded %d items (%s) in %.1fs (%.0f items/s) -> %s', n,
               ', '.join(tables), seconds, n / seconds, workdir)
  return meta
