"""A scoring request's model inputs: ids checked, fields joined by id.

The row layout is the training pipeline's (data/ctr_rows.py, the same
function): the service joins item fields from the vector store's attributes
where training joined them from the catalogue. `inputs` gives one user row
(user fields and histories) and one row per candidate, as the exported
request program takes them (`ServedModel.score_request`); `rows` the same
as model rows, the user's repeated for every item (what the impression log
stores).
"""

import numpy as np

from mmrec.data import ctr_rows
from mmrec.serving import requests as reqs


def check_ids(values, loc, size, what):
  """int64 ids, each < `size`, or a 422 naming the first unknown one."""
  arr = np.asarray(values, np.int64)
  bad = np.flatnonzero(arr >= size)
  if len(bad):
    i = int(bad[0])
    raise reqs.bad(loc + ([i] if arr.ndim else []),
                   f'{what} {int(arr.flat[i])} is unknown (valid: 0..'
                   f'{size - 1})', int(arr.flat[i]))
  return arr


class _Column:
  """One store attribute column (or a bag's columns) indexed by item id."""

  def __init__(self, ids, attrs, cols):
    self._ids, self._attrs, self._cols = ids, attrs, cols

  def __getitem__(self, items):
    # Every id asked for is in `ids` except padding (id 0), which masked
    # slots never read: any row will do for it.
    rows = np.minimum(np.searchsorted(self._ids, items), len(self._ids) - 1)
    return self._attrs[rows][..., self._cols]


class _StoreColumns:
  """The store's attribute columns for a request's item ids, indexed by item
  id as a catalogue's columns are (what ctr_rows joins): one store read."""

  def __init__(self, store, ids, bags):
    self._ids = np.unique(ids)  # sorted
    self._attrs = store.attributes(self._ids)
    names = store.attr_names
    self._cols = {f: [names.index(f'{f}/{k}') for k in range(b['width'])]
                  for f, b in bags.items()}
    self._cols.update((f, names.index(f)) for f in names if '/' not in f)

  def __getitem__(self, field):
    return _Column(self._ids, self._attrs, self._cols[field])


def _right_aligned(ids, length):
  seq = np.zeros((1, length), np.int64)
  if len(ids):
    seq[0, -len(ids):] = ids
  return seq, np.array([len(ids)])


def inputs(live, store, user, history, items, loc, long_history=None):
  """(user, candidates) of one user's (history, items), checked against the
  live model's vocabularies and the items its table holds.

  A model trained with a long history (`long_seq_len` > 0) also gets
  `long_history` (at most that long, most recent last). `history` None
  means not sent: then the short history is the long one's most recent
  L, and a long history not sent is the short one, since in training
  (data/impression_scan.py) both are the last behaviours of the same sequence."""
  model = live.model
  schema = model.manifest['schema']
  users = {'user_id': model.manifest['sizes']['num_users'],
           **schema['user']}
  for field, size in users.items():
    check_ids(getattr(user, field), ['body', 'user', field], size, field)
  count = live.count  # items this table holds (not one added meanwhile)
  items = check_ids(items, ['body', loc], count, 'item id')
  hist = check_ids(history or [], ['body', 'history'], count, 'item id')
  long_len = model.long_seq_len
  if long_history is not None:
    if len(long_history) > long_len:
      raise reqs.bad(['body', 'long_history'], f'has {len(long_history)} '
                     f'behaviours; model {model.version} reads ' +
                     (f'at most {long_len}' if long_len else
                      'no long history'))
    long = check_ids(long_history, ['body', 'long_history'], count,
                     'item id')
    if history is None:
      hist = long
  else:
    long = hist[-long_len:] if long_len else hist[:0]
  hist = hist[-model.seq_len:]
  fields = _StoreColumns(store, np.concatenate([items, hist, long]),
                         schema['bags'])
  one = {f: np.array([getattr(user, f)], np.int64) for f in users}
  for f, bag in schema.get('user_bags', {}).items():
    ids = check_ids(getattr(user, f), ['body', 'user', f], bag['size'], f)
    one[f] = np.zeros((1, bag['width']), np.int64)  # empty slots: 0
    one[f][0, :len(ids)] = ids
  cands = {'item_id': items}
  for f in list(schema['item']) + list(schema['bags']):
    cands[f] = fields[f][items]
  one.update(ctr_rows.history(*_right_aligned(hist, model.seq_len), fields,
                              schema['seq']))
  reads_long = [f for f in model.fields if f.startswith('long_seq_')]
  if reads_long:  # the long history's fields the model reads
    long_rows = ctr_rows.history(*_right_aligned(long, long_len), fields,
                                 schema['seq'], prefix='long_seq_')
    one.update({f: long_rows[f] for f in reads_long})
  return one, cands


def rows(live, store, user, history, items, loc, long_history=None):
  """`inputs` as model rows (the user's repeated for every item)."""
  one, cands = inputs(live, store, user, history, items, loc, long_history)
  n = len(cands['item_id'])
  return dict({k: np.repeat(v, n, 0) for k, v in one.items()}, **cands)
