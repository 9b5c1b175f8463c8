"""The reproduction's report: PNG plots and report.md (see reproduce.py).

Plots (matplotlib, Agg, no pyplot state): GAUC delta per integration variant;
deltas by item-exposure group and on new items; the one-epoch curve; MAKE
stage-A epochs vs. final GAUC; a retrieval grid (held-out image query -> top-k
catalogue images, per encoder); SimTier cosines of clicked vs. non-clicked
test impressions. A plot whose inputs are missing is left out and says so.
"""

import os

from matplotlib import figure
import numpy as np

from experiments import ctr_sweep
from experiments import pretrain_sweep
from mmrec import embed
from mmrec import files
from mmrec import vector_table
from mmrec.data import builders

REPORT_FILE = 'report.md'
PLOTS = ('gauc_delta.png', 'slice_deltas.png', 'one_epoch.png',
         'make_epochs.png', 'retrieval_grid.png', 'simtier_histogram.png')
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


def _unit(x):
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


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


def _encoder(method, run_dir, data_dir, dim):
  if method in embed.REFERENCE_METHODS:
    return embed.ReferenceEncoder(method, dim, data_dir, seed=0)
  return embed.load_encoder(run_dir, data_dir, batch_size=64)[0]


def retrieval_grid(path, data_dir, pretrain_dir, methods, num_queries, k):
  """Held-out image queries -> top-k catalogue images per method."""
  sessions = builders.load_table(data_dir, 'mmrec_search', 'test')
  rows = np.flatnonzero(sessions['query_is_image'])[:num_queries]
  items = builders.load_table(data_dir, 'mmrec_items', 'catalogue')
  top = {}
  for m in methods:
    run = os.path.join(pretrain_dir, m, 'seed_0')
    if not len(rows) or not os.path.exists(os.path.join(run,
                                                        embed.VECTORS_FILE)):
      continue
    table, _ = vector_table.load(os.path.join(run, embed.VECTORS_FILE))
    q = _encoder(m, run, data_dir, table.shape[1]).image_queries(
        sessions['query_image'][rows])
    if q is not None:
      top[m] = np.argsort(-(_unit(q) @ _unit(table).T), 1)[:, :k]
  if not top:
    return False
  cols = 1 + k * len(top)
  fig = figure.Figure(figsize=(0.9 * cols, 0.95 * len(rows) + 0.4))
  axes = np.asarray(fig.subplots(len(rows), cols, squeeze=False))
  for r, s in enumerate(rows):
    cells = [(sessions['query_image'][s], 'query', None)]
    for m, t in top.items():
      cells += [(items['image'][i], f'{m} #{j + 1}',
                 i == sessions['purchased_item'][s]) for j, i in
                enumerate(t[r])]
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
               'purchased item)', fontsize=9)
  _save(fig, path)
  return True


def simtier_histogram(path, data_dir, vectors_path, num_impressions, bins,
                      chunk=2048):
  """Target-behaviour cosines of test impressions, clicked vs. not."""
  source = builders.data_source(data_dir, 'mmrec_impressions', 'test')
  n = min(num_impressions, len(source))
  idx = np.sort(np.random.default_rng(0).choice(len(source), n,
                                                replace=False))
  v = _unit(vector_table.load(vectors_path)[0])
  sims = {True: [], False: []}
  for lo in range(0, n, chunk):
    b = builders.read_rows(source, idx[lo:lo + chunk])
    length = b['seq_item'].shape[1]
    valid = np.arange(length)[None] >= length - b['seq_len'][:, None]
    cos = np.einsum('bd,btd->bt', v[b['item_id']], v[b['seq_item']])
    for clicked in (True, False):
      sims[clicked].append(cos[valid & ((b['label'] > 0) == clicked)[:, None]])
  sims = {k: np.concatenate(s) for k, s in sims.items()}
  fig = figure.Figure(figsize=(6, 3.5))
  ax = fig.subplots()
  edges = np.linspace(-1, 1, bins + 1)
  for clicked, colour in ((True, 'tab:red'), (False, 'tab:blue')):
    s = sims[clicked]
    label = f'{"clicked" if clicked else "not clicked"} (mean {s.mean():.3f})'
    ax.hist(s, bins=edges, density=True, histtype='step', lw=2, color=colour,
            label=label)
  ax.set_xlabel('cosine(target, behaviour item)')
  ax.set_ylabel('density')
  ax.set_title(f'SimTier similarities on {n} test impressions')
  ax.legend(fontsize=8)
  _save(fig, path)
  return {'impressions': n, 'clicked_mean': float(sims[True].mean()),
          'not_clicked_mean': float(sims[False].mean())}


# --------------------------------------------------------------------------
# report.md


def _f(x, digits=4):
  return 'n/a' if x is None else f'{x:.{digits}f}'


def _ms(cell, digits=2):
  if not cell or cell.get('mean') is None:
    return 'n/a'
  return f'{cell["mean"]:.{digits}f} ± {_f(cell.get("std"), digits)}'


