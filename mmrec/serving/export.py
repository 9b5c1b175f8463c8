"""The export job: a trained CTR checkpoint -> a servable model version, and
the serving directory's vector store (+ index) it expects.

Serving directory (`config.serving_dir`):

  vectors/      vector_store.py: v{k}/ int8 rows + item attributes
                (the dataset's declared item features; the world: category,
                shop; a bag of width K as K columns 'name/k') + delta; built here from the CTR run's
                item_vectors.npz unless the current version already holds
                that table (same sha256)
  index/        ann_index.py: IVF index over the store (built with it)
  encoder/      the item encoder that made the store's table (jax.export,
                variables, manifest), for items added by image + title;
                absent for the untrained reference methods
  models/v{step}/
    model.jaxexport  `jax.export` of `(variables, batch, vectors) ->
                     {'logit', 'probability'}` with a symbolic batch size
    request.jaxexport  the same model as one user's request: `(variables,
                     user, candidates, vectors)`, the user's fields and
                     history one row, the candidates' fields a symbolic
                     number of rows; the history side is computed once
                     (ctr_model.shares_history), not once per candidate
    variables.npz    params + batch_stats, flattened by '/'-joined path
    manifest.json    variant, step, input fields (shape, dtype), vocabulary
                     sizes, the schema (declared user and item features,
                     bags), bucket sizes, the item capacity, the vector store
                     it expects (version, table sha256, dim), the long
                     history length it reads (0: none), sha256 of the files

A model trained on a dataset with a long history (manifest long_seq_len Lh
> 0) that reads it (SimTier over it, or a GSU: `long_fields`) takes its
long_seq_* fields, (B, Lh) in the row program and (1, Lh) in the request
one, padded to Lh as the short history is to L.
  models/CURRENT     'v{step}': the version servers load (atomic rename)

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
import shutil
import time
import warnings

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmrec.serving import ann_index
from mmrec import checkpointing
from mmrec import ctr_data
from mmrec import ctr_model
from mmrec import files
from mmrec import item_encoder
from mmrec.serving import served_model
from mmrec.serving import vector_store
from mmrec import vector_table
from mmrec.data import builders
from mmrec.data import manifest as manifest_lib
from mmrec.data import resolver

MODELS, VECTORS, INDEX, ENCODER = 'models', 'vectors', 'index', 'encoder'
# The version's files, as the loader reads them.
MODEL_FILE, VARIABLES_FILE, MANIFEST, CURRENT = (
    served_model.MODEL_FILE, served_model.VARIABLES_FILE,
    served_model.MANIFEST, served_model.CURRENT)
REQUEST_FILE = served_model.REQUEST_FILE
ITEM_TABLE = ('params', 'embed', 'item', 'embedding')


def flatten(tree, prefix=''):
  """Nested dict of arrays -> {'a/b/c': array}."""
  out = {}
  for k, v in tree.items():
    key = f'{prefix}/{k}' if prefix else k
    out.update(flatten(v, key) if isinstance(v, dict) else {key: v})
  return out


def serving_schema(sizes, items, users):
  """The request-facing schema of a model trained on a dataset: its
  declared user features, item features (joined server-side from the
  store), the behaviours' features, item bags and user bags (with their
  width K, from the catalogues `items` / `users`), as JSON-able dicts of
  vocabulary sizes. `sizes`: ctr_data's EmbeddingConfig kwargs."""
  def bags(kind, table):
    return {n: {'size': s, 'width': int(np.shape(table[n])[1])}
            for n, s in sizes[kind]}

  return {'user': dict(sizes['user_features']),
          'item': dict(sizes['item_features']),
          'seq': list(sizes['seq_features']),
          'bags': bags('item_bags', items),
          'user_bags': bags('user_bags', users)}


def item_attributes(schema):
  """The store's attribute columns of a schema: the item features, then
  each bag's K slots as 'name/k' (the store holds int32 scalars)."""
  return tuple(schema['item']) + tuple(
      f'{n}/{k}' for n, b in schema['bags'].items()
      for k in range(b['width']))


def attribute_rows(schema, items, n):
  """(n, A) int32 store attributes of the catalogue `items` (n items), in
  `item_attributes` order."""
  cols = [np.asarray(items[f]).reshape(n, -1)
          for f in list(schema['item']) + list(schema['bags'])]
  return np.concatenate(cols + [np.zeros((n, 0))], 1).astype(np.int32)


def model_fields(model, schema):
  """Batch fields the CTR model reads: name -> (per-row shape, dtype)."""
  emb = model.config.embedding
  scalar = {f: ((), 'int32') for f in emb.user_fields + emb.target_fields}
  scalar.update({n: ((b['width'],), 'int32') for n, b in
                 list(schema['bags'].items()) +
                 list(schema['user_bags'].items())})
  return scalar, {f: (('L',), 'int32') for f in emb.seq_fields +
                  ('seq_mask',)}


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
    return tuple('long_' + f for f in cfg.embedding.seq_fields) + (
        'long_seq_mask',)
  if cfg.simtier_kind:
    return ('long_seq_item', 'long_seq_mask')
  return ()  # attention and MAKE read the short history only


