"""Hostile inputs against the scoring service (mmrec.serving.service), as a
table: wrong types, sizes, non-finite numbers, unknown ids, huge k, chunked,
endless and stalled bodies, wrong content types, bad base64 and images,
unknown fields and deep nesting, on every endpoint.

Each case must get a 4xx (its expected one) whose `detail` names the field,
never a 5xx; after each, /health is still ok and nothing was added to the
store or the impression log. One app serves the whole table (a copy of
fixtures.exported_ctr's 'simtier_official' serving directory, with the
untrained encoder, so /items takes images). Bodies that must arrive in
pieces (chunked: no Content-Length) are driven through the app's ASGI
interface directly, each piece one `receive` (the test client would join
them into one).
"""

import asyncio
import base64
import io
import itertools
import json
import tempfile

from absl.testing import parameterized
from fastapi import testclient
import fixtures
from PIL import Image

from mmrec.serving import requests
from mmrec.serving import service

VARIANT = 'simtier_official'
DIM = 32  # the oracle vectors' width (the tiny world's concept_dim)
BIG = 10**6  # an id past every vocabulary and the store
TIMEOUT_S = 1.0  # the app's body timeout (the default, 10 s, is for people)
CHUNK = 1 << 16

USER = {'user_id': 1, 'age': 1, 'gender': 0, 'city': 1}
SCORE = {'user': USER, 'history': [1, 2, 3], 'candidates': [4, 5]}
IMPRESSION = {'user': USER, 'history': [1, 2], 'items': [4, 5],
              'labels': [0, 1]}
VECTOR_ITEM = {'vector': [0.25] * DIM, 'category': 1, 'shop': 1}
IMAGE = base64.b64encode(bytes(16 * 16 * 3)).decode()  # the tiny world's
IMAGE_ITEM = {'image': IMAGE, 'title': [5, 6, 7], 'category': 1, 'shop': 1}


def _png():
  out = io.BytesIO()
  Image.new('RGB', (16, 16)).save(out, format='PNG')
  return base64.b64encode(out.getvalue()).decode()


class Raw:
  """A body sent as these bytes, with this content type (None: none) and
  these headers."""

  def __init__(self, data, content_type='application/json', headers=None):
    self.headers = dict(headers or {})
    if content_type:
      self.headers['content-type'] = content_type
    self.data = data


class Chunked:
  """A body sent in pieces, without a Content-Length (each piece one ASGI
  message); STALL: the client sends nothing more."""
  STALL = object()

  def __init__(self, pieces, delay_s=0.0):
    self.pieces, self.delay_s = pieces, delay_s


def _set(body, where, value):
  """A copy of `body` with the value at path `where` set (a missing key is
  added; `DELETE` removes it)."""
  body = json.loads(json.dumps(body))
  *parents, last = where
  node = body
  for key in parents:
    node = node[key]
  if value is DELETE:
    del node[last]
  else:
    node[last] = value
  return body


DELETE = object()


def _nan(body, where, text):
  """`body` as JSON text with `text` (NaN, Infinity, 1e400: no JSON
  encoder writes them all) at `where`."""
  return Raw(json.dumps(_set(body, where, '__bad__')).replace('"__bad__"',
                                                              text))


def _nested(depth, inner='1'):
  return '[' * depth + inner + ']' * depth


# Per field: the values of the wrong type or out of range.
NOT_AN_ID = (('str', '1'), ('float', 1.5), ('bool', True), ('null', None),
             ('list', [1]), ('dict', {}), ('negative', -1), ('int32_past',
                                                            2**31))
NOT_AN_ID_LIST = (('int', 5), ('str', '1,2'), ('null', None), ('dict', {}),
                  ('nested', [[1]]), ('str_item', ['a']), ('float_item',
                                                         [1.5]),
                  ('negative_item', [-1]), ('unknown_item', [BIG]),
                  ('bool_item', [True]))
NON_FINITE = ('NaN', 'Infinity', '-Infinity', '1e400')


def _field_cases(endpoint, body, where, field, values):
  return [(f'{endpoint}_{field}_{name}', 'post', f'/{endpoint}',
           _set(body, where, value), 422, field) for name, value in values]


