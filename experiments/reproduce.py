"""The paper end to end: world -> pre-training -> CTR variants -> a report.

`run(config, workdir)` with experiments/configs/paper.py. Stages, each in
`<workdir>/<stage>-<hash>/` where the hash covers the config subtree that
produced the stage and the hashes of the stages it reads:
  world     the marketplace (mmrec.data.build)
  pretrain  pretrain_sweep: methods x seeds -> pretrain_table.json and
            pretrain_comparisons.json (intervals of the claimed orderings)
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
(a list of {id, claim, metric, measured, paper, criterion, interval,
ratio_to_paper, verdict, statement, reproduced, testable}: see claims()).
Non-finite numbers are written as null.
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
from mmrec import bootstrap
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
  the metric), relative %, from a ctr_sweep summary, with the paired
  bootstrap's 95% interval where the sweep has it."""
  v = summary['variants']
  point = {'content_weight': content_weight,
           'variants': {k: {m: _mean(row.get(m)) for m in ('auc', 'gauc')}
                        for k, row in v.items()}}
  boot = (v.get('simtier_make') or {}).get('bootstrap') or {}
  for m in ('auc', 'gauc'):
    base = [(_mean(v[k].get(m)), k) for k in ('id', 'id_stats') if k in v]
    base = [b for b in base if b[0] is not None]
    mm = _mean((v.get('simtier_make') or {}).get(m))
    if base and mm is not None:
      ref, name = max(base)
      point[f'best_id_{m}'] = name
      point[f'gain_{m}_pct'] = 100.0 * (mm - ref) / ref
      cell = ((boot.get(f'vs_{name}') or {}).get('all') or {}).get(m) or {}
      point[f'gain_{m}_ci_pct'] = cell.get('ci_pct')
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
    comparisons = os.path.join(pre_dir, pretrain_sweep.COMPARISONS_FILE)
    results = build_results(
        _read_json(os.path.join(world_dir, build.SUMMARY_FILE)),
        _read_json(os.path.join(pre_dir,
                                f'{pretrain_sweep.TABLE_FILE}.json')),
        _read_json(os.path.join(ctr_dir, f'{ctr_sweep.TABLE_FILE}.json')),
        methods, variants, curve,
        _read_json(comparisons) if os.path.exists(comparisons) else None)
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
                  variants, content_curve=(), pretrain_comparisons=None):
  world = {'statistics': world_summary['statistics'],
           'honesty_auc': world_summary['honesty_auc'],
           'honesty_ok': not world_summary['honesty_problems'],
           'honesty_problems': world_summary['honesty_problems'],
           'oracle_ceiling': ctr_summary.get('oracle')}
  pretraining = {m: pretrain_table.get(m) for m in methods}
  ctr = {v: ctr_summary['variants'].get(v) for v in variants}
  return files.json_safe({'world': world, 'pretraining': pretraining,
                          'ctr': ctr, 'content_curve': list(content_curve),
                          'claims': claims(pretraining, ctr,
                                           pretrain_comparisons)})


def _mean(cell):
  return None if not cell else cell.get('mean')


# Claim verdicts (each claim record's 'verdict'; 'reproduced' is the boolean
# verdict == REPRODUCED).
REPRODUCED = 'reproduced'
DIRECTION_ONLY = 'direction only'
NOT_REPRODUCED = 'not reproduced'
INSUFFICIENT = 'insufficient data'
NOT_TESTABLE = 'not testable'
VERDICTS = (REPRODUCED, DIRECTION_ONLY, NOT_REPRODUCED, INSUFFICIENT,
            NOT_TESTABLE)
# A measured gain "reproduces" the paper's number only within this factor of
# it; outside, a significant effect in the right direction is 'direction
# only' (our synthetic world sets the size, not Taobao's traffic).
RATIO_RANGE = (0.5, 2.0)
PAPER_GAUC_GAIN = 1.25  # % SimTier + MAKE over ID (paper.md)
PAPER_AUC_GAIN = 0.75


def _excludes_zero(ci, direction=1):
  """True iff the interval lies strictly on the `direction` side of 0."""
  lo, hi = ci
  return lo > 0 if direction > 0 else hi < 0


def _pct(x):
  return f'{x:+.2f}%'


def _ci_text(ci):
  return f'[{ci[0]:+.2f}, {ci[1]:+.2f}]'


