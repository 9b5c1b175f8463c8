"""The paper end to end: world -> pre-training -> CTR variants -> a report.

`run(config, workdir)` with experiments/configs/paper.py. Stages, each in
`<workdir>/<stage>-<hash>/` where the hash covers the config subtree that
produced the stage and the hashes of the stages it reads:
  world     the marketplace (mmrec.data.build); not with config.data_dir,
            which names a dataset (e.g. converted real data) to read instead
  pretrain  pretrain_sweep: the methods the dataset can serve x seeds ->
            pretrain_table.json (the test part of the held-out queries),
            pretrain_validation_table.json (the validation part),
            pretrain_plan.json (what ran, what was skipped and why) and
            pretrain_comparisons.json (intervals of the claimed orderings,
            test part)
  ctr       ctr_sweep over the item vectors config.ctr_vectors picks (the
            seed-0 vectors of config.vectors_method, or of the method that
            ran with the best validation-part recall@10, or the dataset's
            own); without any vectors only the variants that read none
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
results.json: see results.py (which assembles it). The stage machinery is
stages.py; the dataset and the CTR vectors come from reproduce_inputs.py.
"""

import os
import time

from absl import logging
import ml_collections

from experiments import ctr_sweep
from experiments import pretrain_sweep
from experiments import report
from experiments import reproduce_inputs
from experiments import results as results_lib
from experiments import stages
from mmrec import files
from mmrec.data import build
from mmrec.data import manifest

REPORT_MARKER = 'report_stage.json'
# In the report stage's key: a results.json of an older layout is rewritten.
REPORT_FORMAT = 4  # 2: the 'data' section; 3: ctr_baseline, flags;
# 4: pretraining_validation
# In the pre-training stage's key: a stage of an older layout runs again.
PRETRAIN_FORMAT = 2  # 2: validation and test parts of the held-out queries
CURVES_FILE = 'curves.json'
CONTENT_CURVE_FILE = 'content_curve.json'


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


def _extra(config, variants, world_dir, ctr_cfg, ctr_dir, path, make=True):
  """Seed 0: multi-epoch ID curve and final GAUC per MAKE stage-A epochs
  (`make`: False without item vectors), on the ID settings the sweep in
  `ctr_dir` chose (the E = stage_a_epochs point is that sweep's own run)."""
  ctr_cfg = ctr_sweep.searched_config(ctr_cfg, stages.read_json(
      os.path.join(ctr_dir, f'{ctr_sweep.TABLE_FILE}.json')).get('id_search'))
  res = {}
  if config.one_epoch.num_epochs:  # 0: no curve (the ID search's epochs
    one = stages.sub(ctr_cfg)       # table still compares 1 and 2)
    one.ctr.num_epochs = config.one_epoch.num_epochs
    one.ctr.eval_history = True  # the curve is this run's eval history
    res = ctr_sweep.run_one(one, 'id', 0, world_dir,
                            os.path.join(path, 'one_epoch'))
  curves = {'one_epoch': {'num_epochs': config.one_epoch.num_epochs,
                          'history': res.get('history', [])},
            'make_epochs': []}
  sweep_e = ctr_cfg.ctr.make.stage_a_epochs
  for e in config.make_epochs if make else ():
    if e == sweep_e and 'make' in variants:
      res = stages.read_json(os.path.join(ctr_dir, 'make', 'seed_0',
                                          'ctr_eval.json'))
    else:
      c = stages.sub(ctr_cfg)
      c.ctr.make.stage_a_epochs = e
      res = ctr_sweep.run_one(c, 'make', 0, world_dir,
                              os.path.join(path, f'make_e{e}'))
    curves['make_epochs'].append({
        'stage_a_epochs': e, 'auc': res['auc'], 'gauc': res['gauc'],
        'logloss': res['logloss'],
        'stage_a_history': res.get('stage_a_history', [])})
  files.write_json(os.path.join(path, CURVES_FILE), files.json_safe(curves))


def _content_curve(config, pipe, vec_h, vectors, ctr_dir):
  """The content-knob curve's stages; returns (hash, sorted points)."""
  own = config.world.content_weight
  points = [results_lib.curve_point(own, stages.read_json(
      os.path.join(ctr_dir, f'{ctr_sweep.TABLE_FILE}.json')))]
  hashes = []
  for w in config.content_curve.weights:
    if w == own:
      continue
    world = stages.sub(config.world, content_weight=float(w))
    wh = stages.config_hash(world)
    wdir = pipe.stage(
        f'world_cw{w:g}', wh, world,
        lambda p, world=world: build.run(
            ml_collections.ConfigDict({'world': world}), p))
    cfg = stages.sub(config.ctr, data_dir=wdir, vectors_path=vectors,
                     variants=config.content_curve.variants,
                     seeds=config.content_curve.seeds)
    h = stages.config_hash(vec_h, wh, config.ctr, config.content_curve)
    cdir = pipe.stage(f'ctr_cw{w:g}', h, config.content_curve,
                      lambda p, cfg=cfg: ctr_sweep.run(cfg, p))
    hashes.append(h)
    points.append(results_lib.curve_point(float(w), stages.read_json(
        os.path.join(cdir, f'{ctr_sweep.TABLE_FILE}.json'))))
  points.sort(key=lambda p: p['content_weight'])
  return stages.config_hash(*hashes), points