def _cases():
  """(name, method, path, body, expected status, field named or None)."""
  cases = []
  # -- /score: every field's wrong types, sizes and ids.
  for f in ('user_id', 'age', 'gender', 'city'):
    cases += _field_cases('score', SCORE, ('user', f), f,
                          NOT_AN_ID + (('unknown', BIG),))
    cases += [(f'score_{f}_missing', 'post', '/score',
               _set(SCORE, ('user', f), DELETE), 422, f)]
    cases += [(f'score_{f}_{t.lower()}', 'post', '/score',
               _nan(SCORE, ('user', f), t), 422, f) for t in NON_FINITE]
  cases += _field_cases('score', SCORE, ('history',), 'history',
                        NOT_AN_ID_LIST + (
                            ('too_long', [1] * (requests.MAX_HISTORY + 1)),))
  cases += _field_cases('score', SCORE, ('candidates',), 'candidates',
                        NOT_AN_ID_LIST + (
                            ('empty', []),
                            ('too_many', [4] * (requests.MAX_CANDIDATES + 1)),
                            ('int32_past', [2**31]), ('int64_past', [2**63])))
  cases += _field_cases('score', SCORE, ('long_history',), 'long_history', (
      ('int', 5), ('nested', [[1]]), ('negative_item', [-1]),
      ('unread', [1]),  # this model was trained without one
      ('too_long', [1] * (requests.MAX_LONG_HISTORY + 1))))
  cases += _field_cases('score', SCORE, ('user',), 'user', (
      ('int', 1), ('str', 'u'), ('list', [USER]), ('null', None),
      ('empty', {})))
  cases += [
      ('score_candidates_nan', 'post', '/score',
       _nan(SCORE, ('candidates', 1), 'NaN'), 422, 'candidates'),
      ('score_history_infinity', 'post', '/score',
       _nan(SCORE, ('history', 0), 'Infinity'), 422, 'history'),
      ('score_user_unknown_field', 'post', '/score',
       _set(SCORE, ('user', 'height'), 170), 422, 'height'),
      ('score_unknown_field', 'post', '/score', _set(SCORE, ('k',), 5), 422,
       'k'),
      ('score_proto_field', 'post', '/score',
       _set(SCORE, ('__proto__',), {'admin': True}), 422, '__proto__'),
      ('score_labels_field', 'post', '/score', _set(SCORE, ('labels',), [1]),
       422, 'labels'),
      ('score_missing_candidates', 'post', '/score',
       _set(SCORE, ('candidates',), DELETE), 422, 'candidates'),
      ('score_missing_user', 'post', '/score', _set(SCORE, ('user',), DELETE),
       422, 'user'),
      # The last of two duplicate keys counts (Python's JSON parser).
      ('score_duplicate_key', 'post', '/score', Raw(
          json.dumps(SCORE)[:-1] + ', "candidates": "x"}'), 422,
       'candidates'),
      ('score_deep_user', 'post', '/score', Raw(
          json.dumps(SCORE).replace(json.dumps(USER), _nested(500))), 422,
       'user'),
      ('score_deep_history', 'post', '/score', Raw(
          json.dumps(SCORE).replace('[1, 2, 3]', _nested(500))), 422,
       'history'),
  ]
  # -- /impressions
  for f in ('user_id', 'age'):
    cases += _field_cases('impressions', IMPRESSION, ('user', f), f,
                          (('str', '1'), ('null', None), ('unknown', BIG)))
  cases += _field_cases('impressions', IMPRESSION, ('items',), 'items',
                        NOT_AN_ID_LIST + (('empty', []),))
  cases += _field_cases('impressions', IMPRESSION, ('history',), 'history',
                        (('unknown_item', [BIG]), ('str', 'x')))
  cases += _field_cases('impressions', IMPRESSION, ('labels',), 'labels', (
      ('two', [0, 2]), ('negative', [0, -1]), ('float', [0, 0.5]),
      ('bool', [0, True]), ('str', [0, '1']), ('null', [0, None]),
      ('short', [1]), ('long', [1, 0, 1]), ('empty', []), ('int', 1)))
  cases += [
      ('impressions_labels_nan', 'post', '/impressions',
       _nan(IMPRESSION, ('labels', 0), 'NaN'), 422, 'labels'),
      ('impressions_items_1e400', 'post', '/impressions',
       _nan(IMPRESSION, ('items', 0), '1e400'), 422, 'items'),
      ('impressions_unknown_field', 'post', '/impressions',
       _set(IMPRESSION, ('clicks',), [1]), 422, 'clicks'),
      ('impressions_candidates_field', 'post', '/impressions',
       _set(IMPRESSION, ('candidates',), [4]), 422, 'candidates'),
      ('impressions_missing_labels', 'post', '/impressions',
       _set(IMPRESSION, ('labels',), DELETE), 422, 'labels'),
  ]
  # -- /items: by vector, by image + title.
  cases += _field_cases('items', VECTOR_ITEM, ('vector',), 'vector', (
      ('str', 'x'), ('empty', []), ('int', 1), ('nested', [[0.1] * DIM]),
      ('str_item', ['a'] * DIM), ('null_item', [None] * DIM),
      ('bool_item', [True] * DIM), ('short', [0.25] * 3),
      ('long', [0.25] * (DIM + 1)), ('too_long', [0.25] * 5000),
      ('zero', [0.0] * DIM), ('tiny', [1e-30] * DIM),
      ('huge', [1e300] * DIM), ('dict', {})))
  cases += [(f'items_vector_{t.lower()}', 'post', '/items',
             _nan(VECTOR_ITEM, ('vector', 3), t), 422, 'vector')
            for t in NON_FINITE]
  for f in ('category', 'shop'):
    cases += _field_cases('items', VECTOR_ITEM, (f,), f,
                          NOT_AN_ID + (('unknown', BIG),))
    cases += [(f'items_{f}_nan', 'post', '/items',
               _nan(VECTOR_ITEM, (f,), 'NaN'), 422, f),
              (f'items_{f}_missing', 'post', '/items',
               _set(VECTOR_ITEM, (f,), DELETE), 422, f)]
  cases += _field_cases('items', IMAGE_ITEM, ('image',), 'image', (
      ('not_base64', '%%%'), ('int', 5), ('list', [0] * 768),
      ('short', base64.b64encode(b'abc').decode()),
      ('png', _png()),  # an encoded image: the service takes raw pixels
      ('data_url', 'data:image/png;base64,' + IMAGE),
      ('newlines', IMAGE[:40] + '\n' + IMAGE[40:]),
      ('urlsafe', IMAGE.replace('A', '-')),
      ('unpadded', base64.b64encode(bytes(767)).decode().rstrip('=')),
      ('too_long', 'A' * ((1 << 19) + 4)), ('empty', ''),
      ('null', None)))  # with a title: an image is missing
  cases += _field_cases('items', IMAGE_ITEM, ('title',), 'title', (
      ('str', 'abc'), ('unknown_token', [BIG]), ('negative', [-1]),
      ('float', [1.5]), ('too_long', [1] * 100), ('way_too_long', [1] * 2000),
      ('null', None), ('nested', [[1]])))
  cases += [
      ('items_nothing', 'post', '/items', {'category': 1, 'shop': 1}, 422,
       'vector'),
      ('items_vector_and_image', 'post', '/items',
       dict(IMAGE_ITEM, vector=[0.25] * DIM), 422, 'vector'),
      ('items_vector_and_title', 'post', '/items',
       dict(VECTOR_ITEM, title=[1]), 422, 'vector'),
      ('items_unknown_field', 'post', '/items', dict(VECTOR_ITEM, price=3),
       422, 'price'),
      ('items_item_id_field', 'post', '/items', dict(VECTOR_ITEM, item_id=3),
       422, 'item_id'),
      ('items_deep_vector', 'post', '/items', Raw(json.dumps(
          _set(VECTOR_ITEM, ('vector',), '__deep__')).replace(
              '"__deep__"', _nested(800, '0.5'))), 422, 'vector'),
  ]
  # -- /items/{id}/similar: path and query.
  cases += [(f'similar_id_{name}', 'get', f'/items/{value}/similar', None,
             422, 'item_id') for name, value in (
                 ('negative', -1), ('str', 'abc'), ('float', 1.5),
                 ('unknown', BIG), ('int32_past', 2**31),
                 ('int64_past', 2**63), ('nan', 'NaN'), ('inf', 'inf'),
                 ('exponent', '1e3'))]
  cases += [(f'similar_k_{name}', 'get', f'/items/3/similar?k={value}', None,
             422, 'k') for name, value in (
                 ('zero', 0), ('negative', -1),
                 ('past_max', requests.MAX_SIMILAR + 1), ('huge', 10**12),
                 ('int64_past', 2**63), ('str', 'x'), ('float', 1.5),
                 ('empty', ''), ('nan', 'NaN'), ('list', '1&k=x'))]
  # -- whole bodies: not JSON, not an object, wrong content types.
  for path in ('/score', '/impressions', '/items'):
    ep = path[1:]
    cases += [
        (f'{ep}_no_body', 'post', path, None, 422, 'body'),
        (f'{ep}_empty_body', 'post', path, Raw(b''), 422, 'body'),
        (f'{ep}_not_json', 'post', path, Raw(b'{"user": '), 422, 'body'),
        (f'{ep}_json_null', 'post', path, Raw(b'null'), 422, 'body'),
        (f'{ep}_json_list', 'post', path, [1, 2], 422, 'body'),
        (f'{ep}_json_string', 'post', path, 'hello', 422, 'body'),
        (f'{ep}_bad_utf8', 'post', path, Raw(b'{"user": "\xff\xfe"}'), 400,
         'body'),
        (f'{ep}_text_plain', 'post', path,
         Raw(json.dumps(SCORE).encode(), 'text/plain'), 422, 'body'),
        (f'{ep}_form', 'post', path,
         Raw(b'user=1&candidates=4', 'application/x-www-form-urlencoded'),
         422, 'body'),
        (f'{ep}_multipart', 'post', path, Raw(
            b'--x\r\ncontent-disposition: form-data; name="user"\r\n\r\n1\r\n'
            b'--x--\r\n', 'multipart/form-data; boundary=x'), 422, 'body'),
        (f'{ep}_no_content_type', 'post', path,
         Raw(json.dumps(SCORE).encode(), None), 422, 'body'),
        # Deeper than Python's JSON parser recurses.
        (f'{ep}_deep_nesting', 'post', path, Raw(_nested(100_000)), 400,
         'body'),
        (f'{ep}_huge_int', 'post', path, Raw(
            b'{"user": ' + b'9' * 5000 + b'}'), 400, 'body'),
        (f'{ep}_too_large', 'post', path,
         Raw(b' ' * (requests.MAX_BODY_BYTES + 1)), 413, 'body'),
        # Chunked: capped as it arrives; a body that never ends is cut at
        # the cap (a bound here, so the test ends even without the cap).
        (f'{ep}_chunked_too_large', 'post', path, Chunked(
            [b' ' * CHUNK] * (requests.MAX_BODY_BYTES // CHUNK + 1)), 413,
         'body'),
        (f'{ep}_chunked_endless', 'post', path, Chunked(itertools.repeat(
            b'[' * CHUNK, 1024)), 413, 'body'),
        (f'{ep}_chunked_not_json', 'post', path, Chunked(
            [b'{"user"', b': [1, ', b'2']), 422, 'body'),
    ]
  cases += [
      ('score_chunked_bad_field', 'post', '/score', Chunked(
          [json.dumps(_set(SCORE, ('candidates',), 'x')).encode()[:10],
           json.dumps(_set(SCORE, ('candidates',), 'x')).encode()[10:]]),
       422, 'candidates'),
      ('score_chunked_stalled', 'post', '/score', Chunked(
          [b'{"user": ', Chunked.STALL]), 408, 'body'),
      ('items_chunked_trickle', 'post', '/items', Chunked(
          [b' '] * 1000, delay_s=TIMEOUT_S / 50), 408, 'body'),
      ('score_content_length_not_a_number', 'post', '/score',
       Raw(b'{}', headers={'content-length': '2x'}), 413, 'body'),
      # -- routes and methods
      ('score_get', 'get', '/score', None, 405, None),
      ('health_post', 'post', '/health', SCORE, 405, None),
      ('items_put', 'put', '/items', VECTOR_ITEM, 405, None),
      ('unknown_route', 'get', '/admin', None, 404, None),
      ('similar_no_id', 'get', '/items//similar', None, 404, None),
      ('path_traversal', 'get', '/items/..%2F..%2Fetc/similar', None, 404,
       None),
  ]
  return cases


CASES = _cases()


async def _drive(app, method, path, pieces, delay_s, headers):
  """One request through the ASGI app with the body in `pieces`: (status,
  response body, body bytes the app pulled)."""
  pieces = iter(pieces)
  pulled, sent = [0], []

  async def receive():
    if delay_s:
      await asyncio.sleep(delay_s)
    piece = next(pieces, None)
    if piece is Chunked.STALL:
      await asyncio.sleep(3600)
    if piece is None:
      return {'type': 'http.request', 'body': b'', 'more_body': False}
    pulled[0] += len(piece)
    return {'type': 'http.request', 'body': piece, 'more_body': True}

  async def send(message):
    sent.append(message)

  scope = {'type': 'http', 'asgi': {'version': '3.0'}, 'http_version': '1.1',
           'method': method.upper(), 'scheme': 'http', 'path': path,
           'raw_path': path.encode(), 'query_string': b'', 'root_path': '',
           'headers': [(b'host', b'testserver'),
                       (b'transfer-encoding', b'chunked'),
                       (b'content-type', b'application/json'), *headers],
           'client': ('127.0.0.1', 1), 'server': ('testserver', 80)}
  await app(scope, receive, send)
  body = b''.join(m.get('body', b'') for m in sent[1:])
  return sent[0]['status'], body, pulled[0]


class HostileTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    serving = fixtures.serving_copy(VARIANT)
    fixtures.export_untrained_encoder(serving)
    cls.log_dir = tempfile.mkdtemp()
    cls.app = service.create_app(serving, reload_interval_s=0,
                                 body_timeout_s=TIMEOUT_S,
                                 log_dir=cls.log_dir, segment_records=1000)
    # Server errors come back as 500s, as a client would see them.
    cls.client = testclient.TestClient(cls.app, raise_server_exceptions=False)
    cls.state = cls.app.state.serving

  @classmethod
  def tearDownClass(cls):
    cls.state.close()
    super().tearDownClass()

  def test_the_table_is_large(self):
    self.assertGreaterEqual(len(CASES), 150)
    self.assertLen({c[0] for c in CASES}, len(CASES))  # names are unique

  def test_the_good_requests_pass(self):
    """The table's bodies, unchanged, are accepted: each case fails for
    what it changed."""
    for path, body in (('/score', SCORE), ('/impressions', IMPRESSION)):
      r = self.client.post(path, json=body)
      self.assertEqual(r.status_code, 200, r.text)
    r = self.client.post('/score', content=b' ' * 1000 + json.dumps(
        SCORE).encode(), headers={'content-type': 'application/json'})
    self.assertEqual(r.status_code, 200, r.text)
    text = json.dumps(SCORE).encode()
    pieces = [text[i:i + 7] for i in range(0, len(text), 7)]
    status, body, _ = asyncio.run(_drive(self.app, 'post', '/score', pieces,
                                         0, []))
    self.assertEqual(status, 200, body)
    self.assertEqual(self.client.get('/items/3/similar?k=100').status_code,
                     200)

  @parameterized.named_parameters(*CASES)
  def test_hostile_request(self, method, path, body, status, field):
    items, logged = self.state.store.count, self.state.logger.used_bytes()
    if isinstance(body, Chunked):
      got, text, pulled = asyncio.run(_drive(
          self.app, method, path, body.pieces, body.delay_s, []))
      # Cut off at the cap: at most one message more was read.
      self.assertLessEqual(pulled, requests.MAX_BODY_BYTES + CHUNK)
    else:
      kwargs = {}
      if isinstance(body, Raw):
        kwargs['content'], kwargs['headers'] = body.data, body.headers
      elif body is not None:
        kwargs['json'] = body
      r = self.client.request(method, path, **kwargs)
      got, text = r.status_code, r.content
    self.assertEqual(got, status, text[:500])
    if field is not None:
      detail = json.loads(text)['detail']
      named = (field in detail if isinstance(detail, str) else any(
          field in map(str, d['loc']) or field in d['msg'] for d in detail))
      self.assertTrue(named, f'{field!r} not named in {detail}'[:500])
    health = self.client.get('/health')
    self.assertEqual(health.status_code, 200)
    self.assertEqual(health.json()['status'], 'ok')
    self.assertEqual(self.state.store.count, items)  # nothing added
    self.assertEqual(self.state.logger.used_bytes(), logged)  # nor logged

  def test_impressions_past_the_log_budget_get_507(self):
    logger = self.state.logger
    budget = logger.max_bytes
    logger.max_bytes = logger.used_bytes() + 10  # no room for a record
    try:
      r = self.client.post('/impressions', json=IMPRESSION)
    finally:
      logger.max_bytes = budget
    self.assertEqual(r.status_code, 507, r.text)
    self.assertIn('budget', r.json()['detail'][0]['msg'])
    self.assertEqual(r.json()['detail'][0]['loc'], ['body'])
    self.assertEqual(self.client.post('/impressions',
                                      json=IMPRESSION).status_code, 200)

