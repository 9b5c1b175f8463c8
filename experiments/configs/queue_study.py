r"""Where does MoCo's queue pay? SCL's negatives x keys, queue size, momentum.

  python -m experiments.main --config=experiments/configs/queue_study.py \
      --config.data_dir=/tmp/mmrec/demo_world --workdir=/tmp/mmrec/queue_study

(the world: the 4,000-user demo world of 2026-12-06, i.e. world.py with --config.world.num_users=4000
--config.world.num_items=3000 --config.world.num_shops=150
--config.world.num_days=4). Each run is `experiments/configs/scl.py:scl` at
the demo's pre-training settings before this study (batch 256, warmup 20,
queue 2048, momentum 0.995 constant) with the overrides of its row in `runs`,
trained in `<workdir>/<name>/` (skipped when its pretrain_eval.json exists);
then `queue_study.json` and `queue_study.md`: held-out image / text recall@10
and accuracy@1 per run. `--config.only=a,b` runs (and tabulates) a subset.
Measured: 13 runs in ~70 min on a 2-core CPU shared with other jobs (~2.5 min
per 120-step run, ~7.5 min per 360-step run); docs/pretraining.md, the queue
study, has the table and what it shows.
"""

import ml_collections

from experiments.configs import scl

_COMBOS = (('queue', 'momentum'), ('queue', 'online'),
           ('in_batch', 'momentum'), ('in_batch', 'online'))


def _runs(steps, long_steps):
  """{name: overrides}, in table order (names: m0999 = momentum 0.999)."""
  runs = {}
  # 1. The ablation's two factors apart, short (the demo) and longer.
  for n in (steps, long_steps):
    for neg, keys in _COMBOS:
      runs[f'{neg}-{keys}-s{n}'] = dict(negatives=neg, key_encoder=keys,
                                        num_steps=n)
  # 2. The queue's own knobs at the longer run (queue 2048, momentum 0.995
  # constant unless named): faster keys with and without the cosine
  # schedule, a 4x queue, the paper's 0.999; then the faster keys at the
  # demo's length. (No cosine from 0.999: at 360 steps a constant 0.999
  # already leaves 0.999^360 = 70% weight on the initial params in the keys;
  # a cosine from there only slows them more.)
  name = lambda m, s, n: f'queue2048-m{m:g}-{s}-s{n}'.replace('.', '')
  for m, sched in ((0.99, 'constant'), (0.99, 'cosine')):
    runs[name(m, sched, long_steps)] = dict(
        momentum=m, momentum_schedule=sched, num_steps=long_steps)
  runs[f'queue8192-m0995-s{long_steps}'] = dict(queue_size=8192,
                                                num_steps=long_steps)
  runs[name(0.999, 'constant', long_steps)] = dict(momentum=0.999,
                                                   num_steps=long_steps)
  runs[name(0.99, 'constant', steps)] = dict(momentum=0.99, num_steps=steps)
  return runs


def get_config(arg=None):
  tiny = arg == 'tiny'
  c = ml_collections.ConfigDict()
  c.job = 'queue_study'
  c.data_dir = ''  # '' = <workdir>/world, built if missing
  c.scl = scl.get_config('scl,tiny' if tiny else 'scl')
  # The demo's pre-training settings, pinned (not scl.py's defaults, which
  # this study moved): a row overrides only what it names.
  c.scl.update(warmup_steps=20, queue_size=2048, checkpoint_every=60,
               negatives='queue', key_encoder='momentum', momentum=0.995,
               momentum_schedule='constant')
  steps, long_steps = (2, 3) if tiny else (120, 360)
  c.scl.update(num_steps=steps)
  if tiny:
    c.scl.update(warmup_steps=1, queue_size=64)
  runs = _runs(steps, long_steps)
  c.runs = ml_collections.ConfigDict(runs)  # (a ConfigDict sorts its keys)
  c.only = ','.join(runs)  # the runs to do, in table order
  return c
