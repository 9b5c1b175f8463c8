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
                              MMREC_IMPRESSION_LOG set), as the model's rows
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
infinities included: echoed as strings, JSON has no such numbers); bodies over
`MAX_BODY_BYTES` (requests.py) get a 413 before they are read.

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

import logging
import os
import time
from typing import Annotated

import fastapi
from fastapi import encoders
from fastapi import exceptions
from fastapi import responses
import jax

from mmrec.serving import requests as reqs
from mmrec.serving import state as state_lib
from mmrec.serving import vector_store

ENV_DIR, ENV_LOG_DIR = state_lib.ENV_DIR, state_lib.ENV_LOG_DIR


class LimitAndTime:
  """ASGI middleware: a 413 for a body declared larger than MAX_BODY_BYTES,
  before it is read; every response's route, status and latency to
  `Serving.observe`. Plain ASGI rather than `@app.middleware('http')`
  (Starlette's BaseHTTPMiddleware), which runs each request's app in a task
  of its own and streams the response through a queue: Python work per
  request on a CPU that /score's tail latency shares."""

  def __init__(self, app, serving):
    self.app, self.serving = app, serving

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
    if length is not None and (not length.isdigit() or
                               int(length) > reqs.MAX_BODY_BYTES):
      response = responses.JSONResponse(status_code=413, content={
          'detail': [{'loc': ['body'], 'msg': f'body larger than '
                      f'{reqs.MAX_BODY_BYTES} bytes', 'type': 'too_large'}]})
      await response(scope, receive, send_and_note)
    else:
      await self.app(scope, receive, send_and_note)
    route = scope.get('route')  # set by the router
    self.serving.observe(route.path if route else 'other',
                         status[0] if status else 500,
                         time.perf_counter() - t0)


def use_compilation_cache(serving_dir):
  """Compiled programs persist in `serving_dir/jax_cache` (unless the
  environment names a cache): versions differ only in their parameters,
  which are arguments, so a reload or a restart loads its programs instead
  of compiling them while requests wait for the CPU."""
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir',
                      os.path.join(serving_dir, 'jax_cache'))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)


def create_app(serving_dir, reload_interval_s=1.0, **logging_kwargs):
  """The FastAPI app over a serving directory (state in app.state.serving);
  `logging_kwargs`: Serving's log_dir, segment_records, segment_seconds."""
  serving = state_lib.Serving(serving_dir, reload_interval_s,
                              **logging_kwargs)
  # pylint: disable-next=invalid-name
  ScoreRequest, ImpressionRequest, ItemRequest = (
      serving.score_request, serving.impression_request, serving.item_request)
  app = fastapi.FastAPI(title='mmrec scoring service')
  app.state.serving = serving
  app.router.add_event_handler('shutdown', serving.close)

  app.add_middleware(LimitAndTime, serving=serving)

  @app.exception_handler(exceptions.RequestValidationError)
  async def invalid(request, exc):
    # FastAPI's own handler, but for the echoed input: a NaN or an infinity
    # (JSON text Python parses as a float) would make its 422 a 500.
    del request
    return responses.JSONResponse(status_code=422, content={
        'detail': reqs.jsonable(encoders.jsonable_encoder(exc.errors()))})

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
  return create_app(os.environ[ENV_DIR],
                    log_dir=os.environ.get(ENV_LOG_DIR) or None)
