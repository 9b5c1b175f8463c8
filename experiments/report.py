"""The reproduction's report: PNG plots and report.md (see reproduce.py).

Plots (matplotlib, Agg, no pyplot state): GAUC delta per integration variant;
deltas by item-exposure group and on new items; the one-epoch curve; MAKE
stage-A epochs vs. final GAUC; a retrieval grid (held-out image query -> top-k
catalogue images, per encoder); SimTier cosines of clicked vs. non-clicked
test impressions. A plot whose inputs are missing is left out and says so.

(Over the house's ~450 lines on purpose: each plot sits beside the table
that reads the same results, and `write` is the one place that orders
them; a plots module and a tables module would share every helper.)
"""

import json
import os

from matplotlib import figure
import numpy as np

from experiments import baselines
from experiments import claims as claims_lib
from experiments import ctr_sweep
from experiments import pretrain_sweep
from experiments import seed_stats
from mmrec import files
from mmrec import pretrain_eval

REPORT_FILE = 'report.md'
PLOTS = ('gauc_delta.png', 'slice_deltas.png', 'one_epoch.png',
         'make_epochs.png', 'retrieval_grid.png', 'simtier_histogram.png',
         'content_curve.png')
_PAPER_GAUC_GAIN = 1.25  # % SimTier + MAKE over ID (paper.md)


def _save(fig, path):
  fig.tight_layout()
  files.write_with(path, lambda tmp: fig.savefig(tmp, format='png', dpi=100))


def _nan(x):
  return np.nan if x is None else x


def _cell(row, *keys):
  """(mean, std) of row[k1][k2]...; NaN where missing."""
  for k in keys:
    row = (row or {}).get(k)
  return (np.nan, np.nan) if not row else (_nan(row['mean']),
                                           _nan(row['std']))


def gauc_delta_plot(path, ctr):
  variants = [v for v in ctr if v != 'id']
  cells = [_cell(ctr[v], 'delta_gauc_pct') for v in variants]
  fig = figure.Figure(figsize=(1.1 * len(variants) + 2, 3.5))
  ax = fig.subplots()
  ax.bar(range(len(variants)), [c[0] for c in cells],
         yerr=[c[1] for c in cells], capsize=4, color='tab:blue')
  ax.axhline(0, color='k', lw=0.8)
  ax.axhline(_PAPER_GAUC_GAIN, color='tab:red', ls=':',
             label='paper: SimTier + MAKE +1.25%')
  ax.set_xticks(range(len(variants)), variants, rotation=30, ha='right')
  ax.set_ylabel('GAUC vs. ID model, %')
  ax.set_title('GAUC delta per integration variant (mean ± std over seeds)')
  ax.legend(fontsize=8)
  _save(fig, path)


def slice_plot(path, ctr):
  names = sorted({s for r in ctr.values() for s in (r or {}).get('slices', {})
                  if s.startswith('group_')}, key=lambda s: int(s[6:]))
  names += ['new'] if any('new' in (r or {}).get('slices', {})
                          for r in ctr.values()) else []
  fig = figure.Figure(figsize=(8, 4))
  ax = fig.subplots()
  x = np.arange(len(names))
  variants = [v for v in ctr if v != 'id']
  for i, v in enumerate(variants):
    cells = [_cell(ctr[v], 'slices', s, 'delta_gauc_pct') for s in names]
    ax.errorbar(x + 0.06 * (i - len(variants) / 2), [c[0] for c in cells],
                yerr=[c[1] for c in cells], marker='o', ms=4, capsize=2,
                label=v)
  ax.axhline(0, color='k', lw=0.8)
  labels = [s.replace('group_', 'g') for s in names]
  if len(names) > 2:
    labels[0] += '\n(tail)'
    labels[-2] += '\n(head)'
  ax.set_xticks(x, labels)
  ax.set_ylabel('GAUC vs. ID model, %')
  ax.set_title('GAUC delta by training-exposure group and on new items')
  ax.legend(fontsize=7, ncol=2)
  _save(fig, path)