def _claims_md(claims):
  lines = ['| claim | measured | criterion | reproduced |', '|---|---|---|---|']
  for c in claims:
    measured = 'n/a' if c['measured'] is None else ', '.join(
        f'{k} {_f(v)}' for k, v in c['measured'].items())
    verdict = ('yes' if c['reproduced'] else 'no') if c['testable'] else (
        'not testable')
    lines.append(f'| {c["claim"]} | {measured} | {c["criterion"]} | '
                 f'{verdict} |')
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
        _ms((row['slices'].get(s) or {}).get('delta_gauc_pct'))
        for s in names) + ' |')
  return '\n'.join(lines)


def _world_md(world):
  lines = ['| statistic | value |', '|---|---|']
  lines += [f'| {k} | {_f(v) if isinstance(v, float) else v} |'
            for k, v in world['statistics'].items()]
  lines += ['', '| scorer (honesty check) | AUC all | AUC new items |',
            '|---|---|---|']
  lines += [f'| {k} | {_f(v["all"])} | {_f(v["new_items"])} |'
            for k, v in world['honesty_auc'].items()]
  o = world['oracle_ceiling'] or {}
  verdict = 'OK' if world['honesty_ok'] else 'VIOLATED: ' + '; '.join(
      world['honesty_problems'])
  lines += ['', f'Honesty orderings: {verdict}.',
            f'Oracle ceiling (true click probabilities on the test day): '
            f'AUC {_f(o.get("auc"))}, GAUC {_f(o.get("gauc"))}, '
            f'logloss {_f(o.get("logloss"))}.']
  return '\n'.join(lines)


def _curves_md(curves):
  lines = ['| epoch | AUC | GAUC | logloss |', '|---|---|---|---|']
  lines += [f'| {h["epoch_fraction"]:.2f} | {_f(h["auc"])} | {_f(h["gauc"])} '
            f'| {_f(h["logloss"])} |' for h in curves['one_epoch']['history']]
  lines += ['', '| MAKE stage-A epochs | final AUC | final GAUC |',
            '|---|---|---|']
  lines += [f'| {r["stage_a_epochs"]} | {_f(r["auc"])} | {_f(r["gauc"])} |'
            for r in curves['make_epochs']]
  return '\n'.join(lines)


def write(workdir, config, results, curves, progress, *, data_dir,
          pretrain_dir, vectors_path, elapsed):
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
  methods = [m for m in config.report.grid_methods if m in
             results['pretraining']]
  if retrieval_grid(p(PLOTS[4]), data_dir, pretrain_dir, methods,
                    config.report.retrieval_queries, config.report.retrieval_k):
    made[PLOTS[4]] = (f'Retrieval: held-out image queries, top-'
                      f'{config.report.retrieval_k} by cosine '
                      f'({", ".join(methods)}).')
  hist = simtier_histogram(p(PLOTS[5]), data_dir, vectors_path,
                           config.report.histogram_impressions,
                           config.ctr.ctr.simtier_bins)
  made[PLOTS[5]] = (f'SimTier cosines ({config.vectors_method} vectors): mean '
                    f'{hist["clicked_mean"]:.3f} clicked vs. '
                    f'{hist["not_clicked_mean"]:.3f} not clicked.')
  oracle = results['world']['oracle_ceiling']
  ctr_table = {'variants': ctr}
  if oracle and all(v is not None for v in oracle.values()):
    ctr_table['oracle'] = oracle
  stages = '\n'.join(
      ['| stage | status | compute s | directory |', '|---|---|---|---|'] +
      [f'| {k} | {s["status"]} | {s["seconds"]:.0f} | '
       f'{os.path.relpath(s["dir"], workdir)} |'
       for k, s in progress['stages'].items()])
  missing = [f for f in PLOTS if f not in made]
  text = '\n\n'.join([
      '# Reproduction: Enhancing Taobao Display Advertising with Multimodal '
      'Representations',
      f'Pre-training: {config.pretrain.seeds} seed(s); CTR: '
      f'{config.ctr.seeds} seed(s); CTR item vectors: '
      f'{config.vectors_method} (seed 0). Numbers: `results.json`.',
      '## Claims', _claims_md(results['claims']),
      '## World', _world_md(results['world']),
      '## Pre-training (held-out search sessions)',
      pretrain_sweep.markdown(results['pretraining']),
      '## CTR (test day; deltas vs. the ID model, paired by seed)',
      ctr_sweep.markdown(ctr_table),
      '### GAUC delta % by training-exposure group (group_0 = tail) and on '
      'new items', _slices_md(ctr),
      '### One-epoch curve and MAKE stage-A epochs (seed 0)',
      _curves_md(curves),
      '## Plots', '\n\n'.join(f'![{c}]({f})\n\n*{c}*' for f, c in
                              made.items()) +
      (f'\n\nNot drawn (inputs missing): {", ".join(missing)}.'
       if missing else ''),
      '## Stages', stages,
      f'Wall time of this invocation up to the report: {elapsed:.0f} s; '
      f'compute time of all stages as first run: '
      f'{sum(s["seconds"] for s in progress["stages"].values()):.0f} s.',
  ]) + '\n'
  files.write_text(p(REPORT_FILE), text)
  return list(made)
