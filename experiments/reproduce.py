"""The paper end to end: world -> pre-training -> CTR variants -> a report.

`run(config, workdir)` with experiments/configs/paper.py. Stages, each in
`<workdir>/<stage>-<hash>/` where the hash covers the config subtree that
produced the stage and the hashes of the stages it reads:
  world     the marketplace (mmrec.data.build)
  pretrain  pretrain_sweep: methods x seeds -> pretrain_table.json
  ctr       ctr_sweep over the seed-0 vectors of config.vectors_method
  extra     seed 0: the multi-epoch ID run (one-epoch curve) and a 'make' run
            per stage-A epoch count (curves.json)
  world_cw<c>, ctr_cw<c>  the content-knob curve: for each
            config.content_curve.weights value c other than the world's own,
            the same world with `content_weight` = c and a CTR sweep of
            content_curve.variants over the same item vectors (items,
            images, titles and the search log do not depend on the knob,
            only the clicks do), summarised with the main sweep's point in
            content_curve.json
  report    results.json, report.md and PNG plots in the workdir
A stage whose `stage.json` marker exists is skipped (an interrupted sweep
resumes run by run). `progress.json` lists what this invocation ran or skipped.

results.json has exactly five top-level keys: world (statistics, honesty
table, oracle ceiling), pretraining ({method: {image|text|image_new|text_new:
{accuracy@1|recall@10: {mean, std, runs}} or null}}), ctr ({variant: {auc,
gauc, logloss, delta_*_pct: {mean, std, runs}, slices: {...}}}),
content_curve (a list by content_weight of {variants: {auc, gauc},
gain_{auc,gauc}_pct, best_id_{auc,gauc}}: see `curve_point`) and claims
(a list of {id, claim, metric, measured, paper, criterion, reproduced,
testable}). Non-finite numbers are written as null.
"""

import hashlib
import json
import os
import time

from absl import logging
import ml_collections
import numpy as np

from experiments import ctr_sweep
from experiments import pretrain_sweep
from experiments import report
from mmrec import files
from mmrec import vector_table
from mmrec.data import build

MARKER = 'stage.json'
PROGRESS_FILE = 'progress.json'
RESULTS_FILE = 'results.json'
REPORT_MARKER = 'report_stage.json'
CURVES_FILE = 'curves.json'
CONTENT_CURVE_FILE = 'content_curve.json'
# Set by the pipeline (paths) or shared (the world): not part of a stage key.
_UNHASHED = frozenset({'world', 'data_dir', 'vectors_path', 'job'})


def _plain(tree):
  """A config (sub)tree as plain JSON-able data, pipeline-set keys dropped."""
  if isinstance(tree, ml_collections.ConfigDict):
    tree = tree.to_dict()
  if isinstance(tree, dict):
    return {k: _plain(v) for k, v in tree.items() if k not in _UNHASHED}
  if isinstance(tree, (list, tuple)):
    return [_plain(v) for v in tree]
  return tree


def config_hash(*parts):
  blob = json.dumps([_plain(p) for p in parts], sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:10]


def _read_json(path):
  with open(path) as f:
    return json.load(f)


class _Pipeline:
  """Runs or skips stages; records what happened in progress.json."""

  def __init__(self, workdir):
    self.workdir, self.t0 = workdir, time.time()
    self.progress = {'stages': {}, 'wall_seconds': None}

  def stage(self, name, h, config, fn):
    """`fn(stage_dir)` unless the stage's marker exists; returns the dir."""
    path = os.path.join(self.workdir, f'{name}-{h}')
    marker = os.path.join(path, MARKER)
    if os.path.exists(marker):
      seconds = _read_json(marker)['seconds']
      logging.info('stage %s: finished before in %s (%.0fs of compute); '
                   'skipping', name, path, seconds)
      self.record(name, 'skipped', path, h, seconds)
      return path
    logging.info('stage %s: running in %s', name, path)
    t0 = time.time()
    os.makedirs(path, exist_ok=True)
    fn(path)
    seconds = time.time() - t0
    files.write_json(marker, {'stage': name, 'hash': h, 'seconds': seconds,
                              'config': _plain(config)})
    logging.info('stage %s: done in %.1fs (%.0fs since start)', name, seconds,
                 time.time() - self.t0)
    self.record(name, 'ran', path, h, seconds)
    return path

  def record(self, name, status, path, h, seconds):
    self.progress['stages'][name] = {'status': status, 'dir': path, 'hash': h,
                                     'seconds': seconds}
    files.write_json(os.path.join(self.workdir, PROGRESS_FILE), self.progress)

  def finish(self):
    self.progress['wall_seconds'] = time.time() - self.t0
    files.write_json(os.path.join(self.workdir, PROGRESS_FILE), self.progress)
    return self.progress['wall_seconds']


