"""Tests for the scoring service (mmrec.serving.service): scores equal the exported
model's on the same rows, new items, similar items, restarts, hot reload
under load, and a table of malformed requests that must each get a 4xx
naming the field.

Runs on a copy of the 'simtier_official' serving directory that
fixtures.exported_ctr trains and exports once per process.
"""

import base64
import concurrent.futures
import json
import os
import resource
import shutil
import signal
import socket
import tempfile
import threading
import time
import urllib.parse

from absl.testing import absltest
from absl.testing import parameterized
from fastapi import testclient
import fixtures
import httpx
import numpy as np
import uvicorn

from experiments.configs import ctr as ctr_config
from experiments.configs import export as export_config
from mmrec import ctr_data
from mmrec import int8
from mmrec import train_ctr
from mmrec import vector_table
from mmrec.serving import export
from mmrec.serving import impression_log
from mmrec.serving import layout
from mmrec.serving import requests
from mmrec.serving import served_model
from mmrec.serving import service
from mmrec.serving import state as state_lib
from mmrec.serving import vector_store

VARIANT = 'simtier_official'


def _request(rows, i):
  """The /score request of test row i: its user, history and target."""
  mask = rows['seq_mask'][i]
  return {'user': {k: int(rows[k][i]) for k in ('user_id', 'age', 'gender',
                                                'city')},
          'history': rows['seq_item'][i][mask].tolist(),
          'candidates': [int(rows['item_id'][i])]}


def _new_version(serving, step):
  """A copy of the live version as v{step} (a new version to reload)."""
  models = os.path.join(serving, 'models')
  src = served_model.current(models)
  dst = os.path.join(models, f'v{step}')
  shutil.copytree(src, dst)
  with open(os.path.join(dst, 'manifest.json')) as f:
    m = json.load(f)
  m['step'] = step
  with open(os.path.join(dst, 'manifest.json'), 'w') as f:
    json.dump(m, f)
  return dst


def _point(serving, step):
  with open(os.path.join(serving, 'models', 'CURRENT.tmp'), 'w') as f:
    f.write(f'v{step}\n')
  os.replace(os.path.join(serving, 'models', 'CURRENT.tmp'),
             os.path.join(serving, 'models', 'CURRENT'))


USER = {'user_id': 1, 'age': 1, 'gender': 0, 'city': 1}
GOOD = {'user': USER, 'history': [1, 2, 3], 'candidates': [4, 5]}
BIG = 10**6
DIM = 32  # the oracle vectors' width (the tiny world's concept_dim)


IMAGE = base64.b64encode(bytes(16 * 16 * 3)).decode()  # the tiny world's
ITEM = {'image': IMAGE, 'title': [5, 6, 7], 'category': 1, 'shop': 1}


def _with(**changes):
  return dict(GOOD, **changes)


