"""Pre-training evaluation: held-out retrieval with an encoder's vector
tables, and its result files.

Where the dataset has a search log the queries are its held-out search
sessions (image or text query -> the purchased item), ranked against
paper.md's pool and against the catalogue; without one, held-out co-clicks
ranked against the catalogue (retrieval_eval.py says why). The held-out
queries are split in two fixed parts (retrieval_eval.validation_part):
'validation', what a pipeline chooses on (pretrain_sweep.best_method, the
queue study), and 'test', what tables and claims report; each query is in
the same part for every method and seed. Every method -- trained or a
reference encoder (item_encoder.py) -- is evaluated here, and
`write_results` writes what sweeps and reports read: EVAL_FILE (metrics of
both parts),
QUERIES_FILE (per-query ranks, for paired bootstraps), EXAMPLES_FILE (a few
queries' top-k, for reports) and the vector tables (vector_table.save_tables).
"""

import os
import time
from typing import NamedTuple

from absl import logging
import numpy as np

from mmrec import files
from mmrec import item_encoder
from mmrec import retrieval_eval
from mmrec import train_lib
from mmrec import vector_table
from mmrec.data import builders
from mmrec.data import manifest

EVAL_FILE = 'pretrain_eval.json'
EXAMPLES_FILE = 'retrieval_examples.npz'  # a few queries' top-k, for reports
# Every held-out session's rank of its purchased item (image_rank,
# text_rank: -1 where not that modality; <slice>_rank of every slice), by
# session row, both parts, and VALIDATION_KEY: (queries,) bool, the
# validation part: paired bootstraps of two methods on one part
# (pretrain_sweep.comparisons).
QUERIES_FILE = 'pretrain_eval_queries.npz'
VALIDATION_KEY = 'validation'


def part_rows(ranks, part, where):
  """The rows of one part of the held-out queries: `ranks` ({name: (Q,)}
  with VALIDATION_KEY, as QUERIES_FILE holds them) without the key, each
  array cut to `part`'s rows. `where` names the file in the error."""
  if part not in retrieval_eval.PARTS:
    raise ValueError(f'part must be one of {retrieval_eval.PARTS}, got '
                     f'{part!r}')
  ranks = dict(ranks)
  if VALIDATION_KEY not in ranks:
    raise ValueError(f'{where} has no {VALIDATION_KEY!r} array: written '
                     'before the held-out queries had a validation part; '
                     'rerun the sweep (finished runs are only re-evaluated)')
  rows = dict(_parts(ranks.pop(VALIDATION_KEY)))[part]
  return {k: v[rows] for k, v in ranks.items()}


# What a finished pre-training run has written (files.finished).
RESULT_FILES = (EVAL_FILE, QUERIES_FILE)
# The evaluation tasks (eval_task): held-out search sessions, or held-out
# co-clicks ranked against the catalogue (retrieval_eval.py says why).
SEARCH_EVAL, CO_CLICK_EVAL = 'search', 'co_click'
# Co-click queries drawn from the test split (in a seeded order, each
# distinct (query, answer) pair once), about half of them in each part: a
# recall@10 near 0.1 to about +-0.012 (95%) per part, and the reading stops
# there on a large log.
CO_CLICK_MAX_PAIRS = 5000


def _new_items(data_dir, items):
  return items['launch_day'] >= manifest.load(data_dir).first_test_day


def eval_task(m):
  """SEARCH_EVAL where manifest `m` declares search sessions, else
  CO_CLICK_EVAL (every dataset has impressions)."""
  return (SEARCH_EVAL if m.has(manifest.SEARCH, 'query_text',
                               'purchased_item') else CO_CLICK_EVAL)


_CO_CLICKS = {}  # (data_dir, max_pairs) -> (pairs, candidates)
_SEARCH = {}  # data_dir -> (candidates, canonical)


def _candidates(data_dir, canonical, targets):
  m = manifest.load(data_dir)
  return retrieval_eval.catalogue_candidates(
      canonical, targets, manifest.retrieval_candidates(data_dir, m),
      m.item_zero_reserved)


def search_candidates(data_dir, items, purchased=None):
  """(candidates, canonical) of the search evaluation's catalogue ranking
  (retrieval_eval.py); computed once per process and dataset. `purchased`:
  the held-out sessions' items, read here when not given."""
  key = os.path.abspath(data_dir)
  if key not in _SEARCH:
    if purchased is None:
      purchased = builders.load_table(data_dir, manifest.SEARCH,
                                      'test')['purchased_item']
    canonical = retrieval_eval.canonical_items(items)
    _SEARCH[key] = (_candidates(data_dir, canonical, purchased), canonical)
  return _SEARCH[key]


