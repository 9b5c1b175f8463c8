"""A table cell over seeds: {mean, std, runs}, and how a table prints it.

The sweeps (ctr_sweep, pretrain_sweep) summarise each metric over their
runs with `cell`; the tables and the report print it with `text`. One run
prints the number alone: "± 0.000" would read as a measured spread of zero,
and a single run measures no spread at all.
"""

import numpy as np


def cell(values):
  """{mean, std, runs} of the finite values, or None without any."""
  values = [v for v in values if v is not None and np.isfinite(v)]
  if not values:
    return None
  return {'mean': float(np.mean(values)), 'std': float(np.std(values)),
          'runs': len(values)}


def text(c, digits=4):
  """'0.7450 ± 0.0012' over several runs, '0.7450' for one, 'n/a' for none.

  A cell without 'runs' (an older table) shows its std as before.
  """
  if not c or c.get('mean') is None:
    return 'n/a'
  mean = f'{c["mean"]:.{digits}f}'
  if c.get('runs', 2) < 2 or c.get('std') is None:
    return mean
  return f'{mean} ± {c["std"]:.{digits}f}'
