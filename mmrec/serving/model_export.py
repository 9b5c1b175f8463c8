"""A trained CTR model as a servable version: `jax.export` programs + files.

`export_version` is the one export path: the export job (export.py) and
near-line training (nearline.py) both call it, so both refuse a model
trained on float vectors (the store holds int8), both export the encoder
that made the store's table (`ensure_encoder`) and both point
models/CURRENT at the version (`write_version` writes its files).

The exported function takes the parameters as arguments (unboxed arrays),
so served_model.py needs jax and numpy only: no flax, no training code.
Items added after training (ids >= the model's vocabulary) need an ID
embedding and a vector row: the item table is padded with zero rows (a
cold-start item: no ID information, which is what a never-trained item
has) up to `config.item_capacity`, and the vector table passed at serving
time has that many rows too. One compiled program per bucket size, whatever
the store's growth, until the capacity is reached.
"""

import json
import os
import time
import warnings

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmrec import checkpointing
from mmrec import ctr_model
from mmrec import files
from mmrec import item_encoder
from mmrec import vector_table
from mmrec.data import manifest as manifest_lib
from mmrec.serving import layout
from mmrec.serving import served_model

ITEM_TABLE = ('params', 'embed', 'item', 'embedding')
MODEL_FILE, VARIABLES_FILE, MANIFEST = (
    layout.MODEL_FILE, layout.VARIABLES_FILE, layout.MANIFEST)
REQUEST_FILE, ENCODER = layout.REQUEST_FILE, layout.ENCODER
MODELS = layout.MODELS


def flatten(tree, prefix=''):
  """Nested dict of arrays -> {'a/b/c': array}."""
  out = {}
  for k, v in tree.items():
    key = f'{prefix}/{k}' if prefix else k
    out.update(flatten(v, key) if isinstance(v, dict) else {key: v})
  return out


def model_fields(model, schema):
  """Batch fields the CTR model reads: name -> (per-row shape, dtype)."""
  emb = model.config.embedding
  scalar = {f: ((), 'int32') for f in emb.user_fields + emb.target_fields}
  scalar.update({n: ((b['width'],), 'int32') for n, b in
                 list(schema['bags'].items()) +
                 list(schema['user_bags'].items())})
  seq = {f: (('L',), 'int32') for f in emb.seq_fields + ('seq_mask',)}
  # The behaviours' bags (match features): (L, K).
  seq.update((f, (('L', schema['bags'][f[len('seq_'):]]['width']), 'int32'))
             for f in emb.seq_bag_fields)
  return scalar, seq


def long_fields(model, long_seq_len):
  """The long-history batch fields the CTR model reads (each (B, Lh)),
  given the dataset's long history length (0: none): SimTier's
  long_seq_item / long_seq_mask, or with a GSU (`retrieve_top_k`) every
  behaviour field's long_ counterpart. A model trained on a dataset with a
  long history had these in every batch, so it is served with them."""
  cfg = model.config
  if not long_seq_len:
    return ()
  if cfg.retrieve_top_k:
    return tuple('long_' + f for f in cfg.embedding.seq_fields +
                 cfg.embedding.seq_bag_fields) + ('long_seq_mask',)
  if cfg.simtier_kind:
    return ('long_seq_item', 'long_seq_mask')
  return ()  # attention and MAKE read the short history only


def _history_specs(fields, rows, length, widths=None):
  """Specs of history fields (rows, length) (a bag's: (rows, length, K),
  K = `widths`[its name without long_])."""
  widths = widths or {}
  return {f: jax.ShapeDtypeStruct(
      (rows, length) + widths.get(f.removeprefix('long_'), ()),
      jnp.bool_ if f.endswith('seq_mask') else jnp.int32) for f in fields}


def _bag_widths(seq):
  """{seq field: (K,)} of `model_fields`' bag history fields."""
  return {f: shape[1:] for f, (shape, _) in seq.items() if len(shape) > 1}


def with_item_capacity(model, capacity):
  """The same model with an item vocabulary of `capacity`."""
  cfg = model.config
  emb = cfg.embedding.__class__(**{**cfg.embedding.__dict__,
                                   'num_items': capacity})
  return model.clone(config=cfg.__class__(**{**cfg.__dict__,
                                             'embedding': emb}))