# (name, method, path, body or raw bytes, expected status, field in `loc`)
MALFORMED = [
    ('no_body', 'post', '/score', None, 422, 'body'),
    ('not_json', 'post', '/score', b'{"user": ', 422, 'body'),
    ('json_list', 'post', '/score', [1, 2], 422, 'body'),
    ('missing_user', 'post', '/score', {'candidates': [1]}, 422, 'user'),
    ('missing_candidates', 'post', '/score', {'user': USER}, 422,
     'candidates'),
    ('empty_candidates', 'post', '/score', _with(candidates=[]), 422,
     'candidates'),
    ('too_many_candidates', 'post', '/score',
     _with(candidates=[1] * (requests.MAX_CANDIDATES + 1)), 422,
     'candidates'),
    ('too_long_history', 'post', '/score',
     _with(history=[1] * (requests.MAX_HISTORY + 1)), 422,
     'history'),
    ('candidate_string', 'post', '/score', _with(candidates=['4']), 422,
     'candidates'),
    ('candidate_float', 'post', '/score', _with(candidates=[4.5]), 422,
     'candidates'),
    ('candidate_negative', 'post', '/score', _with(candidates=[-1]), 422,
     'candidates'),
    ('candidate_unknown', 'post', '/score', _with(candidates=[4, BIG]), 422,
     'candidates'),
    ('candidate_huge', 'post', '/score', _with(candidates=[2**63]), 422,
     'candidates'),
    ('history_unknown', 'post', '/score', _with(history=[BIG]), 422,
     'history'),
    ('history_null', 'post', '/score', _with(history=None), 422, 'history'),
    # This model was trained without a long history.
    ('long_history_unread', 'post', '/score', _with(long_history=[1]), 422,
     'long_history'),
    ('user_unknown', 'post', '/score',
     _with(user=dict(USER, user_id=BIG)), 422, 'user_id'),
    ('age_unknown', 'post', '/score', _with(user=dict(USER, age=BIG)), 422,
     'age'),
    ('gender_bool', 'post', '/score', _with(user=dict(USER, gender=True)),
     422, 'gender'),
    ('city_missing', 'post', '/score',
     _with(user={k: v for k, v in USER.items() if k != 'city'}), 422, 'city'),
    ('extra_field', 'post', '/score', _with(labels=[1]), 422, 'labels'),
    ('too_large_body', 'post', '/score',
     b' ' * (requests.MAX_BODY_BYTES + 1), 413, 'body'),
    ('item_no_vector', 'post', '/items', {'category': 1, 'shop': 1}, 422,
     'vector'),
    ('item_wrong_dim', 'post', '/items',
     {'vector': [0.5] * 3, 'category': 1, 'shop': 1}, 422, 'vector'),
    ('item_zero_vector', 'post', '/items',
     {'vector': [0.0] * DIM, 'category': 1, 'shop': 1}, 422, 'vector'),
    ('item_category_unknown', 'post', '/items',
     {'vector': [0.25] * DIM, 'category': BIG, 'shop': 1}, 422, 'category'),
    ('item_shop_negative', 'post', '/items',
     {'vector': [0.25] * DIM, 'category': 1, 'shop': -2}, 422, 'shop'),
    ('item_bad_base64', 'post', '/items', dict(ITEM, image='%%%'), 422,
     'image'),
    ('item_image_size', 'post', '/items',
     dict(ITEM, image=base64.b64encode(b'abc').decode()), 422, 'image'),
    ('item_title_missing', 'post', '/items',
     {k: v for k, v in ITEM.items() if k != 'title'}, 422, 'title'),
    ('item_title_token_unknown', 'post', '/items', dict(ITEM, title=[BIG]),
     422, 'title'),
    ('item_title_too_long', 'post', '/items', dict(ITEM, title=[1] * 100),
     422, 'title'),
    ('item_vector_and_image', 'post', '/items',
     dict(ITEM, vector=[0.25] * DIM), 422, 'vector'),
    ('impression_labels_short', 'post', '/impressions',
     {'user': USER, 'items': [1, 2], 'labels': [1]}, 422, 'labels'),
    ('impression_label_two', 'post', '/impressions',
     {'user': USER, 'items': [1], 'labels': [2]}, 422, 'labels'),
    ('impression_item_unknown', 'post', '/impressions',
     {'user': USER, 'items': [BIG], 'labels': [0]}, 422, 'items'),
    ('similar_not_int', 'get', '/items/abc/similar', None, 422, 'item_id'),
    ('similar_unknown', 'get', f'/items/{BIG}/similar', None, 422, 'item_id'),
    ('similar_k_zero', 'get', '/items/3/similar?k=0', None, 422, 'k'),
    ('similar_k_huge', 'get', '/items/3/similar?k=100000', None, 422, 'k'),
    ('wrong_method', 'get', '/score', None, 405, None),
]


# Bad numbers as raw JSON text (json.dumps writes NaN and Infinity; 1e400
# parses as inf), put in every numeric field of every request.
NOT_AN_ID = ('NaN', 'Infinity', '-Infinity', '1e400', '-1', str(2**63),
             '1.5', '"3"', 'true', 'null')
NOT_A_FLOAT = ('NaN', 'Infinity', '-Infinity', '1e400', '"3"', 'true', 'null')
_SLOT = '"__bad__"'
_IMPRESSION = {'user': USER, 'history': [1, 2], 'items': [4, 5],
               'labels': [0, 1]}
