"""The scoring service's state: the live model version, its vector table,
the store, the index and the encoder; hot reloads; the handlers' work.

`Serving` is what service.py's routes call. A request takes `live` (a
model version, its table, the items it holds) once and uses that pair
throughout, so a reload (one reference swap after the new version is
loaded, checked and warmed) never shows it half a swap. Adds go to the
store's delta (fsynced), the index and the live table under one lock.
"""

import base64
import binascii
import collections
import logging
import math
import os
import threading
import time

import jax
import numpy as np

from mmrec import int8
from mmrec.serving import ann_index
from mmrec.serving import impression_log
from mmrec.serving import requests as reqs
from mmrec.serving import rows
from mmrec.serving import served_model
from mmrec.serving import vector_store

ENV_DIR = 'MMREC_SERVING_DIR'
ENV_LOG_DIR = 'MMREC_IMPRESSION_LOG'  # optional: where /impressions go
# Optional, with ENV_LOG_DIR: the log's byte budget (default
# impression_log.DEFAULT_MAX_BYTES), and the near-line job's workdir whose
# committed segments are deleted when the budget is spent (default: the one
# the job named in the log, impression_log.nearline_workdir).
ENV_LOG_BYTES = 'MMREC_IMPRESSION_LOG_BYTES'
ENV_NEARLINE_DIR = 'MMREC_NEARLINE_WORKDIR'
log = logging.getLogger('mmrec.serving.state')


class Live:
  """What one request uses: a model version, its vector table and how many
  items (ids 0..count-1) that table holds."""

  def __init__(self, model, table, count):
    self.model, self.table, self.count = model, table, count


