"""The int8 form of unit item vectors: round(SCALE * v), one scale everywhere.

The vector table stores it beside the float32 copy (vector_table.py), the
serving store holds only it (serving/vector_store.py), the CTR model reads
either (embedding.item_vectors dequantises; SimTier's and the GSU's cosines
need no dequantising, the scale cancels) and the index searches dequantised
rows (serving/ann_index.py). Unit vectors' components lie in [-1, 1], so
SCALE = 127 uses int8's whole symmetric range; a dequantised component is
within 1 / (2 * SCALE) of the float.
"""

import numpy as np

SCALE = 127


def quantize(vectors):
  """Float vectors (components clipped to [-1, 1]) -> int8 round(SCALE v)."""
  return np.round(np.clip(np.asarray(vectors, np.float32), -1, 1) *
                  SCALE).astype(np.int8)


def dequantize(q):
  """int8 rows -> float32 q / SCALE."""
  return np.asarray(q).astype(np.float32) / SCALE