def _history_specs(fields, rows, length):
  return {f: jax.ShapeDtypeStruct(
      (rows, length), jnp.bool_ if f.endswith('seq_mask') else jnp.int32)
          for f in fields}


def saved_config(step_dir):
  """The config saved with a checkpoint step, as a ConfigDict."""
  with warnings.catch_warnings():  # the state, restored only for the config
    warnings.filterwarnings('ignore', 'Sharding info not provided')
    _, saved = checkpointing.restore_from(step_dir, None)
  return ml_collections.ConfigDict(saved)


def restore(ctr_workdir, step=None):
  """(model, variables {'params', 'batch_stats'} as numpy, config, step)."""
  ckpt_dir = os.path.join(ctr_workdir, checkpointing.SUBDIR)
  with checkpointing.Checkpointer(ckpt_dir, read_only=True) as ckpt:
    step = ckpt.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'no checkpoint in {ckpt_dir}: train the CTR '
                            'model first (config.job = "ctr")')
  source = os.path.join(ckpt_dir, str(step))
  config = saved_config(source)
  data = ctr_data.CtrData.load(resolver.recorded_data_dir(config,
                                                          ctr_workdir))
  model = ctr_model.build_model(config, data.sizes)
  example = {k: v[:2] for k, v in data.dataset('test', 2)[0].items()}
  vec_spec = None
  if ctr_model.reads_vectors(config):
    vec_spec = jax.ShapeDtypeStruct(
        (data.sizes['num_items'], _table_dim(config)),
        jnp.dtype(config.vectors_dtype))
  abstract = jax.eval_shape(
      lambda r, v: nn.unbox(model.init(r, example, v)), jax.random.key(0),
      vec_spec)
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), abstract)
  target = {'params': abstract['params'],
            'extra': {k: v for k, v in abstract.items() if k != 'params'}}
  restored, _ = checkpointing.restore_from(source, target, partial=True)
  variables = {'params': restored['params'], **restored['extra']}
  return model, jax.tree.map(np.asarray, variables), config, step, data


def _table_dim(config):
  _, meta = vector_table.load_from(config.vectors_path,
                                   field='config.vectors_path', dtype='int8')
  return meta['dim']


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


def export_function(model, variables, seq_len, vectors_shape, schema,
                    long_seq_len=0):
  """jax.export of `(variables, batch, vectors) -> {'logit', 'probability'}`
  with a symbolic batch size; returns (exported, field specs)."""
  (b,) = jax.export.symbolic_shape('b')
  scalar, seq = model_fields(model, schema)
  specs = {f: jax.ShapeDtypeStruct((b,) + shape, jnp.int32)
           for f, (shape, _) in scalar.items()}
  specs.update(_history_specs(seq, b, seq_len))
  specs.update(_history_specs(long_fields(model, long_seq_len), b,
                              long_seq_len))

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
  user.update(_history_specs(seq, 1, seq_len))
  user.update(_history_specs(long, 1, long_seq_len))
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
  and `extra` {file name: exported} if given, in a temporary directory
  renamed to `final`; a `final` already there is replaced only after the
  new one is whole."""
  parent = os.path.dirname(final)
  os.makedirs(parent, exist_ok=True)
  base = os.path.basename(final)
  tmp = os.path.join(parent, f'.{base}.tmp-{os.getpid()}')
  old = os.path.join(parent, f'.{base}.old-{os.getpid()}')
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    programs = dict(extra or {}, **{MODEL_FILE: exported})
    for name, program in programs.items():
      with open(os.path.join(tmp, name), 'wb') as f:
        f.write(program.serialize())
    np.savez(os.path.join(tmp, VARIABLES_FILE), **flatten(variables))
    manifest = dict(manifest, jax_version=jax.__version__, sha256={
        n: served_model.sha256_file(os.path.join(tmp, n))
        for n in (*programs, VARIABLES_FILE)})
    files.write_json(os.path.join(tmp, MANIFEST), manifest)
    if os.path.exists(final):
      os.rename(final, old)
    os.rename(tmp, final)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


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
  write_encoder(serving_dir, encoder.model, jax.tree.map(
      np.asarray, encoder.params), image_size=m.image_size,
                title_length=m.text['length'],
                vocab_size=m.text['vocab_size'], table_sha256=sha,
                source={'encoder_workdir': workdir, 'step': step,
                        'method': enc_config.method})


def ensure_store(serving_dir, table_path, data_dir):
  """The serving store holding `table_path`'s vectors (built if needed) and
  its index; returns the store's manifest.

  A new table (the next batch embedding) over a store that has served
  becomes a new version that carries over the items added since the
  catalogue (`vector_store.create_carrying`: same ids, vectors and
  attributes), so a new model version exported against it still scores
  them. Here rather than in the embedding job: that job writes a table
  for any consumer, knows no serving directory, and a table serves only
  with a CTR model trained on (or exported for) it, which this job pins.
  Carried vectors are the old ones: an item added by image + title under
  the previous encoder keeps that encoder's vector."""
  table, meta = vector_table.load(table_path, dtype='int8')
  root = os.path.join(serving_dir, VECTORS)
  try:
    with vector_store.VectorStore(root, verify=False) as store:
      if store.manifest['source'].get('table_sha256') == meta['sha256']:
        return store.manifest
  except vector_store.StoreError:
    pass
  items = builders.load_table(data_dir, manifest_lib.ITEMS, 'catalogue')
  num_items = manifest_lib.load(data_dir).num_items
  if num_items != len(table):
    raise ValueError(f'{table_path} has {len(table)} vectors, the catalogue '
                     f'of {data_dir} {num_items} items')
  # The dataset's declared item features: what /score joins by item id.
  # The store holds no user fields, so the users' catalogue is not read.
  schema = serving_schema(
      dict(ctr_data.world_sizes(data_dir), user_bags=()), items, {})
  attrs = attribute_rows(schema, items, num_items)
  return build_store(serving_dir, table, attrs, item_attributes(schema), {
      'table': os.path.abspath(table_path), 'table_sha256': meta['sha256'],
      'method': meta.get('method'), 'encoder_workdir':
          meta.get('encoder_workdir'), 'encoder_step': meta.get(
              'encoder_step'), 'data_dir': os.path.abspath(data_dir)},
                     carry=True)


