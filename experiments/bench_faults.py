r"""The fault benchmark (`make faults`; bench.py's `faults`): kill -9, torn
and flipped bytes and a full disk, at random points, then checks that
nothing acknowledged was lost or changed.

  python -m experiments.main --config=experiments/configs/bench.py \
      --config.benchmarks=faults --workdir=bench_results

Faults (config.faults_*; each run is its own process on loopback):
  service_kill   the scoring service (uvicorn) killed -9 during bursts of
                 POST /items from two clients, restarted over the same
                 directory: every acknowledged item there with its id,
                 vector and attributes, no id handed out twice
  delta_corrupt  one byte flipped in the middle of the store's delta.log:
                 the store and the service must refuse to open (naming the
                 file and offset) and the file must stay as it was
  full_disk      the service under a file-size limit (RLIMIT_FSIZE) during
                 adds: 507s, then the limit is lifted and adds resume; a
                 restart holds every acknowledged item
  export_kill    the export job killed -9 (chains of kills, then a rerun):
                 the rerun exits 0 and its directory starts and equals an
                 uninterrupted export's
  nearline_kill  the near-line job, likewise (its served version)
  convert_kill   the data job on own data, likewise (byte-identical files,
                 and no aside directory left behind)
The service's rows are here; the jobs' in bench_fault_jobs.py, where kill
times are uniform over the window in which an uninterrupted run of the same
job writes (measured first), so kills land mid-write, not mid-import.

Writes `faults.json` and `faults.md` into the workdir: per fault, trials,
acknowledged items, lost, corrupt (a changed item, an unstartable or
different directory, a corrupt log that opened), 5xx (other than the
expected 507) and notes on every failure. Time: setup (a tiny world, a
10-step CTR run) and each job's imports dominate.
"""

import json
import os
import random
import resource
import shutil
import signal
import threading
import time

import httpx
import ml_collections
import numpy as np

from experiments import bench_fault_jobs
from experiments import bench_serving
from experiments.configs import world as world_config
from mmrec import files
from mmrec import int8
from mmrec.serving import layout
from mmrec.serving import served_model
from mmrec.serving import vector_store

COLUMNS = bench_fault_jobs.COLUMNS
_row = bench_fault_jobs.row


# --------------------------------------------------------------------------
# The service: bursts of adds, kill -9, restart, check.


def _schema(serving):
  with open(os.path.join(served_model.current(
      os.path.join(serving, layout.MODELS)), layout.MANIFEST)) as f:
    return json.load(f)['schema']


class _Adds:
  """Two clients adding random items until stopped (or the server dies);
  what was acknowledged, and the 5xx / 507 answers."""

  def __init__(self, url, schema, dim, seed):
    self.url, self.schema, self.dim, self.seed = url, schema, dim, seed
    self.acked, self.fives, self.full, self.other = {}, 0, 0, []
    self.reused = []
    self.stop, self.lock = threading.Event(), threading.Lock()
    self.threads = [threading.Thread(target=self._client, args=(k,))
                    for k in range(2)]

  def start(self, acked):
    self.known = acked  # ids acknowledged before (no id twice)
    for t in self.threads:
      t.start()
    return self

  def join(self):
    self.stop.set()
    for t in self.threads:
      t.join()

  def _client(self, k):
    try:
      self._adds(k)
    except Exception as e:  # pylint: disable=broad-except
      with self.lock:  # said in the table, not lost with the thread
        self.other.append(f'client {k} stopped: {e!r}')
        self.fives += 1

  def _adds(self, k):
    rng = np.random.default_rng([self.seed, k])
    with httpx.Client(base_url=self.url, timeout=30) as c:
      while not self.stop.is_set():
        v = rng.normal(size=self.dim)
        attrs = {f: int(rng.integers(size))
                 for f, size in self.schema['item'].items()}
        try:
          r = c.post('/items', json={'vector': v.tolist(), **attrs})
        except httpx.TransportError:
          return  # killed
        with self.lock:
          if r.status_code == 200:
            i = r.json()['item_id']
            if i in self.acked or i in self.known:
              self.reused.append(i)
            self.acked[i] = (v, attrs)
          elif r.status_code == 507:
            self.full += 1
          elif r.status_code >= 500:
            self.fives += 1
            self.other.append(f'{r.status_code} {r.text[:120]}')


