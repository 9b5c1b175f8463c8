"""The ID-statistics baseline, as the CTR variant 'id_stats'.

The floor every CTR table shows (world.md: "a competent ID model"): a
logistic regression on six ID-level features, no content, no embeddings
(mmrec/data/id_features.py defines them and the no-leakage protocol).
`run(config, workdir)` fits it and writes the same `ctr_eval.json` and
`predictions.npz` as the neural variants (step = total_steps = 0: nothing
is trained by steps).
"""

import os

from absl import logging

from mmrec import ctr_data
from mmrec import ctr_eval
from mmrec.data import builders
from mmrec.data import ctr_rows
from mmrec.data import id_features
from mmrec.data import manifest
from mmrec.data import resolver


def unmet_need(m, validation=False):
  """Why id_stats cannot run on the dataset of manifest `m`, or None.

  It fits on the training days before the evaluated split, so it needs one.
  """
  first = m.first_validation_day if validation else m.first_test_day
  if first >= 1:
    return None
  return (f'dataset {m.name!r} has no training day before its '
          f'{"validation" if validation else "test"} split: id_stats fits on '
          'the training days')


def run(config, workdir):
  """The CTR variant 'id_stats': fit, score the test split (with
  `config.validation`: the dataset's validation day(s), fit on the days
  before them), ctr_eval.json."""
  os.makedirs(workdir, exist_ok=True)
  data_dir = resolver.data_dir(config.data_dir, config.world, workdir)
  m = manifest.load(data_dir)
  need = unmet_need(m, config.get('validation'))
  if need:
    raise manifest.DatasetError(need)
  sizes = ctr_data.embedding_sizes(m)
  first_test_day = m.first_test_day
  items = id_features.category_tables(
      builders.load_table(data_dir, 'mmrec_items', 'catalogue'),
      m.ctr.get('category_fields', ()), m.num_items,
      m.ctr.get('category_bag'))
  train = builders.load_table(data_dir, 'mmrec_impressions', 'train')
  test = builders.load_table(data_dir, 'mmrec_impressions', 'test')
  split = 'test'
  if config.get('validation'):  # the validation day(s) play the test day
    if not m.validation_days:
      raise ValueError(f'{data_dir}: the dataset declares no validation split '
                       '(manifest validation_days = 0)')
    split, first_test_day = 'validation', m.first_validation_day
    test = id_features.take(train, train['day'] >= first_test_day)
    train = id_features.take(train, train['day'] < first_test_day)
  (x_fit, y_fit), x_test = id_features.fit_and_test_features(
      train, test, items, sizes['num_items'], sizes['num_users'])
  model = id_features.fit(x_fit, y_fit, seed=config.seed)
  small = id_features.fit_set_warning(train)
  if small:
    logging.warning('%s: %s', data_dir, small)
  logging.info('id_stats: fit on days 0-%d (%d rows, %d-fold statistics), '
               'coefficients %s', first_test_day - 1, len(y_fit),
               id_features.FOLDS, model.coefficients())
  pred = {'logit': model.logit(x_test), 'label': test['label'],
          'user_id': test['user_id'], 'user_key': ctr_rows.user_key(test),
          'item_id': test['item_id']}
  groups = ctr_eval.exposure_groups(pred, data_dir,
                                    train_ids=train['item_id'])
  result = {'variant': config.variant, 'seed': config.seed,
            'data_dir': data_dir, 'split': split, 'step': 0,
            'total_steps': 0, 'complete': True, 'epoch_fraction': 0.0,
            'num_test': int(len(pred['label'])),
            **ctr_eval.ctr_metrics(pred),
            'slices': ctr_eval.slice_metrics(pred, groups),
            'fit_days': [0, first_test_day - 1], 'num_fit': int(len(y_fit)),
            'fit_users': int(len(set(train['user_id'].tolist()))),
            'folds': id_features.FOLDS, 'fit_warning': small,
            'prior_impressions': id_features.PRIOR_IMPRESSIONS,
            'coefficients': model.coefficients()}
  return ctr_eval.write_result(workdir, result, pred, groups)
