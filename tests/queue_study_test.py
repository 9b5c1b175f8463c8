"""Tests of the queue study job (SCL settings grid -> table)."""

import json
import os
import tempfile

from absl.testing import absltest
import fixtures

from experiments import queue_study
from experiments.configs import queue_study as study_config


class QueueStudyTest(absltest.TestCase):

  def test_grid_separates_the_factors(self):
    c = study_config.get_config()
    names = c.only.split(',')
    self.assertLen(names, len(c.runs))
    settings = [tuple(sorted(queue_study.run_config(
        c, c.runs[n], '').to_dict().items(), key=str)) for n in names]
    self.assertLen(set(map(str, settings)), len(names))  # no duplicate runs
    combos = {(c.runs[n].get('negatives', 'queue'),
               c.runs[n].get('key_encoder', 'momentum'))
              for n in names}
    self.assertLen(combos, 4)

  def test_one_tiny_run_and_table(self):
    c = study_config.get_config('tiny')
    c.data_dir = fixtures.tiny_world_dir()
    c.only = 'in_batch-momentum-s2'
    workdir = tempfile.mkdtemp()
    rows = queue_study.run(c, workdir)
    row = rows['in_batch-momentum-s2']
    self.assertEqual((row['negatives'], row['key_encoder'], row['num_steps']),
                     ('in_batch', 'momentum', 2))
    self.assertIsNone(row['queue_size'])
    self.assertBetween(row['text recall@10'], 0.0, 1.0)
    with open(os.path.join(workdir, 'queue_study.json')) as f:
      self.assertEqual(json.load(f), rows)
    with open(os.path.join(workdir, 'queue_study.md')) as f:
      self.assertIn('| in_batch-momentum-s2 | in_batch | momentum |', f.read())
    # A finished run is read back, not trained again.
    self.assertEqual(queue_study.run(c, workdir), rows)
    c.only = 'nope'
    with self.assertRaisesRegex(ValueError, 'unknown runs'):
      queue_study.run(c, workdir)


if __name__ == '__main__':
  absltest.main()
