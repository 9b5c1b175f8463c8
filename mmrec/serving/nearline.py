"""Near-line training: the batch CTR model keeps learning from the logged
impressions, segment by segment, and each step forward is served.

`run(config, workdir)` (experiments/configs/nearline.py) warm-starts from the
batch run's latest checkpoint (`config.ctr_workdir`: its model, optimizer
state and config), then for every closed segment of `config.log_dir`
(impression_log.py), in order:

  workdir/seg-{n}/   a `train_lib.fit` run over segment n (the same loop as
                     offline training: checkpoints with the data position,
                     metrics), starting from the state segment n-1 ended with

Segment n's trained state is its run's final checkpoint (orbax renames a
step directory into place whole). Once that exists and its version is
exported, the segment is committed by a marker, workdir/seg-{n}/COMMITTED
(written aside, synced and renamed): the segment, its steps, the global step
after it, its final checkpoint (relative to the workdir; null: the batch
checkpoint) and the version serving it. A (re)started job resumes after the
newest marker, from the checkpoint and global step it names: segments up to
it are never read again, so the log may delete them (impression_log.py's
retention) and a restart neither trains from the batch checkpoint again nor
numbers a version lower than one it exported. Killed anywhere, the trainer
restarts at the first uncommitted segment, from that segment's own latest
checkpoint (state and data position, as any resumed `fit`) or else from the
previous segment's final state: no segment is trained twice or skipped, and
the result equals the uninterrupted run's. A segment with fewer impressions
than a batch is committed with 0 steps; a segment's last (records mod batch)
impressions are not trained, so the compiled step keeps one shape. The job
names its workdir in the log (impression_log.NEARLINE_POINTER), so the log's
writer reads these markers without being told where they are.

Items the service added after the batch run (ids past its item table) are
trained like any item: the model's item table has `config.item_capacity`
rows (as the exported one), new rows zero (the served cold-start row), and
a model reading vectors gets their rows from the serving store. Every
batch's ids are checked against the items that exist; a non-finite loss
stops the segment before it is committed (train_lib.NonFiniteError).

After training segment n the model is exported into `config.serving_dir`
as version v{batch step + steps through n}, and `models/CURRENT` points at
it: the service hot-reloads it. The export is idempotent, and the marker
comes after it, so a kill between the final checkpoint and the export only
delays it to the restart (which finds the checkpoint and trains nothing).
A version is never exported under a number below a whole version already in
`models/` (that would roll the service back): the job stops instead (or, if
that number is itself there whole, leaves it: a workdir from before the
markers walks its log again).
"""

import dataclasses
import os
import time

from absl import logging
import grain
import jax
import jax.numpy as jnp
import numpy as np

from mmrec import checkpointing
from mmrec import ctr_data
from mmrec import ctr_eval
from mmrec import ctr_model
from mmrec import ctr_steps
from mmrec import embedding as embedding_lib
from mmrec import files
from mmrec import sharding
from mmrec import train_lib
from mmrec import vector_table
from mmrec.data import pipelines
from mmrec.data import resolver
from mmrec.serving import impression_log
from mmrec.serving import layout
from mmrec.serving import model_export
from mmrec.serving import vector_store

RESULT_FILE = 'nearline.json'


def _latest_step_dir(workdir):
  ckpt_dir = os.path.join(workdir, checkpointing.SUBDIR)
  if not os.path.isdir(ckpt_dir):
    return None, None
  with checkpointing.Checkpointer(ckpt_dir, read_only=True) as ckpt:
    step = ckpt.latest_step()
  return step, (None if step is None else os.path.join(ckpt_dir, str(step)))


