"""Pre-training loop: SCL, its ablations and the CLIP / i2i baselines.

Objectives (B batch, H hard negatives, K queue size, E embedding width):
  scl              InfoNCE of each online query against [momentum key of the
                   purchased item, item queue], plus the reverse direction
                   (online purchased item against [momentum query key, query
                   queue]) so that the item head, which makes the vectors we
                   ship, gets gradient; + lambda * triplet(online query,
                   momentum keys of the purchased and the clicked-not-bought
                   items: both keys from one encoder, so the margin compares
                   like with like). Queue keys of the query's own purchased
                   item are masked (not negatives).
  scl_no_queue     the same with in-batch negatives (symmetric, online keys)
                   instead of the queues.
  scl_no_hard_neg  lambda = 0.
  clip_o / clip_e  symmetric in-batch InfoNCE of image vs text on generic
                   captions / on catalogue image vs title (old items only).
  i2i              symmetric in-batch InfoNCE of co-clicked item pairs.
The temperature is learned (clipped) in every case.

`train_and_evaluate(config, workdir)` trains, checkpoints (params, optimizer,
momentum encoder, queues, step, data iterator, config), resumes, evaluates on
held-out sessions and writes the catalogue's vector table.
"""

import functools
import json
import os

from absl import logging
import grain
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mmrec import checkpointing
from mmrec import contrastive
from mmrec import embed
from mmrec import files
from mmrec import multimodal_encoder
from mmrec import sharding
from mmrec import train_lib
from mmrec import vector_table
from mmrec.data import build
from mmrec.data import builders
from mmrec.data import pipelines

EVAL_FILE = 'pretrain_eval.json'
SEARCH_METHODS = ('scl', 'scl_no_queue', 'scl_no_hard_neg')


def data_dir_of(config, workdir):
  return config.data_dir or os.path.join(workdir, 'world')


def ensure_world(config, workdir):
  """The world's directory, built from `config.world` if not complete.

  With several processes, process 0 builds it and the others wait for it.
  """
  data_dir = data_dir_of(config, workdir)
  if jax.process_index() == 0 and not builders.is_complete(data_dir):
    logging.info('no complete world in %s: building it', data_dir)
    build.run(ml_collections.ConfigDict({'world': config.world}), data_dir)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('mmrec_ensure_world')
  return data_dir


def model_from_config(config, data_dir):
  """The MultimodalEncoder for `config.encoder` and the world's vocabulary."""
  return build_model(config, builders.vocab_size(data_dir),
                     builders.load_world_config(data_dir)['title_length'])


def build_model(config, vocab_size, max_len):
  enc = config.encoder.to_dict()
  enc['text'] = dict(enc['text'], vocab_size=vocab_size, max_len=max_len)
  enc.update(min_temperature=config.min_temperature,
             max_temperature=config.max_temperature)
  return multimodal_encoder.MultimodalEncoder(
      multimodal_encoder.MultimodalConfig.from_dict(enc))


# --------------------------------------------------------------------------
# Data.


