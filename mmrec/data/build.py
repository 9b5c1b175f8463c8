"""The world job: generate the marketplace, write it, print its summary.

`python -m experiments.main --config=experiments/configs/world.py[:tiny]
--workdir=DIR` writes the TFDS datasets, the oracle, the vocabulary and
`world_summary.json` (statistics + honesty table) under DIR.
"""

import json
import os
import time

from absl import logging

from mmrec import files
from mmrec.data import builders
from mmrec.data import honesty
from mmrec.data import world as world_lib

SUMMARY_FILE = 'world_summary.json'


def run(config, workdir):
  """Builds the world of `config.world` into `workdir`; returns the summary."""
  cfg = config.world
  world_lib.validate(cfg)
  summary_path = os.path.join(workdir, SUMMARY_FILE)
  if builders.is_complete(workdir) and os.path.exists(summary_path):
    with open(os.path.join(workdir, builders.CONFIG_FILE)) as f:
      if json.load(f) == builders.world_config_dict(cfg):
        logging.info('world already built in %s; reusing it', workdir)
        with open(summary_path) as f:
          summary = json.load(f)
        print(honesty.format_report(summary['statistics'],
                                    summary['honesty_auc']))
        return summary
  t0 = time.time()
  world = world_lib.generate(cfg)
  generate_s = time.time() - t0
  logging.info('writing array_record datasets to %s', workdir)
  builders.write(world, workdir)
  write_s = time.time() - t0 - generate_s
  stats = honesty.statistics(world)
  aucs = honesty.baseline_aucs(world)
  summary = {
      'statistics': stats, 'honesty_auc': aucs,
      'honesty_problems': honesty.check(aucs),
      'seconds': {'generate': round(generate_s, 2), 'write': round(write_s, 2)},
  }
  files.write_json(summary_path, summary)
  print(honesty.format_report(stats, aucs))
  print(f'\ngenerated in {generate_s:.1f}s, written in {write_s:.1f}s '
        f'to {workdir}')
  return summary