def co_click_queries(data_dir, items, max_pairs=CO_CLICK_MAX_PAIRS,
                     chunk=4096, seed=0):
  """The co-click evaluation's (pairs, candidates) (retrieval_eval.py).

  Clicks of the test split whose history is not empty, read in a seeded
  order until `max_pairs` distinct (newest behaviour, clicked item) pairs
  are found: the same queries for every method and seed of a dataset.
  Computed once per process and dataset.
  """
  key = (os.path.abspath(data_dir), max_pairs)
  if key not in _CO_CLICKS:
    canonical = retrieval_eval.canonical_items(items)
    source = builders.data_source(data_dir, manifest.IMPRESSIONS, 'test')
    order = np.random.default_rng(seed).permutation(len(source))
    query, target = [], []
    pairs = np.zeros((0, 2), np.int64)
    for lo in range(0, len(order), chunk):
      rows = builders.read_rows(source, order[lo:lo + chunk])
      clicked = (rows['label'] > 0) & (rows['seq_len'] > 0)
      query.append(rows['seq_item'][clicked, -1])  # newest last
      target.append(rows['item_id'][clicked])
      pairs = retrieval_eval.co_click_pairs(
          np.concatenate(query), np.concatenate(target), canonical,
          max_pairs)
      if len(pairs) >= max_pairs:
        break
    _CO_CLICKS[key] = (pairs, _candidates(data_dir, canonical, pairs[:, 1]))
  return _CO_CLICKS[key]


def check_evaluable(data_dir, items=None, method='pre-training'):
  """Raises manifest.DatasetError when the dataset gives the evaluation no
  query (before any training is spent). `items`: the catalogue, read here
  when needed and not given."""
  m = manifest.load(data_dir)
  if eval_task(m) == SEARCH_EVAL:
    return
  if items is None:
    items = builders.load_table(data_dir, manifest.ITEMS, 'catalogue')
  if not len(co_click_queries(data_dir, items)[0]):
    raise manifest.DatasetError(
        f'dataset {m.name!r} has no search log and no test-split click with '
        'a behaviour history (seq_len > 0) of two distinct known items: '
        f'{method}\'s evaluation ranks the catalogue for held-out searches or '
        'co-clicks and has no query (give search.parquet, or histories)')


def held_out_validation(data_dir, items):
  """(queries,) bool: which held-out queries of the dataset (search
  sessions, or co-click pairs) are in the validation part
  (retrieval_eval.validation_part), in evaluate_encoder's order."""
  if eval_task(manifest.load(data_dir)) == SEARCH_EVAL:
    ids = builders.load_table(data_dir, manifest.SEARCH, 'test')['session_id']
    return retrieval_eval.validation_part(ids)
  pairs, _ = co_click_queries(data_dir, items)
  return retrieval_eval.validation_part(retrieval_eval.co_click_keys(pairs))


def eval_info(data_dir, items, validation=None):
  """What `evaluate_encoder` ranks on this dataset: {'task', 'queries' (of
  the test part: what tables and claims count), 'validation_queries',
  'validation_share', 'candidates'}. `validation`: held_out_validation's
  mask, computed here when not given."""
  if validation is None:
    validation = held_out_validation(data_dir, items)
  if eval_task(manifest.load(data_dir)) == SEARCH_EVAL:
    return _info(SEARCH_EVAL, validation, search_candidates(data_dir, items)[0])
  return _info(CO_CLICK_EVAL, validation, co_click_queries(data_dir, items)[1])


def _info(task, validation, candidates):
  return {'task': task, 'queries': int((~validation).sum()),
          'validation_queries': int(validation.sum()),
          'validation_share': retrieval_eval.VALIDATION_SHARE,
          'candidates': int(len(candidates))}


def _rows(tree, rows):
  return {k: v[rows] for k, v in tree.items()}


def _search_metrics(ranks, sessions, new):
  """Every slice's metrics of the sessions in `ranks` (evaluate_encoder's
  per-session ranks, of all held-out sessions or of one part)."""
  pick = lambda suffix: {m: ranks[f'{m}{suffix}'] for m in
                         vector_table.MODALITIES if f'{m}{suffix}' in ranks}
  metrics = retrieval_eval.summarise(pick(''), sessions, new)
  for name, res in retrieval_eval.summarise(pick('_catalogue'), sessions,
                                            new).items():
    metrics[f'{name}_catalogue'] = res
  for m, res in retrieval_eval.summarise(pick('_concept'), sessions).items():
    metrics[f'{m}_concept'] = res
  for m in vector_table.MODALITIES:
    for suffix in ('', '_catalogue'):
      name = f'{m}_on_{m}{suffix}'
      if name in ranks:
        metrics[name] = retrieval_eval.summarise({m: ranks[name]},
                                                 sessions)[m]
  return metrics