@functools.cache
def _co_click_pairs(data_dir, num_pairs, seed):
  """Consecutive clicks in behaviour sequences: the i2i positives."""
  source = builders.data_source(data_dir, 'mmrec_impressions', 'train')
  # Rows are in day order: the last day's sequences are the longest.
  n = min(len(source), max(num_pairs // 4, 1000))
  rows = builders.read_rows(source, range(len(source) - n, len(source)))
  seq, length = rows['seq_item'], rows['seq_len']
  valid = np.arange(seq.shape[1])[None] >= seq.shape[1] - length[:, None]
  both = valid[:, 1:] & valid[:, :-1]
  pairs = np.stack([seq[:, :-1][both], seq[:, 1:][both]], 1)
  pairs = np.unique(pairs[pairs[:, 0] != pairs[:, 1]], axis=0)
  rng = np.random.default_rng(seed)
  return pairs[rng.permutation(len(pairs))[:num_pairs]]


class _Gather(grain.transforms.Map):
  """Index batch -> rows of in-memory arrays (small tables, pairs)."""

  def __init__(self, fn):
    self._fn = fn

  def map(self, idx):
    return self._fn(idx)


def train_dataset(config, data_dir, items):
  """The training batches of `config.method` (repeats forever)."""
  kw = dict(batch_size=config.batch_size, seed=config.seed, num_epochs=None)
  m = config.method
  if m in SEARCH_METHODS:
    return pipelines.pretrain_dataset(data_dir, 'train', augment=config.augment,
                                      items=items, **kw)
  if m == 'clip_o':
    ds = pipelines.table_dataset(data_dir, 'mmrec_captions', 'train', **kw)
    return ds.map(_Gather(lambda b: {'image': b['image'],
                                     'text': b['caption']}))
  if m == 'clip_e':
    # Only items launched before the test day: new items stay unseen.
    old = np.flatnonzero(items['launch_day'] < builders.first_test_day(
        builders.load_world_config(data_dir)))
    ds = pipelines.index_batches(len(old), drop_remainder=True, shuffle=True,
                                 **kw)
    return ds.map(_Gather(lambda idx: {'image': items['image'][old[idx]],
                                       'text': items['title'][old[idx]]}))
  if m == 'i2i':
    pairs = _co_click_pairs(data_dir, config.num_i2i_pairs, config.seed)
    ds = pipelines.index_batches(len(pairs), drop_remainder=True, shuffle=True,
                                 **kw)

    def gather(idx):
      a, b = pairs[idx, 0], pairs[idx, 1]
      return {'a_image': items['image'][a], 'a_title': items['title'][a],
              'b_image': items['image'][b], 'b_title': items['title'][b],
              'a_item': a, 'b_item': b}
    return ds.map(_Gather(gather))
  raise ValueError(f'config.method {m!r} has no training data')


# --------------------------------------------------------------------------
# Loss and step.


def loss_fn(params, extra, batch, model, config):
  """Loss and metrics of one batch; pure, so it can be checked on any mesh."""
  apply = functools.partial(model.apply, {'params': params})
  temp = apply(method='temperature')
  m = config.method
  metrics = {'temperature': temp}
  if m in ('clip_o', 'clip_e'):
    img = apply(batch['image'], method='encode_image')
    txt = apply(batch['text'], method='encode_text')
    loss = jnp.mean(contrastive.clip_loss(img, txt, temp))
    return loss, dict(metrics, loss=loss)
  if m == 'i2i':
    a = apply(batch['a_image'], batch['a_title'], method='encode_item')
    b = apply(batch['b_image'], batch['b_title'], method='encode_item')
    loss = jnp.mean(contrastive.clip_loss(a, b, temp))
    return loss, dict(metrics, loss=loss)

  # SCL family. The momentum encoder (no gradient) embeds the keys: the
  # purchased item and query for the queues, and the hard negatives, which
  # are 3x the batch and would triple the backward pass if encoded online.
  use_triplet = config.triplet_weight > 0
  query, items = apply(batch['query_is_image'], batch['query_image'],
                       batch['query_text'], batch['pos_image'][:, None],
                       batch['pos_title'][:, None], method='encode_batch')
  pos = items[:, 0]
  m_item_image, m_item_title = batch['pos_image'][:, None], batch[
      'pos_title'][:, None]
  if use_triplet:
    m_item_image = jnp.concatenate([m_item_image, batch['neg_image']], 1)
    m_item_title = jnp.concatenate([m_item_title, batch['neg_title']], 1)
  m_query, m_items = jax.lax.stop_gradient(model.apply(
      {'params': extra['momentum']}, batch['query_is_image'],
      batch['query_image'], batch['query_text'], m_item_image, m_item_title,
      method='encode_batch'))
  m_pos = m_items[:, 0]
  if config.use_queue:
    pos_id = batch['pos_item'][:, None]
    qi, qq = extra['queue_items'], extra['queue_queries']
    l_q2i = contrastive.info_nce(query, m_pos, qi['keys'], temp,
                                 qi['valid'] & (qi['ids'] != pos_id))
    l_i2q = contrastive.info_nce(pos, m_query, qq['keys'], temp,
                                 qq['valid'] & (qq['ids'] != pos_id))
    nce = 0.5 * jnp.mean(l_q2i + l_i2q)
    metrics['keys'] = (m_query, m_pos)
  else:
    nce = jnp.mean(contrastive.clip_loss(query, pos, temp,
                                         ids=batch['pos_item']))
  loss = nce
  metrics['nce'] = nce
  if use_triplet:
    trip = jnp.mean(contrastive.triplet_loss(
        query, m_pos, m_items[:, 1:], batch['neg_mask'],
        config.triplet_margin))
    loss = loss + config.triplet_weight * trip
    metrics['triplet'] = trip
  # Accuracy of the query against the batch's purchased items (a cheap,
  # noisy training signal; the real evaluation is on held-out sessions).
  sim = query @ pos.T
  metrics['batch_accuracy'] = jnp.mean(jnp.argmax(sim, 1) == jnp.arange(
      sim.shape[0]))
  return loss, dict(metrics, loss=loss)


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


def train_step(state, batch, rng, *, model, config, tx):
  """(state, batch, rng) -> (state, metrics)."""
  del rng  # no stochastic layers; augmentation happens in the data pipeline
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (_, metrics), grads = grad_fn(state.params, state.extra, batch, model,
                                config)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  extra = state.extra
  if config.method in SEARCH_METHODS:
    extra = dict(extra, momentum=contrastive.momentum_update(
        params, extra['momentum'], config.momentum))
  if 'keys' in metrics:
    m_query, m_pos = metrics.pop('keys')
    ids = batch['pos_item']
    extra.update(
        queue_items=contrastive.enqueue(extra['queue_items'], m_pos, ids=ids),
        queue_queries=contrastive.enqueue(extra['queue_queries'], m_query,
                                          ids=ids))
  metrics['grad_norm'] = train_lib.global_norm(grads)
  return state.replace(step=state.step + 1, params=params,
                       opt_state=opt_state, extra=extra), metrics


def _init_fn(model, config, tx, example):
  """rng -> TrainState (boxed params) for the first batch's shapes."""

  def init(rng):
    variables = model.init(rng, example['image'], example['text'])
    params = variables['params']
    extra = {}
    if config.method in SEARCH_METHODS:
      extra['momentum'] = params
    if config.method in SEARCH_METHODS and config.use_queue:
      e = model.config.embed_dim
      extra.update(queue_items=contrastive.init_queue(config.queue_size, e),
                   queue_queries=contrastive.init_queue(config.queue_size, e))
    return train_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                opt_state=tx.init(params), extra=extra)
  return init


def init_example(config, data_dir):
  """Dummy (image, text) inputs with the world's shapes, for `model.init`."""
  wc = builders.load_world_config(data_dir)
  s, t = wc['image_size'], wc['title_length']
  del config
  return {'image': np.zeros((1, s, s, 3), np.uint8),
          'text': np.ones((1, t), np.int32)}


# --------------------------------------------------------------------------
# The job.


def train_and_evaluate(config, workdir):
  """Trains (or, for untrained references, only evaluates) one method."""
  os.makedirs(workdir, exist_ok=True)
  data_dir = ensure_world(config, workdir)
  items = builders.load_table(data_dir, 'mmrec_items', 'catalogue')
  if config.method in embed.REFERENCE_METHODS:
    encoder = embed.ReferenceEncoder(config.method, config.encoder.embed_dim,
                                     data_dir, seed=config.seed)
    return _finish(config, workdir, data_dir, encoder, items, step=0)

  mesh = sharding.make_mesh(config.mesh.data, config.mesh.model)
  model = model_from_config(config, data_dir)
  tx = build_optimizer(config)
  init = _init_fn(model, config, tx, init_example(config, data_dir))
  state, shardings = train_lib.init_state(
      init, jax.random.key(config.seed), mesh)
  ds = train_dataset(config, data_dir, items)
  it = pipelines.iterator(ds, prefetch_threads=1)

  ckpt = checkpointing.Checkpointer(
      os.path.join(workdir, checkpointing.SUBDIR),
      save_interval_steps=config.checkpoint_every)
  source = checkpointing.restore_precedence(workdir, config.resume,
                                            config.init_from)
  if source.source in ('workdir', 'resume'):
    state, _ = checkpointing.restore_from(source.path, state, it)
    logging.info('resumed from %s at step %d', source.path, int(state.step))
  elif source.source == 'init_from':
    restored, _ = checkpointing.restore_from(
        source.path, {'params': state.params}, partial=True)
    params = jax.device_put(restored['params'],
                            jax.tree.map(lambda x: x.sharding, state.params))
    extra = state.extra
    if extra:
      extra = dict(extra, momentum=params)
    state = state.replace(params=params, extra=extra)
    logging.info('initialised params from %s', source.path)

  step_fn = train_lib.jit_step(
      functools.partial(train_step, model=model, config=config, tx=tx),
      shardings, mesh)
  writer = train_lib.MetricWriter(workdir)
  progress = train_lib.Progress(config.num_steps, config.batch_size,
                                name=f'scl/{config.method}')
  rng = jax.random.key(config.seed + 1)
  step = int(state.step)
  cfg_dict = json.loads(config.to_json_best_effort())
  while step < config.num_steps:
    batch = sharding.shard_batch(next(it), mesh)
    state, metrics = step_fn(state, batch, train_lib.fold_rng(rng, step))
    step += 1
    if step % config.log_every == 0 or step == config.num_steps:
      metrics = train_lib.to_host(metrics)
      writer.write(step, metrics, prefix='train/')
      progress.update(step, metrics, force=True)
    else:
      progress.update(step)
    if step % config.checkpoint_every == 0 or step == config.num_steps:
      ckpt.save(step, state, data_iterator=it, config=cfg_dict)
  ckpt.wait()
  ckpt.close()
  encoder = embed.Encoder(model, state.params, mesh)
  result = _finish(config, workdir, data_dir, encoder, items, step)
  writer.write(step, _flat_eval(result['metrics']), prefix='eval/')
  writer.close()
  return result


def _flat_eval(res):
  return {f'{name}/{k}': v for name, r in res.items() if r
          for k, v in r.items() if k != 'queries'}


def _finish(config, workdir, data_dir, encoder, items, step):
  """Held-out evaluation + the catalogue's vector table."""
  metrics, vectors = embed.evaluate_encoder(encoder, data_dir, items,
                                            config.eval_batch_size)
  vector_table.save(os.path.join(workdir, embed.VECTORS_FILE), vectors, {
      'method': config.method, 'seed': config.seed, 'step': step,
      'encoder_workdir': workdir})
  result = {'method': config.method, 'seed': config.seed, 'step': step,
            'metrics': metrics}
  files.write_json(os.path.join(workdir, EVAL_FILE), result)
  for name, r in metrics.items():
    if r:
      logging.info('%s %-10s accuracy@1 %.4f recall@10 %.4f (%d queries)',
                   config.method, name, r['accuracy@1'], r['recall@10'],
                   r['queries'])
  return result


def run(config, workdir):
  return train_and_evaluate(config, workdir)