def run(config, workdir):
  """The whole pipeline; returns the results dict (as in results.json)."""
  methods, variants = _validate(config)
  pipe = stages.Pipeline(workdir)

  world_dir, world_h = reproduce_inputs.dataset(config, pipe, workdir)
  m = manifest.load(world_dir)
  skipped = reproduce_inputs.world_only(config, m, world_dir)
  # Before any stage: what pre-training can run, and that the CTR vectors
  # asked for will exist.
  ran, pre_skipped, notes = pretrain_sweep.plan(
      methods, world_dir, config.pretrain.scl.num_i2i_pairs)
  if config.ctr_vectors == 'shipped' or (config.ctr_vectors == 'pretrained'
                                         and not ran):
    reproduce_inputs.ctr_vectors(config, m, world_dir, '', ran)

  pre_cfg = stages.sub(config.pretrain, data_dir=world_dir)
  pre_h = stages.config_hash(world_h, config.pretrain,
                             {'format': PRETRAIN_FORMAT})
  pre_dir = pipe.stage('pretrain', pre_h, config.pretrain,
                       lambda p: pretrain_sweep.run(pre_cfg, p))
  pretrain_table = stages.read_json(os.path.join(
      pre_dir, f'{pretrain_sweep.TABLE_FILE}.json'))
  pretrain_validation = stages.read_json(os.path.join(
      pre_dir, f'{pretrain_sweep.VALIDATION_TABLE_FILE}.json'))

  # Where chosen, on the validation part: the report shows the test part.
  vectors = reproduce_inputs.ctr_vectors(config, m, world_dir, pre_dir, ran)
  logging.info('CTR item vectors: %s (%s)', vectors['path'] or 'none',
               vectors['why'])
  # The CTR stages read one method's seed-0 vectors: key them on the config
  # that trained those, not on the whole sweep (other methods don't matter).
  if vectors['source'] == 'pretrained':
    method = vectors['method']
    clip_o = 'clip_e' not in notes
    sources = [method] + (['clip_o'] if method == 'clip_e' and clip_o
                          else [])  # its init
    vec_h = stages.config_hash(world_h, *[pretrain_sweep.method_config(
        config.pretrain, s, 0, '', '', clip_o) for s in sources])
  else:
    vec_h = stages.config_hash(world_h, {'shipped_vectors': m.vectors
                                         if vectors['source'] else None})
  ctr_variants = variants
  if not vectors['path']:
    ctr_variants = [v for v in variants if v in ctr_sweep.NO_VECTORS]
  ctr_cfg = stages.sub(config.ctr, data_dir=world_dir,
                       vectors_path=vectors['path'],
                       variants=','.join(ctr_variants))
  ctr_h = stages.config_hash(vec_h, config.ctr)
  ctr_dir = pipe.stage('ctr', ctr_h, config.ctr,
                       lambda p: ctr_sweep.run(ctr_cfg, p))
  ctr_summary = stages.read_json(os.path.join(ctr_dir,
                                              f'{ctr_sweep.TABLE_FILE}.json'))
  ctr_skipped = {v: f'no item vectors ({vectors["why"]})'
                 for v in variants if v not in ctr_variants}
  ctr_skipped.update(ctr_summary.get('skipped', {}))

  extra_cfg = {'ctr': config.ctr, 'one_epoch': config.one_epoch,
               'make_epochs': config.make_epochs}
  extra_h = stages.config_hash(ctr_h, extra_cfg)
  if config.make_epochs and not vectors['path']:
    skipped['MAKE stage-A epochs'] = f'no item vectors ({vectors["why"]})'
  extra_dir = pipe.stage(
      'extra', extra_h, extra_cfg,
      lambda p: _extra(config, ctr_variants, world_dir, ctr_cfg, ctr_dir, p,
                       make=bool(vectors['path'])))

  if config.data_dir:
    curve_h, curve = stages.config_hash(), []
  else:
    curve_h, curve = _content_curve(config, pipe, vec_h, vectors['path'],
                                    ctr_dir)

  report_h = stages.config_hash(world_h, pre_h, ctr_h, extra_h, curve_h,
                                config.report, config.vectors_method,
                                REPORT_FORMAT)
  marker = os.path.join(workdir, REPORT_MARKER)
  results_path = os.path.join(workdir, results_lib.RESULTS_FILE)
  if (os.path.exists(marker) and
      stages.read_json(marker)['hash'] == report_h and
      os.path.exists(results_path)):
    logging.info('stage report: finished before for this config; skipping')
    pipe.record('report', 'skipped', workdir, report_h,
                stages.read_json(marker)['seconds'])
    results = stages.read_json(results_path)
  else:
    logging.info('stage report: writing results.json, report.md and plots')
    t0 = time.time()
    comparisons = pretrain_sweep.load_comparisons(
        config.pretrain, pre_dir, [x for x in methods if x in ran])
    plan = os.path.join(pre_dir, pretrain_sweep.PLAN_FILE)
    plan = stages.read_json(plan) if os.path.exists(plan) else {}
    summary = os.path.join(world_dir, build.SUMMARY_FILE)
    data = {'dataset': m.name, 'source': m.source, 'data_dir': world_dir,
            'pretraining': {'eval': plan.get('eval'),
                            'ran': [x for x in methods if x in ran],
                            'skipped': pre_skipped, 'notes': notes},
            'ctr_vectors': vectors, 'ctr_skipped': ctr_skipped,
            'skipped': skipped}
    results = results_lib.build_results(
        stages.read_json(summary) if os.path.exists(summary) else
        {'statistics': results_lib.dataset_statistics(m), 'honesty_auc': {},
         'honesty_problems': []},
        pretrain_table, ctr_summary, methods, variants, curve,
        comparisons,
        data=data, pretrain_validation=pretrain_validation)
    files.write_json(results_path, results, allow_nan=False)
    curves = stages.read_json(os.path.join(extra_dir, CURVES_FILE))
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
