"""Pre-training: SCL, its ablations and the CLIP / i2i baselines.

One objective object per family; `train_lib.fit` runs the loop. Objectives
(B batch, H hard negatives, K queue size, E embedding width):
  Scl    scl              InfoNCE of each online query against [key of the
                          purchased item, negatives], plus the reverse
                          direction (online purchased item against [key of
                          the query, negatives]) so that the item head, which
                          makes the vectors we ship, gets gradient;
                          + lambda * triplet(online query, momentum keys of the
                          purchased and the clicked-not-bought items: both
                          keys from one encoder, so the margin compares like
                          with like). Two independent choices:
                          `negatives` 'queue' (MoCo: FIFO queues of past item
                          / query keys) or 'in_batch' (the batch's other
                          keys); `key_encoder` 'momentum' (EMA encoder, no
                          gradient) or 'online' (the trained encoder,
                          gradient on both sides). Keys of the query's own
                          purchased item are masked (not negatives). The
                          momentum is constant or rises on a cosine to 1
                          (`momentum_schedule`).
                          In-batch, sessions with the same purchased item or
                          text query are not negatives of each other.
         scl_no_queue     in-batch negatives, online keys (CLIP-style).
         scl_no_hard_neg  lambda = 0.
                          Without a search log the sessions are co-clicks
                          (pretrain_pipelines.co_click_sessions: the
                          earlier item's image or title is the query, no
                          hard negatives).
  Clip   clip_o / clip_e  symmetric in-batch InfoNCE of image vs text on
                          generic captions / on catalogue image vs title (old
                          items only); rows with identical caption / title
                          tokens are not negatives of each other.
  I2i    i2i              symmetric in-batch InfoNCE of co-clicked item pairs;
                          pairs sharing an item are not negatives.
The duplicate masks beyond the same purchased item follow
config.mask_duplicates (off: the unmasked baselines, for comparison).
On a catalogue with one modality (titles only, images only) the encoder has
that tower alone and the fused head reads it (item_encoder.modalities).
The temperature is learned (clipped) in every case. The reference methods
(raw pixels, bag of tokens) train nothing: `run` only evaluates them.

`run(config, workdir)` checks that the dataset can serve the method (before
any training), trains, checkpoints (params, optimizer, momentum encoder,
queues, step, data iterator, config), resumes, evaluates on held-out search
sessions (or, without a search log, on held-out co-clicks ranked against the
catalogue: pretrain_eval.evaluate_encoder) and writes the catalogue's vector table.

(Over the house's ~450 lines on purpose: the objectives are small classes
that only this trainer builds, and the data checks say which objective a
dataset can serve; one module reads as the method's whole definition.)
"""

import functools
import os

import jax
import jax.numpy as jnp
import optax

from mmrec import contrastive
from mmrec import item_encoder
from mmrec import pretrain_eval
from mmrec import sharding
from mmrec import train_lib
from mmrec.data import builders
from mmrec.data import manifest
from mmrec.data import pipelines
from mmrec.data import pretrain_pipelines
from mmrec.data import resolver



class Clip:
  """CLIP-O (generic captions) and CLIP-E (item image <-> title)."""

  def __init__(self, config):
    self.config = config

  def init_extra(self, params, embed_dim):
    del params, embed_dim
    return {}

  def dataset(self, data_dir, items):
    c = self.config
    if c.method == 'clip_o':
      return pretrain_pipelines.captions(data_dir, batch_size=c.batch_size,
                                         seed=c.seed)
    return pretrain_pipelines.catalogue(data_dir, items,
                                        batch_size=c.batch_size, seed=c.seed)

  def pair(self, apply, batch):
    """The two sides of each positive pair: (image, text) vectors."""
    return (apply(batch['image'], method='encode_image'),
            apply(batch['text'], method='encode_text'))

  def duplicates(self, batch):
    """(B, B) bool: rows whose pairs are not negatives of each other.

    Identical caption (CLIP-O) or title (CLIP-E) tokens: the other row's
    image is as much a positive of the text as the row's own. The same item
    twice has the same title, so CLIP-E's rule covers it too.
    """
    return contrastive.same_rows(batch['text'])

  def loss(self, params, extra, batch, model):
    """Symmetric in-batch InfoNCE of the pairs; (loss, (metrics, None))."""
    del extra
    apply = functools.partial(model.apply, {'params': params})
    temp = apply(method='temperature')
    same = self.duplicates(batch) if self.config.mask_duplicates else None
    loss = jnp.mean(contrastive.clip_loss(*self.pair(apply, batch), temp,
                                          same=same))
    return loss, ({'temperature': temp, 'loss': loss}, None)

  def update_extra(self, extra, params, aux, batch, step):
    del params, aux, batch, step
    return extra