def build_store(serving_dir, table, attrs, names, source, carry=False,
                **index_params):
  """A new store version of (N, D) vectors + (N, A) attributes (columns
  `names`, see `item_attributes`) and its index; `source` must hold
  'table_sha256' (what models are checked against). With `carry`, the
  version also holds the current one's items beyond the N
  (`vector_store.create_carrying`). Returns the store's manifest."""
  root = os.path.join(serving_dir, VECTORS)
  (vector_store.create_carrying if carry else vector_store.create)(
      root, table, attrs, names, source)
  with vector_store.VectorStore(root) as store:
    index = ann_index.AnnIndex.build(store.dense(), **index_params)
    index.save(os.path.join(serving_dir, INDEX), store.version, store.count)
    logging.info('vector store %s v%d: %d items; index %s', root,
                 store.version, store.count, index.kind)
    return store.manifest


def write_pointer(directory, name):
  files.write_text(os.path.join(directory, CURRENT), name + '\n')


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
      'item_attributes': list(item_attributes(schema)),
      'vectors': ({'dim': store['dim'], 'dtype': 'int8'}
                  if uses_vectors else None),
      'vector_store': {'version': store['version'],
                       'table_sha256': store['source']['table_sha256']}}
  write_exported(final, exported, padded, manifest,
                 extra={REQUEST_FILE: request})
  logging.info('exported %s step %d -> %s (%.1fs)', variant, step, final,
               time.time() - t0)
  return final


def export(config, ctr_workdir, serving_dir, make_current=True):
  """Exports the CTR run's latest checkpoint; returns the version's dir."""
  ctr_workdir = os.path.abspath(ctr_workdir)  # orbax wants absolute paths
  model, variables, ctr_config, step, data = restore(ctr_workdir)
  models = os.path.join(serving_dir, MODELS)
  final = os.path.join(models, f'v{step}')
  if os.path.exists(os.path.join(final, MANIFEST)):
    logging.info('model version %s exists; not exported again', final)
  else:
    uses_vectors = ctr_model.reads_vectors(ctr_config)
    if uses_vectors and ctr_config.vectors_dtype != 'int8':
      raise ValueError('the serving store holds int8 vectors; a model '
                       f'trained on {ctr_config.vectors_dtype} vectors would '
                       'score differently (train with vectors_dtype=int8)')
    # A model reading vectors is served with the table it was trained on.
    table_path = (ctr_config.vectors_path if uses_vectors else
                  config.vectors_path or ctr_config.vectors_path)
    if not table_path:
      raise ValueError('config.vectors_path is empty and the CTR run read no '
                       'vectors: the serving store needs the item-vector '
                       'table (item_vectors.npz)')
    if os.path.isdir(table_path):
      table_path = os.path.join(table_path, vector_table.FILE)
    store = ensure_store(serving_dir, table_path, data.data_dir)
    ensure_encoder(serving_dir, store)
    m = manifest_lib.load(data.data_dir)
    write_version(
        models, step, model, variables, variant=ctr_config.variant,
        sizes=data.sizes, schema=serving_schema(data.sizes, data.items,
                                                  data.users),
        seq_len=m.seq_len, long_seq_len=m.long_seq_len, store=store,
        uses_vectors=uses_vectors,
        capacity=max(config.item_capacity, data.sizes['num_items']),
        buckets=config.buckets, checkpoint=os.path.abspath(os.path.join(
            ctr_workdir, checkpointing.SUBDIR, str(step))))
  if make_current:
    write_pointer(models, f'v{step}')
  return final


def run(config, workdir):
  """The export job (experiments/configs/export.py)."""
  if not config.ctr_workdir:
    raise ValueError('config.ctr_workdir must name a CTR run\'s workdir')
  return export(config, config.ctr_workdir, config.serving_dir or workdir)
