"""When a reproduction's inputs cannot carry its numbers: results.json
`flags` and report.md's "Flags" section.

A claim's verdict says whether an interval excludes zero; it does not say
that what went in was worth testing. Flagged here:
- the CTR item vectors at chance on held-out retrieval (e.g. untrained
  bag-of-tokens vectors picked as "the best" of the one method that ran):
  every content variant then tests the integration with no content signal;
- a CTR slice (new items, the exposure tail) with too few test users having
  both classes for its deltas to mean anything, although the tables print
  them;
- the CTR baseline chosen without a validation split;
- a CTR model that ranks the test day's clicks no better than a random
  ranking (AUC or GAUC at or below 0.5): deltas against it, or of it, say
  nothing about content (the :tiny pipeline's ID model was, with a (16, 8)
  tower and 8-d embeddings: test AUC 0.446, GAUC 0.372);
- an integration variant indistinguishable from the ID model (both its
  AUC and GAUC intervals against `id` within +-INERT_PCT): it ignores what
  it adds, so a claim that ranks another variant above it ranks that
  variant above the ID model (SimScore on the default world once the ID
  search chose the `dot` attention, where its cosine is one learned scalar
  on a softmax logit: +0.00% AUC [-0.01, +0.01]; +1.09% with DIN's).
"""

import math

from experiments import claims
from experiments import ctr_sweep

# Vectors "at chance": recall@K of the item table on held-out queries
# ranked against the whole catalogue (C candidates) is within
# CHANCE_FACTOR of a random ranking's K / C, or not above it at ~95% (one
# sided, normal approximation over the queries). Both: with a large
# catalogue 2x chance is still nothing; with few queries the noise is.
K = 10
CHANCE_FACTOR = 2.0
Z = 1.96
# "Indistinguishable from the ID model": both 95% intervals of the relative
# delta inside +-0.1%, an eighth of the paper's smallest reported gain
# (+0.75% AUC); seed-to-seed noise of a real integration is wider.
INERT_PCT = 0.1
NOT_INTEGRATIONS = ('id', 'id_stats')


def chance_recall(candidates, k=K):
  """recall@k of a random ranking of `candidates` items."""
  return min(1.0, k / max(candidates, 1))


def at_chance(recall, candidates, queries, k=K):
  """True when `recall` (recall@k on `queries` held-out queries ranked
  against `candidates` items) cannot be told apart from chance."""
  p0 = chance_recall(candidates, k)
  se = math.sqrt(p0 * (1 - p0) / max(queries, 1))
  return recall <= max(CHANCE_FACTOR * p0, p0 + Z * se)


def _vector_flags(pretraining, data):
  """The CTR vectors' held-out recall@10 against the catalogue vs. chance:
  the 'item' slice (co-clicks) or the search queries' '_catalogue' slices."""
  v = data.get('ctr_vectors') or {}
  if v.get('source') != 'pretrained':
    return []
  ev = (data.get('pretraining') or {}).get('eval') or {}
  candidates, queries = ev.get('candidates'), ev.get('queries')
  row = pretraining.get(v.get('method')) or {}
  names = ('item',) if row.get('item') else ('image_catalogue',
                                              'text_catalogue')
  recall = {n: ((row.get(n) or {}).get('recall@10') or {}).get('mean')
            for n in names}
  recall = {n: r for n, r in recall.items() if r is not None}
  if not candidates or not queries or not recall:
    return []
  low = {n: r for n, r in recall.items() if at_chance(r, candidates, queries)}
  if not low:
    return []
  chance = chance_recall(candidates)
  where = ', '.join(f'{n} {r:.3f}' for n, r in low.items())
  whole = len(low) == len(recall)
  return [{'id': 'vectors_at_chance', 'text': (
      f'CTR item vectors {v["method"]} are at chance on held-out retrieval '
      f'({"" if whole else "partly: "}recall@10 {where} vs. chance '
      f'{chance:.3f}, {K} of {candidates} candidates, {queries} queries)'
      + (': the content variants read vectors with no measured content '
         'signal, so their deltas test the integration, not the content'
         if whole else ''))}]


def flags(pretraining, ctr, data, baseline=None):
  """[{'id', 'text'}] of what the report's reader must know before reading
  its numbers; [] when nothing is flagged."""
  out = _vector_flags(pretraining, data or {})
  for name, label in (('new', 'New items'),
                      ('tail', f'The exposure tail (groups 0-'
                               f'{ctr_sweep.TAIL_GROUPS - 1})')):
    note = ctr_sweep.support_note(ctr, name, label)
    if note:
      out.append({'id': f'thin_slice_{name}', 'text': note})
  if baseline and baseline.get('why'):
    out.append({'id': 'baseline_not_validated',
                'text': f'CTR baseline: {baseline["why"]}'})
  low = []
  for variant, row in (ctr or {}).items():
    got = {m: ((row.get(m) or {}).get('mean')) for m in ('auc', 'gauc')}
    got = {m: v for m, v in got.items()
           if v is not None and math.isfinite(v)}
    if any(v <= 0.5 for v in got.values()):
      low.append(f'{variant} (' + ', '.join(
          f'{m.upper()} {v:.3f}' for m, v in got.items()) + ')')
  if low:
    out.append({'id': 'ctr_at_chance', 'text': (
        'At or below chance on the test day (AUC or GAUC <= 0.5, a random '
        'ranking\'s value): ' + '; '.join(low) + '. These models did not '
        'learn to rank clicks: deltas against or of them say nothing about '
        'content')})
  inert = _inert_variants(ctr or {})
  if inert:
    hint = (' (SimScore\'s cosine enters only the attention scores: see the '
            'attention form the ID search chose)'
            if any(v.startswith('simscore') for v in inert) else '')
    out.append({'id': 'inert_variant', 'text': (
        'Indistinguishable from the ID model (AUC and GAUC intervals vs. id '
        f'within +-{INERT_PCT:g}%): ' + '; '.join(
            f'{v} ({c})' for v, c in inert.items()) + '. These integrations '
        f'do not use what they add{hint}; a claim that another variant beats '
        'them is a claim over the ID model')})
  return out


def _inert_variants(ctr):
  """{variant: 'ΔAUC % [lo, hi], ΔGAUC % [lo, hi]'} of each integration
  whose intervals vs. id both lie inside +-INERT_PCT."""
  out = {}
  for variant in ctr:
    if variant in NOT_INTEGRATIONS:
      continue
    cells = claims.boot(ctr, variant).get('all') or {}
    cis = [(cells.get(m) or {}).get('ci_pct') for m in ('auc', 'gauc')]
    if all(ci and max(abs(x) for x in ci) <= INERT_PCT for ci in cis):
      out[variant] = ', '.join(f'Δ{m} % [{ci[0]:+.2f}, {ci[1]:+.2f}]'
                               for m, ci in zip(('AUC', 'GAUC'), cis))
  return out