def _check_items(serving, acked):
  """(lost, corrupt, notes): acknowledged items missing from the store or
  stored with another vector / attributes (read-only open)."""
  try:
    store = vector_store.VectorStore(os.path.join(serving, layout.VECTORS))
  except vector_store.StoreError as e:
    return len(acked), 0, [f'store does not open: {e}']
  with store:
    ids = np.array(sorted(acked), np.int64)
    present = ids[ids < store.count]
    lost, corrupt, notes = len(ids) - len(present), 0, []
    if lost:
      notes.append(f'{lost} acknowledged ids >= count {store.count}')
    if len(present):
      got_v, got_a = store.lookup(present), store.attributes(present)
      for i, gv, ga in zip(present, got_v, got_a):
        v, attrs = acked[int(i)]
        want = int8.quantize(v / np.linalg.norm(v))
        want_a = [attrs.get(n, 0) for n in store.attr_names]
        if (np.abs(gv.astype(int) - want.astype(int)).max() > 1 or
            list(map(int, ga)) != want_a):
          corrupt += 1
          if corrupt <= 3:
            notes.append(f'item {int(i)} stored differently')
  return lost, corrupt, notes


def _service_kills(config, serving, rng, out):
  schema = _schema(serving)
  dim = vector_store.VectorStore(os.path.join(serving, layout.VECTORS)).dim
  row = _row()
  acked = {}
  for trial in range(config.faults_service_kills):
    try:
      server, url = bench_serving.start_service(serving)
    except RuntimeError as e:
      row['corrupt'] += 1
      row['notes'].append(f'trial {trial}: not startable: {e}')
      break
    adds = _Adds(url, schema, dim, [config.faults_seed, trial]).start(acked)
    time.sleep(rng.uniform(*config.faults_burst_s))
    server.send_signal(signal.SIGKILL)
    server.wait()
    adds.join()
    acked.update(adds.acked)
    row['trials'] += 1
    row['5xx'] += adds.fives
    row['notes'] += adds.other[:3]
    if adds.reused:
      row['corrupt'] += len(adds.reused)
      row['notes'].append(f'trial {trial}: ids handed out twice: '
                          f'{adds.reused[:5]}')
  lost, corrupt, notes = _check_items(serving, acked)
  row.update(acknowledged=len(acked), lost=lost,
             corrupt=row['corrupt'] + corrupt)
  row['notes'] += notes
  out['service_kill'] = row
  return acked


# --------------------------------------------------------------------------
# A flipped byte in the delta log; a full disk.


