"""Random image augmentations of the pre-training batches (numpy, on host).

Each augmentation is a small named function `(x, draw, strength) -> x` over
float32 images x (N, H, W, C) in [0, 255]; `Options` switches each one off
or on (a zero / False strength is the identity and draws nothing).
`AugmentImages` applies the enabled ones, in a fixed order, to the uint8
image fields of a batch.

Besides the generic flip / shift / brightness there are those that match the
gap between catalogue images and user photos (world.md: other backgrounds,
crops, blur, harsh light, stronger noise): `resized_crop` (with rotation),
`clutter`, `colour` (per-channel gain and saturation), `blur` and `noise`.
Flips are optional because they are wrong for data whose meaning has a
handedness (text in images, arrows, logos).

Process independence: grain seeds `rng` by (seed, batch index), the same on
every process. Every draw is made for the whole global batch (`_Draw`) and
each process keeps its slice's, so each row gets the augmentation it gets
with one process: identical training for any process count, at the cost of
drawing a few numbers per row of the global batch, not of reading or
augmenting its images. Per-pixel noise comes from a small bank of noise
fields drawn per batch (each row picks one), so it costs no per-pixel draw
for other processes' rows either. Assumes equal slices (`drop_remainder`).
"""

import dataclasses

import grain
import numpy as np

# Noise fields drawn per batch for `noise`: rows share one by chance only.
_NOISE_BANK = 64


@dataclasses.dataclass(frozen=True)
class Options:
  """Which augmentations run, and how strongly (0 / False = off).

  flip: random horizontal flip (p = 0.5).
  max_shift: random translation by up to this many pixels (edge padding).
  brightness: gain drawn from [1 - b, 1 + b] for the whole image.
  crop_min_scale: random resized crop: side drawn from [s, 1] of the image,
    placed anywhere inside it, resized back (bilinear); 1 = off.
  rotate: rotation drawn from [-r, r] radians with the crop (or alone).
  clutter: probability of 3 random colour blobs painted on the background
    (pixels close to the image's border colour).
  colour: per-channel gain drawn from [1 - c, 1 + c].
  saturation: blend with grey, factor drawn from [1 - s, 1 + s].
  blur: probability of one 3x3 box blur.
  noise: std of added Gaussian pixel noise, as a fraction of 255.
  """
  flip: bool = False
  max_shift: int = 0
  brightness: float = 0.0
  crop_min_scale: float = 1.0
  rotate: float = 0.0
  clutter: float = 0.0
  colour: float = 0.0
  saturation: float = 0.0
  blur: float = 0.0
  noise: float = 0.0

  @property
  def enabled(self):
    return self != Options()


class _Draw:
  """Draws for all `total` rows of the global batch, returns `mine`."""

  def __init__(self, rng, total, mine):
    self.rng, self.total, self.mine = rng, total, mine

  def random(self, *shape):
    return self.rng.random((self.total,) + shape)[self.mine]

  def uniform(self, lo, hi, *shape):
    return self.rng.uniform(lo, hi, (self.total,) + shape)[self.mine]


def flip(x, draw, on):
  if not on:
    return x
  # Drawn as (total,), as before options existed: same stream, same result.
  flipped = draw.random() < 0.5
  return np.where(flipped[:, None, None, None], x[:, :, ::-1], x)


def shift(x, draw, max_shift):
  """Translation by up to max_shift pixels; the border repeats the edge."""
  s = int(max_shift)
  if s <= 0:
    return x
  n, h, w, _ = x.shape
  padded = np.pad(x, ((0, 0), (s, s), (s, s), (0, 0)), mode='edge')
  dy, dx = draw.rng.integers(0, 2 * s + 1, (2, draw.total))[:, draw.mine]
  rows = dy[:, None] + np.arange(h)[None]
  cols = dx[:, None] + np.arange(w)[None]
  return padded[np.arange(n)[:, None, None], rows[:, :, None],
                cols[:, None, :]]


def brightness(x, draw, b):
  if b <= 0:
    return x
  return x * draw.uniform(1 - b, 1 + b, 1, 1, 1)


def _bilinear(x, ys, xs):
  """Samples x (N, H, W, C) at float pixel coords ys, xs (N, H', W')."""
  n, h, w, c = x.shape
  ys = np.clip(ys, 0, h - 1).astype(np.float32)
  xs = np.clip(xs, 0, w - 1).astype(np.float32)
  y0, x0 = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
  y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
  fy, fx = (ys - np.floor(ys))[..., None], (xs - np.floor(xs))[..., None]
  # Flat row indices and np.take: ~5x faster than 3-array fancy indexing.
  flat, base = x.reshape(-1, c), (np.arange(n) * h)[:, None, None]
  at = lambda yy, xx: np.take(flat, (base + yy) * w + xx, axis=0)
  top = at(y0, x0) * (1 - fx) + at(y0, x1) * fx
  bottom = at(y1, x0) * (1 - fx) + at(y1, x1) * fx
  return top * (1 - fy) + bottom * fy


