"""CTR evaluation: the ordered test pass, AUC / GAUC / logloss, slices by
training exposure and new items, evaluation points of multi-epoch runs, and
the result files: ctr_eval.json (the metrics) and predictions.npz (every test
row's logit, label, user id, real user (`user_key`: per-user metrics group
by it, as user_id is 0 for every user cold in training), item and exposure
group, in the split's order, so
that two runs on the same split can be compared row by row: see
mmrec/bootstrap.py).
"""

import math
import os

from absl import logging
import jax
import numpy as np

from mmrec import ctr_data
from mmrec import files
from mmrec import metrics as metrics_lib
from mmrec import sharding
from mmrec.data import ctr_rows
from mmrec.data import pipelines

EVAL_FILE = 'ctr_eval.json'
PREDICTIONS_FILE = 'predictions.npz'
# What a finished CTR run has written (files.finished): the result, and the
# test rows' predictions the paired bootstrap reads.
RESULT_FILES = (EVAL_FILE, PREDICTIONS_FILE)
# Batch fields the test pass brings back to the host for the metrics.
EVAL_FIELDS = ('label', 'user_id', 'user_key', 'item_id')


def predict(eval_fn, state, vectors, data, batch_size, mesh, split='test'):
  """One ordered pass over a split -> host arrays (logit + fields).

  Each global batch is split over the processes (see pipelines); every
  process pads its slice to `batch_size / P` rows (one compiled shape), and
  the padded rows are dropped after the outputs are gathered in process
  order, so the predictions come back in the split's order for any P. The
  last global batch may be short: a process whose slice of it is empty feeds
  an all-padding batch, since every process must run every global batch.
  """
  count = jax.process_count()
  local = batch_size // count
  num_batches = math.ceil(data.num_rows(split) / batch_size)
  it = pipelines.iterator(data.dataset(split, batch_size),
                          prefetch_threads=1)
  outs, template = [], None
  for _ in range(num_batches):
    b = next(it, None)
    if b is None:  # No rows of the last global batch for this process.
      if template is None:  # ... nor of any: pad with the split's first rows.
        template, _ = sharding.pad_batch(data.dataset(
            split, local, process_index=0, process_count=1)[0], local)
      b, rows = template, 0
    else:
      b, rows = sharding.pad_batch(b, local)
      template = b
    b = dict(b, valid=np.arange(local) < rows)
    outs.append(sharding.to_host(
        eval_fn(state, sharding.shard_batch(b, mesh), vectors)))
  out = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
  valid = out.pop('valid')
  return {k: v[valid] for k, v in out.items()}


def ctr_metrics(pred):
  """AUC, GAUC (by real user: ctr_rows.user_key) and logloss of test
  predictions."""
  logit = pred['logit'].astype(np.float64)
  prob = 1.0 / (1.0 + np.exp(-logit))
  return {'auc': metrics_lib.auc(pred['label'], pred['logit']),
          'gauc': metrics_lib.gauc(pred['label'], pred['logit'],
                                   ctr_rows.user_key(pred)),
          'logloss': metrics_lib.logloss(pred['label'], prob)}


def exposure_groups(pred, data_dir, train_ids=None):
  """(N,) exposure group of each predicted row (-1: new item), see
  metrics.exposure_groups.

  `train_ids`: the item ids of the impressions trained on, if the caller has
  them (default: every stored training impression of `data_dir`).
  """
  if train_ids is None:
    train_ids = ctr_data.train_columns(data_dir)['item_id']
  return metrics_lib.exposure_groups(train_ids, pred['item_id'])


def slice_metrics(pred, groups):
  """{'group_0'...'group_8', 'new': {count, auc, gauc}} by training exposure
  (`groups` from exposure_groups)."""
  flat = metrics_lib.sliced(pred['label'], pred['logit'], groups,
                            users=ctr_rows.user_key(pred))
  out = {}
  for key, value in flat.items():
    name, metric = key.split('/')
    out.setdefault(name, {})[metric] = (int(value) if metric == 'count'
                                        else value)
  return out


def eval_points(num_epochs, steps_per_epoch, fractions):
  """{step: epoch fraction} at which to evaluate during training.

  Several epochs: every epoch's end, and `fractions` of epochs 1 and 2.
  """
  points = {}
  if num_epochs > 1:
    for e in range(min(2, num_epochs)):
      for f in fractions:
        step = e * steps_per_epoch + int(round(f * steps_per_epoch))
        if step > 0:
          points[step] = step / steps_per_epoch
    for e in range(1, num_epochs + 1):
      points[e * steps_per_epoch] = float(e)
  return dict(sorted(points.items()))


def write_predictions(path, pred, groups):
  """predictions.npz: logit (float32), label, user_id, user_key, item_id
  and exposure_group (-1: new item) of every row, in the split's order."""
  files.write_npz(path, {
      'logit': np.asarray(pred['logit'], np.float32),
      'label': np.asarray(pred['label']),
      'user_id': np.asarray(pred['user_id']),
      'user_key': np.asarray(ctr_rows.user_key(pred)),
      'item_id': np.asarray(pred['item_id']),
      'exposure_group': np.asarray(groups, np.int8)})


def load_predictions(workdir):
  """The arrays of `workdir`'s predictions.npz (see write_predictions)."""
  path = os.path.join(workdir, PREDICTIONS_FILE)
  with np.load(path) as z:
    out = dict(z)
  if 'user_key' not in out:
    # Written before real-user keys: its per-user metrics lump cold users.
    logging.warning('%s has no user_key: grouping users by user_id, which '
                    'is 0 for every user cold in training; rerun the CTR job '
                    'for per-user metrics by real user', path)
  return out


def write_result(workdir, result, pred, groups):
  """predictions.npz, then ctr_eval.json (both atomic, process 0: the
  json last, since a complete ctr_eval.json marks a finished run), and a log
  summary of `result`."""
  result = files.json_safe(result)
  if jax.process_index() == 0:
    write_predictions(os.path.join(workdir, PREDICTIONS_FILE), pred, groups)
    files.write_json(os.path.join(workdir, EVAL_FILE), result)
  logging.info('%s step %d/%d: test auc %s gauc %s logloss %s (%d '
               'impressions)', result['variant'], result['step'],
               result['total_steps'], _fmt(result['auc']),
               _fmt(result['gauc']), _fmt(result['logloss']),
               result['num_test'])
  for name, s in result['slices'].items():
    logging.info('  %-8s %6d rows  auc %s  gauc %s', name, s['count'],
                 _fmt(s['auc']), _fmt(s['gauc']))
  return result


def _fmt(x):
  return 'nan' if x is None else f'{x:.4f}'