def pad_item_table(variables, capacity):
  """variables with the item ID table padded by zero rows to `capacity`."""
  table = variables['params']['embed']['item']['embedding']
  if capacity < len(table):
    raise ValueError(f'config.item_capacity = {capacity} is below the '
                     f"model's {len(table)} items")
  padded = np.zeros((capacity, table.shape[1]), table.dtype)
  padded[:len(table)] = table
  out = jax.tree.map(lambda x: x, variables)  # a copy of the dict structure
  out['params']['embed']['item']['embedding'] = padded
  return out


def check_finite(variables, where):
  """Raises ValueError naming the first array of `variables` (a nested dict)
  holding NaN or infinity: such a version would score every request NaN."""
  for name, x in flatten(variables).items():
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.inexact) and not np.isfinite(x).all():
      bad = int(np.size(x) - np.isfinite(x).sum())
      raise ValueError(f'{where}: parameter {name} {x.shape} holds {bad} NaN '
                       'or infinite values; not exported (train it again)')


def export_function(model, variables, seq_len, vectors_shape, schema,
                    long_seq_len=0):
  """jax.export of `(variables, batch, vectors) -> {'logit', 'probability'}`
  with a symbolic batch size; returns (exported, field specs)."""
  (b,) = jax.export.symbolic_shape('b')
  scalar, seq = model_fields(model, schema)
  specs = {f: jax.ShapeDtypeStruct((b,) + shape, jnp.int32)
           for f, (shape, _) in scalar.items()}
  widths = _bag_widths(seq)
  specs.update(_history_specs(seq, b, seq_len, widths))
  specs.update(_history_specs(long_fields(model, long_seq_len), b,
                              long_seq_len, widths))

  def serve(variables, batch, vectors):
    logit = model.apply(variables, batch, vectors, train=False)
    return {'logit': logit, 'probability': jax.nn.sigmoid(logit)}

  var_specs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                           variables)
  vec_spec = (None if vectors_shape is None else
              jax.ShapeDtypeStruct(vectors_shape, jnp.int8))
  exported = jax.export.export(jax.jit(serve))(var_specs, specs, vec_spec)
  fields = {f: {'shape': list(s.shape[1:]), 'dtype': str(s.dtype)}
            for f, s in specs.items()}
  return exported, fields


def request_function(model, variables, seq_len, vectors_shape, schema,
                     long_seq_len=0):
  """jax.export of `(variables, user, candidates, vectors) -> {'logit',
  'probability'}` (C,): `user` the user's fields (1,) and histories (1, L)
  (and (1, Lh) for a long one), `candidates` the target fields with a
  symbolic C rows; returns (exported, {'user': field specs, 'candidates':
  field specs})."""
  (c,) = jax.export.symbolic_shape('c')
  scalar, seq = model_fields(model, schema)
  long = long_fields(model, long_seq_len)
  emb = model.config.embedding
  user = {f: jax.ShapeDtypeStruct((1,) + scalar[f][0], jnp.int32)
          for f in emb.user_fields + tuple(schema['user_bags'])}
  widths = _bag_widths(seq)
  user.update(_history_specs(seq, 1, seq_len, widths))
  user.update(_history_specs(long, 1, long_seq_len, widths))
  cands = {f: jax.ShapeDtypeStruct((c,) + shape, jnp.int32)
           for f, (shape, _) in scalar.items() if f not in user}

  def serve(variables, user, candidates, vectors):
    n = candidates['item_id'].shape[0]
    # User fields are per row (cheap lookups); the histories stay one row.
    batch = {k: (v if k in seq or k in long else
                 jnp.broadcast_to(v, (n,) + v.shape[1:]))
             for k, v in user.items()}
    logit = model.apply(variables, dict(batch, **candidates), vectors,
                        train=False)
    return {'logit': logit, 'probability': jax.nn.sigmoid(logit)}

  var_specs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                           variables)
  vec_spec = (None if vectors_shape is None else
              jax.ShapeDtypeStruct(vectors_shape, jnp.int8))
  exported = jax.export.export(jax.jit(serve))(var_specs, user, cands,
                                               vec_spec)
  fields = {part: {f: {'shape': list(s.shape[1:]), 'dtype': str(s.dtype)}
                   for f, s in specs.items()}
            for part, specs in (('user', user), ('candidates', cands))}
  return exported, fields