def gain_verdict(cell, paper):
  """(verdict, ratio, statement) of a measured relative gain vs. the paper's.

  `cell`: a bootstrap.difference metric cell (delta_pct, ci_pct) or None
  (no bootstrap, or an insufficient slice: ci_pct None).
  """
  if not cell or cell.get('ci_pct') is None:
    return INSUFFICIENT, None, (
        f'{INSUFFICIENT}: no 95% interval (fewer than '
        f'{bootstrap.MIN_USERS} test users with both classes, or no '
        'predictions to bootstrap)')
  d, ci = cell['delta_pct'], cell['ci_pct']
  ratio = d / paper
  size = (f'{_pct(d)} {_ci_text(ci)} is {ratio:.1f}x the paper\'s '
          f'{_pct(paper)}')
  if not _excludes_zero(ci, np.sign(paper)):
    return NOT_REPRODUCED, ratio, (
        f'{NOT_REPRODUCED}: {size}; the 95% interval does not exclude 0 in '
        'the paper\'s direction')
  if RATIO_RANGE[0] <= ratio <= RATIO_RANGE[1]:
    return REPRODUCED, ratio, f'{REPRODUCED}: {size}'
  return DIRECTION_ONLY, ratio, f'{DIRECTION_ONLY}: {size}'


def all_verdict(parts):
  """One verdict of a conjunction of interval tests.

  `parts`: {name: (ci or None, statement part)}; a part holds when its
  interval excludes 0 upwards. Any part that can be tested and fails makes
  the claim 'not reproduced'; otherwise any untestable part (no interval)
  makes it 'insufficient data'.
  """
  failed = [k for k, (ci, _) in parts.items()
            if ci is not None and not _excludes_zero(ci)]
  missing = [k for k, (ci, _) in parts.items() if ci is None]
  verdict = (NOT_REPRODUCED if failed else INSUFFICIENT if missing else
             REPRODUCED)
  return verdict, f'{verdict}: ' + '; '.join(t for _, t in parts.values())


def _part(name, cell, unit='%'):
  """(ci, text) of one interval test from a bootstrap cell: its relative
  delta (unit '%', or ' pp' for a difference of relative deltas) or its
  absolute one (unit '')."""
  if not cell:
    return None, f'{name} n/a ({INSUFFICIENT})'
  key, d = ('ci', cell['delta']) if not unit else ('ci_pct',
                                                   cell['delta_pct'])
  digits = 2 if unit else 4
  if cell.get(key) is None:
    return None, f'{name} {d:+.{digits}f}{unit} ({INSUFFICIENT})'
  lo, hi = cell[key]
  return cell[key], (f'{name} {d:+.{digits}f}{unit} '
                     f'[{lo:+.{digits}f}, {hi:+.{digits}f}]')


def _accuracy(pretraining, method):
  """accuracy@1 averaged over the image and text queries a method has."""
  row = pretraining.get(method) or {}
  vals = [_mean(row[s]['accuracy@1']) for s in ('image', 'text') if row.get(s)]
  vals = [v for v in vals if v is not None]
  return float(np.mean(vals)) if vals else None


def _claim(cid, claim, metric, measured, verdict, statement, criterion,
           paper=None, interval=None, ratio=None):
  return {'id': cid, 'claim': claim, 'metric': metric, 'measured': measured,
          'paper': paper, 'criterion': criterion, 'interval': interval,
          'ratio_to_paper': ratio, 'verdict': verdict,
          'statement': statement, 'reproduced': verdict == REPRODUCED,
          'testable': verdict != NOT_TESTABLE}


def _boot(ctr, variant, ref='id'):
  return ((ctr.get(variant) or {}).get('bootstrap') or {}).get(f'vs_{ref}',
                                                               {})


def _pretrain_claim(cid, claim, pairs, acc, comparisons, metric):
  """An ordering of pre-training methods, each step an interval test.

  `pairs`: [(better, worse)]; `comparisons`: {'better-worse': a difference
  cell of accuracy@1 over bootstrapped held-out queries} (see
  pretrain_sweep.comparisons), or None.
  """
  parts = {}
  for b, w in pairs:
    cell = (comparisons or {}).get(f'{b}-{w}')
    parts[f'{b} - {w}'] = _part(f'{b} - {w}', cell, unit='')
  verdict, statement = all_verdict(parts)
  return _claim(cid, claim, metric,
                {m: acc[m] for m in dict.fromkeys(x for p in pairs
                                                  for x in p)},
                verdict, statement,
                ' and '.join(f'{b} > {w}' for b, w in pairs) +
                ': each 95% interval of the difference (bootstrap over '
                'held-out queries) excludes 0',
                interval={k: ci for k, (ci, _) in parts.items()})