def _validate(config):
  methods = [m for m in config.pretrain.methods.split(',') if m]
  variants = [v for v in config.ctr.variants.split(',') if v]
  if config.vectors_method not in methods:
    raise ValueError(f'config.vectors_method = {config.vectors_method!r} is '
                     f'not in config.pretrain.methods ({methods})')
  if 'id' not in variants:
    raise ValueError("config.ctr.variants must include 'id': every delta is "
                     'relative to the ID model')
  if config.pretrain.seeds < 1 or config.ctr.seeds < 1:
    raise ValueError('config.pretrain.seeds and config.ctr.seeds must be >= 1')
  return methods, variants


def _sub(tree, **fields):
  """A resolved, editable copy of a config subtree with fields set."""
  c = tree.copy_and_resolve_references()
  c.unlock()
  for k, v in fields.items():
    setattr(c, k, v)
  return c


def _extra(config, variants, world_dir, ctr_cfg, ctr_dir, path):
  """Seed 0: multi-epoch ID curve and final GAUC per MAKE stage-A epochs."""
  one = _sub(ctr_cfg)
  one.ctr.num_epochs = config.one_epoch.num_epochs
  res = ctr_sweep.run_one(one, 'id', 0, world_dir,
                          os.path.join(path, 'one_epoch'))
  curves = {'one_epoch': {'num_epochs': config.one_epoch.num_epochs,
                          'history': res.get('history', [])},
            'make_epochs': []}
  sweep_e = ctr_cfg.ctr.make.stage_a_epochs
  for e in config.make_epochs:
    if e == sweep_e and 'make' in variants:
      res = _read_json(os.path.join(ctr_dir, 'make', 'seed_0',
                                    'ctr_eval.json'))
    else:
      c = _sub(ctr_cfg)
      c.ctr.make.stage_a_epochs = e
      res = ctr_sweep.run_one(c, 'make', 0, world_dir,
                              os.path.join(path, f'make_e{e}'))
    curves['make_epochs'].append({
        'stage_a_epochs': e, 'auc': res['auc'], 'gauc': res['gauc'],
        'logloss': res['logloss'],
        'stage_a_history': res.get('stage_a_history', [])})
  files.write_json(os.path.join(path, CURVES_FILE), files.json_safe(curves))


def curve_point(content_weight, summary):
  """The multimodal gain at one knob value: SimTier + MAKE over the best ID
  baseline (the ID model or the ID-statistics LR, whichever is higher on
  the metric), relative %, from a ctr_sweep summary."""
  v = summary['variants']
  point = {'content_weight': content_weight,
           'variants': {k: {m: _mean(row.get(m)) for m in ('auc', 'gauc')}
                        for k, row in v.items()}}
  for m in ('auc', 'gauc'):
    base = [(_mean(v[k].get(m)), k) for k in ('id', 'id_stats') if k in v]
    base = [b for b in base if b[0] is not None]
    mm = _mean((v.get('simtier_make') or {}).get(m))
    if base and mm is not None:
      ref, name = max(base)
      point[f'best_id_{m}'] = name
      point[f'gain_{m}_pct'] = 100.0 * (mm - ref) / ref
  return point


def _content_curve(config, pipe, vec_h, vectors, ctr_dir):
  """The content-knob curve's stages; returns (hash, sorted points)."""
  own = config.world.content_weight
  points = [curve_point(own, _read_json(
      os.path.join(ctr_dir, f'{ctr_sweep.TABLE_FILE}.json')))]
  hashes = []
  for w in config.content_curve.weights:
    if w == own:
      continue
    world = _sub(config.world, content_weight=float(w))
    wh = config_hash(world)
    wdir = pipe.stage(
        f'world_cw{w:g}', wh, world,
        lambda p, world=world: build.run(
            ml_collections.ConfigDict({'world': world}), p))
    cfg = _sub(config.ctr, data_dir=wdir, vectors_path=vectors,
               variants=config.content_curve.variants,
               seeds=config.content_curve.seeds)
    h = config_hash(vec_h, wh, config.ctr, config.content_curve)
    cdir = pipe.stage(f'ctr_cw{w:g}', h, config.content_curve,
                      lambda p, cfg=cfg: ctr_sweep.run(cfg, p))
    hashes.append(h)
    points.append(curve_point(float(w), _read_json(
        os.path.join(cdir, f'{ctr_sweep.TABLE_FILE}.json'))))
  points.sort(key=lambda p: p['content_weight'])
  return config_hash(*hashes), points


