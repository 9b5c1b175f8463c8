"""Loads an exported CTR model version (export.py) and scores batches.

Depends on jax and numpy only: the scoring process never imports flax, the
model code or the trainers; everything it needs is in `models/v{step}/`
(the serialized `jax.export` program, the variables, the manifest).

Batches are padded to the smallest bucket size that holds them (repeating
row 0, dropped afterwards) and longer ones are cut into chunks of the
largest bucket, so only `len(buckets)` programs are ever compiled; `warm()`
compiles them all before a version takes traffic (hot reload swaps in a
warmed model).

Two entries: `score(batch)` takes model rows (each with its own history),
`score_request(user, candidates)` one user's fields and history once and
its candidates' fields: the service's path, whose program computes the
history side once per request instead of once per candidate (versions
exported before it existed fall back to `score` on the repeated rows).

Shape letters: B rows, L behaviour-sequence length, Lh the long history's
(long_seq_* fields, for a model trained with one), C item capacity, Dv
vector width.
"""

import hashlib
import json
import os

import jax
import numpy as np

from mmrec import files

MODEL_FILE, VARIABLES_FILE, MANIFEST = (
    'model.jaxexport', 'variables.npz', 'manifest.json')
REQUEST_FILE = 'request.jaxexport'  # one user's candidates (export.py)
CURRENT = files.POINTER


class ModelError(ValueError):
  """A model version is missing, corrupt, or does not fit its inputs."""


def sha256_file(path):
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def _unflatten(flat):
  out = {}
  for key, value in flat.items():
    node = out
    *parents, leaf = key.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return out


def current(models_dir):
  """The directory CURRENT points at."""
  name = files.read_pointer(models_dir, CURRENT)
  if name is None:
    raise ModelError(f'no model at {models_dir} (no {CURRENT} file): run the '
                     'export job (config.job = "export")')
  return os.path.join(models_dir, name)


def _program(directory, name):
  with open(os.path.join(directory, name), 'rb') as f:
    return jax.jit(jax.export.deserialize(bytearray(f.read())).call)


def read_exported(directory):
  """(manifest, jitted call, variables on the device) of an exported dir,
  its files checked against the manifest's sha256."""
  try:
    with open(os.path.join(directory, MANIFEST)) as f:
      manifest = json.load(f)
  except (OSError, ValueError) as e:
    raise ModelError(f'{directory}: cannot read {MANIFEST} ({e})') from e
  for name, digest in manifest['sha256'].items():
    if sha256_file(os.path.join(directory, name)) != digest:
      raise ModelError(f'{directory}: checksum mismatch in {name}')
  with np.load(os.path.join(directory, VARIABLES_FILE)) as f:
    variables = _unflatten({k: f[k] for k in f.files})
  return (manifest, _program(directory, MODEL_FILE),
          jax.device_put(variables, jax.devices()[0]))