def claims(pretraining, ctr, pretrain_comparisons=None):
  """Each claim of paper.md ("Reported result", and SCL's), checked.

  CTR claims read the bootstrap intervals of ctr_table (ctr_sweep.intervals);
  pre-training claims `pretrain_comparisons` (pretrain_sweep.comparisons).
  Every record has a 'verdict' (VERDICTS), the 95% 'interval'(s) it rests
  on, 'ratio_to_paper' where the paper gives a number, and 'statement': the
  sentence the report and the README quote.
  """
  acc = {m: _accuracy(pretraining, m) for m in (
      'scl', 'clip_e', 'clip_o', 'scl_no_queue', 'scl_no_hard_neg')}
  metric_acc = 'pre-training accuracy@1 (mean of image and text queries)'
  out = [
      _pretrain_claim('scl_over_clip_e_over_clip_o',
                      'SCL > CLIP-E > CLIP-O (pre-training accuracy)',
                      [('scl', 'clip_e'), ('clip_e', 'clip_o')], acc,
                      pretrain_comparisons, metric_acc),
      _pretrain_claim('queue_adds', 'the queue adds',
                      [('scl', 'scl_no_queue')], acc, pretrain_comparisons,
                      metric_acc),
      _pretrain_claim('hard_negatives_add', 'hard negatives add',
                      [('scl', 'scl_no_hard_neg')], acc,
                      pretrain_comparisons, metric_acc)]

  # Pairwise: each of SimTier (both variants) and MAKE beats each of Vector
  # and SimScore (GAUC, relative to the weaker).
  gauc = {v: _mean((ctr.get(v) or {}).get('gauc')) for v in (
      'simtier_paper', 'simtier_official', 'make', 'vector', 'simscore')}
  parts = {f'{b} - {w}': _part(f'{b} - {w}',
                               (_boot(ctr, b, w).get('all') or {}).get('gauc'),
                               unit='%')
           for b in ('simtier_paper', 'simtier_official', 'make')
           for w in ('vector', 'simscore')}
  verdict, statement = all_verdict(parts)
  out.append(_claim(
      'simtier_and_make_beat_vector_and_simscore',
      'SimTier and MAKE each beat Vector and SimScore',
      'test GAUC; differences in % of the weaker', gauc, verdict, statement,
      'each of simtier_paper, simtier_official, make minus each of vector, '
      'simscore: the 95% interval of the GAUC difference excludes 0',
      interval={k: ci for k, (ci, _) in parts.items()}))

  vs_id = _boot(ctr, 'simtier_make')
  sm = ctr.get('simtier_make') or {}
  for m, paper in (('gauc', PAPER_GAUC_GAIN), ('auc', PAPER_AUC_GAIN)):
    cell = (vs_id.get('all') or {}).get(m)
    verdict, ratio, statement = gain_verdict(cell, paper)
    out.append(_claim(
        f'simtier_make_{m}_gain',
        f'SimTier + MAKE over ID: {m.upper()} {_pct(paper)}',
        f'{m.upper()} delta vs. ID, % (seeds combined)',
        {f'delta_{m}_pct': _mean(sm.get(f'delta_{m}_pct'))}, verdict,
        statement, '95% interval (paired user bootstrap) excludes 0 upwards '
        f'and {RATIO_RANGE[0]}x <= delta / paper <= {RATIO_RANGE[1]}x; '
        'outside that range: direction only', paper=paper,
        interval=(cell or {}).get('ci_pct'), ratio=ratio))

  # Largest on the long tail and on new items: each slice's GAUC delta
  # minus the overall one, an interval excluding 0 upwards (never tail vs.
  # head: the head group can be degenerate).
  parts = {}
  measured = {'all': _mean(sm.get('delta_gauc_pct'))}
  for name in ('tail', 'new'):
    cell = (vs_id.get(f'{name}_minus_all') or {}).get('gauc')
    parts[f'{name} - all'] = _part(f'{name} - all', cell, unit=' pp')
    measured[name] = (cell or {}).get('slice_delta_pct')
  verdict, statement = all_verdict(parts)
  out.append(_claim(
      'gains_largest_on_long_tail_and_new_items',
      'gains largest on long-tail and new items',
      'SimTier + MAKE GAUC delta vs. ID, %, by slice (tail: exposure groups '
      '0-2 of 9); differences in percentage points', measured, verdict,
      statement, 'tail delta - overall delta and new-item delta - overall '
      'delta: each 95% interval (paired user bootstrap) excludes 0 upwards; '
      'a slice with too few users having both classes is insufficient data',
      interval={k: ci for k, (ci, _) in parts.items()}))
  out.append(_claim(
      'online_gains', 'Online: CTR +3.5%, RPM +1.5%, ROI +2.9%; ads '
      'created within 24 h: CTR +6.9%, RPM +3.7%, ROI +7.7%',
      'online A/B test', None, NOT_TESTABLE,
      f'{NOT_TESTABLE}: not measurable offline', 'not measurable offline'))
  return out
