"""Data benchmarks of the bench job (see bench.py).

- `world`: generating the configured synthetic world, and writing it as
  array_record tables;
- `convert`: the own-data converter (mmrec/data/convert.py) on a generated
  Parquet fixture of impressions with long hashed-id histories: wall time
  and peak memory of the conversion alone, run in a child process.
"""

import multiprocessing
import os
import resource
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmrec.data import builders
from mmrec.data import convert
from mmrec.data import world as world_lib


def bench_world(config, workdir):
  """Generation and array_record writing time of the configured world."""
  del workdir
  t0 = time.perf_counter()
  world = world_lib.generate(config.world)
  generate_s = time.perf_counter() - t0
  with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    builders.write(world, tmp)
    write_s = time.perf_counter() - t0
  n = len(world.impressions['label'])
  return {
      'items': config.world.num_items, 'users': config.world.num_users,
      'impressions': n,
      'generate_seconds': round(generate_s, 2),
      'write_seconds': round(write_s, 2),
      'impressions_written_per_second': round(n / write_s),
  }


def write_history_fixture(directory, rows, history, num_users, num_items,
                          shard_rows=50_000, seed=0):
  """Own-data Parquet shards: `rows` impressions, each with a `history`-long
  list of hashed int64 item ids (as Taobao-MM's), over 10 days."""
  rng = np.random.default_rng(seed)
  users = rng.integers(-2**62, 2**62, num_users)
  items = rng.integers(-2**62, 2**62, num_items)
  os.makedirs(os.path.join(directory, 'impressions'))
  for s, lo in enumerate(range(0, rows, shard_rows)):
    n = min(shard_rows, rows - lo)
    hist = items[rng.integers(0, num_items, n * history)]
    offsets = np.arange(n + 1, dtype=np.int32) * history
    table = pa.table({
        'user': users[rng.integers(0, num_users, n)],
        'item': items[rng.integers(0, num_items, n)],
        'label': (rng.random(n) < 0.05).astype(np.int8),
        'time': 1_700_000_000 + rng.integers(0, 10 * 86400, n),
        'history': pa.ListArray.from_arrays(offsets, hist)})
    pq.write_table(table, os.path.join(directory, 'impressions',
                                       f'part-{s:05d}.parquet'))


def _convert_in_child(source, target, options, queue):
  t0 = time.perf_counter()
  m = convert.Converter(source, options).write(target)
  queue.put((time.perf_counter() - t0, m.tables))


def bench_convert(config, workdir):
  """The own-data converter on impressions with long histories: wall time
  and peak memory of the conversion alone (run in a child process)."""
  del workdir
  with tempfile.TemporaryDirectory() as tmp:
    src, out = os.path.join(tmp, 'src'), os.path.join(tmp, 'out')
    t0 = time.perf_counter()
    write_history_fixture(src, config.convert_rows, config.convert_history,
                          config.convert_users, config.convert_items)
    fixture_s = time.perf_counter() - t0
    size = sum(os.path.getsize(os.path.join(src, 'impressions', f))
               for f in os.listdir(os.path.join(src, 'impressions')))
    os.makedirs(out)
    options = convert.Options(seq_len=config.convert_seq_len,
                              chunk_rows=config.convert_chunk_rows)
    ctx = multiprocessing.get_context('fork')
    queue = ctx.Queue()
    child = ctx.Process(target=_convert_in_child,
                        args=(src, out, options, queue))
    child.start()
    seconds, tables = queue.get()
    child.join()
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  return {
      'impressions': config.convert_rows,
      'history_length': config.convert_history,
      'seq_len_kept': config.convert_seq_len,
      'parquet_mib': round(size / 2**20, 1),
      'fixture_seconds': round(fixture_s, 1),
      'convert_seconds': round(seconds, 1),
      'impressions_per_second': round(config.convert_rows / seconds),
      'peak_rss_mib': round(peak_kib / 1024),
      'splits': tables['mmrec_impressions']['splits'],
  }