class Evaluation(NamedTuple):
  """What evaluate_encoder returns (its docstring says what each holds)."""
  metrics: dict
  tables: dict
  ranks: dict
  validation: np.ndarray
  examples: dict | None
  info: dict  # eval_info's, from the queries and candidates it ranked


def evaluate_encoder(encoder, data_dir, items, num_examples=8, k=8):
  """Held-out retrieval with every vector table of the encoder.

  Returns an Evaluation: metrics, tables, ranks, validation, examples,
  info (eval_info's record, without reading the dataset again).
  metrics: {'validation',
  'test'} (retrieval_eval.PARTS): each part's retrieval_eval.summarise
  slices of the item vector ('image', 'text', 'image_new', 'text_new'; the
  same four with '_catalogue' ranked against the catalogue; on the world
  'image_concept' and 'text_concept', retrieval_eval.concept_ranks) plus
  'image_on_image' and 'text_on_text' (queries of a modality ranked by that
  modality's item table, where the encoder has it; with '_catalogue' against
  the catalogue); `encoder.item_tables`; the per-query ranks of every
  held-out query, both parts (retrieval_eval.query_ranks), under the same
  slice names; and `validation`, (queries,) bool: the validation part
  (retrieval_eval.validation_part). On a dataset without search sessions
  the queries are co-clicks (retrieval_eval.co_click_ranks), which add the
  'item' and 'item_new' slices (the item table on itself). examples: the
  first `num_examples` image queries of the test part, their top-`k`
  catalogue items by cosine and the images of both (what a report draws),
  or None without an image side; co-clicks: the query is the clicked item's
  picture, the answer ('purchased_item') the item clicked on the test day.
  """
  t0 = time.time()
  tables = encoder.item_tables(items.get('image'), items.get('title'))
  logging.info('encoded %d items (%s) in %.1fs', len(tables['item']),
               ', '.join(tables), time.time() - t0)
  new = _new_items(data_dir, items)
  if eval_task(manifest.load(data_dir)) == CO_CLICK_EVAL:
    pairs, candidates = co_click_queries(data_dir, items)
    ranks = retrieval_eval.co_click_ranks(tables, pairs, candidates)
    validation = retrieval_eval.validation_part(
        retrieval_eval.co_click_keys(pairs))
    metrics = {part: retrieval_eval.co_click_summary(
        _rows(ranks, rows), pairs[rows], new)
               for part, rows in _parts(validation)}
    examples = _co_click_examples(encoder, data_dir, items, tables['item'],
                                  num_examples, k, ~validation)
    return Evaluation(metrics, tables, ranks, validation, examples,
                      _info(CO_CLICK_EVAL, validation, candidates))
  sessions = builders.load_table(data_dir, 'mmrec_search', 'test')
  is_image = sessions['query_is_image']

  def queries(fn, inputs, rows):
    idx = np.flatnonzero(rows)
    got = fn(inputs[idx]) if len(idx) else None
    if got is None:
      return None
    full = np.zeros((len(rows), got.shape[1]), np.float32)
    full[idx] = got
    return full

  q = {'image': queries(encoder.image_queries, sessions['query_image'],
                        is_image),
       'text': queries(encoder.text_queries, sessions['query_text'],
                       ~is_image)}
  ranks = retrieval_eval.query_ranks(sessions, tables['item'], q['image'],
                                     q['text'])
  candidates, canonical = search_candidates(data_dir, items,
                                            sessions['purchased_item'])
  catalogue = retrieval_eval.query_ranks(
      sessions, tables['item'], q['image'], q['text'], candidates, canonical)
  ranks.update({f'{m}_catalogue': r for m, r in catalogue.items()})
  oracle = manifest.load(data_dir).oracle
  if oracle:
    with np.load(os.path.join(data_dir, oracle)) as z:
      concept = z['item_concept']  # not the whole oracle: one array
    ranks.update({f'{m}_concept': r for m, r in retrieval_eval.concept_ranks(
        sessions, tables['item'], q['image'], q['text'], candidates,
        concept).items()})
  for m in vector_table.MODALITIES:
    if m in tables and q[m] is not None:
      # Against paper.md's pool and against the catalogue, as the item
      # table: whether the fused vector loses to its own tower's (issue 22)
      # is a question of the harder ranking too.
      for suffix, against in (('', {}), ('_catalogue', dict(
          candidates=candidates, canonical=canonical))):
        own = retrieval_eval.query_ranks(
            sessions, tables[m], **{f'{m}_query_vectors': q[m]}, **against)
        ranks[f'{m}_on_{m}{suffix}'] = own[m]
  validation = retrieval_eval.validation_part(sessions['session_id'])
  asked = {k: sessions[k] for k in ('query_is_image', 'purchased_item')}
  metrics = {part: _search_metrics(_rows(ranks, rows), _rows(asked, rows),
                                   new)
             for part, rows in _parts(validation)}
  # The examples reuse the session table and query vectors read above.
  examples = _search_examples(sessions, q['image'], ~validation, items,
                              tables['item'], num_examples, k)
  return Evaluation(metrics, tables, ranks, validation, examples,
                    _info(SEARCH_EVAL, validation, candidates))


