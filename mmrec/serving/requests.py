"""What the scoring service accepts: request models and size limits.

The request schema is the dataset's (a model manifest's `schema`,
layout.serving_schema): `request_models` builds its pydantic models, so a
missing, extra or mistyped field is FastAPI's own 422 naming it; ids are
checked against the live model's vocabularies by the service. `bad` makes
the service's own 4xx in the same shape. Python's JSON parser takes NaN,
Infinity and 1e400 (inf) as numbers: they are refused (422) like any wrong
type, and `jsonable` keeps them out of the 422's echo of the input (JSON
has no such numbers: rendering one would turn the 422 into a 500).
"""

import math
from typing import Annotated

import fastapi
import pydantic

from mmrec.serving import served_model

MAX_BODY_BYTES = 1 << 20  # counted as it arrives, chunked or not
# A body must have arrived whole this long after its request started: a
# client trickling or stalling it holds no handler for longer.
BODY_TIMEOUT_S = 10.0
MAX_CANDIDATES = 1000
MAX_HISTORY = 1000
MAX_LONG_HISTORY = 10000  # a body's bound; the model's own length is checked
MAX_SIMILAR = 100

Id = Annotated[int, pydantic.Field(strict=True, ge=0, le=2**31 - 1)]


class Strict(pydantic.BaseModel):
  # allow_inf_nan: a NaN or infinite float (the vector's) is the field's
  # own 422, not a value the service checks later.
  model_config = pydantic.ConfigDict(extra='forbid', strict=True,
                                     allow_inf_nan=False)


class ItemBase(Strict):
  """A new item: its vector, or its image and title (encoded here); the
  declared item features come from `request_models`."""
  vector: list[float] | None = pydantic.Field(None, min_length=1,
                                              max_length=4096)
  image: str | None = pydantic.Field(None, max_length=1 << 19)  # base64
  title: list[Id] | None = pydantic.Field(None, max_length=1024)


def request_models(schema):
  """(ScoreRequest, ImpressionRequest, ItemRequest) pydantic models of a
  model manifest's `schema`: every declared feature a required field, so a
  missing or extra one is FastAPI's own 422 naming it. Vocabulary sizes
  are checked per request, against the live model
  (`rows.inputs`)."""
  clash = sorted((set(schema['item']) | set(schema['bags']))
                 & set(ItemBase.model_fields))
  if clash:
    raise served_model.ModelError(f'item features {clash} collide with the '
                                   "/items request's own fields")
  # A bag is its ids (at most its width; 0 = empty slot, as stored).
  def bags(table):
    return {f: (list[Id], pydantic.Field(default_factory=list,
                                         max_length=b['width']))
            for f, b in table.items()}

  user_model = pydantic.create_model(
      'User', __base__=Strict, user_id=(Id, ...),
      **{f: (Id, ...) for f in schema['user']},
      **bags(schema.get('user_bags', {})))

  class UserRequest(Strict):
    """A user and the histories their items are (or were) scored with."""
    user: user_model
    history: list[Id] = pydantic.Field(default_factory=list,
                                       max_length=MAX_HISTORY)
    long_history: list[Id] | None = pydantic.Field(
        None, max_length=MAX_LONG_HISTORY)

  class ScoreRequest(UserRequest):
    candidates: list[Id] = pydantic.Field(min_length=1,
                                          max_length=MAX_CANDIDATES)

  class ImpressionRequest(UserRequest):
    """Items shown to a user (with the history they were scored with) and
    whether each was clicked: near-line training data."""
    items: list[Id] = pydantic.Field(min_length=1,
                                     max_length=MAX_CANDIDATES)
    labels: list[Annotated[int, pydantic.Field(strict=True, ge=0, le=1)]] = (
        pydantic.Field(min_length=1, max_length=MAX_CANDIDATES))

  item = pydantic.create_model(
      'ItemRequest', __base__=ItemBase,
      **{f: (Id, ...) for f in schema['item']}, **bags(schema['bags']))
  return ScoreRequest, ImpressionRequest, item


ECHO_DEPTH = 8  # how deep a 4xx echoes a request's input


def jsonable(value, depth=ECHO_DEPTH):
  """`value` (JSON-able but for floats) with each NaN or infinite float as
  its repr ('nan', 'inf', '-inf') and what is nested deeper than `depth`
  as '...': what a 4xx echoes of a request (a 900-deep list is valid JSON,
  and walking it whole would exhaust Python's recursion limit: a 500)."""
  if isinstance(value, float) and not math.isfinite(value):
    return repr(value)
  if isinstance(value, (dict, list, tuple)) and depth <= 0:
    return '...'
  if isinstance(value, dict):
    return {k: jsonable(v, depth - 1) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v, depth - 1) for v in value]
  return value


def bad(loc, msg, value=None, status=422):
  """A 4xx in FastAPI's validation-error shape, naming the field."""
  detail = {'loc': list(loc), 'msg': msg, 'type': 'value_error'}
  if value is not None:
    detail['input'] = jsonable(value)
  return fastapi.HTTPException(status_code=status, detail=[detail])


def history(req):
  """The request's short history, None if it sent none
  (`rows.inputs` then takes it from the long one)."""
  return req.history if 'history' in req.model_fields_set else None