@dataclasses.dataclass(frozen=True)
class _ReadSegmentRows(grain.transforms.Map):
  """Batch of record indices -> a batch of the segment's rows; with
  `embedding`, every batch's ids are checked against its vocabularies (a
  device lookup past a table gives NaN, not an error)."""
  path: str
  embedding: embedding_lib.EmbeddingConfig | None = None

  def map(self, indices):
    batch = impression_log.read_rows(self.path, indices.tolist())
    if self.embedding is not None:
      try:
        embedding_lib.check_ids(batch, self.embedding)
      except ValueError as e:
        raise ValueError(f'segment {self.path}, records '
                         f'{indices[0]}..: {e}') from e
    return batch


def segment_dataset(path, batch_size, *, seed=0, shuffle=True,
                    embedding=None):
  """grain batches of one closed segment (full batches when shuffled); one
  process: the near-line trainer runs on one host. `embedding`: the
  vocabularies every batch's ids are checked against."""
  ds = grain.MapDataset.range(impression_log.num_records(path))
  if shuffle:
    ds = ds.shuffle(seed=seed)
  return ds.batch(batch_size, drop_remainder=shuffle).map(
      _ReadSegmentRows(path, embedding))


def _is_item_table(path):
  """A leaf of the item ID table (its params or its optimizer moments)."""
  keys = [getattr(k, 'key', getattr(k, 'name', None)) for k in path]
  return any(keys[i:i + 3] == ['embed', 'item', 'embedding']
             for i in range(len(keys)))


def restore_grown(step_dir, state, rows):
  """The TrainState saved in `step_dir`, whose item ID table (and its
  optimizer moments) has `rows` rows, into `state`'s shapes: rows past
  `rows` are zeros (a new item's ID embedding starts as the exported
  model's padding row does, and Adam's moments as a fresh parameter's)."""
  capacity = []

  def as_saved(path, x):
    if _is_item_table(path) and x.shape[0] != rows:
      capacity.append(x.shape[0])
      # Replicated: `rows` need not divide over the mesh's 'model' axis.
      sharding = jax.sharding.NamedSharding(x.sharding.mesh,
                                            jax.sharding.PartitionSpec())
      return jax.ShapeDtypeStruct((rows,) + x.shape[1:], x.dtype,
                                  sharding=sharding)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)

  target = jax.tree_util.tree_map_with_path(as_saved, state)
  restored, _ = checkpointing.restore_from(step_dir, target)
  if not capacity:
    return restored
  return jax.tree.map(
      lambda r, x: r if r.shape == x.shape else jnp.pad(
          r, [(0, x.shape[0] - r.shape[0])] + [(0, 0)] * (r.ndim - 1)),
      restored, state)


def _warm_start(source, rows):
  """on_start: the whole state (params, optimizer, batch stats) of a step
  directory (item table of `rows` rows, grown), with the step counter back
  at 0 (a segment's own steps)."""

  def on_start(state):
    restored = restore_grown(source, state, rows)
    return restored.replace(step=jnp.zeros_like(restored.step))
  return on_start


