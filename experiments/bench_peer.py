r"""The `peer` benchmark: our CTR step beside the authors' (alimama-tech/MUSE,
PyTorch), on identical data, alternating, in one run.

  python -m experiments.main --config=experiments/configs/bench.py \
      --config.benchmarks=peer --config.peer.muse_dir=/tmp/muse \
      --config.peer.python=/tmp/peervenv/bin/python --workdir=bench_peer

Optional: it needs a MUSE checkout and a Python with torch (the `[peer]`
extra, or a separate venv named by config.peer.python); `make bench` and
`make test` never run it.

1. `write_muse_layout` writes the synthetic batches of the `ctr_train`
   benchmark (bench_train.ctr_batches: B 1000, a 1000-long history, 16-d
   ids, 128-d int8 vectors) in the layout MUSE's trainer reads: one
   `train-shard-NNNNN.parquet` per batch (a row per impression, Taobao-MM's
   columns), `feature_map/*_sorted_map*.npy` and the int8 SCL table. Raw ids
   are ours + 1 (MUSE maps raw 0, and any unknown id, to its padding row).
2. MUSE's trainer runs in its own process (muse_worker.py, under
   config.peer.python) with its `din` method, the batches read once through
   its own loader and kept in memory; ours is bench_train.ctr_stepper at the
   `ctr_train` GSU setting (top-50 of the 1000 by cosine, attention over
   those, SimTier over the 50 most recent) with MUSE's attention form
   (`ATTENTION`), on the same batches (each side cycles the `num_batches` in
   shard order).
3. `runs` alternating runs of `steps` steps each: MUSE's step without its
   per-step metric bookkeeping, MUSE's step as its train_epoch runs it (with
   the per-step AUC / GAUC it logs), ours, then ours with DIN's scorer MLP
   and Dice in the attention (ctr.py's default form, more work than MUSE's:
   `ours_din_scorer`). examples/s are medians over runs; the ratios are per
   alternating pair (same load), median and range.

Equal work, not identical models: both retrieve the top-k of the long
history by cosine and attend over the recent 50; MUSE's `din` also runs an
attention over the retrieved (output zeroed) and SimTier over both, and it
embeds 5 user and 4 target fields (fields our world lacks are written as a
one-value vocabulary: 130_4, 130_5, 214).

4. Quality (config.peer.quality_steps > 0): the speed batches' labels are
   random, so a second world with a planted signal (`learnable_batches`) is
   written in the same layout; each side trains one pass over the same
   batches from each seed of quality_seeds (its own defaults: MUSE's
   config/din.json learning rates, ours experiments/configs/ctr.py's) and
   scores the same test rows; AUC and GAUC (by user) by our metrics. With
   quality_epochs > 1 each side makes that many passes over the batches and
   is scored after each (a curve, to see whether both have converged), and
   each side's best pass is chosen on a validation draw of the same world.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from experiments import bench_train
from mmrec import ctr_data
from mmrec import files
from mmrec import int8
from mmrec import metrics

# MUSE's columns (trainer.FEATURE_BLOCKS, utils/muse_dataset.py).
USER_COLUMNS = ('130_1', '130_2', '130_3', '130_4', '130_5')
TARGET_COLUMNS = ('213', '214')  # besides 205 (item) and 206 (category)
ITEM, CATEGORY, USER = '205', '206', '129_1'
SEQ_ITEM, SEQ_CATEGORY = '150_2_180', '151_2_180'
# Embedded by MUSE's FeatureEmbeddingDict, each with `<name>_sorted_map.npy`.
EMBEDDED = (USER, *USER_COLUMNS, SEQ_ITEM, SEQ_CATEGORY, *TARGET_COLUMNS)
RECENT = 50  # MUSE's trainer slices the 50 most recent (transform_batch)
# MUSE's `din` attends over the recent 50 with a dot product of projected
# query and keys and a softmax (model/base_model/layers.py, MultiHeadAtt):
# our 'dot' form. Equal work is ours in that form.
ATTENTION = 'dot'
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      'muse_worker.py')


def muse_columns(sizes):
  """{MUSE column: (our batch field or None, vocabulary size)}.

  Our user features fill 130_1.. in order, our non-sequence item features
  213, 214; a column with no field of ours gets the one value 1.
  """
  seq = sizes['seq_features']
  if len(seq) != 1:
    raise ValueError(f'MUSE reads one behaviour feature besides the item '
                     f'({CATEGORY}); the world has seq_features={seq}')
  users = sizes['user_features']
  items = [f for f in sizes['item_features'] if f[0] != seq[0]]
  if len(users) > len(USER_COLUMNS) or len(items) > len(TARGET_COLUMNS):
    raise ValueError(
        f'MUSE has {len(USER_COLUMNS)} user and {len(TARGET_COLUMNS)} extra '
        f'target columns; the world has user_features={users}, other '
        f'item_features={items}')
  item_sizes = dict(sizes['item_features'])
  out = {USER: ('user_id', sizes['num_users']),
         ITEM: ('item_id', sizes['num_items']),
         CATEGORY: (seq[0], item_sizes[seq[0]])}
  for cols, fields in ((USER_COLUMNS, users), (TARGET_COLUMNS, items)):
    for i, col in enumerate(cols):
      out[col] = fields[i] if i < len(fields) else (None, 1)
  return out


def _raw(ids):
  """Our ids as MUSE raw ids: + 1, so that 0 stays its padding."""
  return ids.astype(np.int64) + 1


def _shard_table(batch, columns):
  """One batch as a MUSE shard: a row per impression, the history unpadded
  (its masked positions dropped; MUSE left-pads it again with 0)."""
  b = len(batch['label'])
  y = batch['label'].astype(np.int8)
  arrays = {'label_0': pa.ListArray.from_arrays(  # one-hot [1 - y, y]
      pa.array(np.arange(0, 2 * b + 1, 2, dtype=np.int32)),
      pa.array(np.stack([1 - y, y], 1).ravel()))}
  for col, (field, _) in columns.items():
    arrays[col] = pa.array(_raw(batch[field]) if field
                           else np.ones(b, np.int64))
  mask = batch['long_seq_mask']
  offsets = np.concatenate([[0], np.cumsum(mask.sum(1))]).astype(np.int32)
  for col, field in ((SEQ_ITEM, 'long_seq_item'),
                     (SEQ_CATEGORY, f'long_seq_{columns[CATEGORY][0]}')):
    arrays[col] = pa.ListArray.from_arrays(pa.array(offsets),
                                           pa.array(_raw(batch[field][mask])))
  return pa.table(arrays)


def write_muse_layout(out_dir, train, test, vectors, sizes):
  """Writes batches in MUSE's layout under `out_dir` (built aside).

  train / test: lists of ctr_batches batches (with the long history), one
  shard each; vectors: the int8 item-vector table (num_items, Dv).
  """
  columns = muse_columns(sizes)
  vocab = {col: size for col, (_, size) in columns.items()}
  vocab[SEQ_ITEM], vocab[SEQ_CATEGORY] = vocab[ITEM], vocab[CATEGORY]

  def fill(tmp):
    for split, batches in (('train', train), ('test', test)):
      os.makedirs(os.path.join(tmp, split))
      for i, batch in enumerate(batches):
        pq.write_table(_shard_table(batch, columns),
                       os.path.join(tmp, split, f'{split}-shard-{i:05d}.parquet'))
      files.write_json(os.path.join(tmp, split, 'metadata.json'),
                       {'total_rows': sum(len(b['label']) for b in batches)})
    fmap = os.path.join(tmp, 'feature_map')
    os.makedirs(fmap)
    for col in EMBEDDED:
      keys = _raw(np.arange(vocab[col]))
      np.save(os.path.join(fmap, f'{col}_sorted_map.npy'), keys)
    # config/*.json sets item_id_p90: the item vocabulary under that name too.
    np.save(os.path.join(fmap, f'{SEQ_ITEM}_sorted_map_p90.npy'),
            _raw(np.arange(vocab[ITEM])))
    np.save(os.path.join(fmap, 'scl_emb_int8_p90_keys.npy'),
            _raw(np.arange(len(vectors))))
    np.save(os.path.join(fmap, 'scl_emb_int8_p90_values.npy'),
            np.asarray(vectors, np.int8))

  files.build_aside(out_dir, fill, replace=True)


def learnable_world(rng, sizes, dv=128):
  """Per-item and per-user features, and item vectors near their category's
  centre (so the GSU's cosine finds a category's items): (item_fields,
  user_fields, vectors)."""
  items = {name: rng.integers(0, size, sizes['num_items'])
           for name, size in sizes['item_features']}
  users = {name: rng.integers(0, size, sizes['num_users'])
           for name, size in sizes['user_features']}
  cats = items[sizes['seq_features'][0]]
  centre = rng.normal(size=(cats.max() + 1, dv))
  vectors = centre[cats] + rng.normal(size=(len(cats), dv))
  return items, users, int8.quantize(
      (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(
          np.float32))


def learnable_batches(rng, count, b, sizes, world, history, per_user=10):
  """`count` batches (ctr_batches' fields) with a planted signal both models
  can read: each user has a favourite category; half its history (50 to
  `history` long) is of it; a target is of it with probability 0.3 and
  clicked with probability 0.3 if so, else 0.03. `per_user` impressions
  per user in a batch share its history (GAUC needs several per user)."""
  items, users, _ = world
  cat = sizes['seq_features'][0]
  by_cat = [np.flatnonzero(items[cat] == c) for c in range(items[cat].max() + 1)]
  cats = np.array([c for c, v in enumerate(by_cat) if len(v)])
  if b % per_user:
    raise ValueError(f'batch size {b} is not a multiple of per_user '
                     f'{per_user}')
  out = []
  for _ in range(count):
    n = b // per_user
    fav = rng.choice(cats, n)
    of_fav = lambda f: np.array([by_cat[c][rng.integers(len(by_cat[c]))]
                                 for c in f.ravel()]).reshape(f.shape)
    hist = np.where(rng.random((n, history)) < 0.5,
                    of_fav(np.repeat(fav[:, None], history, 1)),
                    rng.integers(0, sizes['num_items'], (n, history)))
    length = rng.integers(RECENT, history + 1, n)
    mask = np.arange(history)[None] >= history - length[:, None]
    hist = np.where(mask, hist, 0)
    row = np.repeat(np.arange(n), per_user)
    target = np.where(rng.random(b) < 0.3, of_fav(fav[row]),
                      rng.integers(0, sizes['num_items'], b))
    clicked = rng.random(b) < np.where(items[cat][target] == fav[row], 0.3,
                                       0.03)
    user = rng.choice(sizes['num_users'], n, replace=False)[row]
    long = {'long_seq_item': hist[row], 'long_seq_mask': mask[row],
            f'long_seq_{cat}': np.where(mask, items[cat][hist], 0)[row]}
    batch = {'user_id': user, 'item_id': target, 'label': clicked,
             'day': np.zeros(b), **long}
    batch.update({k[5:]: v[:, -RECENT:] for k, v in long.items()})
    batch.update({k: v[user] for k, v in users.items()})
    batch.update({k: v[target] for k, v in items.items()})
    out.append({k: v.astype(bool if k.endswith('mask') else np.int32)
                for k, v in batch.items()})
  return out


class MuseWorker:
  """muse_worker.py in its own process: `run(steps, metrics)` -> seconds."""

  def __init__(self, python, request, log_path):
    self._log = open(log_path, 'w')  # pylint: disable=consider-using-with
    self._proc = subprocess.Popen(  # pylint: disable=consider-using-with
        [python, WORKER, json.dumps(request)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=self._log, text=True)
    self.info = self._reply()

  def _reply(self):
    line = self._proc.stdout.readline()
    if not line:
      self._proc.wait()
      self._log.flush()
      with open(self._log.name) as f:
        tail = f.read()[-3000:]
      raise RuntimeError(f'MUSE worker exited ({self._proc.returncode}); '
                         f'its log {self._log.name} ends:\n{tail}')
    return json.loads(line)

  def ask(self, **cmd):
    self._proc.stdin.write(json.dumps(cmd) + '\n')
    self._proc.stdin.flush()
    return self._reply()

  def close(self):
    if self._proc.poll() is None:
      self._proc.stdin.write(json.dumps({'quit': True}) + '\n')
      self._proc.stdin.close()
      self._proc.wait(timeout=60)
    self._log.close()


def _check(config):
  """A clear error for a missing checkout or interpreter."""
  p = config.peer
  if not p.muse_dir or not os.path.isfile(
      os.path.join(p.muse_dir, 'trainer.py')):
    raise ValueError(
        f'config.peer.muse_dir={p.muse_dir!r} is not a MUSE checkout (no '
        'trainer.py): export github.com/alimama-tech/MUSE there')
  python = p.python or sys.executable
  probe = subprocess.run([python, '-c', 'import torch, pandas, pyarrow'],
                         capture_output=True, text=True, check=False)
  if probe.returncode:
    raise ValueError(
        f'config.peer.python={python!r} cannot import torch, pandas and '
        f'pyarrow (install the [peer] extra there): {probe.stderr[-500:]}')
  return python


def _stats(values):
  return float(np.median(values)), float(np.min(values)), float(np.max(values))


def _quality(config, python, workdir, sizes):
  """Test AUC / GAUC of MUSE's `din` and ours (GSU setting) after each of
  `quality_epochs` passes over the same `quality_steps` batches of a
  learnable world, per seed of `quality_seeds` (model init; the data are
  fixed). With several passes each side's best pass is chosen on a
  validation draw of the same world (mean GAUC over seeds), and its test
  numbers are reported beside the last pass's."""
  p = config.peer
  rng = np.random.default_rng(p.seed + 1)
  world = learnable_world(rng, sizes)
  per_user = int(np.gcd(p.batch_size, 10))
  make = lambda n: learnable_batches(rng, n, p.batch_size, sizes, world,
                                     p.history, per_user)
  train, test = make(p.quality_steps), make(p.quality_test_batches)
  epochs = max(1, p.quality_epochs)
  val = make(p.quality_test_batches) if epochs > 1 else []
  held = val + test  # MUSE scores its test split in order: val rows first
  data_dir = os.path.join(workdir, 'peer_quality_data')
  write_muse_layout(data_dir, train, held, world[2], sizes)
  n_val = sum(len(b['label']) for b in val)
  labels = np.concatenate([b['label'] for b in held])
  users = np.concatenate([b['user_id'] for b in held])
  # scores[side][epoch][seed]: the held-out logits after each pass.
  scores = {'muse': [[] for _ in range(epochs)],
            'ours': [[] for _ in range(epochs)]}
  for seed in p.quality_seeds:
    muse = MuseWorker(python, dict(
        muse_dir=os.path.abspath(p.muse_dir), data_dir=data_dir,
        method=p.method, batch_size=p.batch_size, history=p.history,
        keep_top=p.top_k, num_batches=len(train), seed=seed, warm=0),
        os.path.join(workdir, f'peer_quality_muse_{seed}.log'))
    try:
      for epoch in range(epochs):
        muse.ask(run=len(train), metrics=False)
        scores['muse'][epoch].append(np.array(muse.ask(predict=True)['probs']))
    finally:
      muse.close()
    ours = bench_train.ctr_stepper(
        config, 'simtier_official', train, world[2], warm=0, seed=seed,
        retrieve_top_k=p.top_k, simtier_mask_padding=False,
        attention=ATTENTION)
    for epoch in range(epochs):
      ours.run(len(train))
      scores['ours'][epoch].append(
          np.concatenate([ours.predict(b) for b in held]))
  out = {'quality_train_steps': len(train), 'quality_epochs': epochs,
         'quality_test_rows': len(labels) - n_val,
         'quality_test_positive_rate': round(float(labels[n_val:].mean()), 4),
         'quality_seeds': len(p.quality_seeds)}
  part = {'val': slice(0, n_val), 'test': slice(n_val, None)}
  fns = {'auc': lambda x, s: metrics.auc(labels[s], x[s]),
         'gauc': lambda x, s: metrics.gauc(labels[s], x[s], users[s])}
  span = lambda v: f'{min(v):.4f}-{max(v):.4f}'
  for name, per_epoch in scores.items():
    # curve[metric][epoch] = the test values of the seeds after that pass.
    curve = {m: [[fn(x, part['test']) for x in per_seed]
                 for per_seed in per_epoch] for m, fn in fns.items()}
    for metric, values in curve.items():
      out[f'{name}_test_{metric}'] = round(float(np.mean(values[-1])), 4)
      out[f'{name}_test_{metric}_seed_range'] = span(values[-1])
    if epochs == 1:
      continue
    val_gauc = [np.mean([fns['gauc'](x, part['val']) for x in per_seed])
                for per_seed in per_epoch]
    best = int(np.argmax(val_gauc))
    out[f'{name}_best_epoch'] = best + 1
    for metric, values in curve.items():
      out[f'{name}_test_{metric}_by_epoch'] = [
          round(float(np.mean(v)), 4) for v in values]
      out[f'{name}_test_{metric}_by_epoch_seed_range'] = [
          span(v) for v in values]
      out[f'{name}_test_{metric}_at_best_epoch'] = round(
          float(np.mean(values[best])), 4)
      out[f'{name}_test_{metric}_at_best_epoch_seed_range'] = span(
          values[best])
  return out


def bench_peer(config, workdir):
  """examples/s of MUSE's `din` training step and ours (GSU setting), and
  their ratio: alternating runs on the same batches; see the module doc."""
  p = config.peer
  python = _check(config)
  rng = np.random.default_rng(p.seed)
  sizes = ctr_data.sizes(config.world.to_dict())
  b, top_k = p.batch_size, p.top_k
  vectors = bench_train.unit_int8_vectors(rng, sizes['num_items'], 128)
  make = lambda n: bench_train.ctr_batches(rng, n, b, sizes, RECENT,
                                           long_len=p.history)
  train, test = make(p.num_batches), make(1)
  data_dir = os.path.join(workdir, 'peer_data')
  t0 = time.perf_counter()
  write_muse_layout(data_dir, train, test, vectors, sizes)
  write_s = time.perf_counter() - t0
  muse = MuseWorker(python, dict(
      muse_dir=os.path.abspath(p.muse_dir), data_dir=data_dir,
      method=p.method, batch_size=b, history=p.history, keep_top=top_k,
      num_batches=p.num_batches, seed=p.seed),
      os.path.join(workdir, 'peer_muse.log'))
  try:
    # 'ours': equal work, MUSE's attention form; 'ours_din_scorer': with
    # DIN's scorer MLP + Dice (ctr.py's default form), heavier than MUSE's.
    ours = {name: bench_train.ctr_stepper(
        config, 'simtier_official', train, vectors, retrieve_top_k=top_k,
        simtier_mask_padding=False, attention=form)
            for name, form in (('ours', ATTENTION), ('ours_din_scorer', 'din'))}
    times = {'muse': [], 'muse_with_metrics': [], 'ours': [],
             'ours_din_scorer': []}
    for _ in range(p.runs):
      times['muse'].append(muse.ask(run=p.steps, metrics=False)['seconds'])
      times['muse_with_metrics'].append(
          muse.ask(run=p.steps, metrics=True)['seconds'])
      for name, stepper in ours.items():
        t0 = time.perf_counter()
        stepper.run(p.steps)
        times[name].append(time.perf_counter() - t0)
  finally:
    muse.close()
  rate = {k: b * p.steps / np.array(v) for k, v in times.items()}
  out = {'batch_size': b, 'history': p.history, 'recent': RECENT,
         'gsu_top_k': top_k, 'muse_method': p.method, 'runs': p.runs,
         'steps_per_run': p.steps, 'batches_cycled': p.num_batches,
         'torch': muse.info['torch'], 'torch_threads': muse.info['threads'],
         'write_muse_layout_seconds': round(write_s, 2)}
  for k, r in rate.items():
    out[f'{k}_examples_per_second'] = round(float(np.median(r)))
  for mine, ref in (('ours', 'muse'), ('ours', 'muse_with_metrics'),
                    ('ours_din_scorer', 'muse')):
    med, lo, hi = _stats(rate[mine] / rate[ref])
    out[f'{mine}_over_{ref}'] = round(med, 2)
    out[f'{mine}_over_{ref}_range'] = f'{lo:.2f}-{hi:.2f}'
  if p.quality_steps:
    out.update(_quality(config, python, workdir, sizes))
  return out
