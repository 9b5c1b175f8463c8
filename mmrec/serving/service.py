"""The scoring service: FastAPI over a serving directory (export.py).

  POST /score                 user profile + history (+ long_history, for a
                              model trained with one) + candidate item ids
                              -> click probabilities (vectors and item
                              attributes looked up server-side)
  POST /items                 a new item (its vector, or its image + title
                              encoded by the warm exported encoder; its
                              item features) -> its id; written to the
                              store's delta (fsynced), the index and the
                              live vector table before the response; a
                              write that fails (a full disk) is rolled
                              back and answered with a 507
  GET  /items/{id}/similar    nearest items by vector cosine (the index)
  POST /impressions           items shown to a user and their clicks ->
                              the near-line log (impression_log.py; with
                              MMREC_IMPRESSION_LOG set), as the model's rows;
                              a 507 once its byte budget is spent
                              (MMREC_IMPRESSION_LOG_BYTES, default 1 GiB)
                              and no segment near-line committed is left
                              to delete (its workdir: as the job named it
                              in the log, or MMREC_NEARLINE_WORKDIR)
  GET  /health, GET /metrics  status; request counts and latency percentiles

The request schema is the dataset's: `user` holds user_id and the declared
user features and bags, a new item the declared item features and bags (a
bag as a list of at most its width ids), as the model's manifest names them
(layout.serving_schema). The world: a user's age, gender, city; an item's
category, shop. A version whose schema differs from the one the service
started with is not loaded (its requests' shape would change under the
clients).

Every input is validated (pydantic types and size limits, then the model's
vocabularies and the store's ids): a bad request gets a 4xx whose `detail`
names the field (`loc`), as FastAPI's own validation errors do (NaN and
infinities included: echoed as strings, JSON has no such numbers). Bodies
are counted as they arrive (`LimitAndTime`): past `MAX_BODY_BYTES`
(requests.py) a 413, chunked or not (one declared larger: before it is
read); not whole within `BODY_TIMEOUT_S` a 408.

Store versions: the service opens the store version its model pins (the
manifest's `vector_store`); a new model version pinning another (the next
batch embedding's, layout.ensure_store) is served with that version, which
first takes the items added to the old one since it was written (same ids);
the old version is then closed, untouched.

Hot reload: a thread polls `models/CURRENT`; a new version is loaded, checked
against the store (same base vector table), given its vector table and
warmed (every bucket compiled) before one reference swap makes it live.
Requests in flight keep the (model, table) pair they started with, so none
is dropped or sees half a swap.

Process: the runtime (this module, state.py, rows.py and what they import)
imports jax, numpy, faiss and FastAPI, never flax, the training code or the
serving jobs. Run it with `make serve`, or
`MMREC_SERVING_DIR=<dir> uvicorn --factory mmrec.serving.service:app_from_env`.
"""

import asyncio
import logging
import os
import time
from typing import Annotated

import fastapi
from fastapi import encoders
from fastapi import exception_handlers
from fastapi import exceptions
from fastapi import responses
import jax
from starlette import exceptions as starlette_exceptions

from mmrec.serving import impression_log
from mmrec.serving import requests as reqs
from mmrec.serving import state as state_lib
from mmrec.serving import vector_store

ENV_DIR, ENV_LOG_DIR = state_lib.ENV_DIR, state_lib.ENV_LOG_DIR


class BodyRefused(exceptions.HTTPException):
  """A body cut off as it arrives: too large (413) or too slow (408). Raised
  from `receive` inside FastAPI's body read, which re-raises an
  HTTPException as it is; `connection: close` so uvicorn drops the rest of
  the stream instead of reading and discarding it."""

  def __init__(self, status, msg, kind):
    super().__init__(status, detail=[{'loc': ['body'], 'msg': msg,
                                      'type': kind}],
                     headers={'connection': 'close'})


class LimitAndTime:
  """ASGI middleware: every request body is capped as it arrives, whatever
  its transfer encoding: a 413 once more than MAX_BODY_BYTES came (or were
  declared by Content-Length, before any is read), a 408 if the whole body
  has not come `body_timeout_s` after the request started (a stalled or
  trickling client holds no handler forever). Every response's route,
  status and latency go to `Serving.observe`. Plain ASGI rather than
  `@app.middleware('http')` (Starlette's BaseHTTPMiddleware), which runs
  each request's app in a task of its own and streams the response through
  a queue: Python work per request on a CPU that /score's tail latency
  shares."""

  def __init__(self, app, serving, body_timeout_s=reqs.BODY_TIMEOUT_S):
    self.app, self.serving, self.body_timeout_s = app, serving, body_timeout_s

  def _capped(self, receive, deadline):
    """`receive`, counting body bytes and holding the deadline until the
    body's last message; after it (a disconnect wait) as it is."""
    received, done = 0, False

    async def capped_receive():
      nonlocal received, done
      if done:
        return await receive()
      try:
        message = await asyncio.wait_for(
            receive(), max(0.0, deadline - time.perf_counter()))
      except asyncio.TimeoutError:
        raise BodyRefused(408, f'body not received within '
                          f'{self.body_timeout_s:g} s', 'timeout') from None
      if message['type'] == 'http.request':
        received += len(message.get('body', b''))
        if received > reqs.MAX_BODY_BYTES:
          raise _too_large()
        done = not message.get('more_body', False)
      else:
        done = True
      return message
    return capped_receive

  async def __call__(self, scope, receive, send):
    if scope['type'] != 'http':
      return await self.app(scope, receive, send)
    t0 = time.perf_counter()
    status = []

    async def send_and_note(message):
      if message['type'] == 'http.response.start':
        status.append(message['status'])
      await send(message)

    length = dict(scope['headers']).get(b'content-length')
    try:
      if length is not None and (not length.isdigit() or
                                 int(length) > reqs.MAX_BODY_BYTES):
        raise _too_large()
      await self.app(scope, self._capped(receive, t0 + self.body_timeout_s),
                     send_and_note)
    except BodyRefused as e:
      # Raised where FastAPI does not turn it into its response (the header
      # check above; a body read outside a route's own).
      if status:
        raise
      response = responses.JSONResponse({'detail': e.detail}, e.status_code,
                                        e.headers)
      await response(scope, receive, send_and_note)
    route = scope.get('route')  # set by the router
    self.serving.observe(route.path if route else 'other',
                         status[0] if status else 500,
                         time.perf_counter() - t0)


