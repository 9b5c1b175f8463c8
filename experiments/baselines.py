"""The ID baselines of a CTR sweep, chosen on the validation split.

A CTR claim is only as good as its baseline. Two things are chosen here,
both on the validation split (the last training day held out, seed 0),
never on the test day the tables report:
- the ID model's settings (`search_id`): an ID model with settings tuned on
  another dataset can train poorly on a new one, and a gain over it is a
  gain over a weak model. Coordinate ascent over config.id_search ({field
  of config.ctr: values to try}, e.g. dense and embedding learning rates,
  epochs, attention form, match features): from the config's own settings,
  each knob in turn is set to each of its other values and the best
  validation metric keeps its value, until config.id_search_budget runs are
  spent. Every variant of the sweep then trains on the chosen settings (the
  integration variants are the ID model plus a module). With several
  `num_epochs` values, only the most epochs train: the fewer are read off
  that run's validation metrics after each epoch (the same model, tested).
  The table of what was tried goes into ctr_table.json (`id_search`) and
  the report.
- the baseline of every claim (`select`): per metric, the stronger of the
  ID model and the ID-statistics LR (claims.py, the content curve).

`run` is ctr_sweep.run_one (one CTR run, skipped when finished).
"""

import os
import re

from absl import logging
import numpy as np

from mmrec import id_stats
from mmrec.data import manifest

# The ID baselines a multimodal gain is judged against; per metric, the
# stronger of those that ran on the validation split.
BASELINES = ('id', 'id_stats')
# <workdir>/VALIDATION_DIR/<baseline>/seed_0: the baselines' validation runs;
# <workdir>/VALIDATION_DIR/id_search/<setting>/id/seed_0: the ID search's.
VALIDATION_DIR = 'validation'


def _value(x):
  """A config value as a plain, comparable one (tuples for lists)."""
  return tuple(x) if isinstance(x, list) else x


def _label(settings):
  return ', '.join(f'{k}={v}' for k, v in settings.items()) or 'defaults'


def search(base, knobs, evaluate, budget, metric='gauc'):
  """Coordinate ascent over `knobs` from `base`, at most `budget` runs.

  Args:
    base: {knob: the config's own value} for every knob.
    knobs: {knob: values to try} (the base value is tried once, first).
    evaluate: settings dict -> the validation result (a dict with `metric`);
      called once per distinct setting.
    budget: the most runs, the base run included (>= 1).
    metric: the validation metric to maximise ('gauc' or 'auc').

  Returns:
    {'chosen': {knob: value}, 'metric', 'budget', 'runs': [{'settings',
    'value', 'label', 'chosen'}] in the order run, 'exhausted': bool (values
    left untried when the budget ran out)}.
  """
  if budget < 1:
    raise ValueError(f'config.id_search_budget must be >= 1, got {budget}')
  runs, seen = [], {}

  def score(settings):
    key = tuple(sorted((k, _value(v)) for k, v in settings.items()))
    if key not in seen:
      res = evaluate(dict(settings))
      value = res.get(metric)
      value = float(value) if value is not None and np.isfinite(value) else None
      seen[key] = value
      runs.append({'settings': dict(settings), 'value': value,
                   'label': _label({k: v for k, v in settings.items()
                                    if _value(v) != _value(base[k])})})
    return seen[key]

  best = dict(base)
  best_value = score(best)
  exhausted = False
  for knob, values in knobs.items():
    for v in values:
      if _value(v) == _value(best[knob]):
        continue
      if len(runs) >= budget:
        exhausted = True
        break
      trial = dict(best, **{knob: v})
      value = score(trial)
      if value is not None and (best_value is None or value > best_value):
        best, best_value = trial, value
    if exhausted:
      break
  for r in runs:
    r['chosen'] = r['settings'] == best
  return {'chosen': best, 'metric': metric, 'budget': budget, 'runs': runs,
          'exhausted': exhausted}


