"""The paper end to end: world -> pre-training -> CTR variants -> a report.

`run(config, workdir)` with experiments/configs/paper.py. Stages, each in
`<workdir>/<stage>-<hash>/` where the hash covers the config subtree that
produced the stage and the hashes of the stages it reads:
  world     the marketplace (mmrec.data.build); not with config.data_dir,
            which names a dataset (e.g. converted real data) to read instead
  pretrain  pretrain_sweep: the methods the dataset can serve x seeds ->
            pretrain_table.json, pretrain_plan.json (what ran, what was
            skipped and why) and pretrain_comparisons.json (intervals of the
            claimed orderings)
  ctr       ctr_sweep over the item vectors config.ctr_vectors picks (the
            seed-0 vectors of config.vectors_method, or of the best method
            that ran, or the dataset's own); without any vectors only the
            variants that read none
  extra     seed 0: the multi-epoch ID run (one-epoch curve) and a 'make' run
            per stage-A epoch count (curves.json)
  world_cw<c>, ctr_cw<c>  the content-knob curve (the built world only): for
            each config.content_curve.weights value c other than the world's
            own, the same world with `content_weight` = c and a CTR sweep of
            content_curve.variants over the same item vectors (items,
            images, titles and the search log do not depend on the knob,
            only the clicks do), summarised with the main sweep's point in
            content_curve.json
  report    results.json, report.md and PNG plots in the workdir
A stage whose `stage.json` marker exists is skipped (an interrupted sweep
resumes run by run). `progress.json` lists what this invocation ran or skipped.

results.json has six top-level keys: world (statistics, honesty table,
oracle ceiling; for a dataset other than the world its manifest's
statistics, no honesty table, a null oracle), pretraining ({method that ran:
{image|text|image_new|text_new|...: {accuracy@1|recall@10: {mean, std,
runs}} or null}}), ctr ({variant that ran: {auc, gauc, logloss, delta_*_pct:
{mean, std, runs}, slices: {...}}}), content_curve (a list by
content_weight of {variants: {auc, gauc}, gain_{auc,gauc}_pct,
best_id_{auc,gauc}}: see `curve_point`), claims (a list of {id, claim,
metric, measured, paper, criterion, interval, ratio_to_paper, verdict,
statement, reproduced, testable}: see claims()) and data ({dataset, source,
data_dir, pretraining: {eval, ran, skipped, notes}, ctr_vectors: {source,
method, path, why}, ctr_skipped: {variant: why}, skipped: {section: why}}).
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
from mmrec.data import manifest
from mmrec.data import resolver

MARKER = 'stage.json'
PROGRESS_FILE = 'progress.json'
RESULTS_FILE = 'results.json'
REPORT_MARKER = 'report_stage.json'
# In the report stage's key: a results.json of an older layout is rewritten.
REPORT_FORMAT = 2  # 2: the 'data' section
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
  if config.ctr_vectors not in ('auto', 'pretrained', 'shipped'):
    raise ValueError(f'config.ctr_vectors = {config.ctr_vectors!r}; expected '
                     '"auto", "pretrained" or "shipped"')
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


def _extra(config, variants, world_dir, ctr_cfg, ctr_dir, path, make=True):
  """Seed 0: multi-epoch ID curve and final GAUC per MAKE stage-A epochs
  (`make`: False without item vectors)."""
  one = _sub(ctr_cfg)
  one.ctr.num_epochs = config.one_epoch.num_epochs
  res = ctr_sweep.run_one(one, 'id', 0, world_dir,
                          os.path.join(path, 'one_epoch'))
  curves = {'one_epoch': {'num_epochs': config.one_epoch.num_epochs,
                          'history': res.get('history', [])},
            'make_epochs': []}
  sweep_e = ctr_cfg.ctr.make.stage_a_epochs
  for e in config.make_epochs if make else ():
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


def _dataset(config, pipe, workdir):
  """(dataset directory, its hash): the world the pipeline builds from
  config.world, or config.data_dir (only read), keyed by its manifest."""
  if not config.data_dir:
    world_h = config_hash(config.world)
    return pipe.stage(
        'world', world_h, config.world,
        lambda p: build.run(ml_collections.ConfigDict(
            {'world': config.world}), p)), world_h
  data_dir = resolver.data_dir(config.data_dir, None, workdir)
  m = manifest.load(data_dir)
  logging.info('dataset: %s (%s) in %s', m.name, m.source, data_dir)
  return data_dir, config_hash({'dataset': data_dir,
                                'manifest': m.to_dict()})


def _world_only(config, m, data_dir):
  """{section: why} of the report's sections this dataset cannot have."""
  out = {}
  if not m.oracle:
    out['oracle ceiling'] = (f'dataset {m.name!r} has no true click '
                             'probabilities: only a synthetic world has an '
                             'oracle')
  if not os.path.exists(os.path.join(data_dir, build.SUMMARY_FILE)):
    out['honesty table'] = ('it scores the synthetic world\'s hidden '
                            f'concepts, kept in {build.SUMMARY_FILE}, which '
                            f'dataset {m.name!r} has not')
  if config.data_dir:
    out['content curve'] = ('it rebuilds the synthetic world at other '
                            'content_weight values; config.data_dir names a '
                            'fixed dataset')
  return out