def run(config, workdir):
  """The whole pipeline; returns the results dict (as in results.json)."""
  methods, variants = _validate(config)
  pipe = _Pipeline(workdir)

  world_h = config_hash(config.world)
  world_dir = pipe.stage(
      'world', world_h, config.world,
      lambda p: build.run(ml_collections.ConfigDict({'world': config.world}),
                          p))

  pre_cfg = _sub(config.pretrain, data_dir=world_dir)
  pre_h = config_hash(world_h, config.pretrain)
  pre_dir = pipe.stage('pretrain', pre_h, config.pretrain,
                       lambda p: pretrain_sweep.run(pre_cfg, p))

  # The CTR stages read one method's seed-0 vectors: key them on the config
  # that trained those, not on the whole sweep (other methods don't matter).
  sources = [config.vectors_method] + (
      ['clip_o'] if config.vectors_method == 'clip_e' else [])  # its init
  vec_h = config_hash(world_h, *[pretrain_sweep.method_config(
      config.pretrain, m, 0, '', '') for m in sources])
  vectors = os.path.join(pre_dir, config.vectors_method, 'seed_0',
                         vector_table.FILE)
  ctr_cfg = _sub(config.ctr, data_dir=world_dir, vectors_path=vectors)
  ctr_h = config_hash(vec_h, config.ctr)
  ctr_dir = pipe.stage('ctr', ctr_h, config.ctr,
                       lambda p: ctr_sweep.run(ctr_cfg, p))

  extra_cfg = {'ctr': config.ctr, 'one_epoch': config.one_epoch,
               'make_epochs': config.make_epochs}
  extra_h = config_hash(ctr_h, extra_cfg)
  extra_dir = pipe.stage(
      'extra', extra_h, extra_cfg,
      lambda p: _extra(config, variants, world_dir, ctr_cfg, ctr_dir, p))

  curve_h, curve = _content_curve(config, pipe, vec_h, vectors, ctr_dir)

  report_h = config_hash(world_h, pre_h, ctr_h, extra_h, curve_h,
                         config.report, config.vectors_method)
  marker = os.path.join(workdir, REPORT_MARKER)
  results_path = os.path.join(workdir, RESULTS_FILE)
  if (os.path.exists(marker) and _read_json(marker)['hash'] == report_h and
      os.path.exists(results_path)):
    logging.info('stage report: finished before for this config; skipping')
    pipe.record('report', 'skipped', workdir, report_h,
                _read_json(marker)['seconds'])
    results = _read_json(results_path)
  else:
    logging.info('stage report: writing results.json, report.md and plots')
    t0 = time.time()
    results = build_results(
        _read_json(os.path.join(world_dir, build.SUMMARY_FILE)),
        _read_json(os.path.join(pre_dir,
                                f'{pretrain_sweep.TABLE_FILE}.json')),
        _read_json(os.path.join(ctr_dir, f'{ctr_sweep.TABLE_FILE}.json')),
        methods, variants, curve)
    files.write_json(results_path, results, allow_nan=False)
    curves = _read_json(os.path.join(extra_dir, CURVES_FILE))
    report.write(workdir, config, results, curves, pipe.progress,
                 pretrain_dir=pre_dir, ctr_dir=ctr_dir,
                 elapsed=time.time() - pipe.t0)
    seconds = time.time() - t0
    files.write_json(marker, {'hash': report_h, 'seconds': seconds})
    pipe.record('report', 'ran', workdir, report_h, seconds)
    logging.info('stage report: done in %.1fs', seconds)
  wall = pipe.finish()
  logging.info('reproduce: finished in %.1fs wall time (%s) -> %s', wall,
               ', '.join(f'{k} {v["status"]}'
                         for k, v in pipe.progress['stages'].items()),
               os.path.join(workdir, report.REPORT_FILE))
  return results


# --------------------------------------------------------------------------
# results.json


def build_results(world_summary, pretrain_table, ctr_summary, methods,
                  variants, content_curve=()):
  world = {'statistics': world_summary['statistics'],
           'honesty_auc': world_summary['honesty_auc'],
           'honesty_ok': not world_summary['honesty_problems'],
           'honesty_problems': world_summary['honesty_problems'],
           'oracle_ceiling': ctr_summary.get('oracle')}
  pretraining = {m: pretrain_table.get(m) for m in methods}
  ctr = {v: ctr_summary['variants'].get(v) for v in variants}
  return files.json_safe({'world': world, 'pretraining': pretraining,
                          'ctr': ctr, 'content_curve': list(content_curve),
                          'claims': claims(pretraining, ctr)})


def _mean(cell):
  return None if not cell else cell.get('mean')


def _accuracy(pretraining, method):
  """accuracy@1 averaged over the image and text queries a method has."""
  row = pretraining.get(method) or {}
  vals = [_mean(row[s]['accuracy@1']) for s in ('image', 'text') if row.get(s)]
  vals = [v for v in vals if v is not None]
  return float(np.mean(vals)) if vals else None