def search_markdown(record):
  """The selection table: every validation run, the chosen one in bold."""
  if not record:
    return ''
  m = record['metric'].upper()
  lines = [f'| ID settings (changed from the config) | validation {m} |',
           '|---|---|']
  for r in record['runs']:
    value = 'n/a' if r['value'] is None else f'{r["value"]:.4f}'
    mark = '**' if r['chosen'] else ''
    label = r['label'] + (f' ({r["read_off"]})' if r.get('read_off') else '')
    lines.append(f'| {mark}{label}{mark} | {mark}{value}{mark} |')
  trained = record.get('trained', len(record['runs']))
  lines += ['', f'{len(record["runs"])} settings tried of a budget of '
            f'{record["budget"]}, {trained} of them trained (seed 0, '
            f'coordinate ascent on {m})' +
            ('; the budget ran out before every value was tried.'
             if record['exhausted'] else '.')]
  return '\n'.join(lines)


def _slug(settings):
  """A directory name for one ID-search setting."""
  text = '_'.join(f'{k}-{v}' for k, v in sorted(settings.items()))
  return re.sub(r'[^A-Za-z0-9.=_-]', '', text) or 'defaults'


def search_id(config, data_dir, workdir, run):
  """The ID model's settings chosen on validation (`search` over
  config.id_search, at most config.id_search_budget runs, seed 0, in
  <workdir>/VALIDATION_DIR/id_search/); returns (record, the chosen
  setting's validation result), or (None, None) when config.id_search is
  empty or the dataset has no validation split."""
  knobs = {k: list(v) for k, v in (config.get('id_search') or {}).items()}
  # Epochs first: the base run's longer twin is then the epoch trial itself,
  # so reading the base off it costs nothing (below), and the other knobs
  # are tried at the chosen number of epochs.
  knobs = dict(sorted(knobs.items(), key=lambda kv: kv[0] != 'num_epochs'))
  if not knobs:
    return None, None
  m = manifest.load(data_dir)
  if not config.ctr.validation and m.validation_days < 1:
    logging.warning('ID search skipped: dataset %r declares no validation '
                    'split', m.name)
    return None, None
  for k in knobs:
    if k not in config.ctr:
      raise ValueError(f'config.id_search.{k}: not a field of config.ctr '
                       f'(the ID model\'s settings: {sorted(config.ctr)})')
  base = {k: config.ctr[k] for k in knobs}
  results, trained = {}, set()
  epochs = sorted({int(e) for e in knobs.get('num_epochs', ())} |
                  ({int(base['num_epochs'])} if 'num_epochs' in base else set()))
  longest = epochs[-1] if len(epochs) > 1 else None

  def changed(settings):  # a run's name: what differs from the base
    return _slug({k: x for k, x in settings.items() if x != base[k]})

  def train(settings):
    v = config.copy_and_resolve_references()
    v.ctr.update(settings)
    v.ctr.validation = True
    if longest:  # validation metrics after every epoch, nothing between
      v.ctr.update(eval_history=True, eval_points_in_first_epochs=())
    trained.add(changed(settings))
    return run(v, 'id', 0, data_dir, os.path.join(
        workdir, VALIDATION_DIR, 'id_search', changed(settings)))

  def evaluate(settings):
    twin = dict(settings, num_epochs=longest) if longest else None
    if (longest and int(settings['num_epochs']) < longest and
        (not results or changed(twin) in trained)):
      # Fewer epochs are read off the longest run's history, not trained
      # again: with constant learning rates, the step's rng from the step
      # and an epoch order that does not depend on the number of epochs,
      # its state after epoch e is the e-epoch run's final state
      # (baselines_test checks the metrics are equal). Only for the base
      # (its twin is the epoch trial) or a twin already trained: otherwise
      # the fewer epochs train as they are.
      long = train(twin)
      e = int(settings['num_epochs'])
      at = [h for h in long.get('history', [])
            if abs(h['epoch_fraction'] - e) < 1e-9]
      if not at:
        raise RuntimeError(f'the {longest}-epoch ID-search run has no '
                           f'validation metrics after epoch {e}')
      res = dict(at[0], read_off=f'epoch {e} of the {longest}-epoch run')
    else:
      res = train(settings)
    results[_slug(settings)] = res
    return res

  record = search(base, knobs, evaluate, config.get('id_search_budget', 1),
                  config.get('id_search_metric', 'gauc'))
  for r in record['runs']:
    if results[_slug(r['settings'])].get('read_off'):
      r['read_off'] = results[_slug(r['settings'])]['read_off']
  record['trained'] = len(trained)
  logging.info('ID search (validation %s): %s', record['metric'],
               record['chosen'])
  return record, results[_slug(record['chosen'])]