def _too_large():
  return BodyRefused(413, f'body larger than {reqs.MAX_BODY_BYTES} bytes',
                     'too_large')


def use_compilation_cache(serving_dir):
  """Compiled programs persist in `serving_dir/jax_cache` (unless the
  environment names a cache): versions differ only in their parameters,
  which are arguments, so a reload or a restart loads its programs instead
  of compiling them while requests wait for the CPU."""
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir',
                      os.path.join(serving_dir, 'jax_cache'))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)


def create_app(serving_dir, reload_interval_s=1.0,
               body_timeout_s=reqs.BODY_TIMEOUT_S, **logging_kwargs):
  """The FastAPI app over a serving directory (state in app.state.serving);
  `logging_kwargs`: Serving's log_dir, segment_records, segment_seconds,
  log_max_bytes, nearline_dir."""
  serving = state_lib.Serving(serving_dir, reload_interval_s,
                              **logging_kwargs)
  # pylint: disable-next=invalid-name
  ScoreRequest, ImpressionRequest, ItemRequest = (
      serving.score_request, serving.impression_request, serving.item_request)
  app = fastapi.FastAPI(title='mmrec scoring service')
  app.state.serving = serving
  app.router.add_event_handler('shutdown', serving.close)

  app.add_middleware(LimitAndTime, serving=serving,
                     body_timeout_s=body_timeout_s)

  @app.exception_handler(exceptions.RequestValidationError)
  async def invalid(request, exc):
    # FastAPI's own handler, but for the echoed input: a NaN or an infinity
    # (JSON text Python parses as a float), or a list nested hundreds deep,
    # would make its 422 a 500.
    del request
    errors = [dict(e, input=reqs.jsonable(e['input'])) if 'input' in e else e
              for e in exc.errors()]
    return responses.JSONResponse(status_code=422, content={
        'detail': encoders.jsonable_encoder(errors)})

  @app.exception_handler(starlette_exceptions.HTTPException)
  async def http_error(request, exc):
    # FastAPI answers a body it cannot parse (not UTF-8, nested deeper than
    # Python's JSON parser recurses, an integer of thousands of digits) with
    # a 400 whose detail is one string: said here as the other 4xx say it,
    # naming the body, with the parser's reason.
    if exc.status_code == 400 and isinstance(exc.detail, str):
      cause = f' ({exc.__cause__})' if exc.__cause__ else ''
      exc = exceptions.HTTPException(400, detail=[{
          'loc': ['body'], 'msg': f'{exc.detail}{cause}'[:500],
          'type': 'value_error'}], headers=exc.headers)
    return await exception_handlers.http_exception_handler(request, exc)

  @app.exception_handler(vector_store.StoreError)
  async def store_error(request, exc):  # e.g. an id the store lost
    del request
    return responses.JSONResponse(status_code=422, content={
        'detail': [{'loc': ['body'], 'msg': str(exc), 'type': 'value_error'}]})

  @app.post('/score')
  def score(req: ScoreRequest):
    # A Response is sent as it is: FastAPI's jsonable_encoder walk over the
    # 2 x 100 values (~0.7 ms a request, measured) is skipped.
    return responses.JSONResponse(serving.score(req))

  @app.post('/impressions')
  def impressions(req: ImpressionRequest):
    return serving.log_impressions(req)

  @app.post('/items')
  def add_item(req: ItemRequest):
    return serving.add_item(req)

  @app.get('/items/{item_id}/similar')
  def similar(item_id: Annotated[int, fastapi.Path(ge=0, le=2**31 - 1)],
              k: Annotated[int, fastapi.Query(ge=1, le=reqs.MAX_SIMILAR)] = 10):
    return serving.similar(item_id, k)

  @app.get('/health')
  def health():
    return serving.health()

  @app.get('/metrics')
  def metrics():
    return serving.metrics()

  return app


def app_from_env():
  """`uvicorn --factory mmrec.serving.service:app_from_env` (make serve)."""
  if ENV_DIR not in os.environ:
    raise RuntimeError(f'set {ENV_DIR} to a serving directory (export job)')
  logging.basicConfig(level=logging.INFO)
  use_compilation_cache(os.environ[ENV_DIR])
  budget = os.environ.get(state_lib.ENV_LOG_BYTES)
  return create_app(
      os.environ[ENV_DIR], log_dir=os.environ.get(ENV_LOG_DIR) or None,
      log_max_bytes=(int(budget) if budget else
                     impression_log.DEFAULT_MAX_BYTES),
      nearline_dir=os.environ.get(state_lib.ENV_NEARLINE_DIR) or None)
