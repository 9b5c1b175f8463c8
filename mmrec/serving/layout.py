"""The serving directory: its layout, the request schema and the vector store.

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

The export job (export.py) and near-line training (nearline.py) write it;
the runtime (service.py) reads it.
"""

import os

from absl import logging
import numpy as np

from mmrec import ctr_data
from mmrec import files
from mmrec import vector_table
from mmrec.data import builders
from mmrec.data import manifest as manifest_lib
from mmrec.serving import ann_index
from mmrec.serving import served_model
from mmrec.serving import vector_store

MODELS, VECTORS, INDEX, ENCODER = 'models', 'vectors', 'index', 'encoder'
# The version's files, as the loader reads them.
MODEL_FILE, VARIABLES_FILE, MANIFEST, CURRENT = (
    served_model.MODEL_FILE, served_model.VARIABLES_FILE,
    served_model.MANIFEST, served_model.CURRENT)
REQUEST_FILE = served_model.REQUEST_FILE


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
          # The behaviours' fields: categoricals, then the bags the match
          # features read (ctr_rows.history gives them (1, L, K)).
          'seq': list(sizes['seq_features']) + list(
              sizes.get('match_bags', ())),
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


def ensure_store(serving_dir, table_path, data_dir):
  """Export step 1: the serving store's CURRENT version holds
  `table_path`'s vectors (built if needed); returns its manifest. The
  index is step 2 (`ensure_index`): each step checks its own output, so an
  export killed anywhere and run again finishes what is missing.

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
  found = _store_holding(root, meta['sha256'])
  if found is not None:
    return found
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
  vector_store.create_carrying(
      root, table, attrs, item_attributes(schema), {
          'table': os.path.abspath(table_path),
          'table_sha256': meta['sha256'], 'method': meta.get('method'),
          'encoder_workdir': meta.get('encoder_workdir'),
          'encoder_step': meta.get('encoder_step'),
          'data_dir': os.path.abspath(data_dir)})
  return store_manifest(root)


def store_manifest(root, version=None):
  """The manifest of store version `version` (default: CURRENT's)."""
  with vector_store.VectorStore(root, version, verify=False) as store:
    return store.manifest


def _store_holding(root, sha256):
  """The manifest of the store's current version if it holds the table
  `sha256`; else, if a version newer than CURRENT holds it (an export
  killed between writing that version and pointing CURRENT at it), points
  CURRENT there and returns its manifest; else None."""
  try:
    current = vector_store.current_version(root)
  except vector_store.StoreError:
    current = 0  # no store yet, or CURRENT not written
  for version in reversed(vector_store.versions(root)):
    if version < current:
      break
    manifest = store_manifest(root, version)
    if manifest['source'].get('table_sha256') == sha256:
      if version != current:
        logging.info('store %s v%d holds the table but is not current (an '
                     'interrupted export): pointing CURRENT at it', root,
                     version)
        files.write_pointer(root, f'v{version}', vector_store.CURRENT)
      return manifest
    if version == current:
      break
  return None


def ensure_index(serving_dir, **index_params):
  """Export step 2: `index/` covers the store's current version (built
  from its items if it is missing, unreadable or covers another version);
  returns the index's store version."""
  root = os.path.join(serving_dir, VECTORS)
  index_dir = os.path.join(serving_dir, INDEX)
  with vector_store.VectorStore(root, verify=False) as store:
    try:
      index = ann_index.AnnIndex.load(index_dir)
      if (index.covers.get('store_version') == store.version and
          index.dim == store.dim):
        return store.version
    except (ann_index.AnnIndexError, OSError, ValueError, KeyError):
      pass  # missing or half-written: built again below
    index = ann_index.AnnIndex.build(store.dense(), **index_params)
    index.save(index_dir, store.version, store.count)
    logging.info('vector store %s v%d: %d items; index %s', root,
                 store.version, store.count, index.kind)
    return store.version


def build_store(serving_dir, table, attrs, names, source, **index_params):
  """A new store version of (N, D) vectors + (N, A) attributes (columns
  `names`, see `item_attributes`) and its index; `source` must hold
  'table_sha256' (what models are checked against). Returns the store's
  manifest."""
  root = os.path.join(serving_dir, VECTORS)
  vector_store.create(root, table, attrs, names, source)
  ensure_index(serving_dir, **index_params)
  return store_manifest(root)