class I2i(Clip):
  """Co-clicked item pairs as positives (what the paper rejects)."""

  def dataset(self, data_dir, items):
    c = self.config
    return pretrain_pipelines.co_clicks(
        data_dir, items, batch_size=c.batch_size, seed=c.seed,
        num_pairs=c.num_i2i_pairs)

  def pair(self, apply, batch):
    return (apply(batch.get('a_image'), batch.get('a_title'),
                  method='encode_item'),
            apply(batch.get('b_image'), batch.get('b_title'),
                  method='encode_item'))

  def duplicates(self, batch):
    # Pairs sharing an item, in either position: a_i's partner b_j is then
    # the same item as b_i or a co-click of a_i itself.
    return contrastive.shares_any(batch['a_item'], batch['b_item'])


def momentum_at(step, base, num_steps, schedule):
  """The EMA momentum after training step `step` (0-based).

  'constant': base. 'cosine' (BYOL, MoCo v3): 1 - (1 - base) *
  (1 + cos(pi * step / num_steps)) / 2, from base at step 0 up to 1 at the
  end: fast-moving keys while the encoder changes fast, frozen-ish keys (a
  consistent queue) once it settles. A function of the step alone, so a
  resumed run continues the same schedule.
  """
  if schedule == 'constant':
    return jnp.asarray(base, jnp.float32)
  if schedule != 'cosine':
    raise ValueError(f'momentum_schedule must be "constant" or "cosine", got '
                     f'{schedule!r}')
  frac = jnp.minimum(jnp.asarray(step, jnp.float32) / num_steps, 1.0)
  return 1.0 - (1.0 - base) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))


