"""Vectorised numpy rendering of item images, user photos and generic images.

An image is the leaf category's shape (a tapered super-ellipse with optional
arms and hole, see `taxonomy.SHAPE_FIELDS`) filled with the concept's colour
and pattern, placed on a background by a `Presentation`: scale, offset,
rotation, lighting, noise, clutter and blur. Catalogue images use the shop's
presentation plus per-item jitter; user photos (search queries) use a
different, messier photographic style.
"""

import dataclasses

import numpy as np

from mmrec.data import taxonomy as taxonomy_lib

_CHUNK = 2048  # images per vectorised block: bounds memory at large sizes


@dataclasses.dataclass
class Presentation:
  """Per-image presentation parameters, each an array over N images."""
  bg: np.ndarray  # (N, 3) background colour at the top
  bg2: np.ndarray  # (N, 3) background colour at the bottom
  scale: np.ndarray  # (N,)
  offset: np.ndarray  # (N, 2)
  angle: np.ndarray  # (N,) radians
  brightness: np.ndarray  # (N,)
  light: np.ndarray  # (N, 2) lighting gradient
  noise: np.ndarray  # (N,) pixel noise std
  blur: np.ndarray  # (N,) bool: one 3x3 box blur
  clutter: np.ndarray  # (N,) bool: random blobs on the background

  def take(self, idx):
    # float32 halves the rendering time of float64 at no visible cost.
    return Presentation(**{
        k: v[idx].astype(np.float32) if v.dtype.kind == 'f' else v[idx]
        for k, v in vars(self).items()})


def catalogue_presentation(cfg, shop, rng):
  """Shop style for each shop id in `shop`, plus per-item jitter."""
  s = np.random.default_rng(rng.integers(2**63))  # shop styles
  ns = cfg.num_shops
  bg = s.uniform(0.7, 1.0, (ns, 3))
  shop_p = Presentation(
      bg=bg, bg2=np.clip(bg + s.normal(0, 0.08, (ns, 3)), 0, 1),
      scale=s.uniform(0.55, 0.8, ns), offset=s.uniform(-0.08, 0.08, (ns, 2)),
      angle=s.uniform(-0.2, 0.2, ns), brightness=s.uniform(0.9, 1.05, ns),
      light=s.uniform(-0.1, 0.1, (ns, 2)),
      noise=cfg.image_noise * s.uniform(0.5, 1.5, ns),
      blur=np.zeros(ns, bool), clutter=np.zeros(ns, bool)).take(shop)
  n, j = len(shop), cfg.item_jitter
  shop_p.scale = shop_p.scale * (1 + rng.normal(0, j, n))
  shop_p.offset = shop_p.offset + rng.normal(0, j, (n, 2))
  shop_p.angle = shop_p.angle + rng.normal(0, 2 * j, n)
  shop_p.brightness = shop_p.brightness * (1 + rng.normal(0, j, n))
  return shop_p


def photo_presentation(cfg, n, rng):
  """User photos: cluttered backgrounds, crops, blur, harsh light, noise."""
  return Presentation(
      bg=rng.uniform(0.2, 0.9, (n, 3)), bg2=rng.uniform(0.2, 0.9, (n, 3)),
      scale=rng.uniform(0.7, 1.1, n), offset=rng.uniform(-0.25, 0.25, (n, 2)),
      angle=rng.uniform(-0.6, 0.6, n), brightness=rng.uniform(0.7, 1.1, n),
      light=rng.uniform(-0.3, 0.3, (n, 2)),
      noise=cfg.photo_noise * rng.uniform(0.7, 1.3, n),
      blur=rng.random(n) < 0.7, clutter=rng.random(n) < 0.7)


def generic_presentation(cfg, n, rng):
  """Generic web images: plain backgrounds of any colour, mild variation."""
  bg = rng.uniform(0.0, 1.0, (n, 3))
  return Presentation(
      bg=bg, bg2=bg, scale=rng.uniform(0.5, 0.9, n),
      offset=rng.uniform(-0.15, 0.15, (n, 2)), angle=rng.uniform(-0.4, 0.4, n),
      brightness=rng.uniform(0.8, 1.1, n), light=rng.uniform(-0.15, 0.15, (n, 2)),
      noise=cfg.image_noise * rng.uniform(0.5, 1.5, n),
      blur=np.zeros(n, bool), clutter=np.zeros(n, bool))


def _shape_field(shape, u, v):
  """Signed field (< 0 inside, about distance / size) of each item's shape."""
  f = {k: shape[:, i, None, None] for i, k in enumerate(
      taxonomy_lib.SHAPE_FIELDS)}
  half_w = np.maximum(f['ax'] * (1 + f['taper'] * v), 0.05)
  p = f['power']
  body = ((np.abs(u) / half_w)**p + (np.abs(v) / f['ay'])**p)**(1 / p) - 1
  arm = np.maximum(np.abs(v - f['arm_y']) / f['arm_h'],
                   np.abs(u) / f['arm_w']) - 1
  field = np.where(f['arm'] > 0, np.minimum(body, arm), body)
  hole_r = np.maximum(f['hole'], 1e-3)
  hole = np.where(f['hole'] > 0, 1 - np.sqrt(u**2 + v**2) / hole_r, -np.inf)
  return np.maximum(field, hole)