def one_epoch_plot(path, one_epoch):
  hist = one_epoch['history']
  if not hist:
    return False
  x = [h['epoch_fraction'] for h in hist]
  fig = figure.Figure(figsize=(8, 3.5))
  for ax, m in zip(fig.subplots(1, 2), ('auc', 'gauc')):
    ax.plot(x, [_nan(h[m]) for h in hist], marker='o')
    for e in range(1, one_epoch['num_epochs']):
      ax.axvline(e, color='grey', ls=':')
    ax.set_xlabel('epoch')
    ax.set_ylabel(f'test {m.upper()}')
  fig.suptitle(f'ID model over {one_epoch["num_epochs"]} epochs '
               '(the one-epoch phenomenon)')
  _save(fig, path)
  return True


def content_curve_plot(path, points):
  """The multimodal gain vs. the world's content knob (>= 2 points)."""
  points = [p for p in points if 'gain_gauc_pct' in p]
  if len(points) < 2:
    return False
  x = [p['content_weight'] for p in points]
  fig = figure.Figure(figsize=(5, 3.5))
  ax = fig.subplots()
  for m, marker in (('auc', 'o'), ('gauc', 's')):
    ax.plot(x, [_nan(p.get(f'gain_{m}_pct')) for p in points], marker=marker,
            label=f'{m.upper()} gain %')
  ax.axhline(0, color='k', lw=0.8)
  ax.set_xlabel('world.content_weight (taste logits per category logit)')
  ax.set_ylabel('SimTier + MAKE over best ID baseline, %')
  ax.legend()
  _save(fig, path)
  return True


