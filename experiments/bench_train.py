"""Training and encoder benchmarks of the bench job (see bench.py).

- `scl_train`: the SCL pre-training step's throughput and FLOP/s as a
  fraction of a large matmul's (the roofline), at the default widths, wider
  towers and each image-tower kind, with the conv tower's 3x3-conv ceiling;
- `embed`: the embedding job's encoder: items/s in batches, and the latency
  of one new item;
- `ctr_train`: the CTR trainer's own step in examples/s, for the ID model,
  SimTier + MAKE, the official 1000-long-history setting and the GSU setting,
  each against its memory limit (`ctr_step_bytes` / `copy_rates`) and its
  compute limit (XLA's FLOPs / the matmul rate), both measured in the same
  run.
"""

import functools
import time
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from experiments.configs import ctr as ctr_config
from experiments.configs import scl as scl_config
from mmrec import ctr_data
from mmrec import ctr_model
from mmrec import ctr_steps
from mmrec import int8
from mmrec import item_encoder
from mmrec import sharding
from mmrec import train_lib
from mmrec import train_scl
from mmrec import vector_table
from mmrec.data import taxonomy
from mmrec.data import text


def _matmul_flops_per_s(n=2048, repeats=10, bursts=1):
  """FLOP/s of a large float32 matmul on the default device: the roofline.
  The best of `bursts` timings of `repeats` matmuls each (one compilation):
  a preempted burst would understate what the core does."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = 0.0
  for _ in range(bursts):
    t0 = time.perf_counter()
    for _ in range(repeats):
      out = f(a)
    out.block_until_ready()
    best = max(best, 2 * n**3 * repeats / (time.perf_counter() - t0))
  return best


def _flops(lowered):
  """XLA's FLOP count of a lowered program (0 if the backend gives none)."""
  cost = lowered.compile().cost_analysis()
  return (cost[0] if isinstance(cost, list) else cost).get('flops', 0.0)


def _conv_layer_fraction(batch, side, width, peak, repeats=3):
  """One 3x3 conv's forward + backward (input and weight gradients) at a
  conv stage's shape, as a fraction of the matmul rate: the ceiling XLA's CPU
  convolutions put on a conv tower's step at that width."""
  conv = lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  step = jax.jit(jax.grad(lambda w, x: conv(x, w).sum(), argnums=(0, 1)))
  x = jnp.ones((batch, side, side, width), jnp.float32)
  w = jnp.ones((3, 3, width, width), jnp.float32)
  jax.block_until_ready(step(w, x))
  t0 = time.perf_counter()
  for _ in range(repeats):
    out = step(w, x)
  jax.block_until_ready(out)
  seconds = (time.perf_counter() - t0) / repeats
  flops = 3 * 2 * batch * side**2 * 9 * width**2  # forward + 2 gradients
  return flops / seconds / peak


