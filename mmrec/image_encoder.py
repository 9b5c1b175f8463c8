"""Image towers: ViT-style (patches -> transformer) or a small ResNet-style
conv net; both map pixels to one pooled feature.

Shape letters: B batch, S image side, P patch side, N = (S / P)^2 patches,
D width.

Images come in as pixel values in [0, 255], uint8 (what the pipelines give) or
any float dtype holding the same values; the tower scales them to [-1, 1]
itself, so callers never normalise.

Why two kinds: a ViT has no locality prior and learns slowly from small
images at CPU budgets; convolutions share weights over positions and learn
edges and textures from few steps. `kind` picks one (experiments/configs/
scl.py says which is the default and why).
"""

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmrec import layers

KINDS = ('vit', 'conv')


@dataclasses.dataclass(frozen=True)
class ImageEncoderConfig:
  """Image tower hyper-parameters (defaults fit 16x16 and 32x32 images).

  'vit' reads patch_size, width, depth, num_heads, mlp_dim, pool; 'conv'
  reads conv_widths (one stage each: the first at side S / stem_stride, each
  later one halves the side), blocks_per_stage and stem_stride. The feature is `width`
  wide for 'vit' and conv_widths[-1] wide for 'conv'.
  """
  kind: str = 'vit'
  patch_size: int = 4
  width: int = 128
  depth: int = 2
  num_heads: int = 4
  mlp_dim: int = 256
  pool: str = 'gap'  # 'gap' (mean over patches) or 'cls' (a learned token).
  conv_widths: Sequence[int] = (32, 64, 128)
  blocks_per_stage: int = 1
  stem_stride: int = 2  # 'conv': the first stage runs at side S / stem_stride

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f'kind must be one of {KINDS}, got {self.kind!r}.')
    if self.pool not in ('gap', 'cls'):
      raise ValueError(f"pool must be 'gap' or 'cls', got {self.pool!r}.")
    if self.width % self.num_heads:
      raise ValueError(f'width {self.width} is not divisible by num_heads '
                       f'{self.num_heads}.')
    # ConfigDicts hand sequences over as lists: keep the config hashable.
    object.__setattr__(self, 'conv_widths', tuple(self.conv_widths))
    if not self.conv_widths or min(self.conv_widths) < 1:
      raise ValueError(f'conv_widths must be positive widths, got '
                       f'{self.conv_widths}.')
    if self.stem_stride < 1:
      raise ValueError(f'stem_stride must be >= 1, got {self.stem_stride}.')
    if self.blocks_per_stage < 1:
      raise ValueError(f'blocks_per_stage must be >= 1, got '
                       f'{self.blocks_per_stage}.')

  @property
  def features(self) -> int:
    return self.conv_widths[-1] if self.kind == 'conv' else self.width


def _conv(features, kernel, strides=1, name=None,
          init=nn.initializers.he_normal()):
  return nn.Conv(
      features, (kernel, kernel), strides=(strides, strides), padding='SAME',
      use_bias=False, name=name,
      kernel_init=nn.with_logical_partitioning(init,
                                               (None, None, None, 'embed')))


def _norm(name=None):
  # GroupNorm, not BatchNorm: no batch statistics to carry through the pure
  # step or to mismatch between training and the single-item serving path.
  return nn.GroupNorm(num_groups=None, group_size=8, name=name)


class ResidualBlock(nn.Module):
  """Pre-activation basic block (two 3x3 convs), optional stride-2 entry."""
  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x):
    y = nn.relu(_norm('norm_0')(x))
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = _conv(self.features, 1, self.strides, name='proj')(y)
    y = _conv(self.features, 3, self.strides, name='conv_0')(y)
    y = nn.relu(_norm('norm_1')(y))
    # Zero-initialised last conv: each block starts as (a projection of) the
    # identity, so a residual net trains at a high learning rate from step 0.
    y = _conv(self.features, 3, name='conv_1', init=nn.initializers.zeros)(y)
    return shortcut + y


def _scale(images):
  return images.astype(jnp.float32) / 127.5 - 1.0


class ConvEncoder(nn.Module):
  """(B, S, S, 3) pixels -> (B, conv_widths[-1]): ResNet-style stages, GAP."""
  config: ImageEncoderConfig

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    cfg = self.config
    x = _conv(cfg.conv_widths[0], 3, cfg.stem_stride,
              name='stem')(_scale(images))
    for i, width in enumerate(cfg.conv_widths):
      for j in range(cfg.blocks_per_stage):
        x = ResidualBlock(width, 2 if i and not j else 1,
                          name=f'stage_{i}_block_{j}')(x)
    x = nn.relu(_norm('final_norm')(x))
    return nn.LayerNorm(name='encoder_norm')(x.mean(axis=(1, 2)))


class VitEncoder(nn.Module):
  """(B, S, S, 3) pixels -> (B, width): patches, transformer, pooled."""
  config: ImageEncoderConfig

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    cfg = self.config
    s, p = images.shape[-2], cfg.patch_size
    if images.shape[-3] != s or s % p:
      raise ValueError(f'Images must be square with a side divisible by '
                       f'patch_size={p}, got shape {images.shape}.')
    x = _scale(images)
    # A strided conv is the patch embedding: one Dense per P x P patch.
    x = nn.Conv(
        cfg.width, (p, p), strides=(p, p), padding='VALID', name='embedding',
        kernel_init=nn.with_logical_partitioning(
            layers.default_init, (None, None, None, 'embed')))(x)
    b = x.shape[0]
    x = x.reshape(b, -1, cfg.width)  # (B, N, D)
    # Learned (not sinusoidal) positions: N is fixed by the image size.
    x = x + self.param(
        'pos_embedding',
        nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                     (None, 'length', 'embed')),
        (1, x.shape[1], cfg.width))
    if cfg.pool == 'cls':
      cls = self.param(
          'cls', nn.with_logical_partitioning(nn.initializers.zeros,
                                              (None, None, 'embed')),
          (1, 1, cfg.width))
      x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, cfg.width)), x], 1)
    for i in range(cfg.depth):
      x = layers.TransformerBlock(cfg.num_heads, cfg.mlp_dim,
                                  name=f'block_{i}')(x)
    # Pre-LN blocks leave the residual stream unnormalised: normalise once.
    x = nn.LayerNorm(name='encoder_norm')(x)
    return x[:, 0] if cfg.pool == 'cls' else x.mean(axis=1)


def ImageEncoder(config: ImageEncoderConfig, name=None) -> nn.Module:  # pylint: disable=invalid-name
  """The tower of `config.kind`: (B, S, S, 3) pixels -> (B, features)."""
  cls = ConvEncoder if config.kind == 'conv' else VitEncoder
  return cls(config, name=name)