def select(config, variants, data_dir, workdir, results, run, known=None):
  """Per metric, the stronger of the BASELINES that ran, on validation.

  Each baseline (seed 0) trains without the last training day(s) and is
  scored on them (config.ctr.validation; a sweep that already evaluates on
  validation reads its own runs), in <workdir>/VALIDATION_DIR/ (`known`:
  {baseline: a validation result already run, e.g. the ID search's chosen
  run}). Without a second baseline or a validation split it falls back to
  'id', and says why.

  Returns:
    {'auc'|'gauc': {'variant', 'split' ('validation' or None), 'values':
    {baseline: validation metric}}, 'why': None or the reason for the
    fallback}.
  """
  bases = [b for b in BASELINES if b in variants]
  m = manifest.load(data_dir)
  why = None
  if 'id' not in bases:
    return None
  if len(bases) < 2:
    why = 'id_stats did not run: judged against id'
  elif not config.ctr.validation and m.validation_days < 1:
    why = (f'dataset {m.name!r} declares no validation split (manifest '
           'validation_days = 0): judged against id')
  elif not config.ctr.validation and id_stats.unmet_need(m, True):
    why = (f'id_stats cannot run on the validation split '
           f'({id_stats.unmet_need(m, True)}): judged against id')
  if why:
    logging.warning('CTR baseline: %s', why)
    return {**{x: {'variant': 'id', 'split': None, 'values': {}}
               for x in ('auc', 'gauc')}, 'why': why}
  if config.ctr.validation:  # the sweep's own runs are on validation
    runs = {b: results[b][0] for b in bases}
  else:
    v = config.copy_and_resolve_references()
    v.ctr.validation = True
    runs = {b: (known or {}).get(b) or run(
        v, b, 0, data_dir, os.path.join(workdir, VALIDATION_DIR))
            for b in bases}
  out = {'why': None}
  for x in ('auc', 'gauc'):
    values = {b: runs[b].get(x) for b in bases}
    scored = [(values[b], -i, b) for i, b in enumerate(bases)
              if values[b] is not None and np.isfinite(values[b])]
    out[x] = {'variant': max(scored)[2] if scored else 'id',
              'split': 'validation', 'values': values}
  logging.info('CTR baseline (validation, seed 0): AUC %s, GAUC %s',
               out['auc']['variant'], out['gauc']['variant'])
  return out


def text(baseline):
  """Which ID baseline the claims are judged against, and why, in words
  (`baseline`: `select`'s record, or None)."""
  if not baseline:
    return 'Claims: no ID model ran, so no baseline.'
  if baseline.get('why'):
    return f'Claims are judged against id: {baseline["why"]}.'
  parts = []
  for m in ('auc', 'gauc'):
    b = baseline[m]
    vals = ', '.join(f'{k} {v:.4f}' for k, v in b['values'].items()
                     if v is not None)
    parts.append(f'{m.upper()} against **{b["variant"]}** (validation '
                 f'{m.upper()}: {vals})')
  return ('Claims are judged against the stronger ID baseline on the '
          'validation split (the last training day held out, seed 0): ' +
          '; '.join(parts) + '.')