class Scl:
  """Semantic-aware contrastive learning and its two ablations."""

  def __init__(self, config):
    if config.negatives not in ('queue', 'in_batch'):
      raise ValueError(f'config.negatives must be "queue" or "in_batch", got '
                       f'{config.negatives!r}')
    if config.key_encoder not in ('momentum', 'online'):
      raise ValueError(f'config.key_encoder must be "momentum" or "online", '
                       f'got {config.key_encoder!r}')
    self.config = config

  def init_extra(self, params, embed_dim):
    # The momentum encoder exists with online keys too: the triplet term
    # always reads momentum keys of the hard negatives.
    extra = {'momentum': params}
    if self.config.negatives == 'queue':
      size = self.config.queue_size
      extra.update(queue_items=contrastive.init_queue(size, embed_dim),
                   queue_queries=contrastive.init_queue(size, embed_dim))
    return extra

  def dataset(self, data_dir, items):
    c = self.config
    if uses_co_clicks(c.method, manifest.load(data_dir)):
      return pretrain_pipelines.co_click_sessions(
          data_dir, items, batch_size=c.batch_size, seed=c.seed,
          num_pairs=c.num_i2i_pairs)
    return pretrain_pipelines.search_sessions(
        data_dir, items, batch_size=c.batch_size, seed=c.seed,
        augment=c.augment)

  def loss(self, params, extra, batch, model):
    # The momentum encoder (no gradient) embeds the momentum keys of the
    # purchased item and query, and always the hard negatives, which are 3x
    # the batch and would triple the backward pass if encoded online.
    c = self.config
    apply = functools.partial(model.apply, {'params': params})
    temp = apply(method='temperature')
    metrics = {'temperature': temp}
    use_triplet = c.triplet_weight > 0
    # A catalogue with one modality has no batch fields of the other (None).
    q_image, q_text = batch.get('query_image'), batch.get('query_text')
    pos_in = [batch.get(f'pos_{k}') for k in ('image', 'title')]
    pos_in = [None if x is None else x[:, None] for x in pos_in]
    query, items = apply(batch['query_is_image'], q_image, q_text, *pos_in,
                         method='encode_batch')
    pos = items[:, 0]
    m_in = pos_in
    if use_triplet:
      m_in = [None if x is None else jnp.concatenate(
          [x, batch[f'neg_{k}']], 1) for x, k in zip(pos_in,
                                                     ('image', 'title'))]
    m_query, m_items = jax.lax.stop_gradient(model.apply(
        {'params': extra['momentum']}, batch['query_is_image'], q_image,
        q_text, *m_in, method='encode_batch'))
    m_pos = m_items[:, 0]
    # The InfoNCE keys: the item key scores the query, the query key the
    # item. Online keys carry gradient, so both towers learn from both sides.
    if c.key_encoder == 'momentum':
      k_query, k_item = m_query, m_pos
    else:
      k_query, k_item = query, pos
    aux = None
    if c.negatives == 'queue':
      pos_id = batch['pos_item'][:, None]
      qi, qq = extra['queue_items'], extra['queue_queries']
      l_q2i = contrastive.info_nce(query, k_item, qi['keys'], temp,
                                   qi['valid'] & (qi['ids'] != pos_id))
      l_i2q = contrastive.info_nce(pos, k_query, qq['keys'], temp,
                                   qq['valid'] & (qq['ids'] != pos_id))
      nce = 0.5 * jnp.mean(l_q2i + l_i2q)
      aux = jax.lax.stop_gradient((k_query, k_item))
    else:
      nce = jnp.mean(contrastive.clip_loss(
          query, pos, temp, same=scl_duplicates(batch, c), a_keys=k_query,
          b_keys=k_item))
    loss = nce
    metrics['nce'] = nce
    if use_triplet:
      trip = jnp.mean(contrastive.triplet_loss(
          query, m_pos, m_items[:, 1:], batch['neg_mask'], c.triplet_margin))
      loss = loss + c.triplet_weight * trip
      metrics['triplet'] = trip
    # Accuracy of the query against the batch's purchased items (a cheap,
    # noisy training signal; the real evaluation is on held-out sessions).
    sim = query @ pos.T
    metrics['batch_accuracy'] = jnp.mean(jnp.argmax(sim, 1) == jnp.arange(
        sim.shape[0]))
    return loss, (dict(metrics, loss=loss), aux)

  def update_extra(self, extra, params, aux, batch, step):
    # EMA of the online params: step size 1 - m.
    c = self.config
    m = momentum_at(step, c.momentum, c.num_steps, c.momentum_schedule)
    extra = dict(extra, momentum=optax.incremental_update(
        params, extra['momentum'], 1.0 - m))
    if aux is not None:
      k_query, k_item = aux
      ids = batch['pos_item']
      extra.update(
          queue_items=contrastive.enqueue(extra['queue_items'], k_item,
                                          ids=ids),
          queue_queries=contrastive.enqueue(extra['queue_queries'], k_query,
                                            ids=ids))
    return extra


def scl_duplicates(batch, config):
  """(B, B) bool: sessions that are not in-batch negatives of each other.

  The same purchased item (always: it is the same key), and, with
  config.mask_duplicates, the same text query: identical queries embed
  identically, so each one's item is a positive of the other, in both
  directions. Image queries are not compared: rendered user photos carry
  noise and are never pixel-identical here (a real log with repeated photos
  would need an id from the pipeline). Co-click sessions have that id
  (`query_item`): the same query item is the same query.
  """
  same = contrastive.same_rows(batch['pos_item'])
  if config.mask_duplicates and 'query_item' in batch:
    # Co-click sessions: the same query item, in either modality.
    same |= contrastive.same_rows(batch['query_item'])
  elif config.mask_duplicates and 'query_text' in batch:
    text = ~batch['query_is_image']
    same |= (contrastive.same_rows(batch['query_text'])
             & text[:, None] & text[None])
  return same


OBJECTIVES = {'scl': Scl, 'scl_no_queue': Scl, 'scl_no_hard_neg': Scl,
              'clip_o': Clip, 'clip_e': Clip, 'i2i': I2i}


