r"""Where does MoCo's queue pay? SCL's negatives x keys, queue size, momentum.

  python -m experiments.main --config=experiments/configs/queue_study.py \
      --config.data_dir=/tmp/mmrec/demo_world --workdir=/tmp/mmrec/queue_study

(the world: `make demo`'s, i.e. world.py with --config.world.num_users=4000
--config.world.num_items=3000 --config.world.num_shops=150
--config.world.num_days=4). Each run is `experiments/configs/scl.py:scl` at the
demo's pre-training settings (batch 256, warmup 20, queue 2048, momentum
0.995 constant) with the overrides of its row in `runs`, trained in
`<workdir>/<name>/` (skipped when its pretrain_eval.json exists); then
`queue_study.json` and `queue_study.md`: held-out image / text recall@10 and
accuracy@1 per run. `--config.only=a,b` runs (and tabulates) a subset. Measured: ~55 min
on a 2-core CPU (README.md, Pre-training: the table and what it shows).
"""

import ml_collections

from experiments.configs import scl

_COMBOS = (('queue', 'momentum'), ('queue', 'online'),
           ('in_batch', 'momentum'), ('in_batch', 'online'))


def _runs(steps, long_steps, seed2):
  """{name: overrides}, in table order (names: m0999 = momentum 0.999)."""
  runs = {}
  # 1. The ablation's two factors apart, short (the demo) and longer.
  for n in (steps, long_steps):
    for neg, keys in _COMBOS:
      runs[f'{neg}-{keys}-s{n}'] = dict(negatives=neg, key_encoder=keys,
                                        num_steps=n)
  # 2. The queue's own knobs at the longer run (queue 2048, momentum 0.995
  # constant unless named): the momentum and its schedule, then the size.
  # (No cosine from 0.999: at 360 steps a constant 0.999 already leaves
  # 0.999^360 = 70% weight on the initial params in the keys; a cosine
  # from there only slows them more.)
  for m, sched in ((0.99, 'constant'), (0.99, 'cosine'), (0.995, 'cosine'),
                   (0.999, 'constant')):
    name = f'queue2048-m{m:g}-{sched}-s{long_steps}'.replace('.', '')
    runs[name] = dict(momentum=m, momentum_schedule=sched,
                      num_steps=long_steps)
  for size in (512, 8192):
    runs[f'queue{size}-m0995-s{long_steps}'] = dict(
        queue_size=size, num_steps=long_steps)
  # 3. A second seed of the rows that decide the default.
  for name in seed2:
    runs[f'{name}-seed1'] = dict(runs[name], seed=1)
  return runs


def get_config(arg=None):
  tiny = arg == 'tiny'
  c = ml_collections.ConfigDict()
  c.job = 'queue_study'
  c.data_dir = ''  # '' = <workdir>/world, built if missing
  c.scl = scl.get_config('scl,tiny' if tiny else 'scl')
  c.scl.update(warmup_steps=20, queue_size=2048, checkpoint_every=60)
  steps, long_steps = (2, 3) if tiny else (120, 360)
  c.scl.update(num_steps=steps)
  if tiny:
    c.scl.update(warmup_steps=1, queue_size=64)
  seed2 = (f'queue-momentum-s{long_steps}', f'in_batch-online-s{long_steps}')
  runs = _runs(steps, long_steps, seed2)
  c.runs = ml_collections.ConfigDict(runs)  # (a ConfigDict sorts its keys)
  c.only = ','.join(runs)  # the runs to do, in table order
  return c
