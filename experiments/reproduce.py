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
statement, reproduced, testable}: see claims.py) and data ({dataset, source,
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

from experiments import claims as claims_lib
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
           'variants': {k: {m: claims_lib.mean(row.get(m))
                            for m in ('auc', 'gauc')}
                        for k, row in v.items()}}
  boot = (v.get('simtier_make') or {}).get('bootstrap') or {}
  for m in ('auc', 'gauc'):
    base = [(claims_lib.mean(v[k].get(m)), k) for k in ('id', 'id_stats')
            if k in v]
    base = [b for b in base if b[0] is not None]
    mm = claims_lib.mean((v.get('simtier_make') or {}).get(m))
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
                          'claims': claims_lib.claims(
                              pretraining, ctr, pretrain_comparisons, not_run),
                          'data': data})

