"""Pre-training learns: trained encoders beat the untrained references.

On the tiny world (16x16 images, 145 held-out image and 162 text queries), a
short SCL run with the conv image tower must rank the purchased item better
than raw pixels for image queries and better than bag-of-tokens for text
queries, each on its own modality's item table. Margins from measurement
(100 steps, in-batch negatives, LR 2e-3, image flips on at the time):
image recall@10 0.248 vs raw pixels 0.124, text 0.525 vs bag-of-tokens
0.315. The ViT tower trained the
same way reaches 0.083 on images, below raw pixels: an image side that
regresses to it, or stops learning, fails here.

The SCL run is the one test in the suite whose time goes into running
steps, not compiling them: it runs as a user runs it, `experiments.main` in
its own process, compiled at XLA's default optimisation (half the CPU time
of conftest's compile-fast settings for these 100 steps).

Recall is read over every held-out query, both parts (the stored per-query
ranks): whether training learns needs all the queries the tiny world has,
and no choice is made here.
"""

import os
import subprocess
import sys

from absl.testing import absltest
import fixtures
import numpy as np

from experiments.configs import scl as scl_config
from mmrec import pretrain_eval
from mmrec import train_scl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config_flags(method):
  """The test's settings: ':tiny' with the default tower's widths."""
  widths = scl_config.get_config(method).encoder.image.conv_widths
  return (f'--config=experiments/configs/scl.py:{method},tiny',
          f'--config.data_dir={fixtures.tiny_world_dir()}',
          '--config.num_steps=100', '--config.learning_rate=2e-3',
          '--config.checkpoint_every=1000', '--config.log_every=50',
          f'--config.encoder.image.conv_widths={tuple(widths)}')


def _trained(method, workdir):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  subprocess.run(
      [sys.executable, '-m', 'experiments.main', f'--workdir={workdir}',
       *_config_flags(method)], cwd=ROOT, env=env, check=True,
      capture_output=True, text=True, timeout=900)
  return workdir


def _reference(method, workdir):
  """Raw pixels and bag-of-tokens train nothing: run in this process."""
  c = scl_config.get_config(f'{method},tiny')
  c.data_dir = fixtures.tiny_world_dir()
  train_scl.run(c, workdir)
  return workdir


def _recall(workdir, name):
  """recall@10 of slice `name` over every held-out query (both parts)."""
  with np.load(os.path.join(workdir, pretrain_eval.QUERIES_FILE)) as z:
    rank = z[f'{name}_rank']
  return float(np.mean(rank[rank >= 0] < 10))


class PretrainLearnsTest(absltest.TestCase):

  def test_scl_beats_raw_pixels_and_bag_of_tokens(self):
    tmp = lambda: self.create_tempdir().full_path
    scl = _trained('scl_no_queue', tmp())
    pixels, tokens = _reference('raw_pixels', tmp()), _reference(
        'bag_of_tokens', tmp())
    self.assertGreater(_recall(scl, 'image_on_image'),
                       1.5 * _recall(pixels, 'image'))
    self.assertGreater(_recall(scl, 'text_on_text'),
                       _recall(tokens, 'text') + 0.1)
    # The fused item vector serves both query kinds.
    self.assertGreater(_recall(scl, 'text'), _recall(tokens, 'text'))


if __name__ == '__main__':
  absltest.main()
