"""Images of converted datasets: read from a path, made RGB, resized.

One place for how a real image becomes the uint8 (S, S, 3) array the world's
images are, and for the errors a missing or unreadable file gives (naming
the table file, column, row and the image path).
"""

import os

import numpy as np
from PIL import Image

from mmrec.data import columns


def read(source_dir, rel, size, where):
  """(size, size, 3) uint8 of `source_dir/rel`; `where` names file, column
  and row for errors."""
  if not isinstance(rel, str):
    raise columns.InputError(
        f'{where}: {type(rel).__name__} {_short(rel)}, expected the path of '
        'an image file (a string, relative to the source directory); image '
        'bytes or pixels in the table are not read: write them to files')
  full = os.path.join(source_dir, rel)
  try:
    with Image.open(full) as im:
      return np.asarray(im.convert('RGB').resize(
          (size, size), Image.Resampling.BILINEAR))
  except FileNotFoundError:
    raise columns.InputError(f'{where}: image {rel!r} not found (looked for '
                             f'{full})') from None
  except Image.DecompressionBombError as e:
    # Pillow's guard against a small file claiming billions of pixels.
    raise columns.InputError(f'{where}: image {full} refused: {e}') from None
  except (OSError, ValueError) as e:
    raise columns.InputError(f'{where}: cannot read image {full} ({e})'
                             ) from None


def _short(value):
  text = repr(value)
  return text if len(text) <= 40 else text[:37] + '...'


def read_many(source_dir, paths, size, path, column, rows=None):
  """(N, size, size, 3) of `paths` (None / '' = no image: zeros)."""
  out = np.zeros((len(paths), size, size, 3), np.uint8)
  rows = range(len(paths)) if rows is None else rows
  for i, (r, rel) in enumerate(zip(rows, paths)):
    if rel is None or rel == '':
      continue
    out[i] = read(source_dir, rel, size, f'{path}, column {column!r}, row {r}')
  return out