def _ctr_vectors(config, m, data_dir, pre_dir, ran, table):
  """Which item vectors feed the CTR stage (config.ctr_vectors):
  {'source': 'pretrained' | 'shipped' | None, 'method', 'path', 'why'}."""
  choice = config.ctr_vectors
  if choice in ('auto', 'pretrained') and ran:
    if config.vectors_method in ran:
      method = config.vectors_method
      why = 'config.vectors_method'
    else:
      method = pretrain_sweep.best_method(table, ran)
      why = (f'config.vectors_method = {config.vectors_method!r} did not run; '
             f'{method!r} has the best held-out recall@10 of its item table '
             f'among {", ".join(ran)}')
    return {'source': 'pretrained', 'method': method, 'why': why,
            'path': os.path.join(pre_dir, method, 'seed_0',
                                 vector_table.FILE)}
  if choice in ('auto', 'shipped') and m.vectors:
    why = ('config.ctr_vectors = "shipped"' if choice == 'shipped' else
           'no pre-training method ran on this dataset')
    return {'source': 'shipped', 'method': None, 'why': why,
            'path': os.path.join(data_dir, m.vectors)}
  if choice == 'auto':
    return {'source': None, 'method': None, 'path': '',
            'why': 'no pre-training method ran and the dataset ships no item '
                   'vectors'}
  raise ValueError(
      f'config.ctr_vectors = {choice!r}, but dataset {m.name!r} ' + (
          'ships no item vectors (manifest: vectors = null)'
          if choice == 'shipped' else 'allows no pre-training method'))


def run(config, workdir):
  """The whole pipeline; returns the results dict (as in results.json)."""
  methods, variants = _validate(config)
  pipe = _Pipeline(workdir)

  world_dir, world_h = _dataset(config, pipe, workdir)
  m = manifest.load(world_dir)
  skipped = _world_only(config, m, world_dir)
  # Before any stage: what pre-training can run, and that the CTR vectors
  # asked for will exist.
  ran, pre_skipped, notes = pretrain_sweep.plan(methods, world_dir)
  if config.ctr_vectors == 'shipped' or (config.ctr_vectors == 'pretrained'
                                         and not ran):
    _ctr_vectors(config, m, world_dir, '', ran, {})

  pre_cfg = _sub(config.pretrain, data_dir=world_dir)
  pre_h = config_hash(world_h, config.pretrain)
  pre_dir = pipe.stage('pretrain', pre_h, config.pretrain,
                       lambda p: pretrain_sweep.run(pre_cfg, p))
  pretrain_table = _read_json(os.path.join(
      pre_dir, f'{pretrain_sweep.TABLE_FILE}.json'))

  vectors = _ctr_vectors(config, m, world_dir, pre_dir, ran, pretrain_table)
  logging.info('CTR item vectors: %s (%s)', vectors['path'] or 'none',
               vectors['why'])
  # The CTR stages read one method's seed-0 vectors: key them on the config
  # that trained those, not on the whole sweep (other methods don't matter).
  if vectors['source'] == 'pretrained':
    method = vectors['method']
    clip_o = 'clip_e' not in notes
    sources = [method] + (['clip_o'] if method == 'clip_e' and clip_o
                          else [])  # its init
    vec_h = config_hash(world_h, *[pretrain_sweep.method_config(
        config.pretrain, s, 0, '', '', clip_o) for s in sources])
  else:
    vec_h = config_hash(world_h, {'shipped_vectors': m.vectors
                                  if vectors['source'] else None})
  ctr_variants = variants
  if not vectors['path']:
    ctr_variants = [v for v in variants if v in ctr_sweep.NO_VECTORS]
  ctr_cfg = _sub(config.ctr, data_dir=world_dir,
                 vectors_path=vectors['path'],
                 variants=','.join(ctr_variants))
  ctr_h = config_hash(vec_h, config.ctr)
  ctr_dir = pipe.stage('ctr', ctr_h, config.ctr,
                       lambda p: ctr_sweep.run(ctr_cfg, p))
  ctr_summary = _read_json(os.path.join(ctr_dir,
                                        f'{ctr_sweep.TABLE_FILE}.json'))
  ctr_skipped = {v: f'no item vectors ({vectors["why"]})'
                 for v in variants if v not in ctr_variants}
  ctr_skipped.update(ctr_summary.get('skipped', {}))

  extra_cfg = {'ctr': config.ctr, 'one_epoch': config.one_epoch,
               'make_epochs': config.make_epochs}
  extra_h = config_hash(ctr_h, extra_cfg)
  if config.make_epochs and not vectors['path']:
    skipped['MAKE stage-A epochs'] = f'no item vectors ({vectors["why"]})'
  extra_dir = pipe.stage(
      'extra', extra_h, extra_cfg,
      lambda p: _extra(config, ctr_variants, world_dir, ctr_cfg, ctr_dir, p,
                       make=bool(vectors['path'])))

  if config.data_dir:
    curve_h, curve = config_hash(), []
  else:
    curve_h, curve = _content_curve(config, pipe, vec_h, vectors['path'],
                                    ctr_dir)

  report_h = config_hash(world_h, pre_h, ctr_h, extra_h, curve_h,
                         config.report, config.vectors_method,
                         REPORT_FORMAT)
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
    plan = os.path.join(pre_dir, pretrain_sweep.PLAN_FILE)
    plan = _read_json(plan) if os.path.exists(plan) else {}
    summary = os.path.join(world_dir, build.SUMMARY_FILE)
    data = {'dataset': m.name, 'source': m.source, 'data_dir': world_dir,
            'pretraining': {'eval': plan.get('eval'),
                            'ran': [x for x in methods if x in ran],
                            'skipped': pre_skipped, 'notes': notes},
            'ctr_vectors': vectors, 'ctr_skipped': ctr_skipped,
            'skipped': skipped}
    results = build_results(
        _read_json(summary) if os.path.exists(summary) else
        {'statistics': dataset_statistics(m), 'honesty_auc': {},
         'honesty_problems': []},
        pretrain_table, ctr_summary, methods, variants, curve,
        _read_json(comparisons) if os.path.exists(comparisons) else None,
        data=data)
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


