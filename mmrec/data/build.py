"""The world job: generate the marketplace, write it, print its summary.

`python -m experiments.main --config=experiments/configs/world.py[:tiny]
--workdir=DIR` writes the TFDS datasets, the oracle, the vocabulary and
`world_summary.json` (statistics + honesty table) into DIR, which must be
new or empty (or already hold this very world, which is then reused). The
world is built aside and renamed into place (see resolver.py).
"""

import json
import os
import time

from absl import logging

from mmrec import files
from mmrec.data import honesty
from mmrec.data import resolver

SUMMARY_FILE = 'world_summary.json'


def run(config, workdir):
  """Builds the world of `config.world` into `workdir`; returns the summary."""
  seconds = {}

  def summarise(world, directory):
    seconds['write'] = round(time.time() - t0, 2)
    stats = honesty.statistics(world)
    aucs = honesty.baseline_aucs(world)
    files.write_json(os.path.join(directory, SUMMARY_FILE), {
        'statistics': stats, 'honesty_auc': aucs,
        'honesty_problems': honesty.check(aucs),
        'seconds': {'generate_and_write': seconds['write']}})

  t0 = time.time()
  built = resolver.build_world(config.world, workdir, write_extra=summarise)
  path = os.path.join(workdir, SUMMARY_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'{workdir} holds this world but not its {SUMMARY_FILE} (a training '
        'job built it): use it as config.data_dir, or build the world job '
        'into a new --workdir.')
  with open(path) as f:
    summary = json.load(f)
  print(honesty.format_report(summary['statistics'], summary['honesty_auc']))
  if built:
    print(f'\ngenerated and written in {seconds["write"]:.1f}s to {workdir}')
  else:
    logging.info('world already built in %s; reused it', workdir)
  return summary