def _delta_corrupt(serving, root, out):
  row = _row(trials=1)
  d = os.path.join(root, 'corrupt')
  shutil.copytree(serving, d)
  vectors = os.path.join(d, layout.VECTORS)
  with vector_store.VectorStore(vectors) as s:
    size = 8 + 4 * len(s.attr_names) + s.dim + 4  # one record
    path = os.path.join(s.path, vector_store.DELTA)
  with open(path, 'rb') as f:
    data = bytearray(f.read())
  n = len(data) // size
  if n < 3:
    row['notes'].append(f'only {n} delta records: nothing to corrupt')
    out['delta_corrupt'] = row
    return
  data[(n // 2) * size + 9] ^= 0xFF  # a record in the middle
  with open(path, 'wb') as f:
    f.write(data)
  try:
    vector_store.VectorStore(vectors).close()
    row['corrupt'] += 1
    row['notes'].append('the store opened over a corrupt record')
  except vector_store.StoreError as e:
    if 'delta.log' not in str(e):
      row['notes'].append(f'message does not name the file: {e}')
  log = os.path.join(root, 'corrupt.log')
  try:
    with open(log, 'wb') as f:
      server, _ = bench_serving.start_service(d, timeout_s=120, stderr=f)
    server.send_signal(signal.SIGKILL)
    server.wait()
    row['corrupt'] += 1
    row['notes'].append('the service started over a corrupt delta.log')
  except RuntimeError:
    with open(log, errors='replace') as f:
      said = [line for line in f if 'delta.log' in line]
    said = said[-1].strip() if said else ''
    row['notes'].append(
        'refused: ' + said[said.find('delta.log'):][:200] if said else
        f'refused, with no message naming delta.log ({log})')
  with open(path, 'rb') as f:
    if f.read() != bytes(data):
      row['corrupt'] += 1
      row['notes'].append('delta.log was changed (cut?) by a reader')
  out['delta_corrupt'] = row


def _full_disk(config, serving, acked, out):
  """The service under a file-size limit a few records past the log's end:
  adds get 507, then the limit is lifted (as space is freed) and they
  resume; a restart holds every acknowledged item."""
  row = _row(trials=1)
  schema = _schema(serving)
  with vector_store.VectorStore(os.path.join(serving, layout.VECTORS)) as s:
    dim = s.dim
    size = 8 + 4 * len(s.attr_names) + s.dim + 4
    path = os.path.join(s.path, vector_store.DELTA)
  good = os.path.getsize(path) if os.path.exists(path) else 0
  limit = good + int(3.5 * size)
  _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

  def limited():  # in the child: SIGXFSZ ignored, so a write gets EFBIG
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))

  server, url = bench_serving.start_service(serving, preexec_fn=limited)
  try:
    adds = _Adds(url, schema, dim, [config.faults_seed, 10**6]).start(acked)
    deadline = time.time() + 60
    while adds.full < 5 and time.time() < deadline:
      time.sleep(0.05)
    full, before = adds.full, len(adds.acked)
    resource.prlimit(server.pid, resource.RLIMIT_FSIZE, (hard, hard))
    time.sleep(1.0)
    adds.join()
    resumed = len(adds.acked) - before
    if not full:
      row['notes'].append('no 507 under the file-size limit')
      row['corrupt'] += 1
    if not resumed:
      row['notes'].append('adds did not resume once the limit was lifted')
      row['corrupt'] += 1
    row['notes'].append(f'{full} answers 507, then {resumed} adds resumed')
  finally:
    server.send_signal(signal.SIGKILL)
    server.wait()
  acked.update(adds.acked)
  try:  # startable again, with everything
    server, _ = bench_serving.start_service(serving)
    server.send_signal(signal.SIGKILL)
    server.wait()
  except RuntimeError as e:
    row['corrupt'] += 1
    row['notes'].append(f'not startable after the full disk: {e}')
  lost, corrupt, notes = _check_items(serving, adds.acked)
  row.update(acknowledged=len(adds.acked), lost=lost,
             corrupt=row['corrupt'] + corrupt,
             **{'5xx': adds.fives})
  row['notes'] += notes + adds.other[:3]
  out['full_disk'] = row


# --------------------------------------------------------------------------


def _serving_config(config):
  """bench_serving.build_serving_dir's settings for a tiny served model
  (the faults do not depend on the model's size)."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.world = world_config.get_world_config('tiny')
  c.ctr_tiny, c.serving_dim, c.serving_buckets = True, 16, (8,)
  c.serving_new_items = 20_000  # room for every add of every trial
  return c


def _markdown(out, seconds):
  lines = ['# Fault benchmark\n',
           f'{seconds:.0f} s. Lost / corrupt / 5xx must be 0 (507 on a '
           'full disk is expected, not counted).\n',
           '| fault | ' + ' | '.join(COLUMNS) + ' | notes |',
           '|---' * (len(COLUMNS) + 2) + '|']
  for name, row in out.items():
    lines.append(f'| {name} | ' + ' | '.join(str(row[c]) for c in COLUMNS) +
                 ' | ' + '; '.join(row['notes']).replace('|', '/') + ' |')
  return '\n'.join(lines) + '\n'


def bench_faults(config, workdir):
  t0 = time.perf_counter()
  root = os.path.join(workdir, 'faults')
  shutil.rmtree(root, ignore_errors=True)
  os.makedirs(root)
  rng = random.Random(config.faults_seed)
  out = {}
  if config.faults_service_kills:  # 0: the jobs' rows only
    serving = os.path.join(root, 'serving')
    bench_serving.build_serving_dir(serving, _serving_config(config))
    acked = _service_kills(config, serving, rng, out)
    _delta_corrupt(serving, root, out)
    _full_disk(config, serving, acked, out)
  bench_fault_jobs.job_kills(config, root, rng, out)
  seconds = time.perf_counter() - t0
  files.write_json(os.path.join(workdir, 'faults.json'),
                   {'seconds': round(seconds, 1), 'faults': out})
  files.write_text(os.path.join(workdir, 'faults.md'),
                   _markdown(out, seconds))
  result = {f'{name}_{c}': row[c] for name, row in out.items()
            for c in COLUMNS}
  for c in COLUMNS:
    result[f'total_{c}'] = sum(row[c] for row in out.values())
  result['seconds'] = round(seconds, 1)
  return result