def _pattern(pattern, freq, phase, u, v):
  """Pattern weight in [0, 1] (0 = main colour, 1 = secondary colour)."""
  k = np.pi * freq[:, None, None]
  ph = phase[:, None, None]
  waves = np.stack([
      np.full_like(u, -1.0),  # plain
      np.sin(k * v + ph),  # striped
      np.sin(k * u + ph),  # ribbed
      np.cos(k * u + ph) * np.cos(k * v + ph) - 0.3,  # dotted
      np.sin(k * u + ph) * np.sin(k * v + ph),  # checked
      np.sin(k * (u + v) * 0.707 + ph),  # diagonal
  ])
  wave = np.take_along_axis(waves, pattern[None, :, None, None], 0)[0]
  return 1 / (1 + np.exp(np.float32(-6) * wave))


def _blobs(n, grid_x, grid_y, rng):
  """Random coloured blobs: background clutter of user photos."""
  centre = rng.uniform(-1, 1, (n, 3, 2)).astype(np.float32)
  radius = rng.uniform(0.15, 0.4, (n, 3)).astype(np.float32)
  colour = rng.uniform(0, 1, (n, 3, 3)).astype(np.float32)
  d2 = ((grid_x[None, None] - centre[..., 0, None, None])**2 +
        (grid_y[None, None] - centre[..., 1, None, None])**2)
  w = np.exp(-d2 / (2 * radius[..., None, None]**2))  # (n, 3, H, W)
  return np.einsum('nkhw,nkc->nhwc', w, colour), w.sum(1).clip(0, 1)


def _box_blur(img):
  p = np.pad(img, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='edge')
  h, w = img.shape[1:3]
  return sum(p[:, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9


def render(shape, colour, secondary, pattern, freq, pres, size, rng):
  """Renders N images as (N, size, size, 3) uint8.

  Args:
    shape: (N, len(SHAPE_FIELDS)) shape parameters of each item's leaf.
    colour: (N, 3) main colour in [0, 1]; secondary: (N, 3) pattern colour.
    pattern: (N,) pattern index into taxonomy.PATTERNS; freq: (N,) its
      spatial frequency.
    pres: a Presentation over the N images.
    size: image height and width in pixels.
    rng: numpy Generator (noise, pattern phase, clutter).
  """
  out = np.empty((len(shape), size, size, 3), np.uint8)
  g = ((np.arange(size) + 0.5) / size * 2 - 1).astype(np.float32)
  shape, colour, secondary, freq = (np.asarray(a, np.float32) for a in (
      shape, colour, secondary, freq))
  gx, gy = np.meshgrid(g, g)  # y grows downwards
  for lo in range(0, len(shape), _CHUNK):
    sl = slice(lo, lo + _CHUNK)
    p = pres.take(sl)
    n = len(p.scale)
    x = gx[None] - p.offset[:, 0, None, None]
    y = gy[None] - p.offset[:, 1, None, None]
    cos, sin = np.cos(p.angle)[:, None, None], np.sin(p.angle)[:, None, None]
    sc = p.scale[:, None, None]
    u, v = (cos * x + sin * y) / sc, (-sin * x + cos * y) / sc
    # Soft edge about one pixel wide: cheap anti-aliasing.
    mask = 1 / (1 + np.exp(np.clip(_shape_field(shape[sl], u, v) * size * 0.4,
                                   -30, 30)))
    phase = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    pw = _pattern(pattern[sl], freq[sl], phase, u, v)
    obj = (colour[sl, None, None] * (1 - pw[..., None]) +
           secondary[sl, None, None] * pw[..., None])
    t = (gy[None, ..., None] + 1) / 2
    bg = p.bg[:, None, None] * (1 - t) + p.bg2[:, None, None] * t
    if p.clutter.any():
      blob, weight = _blobs(n, gx, gy, rng)
      cl = p.clutter[:, None, None, None]
      bg = np.where(cl, bg * (1 - weight[..., None]) + blob, bg)
    img = bg * (1 - mask[..., None]) + obj * mask[..., None]
    light = (1 + p.light[:, 0, None, None] * gx + p.light[:, 1, None, None] * gy)
    img = img * (p.brightness[:, None, None] * light)[..., None]
    if p.blur.any():
      img = np.where(p.blur[:, None, None, None], _box_blur(img), img)
    img = img + rng.standard_normal(img.shape, np.float32) * p.noise[
        :, None, None, None]
    out[sl] = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
  return out


def concept_look(tax, concept, rng):
  """Colours, pattern and frequency that a concept's images are drawn with."""
  palette = np.array([c for _, c in taxonomy_lib.COLOURS])
  colour = palette[tax.concept_colour[concept]]
  style = tax.concept_style[concept]
  # Style sets the pattern's secondary shade and scale: visible, subtle.
  toward = np.where((style % 2 == 0)[:, None], 1.0, 0.0)
  secondary = colour * 0.4 + toward * 0.6
  freq = 2.5 + style + rng.uniform(-0.2, 0.2, len(concept))
  return colour, secondary, tax.concept_pattern[concept], freq


def render_concepts(cfg, tax, concept, pres, rng):
  """Renders images of the given concepts under the given presentation."""
  colour, secondary, pattern, freq = concept_look(tax, concept, rng)
  shape = tax.leaf_shape[tax.concept_leaf[concept]]
  return render(shape, colour, secondary, pattern, freq, pres,
                cfg.image_size, rng)