def _parts(validation):
  """(part, its rows) of retrieval_eval.PARTS."""
  return (('validation', validation), ('test', ~validation))


def _search_examples(sessions, image_queries, test, items, vectors,
                     num_queries, k):
  """The first test-part image queries' top-k items (`examples` of
  evaluate_encoder), from the vectors the evaluation computed."""
  rows = np.flatnonzero(sessions['query_is_image'] & test)[:num_queries]
  if image_queries is None or not len(rows):
    return None
  q = image_queries[rows]
  top = np.argsort(-(item_encoder.unit(q) @ item_encoder.unit(vectors).T),
                   1)[:, :k]
  purchased = sessions['purchased_item'][rows]
  return {'query_image': sessions['query_image'][rows], 'top_item': top,
          'top_image': items['image'][top], 'purchased_item': purchased,
          'hit': top == purchased[:, None]}


def _co_click_examples(encoder, data_dir, items, vectors, num_queries, k,
                       test):
  if 'image' not in items:
    return None
  pairs, candidates = co_click_queries(data_dir, items)
  pairs = pairs[test][:num_queries]
  q = (encoder.image_queries(items['image'][pairs[:, 0]]) if len(pairs)
       else None)
  if q is None:
    return None
  sim = item_encoder.unit(q) @ item_encoder.unit(vectors[candidates]).T
  sim[candidates[None] == pairs[:, :1]] = -np.inf  # not the query's own item
  top = candidates[np.argsort(-sim, 1)[:, :k]]
  return {'query_image': items['image'][pairs[:, 0]], 'top_item': top,
          'top_image': items['image'][top], 'purchased_item': pairs[:, 1],
          'hit': top == pairs[:, 1:]}


def write_results(workdir, encoder, data_dir, items, info):
  """Evaluates `encoder`, writes the vector tables and result files to
  `workdir`; returns the EVAL_FILE record: `info` ({'method', 'seed',
  'step'}), 'data_dir', 'eval' (eval_info), 'metrics' (the test part's
  slices: what tables and claims report) and 'validation_metrics' (the
  validation part's: what a pipeline chooses on)."""
  metrics, tables, ranks, validation, examples, ev = evaluate_encoder(
      encoder, data_dir, items)
  vector_table.save_tables(workdir, tables, dict(
      info, encoder_workdir=workdir, data_dir=data_dir))
  result = dict(info, data_dir=data_dir, eval=ev,
                metrics=metrics['test'],
                validation_metrics=metrics['validation'])
  if examples is not None:
    files.write_npz(os.path.join(workdir, EXAMPLES_FILE), examples)
  files.write_npz(os.path.join(workdir, QUERIES_FILE), dict(
      {f'{m}_rank': r for m, r in ranks.items()},
      **{VALIDATION_KEY: validation}))
  files.write_json(os.path.join(workdir, EVAL_FILE), result)
  writer = train_lib.MetricWriter(workdir)
  # The test part under 'eval/', as before the split; 'eval_validation/'.
  for part, by_slice in metrics.items():
    writer.write(info['step'], {f'{name}/{k}': v
                                for name, r in by_slice.items() if r
                                for k, v in r.items() if k != 'queries'},
                 prefix='eval/' if part == 'test' else f'eval_{part}/')
  writer.close()
  for part in retrieval_eval.PARTS:
    for name, r in metrics[part].items():
      if r:
        logging.info('%s %-10s %-10s accuracy@1 %.4f recall@10 %.4f (%d '
                     'queries)', info['method'], part, name, r['accuracy@1'],
                     r['recall@10'], r['queries'])
  return result


def finished(workdir):
  """A finished run's EVAL_FILE record (files.finished), or None: also for
  a run evaluated before the validation part existed (no
  'validation_metrics'), which runs again and, resuming from its final
  checkpoint, is only evaluated."""
  result = files.finished(workdir, RESULT_FILES)
  return result if result and 'validation_metrics' in result else None