class Trainer:
  """The batch run's model and programs, and the segments' runs."""

  def __init__(self, config, workdir):
    self.config, self.workdir = config, workdir
    self.base_step, self.base_dir = _latest_step_dir(config.ctr_workdir)
    if self.base_dir is None:
      raise FileNotFoundError(f'config.ctr_workdir={config.ctr_workdir} holds '
                              'no checkpoint: train the batch model first')
    c = model_export.saved_config(self.base_dir)
    if c.retrieve_top_k:
      raise ValueError('near-line training of a GSU model is not supported')
    if config.batch_size:
      c.batch_size = config.batch_size
    self.ctr = c
    # As the batch run saw it: with `validation`, its last training day is
    # the 'validation' split (what a near-line replay of that day reads).
    self.data = ctr_data.CtrData.load(
        resolver.recorded_data_dir(c, config.ctr_workdir),
        validation=bool(c.validation))
    # Items added through the service (ids >= the batch model's) appear in
    # the log: the item table grows to the export's capacity, new rows zero
    # (as the served model pads it), so they train like any item.
    self.trained_items = self.data.sizes['num_items']
    self.capacity = max(config.item_capacity, self.trained_items)
    self.model = model_export.with_item_capacity(
        ctr_model.build_model(c, self.data.sizes), self.capacity)
    self.mesh = sharding.make_mesh(c.mesh.data, c.mesh.model)
    self._base_vectors = ctr_data.host_vectors(c, self.trained_items)
    self.known_items = None
    self.vectors = self.vectors_key = None
    self.refresh_items()

  def refresh_items(self):
    """Reads how many items exist (the serving store's count, which holds
    the service's new items; else the batch model's) and, for a model that
    reads vectors, their rows into the (capacity, Dv) table (zeros past
    them). Returns the number of items ids may name."""
    known, rows = self.trained_items, None
    store_dir = (os.path.join(self.config.serving_dir, layout.VECTORS)
                 if self.config.serving_dir else '')
    if store_dir and vector_store.versions(store_dir):
      with vector_store.VectorStore(store_dir, verify=False) as store:
        known = min(max(store.count, known), self.capacity)
        if self._base_vectors is not None and known > self.trained_items:
          rows = store.dense(self.trained_items, known)
    if known == self.known_items:
      return known
    host = self._base_vectors
    if host is not None:
      if rows is not None and host.dtype != rows.dtype:
        raise ValueError(
            f'the serving store holds {rows.dtype} vectors, the batch model '
            f'reads {host.dtype}: new items cannot be trained near-line')
      grown = np.zeros((self.capacity,) + host.shape[1:], host.dtype)
      grown[:len(host)] = host
      if rows is not None:
        grown[self.trained_items:known] = rows
      host = grown
    self.vectors = vector_table.put(host, self.mesh)
    self.vectors_key = ctr_steps.shape_key(host)
    self.known_items = known
    return known

  def saved_rows(self, step_dir):
    """Rows of the item table saved in `step_dir`: the batch run's, or a
    segment's (grown)."""
    return self.trained_items if step_dir == self.base_dir else self.capacity

  def programs(self, example):
    return ctr_steps.programs(
        self.model, ctr_steps.opt_spec(self.ctr, self.model), self.mesh,
        ctr_steps.shape_key(example), self.vectors_key)

  def segment(self, n, path, previous):
    """Trains segment n (or finds it committed); returns (its final step
    directory or the `previous` one if it had no full batch, steps)."""
    c = self.ctr
    seg_dir = os.path.join(self.workdir,
                           impression_log.NEARLINE_SEGMENT.format(n))
    steps = impression_log.num_records(path) // c.batch_size
    if steps == 0:
      return previous, 0
    # Ids of every batch (not only the first) against the items that
    # exist now: the store's, which the segment's new items were added to
    # before they were shown.
    known = self.refresh_items()
    emb = self.model.config.embedding
    ds = segment_dataset(path, c.batch_size, seed=c.seed + n,
                         embedding=dataclasses.replace(emb, num_items=known))
    example = {k: v[:2] for k, v in ds[0].items()}
    progs = self.programs(example)
    loop = train_lib.Loop(
        name=f'nearline/seg-{n:06d}', workdir=seg_dir, num_steps=steps,
        batch_size=c.batch_size, seed=c.seed + n, config=c,
        checkpoint_every=self.config.checkpoint_every,
        log_every=max(1, min(c.log_every, steps)),
        on_start=_warm_start(previous, self.saved_rows(previous)),
        finite_metrics=('loss',))  # a NaN segment is never committed
    res = train_lib.fit(loop, progs.train,
                        pipelines.iterator(ds, prefetch_threads=1), self.mesh,
                        (self.vectors,))
    if res.step != steps:
      raise RuntimeError(f'segment {n} stopped at step {res.step} of {steps}')
    return os.path.join(seg_dir, checkpointing.SUBDIR, str(steps)), steps

  def state(self, step_dir):
    """The TrainState saved in a step directory (for evaluation)."""
    example = {k: v[:2] for k, v in self.data.dataset(
        'test', self.ctr.eval_batch_size)[0].items()}
    progs = self.programs(example)
    state = restore_grown(step_dir, progs.train.init_state(jax.random.key(0)),
                          self.saved_rows(step_dir))
    return state, progs

  def evaluate(self, step_dir, split='test'):
    state, progs = self.state(step_dir)
    pred = ctr_eval.predict(progs.eval_step, state, self.vectors, self.data,
                            self.ctr.eval_batch_size, self.mesh, split)
    return ctr_eval.ctr_metrics(pred)

  def export(self, step_dir, version_step):
    """models/v{version_step} of the state in `step_dir` (once), through
    the export job's path (model_export.export_version)."""
    def variables():
      state, _ = self.state(step_dir)
      return jax.tree.map(np.asarray, {'params': state.params, **state.extra})
    return model_export.export_version(
        self.config, self.config.serving_dir, version_step, self.model,
        variables, self.ctr, self.data, step_dir)