def _ordered(*values):
  """True iff every value is known and strictly decreasing."""
  return all(v is not None for v in values) and all(
      a > b for a, b in zip(values, values[1:]))


def _claim(cid, claim, metric, measured, reproduced, criterion, paper=None,
           testable=True):
  return {'id': cid, 'claim': claim, 'metric': metric, 'measured': measured,
          'paper': paper, 'criterion': criterion,
          'reproduced': bool(reproduced), 'testable': testable}


def claims(pretraining, ctr):
  """Each claim of paper.md ("Reported result", and SCL's), checked."""
  acc = {m: _accuracy(pretraining, m) for m in (
      'scl', 'clip_e', 'clip_o', 'scl_no_queue', 'scl_no_hard_neg')}
  metric_acc = 'pre-training accuracy@1 (mean of image and text queries)'
  gauc = {v: _mean((ctr.get(v) or {}).get('gauc')) for v in (
      'simtier_paper', 'simtier_official', 'make', 'vector', 'simscore')}
  sm = ctr.get('simtier_make') or {}
  d_gauc = _mean(sm.get('delta_gauc_pct'))
  d_auc = _mean(sm.get('delta_auc_pct'))
  sl = sm.get('slices') or {}
  groups = sorted((k for k in sl if k.startswith('group_')),
                  key=lambda k: int(k.split('_')[1]))
  slice_delta = lambda k, m='gauc': _mean((sl.get(k) or {}).get(
      f'delta_{m}_pct')) if k else None
  tail, head = (groups[0], groups[-1]) if groups else (None, None)
  by_slice = {'all': d_gauc, 'tail': slice_delta(tail),
              'head': slice_delta(head), 'new': slice_delta('new'),
              # AUC too: per-user groups inside a slice are small, so slice
              # GAUC skips many users (on tiny worlds it can be degenerate).
              'all_auc': d_auc, 'tail_auc': slice_delta(tail, 'auc'),
              'head_auc': slice_delta(head, 'auc'),
              'new_auc': slice_delta('new', 'auc')}
  better = [gauc[v] for v in ('simtier_paper', 'simtier_official', 'make')]
  worse = [gauc[v] for v in ('vector', 'simscore')]
  known = all(v is not None for v in better + worse)
  half = 'positive and at least half the paper\'s gain'
  return [
      _claim('scl_over_clip_e_over_clip_o', 'SCL > CLIP-E > CLIP-O '
             '(pre-training accuracy)', metric_acc,
             {k: acc[k] for k in ('scl', 'clip_e', 'clip_o')},
             _ordered(acc['scl'], acc['clip_e'], acc['clip_o']),
             'scl > clip_e > clip_o'),
      _claim('queue_adds', 'the queue adds', metric_acc,
             {k: acc[k] for k in ('scl', 'scl_no_queue')},
             _ordered(acc['scl'], acc['scl_no_queue']), 'scl > scl_no_queue'),
      _claim('hard_negatives_add', 'hard negatives add', metric_acc,
             {k: acc[k] for k in ('scl', 'scl_no_hard_neg')},
             _ordered(acc['scl'], acc['scl_no_hard_neg']),
             'scl > scl_no_hard_neg'),
      _claim('simtier_and_make_beat_vector_and_simscore',
             'SimTier and MAKE each beat Vector and SimScore', 'test GAUC',
             gauc, known and min(better) > max(worse),
             'min(simtier_paper, simtier_official, make) > '
             'max(vector, simscore)'),
      _claim('simtier_make_gauc_gain', 'SimTier + MAKE over ID: GAUC +1.25%',
             'GAUC delta vs. ID, %', {'delta_gauc_pct': d_gauc},
             d_gauc is not None and d_gauc >= 1.25 / 2, half, paper=1.25),
      _claim('simtier_make_auc_gain', 'SimTier + MAKE over ID: AUC +0.75%',
             'AUC delta vs. ID, %', {'delta_auc_pct': d_auc},
             d_auc is not None and d_auc >= 0.75 / 2, half, paper=0.75),
      _claim('gains_largest_on_long_tail_and_new_items',
             'gains largest on long-tail and new items',
             'SimTier + MAKE GAUC (and AUC) delta vs. ID by slice, %',
             by_slice, _ordered(by_slice['tail'], by_slice['head']) and
             _ordered(by_slice['new'], d_gauc),
             f'GAUC deltas: tail ({tail}) > head ({head}) and new > all'),
      _claim('online_gains', 'Online: CTR +3.5%, RPM +1.5%, ROI +2.9%; ads '
             'created within 24 h: CTR +6.9%, RPM +3.7%, ROI +7.7%',
             'online A/B test', None, False,
             'not measurable offline', testable=False),
  ]