# What each method reads: needs, each (alternatives, why), met when the
# dataset has any one alternative (table, fields) (manifest.has): its
# training data. Items need one modality, not both: the encoder has the
# towers of the modalities the catalogue has (item_encoder.modalities), and
# the SCL family takes its positives from search sessions, else from
# co-clicks. Its evaluation (pretrain_eval.evaluate_encoder) needs one of
# _EVAL_ANY: held-out search sessions, or test-split clicks with behaviour
# histories (whether any such click exists, and whether co-click training
# has a pair, is checked on the data: check_data).
_ANY_ITEMS = (((manifest.ITEMS, ('image',)), (manifest.ITEMS, ('title',))),
              'needs item images or titles')
_BOTH = (((manifest.ITEMS, ('image', 'title')),),
         'aligns each item image with its title: needs both')
_CO_CLICKS = (manifest.IMPRESSIONS, ('seq_item', 'seq_len'))
_EVAL_ANY = ((manifest.SEARCH, ('query_text', 'purchased_item'),
              'evaluation needs held-out query -> purchase sessions'),
             (manifest.IMPRESSIONS, ('item_id', 'label', 'seq_item',
                                     'seq_len'),
              'evaluation needs held-out clicks with behaviour histories'))
SCL_METHODS = ('scl', 'scl_no_queue', 'scl_no_hard_neg')
NEEDS = {
    **{m: (_ANY_ITEMS, (((manifest.SEARCH, ('purchased_item',)), _CO_CLICKS),
                        'needs query -> purchase pairs or co-clicks in '
                        'behaviour histories'))
       for m in SCL_METHODS},
    'clip_o': ((((manifest.ITEMS, ('image',)),), 'needs item images (its '
                'item vector is the image tower)'),
               (((manifest.CAPTIONS, ('image', 'caption')),),
                'needs generic (image, caption) pairs')),
    'clip_e': (_BOTH,),
    'i2i': (_ANY_ITEMS, ((_CO_CLICKS,), 'needs co-clicks from behaviour '
                         'histories')),
    'raw_pixels': ((((manifest.ITEMS, ('image',)),), 'needs item images'),),
    'bag_of_tokens': ((((manifest.ITEMS, ('title',)),),
                       'needs item titles'),),
}


def _met(m, need):
  return any(m.has(table, *fields) for table, fields in need[0])


def check_dataset(method, m):
  """Raises manifest.DatasetError if dataset `m` cannot serve `method`,
  naming what is missing and the methods that can run on it."""
  if method not in NEEDS:
    raise ValueError(f'config.method {method!r} is not a pre-training method '
                     f'({", ".join(NEEDS)})')
  evaluable = [n for n in _EVAL_ANY if m.has(n[0], *n[1])]
  eval_need = tuple((((t, f),), why) for t, f, why in (
      evaluable[:1] or _EVAL_ANY[:1]))

  def missing(name):
    return [n for n in NEEDS[name] + eval_need if not _met(m, n)]
  lacking = missing(method)
  if lacking:
    alternatives, why = lacking[0]
    can_run = [k for k in NEEDS if not missing(k)]
    if len(alternatives) == 1:
      table, fields = alternatives[0]
      m.require(method, table, fields, why=f'{method} {why}', can_run=can_run)
    what = ' nor '.join(f'{t} {list(f)}' for t, f in alternatives)
    raise manifest.DatasetError(
        f'dataset {m.name!r} has neither {what}: {method} {why}; methods '
        f'that can run: {", ".join(can_run) or "none"}')


def uses_co_clicks(method, m):
  """Whether `method` trains on co-click pairs of dataset `m`: i2i, and the
  SCL family without a search log."""
  return method == 'i2i' or (method in SCL_METHODS
                             and not m.has(manifest.SEARCH, 'purchased_item'))


def check_data(method, data_dir, num_pairs, seed=0):
  """Raises manifest.DatasetError when a co-click method has no pair to
  train on (a log without clicks, or histories of one item), before any
  training is spent (check_dataset reads only the manifest)."""
  m = manifest.load(data_dir)
  if uses_co_clicks(method, m) and not len(
      pretrain_pipelines.co_click_pairs(data_dir, num_pairs, seed)):
    raise manifest.DatasetError(
        f'dataset {m.name!r} has no co-click pair (two distinct items clicked '
        f'one after the other in a behaviour history): {method} trains on '
        'co-clicks' + ('' if method == 'i2i' else ' without a search log'))