def replay_day(config, trainer):
  """Writes `config.replay_split`'s impressions as segments into the log
  (once: a log that has segments is left as it is)."""
  if impression_log.closed_segments(config.log_dir):
    return
  ds = trainer.data.dataset(config.replay_split, 1024)
  rows = config.replay_rows or trainer.data.num_rows(config.replay_split)
  batches, seen = [], 0
  for i in range(len(ds)):
    if seen >= rows:
      break
    b = {k: v[:rows - seen] for k, v in ds[i].items()}
    batches.append(b)
    seen += len(b['label'])
  impression_log.replay(batches, config.log_dir, config.segment_records)


def _write_marker(workdir, marker):
  """Commits segment marker['segment']: its COMMITTED file, written aside,
  synced and renamed (a reader sees the whole marker or none)."""
  seg_dir = os.path.join(workdir, impression_log.NEARLINE_SEGMENT.format(
      marker['segment']))
  os.makedirs(seg_dir, exist_ok=True)
  files.write_json(os.path.join(seg_dir, impression_log.NEARLINE_COMMITTED),
                   marker, durable=True)


def resume_point(workdir, trainer, segments):
  """(newest committed segment or -1, its checkpoint, global step, version
  number or None): where the job goes on from. Without markers, the batch
  checkpoint; a workdir whose trained segments left the log without being
  marked (written before the markers) cannot say where it was: refused."""
  markers = impression_log.committed_markers(workdir)
  if markers:
    newest = max(markers)
    m = markers[newest]
    checkpoint = (trainer.base_dir if m['checkpoint'] is None else
                  os.path.join(workdir, m['checkpoint']))
    if m['checkpoint'] is not None and not os.path.isdir(checkpoint):
      raise FileNotFoundError(
          f'{workdir}: segment {newest} is committed with checkpoint '
          f'{checkpoint}, which is gone: near-line cannot resume from it')
    return newest, checkpoint, m['global_step'], m['version']
  in_log = {n for n, _ in segments}
  prefix = impression_log.PREFIX
  trained = [name[len(prefix):] for name in
             (os.listdir(workdir) if os.path.isdir(workdir) else ())
             if name.startswith(prefix)]
  gone = sorted(int(n) for n in trained if n.isdigit() and int(n) not in in_log)
  if gone:
    raise ValueError(
        f'{workdir} trained segments {gone[:5]}{"..." if len(gone) > 5 else ""}'
        ' that are no longer in the log, and holds no COMMITTED marker (a '
        'workdir from before the markers): it cannot tell where to resume; '
        'start near-line in a new workdir (it trains the segments left)')
  return -1, trainer.base_dir, trainer.base_step, None