def _content_curve_md(points):
  lines = ['| content_weight | best ID baseline (AUC / GAUC) | ID AUC | '
           'id_stats AUC | SimTier+MAKE AUC | AUC gain % [95% CI] | ID GAUC '
           '| id_stats GAUC | SimTier+MAKE GAUC | GAUC gain % [95% CI] |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for p in points:
    v = p['variants']
    cell = lambda k, m: _f((v.get(k) or {}).get(m))
    def gain(m):
      if p.get(f'gain_{m}_pct') is None:
        return 'n/a'
      ci = p.get(f'gain_{m}_ci_pct')
      return f'{p[f"gain_{m}_pct"]:+.2f}' + (
          f' [{ci[0]:+.2f}, {ci[1]:+.2f}]' if ci else '')
    lines.append(
        f'| {p["content_weight"]:g} | {p.get("best_id_auc", "n/a")} / '
        f'{p.get("best_id_gauc", "n/a")} (on '
        f'{p.get("best_id_gauc_split", "test")}) | {cell("id", "auc")} | '
        f'{cell("id_stats", "auc")} | {cell("simtier_make", "auc")} | '
        f'{gain("auc")} | {cell("id", "gauc")} | {cell("id_stats", "gauc")} '
        f'| {cell("simtier_make", "gauc")} | {gain("gauc")} |')
  return '\n'.join(lines)


def make_epochs_plot(path, make_epochs, id_gauc):
  if not make_epochs:
    return False
  e = [r['stage_a_epochs'] for r in make_epochs]
  fig = figure.Figure(figsize=(5, 3.5))
  ax = fig.subplots()
  ax.plot(e, [_nan(r['gauc']) for r in make_epochs], marker='o',
          label='final GAUC (stage B: ID model + MAKE)')
  stage_a = [_nan(r['stage_a_history'][-1]['gauc']) if r['stage_a_history']
             else np.nan for r in make_epochs]
  ax.plot(e, stage_a, marker='s', ls='--', label='stage A alone')
  if id_gauc is not None:
    ax.axhline(id_gauc, color='k', ls=':', label='ID model')
  ax.set_xticks(e)
  ax.set_xlabel('MAKE stage-A epochs E')
  ax.set_ylabel('test GAUC')
  ax.set_title('MAKE: stage-A epochs vs. final GAUC (seed 0)')
  ax.legend(fontsize=8)
  _save(fig, path)
  return True


def retrieval_grid(path, pretrain_dir, methods, num_queries, k):
  """Held-out image queries -> top-k catalogue images per method, from each
  run's retrieval_examples.npz (seed 0)."""
  examples = {}
  for m in methods:
    f = os.path.join(pretrain_dir, m, 'seed_0', pretrain_eval.EXAMPLES_FILE)
    if os.path.exists(f):
      with np.load(f) as z:
        examples[m] = dict(z)
  if not examples:
    return False
  first = next(iter(examples.values()))
  rows = min([num_queries] + [len(e['top_item']) for e in examples.values()])
  k = min([k] + [e['top_item'].shape[1] for e in examples.values()])
  if not rows:
    return False
  cols = 1 + k * len(examples)
  fig = figure.Figure(figsize=(0.9 * cols, 0.95 * rows + 0.4))
  axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
  for r in range(rows):
    cells = [(first['query_image'][r], 'query', None)]
    for m, e in examples.items():
      cells += [(e['top_image'][r, j], f'{m} #{j + 1}', bool(e['hit'][r, j]))
                for j in range(k)]
    for ax, (img, title, hit) in zip(axes[r], cells):
      ax.imshow(img, interpolation='nearest')
      ax.set_xticks([])
      ax.set_yticks([])
      colour = {True: 'tab:green', False: 'lightgrey', None: 'black'}[hit]
      for sp in ax.spines.values():
        sp.set_color(colour)
        sp.set_linewidth(2.5 if hit else 1)
      if r == 0:
        ax.set_title(title, fontsize=7)
  fig.suptitle('Held-out image query -> top catalogue items (green: the '
               'purchased / clicked item)', fontsize=9)
  _save(fig, path)
  return True


def simtier_histogram(path, hist):
  """The CTR sweep's cosine_histogram.json drawn: clicked vs. not."""
  fig = figure.Figure(figsize=(6, 3.5))
  ax = fig.subplots()
  edges = np.asarray(hist['edges'])
  for name, colour in (('clicked', 'tab:red'), ('not_clicked', 'tab:blue')):
    counts = np.asarray(hist[name], np.float64)
    density = counts / max(counts.sum(), 1) / np.diff(edges)
    ax.stairs(density, edges, lw=2, color=colour,
              label=f'{name.replace("_", " ")} (mean '
              f'{hist[f"{name}_mean"]:.3f})')
  ax.set_xlabel('cosine(target, behaviour item)')
  ax.set_ylabel('density')
  ax.set_title(f'SimTier similarities on {hist["impressions"]} test '
               'impressions')
  ax.legend(fontsize=8)
  _save(fig, path)
  return True


# --------------------------------------------------------------------------
# report.md


def _f(x, digits=4):
  return 'n/a' if x is None else f'{x:.{digits}f}'


# How report.md states the claims' rules (claims.py decides them).
_RULES = (
    'Intervals: paired user-level bootstrap of the test day '
    '(mmrec/bootstrap.py; CTR seeds combined) or, for pre-training, of the '
    'test part of the held-out queries (the validation part is what the '
    'pipeline chooses on). A claim is reproduced only when its 95% interval '
    'excludes 0 in the paper\'s direction and, where the paper gives a '
    f'number, the interval overlaps the band {claims_lib.RATIO_RANGE[0]:g}x-'
    f'{claims_lib.RATIO_RANGE[1]:g}x of that number; an interval wholly above '
    'or below the band is "direction only" (the statement says which). CTR '
    'gains are judged against the stronger of the ID model (`id`) and the '
    'ID-statistics LR (`id_stats`) on the validation split, per metric; '
    '"content beats ID similarity" compares one model on the content vectors '
    'and on the ID-similarity table; pre-training orderings are judged per '
    'query modality, on accuracy@1 and recall@10, every step of an ordering '
    'on both. A slice with fewer than '
    f'{claims_lib.bootstrap.MIN_USERS} test users having both classes is '
    '"insufficient data".')


def _claims_md(claims):
  """Verdict and statement of each claim, quoted from results.json."""
  lines = ['| claim | verdict | measured: delta [95% interval] | criterion |',
           '|---|---|---|---|']
  for c in claims:
    statement = c['statement']
    prefix = f'{c["verdict"]}: '
    if statement.startswith(prefix):  # the verdict has its own column
      statement = statement[len(prefix):]
    lines.append(f'| {c["claim"]} | **{c["verdict"]}** | {statement} | '
                 f'{c["criterion"]} |')
  return '\n'.join(lines)


def _slices_md(ctr):
  names = sorted({s for r in ctr.values() for s in r['slices']},
                 key=lambda s: (s == 'new', int(s[6:]) if s != 'new' else 0))
  lines = ['| variant | ' + ' | '.join(names) + ' |',
           '|---|' + '---|' * len(names)]
  for v, row in ctr.items():
    if v == 'id':
      continue
    lines.append(f'| {v} | ' + ' | '.join(
        seed_stats.text((row['slices'].get(s) or {}).get('delta_gauc_pct'), 2)
        for s in names) + ' |')
  return '\n'.join(lines)


def _world_md(world, skipped=None):
  """Statistics, the honesty table and the oracle ceiling; a section the
  dataset has not (`skipped`: {section: why}) is one line saying why."""
  skipped = skipped or {}
  lines = ['| statistic | value |', '|---|---|']
  lines += [f'| {k} | {_f(v) if isinstance(v, float) else v} |'
            for k, v in world['statistics'].items()]
  gone = [f'{k.capitalize()}: not shown: {skipped[k]}.'
          for k in ('honesty table', 'oracle ceiling') if k in skipped]
  if not world['honesty_auc']:
    return '\n'.join(lines + [''] + gone)
  lines += ['', '| scorer (honesty check) | AUC all | AUC new items |',
            '|---|---|---|']
  lines += [f'| {k} | {_f(v["all"])} | {_f(v["new_items"])} |'
            for k, v in world['honesty_auc'].items()]
  o = world['oracle_ceiling'] or {}
  verdict = 'OK' if world['honesty_ok'] else 'VIOLATED: ' + '; '.join(
      world['honesty_problems'])
  lines += ['', f'Honesty orderings: {verdict}.']
  lines += gone or [f'Oracle ceiling (true click probabilities on the test '
                    f'day): AUC {_f(o.get("auc"))}, GAUC {_f(o.get("gauc"))}, '
                    f'logloss {_f(o.get("logloss"))}.']
  return '\n'.join(lines)


def vectors_label(results, config, why=True):
  """Which item vectors fed the CTR stage, in words (`why`: and why)."""
  v = (results.get('data') or {}).get('ctr_vectors')
  if not v:
    return f'{config.vectors_method} (seed 0)'
  if v['source'] == 'pretrained':
    label = f'{v["method"]} (seed 0)'
  elif v['source'] == 'shipped':
    label = f'the dataset\'s own {os.path.basename(v["path"])}'
  else:
    label = 'none'
  return f'{label}: {v["why"]}' if why else label


_EVAL_HEADINGS = {
    'search': 'held-out search sessions',
    'co_click': 'held-out co-clicks ranked against the catalogue: the query '
                'is the newest behaviour before a test-day click, the answer '
                'the clicked item',
}


def _parts_md(ev):
  """Which part of the held-out queries each pre-training number is from."""
  if not ev or 'validation_queries' not in ev:
    return ''
  return (f'Held-out queries in two fixed parts (a hash of each query\'s '
          f'id, {ev["validation_share"]:.0%} validation): the tables and '
          f'claims are on the test part ({ev["queries"]} queries), what the '
          f'pipeline chooses (the CTR vectors\' method where '
          '`vectors_method` cannot run) on the validation part '
          f'({ev["validation_queries"]} queries).')


def _skipped_md(data):
  """Every part that did not run, one line each, with the reason."""
  pre = (data.get('pretraining') or {}).get('skipped') or {}
  lines = [f'- {k}: {why}' for k, why in (data.get('skipped') or {}).items()]
  lines += [f'- pre-training {m}: {why}' for m, why in pre.items()]
  lines += [f'- CTR {v}: {why}'
            for v, why in (data.get('ctr_skipped') or {}).items()]
  return '\n'.join(lines)


def _curves_md(curves):
  lines = []
  if curves['one_epoch']['history']:
    lines += ['| epoch | AUC | GAUC | logloss |', '|---|---|---|---|']
    lines += [f'| {h["epoch_fraction"]:.2f} | {_f(h["auc"])} | '
              f'{_f(h["gauc"])} | {_f(h["logloss"])} |'
              for h in curves['one_epoch']['history']]
  else:
    lines += ['The one-epoch curve did not run (`one_epoch.num_epochs = 0`).']
  lines.append('')
  if curves['make_epochs']:
    lines += ['| MAKE stage-A epochs | final AUC | final GAUC |',
              '|---|---|---|']
    lines += [f'| {r["stage_a_epochs"]} | {_f(r["auc"])} | {_f(r["gauc"])} |'
              for r in curves['make_epochs']]
  else:
    lines.append('The MAKE stage-A curve did not run (`make_epochs` is '
                 'empty, or no item vectors).')
  return '\n'.join(lines)


def write(workdir, config, results, curves, progress, *, pretrain_dir,
          ctr_dir, elapsed):
  """All plots and report.md into `workdir`; returns the plot files made."""
  ctr = results['ctr']
  p = lambda name: os.path.join(workdir, name)
  made = {}
  gauc_delta_plot(p(PLOTS[0]), ctr)
  made[PLOTS[0]] = 'GAUC delta vs. the ID model per integration variant.'
  slice_plot(p(PLOTS[1]), ctr)
  made[PLOTS[1]] = 'GAUC delta by training-exposure group and on new items.'
  if one_epoch_plot(p(PLOTS[2]), curves['one_epoch']):
    made[PLOTS[2]] = 'The ID model trained for several epochs (seed 0).'
  if make_epochs_plot(p(PLOTS[3]), curves['make_epochs'],
                      (ctr['id']['gauc'] or {}).get('mean')):
    made[PLOTS[3]] = 'MAKE stage-A epochs vs. final GAUC (seed 0).'
  ran = [m for m, row in results['pretraining'].items() if row]
  # Without the usual grid methods (a dataset they cannot run on), the
  # first two that ran.
  methods = [m for m in config.report.grid_methods if m in ran] or ran[:2]
  if retrieval_grid(p(PLOTS[4]), pretrain_dir, methods,
                    config.report.retrieval_queries, config.report.retrieval_k):
    made[PLOTS[4]] = (f'Retrieval: held-out image queries (test part), top-'
                      f'{config.report.retrieval_k} by cosine '
                      f'({", ".join(methods)}).')
  hist_file = os.path.join(ctr_dir, ctr_sweep.HISTOGRAM_FILE)
  if os.path.exists(hist_file):
    with open(hist_file) as f:
      hist = json.load(f)
    simtier_histogram(p(PLOTS[5]), hist)
    label = vectors_label(results, config, why=False)
    made[PLOTS[5]] = (f'SimTier cosines ({label} vectors): '
                      f'mean {hist["clicked_mean"]:.3f} clicked vs. '
                      f'{hist["not_clicked_mean"]:.3f} not clicked.')
  if content_curve_plot(p(PLOTS[6]), results['content_curve']):
    made[PLOTS[6]] = ('The multimodal gain (SimTier + MAKE over the best ID '
                      'baseline) vs. how much content matters in the world.')
  oracle = results['world']['oracle_ceiling']
  data = results.get('data') or {}
  skipped = data.get('skipped') or {}
  pre = data.get('pretraining') or {}
  ctr_table = {'variants': ctr, 'skipped': data.get('ctr_skipped') or {}}
  if oracle and all(v is not None for v in oracle.values()):
    ctr_table['oracle'] = oracle
  table_file = os.path.join(ctr_dir, f'{ctr_sweep.TABLE_FILE}.json')
  if os.path.exists(table_file):  # the ID model's selection table, if any
    with open(table_file) as f:
      searched = json.load(f).get('id_search')
    if searched:
      ctr_table['id_search'] = searched
  task = (pre.get('eval') or {}).get('task', 'search')
  parts = _parts_md(pre.get('eval'))
  curve_md = (f'Not drawn: {skipped["content curve"]}.'
              if 'content curve' in skipped else
              _content_curve_md(results['content_curve']))
  dataset = (f'Dataset: {data["dataset"]} ({data["source"]}). '
             if data.get('dataset') else '')
  stages = '\n'.join(
      ['| stage | status | compute s | directory |', '|---|---|---|---|'] +
      [f'| {k} | {s["status"]} | {s["seconds"]:.0f} | '
       f'{os.path.relpath(s["dir"], workdir)} |'
       for k, s in progress['stages'].items()])
  missing = [f for f in PLOTS if f not in made]
  text = '\n\n'.join([
      '# Reproduction: Enhancing Taobao Display Advertising with Multimodal '
      'Representations',
      f'{dataset}Pre-training: {config.pretrain.seeds} seed(s); CTR: '
      f'{config.ctr.seeds} seed(s); CTR item vectors: '
      f'{vectors_label(results, config)}. Numbers: `results.json`.',
      '## Claims', _claims_md(results['claims']), _RULES,
      baselines.text(results.get('ctr_baseline')),
  ] + (['## Flags', 'Read the numbers above with these in mind:\n\n' +
        '\n'.join(f'- {f["text"]}' for f in results['flags'])]
       if results.get('flags') else []) + [
      '## World' if not data.get('dataset') or data['dataset'] == 'world'
      else '## Dataset', _world_md(results['world'], skipped),
      f'## Pre-training ({_EVAL_HEADINGS.get(task, task)})',
  ] + ([parts] if parts else []) + [
      pretrain_sweep.markdown(results['pretraining'], pre.get('skipped'),
                              pre.get('notes'),
                              results.get('pretraining_validation')),
      '## CTR (test day; deltas vs. the ID model, paired by seed)',
      ctr_sweep.markdown(ctr_table),
      '### GAUC delta % by training-exposure group (group_0 = tail) and on '
      'new items', _slices_md(ctr),
      '### One-epoch curve and MAKE stage-A epochs (seed 0)',
      _curves_md(curves),
      '### The content knob: multimodal gain vs. world.content_weight',
      curve_md,
      '## Plots', '\n\n'.join(f'![{c}]({f})\n\n*{c}*' for f, c in
                              made.items()) +
      (f'\n\nNot drawn (inputs missing): {", ".join(missing)}.'
       if missing else ''),
  ] + ([
      '## Not run', 'What this dataset or configuration could not serve, '
      'and why:\n\n' + _skipped_md(data)] if _skipped_md(data) else []) + [
      '## Stages', stages,
      f'Wall time of this invocation up to the report: {elapsed:.0f} s; '
      f'compute time of all stages as first run: '
      f'{sum(s["seconds"] for s in progress["stages"].values()):.0f} s.',
  ]) + '\n'
  files.write_text(p(REPORT_FILE), text)
  return list(made)