def objective(config):
  if config.method not in OBJECTIVES:
    raise ValueError(f'config.method {config.method!r} has no training '
                     f'objective; trained methods: {sorted(OBJECTIVES)}')
  return OBJECTIVES[config.method](config)


# --------------------------------------------------------------------------
# Optimizer, step, init.


def build_optimizer(config):
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, config.warmup_steps,
      max(config.num_steps, config.warmup_steps + 1))
  # No weight decay on biases, norms and the temperature.
  decay_mask = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
  return optax.chain(
      optax.clip_by_global_norm(1.0),
      optax.adamw(schedule, weight_decay=config.weight_decay,
                  mask=decay_mask))


def train_step(state, batch, rng, *, model, objective, tx):
  """(state, batch, rng) -> (state, metrics)."""
  del rng  # no stochastic layers; augmentation happens in the data pipeline
  grad_fn = jax.value_and_grad(objective.loss, has_aux=True)
  (_, (metrics, aux)), grads = grad_fn(state.params, state.extra, batch,
                                       model)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  extra = objective.update_extra(state.extra, params, aux, batch, state.step)
  metrics['grad_norm'] = optax.tree.norm(grads)
  return state.replace(step=state.step + 1, params=params,
                       opt_state=opt_state, extra=extra), metrics


def init_fn(model, objective, tx, example):
  """rng -> TrainState (boxed params) for the example's shapes."""

  def init(rng):
    params = model.init(rng, example['image'], example['text'])['params']
    return train_lib.TrainState(
        step=jnp.zeros((), jnp.int32), params=params,
        opt_state=tx.init(params),
        extra=objective.init_extra(params, model.config.embed_dim))
  return init


# --------------------------------------------------------------------------
# The job.


def run(config, workdir):
  """Trains (or, for untrained references, only evaluates) one method."""
  os.makedirs(workdir, exist_ok=True)
  data_dir = resolver.data_dir(config.data_dir, config.world, workdir)
  check_dataset(config.method, manifest.load(data_dir))
  items = builders.load_table(data_dir, 'mmrec_items', 'catalogue')
  pretrain_eval.check_evaluable(data_dir, items, config.method)
  check_data(config.method, data_dir, config.num_i2i_pairs, config.seed)
  if config.method in item_encoder.REFERENCE_METHODS:
    encoder = item_encoder.ReferenceEncoder(
        config.method, config.encoder.embed_dim, data_dir, seed=config.seed)
    return _finish(config, workdir, data_dir, encoder, items, step=0)

  obj = objective(config)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.model)
  model = item_encoder.encoder_model(config, data_dir)
  tx = build_optimizer(config)
  progs = train_lib.compile_programs(
      init_fn(model, obj, tx, item_encoder.example_inputs(data_dir,
                                                          config.method)),
      functools.partial(train_step, model=model, objective=obj, tx=tx), mesh)

  def on_init_from(state, params):  # the momentum encoder starts there too
    extra = state.extra
    if 'momentum' in extra:
      extra = dict(extra, momentum=params)
    return state.replace(params=params, extra=extra)

  # The checkpoints record the resolved dataset, so that readers of this
  # encoder (the embedding job, reports) find it without being told.
  saved = config.copy_and_resolve_references()
  saved.data_dir = data_dir
  loop = train_lib.Loop(
      name=f'scl/{config.method}', workdir=workdir, num_steps=config.num_steps,
      batch_size=config.batch_size, seed=config.seed, config=saved,
      checkpoint_every=config.checkpoint_every, log_every=config.log_every,
      resume=config.resume, init_from=config.init_from,
      on_init_from=on_init_from)
  res = train_lib.fit(
      loop, progs,
      pipelines.iterator(obj.dataset(data_dir, items), prefetch_threads=1),
      mesh)
  encoder = item_encoder.Encoder(model, res.state.params, mesh)
  return _finish(config, workdir, data_dir, encoder, items, res.step)


def _finish(config, workdir, data_dir, encoder, items, step):
  """Held-out evaluation + the catalogue's vector table."""
  return pretrain_eval.write_results(
      workdir, encoder, data_dir, items,
      {'method': config.method, 'seed': config.seed, 'step': step})