def _should_export(serving_dir, step):
  """Whether to export v{step}: not if that would roll `serving_dir`'s
  models back. A whole version numbered above it: v{step} itself whole
  (a workdir from before the markers walking its log again) is left as it
  is (False); missing, it is refused."""
  models = os.path.join(serving_dir, model_export.MODELS)

  def whole(name):
    return os.path.exists(os.path.join(models, name, model_export.MANIFEST))
  newer = sorted(
      int(name[1:]) for name in
      (os.listdir(models) if os.path.isdir(models) else ())
      if name[:1] == 'v' and name[1:].isdigit() and int(name[1:]) > step and
      whole(name))
  if not newer:
    return True
  if whole(f'v{step}'):
    return False
  raise RuntimeError(
      f'{models} holds v{newer[-1]}, newer than the v{step} near-line would '
      'export (a near-line workdir that lost its COMMITTED markers, or a '
      'newer batch export): refusing to roll the service back')


def run(config, workdir):
  """The near-line job: every closed segment after the newest committed one,
  in order (then, with `config.follow`, new ones as they close)."""
  if not config.ctr_workdir:
    raise ValueError('config.ctr_workdir must name the batch CTR run')
  config.log_dir = config.log_dir or os.path.join(workdir, 'log')
  trainer = Trainer(config, workdir)
  if config.replay_split:
    replay_day(config, trainer)
  newest, previous, total, version = resume_point(
      workdir, trainer, impression_log.closed_segments(config.log_dir))
  if newest >= 0:
    logging.info('near-line resumes after segment %d (global step %d, '
                 'version %s)', newest, total, version)
  # Names this workdir in the log: its writer retires what is marked here.
  os.makedirs(config.log_dir, exist_ok=True)
  files.write_json(os.path.join(config.log_dir,
                                impression_log.NEARLINE_POINTER),
                   {'workdir': os.path.abspath(workdir)})
  trained = 0
  history = []
  while True:
    pending = [(n, p) for n, p in impression_log.closed_segments(
        config.log_dir) if n > newest]
    if config.max_segments:
      pending = pending[:max(0, config.max_segments - trained)]
    for n, path in pending:
      if n != newest + 1 and newest >= 0:
        logging.warning('near-line: segments %d..%d are not in the log '
                        '(deleted untrained); going on with %d',
                        newest + 1, n - 1, n)
      t0 = time.time()
      previous, steps = trainer.segment(n, path, previous)
      total += steps
      # Wall-clock times, so a watcher of the service can line them up with
      # when each version went live (segment close -> serving).
      entry = {'segment': n, 'steps': steps, 'global_step': total,
               'closed_at': os.path.getmtime(path), 'started_at': t0,
               'committed_at': time.time()}
      if config.serving_dir and steps:
        if _should_export(config.serving_dir, total):
          trainer.export(previous, total)
          entry['exported_at'] = time.time()
        version = total
      _write_marker(workdir, {
          'segment': n, 'steps': steps, 'global_step': total,
          'batch_step': trainer.base_step,
          'checkpoint': (None if previous == trainer.base_dir else
                         os.path.relpath(previous, workdir)),
          'version': version,
          'records': impression_log.num_records(path)})
      newest, trained = n, trained + 1
      history.append(entry)
      logging.info('near-line segment %d: %s', n, entry)
    if not config.follow or (config.max_segments and
                             trained >= config.max_segments):
      break
    time.sleep(config.poll_s)
  result = {'batch_step': trainer.base_step, 'final_step': total,
            'data_dir': trainer.data.data_dir, 'segments': history}
  if config.evaluate:
    result['frozen'] = trainer.evaluate(trainer.base_dir)
    result['nearline'] = trainer.evaluate(previous)
    logging.info('test day: frozen auc %.4f gauc %.4f; near-line auc %.4f '
                 'gauc %.4f', result['frozen']['auc'],
                 result['frozen']['gauc'], result['nearline']['auc'],
                 result['nearline']['gauc'])
  files.write_json(os.path.join(workdir, RESULT_FILE),
                   files.json_safe(result))
  return result