def dataset_statistics(m):
  """A converted dataset's statistics for the report, from its manifest."""
  imp = m.tables.get(manifest.IMPRESSIONS, {}).get('splits', {})
  search = m.tables.get(manifest.SEARCH, {}).get('splits', {})
  return {'dataset': m.name, 'source': m.source, 'users': m.num_users,
          'items': m.num_items, 'days': m.num_days,
          'first_test_day': m.first_test_day,
          'validation_days': m.validation_days,
          'train_impressions': imp.get('train'),
          'test_impressions': imp.get('test'),
          'item_images': m.has(manifest.ITEMS, 'image'),
          'item_titles': m.has(manifest.ITEMS, 'title'),
          'search_sessions': sum(v or 0 for v in search.values()),
          'shipped_vectors': m.vectors}


# --------------------------------------------------------------------------
# results.json


def build_results(world_summary, pretrain_table, ctr_summary, methods,
                  variants, content_curve=(), pretrain_comparisons=None,
                  data=None):
  """results.json; `data`: the dataset, the pre-training plan, the CTR
  vectors and what did not run (see run)."""
  world = {'statistics': world_summary['statistics'],
           'honesty_auc': world_summary['honesty_auc'],
           'honesty_ok': (not world_summary['honesty_problems']
                          if world_summary['honesty_auc'] else None),
           'honesty_problems': world_summary['honesty_problems'],
           'oracle_ceiling': ctr_summary.get('oracle')}
  pretraining = {m: pretrain_table[m] for m in methods if m in pretrain_table}
  ctr = {v: ctr_summary['variants'][v] for v in variants
         if v in ctr_summary['variants']}
  data = data or {}
  not_run = dict((data.get('pretraining') or {}).get('skipped') or {})
  not_run.update(data.get('ctr_skipped') or {})
  return files.json_safe({'world': world, 'pretraining': pretraining,
                          'ctr': ctr, 'content_curve': list(content_curve),
                          'claims': claims(pretraining, ctr,
                                           pretrain_comparisons, not_run),
                          'data': data})


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


# The methods and variants each claim compares: a claim whose parts did not
# run (the dataset cannot serve them) is not testable, and says why.
_CLAIM_NEEDS = {
    'scl_over_clip_e_over_clip_o': ('scl', 'clip_e', 'clip_o'),
    'queue_adds': ('scl', 'scl_no_queue'),
    'hard_negatives_add': ('scl', 'scl_no_hard_neg'),
    'simtier_and_make_beat_vector_and_simscore': (
        'simtier_paper', 'simtier_official', 'make', 'vector', 'simscore'),
    'simtier_make_gauc_gain': ('simtier_make',),
    'simtier_make_auc_gain': ('simtier_make',),
    'gains_largest_on_long_tail_and_new_items': ('simtier_make',),
}


def claims(pretraining, ctr, pretrain_comparisons=None, not_run=None):
  """Each claim of paper.md ("Reported result", and SCL's), checked.

  CTR claims read the bootstrap intervals of ctr_table (ctr_sweep.intervals);
  pre-training claims `pretrain_comparisons` (pretrain_sweep.comparisons).
  Every record has a 'verdict' (VERDICTS), the 95% 'interval'(s) it rests
  on, 'ratio_to_paper' where the paper gives a number, and 'statement': the
  sentence the report and the README quote. `not_run`: {method or variant:
  why} of the parts the dataset could not serve; their claims are not
  testable.
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
  for c in out:
    missing = [n for n in _CLAIM_NEEDS.get(c['id'], ()) if n in (not_run or {})]
    if missing:
      # The first clause of a reason says what the dataset lacks; the list
      # of methods that can run belongs to the pre-training section.
      c.update(verdict=NOT_TESTABLE, reproduced=False, testable=False,
               statement=f'{NOT_TESTABLE}: ' + '; '.join(
                   f'{n} not run ({not_run[n].split("; methods that")[0]})'
                   for n in missing))
  return out