class Serving:
  """The service's state: store (writable), index, live model, metrics."""

  def __init__(self, serving_dir, reload_interval_s=1.0, log_dir=None,
               segment_records=10000, segment_seconds=60.0,
               log_max_bytes=impression_log.DEFAULT_MAX_BYTES,
               nearline_dir=None):
    self.dir = serving_dir
    self.models_dir = os.path.join(serving_dir, 'models')
    self.index_dir = os.path.join(serving_dir, 'index')
    self.store_dir = os.path.join(serving_dir, 'vectors')
    ann_index.set_threads(1)  # requests run in parallel, not their insides
    # Opened with the first model version: the store version it pins.
    self.store = self.index = self.encoder = None
    self._write = threading.Lock()  # store + index + table, in one order
    self._index_lock = threading.Lock()
    self._set_rows = jax.jit(
        lambda t, start, rows: jax.lax.dynamic_update_slice(t, rows,
                                                            (start, 0)))
    self.reloads, self.reload_errors = 0, 0
    self._failed = None
    # The last version that failed to load, and why (/health says so: the
    # service keeps serving the old version, which looks healthy).
    self.failed_reload = None
    self.live = None
    self.schema = None  # the first version's: the requests' shape
    self._load(served_model.current(self.models_dir))
    # The requests' pydantic models (FastAPI validates bodies with them).
    self.score_request, self.impression_request, self.item_request = (
        reqs.request_models(self.schema))
    self.started = time.time()
    self.requests = collections.Counter()
    self.latency = collections.defaultdict(lambda: collections.deque(
        maxlen=10000))
    self.logger = (None if not log_dir else impression_log.SegmentWriter(
        log_dir, segment_records, segment_seconds, max_bytes=log_max_bytes,
        nearline_dir=nearline_dir))
    self._stop = threading.Event()
    self._poller = None
    if reload_interval_s:
      self._poller = threading.Thread(target=self._poll, daemon=True,
                                      args=(reload_interval_s,))
      self._poller.start()

  # ---------------------------------------------------------------- models

  def _open_store(self, version):
    """(store v{version} writable, its index, the encoder of its table or
    None). A version written by the next batch embedding first takes the
    items the service added to the version it carried over from after it
    was written (`VectorStore.carry_from_source`)."""
    store = vector_store.VectorStore(self.store_dir, version, writable=True)
    try:
      carried = store.carry_from_source()
      if carried:
        log.info('store v%d: carried over %d items added to v%d since',
                 version, carried, store.manifest['source']['carried'][
                     'from_version'])
      index = ann_index.AnnIndex.load(self.index_dir)
      if index.covers.get('store_version', version) != version:
        # index/ holds another version's (the export rebuilds it with each
        # store version): rebuilt here, seconds for a catalogue.
        log.info('index covers store v%s, not v%d: rebuilding it',
                 index.covers['store_version'], version)
        index = ann_index.AnnIndex.build(store.dense(), kind=index.kind,
                                         **index.params)
      added = index.catch_up(store)
      if added:
        log.info('index: added %d store items it did not hold', added)
      encoder = None
      encoder_dir = os.path.join(self.dir, 'encoder')
      if os.path.exists(os.path.join(encoder_dir, served_model.MANIFEST)):
        encoder = served_model.ServingEncoder(encoder_dir)
        if encoder.manifest['table_sha256'] != store.manifest['source'].get(
            'table_sha256'):
          if self.store is None:
            raise served_model.ModelError(
                f'{encoder_dir} did not make the store\'s vectors (other '
                'table)')
          log.warning('%s did not make store v%d\'s vectors: new items by '
                      'vector only', encoder_dir, version)
          encoder = None
        else:
          encoder.warm()
    except BaseException:
      store.close()
      raise
    return store, index, encoder

  def _load(self, directory):
    """Loads, checks and warms a version, then makes it live; opens the
    store version it pins if that is not the one served (the next batch
    embedding's: `_open_store`)."""
    model = served_model.ServingModel(directory)
    pinned = model.manifest['vector_store']['version']
    opened = None
    if self.store is None or pinned != self.store.version:
      opened = self._open_store(pinned)
    try:
      self._make_live(model, directory, *(opened or (self.store, self.index,
                                                     self.encoder)))
    except BaseException:
      if opened:
        opened[0].close()
      raise

  def _make_live(self, model, directory, store, index, encoder):
    schema = model.manifest['schema']
    if self.schema is not None and schema != self.schema:
      raise served_model.ModelError(
          f'model {directory} has the schema {schema}, the service serves '
          f'{self.schema}: start a service for it')
    missing = sorted(set(model.manifest['item_attributes']) -
                     set(store.attr_names))
    if missing:
      raise served_model.ModelError(
          f'model {directory} reads item attributes {missing} that the store '
          f'v{store.version} lacks (it has {list(store.attr_names)})')
    want = model.manifest['vector_store']['table_sha256']
    have = store.manifest['source'].get('table_sha256')
    if want != have:
      raise served_model.ModelError(
          f'model {directory} expects the vector table {want[:12]}..., the '
          f'store v{store.version} holds {str(have)[:12]}...')
    count = store.count
    table = model.device_table(store.dense(0, count))
    # Seconds: outside the lock, adds go on meanwhile. Requests are scored
    # by score_request only, so score's own programs are not compiled.
    model.warm(table, rows=False)
    if table is not None:  # and the one-row update, for the first new item
      jax.block_until_ready(self._set_rows(table, 0, np.asarray(table[:1])))
    old = self.store
    with self._write:
      if store is not old:
        # Items added to the old version while this one loaded: no add
        # runs now, and the old one takes none after this block.
        carried = store.carry_from_source()
        if carried:
          with self._index_lock:
            index.catch_up(store)
      new = store.count
      if table is not None and new > count:  # items added while warming
        table = self._set_rows(table, count, store.dense(count, new))
      # An 'id' model has no table, but its ID tables end at the capacity.
      live = Live(model, table, min(new, model.manifest['item_capacity']))
      with self._index_lock:
        self.store, self.index, self.encoder = store, index, encoder
      self.live = live
      self.schema = schema
    if old is not None and old is not store:
      old.close()  # its rows stay mapped for requests still reading them
      log.info('store v%d -> v%d (%d items)', old.version, store.version,
               store.count)

  def reload(self):
    """Loads CURRENT if it changed; True if a new version went live."""
    directory = served_model.current(self.models_dir)
    old = self.live.model
    if directory in (old.directory, self._failed):
      return False
    try:
      self._load(directory)
    except Exception as e:
      self._failed = directory  # not retried until CURRENT moves on
      self.failed_reload = {'version': os.path.basename(directory),
                            'error': f'{type(e).__name__}: {e}'[:2000],
                            'at': time.time()}
      raise
    self.reloads += 1
    log.info('model %s -> %s', old.version, self.live.model.version)
    return True

  def _poll(self, interval):
    while not self._stop.wait(interval):
      if self.logger is not None:
        self.logger.maybe_close()  # a quiet log still closes its segment
      try:
        self.reload()
      except Exception:  # pylint: disable=broad-except
        # A bad version must not take the service down: keep serving the
        # live one, count it, say why.
        self.reload_errors += 1
        log.exception('reload failed; still serving %s',
                      self.live.model.version)

  def close(self):
    self._stop.set()
    if self._poller is not None:
      self._poller.join()
    if self.logger is not None:
      self.logger.close()
    self.store.close()

  # ---------------------------------------------------------------- scoring

  def score(self, req):
    live = self.live
    one, cands = rows.inputs(live, self.store, req.user, reqs.history(req),
                             req.candidates, 'candidates', req.long_history)
    probs = live.model.score_request(one, cands, live.table)
    return {'model_version': live.model.version,
            'item_ids': cands['item_id'].tolist(),
            'probabilities': probs.tolist()}

  def log_impressions(self, req):
    """Shown items and their clicks -> the near-line log, as model rows."""
    if self.logger is None:
      raise reqs.bad(['body'], 'this service logs no impressions (start it '
                     f'with {ENV_LOG_DIR} set)', status=409)
    if len(req.labels) != len(req.items):
      raise reqs.bad(['body', 'labels'], f'{len(req.labels)} labels for '
                     f'{len(req.items)} items')
    batch = rows.rows(self.live, self.store, req.user, reqs.history(req),
                      req.items, 'items', req.long_history)
    batch['label'] = np.asarray(req.labels)
    try:
      self.logger.write_batch(batch)
    except impression_log.LogFull as e:  # nothing of it was written
      raise reqs.bad(['body'], f'the impressions were not logged: {e}',
                     status=507) from e
    return {'logged': len(req.items)}

  # ------------------------------------------------------------------ items

  def _encode(self, req):
    """The request's image + title -> vector (the warm encoder)."""
    enc = self.encoder
    if req.image is None and req.title is None:
      raise reqs.bad(['body', 'vector'], 'a new item needs a vector, or an '
                     'image and a title')
    if enc is None:
      raise reqs.bad(['body', 'image'], 'this service has no item encoder (its '
                     'store was made by an untrained reference): send a vector')
    if req.image is None or req.title is None:
      missing = 'image' if req.image is None else 'title'
      raise reqs.bad(['body', missing], 'an item without a vector needs both '
                     'an image and a title')
    try:
      raw = base64.b64decode(req.image, validate=True)
    except (binascii.Error, ValueError) as e:
      raise reqs.bad(['body', 'image'], f'is not base64 ({e})') from e
    want = int(np.prod(enc.image_shape))
    if len(raw) != want:
      raise reqs.bad(['body', 'image'], f'decodes to {len(raw)} bytes; images '
                     f'are {enc.image_shape} uint8 = {want} bytes')
    if len(req.title) > enc.title_length:
      raise reqs.bad(['body', 'title'], f'has {len(req.title)} tokens, at most '
                     f'{enc.title_length}')
    rows.check_ids(req.title, ['body', 'title'], enc.vocab_size,
                    'token id')
    title = np.zeros(enc.title_length, np.int32)
    title[:len(req.title)] = req.title
    image = np.frombuffer(raw, np.uint8).reshape(enc.image_shape)
    return enc.encode(image, title)

  def add_item(self, req):
    schema = self.live.model.manifest['schema']
    if req.vector is not None and (req.image is not None or
                                   req.title is not None):
      raise reqs.bad(['body', 'vector'], 'send a vector or an image + title, '
                     'not both')
    with np.errstate(over='ignore'):  # 1e300 -> inf: refused just below
      v = np.asarray(req.vector if req.vector is not None else
                     self._encode(req), np.float32)
    if len(v) != self.store.dim:
      raise reqs.bad(['body', 'vector'], f'has {len(v)} values, items are '
                     f'{self.store.dim}-d vectors')
    norm = float(np.linalg.norm(v)) if np.isfinite(v).all() else math.nan
    if not norm > 1e-6 or not math.isfinite(norm):
      raise reqs.bad(['body', 'vector'], 'must be finite and non-zero')
    values = {}
    for f, size in schema['item'].items():
      values[f] = rows.check_ids(getattr(req, f), ['body', f], size, f)
    for f, bag in schema['bags'].items():
      ids = rows.check_ids(getattr(req, f), ['body', f], bag['size'], f)
      for k in range(bag['width']):  # empty slots hold 0, as stored
        values[f'{f}/{k}'] = ids[k] if k < len(ids) else 0
    # The store's columns, in its order (an unread column: 0).
    attrs = [values.get(name, 0) for name in self.store.attr_names]
    v = v / norm
    with self._write:
      live = self.live
      if self.store.count >= live.model.manifest['item_capacity']:
        cap = live.model.manifest['item_capacity']
        raise reqs.bad(['body'], f'the model {live.model.version} holds at '
                       f'most {cap} items; export it with a larger '
                       'config.item_capacity', status=507)
      try:
        item = self.store.add(v, attrs)
      except vector_store.StoreWriteError as e:
        # The store rolled the write back: nothing was added, the next add
        # may succeed once there is room (not the client's fault: no 422).
        raise reqs.bad(['body'], f'the item was not stored: {e}',
                       status=507) from e
      with self._index_lock:
        self.index.add(v[None], [item])
      table = live.table
      if table is not None:
        # A new array (no donation): requests in flight keep the old one.
        table = self._set_rows(table, item, int8.quantize(v)[None])
      self.live = Live(live.model, table, item + 1)
    return {'item_id': item}

  def similar(self, item_id, k):
    rows.check_ids(item_id, ['path', 'item_id'], self.store.count,
                    'item id')
    query = self.store.vectors([item_id])
    with self._index_lock:
      scores, ids = self.index.search(query, k + 1)
    out = [(int(i), float(s)) for i, s in zip(ids[0], scores[0])
           if i >= 0 and i != item_id][:k]
    return {'item_id': item_id, 'similar': [i for i, _ in out],
            'scores': [s for _, s in out]}

  # ---------------------------------------------------------------- status

  def health(self):
    live = self.live.model
    return {'status': 'ok', 'model_version': live.version,
            'variant': live.manifest['variant'],
            'store_version': self.store.version, 'items': self.store.count,
            'new_items': self.store.delta_count,
            'index_items': self.index.count,
            'encoder': self.encoder is not None,
            'item_capacity': live.manifest['item_capacity'],
            'last_failed_reload': self.failed_reload}

  def observe(self, path, status, seconds):
    self.requests[f'{path} {status}'] += 1
    if status < 400:
      self.latency[path].append(seconds)

  def metrics(self):
    lat = {}
    for path, values in self.latency.items():
      if values:
        ms = np.asarray(values) * 1e3
        lat[path] = {'count': len(ms), 'p50_ms': float(np.percentile(ms, 50)),
                     'p99_ms': float(np.percentile(ms, 99))}
    return {'uptime_s': time.time() - self.started,
            'requests': dict(self.requests), 'latency': lat,
            'model_version': self.live.model.version,
            'reloads': self.reloads, 'reload_errors': self.reload_errors,
            'items': self.store.count, 'new_items': self.store.delta_count,
            'impression_log': None if self.logger is None else {
                'bytes': self.logger.used_bytes(),
                'budget': self.logger.max_bytes,
                'retired_segments': self.logger.retired}}
