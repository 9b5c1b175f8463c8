"""Images of converted datasets: read from a path, made RGB, resized.

One place for how a real image becomes the uint8 (S, S, 3) array the world's
images are, and for the errors a missing or unreadable file gives (naming
the table file, column, row and the image path). Transparent pixels (PNG
icons, emoji) are composited on a background, white unless the conversion
declares another (convert.image_background): PIL's plain RGB conversion
drops the alpha channel and shows what the transparent pixels happen to
hold, mostly black, a background no catalogue photo has.
"""

import os

import numpy as np
from PIL import Image

from mmrec.data import columns


WHITE = (255, 255, 255)


def check_background(background, where='convert.image_background'):
  """The background as a tuple of 3 ints in [0, 255], or ValueError."""
  bg = tuple(background)
  if len(bg) != 3 or not all(isinstance(v, (int, np.integer)) and 0 <= v <= 255
                             for v in bg):
    raise ValueError(f'{where} = {background!r}: expected 3 integers in '
                     '[0, 255] (R, G, B)')
  return tuple(int(v) for v in bg)


def to_rgb(im, background=WHITE):
  """A PIL image as RGB, transparent pixels composited on `background`."""
  if im.mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La') or (
      im.mode == 'P' and 'transparency' in im.info):
    im = im.convert('RGBA')
    out = Image.new('RGB', im.size, tuple(background))
    out.paste(im, mask=im.getchannel('A'))
    return out
  return im.convert('RGB')


def read(source_dir, rel, size, where, background=WHITE):
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
      return np.asarray(to_rgb(im, background).resize(
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


def read_many(source_dir, paths, size, path, column, rows=None,
              background=WHITE):
  """(N, size, size, 3) of `paths` (None / '' = no image: zeros)."""
  out = np.zeros((len(paths), size, size, 3), np.uint8)
  rows = range(len(paths)) if rows is None else rows
  for i, (r, rel) in enumerate(zip(rows, paths)):
    if rel is None or rel == '':
      continue
    out[i] = read(source_dir, rel, size, f'{path}, column {column!r}, row {r}',
                  background)
  return out
