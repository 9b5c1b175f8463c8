"""Tests of the image augmentations (mmrec.data.augment)."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from mmrec.data import augment

# One strength per augmentation, each strong enough to change any image.
_ON = dict(flip=True, max_shift=2, brightness=0.3, crop_min_scale=0.6,
           rotate=0.5, clutter=1.0, colour=0.3, saturation=0.5, blur=1.0,
           noise=0.05)
_ALL = augment.Options(**_ON)


def _images(n=8, size=12, seed=0):
  """Catalogue-like uint8 images: a plain light background with a
  gradient, a patterned dark object left of centre (so flips show)."""
  rng = np.random.default_rng(seed)
  x = np.zeros((n, size, size, 3), np.float32)
  x[:] = rng.uniform(190, 240, (n, 1, 1, 3))
  x += np.linspace(0, 10, size)[None, :, None, None]
  lo, hi = size // 4, size // 2 + 1
  x[:, lo:hi + 2, lo - 1:hi] = rng.uniform(20, 120, (n, 1, 1, 3))
  x[:, lo:hi + 2:2, lo - 1:hi] += 40
  return np.round(x).astype(np.uint8)


def _apply(images, options, seed=0, **kw):
  return augment.apply(images, options, np.random.default_rng(seed), **kw)


class AugmentTest(parameterized.TestCase):

  def test_all_off_is_the_identity(self):
    x = _images()
    self.assertFalse(augment.Options().enabled)
    np.testing.assert_array_equal(_apply(x, augment.Options()), x)

  @parameterized.parameters(*_ON)
  def test_each_changes_images_and_keeps_shape_and_dtype(self, name):
    x = _images()[:, None]  # (B, H, ...) fields like neg_image too
    got = _apply(x, augment.Options(**{name: _ON[name]}))
    self.assertEqual(got.shape, x.shape)
    self.assertEqual(got.dtype, np.uint8)
    self.assertFalse(np.array_equal(got, x), name)

  @parameterized.named_parameters(
      ('flip', augment.flip, False), ('shift', augment.shift, 0),
      ('brightness', augment.brightness, 0.0),
      ('crop', augment.resized_crop, 1.0), ('clutter', augment.clutter, 0.0),
      ('colour', lambda x, d, s: augment.colour(x, d, s, s), 0.0),
      ('blur', augment.blur, 0.0), ('noise', augment.noise, 0.0))
  def test_each_off_is_the_identity_and_draws_nothing(self, fn, off):
    # Drawing nothing keeps the other augmentations' draws, hence their
    # results, the same whether or not this one is listed.
    x = _images().astype(np.float32)
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    got = fn(x, augment._Draw(rng, len(x), slice(None)), off)
    np.testing.assert_array_equal(got, x)
    self.assertEqual(rng.bit_generator.state, state)

  def test_seeded(self):
    x = _images()
    np.testing.assert_array_equal(_apply(x, _ALL, seed=3),
                                  _apply(x, _ALL, seed=3))
    self.assertFalse(np.array_equal(_apply(x, _ALL, seed=3),
                                    _apply(x, _ALL, seed=4)))

  @parameterized.parameters(*_ON)
  def test_one_or_two_processes_give_the_same_rows(self, name):
    x = _images(n=8)
    opts = augment.Options(**{name: _ON[name]})
    one = _apply(x, opts, seed=5)
    two = [_apply(x[4 * i:4 * (i + 1)], opts, seed=5, process_index=i,
                  process_count=2) for i in range(2)]
    np.testing.assert_array_equal(np.concatenate(two), one)

  def test_all_on_one_or_two_processes(self):
    x = _images(n=8)[:, None].repeat(2, 1)  # (B, 2, H, W, C)
    one = _apply(x, _ALL, seed=6)
    two = [_apply(x[4 * i:4 * (i + 1)], _ALL, seed=6, process_index=i,
                  process_count=2) for i in range(2)]
    np.testing.assert_array_equal(np.concatenate(two), one)

  def test_flip_mirrors_half_the_rows(self):
    x = _images(n=64)
    got = _apply(x, augment.Options(flip=True))
    flipped = np.array([np.array_equal(g, i[:, ::-1]) for g, i in zip(got, x)])
    same = np.array([np.array_equal(g, i) for g, i in zip(got, x)])
    self.assertTrue(np.all(flipped | same))
    self.assertBetween(flipped.mean(), 0.3, 0.7)

  def test_crop_at_full_scale_without_rotation_is_the_identity(self):
    x = _images().astype(np.float32)
    draw = augment._Draw(np.random.default_rng(0), len(x), slice(None))
    np.testing.assert_allclose(augment.resized_crop(x, draw, 1.0, 0.0), x)
    # A window of half the side magnifies: the object grows.
    small = augment.resized_crop(x, draw, 0.5, 0.0)
    dark = lambda im: (im.mean(-1) < 150).mean()
    self.assertGreater(np.mean([dark(i) for i in small]),
                       np.mean([dark(i) for i in x]))

  def test_blur_and_noise_are_what_they_say(self):
    x = _images(size=16).astype(np.float32)
    draw = augment._Draw(np.random.default_rng(0), len(x), slice(None))
    blurred = augment.blur(x, draw, 1.0)
    pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='edge')
    np.testing.assert_allclose(blurred[:, 5, 7], pad[:, 5:8, 7:10].mean((1, 2)),
                               rtol=1e-5)
    noisy = augment.noise(x, draw, 0.05)
    self.assertAlmostEqual(float(np.std(noisy - x)), 0.05 * 255, delta=1.0)

  def test_clutter_paints_the_background_not_the_object(self):
    x = _images(n=32, size=16).astype(np.float32)
    draw = augment._Draw(np.random.default_rng(0), len(x), slice(None))
    got = augment.clutter(x, draw, 1.0)
    change = np.abs(got - x).mean(-1)
    object_mask = x.mean(-1) < 150
    self.assertGreater(change[~object_mask].mean(), 10.0)
    self.assertLess(change[object_mask].mean(), 1.0)

  def test_colour_changes_channels_differently(self):
    x = np.full((16, 4, 4, 3), 128, np.uint8)
    got = _apply(x, augment.Options(colour=0.3)).astype(float)
    self.assertGreater(np.std(got[:, 0, 0], axis=1).mean(), 5.0)
    # Saturation leaves grey images grey.
    np.testing.assert_array_equal(_apply(x, augment.Options(saturation=0.5)),
                                  x)


if __name__ == '__main__':
  absltest.main()