def _scl_setup(config, width=None, kind=None):
  """SCL model (default, or both towers at `width`, or the image tower of
  `kind`), synthetic batch."""
  wc = config.world
  tax = taxonomy.build(wc, np.random.default_rng(0))
  vocab = text.build_vocab(wc, tax)
  scl = scl_config.get_config()
  scl.batch_size = config.scl_batch_size
  if width:
    for tower in (scl.encoder.image, scl.encoder.text):
      tower.update(width=width, mlp_dim=2 * width)
    # The conv tower's stages keep their 1 : 2 : 4 ratio, ending at `width`.
    scl.encoder.image.conv_widths = (width // 4, width // 2, width)
  if kind:
    scl.encoder.image.kind = kind
  model = item_encoder.build_encoder(scl, vocab.size, wc.title_length)
  rng = np.random.default_rng(0)
  b, h, s, t = scl.batch_size, wc.max_hard_negatives, wc.image_size, (
      wc.title_length)
  img = lambda *shape: rng.integers(0, 256, shape + (s, s, 3), np.uint8)
  tok = lambda *shape: rng.integers(1, vocab.size, shape + (t,), np.int32)
  batch = {
      'query_is_image': rng.random(b) < 0.5, 'query_image': img(b),
      'query_text': tok(b), 'pos_item': rng.integers(0, wc.num_items, b),
      'pos_image': img(b), 'pos_title': tok(b),
      'neg_item': rng.integers(0, wc.num_items, (b, h)),
      'neg_image': img(b, h), 'neg_title': tok(b, h),
      'neg_mask': np.ones((b, h), bool)}
  return scl, model, batch, vocab


def _scl_step_throughput(config, width=None, kind=None):
  """Seconds per SCL train step and its FLOPs (XLA's cost analysis)."""
  scl, model, batch, _ = _scl_setup(config, width, kind)
  mesh = sharding.make_mesh()
  tx = train_scl.build_optimizer(scl)
  objective = train_scl.objective(scl)
  example = {'image': batch['pos_image'][:1], 'text': batch['pos_title'][:1]}
  progs = train_lib.compile_programs(
      train_scl.init_fn(model, objective, tx, example),
      functools.partial(train_scl.train_step, model=model,
                        objective=objective, tx=tx), mesh)
  state, step = progs.init_state(jax.random.key(0)), progs.train_step
  x = sharding.shard_batch(batch, mesh)
  rng = jax.random.key(1)
  flops = _flops(step.lower(state, x, rng))
  for _ in range(3):
    state, m = step(state, x, rng)
  jax.block_until_ready(m)
  n = config.timed_steps
  t0 = time.perf_counter()
  for _ in range(n):
    state, m = step(state, x, rng)
  jax.block_until_ready(m)
  return scl, (time.perf_counter() - t0) / n, flops


def bench_scl_train(config, workdir):
  """SCL train-step throughput of the default encoder; FLOP/s vs a matmul.

  Also the same step with both towers widened (config.scl_widths): on a CPU
  the default 64-wide towers spend much of their time outside large
  matmuls, and the sweep shows how the fraction grows with width; each
  image-tower kind (config.scl_kinds) at the default widths; and, for the
  conv tower, one 3x3 conv per stage alone (forward + backward), the ceiling
  of a conv step's fraction on this backend.
  """
  del workdir
  scl, seconds, flops = _scl_step_throughput(config)
  default = (seconds, flops)
  peak = _matmul_flops_per_s()
  b, h = scl.batch_size, config.world.max_hard_negatives
  images = b * (3 + h)  # query + online & momentum positive + hard negatives
  out = {
      'batch_size': b, 'step_seconds': round(seconds, 4),
      'sessions_per_second': round(b / seconds, 1),
      'images_per_second': round(images / seconds, 1),
      'step_gflop': round(flops / 1e9, 3),
      'achieved_gflop_per_second': round(flops / seconds / 1e9, 2),
      'matmul_gflop_per_second': round(peak / 1e9, 2),
      'fraction_of_matmul': round(flops / seconds / peak, 3),
  }
  out['image_tower'] = scl.encoder.image.kind
  for width in config.scl_widths:
    _, seconds, flops = _scl_step_throughput(config, width)
    out[f'width_{width}_images_per_second'] = round(images / seconds, 1)
    out[f'width_{width}_fraction_of_matmul'] = round(flops / seconds / peak, 3)
  # Per image-tower kind at the default widths: what a tower costs per
  # image, and how much of the CPU's matmul rate its step reaches.
  for kind in config.scl_kinds:
    # The default tower's kind is the step above: not compiled again.
    seconds, flops = (default if kind == scl.encoder.image.kind else
                      _scl_step_throughput(config, kind=kind)[1:])
    out[f'{kind}_images_per_second'] = round(images / seconds, 1)
    out[f'{kind}_step_gflop'] = round(flops / 1e9, 3)
    out[f'{kind}_fraction_of_matmul'] = round(flops / seconds / peak, 3)
  # The conv tower's ceiling: one of its 3x3 convs alone per stage (side,
  # width), and at 4x the widths, at this step's image batch.
  image = scl.encoder.image
  if image.kind == 'conv':
    for scale in (1, 4):
      for i, width in enumerate(image.conv_widths):
        side = max(1, config.world.image_size // image.stem_stride // 2**i)
        out[f'conv3x3_{side}x{side}x{width * scale}_fraction_of_matmul'] = (
            round(_conv_layer_fraction(images, side, width * scale, peak), 3))
  return out


def bench_embed(config, workdir):
  """Embedding-job throughput and single-item latency (warm)."""
  del workdir
  scl, model, batch, vocab = _scl_setup(config)
  del vocab
  params = nn.unbox(model.init(jax.random.key(0), batch['pos_image'][:1],
                               batch['pos_title'][:1])['params'])
  encoder = item_encoder.Encoder(model, params, sharding.make_mesh(),
                          batch_size=config.embed_batch_size)
  n = config.embed_items
  reps = -(-n // len(batch['pos_image']))
  images = np.tile(batch['pos_image'], (reps, 1, 1, 1))[:n]
  titles = np.tile(batch['pos_title'], (reps, 1))[:n]
  encoder.items(images[:encoder.batch_size], titles[:encoder.batch_size])
  t0 = time.perf_counter()
  encoder.items(images, titles)
  items_s = n / (time.perf_counter() - t0)
  # Its reference: the encoder's forward FLOPs per item (XLA's count for one
  # full batch) at the rate of a large matmul, measured now.
  forward = jax.jit(lambda p, i, t: model.apply({'params': p}, i, t,
                                                method='encode_item'))
  bs = encoder.batch_size
  item_flops = _flops(forward.lower(params, images[:bs], titles[:bs])) / bs
  peak = _matmul_flops_per_s()
  for i in range(5):
    encoder.encode_one(images[i], titles[i])
  lat = []
  for i in range(config.latency_calls):
    t0 = time.perf_counter()
    encoder.encode_one(images[i % n], titles[i % n])
    lat.append(time.perf_counter() - t0)
  lat = np.array(lat) * 1e3
  del scl
  return {
      'items': n, 'batch_size': encoder.batch_size,
      'items_per_second': round(items_s, 1),
      'forward_mflop_per_item': round(item_flops / 1e6, 3),
      'achieved_gflop_per_second': round(items_s * item_flops / 1e9, 2),
      'matmul_gflop_per_second': round(peak / 1e9, 2),
      'fraction_of_matmul': round(items_s * item_flops / peak, 3),
      'new_item_latency_ms_p50': round(float(np.percentile(lat, 50)), 3),
      'new_item_latency_ms_p99': round(float(np.percentile(lat, 99)), 3),
  }


def unit_int8_vectors(rng, n, dv):
  """`n` random unit vectors of width `dv`, int8-quantized (the item-vector
  table's format)."""
  vectors = rng.normal(size=(n, dv)).astype(np.float32)
  return int8.quantize(vectors / np.linalg.norm(vectors, axis=1,
                                                keepdims=True))


def ctr_batches(rng, count, b, sizes, seq_len, long_len=0):
  """`count` different host batches shaped as the CTR pipeline's.

  Behaviour histories are left-padded with random lengths in [0, H], H =
  max(seq_len, long_len); item features (the world: category, shop) come
  from per-item arrays as `pipelines.JoinCtrFields` joins them. With `long_len` the batch also has the
  long history (long_seq_item / _category / _mask) and, as in the official
  code, the short one is its `seq_len` most recent behaviours.
  """
  n_items = sizes['num_items']
  item_fields = {name: rng.integers(0, size, n_items)
                 for name, size in sizes['item_features']}

  def ids(n, *shape):
    return rng.integers(0, n, shape).astype(np.int32)

  h = max(seq_len, long_len)
  batches = []
  for _ in range(count):
    lengths = rng.integers(0, h + 1, b)
    mask = np.arange(h)[None] >= h - lengths[:, None]
    items = np.where(mask, ids(n_items, b, h), 0).astype(np.int32)
    seq = {f'seq_{name}': np.where(mask, item_fields[name][items],
                                   0).astype(np.int32)
           for name in sizes['seq_features']}
    item = ids(n_items, b)
    batch = {'user_id': ids(sizes['num_users'], b), 'item_id': item,
             'seq_item': items[:, -seq_len:], 'seq_mask': mask[:, -seq_len:],
             'label': (rng.random(b) < 0.05).astype(np.int32),
             'day': np.zeros(b, np.int32)}
    batch.update({name: ids(size, b) for name, size in sizes['user_features']})
    batch.update({name: v[item].astype(np.int32)
                  for name, v in item_fields.items()})
    batch.update({k: v[:, -seq_len:] for k, v in seq.items()})
    if long_len:
      batch.update(long_seq_item=items, long_seq_mask=mask,
                   **{f'long_{k}': v for k, v in seq.items()})
    batches.append(batch)
  return batches


class Stepper(NamedTuple):
  """`ctr_stepper`'s result."""
  run: Callable[[int], None]  # steps -> None, blocks until the last is done
  predict: Callable[[dict], np.ndarray]  # batch -> eval logits, current state
  embedding: Any  # the model's EmbeddingConfig
  param_bytes: int
  flops: Callable[..., float]  # (table) -> XLA's FLOPs of one train step


def ctr_stepper(config, variant, batches, table, warm=2, **overrides):
  """The trainer's own step (`ctr_steps.programs`), compiled and warmed by
  `warm` steps: a `Stepper`. `run(steps)` takes `steps` steps, `predict`
  gives the logits of the eval step at the current state, `flops(table)`
  XLA's FLOP count of one train step over that vector table (default: this
  one; a float copy of an int8 table takes the gathered cosine path, the
  fewest multiply-adds).

  The model, optimizer and jitted step are built as `train_ctr` builds them
  for `experiments/configs/ctr.py:VARIANT` (+ `overrides`); each step shards
  the next of the cycled host batches as the training loop does. The
  programs come from `ctr_steps.programs`' cache, keyed on the model's
  config: to time two versions of the model's code in one process (an A/B
  with a patched function), clear that cache between the two builds, or
  both steppers run the first one's program.
  """
  c = ctr_config.get_config(variant + (',tiny' if config.ctr_tiny else ''))
  c.update(overrides)
  model = ctr_model.build_model(c, ctr_data.sizes(config.world.to_dict()))
  mesh = sharding.make_mesh(c.mesh.data, c.mesh.model)
  reads = ctr_model.reads_vectors(c)
  table = table if reads else None
  example = {k: v[:2] for k, v in batches[0].items()}
  progs = ctr_steps.programs(model, ctr_steps.opt_spec(c, model), mesh,
                             ctr_steps.shape_key(example),
                             ctr_steps.shape_key(table))
  state = progs.train.init_state(jax.random.key(c.seed))
  vectors = vector_table.put(table, mesh)
  rng = jax.random.key(c.seed + 1)
  step = 0

  def run(steps):
    nonlocal state, step
    for _ in range(steps):
      batch = sharding.shard_batch(batches[step % len(batches)], mesh)
      state, _ = progs.train.train_step(state, batch,
                                        train_lib.fold_rng(rng, step), vectors)
      step += 1
    jax.block_until_ready(state)

  def predict(batch):
    b = len(batch['label'])
    x = dict(batch, user_key=batch['user_id'], valid=np.ones(b, bool))
    out = progs.eval_step(state, sharding.shard_batch(x, mesh), vectors)
    return np.asarray(out['logit'])

  def flops(other=table):
    batch = sharding.shard_batch(batches[0], mesh)
    put = vector_table.put(other if reads else None, mesh)
    return _flops(progs.train.train_step.lower(state, batch, rng, put))

  run(warm)  # compile (with warm > 0), and one more
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(state.params))
  return Stepper(run, predict, model.config.embedding, param_bytes, flops)


def _ctr_step_seconds(config, variant, batches, table, **overrides):
  """Seconds per step of `ctr_stepper`'s step (`config.timed_steps` timed),
  and the `Stepper`."""
  stepper = ctr_stepper(config, variant, batches, table, **overrides)
  t0 = time.perf_counter()
  stepper.run(config.timed_steps)
  return (time.perf_counter() - t0) / config.timed_steps, stepper


def copy_rates(table, ids, repeats=5):
  """Copy bandwidth, bytes/s: {'gather': numpy gathering the rows `ids` of
  `table` (the history's vectors), 'memcpy': a plain copy of as many bytes}.

  The medians of `repeats` copies into buffers written once beforehand: the
  first write to fresh memory pays page faults (on this machine several
  times the copy itself), which a step's reused buffers do not.
  """
  out = np.zeros(ids.shape + table.shape[1:], table.dtype)
  src = np.ones_like(out)

  def median_seconds(copy):
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      copy()
      times.append(time.perf_counter() - t0)
    return float(np.median(times))

  # mode='clip': with the default 'raise' numpy buffers `out` (a 2nd copy).
  gather = median_seconds(
      lambda: np.take(table, ids, axis=0, out=out, mode='clip'))
  memcpy = median_seconds(lambda: np.copyto(out, src))
  return {'gather': out.nbytes / gather, 'memcpy': out.nbytes / memcpy}


def ctr_step_bytes(b, vector_width, vector_histories, attended, emb,
                   param_bytes):
  """Bytes a CTR train step must read at least once: the lower bound of its
  memory traffic.

  b: batch size; vector_width: Dv (int8 bytes per vector);
  vector_histories: the lengths of the histories whose vectors the step
  reads (each behaviour's vector, int32 id and bool mask: Dv + 5 bytes);
  attended: the length of the history the target attention reads (its ID
  embeddings, ids and mask); emb: the model's `EmbeddingConfig` (its
  fields, float32 width D); param_bytes: the parameters, read once.
  """
  d = 4 * emb.dim  # float32 bytes of one embedding
  ids = 4 * (len(emb.user_fields) + len(emb.target_fields) + 1)  # + label
  histories = sum(b * t * (vector_width + 5) for t in vector_histories)
  embeddings = b * (len(emb.user_fields) + len(emb.target_fields)) * d
  attention = b * attended * (len(emb.seq_fields) * (d + 4) + 1)
  return histories + b * ids + embeddings + attention + param_bytes


def step_limits(seconds, limit_bytes, copy_rate, flops, matmul_rate):
  """A step's time against its memory limit (bytes / copy rate) and its
  compute limit (FLOPs / matmul rate): `step_over_roofline` divides by the
  larger, so it is never above `step_over_limit`."""
  limit_s, compute_s = limit_bytes / copy_rate, flops / matmul_rate
  return {'step_ms': round(seconds * 1e3, 1),
          'limit_mb': round(limit_bytes / 1e6, 1),
          'limit_ms': round(limit_s * 1e3, 2),
          'step_over_limit': round(seconds / limit_s, 2),
          'gflop': round(flops / 1e9, 3),
          'compute_limit_ms': round(compute_s * 1e3, 2),
          'step_over_roofline': round(seconds / max(limit_s, compute_s), 2)}


def bench_ctr_train(config, workdir):
  """CTR training examples/s of the trainer's step, on the world's vocabulary,
  each setting against its memory and its compute limit.

  - `id` and `simtier_make` (frozen MAKE, as configured) at L = the world's
    seq_len (50);
  - official setting: `simtier_official` with a `long_history` (1000) history:
    SimTier over all of it, attention over the L most recent;
  - GSU setting (`retrieve_top_k`): retrieve the `gsu_top_k` (50) of the
    1000 closest to the target by cosine, attention over those, SimTier over
    the L most recent (padding counted, unmasked, as the official code). The
    official `din` step does this retrieval too, and runs a (forward-only,
    discarded) attention over the 50 retrieved plus its attention over the 50
    most recent: similar work, not identical.
  Batch `ctr_batch_size` (1000), 16-d ids, 128-d int8 vectors;
  `ctr_num_batches` different batches cycled, histories partly padded.

  The limit: `ctr_step_bytes` (for the official setting ~137 MB per batch
  of 1000, nearly all the long history's int8 vectors) at the copy
  bandwidth of this run (`copy_rates`: gathering the long history's rows
  from the same table, and a memcpy; the faster of the two, measured just
  before each setting). `*_step_over_limit` = step time / limit time: 1 is
  a step that does nothing but read its inputs once. The short-history
  settings read little (~10 MB) and are bound by the attention's compute,
  not memory: their ratio is large by nature.

  The compute limit: XLA's FLOP count of the step over a float copy of the
  table (`*_gflop`; the gathered cosine path, B T Dv multiply-adds per
  cosine pass, not the all-pairs path's B V Dv that the int8 step runs
  because it is faster here) at the float32 matmul rate measured just
  before each setting (the best of 3 bursts). `*_step_over_roofline` =
  step time / the larger of the two limits: how far the step is from what
  this hardware allows.
  """
  del workdir
  rng = np.random.default_rng(0)
  sizes = ctr_data.sizes(config.world.to_dict())
  b, seq_len = config.ctr_batch_size, config.world.seq_len
  dv = 128
  vectors = unit_int8_vectors(rng, sizes['num_items'], dv)
  out = {'batch_size': b, 'seq_len': seq_len,
         'long_history': config.long_history, 'gsu_top_k': config.gsu_top_k,
         'batches_cycled': config.ctr_num_batches,
         'num_items': sizes['num_items'], 'num_users': sizes['num_users']}
  short = ctr_batches(rng, config.ctr_num_batches, b, sizes, seq_len)
  long = ctr_batches(rng, config.ctr_num_batches, b, sizes, seq_len,
                      long_len=config.long_history)
  long_ids = long[0]['long_seq_item']
  # name: (variant, batches, vector histories, attended length, overrides)
  settings = {
      'id': ('id', short, (), seq_len, {}),
      'simtier_make': ('simtier_make', short, (seq_len,), seq_len, {}),
      'official_setting': ('simtier_official', long, (config.long_history,),
                           seq_len, {}),
      'gsu_setting': ('simtier_official', long,
                      (config.long_history, seq_len), config.gsu_top_k,
                      dict(retrieve_top_k=config.gsu_top_k,
                           simtier_mask_padding=False)),
  }
  rates, peaks = [], []
  work_table = int8.dequantize(vectors)  # float: the gathered cosine path
  for name, (variant, batches, histories, attended, overrides) in (
      settings.items()):
    rates.append(copy_rates(vectors, long_ids))  # just before: same load
    peaks.append(_matmul_flops_per_s(repeats=3, bursts=3))
    rate = max(rates[-1].values())
    seconds, stepper = _ctr_step_seconds(config, variant, batches, vectors,
                                         **overrides)
    limit = ctr_step_bytes(b, dv, histories, attended, stepper.embedding,
                           stepper.param_bytes)
    out[f'{name}_examples_per_second'] = round(b / seconds)
    out.update({f'{name}_{k}': v for k, v in step_limits(
        seconds, limit, rate, stepper.flops(work_table), peaks[-1]).items()})
  for kind in ('gather', 'memcpy'):
    out[f'{kind}_gb_per_second'] = round(
        float(np.median([r[kind] for r in rates])) / 1e9, 2)
  out['matmul_gflop_per_second'] = round(float(np.median(peaks)) / 1e9, 1)
  return out
