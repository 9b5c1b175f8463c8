"""ViT-style image tower: patches -> transformer -> pooled feature.

Shape letters: B batch, S image side, P patch side, N = (S / P)^2 patches,
D width.

Images come in as pixel values in [0, 255], uint8 (what the pipelines give) or
any float dtype holding the same values; the tower scales them to [-1, 1]
itself, so callers never normalise.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmrec import layers


@dataclasses.dataclass(frozen=True)
class ImageEncoderConfig:
  """Image tower hyper-parameters (defaults fit 16x16 and 32x32 images)."""
  patch_size: int = 4
  width: int = 128
  depth: int = 2
  num_heads: int = 4
  mlp_dim: int = 256
  pool: str = 'gap'  # 'gap' (mean over patches) or 'cls' (a learned token).

  def __post_init__(self):
    if self.pool not in ('gap', 'cls'):
      raise ValueError(f"pool must be 'gap' or 'cls', got {self.pool!r}.")
    if self.width % self.num_heads:
      raise ValueError(f'width {self.width} is not divisible by num_heads '
                       f'{self.num_heads}.')


class ImageEncoder(nn.Module):
  """(B, S, S, 3) pixels in [0, 255] -> (B, D) feature (after a LayerNorm)."""
  config: ImageEncoderConfig

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    cfg = self.config
    s, p = images.shape[-2], cfg.patch_size
    if images.shape[-3] != s or s % p:
      raise ValueError(f'Images must be square with a side divisible by '
                       f'patch_size={p}, got shape {images.shape}.')
    x = images.astype(jnp.float32) / 127.5 - 1.0
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
