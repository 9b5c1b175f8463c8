"""Device mesh, logical-axis rules and NamedShardings (the only module building them).

Modules name parameter axes logically ('vocab', 'embed', 'mlp', 'heads') via
`nn.with_logical_partitioning`; the rules here map those names onto the mesh
axes ('data', 'model'). Batches shard on 'data' along axis 0; embedding tables
shard their rows ('vocab') on 'model' so a table larger than one device fits.

A logical axis is only sharded when the mesh axes it maps to divide the
dimension; otherwise that dimension is replicated (logged). So a 1000-row table
on a 'model' axis of 3 runs, replicated, instead of failing: pad the vocabulary
to a multiple of the model-axis size to get it sharded.
"""

from collections.abc import Callable, Sequence
import functools
import math
from typing import Any

from absl import logging
from flax.core import meta
import jax
from jax.experimental import multihost_utils
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

MESH_AXES = ('data', 'model')

# (logical name, mesh axis or None). Names missing here are replicated.
DEFAULT_RULES = (
    ('batch', 'data'),
    ('vocab', 'model'),
    ('embed', None),
    ('mlp', None),
    ('heads', None),
    ('kv', None),
    ('length', None),
)

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]


def make_mesh(data: int = -1, model: int = 1,
              devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A ('data', 'model') mesh over `devices` (default: all); -1 = the rest.

  In one process, a mesh smaller than `devices` takes the first data x model
  of them (e.g. (1, 1): one device, as `:tiny` configs ask, where compiling
  for 8 devices costs more than the step); across processes it must span
  them all, or the other processes' collectives would wait forever.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if data == -1 and model == -1:
    raise ValueError('At most one of data, model may be -1 (all remaining '
                     'devices).')
  if data == -1 or model == -1:
    known = model if data == -1 else data
    if known <= 0 or n % known:
      raise ValueError(f'{n} devices do not divide into a mesh with '
                       f'data={data}, model={model}.')
    data, model = (n // known, model) if data == -1 else (data, n // known)
  if data <= 0 or model <= 0 or data * model > n:
    raise ValueError(f'Mesh data={data} x model={model} needs {data * model} '
                     f'devices, got {n}.')
  if data * model < n and jax.process_count() > 1:
    raise ValueError(f'Mesh data={data} x model={model} covers {data * model} '
                     f'of the {n} devices of {jax.process_count()} processes; '
                     'a mesh across processes must use every device (e.g. '
                     '--config.mesh.data=-1).')
  devices = devices[:data * model]
  # Auto axes: explicit axis types (make_mesh's default) break table lookups.
  return jax.make_mesh((data, model), MESH_AXES,
                       axis_types=(AxisType.Auto,) * 2, devices=devices)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Axis 0 split over 'data', the rest replicated (also over 'model')."""
  return NamedSharding(mesh, P('data'))


def check_process_blocks(devices, data_axis: int = 0):
  """Raises unless the 'data' axis is split into process-contiguous blocks.

  `devices`: the mesh's device array (anything with `.process_index`). With P
  processes, process p must hold exactly the p-th of P equal, contiguous
  blocks of the 'data' axis: then `jax.make_array_from_process_local_data`
  places each process's rows there and the global batch is the processes'
  slices concatenated in process order, as the pipelines assume (they give
  process p rows [p B/P, (p+1) B/P) of every global batch).
  """
  devices = np.moveaxis(np.asarray(devices, dtype=object), data_axis, 0)
  owners = [sorted({d.process_index for d in row.flat}) for row in devices]
  count = len({p for o in owners for p in o})
  size = len(owners)
  want = [[i * count // size] for i in range(size)]
  if count > 1 and (size % count or owners != want):
    raise ValueError(
        f"The mesh's 'data' axis (size {size}) must be split into {count} "
        f'contiguous blocks, one per process in process order, so that the '
        f'global batch is the processes\' slices concatenated; its rows '
        f'belong to processes {owners}. Use a data axis that is a multiple '
        f"of the process count (e.g. --config.mesh.data=-1) and a 'model' "
        f'axis within one process.')


def shard_batch(batch: Any, mesh: jax.sharding.Mesh) -> Any:
  """Host-local numpy batch (pytree) -> global jax.Arrays sharded on 'data'.

  Each process passes its own slice of the global batch; the global batch is
  the concatenation over processes in process order (see
  `check_process_blocks`, checked once per mesh).
  """
  if jax.process_count() > 1:
    _check_mesh_once(mesh)
  sharding = batch_sharding(mesh)

  def put(path, x):
    try:
      return jax.make_array_from_process_local_data(sharding, x)
    except ValueError as e:
      raise ValueError(
          f'shard_batch: {jax.tree_util.keystr(path)} of shape '
          f'{getattr(x, "shape", None)} cannot be split on axis 0 over '
          f"'data' (size {mesh.shape['data']}): {e}") from e

  return jax.tree_util.tree_map_with_path(put, batch)


def pad_batch(batch, size):
  """Pads axis 0 of every array to `size` (repeating row 0); returns (batch, n).

  The last batch of an evaluation pass is smaller: padding keeps one compiled
  shape, and the caller drops the padded rows by `n`.
  """
  n = len(next(iter(batch.values())))
  if n > size:
    raise ValueError(f'batch of {n} rows is larger than the pad size {size}')
  if n == size:
    return batch, n
  idx = np.concatenate([np.arange(n), np.zeros(size - n, np.int64)])
  return {k: v[idx] for k, v in batch.items()}, n


def to_host(tree):
  """Global arrays -> numpy on every host (metrics, predictions).

  On several hosts a batch-sharded output is not addressable from one
  process, so it is all-gathered (concatenated in process order).
  """
  if jax.process_count() == 1:
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)
  return multihost_utils.process_allgather(tree, tiled=True)


@functools.lru_cache(maxsize=8)
def _check_mesh_once(mesh: jax.sharding.Mesh):
  check_process_blocks(mesh.devices, mesh.axis_names.index('data'))


def _mesh_axes(name, rules: Rules, mesh: jax.sharding.Mesh):
  """One logical name (or a tuple of them) -> mesh axis, tuple or None."""
  if isinstance(name, tuple):
    mapped = [_mesh_axes(n, rules, mesh) for n in name]
    return tuple(a for m in mapped
                 for a in ((m,) if isinstance(m, str) else m or ()))
  for logical, mesh_axis in rules:
    if logical == name:
      return mesh_axis
  # nn.with_partitioning uses mesh axis names directly.
  return name if name in mesh.axis_names else None


def _spec(names, shape, mesh: jax.sharding.Mesh, rules: Rules) -> P:
  """Logical names (+ optional shape) -> PartitionSpec of mesh axes."""
  used, out = set(), []
  for i, name in enumerate(names or ()):
    axes = None if name is None else _mesh_axes(name, rules, mesh)
    axes_t = (axes,) if isinstance(axes, str) else tuple(axes or ())
    if used & set(axes_t):  # A mesh axis may shard only one dimension.
      axes_t = ()
    size = math.prod(mesh.shape[a] for a in axes_t)
    if axes_t and shape is not None and shape[i] % size:
      logging.info('Replicating axis %s (%d) of %s: not divisible by %s=%d.',
                   name, shape[i], tuple(shape), axes_t, size)
      axes_t = ()
    used |= set(axes_t)
    out.append(None if not axes_t else
               axes_t[0] if len(axes_t) == 1 else axes_t)
  return P(*out)


def _is_names(x) -> bool:
  return x is None or isinstance(x, P) or (
      isinstance(x, tuple)
      and all(n is None or isinstance(n, (str, tuple)) for n in x))


def logical_to_sharding(logical_axes_tree: Any, mesh: jax.sharding.Mesh,
                        rules: Rules = DEFAULT_RULES,
                        shapes: Any = None) -> Any:
  """Tree of logical-name tuples/PartitionSpecs -> tree of NamedShardings.

  `logical_axes_tree` is e.g. `nn.get_partition_spec(abstract_params)`; None or
  empty leaves are replicated. With `shapes` (a matching tree of objects with
  `.shape`), axes the mesh does not divide are replicated.
  """
  if shapes is None:
    return jax.tree.map(
        lambda n: NamedSharding(mesh, _spec(n, None, mesh, rules)),
        logical_axes_tree, is_leaf=_is_names)
  return jax.tree.map(
      lambda n, s: NamedSharding(
          mesh, _spec(n, getattr(s, 'shape', None), mesh, rules)),
      logical_axes_tree, shapes, is_leaf=_is_names)


def state_shardings(init_fn: Callable[..., Any], *args,
                    mesh: jax.sharding.Mesh,
                    rules: Rules = DEFAULT_RULES) -> Any:
  """NamedShardings for the output of `init_fn(*args)`, computed without FLOPs.

  Leaves boxed with `nn.with_logical_partitioning` (including optax moments
  built from boxed params) get their logical axes mapped by `rules`; all other
  leaves, e.g. optax's step counter, are replicated on the mesh, so the whole
  state lives on the mesh and can go through a jit with `in_shardings`. The
  result has one NamedSharding per box or array, so it is a valid `out_shardings`
  for `init_fn` and for `nn.unbox(init_fn(...))` alike.
  """
  abstract = jax.eval_shape(init_fn, *args)

  def leaf(x):
    if isinstance(x, meta.Partitioned):
      return NamedSharding(mesh, _spec(x.names, x.value.shape, mesh, rules))
    return NamedSharding(mesh, P())

  return jax.tree.map(leaf, abstract,
                      is_leaf=lambda x: isinstance(x, meta.Partitioned))