def write_exported(final, exported, variables, manifest, extra=None):
  """model.jaxexport + variables.npz + manifest.json (with their sha256),
  and `extra` {file name: exported} if given, built aside and renamed to
  `final`; a `final` already there is replaced only after the new one is
  whole (files.build_aside)."""
  programs = dict(extra or {}, **{MODEL_FILE: exported})

  def fill(tmp):
    for name, program in programs.items():
      with open(os.path.join(tmp, name), 'wb') as f:
        f.write(program.serialize())
    np.savez(os.path.join(tmp, VARIABLES_FILE), **flatten(variables))
    files.write_json(os.path.join(tmp, MANIFEST), dict(
        manifest, jax_version=jax.__version__, sha256={
            n: served_model.sha256_file(os.path.join(tmp, n))
            for n in (*programs, VARIABLES_FILE)}))
  files.build_aside(final, fill, replace=True)


def write_encoder(serving_dir, model, params, *, image_size, title_length,
                  vocab_size, table_sha256, source=None):
  """The item encoder for new items: `jax.export` of `(params, image (1, S,
  S, 3) uint8, title (1, T) int32) -> (1, D)` unit vector, in
  `serving_dir/encoder/`. Returns the directory."""
  fn = jax.jit(lambda p, i, t: model.apply({'params': p}, i, t,
                                           method='encode_item'))
  specs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                       params)
  image = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.uint8)
  title = jax.ShapeDtypeStruct((1, title_length), jnp.int32)
  exported = jax.export.export(fn)(specs, image, title)
  final = os.path.join(serving_dir, ENCODER)
  write_exported(final, exported, jax.tree.map(np.asarray, params), {
      'format_version': 1, 'created': time.time(), 'image_size': image_size,
      'title_length': title_length, 'vocab_size': vocab_size,
      'dim': int(exported.out_avals[0].shape[-1]),
      'table_sha256': table_sha256, 'source': source or {}})
  return final


def write_version(models_dir, step, model, variables, *, variant, sizes,
                  schema, seq_len, store, uses_vectors, capacity, buckets,
                  checkpoint='', long_seq_len=0):
  """Exports (model, variables) as `models_dir/v{step}`; returns its path.

  `variables` are the trained model's ({'params', 'batch_stats'}, numpy);
  `sizes` its vocabularies (EmbeddingConfig kwargs), `schema` its
  dataset's (`serving_schema`); `store` the manifest of the vector store it
  is served with; `long_seq_len` the dataset's long history length (0:
  none; `long_fields` says whether the model reads it).
  """
  final = os.path.join(models_dir, f'v{step}')
  check_finite(variables, f'model version {final} ({checkpoint or variant})')
  padded = pad_item_table(variables, capacity)
  served = with_item_capacity(model, capacity)
  vec_shape = (capacity, store['dim']) if uses_vectors else None
  t0 = time.time()
  long_seq_len = long_seq_len if long_fields(served, long_seq_len) else 0
  exported, fields = export_function(served, padded, seq_len, vec_shape,
                                     schema, long_seq_len)
  request, request_fields = request_function(served, padded, seq_len,
                                             vec_shape, schema, long_seq_len)
  manifest = {
      'format_version': 1, 'step': int(step), 'variant': variant,
      'created': time.time(), 'checkpoint': checkpoint,
      'fields': fields, 'seq_len': seq_len, 'long_seq_len': long_seq_len,
      'request': dict(request_fields, file=REQUEST_FILE),
      'sizes': dict(sizes, num_items=capacity),
      'trained_items': sizes['num_items'], 'item_capacity': capacity,
      'buckets': sorted(buckets), 'schema': schema,
      'item_attributes': list(layout.item_attributes(schema)),
      'vectors': ({'dim': store['dim'], 'dtype': 'int8'}
                  if uses_vectors else None),
      'vector_store': {'version': store['version'],
                       'table_sha256': store['source']['table_sha256']}}
  write_exported(final, exported, padded, manifest,
                 extra={REQUEST_FILE: request})
  logging.info('exported %s step %d -> %s (%.1fs)', variant, step, final,
               time.time() - t0)
  return final


# A model version and what it is served with, from a trained CTR run.


def saved_config(step_dir):
  """The config saved with a checkpoint step, as a ConfigDict."""
  with warnings.catch_warnings():  # the state, restored only for the config
    warnings.filterwarnings('ignore', 'Sharding info not provided')
    _, saved = checkpointing.restore_from(step_dir, None)
  return ml_collections.ConfigDict(saved)


