"""Tests for near-line training (mmrec.serving.impression_log + mmrec.serving.nearline):
segments rotate and read back whole; the trainer warm-starts from the batch
run, exports a version per segment, and killed mid-segment (or between a
commit and its export), then restarted, ends exactly where an uninterrupted
run does, having trained every segment once."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from unittest import mock
import warnings

from absl.testing import absltest
from fastapi import testclient
import fixtures
import jax
import numpy as np

from experiments.configs import ctr as ctr_config
from experiments.configs import nearline as nearline_config
from mmrec import checkpointing
from mmrec import ctr_data
from mmrec import ctr_model
from mmrec.serving import impression_log
from mmrec.serving import nearline
from mmrec.serving import served_model
from mmrec.serving import service


def _rows(n):
  ds = ctr_data.CtrData.load(fixtures.small_ctr_world_dir()).dataset(
      'test', n)
  return ds[0]


class ImpressionLogTest(absltest.TestCase):

  def test_rotation_and_read_back(self):
    log = tempfile.mkdtemp()
    rows = _rows(50)
    writer = impression_log.SegmentWriter(log, max_records=20,
                                          max_seconds=3600)
    writer.write_batch(rows)
    # Two full segments closed; the open one is invisible to readers.
    self.assertEqual([n for n, _ in impression_log.closed_segments(log)],
                     [0, 1])
    writer.close()
    segs = impression_log.closed_segments(log)
    self.assertEqual([impression_log.num_records(p) for _, p in segs],
                     [20, 20, 10])
    back = nearline.segment_dataset(segs[1][1], 10, shuffle=False)
    got = {k: np.concatenate([back[0][k], back[1][k]]) for k in back[0]}
    self.assertEqual(set(got), set(rows) - set(impression_log.NOT_LOGGED))
    for f in got:
      np.testing.assert_array_equal(got[f], rows[f][20:40], err_msg=f)
    # Age-based closing, and a crashed writer's open segment is dropped.
    writer = impression_log.SegmentWriter(log, max_records=100,
                                          max_seconds=0.05)
    writer.write_batch({k: v[:3] for k, v in rows.items()})
    time.sleep(0.06)
    writer.maybe_close()
    self.assertLen(impression_log.closed_segments(log), 4)
    writer.write_batch({k: v[:2] for k, v in rows.items()})
    del writer  # crash: never closed
    impression_log.SegmentWriter(log)
    self.assertEqual(sorted(os.listdir(log))[-1], 'seg-000003.array_record')
    with self.assertRaisesRegex(ValueError, 'lacks'):
      impression_log.SegmentWriter(log).write({'label': 1})

  def test_every_batch_ids_are_checked(self):
    """Not only the first batch: an id past the vocabulary in a later one
    fails with the segment, field and id (a device lookup gives NaN)."""
    log = tempfile.mkdtemp()
    rows = _rows(40)
    writer = impression_log.SegmentWriter(log, max_records=100,
                                          max_seconds=3600)
    writer.write_batch(rows)
    writer.close()
    (_, path), = impression_log.closed_segments(log)
    data = ctr_data.CtrData.load(fixtures.small_ctr_world_dir())
    emb = ctr_model.build_model(ctr_config.get_config('id,tiny'),
                                data.sizes).config.embedding
    limit = int(max(rows['item_id'][:10].max(),
                    rows['seq_item'][:10].max())) + 1
    self.assertGreater(rows['item_id'][10:].max(), limit - 1)  # a later one
    ds = nearline.segment_dataset(
        path, 10, shuffle=False,
        embedding=dataclasses.replace(emb, num_items=limit))
    ds[0]  # pylint: disable=pointless-statement
    with self.assertRaisesRegex(ValueError, rf"{path}, records \d+..: Field "
                                r"'(seq_)?item(_id)?' has id \d+ outside"):
      for i in range(1, len(ds)):
        ds[i]  # pylint: disable=pointless-statement


def _config(batch_workdir, serving, log_dir):
  c = nearline_config.get_config('tiny')
  c.ctr_workdir = batch_workdir
  c.serving_dir = serving
  c.log_dir = log_dir
  c.replay_split = 'test'  # the day after the batch model's training days
  c.replay_rows = 3 * 256 + 100
  c.segment_records = 256  # 2 steps of 128 each; the last segment has 100
  return c


def _final_params(workdir, segment, steps):
  path = os.path.join(workdir, f'seg-{segment:06d}', checkpointing.SUBDIR,
                      str(steps))
  with warnings.catch_warnings():  # restored as saved, without a target
    warnings.filterwarnings('ignore', 'Sharding info not provided')
    state, _ = checkpointing.restore_from(path, None)
  return state['params']


def _steps(workdir, segment):
  ckpt = os.path.join(workdir, f'seg-{segment:06d}', checkpointing.SUBDIR)
  with checkpointing.Checkpointer(ckpt, read_only=True) as c:
    return c.all_steps()


class NearlineTest(absltest.TestCase):

  def test_warm_start_export_and_kills(self):
    # The vector model the service tests also use: one training per process.
    _, batch_wd, _, _ = fixtures.exported_ctr('simtier_official')
    root = tempfile.mkdtemp()
    # Uninterrupted, in this process.
    ref = nearline.run(_config(batch_wd, os.path.join(root, 'serving_ref'),
                               os.path.join(root, 'log')),
                       os.path.join(root, 'ref'))
    self.assertEqual([s['steps'] for s in ref['segments']], [2, 2, 2, 0])
    self.assertEqual(ref['final_step'], 10 + 6)
    models = os.path.join(root, 'serving_ref', 'models')
    self.assertEqual(sorted(os.listdir(models)),
                     ['CURRENT', 'v12', 'v14', 'v16'])
    self.assertEqual(served_model.current(models),
                     os.path.join(models, 'v16'))
    # Each segment committed by its marker; the empty one carries the state
    # (and version) of the one before.
    markers = impression_log.committed_markers(os.path.join(root, 'ref'))
    self.assertEqual(
        [(m['steps'], m['global_step'], m['checkpoint'], m['version'])
         for _, m in sorted(markers.items())],
        [(2, 12, 'seg-000000/checkpoints/2', 12),
         (2, 14, 'seg-000001/checkpoints/2', 14),
         (2, 16, 'seg-000002/checkpoints/2', 16),
         (0, 16, 'seg-000002/checkpoints/2', 16)])
    # The service reads this workdir the same way (its log's retention):
    # every segment committed, none past them.
    self.assertEqual(impression_log.committed_segments(
        os.path.join(root, 'ref'), range(5)), {0, 1, 2, 3})
    # Killed before saving step 2 of segment 0 (its commit; a checkpoint
    # every step, so step 1's is on disk), then restarted: the same state.
    wd, serv = os.path.join(root, 'killed'), os.path.join(root, 'serving')
    args = [f'--config.{k}={v}' for k, v in (
        ('ctr_workdir', batch_wd), ('serving_dir', serv),
        ('log_dir', os.path.join(root, 'log')), ('checkpoint_every', 1))]
    r = subprocess.run(
        [sys.executable, '-m', 'experiments.main',
         '--config=experiments/configs/nearline.py:tiny', f'--workdir={wd}',
         *args], env=dict(os.environ, **{checkpointing.KILL_AT_SAVE: '0:2'}),
        capture_output=True, text=True, timeout=300,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    self.assertEqual(r.returncode, -9, r.stderr[-3000:])
    self.assertEqual(_steps(wd, 0), [1])
    got = nearline.run(_config(batch_wd, serv, os.path.join(root, 'log')),
                       wd)
    self.assertEqual(got['final_step'], ref['final_step'])
    for seg in range(3):
      self.assertEqual(_steps(wd, seg)[-1], 2)
      a, b = (_final_params(os.path.join(root, 'ref'), seg, 2),
              _final_params(wd, seg, 2))
      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    self.assertEqual(sorted(os.listdir(os.path.join(serv, 'models'))),
                     ['CURRENT', 'v12', 'v14', 'v16'])
    # Killed between segment 2's final checkpoint and its export (so before
    # its marker, and segment 3's): a restart trains nothing and exports the
    # missing version.
    shutil.rmtree(os.path.join(serv, 'models', 'v16'))
    os.remove(os.path.join(wd, 'seg-000002',
                           impression_log.NEARLINE_COMMITTED))
    shutil.rmtree(os.path.join(wd, 'seg-000003'))
    before = [_steps(wd, seg) for seg in range(3)]
    again = nearline.run(_config(batch_wd, serv, os.path.join(root, 'log')),
                         wd)
    self.assertEqual(again['final_step'], 16)
    self.assertEqual(served_model.current(os.path.join(serv, 'models')),
                     os.path.join(serv, 'models', 'v16'))
    # No new checkpoint anywhere: nothing was trained again.
    self.assertEqual([_steps(wd, seg) for seg in range(3)], before)
    with open(os.path.join(wd, nearline.RESULT_FILE)) as f:
      self.assertEqual(json.load(f)['final_step'], 16)
    # A workdir from before the markers (none): its log walked again,
    # nothing trained, no version moved back, each segment marked in passing.
    markers = impression_log.committed_markers(wd)
    for n in markers:
      os.remove(os.path.join(wd, f'seg-{n:06d}',
                             impression_log.NEARLINE_COMMITTED))
    legacy = nearline.run(_config(batch_wd, serv, os.path.join(root, 'log')),
                          wd)
    self.assertEqual(legacy['final_step'], 16)
    self.assertEqual(served_model.current(os.path.join(serv, 'models')),
                     os.path.join(serv, 'models', 'v16'))
    self.assertEqual(impression_log.committed_markers(wd), markers)
    self.assertEqual([_steps(wd, seg) for seg in range(3)], before)
    self._retire_then_resume(root, batch_wd, wd, serv, before)

  def _retire_then_resume(self, root, batch_wd, wd, serv, before):
    """Defect: with its trained segments deleted, a restarted near-line job
    walked the log from the first segment left, from the batch checkpoint,
    and exported a lower version (a rollback). Now the log retires what the
    markers commit, and near-line resumes after the newest marker."""
    log = os.path.join(root, 'log')
    # The job named its workdir in the log: the writer finds the markers.
    self.assertEqual(impression_log.nearline_workdir(log),
                     os.path.abspath(wd))
    rows = {k: v for k, v in _rows(128).items()
            if k not in impression_log.NOT_LOGGED}
    probe = impression_log.SegmentWriter(tempfile.mkdtemp(), 10**6, 1e9)
    probe.write_batch(rows)
    need = probe.used_bytes()  # what one segment of these rows takes
    writer = impression_log.SegmentWriter(log, max_records=128,
                                          max_seconds=1e9, max_bytes=need)
    writer.write_batch(rows)  # fits only with every committed one retired
    writer.close()
    self.assertEqual(writer.retired, 4)
    self.assertEqual([n for n, _ in impression_log.closed_segments(log)], [4])
    with mock.patch.object(nearline, '_warm_start',
                           wraps=nearline._warm_start) as warm:
      got = nearline.run(_config(batch_wd, serv, log), wd)
    # Only segment 4, from segment 2's final state (3 had no full batch),
    # numbered on from the markers' global step.
    self.assertEqual([(s['segment'], s['steps'], s['global_step'])
                      for s in got['segments']], [(4, 1, 17)])
    warm.assert_called_once_with(
        os.path.join(wd, 'seg-000002', checkpointing.SUBDIR, '2'),
        mock.ANY)
    self.assertEqual([_steps(wd, seg) for seg in range(3)], before)
    self.assertEqual(_steps(wd, 4), [1])
    models = os.path.join(serv, 'models')
    self.assertEqual(served_model.current(models),
                     os.path.join(models, 'v17'))  # after v16, not v11
    self.assertEqual(
        impression_log.committed_markers(wd)[4]['version'], 17)
    self.assertEqual(impression_log.committed_segments(wd, range(6)),
                     {0, 1, 2, 3, 4})


class ResumeTest(absltest.TestCase):
  """Where a restart goes on from, without training."""

  def test_an_unmarked_workdir_whose_segments_left_the_log_is_refused(self):
    # A workdir from before the markers: its position cannot be known.
    wd = tempfile.mkdtemp()
    os.makedirs(os.path.join(wd, 'seg-000000', checkpointing.SUBDIR))
    with self.assertRaisesRegex(ValueError, r'trained segments \[0\] that '
                                'are no longer in the log.*no COMMITTED'):
      nearline.resume_point(wd, None, [(1, 'seg-000001.array_record')])

  def test_no_version_below_a_whole_one_is_exported(self):
    serving = tempfile.mkdtemp()
    models = os.path.join(serving, 'models')
    for name in ('v12', 'v20', 'v30'):  # v30 unfinished: no manifest
      os.makedirs(os.path.join(models, name))
    for name in ('v12', 'v20'):
      with open(os.path.join(models, name, 'manifest.json'), 'w') as f:
        f.write('{}')
    self.assertTrue(nearline._should_export(serving, 20))  # itself: idempotent
    self.assertTrue(nearline._should_export(serving, 21))
    # Passed again by a workdir from before the markers: left as it is.
    self.assertFalse(nearline._should_export(serving, 12))
    with self.assertRaisesRegex(RuntimeError, 'holds v20, newer than the v17'):
      nearline._should_export(serving, 17)


class NewItemTest(absltest.TestCase):

  def test_new_item_in_the_log_trains_and_serves(self):
    """Defect: an item added through the service and shown in the log made
    near-line train a NaN model (its id was past the batch model's tables),
    which went live. Now its ID row grows (zero, as served) and trains."""
    _, batch_wd, serving_src, _ = fixtures.exported_ctr('simtier_official')
    root = tempfile.mkdtemp()
    serving, log = os.path.join(root, 'serving'), os.path.join(root, 'log')
    shutil.copytree(serving_src, serving)
    app = service.create_app(serving, reload_interval_s=0, log_dir=log,
                             segment_records=10**6, segment_seconds=3600)
    client = testclient.TestClient(app)
    serving_state = app.state.serving
    dim = serving_state.store.dim
    r = client.post('/items', json={'vector': [0.25] * dim, 'category': 1,
                                    'shop': 1})
    self.assertEqual(r.status_code, 200, r.text)
    item = r.json()['item_id']
    rows = _rows(150)
    for i in range(3):  # 3 users shown 50 items each, one in five new
      mask = rows['seq_mask'][i]
      shown = rows['item_id'][i * 50:(i + 1) * 50].copy()
      shown[::5] = item
      r = client.post('/impressions', json={
          'user': {k: int(rows[k][i]) for k in ('user_id', 'age', 'gender',
                                                'city')},
          'history': rows['seq_item'][i][mask].tolist()[
              1 - rows['seq_item'].shape[1]:] + [item],
          'items': shown.tolist(),
          'labels': rows['label'][i * 50:(i + 1) * 50].tolist()})
      self.assertEqual(r.status_code, 200, r.text)
    serving_state.logger.close()  # closes the segment
    c = _config(batch_wd, serving, log)
    c.replay_split = ''  # one step of the batch run's 128 rows
    result = nearline.run(c, os.path.join(root, 'nearline'))
    self.assertEqual(result['final_step'], 10 + 1)
    version = os.path.join(serving, 'models', 'v11')
    self.assertEqual(served_model.current(os.path.join(serving, 'models')),
                     version)
    with np.load(os.path.join(version, served_model.VARIABLES_FILE)) as f:
      for k in f.files:
        self.assertTrue(np.isfinite(f[k]).all(), k)
      table = f['params/embed/item/embedding']
    self.assertEqual(table.shape[0], c.item_capacity)
    self.assertTrue(np.any(table[item]))  # trained from zero
    self.assertFalse(np.any(table[item + 1:]))  # never seen: still zero
    # Served: the service reloads it and scores the new item.
    self.assertTrue(serving_state.reload())
    r = client.post('/score', json={
        'user': {'user_id': 1, 'age': 1, 'gender': 0, 'city': 1},
        'history': [1, item], 'candidates': [item, 4]})
    self.assertEqual(r.status_code, 200, r.text)
    self.assertEqual(r.json()['model_version'], 'v11')
    self.assertTrue(np.isfinite(r.json()['probabilities']).all())
    self.assertIsNone(client.get('/health').json()['last_failed_reload'])
    serving_state.close()


if __name__ == '__main__':
  absltest.main()
