r"""Every pre-training method x several seeds -> one comparison table.

  python -m experiments.main --config=experiments/configs/pretrain_sweep.py \
      --config.data_dir=/tmp/mmrec/world --workdir=/tmp/mmrec/pretrain

Runs each method of experiments/configs/scl.py that the dataset can serve
(the others are skipped, with the reason, in `pretrain_plan.json` and
`pretrain_table.md`; clip_e starts from the clip_o run of the same seed, or
from scratch where clip_o cannot run) in `<workdir>/<method>/seed_<k>/`,
skipping runs whose `pretrain_eval.json` exists, then writes
`pretrain_table.json` and `pretrain_table.md`: mean and std over seeds of
accuracy@1 / recall@10 for image and text queries, all held-out queries and
new items only, on the test part of the held-out queries;
`pretrain_validation_table.json` the same on the validation part (what a
pipeline chooses on; pretrain_table.md shows its image / text columns too);
and `pretrain_comparisons.json`: bootstrap intervals (over the test part's
sessions) of the differences of the claimed orderings.
Default world, 3 seeds, on a 2-core CPU: about 1.5 hours.
"""

import ml_collections

from experiments.configs import scl


def get_config(arg=None):
  tiny = arg == 'tiny'
  c = ml_collections.ConfigDict()
  c.job = 'pretrain_sweep'
  c.methods = ','.join(scl.METHODS)
  c.seeds = 1 if tiny else 3
  c.data_dir = ''  # '' = <workdir>/world, built if missing
  # Draws of held-out sessions for pretrain_comparisons.json (the 95%
  # intervals of the claimed orderings).
  c.bootstrap_resamples = 200 if tiny else 1000
  c.scl = scl.get_config('tiny' if tiny else None)  # shared settings
  if tiny:
    c.scl.num_steps = 4
  return c