def ensure_encoder(serving_dir, store):
  """Exports the encoder that made the store's table, if it has a
  checkpoint (trained methods; the untrained references have none) and
  `encoder/` does not hold it yet."""
  source = store['source']
  sha = source['table_sha256']
  manifest = os.path.join(serving_dir, ENCODER, MANIFEST)
  if os.path.exists(manifest):
    with open(manifest) as f:
      if json.load(f).get('table_sha256') == sha:
        return
  workdir = source.get('encoder_workdir')
  if not workdir or not os.path.isdir(os.path.join(workdir,
                                                   checkpointing.SUBDIR)):
    logging.info('no encoder checkpoint for the store\'s table (%s): the '
                 'service adds items by vector only', source.get('method'))
    return
  encoder, enc_config, step, data_dir = item_encoder.load_encoder(workdir)
  m = manifest_lib.load(data_dir)
  if len(encoder.model.config.modalities) < 2:
    # The served encoder's signature takes an image and a title.
    logging.info('the store\'s encoder reads only %s: the service adds items '
                 'by vector only', encoder.model.config.modalities)
    return
  write_encoder(
      serving_dir, encoder.model, jax.tree.map(np.asarray, encoder.params),
      image_size=m.image_size, title_length=m.text['length'],
      vocab_size=m.text['vocab_size'], table_sha256=sha,
      source={'encoder_workdir': workdir, 'step': step,
              'method': enc_config.method})


def export_version(config, serving_dir, step, model, variables, ctr_config,
                   data, checkpoint, make_current=True):
  """models/v{step} of a trained CTR model (once), the store and encoder it
  is served with; CURRENT points at it if `make_current`. Returns its dir.

  A sequence of idempotent steps, each checking its own output (not a
  neighbour's) and doing its work only if that is missing, so an export
  killed anywhere and run again leaves what an uninterrupted one does:
    1. the store's CURRENT version holds the table (layout.ensure_store);
    2. index/ covers that version (layout.ensure_index);
    3. encoder/ made that table (ensure_encoder);
    4. models/v{step} is whole (write_version, built aside and renamed);
    5. models/CURRENT names it.
  A version already there pins its store version: steps 1 and 3 are then
  only checked, not redone (re-exporting an old run never makes a store
  version for an old table).

  `variables`: the model's ({'params', 'batch_stats'}, numpy), or a
  function returning them (called only if the version is not there yet);
  `config`: the export settings (item_capacity, buckets, and vectors_path
  for a model that reads no vectors); `data`: the run's ctr_data.CtrData.
  """
  models = os.path.join(serving_dir, MODELS)
  final = os.path.join(models, f'v{step}')
  exists = os.path.exists(os.path.join(final, MANIFEST))
  if exists:
    logging.info('model version %s exists; not exported again', final)
    with open(os.path.join(final, MANIFEST)) as f:
      pinned = json.load(f)['vector_store']['version']
    store = layout.store_manifest(os.path.join(serving_dir, layout.VECTORS),
                                  pinned)
  else:
    uses_vectors = ctr_model.reads_vectors(ctr_config)
    if uses_vectors and ctr_config.vectors_dtype != 'int8':
      raise ValueError('the serving store holds int8 vectors; a model '
                       f'trained on {ctr_config.vectors_dtype} vectors would '
                       'score differently (train with vectors_dtype=int8)')
    # A model reading vectors is served with the table it was trained on.
    table_path = (ctr_config.vectors_path if uses_vectors else
                  config.get('vectors_path') or ctr_config.vectors_path)
    if not table_path:
      raise ValueError('config.vectors_path is empty and the CTR run read no '
                       'vectors: the serving store needs the item-vector '
                       'table (item_vectors.npz)')
    store = layout.ensure_store(serving_dir, vector_table.resolve(table_path),
                                data.data_dir)
  current = layout.ensure_index(serving_dir)
  if store['version'] == current:
    ensure_encoder(serving_dir, store)
  if not exists:
    m = manifest_lib.load(data.data_dir)
    write_version(
        models, step, model, variables() if callable(variables) else
        variables, variant=ctr_config.variant, sizes=data.sizes,
        schema=layout.serving_schema(data.sizes, data.items, data.users),
        seq_len=m.seq_len, long_seq_len=m.long_seq_len, store=store,
        uses_vectors=uses_vectors,
        capacity=max(config.item_capacity, data.sizes['num_items']),
        buckets=config.buckets, checkpoint=checkpoint)
  if make_current and files.read_pointer(models) != f'v{step}':
    files.write_pointer(models, f'v{step}')
  return final