def resized_crop(x, draw, min_scale, max_angle=0.0):
  """A square window of side [min_scale, 1] x the image, rotated by up to
  max_angle, anywhere inside the image, resized back to H x W (user photos
  are cropped closer and held at an angle). Outside the image (rotated
  corners) the edge repeats."""
  if min_scale >= 1 and max_angle <= 0:
    return x
  n, h, w, _ = x.shape
  scale = draw.uniform(min(min_scale, 1.0), 1.0).astype(np.float32)
  angle = draw.uniform(-max_angle, max_angle).astype(np.float32)
  # Centre offset (in units of the free margin) keeps the window inside.
  off = (draw.uniform(-1, 1, 2) * (1 - scale)[:, None] / 2).astype(np.float32)
  v, u = np.meshgrid(((np.arange(h) + 0.5) / h - 0.5).astype(np.float32),
                     ((np.arange(w) + 0.5) / w - 0.5).astype(np.float32),
                     indexing='ij')
  cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
  sc = scale[:, None, None]
  uu = sc * (cos * u[None] - sin * v[None]) + off[:, 0, None, None]
  vv = sc * (sin * u[None] + cos * v[None]) + off[:, 1, None, None]
  return _bilinear(x, (vv + 0.5) * h - 0.5, (uu + 0.5) * w - 0.5)


def clutter(x, draw, p):
  """With probability p, three soft colour blobs replace background pixels:
  those close to the median border colour (catalogue images sit on a plain
  background, user photos on a busy one)."""
  if p <= 0:
    return x
  _, h, w, _ = x.shape
  on = np.flatnonzero(draw.random() < p)
  f32 = lambda a: a[on].astype(np.float32)
  centre = f32(draw.uniform(0, 1, 3, 2))
  radius = f32(draw.uniform(0.15, 0.4, 3))
  colour = f32(draw.uniform(0, 255, 3, 3))
  x, rest = x[on], x  # only the rows drawn on are painted
  gy, gx = np.meshgrid(((np.arange(h) + 0.5) / h).astype(np.float32),
                       ((np.arange(w) + 0.5) / w).astype(np.float32),
                       indexing='ij')
  d2 = ((gx[None, None] - centre[..., 0, None, None])**2
        + (gy[None, None] - centre[..., 1, None, None])**2)
  weight = np.exp(-d2 / (2 * radius[..., None, None]**2))  # (N, 3, H, W)
  blob = np.einsum('nkhw,nkc->nhwc', weight, colour)
  weight = np.clip(weight.sum(1), 0, 1)[..., None]
  border = np.concatenate([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], 1)
  bg_colour = np.median(border, axis=1)[:, None, None]  # (N, 1, 1, C)
  # Soft background mask: 1 on the border colour, 0 beyond ~40 grey levels.
  dist = np.sqrt(np.sum((x - bg_colour)**2, -1, keepdims=True))
  bg = np.clip(1.5 - dist / 25, 0, 1)
  rest = rest.copy()
  rest[on] = x * (1 - weight * bg) + np.minimum(blob, 255) * bg * weight
  return rest


def colour(x, draw, gain, saturation):
  """Per-channel gain (colour cast of the light) and saturation."""
  if gain > 0:
    x = x * draw.uniform(1 - gain, 1 + gain, 1, 1, x.shape[-1]).astype(
        np.float32)
  if saturation > 0:
    grey = x.mean(-1, keepdims=True)
    x = grey + (x - grey) * draw.uniform(1 - saturation, 1 + saturation,
                                         1, 1, 1).astype(np.float32)
  return x


def blur(x, draw, p):
  """With probability p, one 3x3 box blur (edge padding)."""
  if p <= 0:
    return x
  on = draw.random() < p
  h, w = x.shape[1:3]
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='edge')
  blurred = sum(padded[:, i:i + h, j:j + w] for i in range(3)
                for j in range(3)) / 9
  return np.where(on[:, None, None, None], blurred, x)


def noise(x, draw, std):
  """Gaussian pixel noise of std `std` x 255 (each row picks one of a bank
  of fields drawn for the batch)."""
  if std <= 0:
    return x
  bank = draw.rng.standard_normal((_NOISE_BANK,) + x.shape[1:],
                                  dtype=np.float32)
  pick = draw.rng.integers(0, _NOISE_BANK, draw.total)[draw.mine]
  return x + bank[pick] * np.float32(std * 255)


def apply(images, options, rng, process_index=0, process_count=1):
  """Augments uint8 images (..., H, W, C) of this process's slice.

  `images` holds rows [process_index * n, (process_index + 1) * n) of the
  global batch's n * process_count (n = rows of `images` once flattened to
  (n, H, W, C)); see the module docstring.
  """
  o = options
  shape = images.shape
  x = images.reshape((-1,) + shape[-3:]).astype(np.float32)
  n = x.shape[0]
  draw = _Draw(rng, n * process_count,
               slice(process_index * n, (process_index + 1) * n))
  # Order: geometry, then the scene (background), then the light, then the
  # camera (blur, noise), as a photo is made.
  x = flip(x, draw, o.flip)
  x = resized_crop(x, draw, o.crop_min_scale, o.rotate)
  x = shift(x, draw, o.max_shift)
  x = clutter(x, draw, o.clutter)
  x = brightness(x, draw, o.brightness)
  x = colour(x, draw, o.colour, o.saturation)
  x = blur(x, draw, o.blur)
  x = noise(x, draw, o.noise)
  return np.clip(np.round(x), 0, 255).astype(np.uint8).reshape(shape)


@dataclasses.dataclass(frozen=True)
class AugmentImages(grain.transforms.RandomMap):
  """`apply` to each of the batch's uint8 image `fields`."""
  fields: tuple[str, ...]
  options: Options
  process_index: int = 0
  process_count: int = 1

  def random_map(self, batch, rng):
    out = dict(batch)
    for name in self.fields:
      out[name] = apply(batch[name], self.options, rng, self.process_index,
                        self.process_count)
    return out