_VECTOR_ITEM = {'vector': [0.25] * DIM, 'category': 1, 'shop': 1}
# (name, path, body, where the bad value goes, field named in `loc`, values)
BAD_NUMBER_FIELDS = [
    ('score_user_id', '/score', GOOD, ('user', 'user_id'), 'user_id',
     NOT_AN_ID),
    ('score_age', '/score', GOOD, ('user', 'age'), 'age', NOT_AN_ID),
    ('score_gender', '/score', GOOD, ('user', 'gender'), 'gender', NOT_AN_ID),
    ('score_city', '/score', GOOD, ('user', 'city'), 'city', NOT_AN_ID),
    ('score_history', '/score', GOOD, ('history', 0), 'history', NOT_AN_ID),
    ('score_long_history', '/score', _with(long_history=[1]),
     ('long_history', 0), 'long_history', NOT_AN_ID),
    ('score_candidates', '/score', GOOD, ('candidates', 1), 'candidates',
     NOT_AN_ID),
    ('impression_user_id', '/impressions', _IMPRESSION, ('user', 'user_id'),
     'user_id', NOT_AN_ID),
    ('impression_history', '/impressions', _IMPRESSION, ('history', 1),
     'history', NOT_AN_ID),
    ('impression_items', '/impressions', _IMPRESSION, ('items', 0), 'items',
     NOT_AN_ID),
    ('impression_labels', '/impressions', _IMPRESSION, ('labels', 1),
     'labels', NOT_AN_ID),
    ('item_vector', '/items', _VECTOR_ITEM, ('vector', 3), 'vector',
     NOT_A_FLOAT),
    ('item_category', '/items', _VECTOR_ITEM, ('category',), 'category',
     NOT_AN_ID),
    ('item_shop', '/items', _VECTOR_ITEM, ('shop',), 'shop', NOT_AN_ID),
    ('item_title', '/items', ITEM, ('title', 2), 'title', NOT_AN_ID),
    ('item_image', '/items', ITEM, ('image',), 'image',
     tuple(v for v in NOT_AN_ID if v != 'null')),  # null: no image, below
    ('similar_item_id', '/items/{}/similar', None, (), 'item_id', NOT_AN_ID),
    ('similar_k', '/items/3/similar?k={}', None, (), 'k', NOT_AN_ID),
]


def _raw_with(body, where, text):
  """`body` as JSON text with the value at `where` replaced by `text`."""
  body = json.loads(json.dumps(body))
  *parents, last = where
  node = body
  for key in parents:
    node = node[key]
  node[last] = _SLOT[1:-1]
  return json.dumps(body).replace(_SLOT, text)


class ServiceTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.serving = fixtures.serving_copy(VARIANT)
    fixtures.export_untrained_encoder(cls.serving)
    cls.log_dir = tempfile.mkdtemp()
    cls.app = service.create_app(cls.serving, reload_interval_s=0,
                                 log_dir=cls.log_dir, segment_records=1000)
    cls.client = testclient.TestClient(cls.app)
    cls.state = cls.app.state.serving
    ds = ctr_data.CtrData.load(fixtures.small_ctr_world_dir()).dataset(
        'test', 64)
    cls.rows = ds[0]

  @classmethod
  def tearDownClass(cls):
    cls.state.close()
    super().tearDownClass()

  def test_scores_equal_the_exported_model(self):
    live = self.state.live
    want = live.model.score(self.rows, live.table)
    for i in range(0, 64, 7):
      r = self.client.post('/score', json=_request(self.rows, i))
      self.assertEqual(r.status_code, 200, r.text)
      np.testing.assert_allclose(r.json()['probabilities'], [want[i]],
                                 rtol=0, atol=1e-6)
    # One user, several candidates: one row each, same scores.
    req = _request(self.rows, 0)
    req['candidates'] = self.rows['item_id'][:10].tolist()
    got = self.client.post('/score', json=req).json()['probabilities']
    batch = {k: v[:10].copy() for k, v in self.rows.items()}
    for k in ('user_id', 'age', 'gender', 'city', 'seq_item', 'seq_category',
              'seq_mask'):
      batch[k][:] = self.rows[k][0]
    np.testing.assert_allclose(got, live.model.score(batch, live.table),
                               atol=1e-6)

  @parameterized.named_parameters(*[(m[0],) + m[1:] for m in MALFORMED])
  def test_malformed_request(self, method, path, body, status, field):
    if isinstance(body, bytes):
      r = self.client.request(method, path, content=body,
                              headers={'content-type': 'application/json'})
    elif body is None:
      r = self.client.request(method, path)
    else:
      r = self.client.request(method, path, json=body)
    self.assertEqual(r.status_code, status, r.text)
    if field is not None:
      locs = [d['loc'] for d in r.json()['detail']]
      self.assertTrue(any(field in map(str, loc) for loc in locs),
                      f'{field!r} not named in {locs}')

  @parameterized.named_parameters(*BAD_NUMBER_FIELDS)
  def test_bad_number_gets_4xx_naming_the_field(self, path, body, where,
                                                field, values):
    # Server errors come back as 500s here, as a client would see them.
    client = testclient.TestClient(self.app, raise_server_exceptions=False)
    items = self.state.store.count
    wrong = []
    for text in values:
      if body is None:  # a path or query value: as it is, URL-quoted
        r = client.get(path.format(urllib.parse.quote(text)))
      else:
        r = client.post(path, content=_raw_with(body, where, text),
                        headers={'content-type': 'application/json'})
      if r.status_code != 422:
        wrong.append(f'{text}: {r.status_code} {r.text[:200]}')
        continue
      locs = [d['loc'] for d in r.json()['detail']]
      if not any(field in map(str, loc) for loc in locs):
        wrong.append(f'{text}: {field!r} not named in {locs}')
    self.assertEqual(wrong, [])
    self.assertEqual(client.get('/health').status_code, 200)
    self.assertEqual(self.state.store.count, items)  # nothing was added

  def test_full_disk_add_gets_507_and_adds_resume(self):
    """An add whose delta write fails (a file-size limit: the kernel's
    EFBIG, as ENOSPC on a full disk) gets a 507 and leaves no trace; once
    there is room, adds resume and the store opens with every item."""
    store = self.state.store
    path = os.path.join(store.path, vector_store.DELTA)
    size = store._record.size  # pylint: disable=protected-access
    good = os.path.getsize(path) if os.path.exists(path) else 0
    health = self.client.get('/health').json()
    item = health['items']
    body = {'vector': [0.25] * DIM, 'category': 1, 'shop': 1}
    # Room for half a record, for these two requests only (the limit is
    # the process's): each write is cut short, then refused.
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
      resource.setrlimit(resource.RLIMIT_FSIZE, (good + size // 2, hard))
      full = [self.client.post('/items', json=body) for _ in range(2)]
    finally:
      resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
      signal.signal(signal.SIGXFSZ, handler)
    for r in full:
      self.assertEqual(r.status_code, 507, r.text)
      self.assertIn('File too large', r.json()['detail'][0]['msg'])
    self.assertEqual(os.path.getsize(path), good)
    self.assertEqual(self.client.get('/health').json(), health)  # index too
    self.assertEqual(self.state.live.count, item)  # and the live table
    r = self.client.post('/items', json=body)
    self.assertEqual(r.status_code, 200, r.text)
    self.assertEqual(r.json()['item_id'], item)
    with vector_store.VectorStore(os.path.dirname(store.path)) as again:
      self.assertEqual(again.count, item + 1)  # opens: every item, once
      np.testing.assert_array_equal(again.lookup([item]),
                                    store.lookup([item]))

  def test_impressions_are_logged_as_model_rows(self):
    reqs = [_request(self.rows, i) for i in (3, 4)]
    for r, i in zip(reqs, (3, 4)):
      body = {'user': r['user'], 'history': r['history'],
              'items': r['candidates'], 'labels': [int(self.rows['label'][i])]}
      got = self.client.post('/impressions', json=body)
      self.assertEqual(got.status_code, 200, got.text)
    self.state.logger.close()  # closes the open segment
    (_, path), = impression_log.closed_segments(self.log_dir)
    logged = impression_log.read_rows(path, range(2))
    # The model's input fields as served, and the label.
    self.assertEqual(set(logged),
                     set(self.state.live.model.fields) | {'label'})
    for f in logged:
      np.testing.assert_array_equal(logged[f], self.rows[f][3:5], err_msg=f)

  def test_new_item_is_scorable_similar_and_survives_restart(self):
    rng = np.random.default_rng(0)
    v = rng.normal(size=DIM)
    before = self.client.get('/health').json()
    r = self.client.post('/items', json={'vector': v.tolist(), 'category': 3,
                                         'shop': 2})
    self.assertEqual(r.status_code, 200, r.text)
    item = r.json()['item_id']
    self.assertEqual(item, before['items'])
    # Scorable, as a candidate and in a history; its row is in the table.
    req = _with(candidates=[item, 4], history=[1, item])
    r = self.client.post('/score', json=req)
    self.assertEqual(r.status_code, 200, r.text)
    live = self.state.live
    np.testing.assert_array_equal(np.asarray(live.table[item]),
                                  self.state.store.lookup([item])[0])
    # Retrievable: a near-copy's nearest neighbour is the new item.
    twin = self.client.post('/items', json={
        'vector': (v + 0.01 * rng.normal(size=DIM)).tolist(), 'category': 3,
        'shop': 2}).json()['item_id']
    r = self.client.get(f'/items/{twin}/similar?k=3').json()
    self.assertEqual(r['similar'][0], item)
    # Restart: a new service over the same directory sees both items (the
    # index catches up from the store's delta).
    self.state.store.close()
    again = state_lib.Serving(self.serving, reload_interval_s=0)
    try:
      self.assertEqual(again.store.count, twin + 1)
      self.assertEqual(again.index.count, twin + 1)
      self.assertEqual(again.similar(twin, 1)['similar'], [item])
      np.testing.assert_allclose(
          again.score(again.score_request(**req))['probabilities'],
          self.client.post('/score', json=req).json()['probabilities'],
          atol=1e-6)
    finally:
      again.close()
      self.state.store = service.vector_store.VectorStore(
          os.path.join(self.serving, 'vectors'), writable=True)
    # By image + title: encoded by the exported encoder, then as above.
    r = self.client.post('/items', json=ITEM)
    self.assertEqual(r.status_code, 200, r.text)
    by_image = r.json()['item_id']
    v = self.state.encoder.encode(np.zeros((16, 16, 3), np.uint8),
                                  np.array([5, 6, 7] + [0] * 9))
    np.testing.assert_array_equal(
        self.state.store.lookup([by_image])[0],
        int8.quantize(v / np.linalg.norm(v)))
    self.assertEqual(self.client.post('/score', json=_with(
        candidates=[by_image])).status_code, 200)
    m = self.client.get('/metrics').json()
    self.assertGreaterEqual(m['requests']['/items 200'], 2)
    self.assertIn('/score', m['latency'])

  def test_load_with_new_items_and_hot_reload_loses_no_request(self):
    """Bounded loopback load: 4 clients score while items arrive and new
    versions are published (one corrupt); every request succeeds and every
    item added during the load is retrievable and scorable."""
    serving = fixtures.serving_copy(VARIANT)
    with socket.socket() as s:
      s.bind(('127.0.0.1', 0))
      port = s.getsockname()[1]
    app = service.create_app(serving, reload_interval_s=0.05)
    server = uvicorn.Server(uvicorn.Config(app, host='127.0.0.1', port=port,
                                           log_level='warning'))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f'http://127.0.0.1:{port}'
    for _ in range(200):
      if server.started:
        break
      time.sleep(0.05)
    versions, statuses = [], []
    done = threading.Event()

    def client_loop():
      # Until the reloads are over (and at least 20 requests, at most 2000).
      with httpx.Client(base_url=url, timeout=30) as c:
        for i in range(2000):
          if i >= 20 and done.is_set():
            break
          r = c.post('/score', json=_request(self.rows, i % 64))
          statuses.append(r.status_code)
          if r.status_code == 200:
            versions.append(r.json()['model_version'])

    added = []

    def add_items():
      rng = np.random.default_rng(1)
      with httpx.Client(base_url=url, timeout=30) as c:
        while not done.is_set():
          r = c.post('/items', json={'vector': rng.normal(size=DIM).tolist(),
                                     'category': 2, 'shop': 3})
          statuses.append(r.status_code)
          added.append(r.json()['item_id'])
          time.sleep(0.02)

    try:
      with concurrent.futures.ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(client_loop) for _ in range(4)]
        futures.append(pool.submit(add_items))
        time.sleep(0.3)
        _new_version(serving, 11)
        bad = _new_version(serving, 12)
        with open(os.path.join(bad, 'variables.npz'), 'ab') as f:
          f.write(b'corrupt')
        _point(serving, 11)
        for _ in range(100):  # reload, while the clients keep going
          if app.state.serving.live.model.version == 'v11':
            break
          time.sleep(0.05)
        _point(serving, 12)  # a corrupt version never goes live
        for _ in range(100):
          if app.state.serving.reload_errors:
            break
          time.sleep(0.05)
        time.sleep(0.2)
        done.set()
        for f in futures:
          f.result()
      self.assertGreaterEqual(len(statuses), 80)
      self.assertEqual(statuses, [200] * len(statuses))
      self.assertEqual(set(versions), {'v10', 'v11'})
      self.assertEqual(versions[-1], 'v11')
      with httpx.Client(base_url=url) as c:
        health = c.get('/health').json()
        metrics = c.get('/metrics').json()
      self.assertEqual(health['model_version'], 'v11')
      self.assertGreaterEqual(metrics['reloads'], 1)
      self.assertGreaterEqual(metrics['reload_errors'], 1)
      self.assertNotEmpty(added)
      self.assertEqual(health['items'], added[-1] + 1)
      with httpx.Client(base_url=url) as c:
        for item in added:
          self.assertEqual(c.get(f'/items/{item}/similar?k=1').status_code,
                           200)
        r = c.post('/score', json=_with(candidates=added[:100]))
        self.assertEqual(r.status_code, 200, r.text)
        self.assertEqual(r.json()['model_version'], 'v11')
        # Retrievable: a new item's own vector finds it first.
        v = app.state.serving.store.vectors([added[-1]])[0]
        r = c.post('/items', json={'vector': v.tolist(), 'category': 2,
                                   'shop': 3})
        twin = r.json()['item_id']
        self.assertEqual(c.get(f'/items/{twin}/similar?k=1').json()[
            'similar'], [added[-1]])
    finally:
      server.should_exit = True
      thread.join(timeout=10)


class NextBatchEmbeddingTest(absltest.TestCase):

  def test_new_store_version_keeps_added_items_and_the_service_switches(self):
    """Items added through the service, then the next batch embedding (a
    new table) exported with a model trained for it: the new store version
    holds the table's rows and the added items (same ids and vectors), the
    old one is untouched, and the service's reload serves them, including
    one added to the old version after the export."""
    c, _, base, _ = fixtures.exported_ctr('id')
    serving = os.path.join(tempfile.mkdtemp(), 'serving')
    shutil.copytree(base, serving)
    app = service.create_app(serving, reload_interval_s=0)
    client = testclient.TestClient(app)
    state = app.state.serving
    try:
      n = state.store.base_count
      rng = np.random.default_rng(3)
      vecs = rng.normal(size=(3, DIM))
      added = [client.post('/items', json={
          'vector': v.tolist(), 'category': 2 + i, 'shop': 1}).json()[
              'item_id'] for i, v in enumerate(vecs[:2])]
      self.assertEqual(added, [n, n + 1])
      v1_rows = state.store.dense()
      # The next batch embedding: another table for the catalogue, and a
      # CTR model trained for it (an 'id' model: the store is its
      # config.vectors_path), exported into the live serving directory.
      table_path = os.path.join(tempfile.mkdtemp(), vector_table.FILE)
      table = vector_table.load(fixtures.oracle_vectors_path())[0]
      table = table + 0.2 * np.random.default_rng(9).normal(size=table.shape)
      table /= np.linalg.norm(table, axis=1, keepdims=True)
      vector_table.save(table_path, table.astype(np.float32),
                        {'method': 'next_batch'})
      c2 = ctr_config.get_config('id,tiny')
      c2.update(data_dir=c.data_dir, vectors_path=c.vectors_path,
                tower=c.tower, attention_mlp=c.attention_mlp,
                embed_dim=c.embed_dim, max_steps=12)
      workdir = os.path.join(tempfile.mkdtemp(), 'ctr')
      train_ctr.run(c2, workdir)
      ec = export_config.get_config('tiny')
      ec.vectors_path = table_path
      export.export(ec, workdir, serving)
      # Added to the old version after the export, before the reload.
      late = client.post('/items', json={'vector': vecs[2].tolist(),
                                         'category': 4, 'shop': 1}).json()
      self.assertEqual(late['item_id'], n + 2)
      root = os.path.join(serving, layout.VECTORS)
      with vector_store.VectorStore(root) as s:
        self.assertEqual((s.version, s.count), (2, n + 2))
        self.assertEqual(s.manifest['source']['carried'],
                         {'from_version': 1, 'ids': [n, n + 2]})
        np.testing.assert_array_equal(s.dense(0, n),
                                      int8.quantize(table))
        np.testing.assert_array_equal(s.dense(n, n + 2), v1_rows[n:])
        np.testing.assert_array_equal(s.attributes(added)[:, 0], [2, 3])
      with vector_store.VectorStore(root, version=1) as s:  # untouched
        self.assertEqual((s.base_count, s.count), (n, n + 3))
        np.testing.assert_array_equal(s.dense(0, n + 2), v1_rows)
      # The reload: the new model pins store v2; the service opens it,
      # carrying the late item over, and serves all three.
      self.assertTrue(state.reload())
      health = client.get('/health').json()
      self.assertEqual((health['model_version'], health['store_version'],
                        health['items'], health['index_items']),
                       ('v12', 2, n + 3, n + 3))
      np.testing.assert_array_equal(
          state.store.lookup([n + 2])[0],
          int8.quantize(vecs[2] / np.linalg.norm(vecs[2])))
      r = client.post('/score', json=_with(candidates=[n, n + 1, n + 2, 4],
                                           history=[n + 2, 1]))
      self.assertEqual(r.status_code, 200, r.text)
      self.assertEqual(r.json()['model_version'], 'v12')
      r = client.get(f'/items/{n + 2}/similar?k=2')
      self.assertEqual(r.status_code, 200, r.text)
      # New items now go to v2's delta, after the carried ones.
      r = client.post('/items', json={'vector': vecs[0].tolist(),
                                      'category': 2, 'shop': 1})
      self.assertEqual(r.json()['item_id'], n + 3)
      self.assertEqual(
          client.get(f'/items/{n + 3}/similar?k=1').json()['similar'], [n])
    finally:
      state.close()
    again = state_lib.Serving(serving, reload_interval_s=0)  # a restart
    try:
      self.assertEqual((again.store.version, again.store.count), (2, n + 4))
      self.assertEqual(again.index.count, n + 4)
    finally:
      again.close()


class NonFiniteVersionTest(absltest.TestCase):

  def test_nan_version_is_refused_kept_out_and_reported(self):
    """A version whose warm-up scores are NaN (checksums intact: only its
    outputs tell) never goes live; /health names it."""
    serving = fixtures.serving_copy(VARIANT)
    bad = _new_version(serving, 11)
    path = os.path.join(bad, served_model.VARIABLES_FILE)
    with np.load(path) as f:
      arrays = {k: np.full_like(f[k], np.nan) for k in f.files}
    np.savez(path, **arrays)
    with open(os.path.join(bad, served_model.MANIFEST)) as f:
      m = json.load(f)
    m['sha256'][served_model.VARIABLES_FILE] = served_model.sha256_file(path)
    with open(os.path.join(bad, served_model.MANIFEST), 'w') as f:
      json.dump(m, f)
    state = state_lib.Serving(serving, reload_interval_s=0)
    try:
      self.assertIsNone(state.health()['last_failed_reload'])
      _point(serving, 11)
      with self.assertRaisesRegex(served_model.ModelError, 'NaN or infinite'):
        state.reload()
      self.assertEqual(state.live.model.version, 'v10')
      failed = state.health()['last_failed_reload']
      self.assertEqual(failed['version'], 'v11')
      self.assertIn('NaN or infinite', failed['error'])
      self.assertFalse(state.reload())  # not retried until CURRENT moves
    finally:
      state.close()


class LongHistoryServiceTest(parameterized.TestCase):
  """/score with a long history, for models trained with one (the official
  setting, small: SimTier over the 30-long history; and a GSU)."""

  @parameterized.parameters('simtier', 'gsu')
  def test_long_history_scores_equal_offline_and_bad_ones_get_422(self,
                                                                  kind):
    c, wd, serving, _ = fixtures.exported_long_ctr(kind)
    path = os.path.join(tempfile.mkdtemp(), 'serving')
    shutil.copytree(serving, path)
    app = service.create_app(path, reload_interval_s=0)
    client = testclient.TestClient(app)
    try:
      pred = fixtures.offline_predictions(c, wd)
      ds = ctr_data.CtrData.load(c.data_dir).dataset('test', 1024)
      rows = ds[0]
      np.testing.assert_array_equal(rows['item_id'], pred['item_id'][
          :len(rows['item_id'])])
      offline = 1 / (1 + np.exp(-pred['logit'].astype(np.float64)))
      schema = app.state.serving.live.model.manifest['schema']
      for i in range(0, len(rows['item_id']), 9):
        user = {f: int(rows[f][i]) for f in ['user_id', *schema['user']]}
        long = rows['long_seq_item'][i][rows['long_seq_mask'][i]].tolist()
        req = {'user': user, 'candidates': [int(rows['item_id'][i])],
               'history': rows['seq_item'][i][rows['seq_mask'][i]].tolist(),
               'long_history': long}
        r = client.post('/score', json=req)
        self.assertEqual(r.status_code, 200, r.text)
        np.testing.assert_allclose(r.json()['probabilities'], [offline[i]],
                                   rtol=0, atol=1e-6)
        # No short history sent: the long one's most recent 10, as the
        # converter stores them.
        del req['history']
        r = client.post('/score', json=req)
        np.testing.assert_allclose(r.json()['probabilities'], [offline[i]],
                                   rtol=0, atol=1e-6)
      # One user, several candidates (the request program): the same as
      # the rows that repeat the user's fields and histories.
      live = app.state.serving.live
      cands = rows['item_id'][:12]
      batch = {k: np.repeat(v[:1], 12, 0) for k, v in rows.items()}
      for k in live.model.request_fields['candidates']:
        batch[k] = rows[k][:12]
      req['candidates'] = cands.tolist()
      req['user'] = {f: int(rows[f][0]) for f in ['user_id', *schema['user']]}
      req['long_history'] = rows['long_seq_item'][0][
          rows['long_seq_mask'][0]].tolist()
      got = client.post('/score', json=req).json()['probabilities']
      np.testing.assert_allclose(got, live.model.score(batch, live.table),
                                 rtol=0, atol=1e-6)
      for bad, msg in (([1] * 31, 'at most 30'), ([1, 10**6], 'unknown'),
                       (['1'], None), ([-1], None)):
        r = client.post('/score', json=dict(req, long_history=bad))
        self.assertEqual(r.status_code, 422, r.text)
        detail, = r.json()['detail']
        self.assertIn('long_history', detail['loc'])
        if msg:
          self.assertIn(msg, detail['msg'])
    finally:
      app.state.serving.close()


if __name__ == '__main__':
  absltest.main()