class ServingModel:
  """One model version: `score(batch, vectors)` -> probabilities (B,)."""

  def __init__(self, directory):
    self.directory = directory
    self.manifest, self._call, self._variables = read_exported(directory)
    m = self.manifest
    self.version = f'v{m["step"]}'
    self.buckets = tuple(sorted(m['buckets']))
    self.seq_len = m['seq_len']
    # The long history's length, 0 if the model reads none (or predates it).
    self.long_seq_len = m.get('long_seq_len', 0)
    self.fields = m['fields']
    self.needs_vectors = m['vectors'] is not None
    self.request_fields = m.get('request')  # None: exported before it
    self._request = (None if self.request_fields is None else
                     _program(directory, self.request_fields['file']))

  def _padded(self, batch, size):
    out = {}
    for name, spec in self.fields.items():
      x = np.asarray(batch[name]).astype(spec['dtype'])
      want = tuple(spec['shape'])
      if x.shape[1:] != want:
        raise ModelError(f'field {name!r} has rows of shape {x.shape[1:]}, '
                         f'the model expects {want}')
      idx = np.concatenate([np.arange(len(x)),
                            np.zeros(size - len(x), np.int64)])
      out[name] = x[idx]
    return out

  def score(self, batch, vectors=None, with_logits=False):
    """Probabilities (B,) of a host batch (the model's fields, any B >= 1).

    `vectors`: the (C, Dv) int8 item table (a device array; see
    `device_table`), needed if the model reads vectors.
    """
    missing = sorted(set(self.fields) - set(batch))
    if missing:
      raise ModelError(f'batch lacks fields {missing}')
    if self.needs_vectors and vectors is None:
      raise ModelError(f'model {self.version} ({self.manifest["variant"]}) '
                       'needs the item-vector table')
    n = len(batch['item_id'])
    if n == 0:
      raise ModelError('empty batch')
    top = self.buckets[-1]
    probs, logits = [], []
    for lo in range(0, n, top):
      chunk = {k: np.asarray(v)[lo:lo + top] for k, v in batch.items()
               if k in self.fields}
      rows = len(chunk['item_id'])
      size = next(b for b in self.buckets if b >= rows)
      out = self._call(self._variables, self._padded(chunk, size),
                       vectors if self.needs_vectors else None)
      probs.append(np.asarray(out['probability'])[:rows])
      logits.append(np.asarray(out['logit'])[:rows])
    p = np.concatenate(probs)
    return (p, np.concatenate(logits)) if with_logits else p

  def score_request(self, user, candidates, vectors=None, with_logits=False):
    """Probabilities (C,) of one user's candidates: `user` its fields and
    history (the model's user and seq_* fields, one row), `candidates` the
    target fields (C rows, C >= 1). Equal to `score` of the C rows that
    repeat the user's, up to float rounding."""
    if self._request is None:  # an older version: the rows it stands for
      n = len(candidates['item_id'])
      rows = dict({k: np.repeat(np.asarray(v), n, 0)
                   for k, v in user.items()}, **candidates)
      return self.score(rows, vectors, with_logits)
    spec = self.request_fields
    missing = sorted((set(spec['user']) - set(user)) |
                     (set(spec['candidates']) - set(candidates)))
    if missing:
      raise ModelError(f'request lacks fields {missing}')
    if self.needs_vectors and vectors is None:
      raise ModelError(f'model {self.version} ({self.manifest["variant"]}) '
                       'needs the item-vector table')
    one = {}
    for name, f in spec['user'].items():
      one[name] = np.asarray(user[name]).astype(f['dtype']).reshape(
          [1] + f['shape'])
    cands = {name: np.asarray(candidates[name]).astype(f['dtype'])
             for name, f in spec['candidates'].items()}
    n = len(cands['item_id'])
    if n == 0:
      raise ModelError('no candidates')
    for name, f in spec['candidates'].items():
      if cands[name].shape != (n, *f['shape']):
        raise ModelError(f'candidate field {name!r} has shape '
                         f'{cands[name].shape}, the model expects '
                         f'({n}, {", ".join(map(str, f["shape"]))})')
    top = self.buckets[-1]
    probs, logits = [], []
    for lo in range(0, n, top):
      rows = min(top, n - lo)
      size = next(b for b in self.buckets if b >= rows)
      # Padded with copies of the chunk's first candidate, dropped below.
      idx = np.concatenate([np.arange(lo, lo + rows),
                            np.full(size - rows, lo)])
      out = self._request(self._variables, one,
                          {k: v[idx] for k, v in cands.items()},
                          vectors if self.needs_vectors else None)
      probs.append(np.asarray(out['probability'])[:rows])
      logits.append(np.asarray(out['logit'])[:rows])
    p = np.concatenate(probs)
    return (p, np.concatenate(logits)) if with_logits else p

  def device_table(self, rows):
    """(n, Dv) int8 rows -> the (C, Dv) device table the model expects."""
    if not self.needs_vectors:
      return None
    capacity = self.manifest['item_capacity']
    if len(rows) > capacity:
      raise ModelError(f'{len(rows)} items exceed model {self.version}\'s '
                       f'capacity of {capacity}: export with a larger '
                       'config.item_capacity')
    table = np.zeros((capacity, self.manifest['vectors']['dim']), np.int8)
    table[:len(rows)] = rows
    return jax.device_put(table, jax.devices()[0])

  def warm(self, vectors=None, rows=True):
    """Compiles every bucket's programs (before the version takes traffic):
    `score_request`'s, and `score`'s if `rows` (the service, which scores
    requests only, skips them: half the compiling at a reload). Raises
    ModelError if a warm-up score is not finite: a version with NaN
    parameters would answer every request with a 500 (or garbage), so it
    must never go live."""
    one = {name: np.zeros([1] + spec['shape'], spec['dtype'])
           for name, spec in self.fields.items()}
    for b in self.buckets:
      outs = []
      if rows or self._request is None:
        outs.append(self.score({k: np.repeat(v, b, 0)
                                for k, v in one.items()}, vectors))
      if self._request is not None:
        spec = self.request_fields
        outs.append(self.score_request({k: one[k] for k in spec['user']},
                                       {k: np.repeat(one[k], b, 0)
                                        for k in spec['candidates']},
                                       vectors))
      if not all(np.isfinite(p).all() for p in outs):
        raise ModelError(f'model {self.directory} scores a warm-up batch of '
                         f'{b} rows as NaN or infinite: not served (non-'
                         'finite parameters or inputs)')


class ServingEncoder:
  """The exported item encoder: (image, title) -> (D,) unit vector."""

  def __init__(self, directory):
    self.directory = directory
    self.manifest, self._call, self._params = read_exported(directory)
    m = self.manifest
    self.image_shape = (m['image_size'], m['image_size'], 3)
    self.title_length, self.vocab_size = m['title_length'], m['vocab_size']
    self.dim = m['dim']

  def encode(self, image, title):
    """uint8 (S, S, 3) image, int (T,) title token ids -> float32 (D,)."""
    image = np.asarray(image, np.uint8)
    title = np.asarray(title, np.int32)
    if image.shape != self.image_shape or title.shape != (self.title_length,):
      raise ModelError(f'image {image.shape} / title {title.shape}: the '
                       f'encoder takes {self.image_shape} / '
                       f'({self.title_length},)')
    return np.asarray(self._call(self._params, image[None], title[None]))[0]

  def warm(self):
    self.encode(np.zeros(self.image_shape, np.uint8),
                np.zeros(self.title_length, np.int32))
