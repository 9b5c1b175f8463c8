"""Experiment configs: `get_config(arg)` -> ConfigDict, one file each."""

# The mesh of `:tiny` trainer configs: one device. A tiny step costs less
# than compiling it for a mesh of 8 (the suite's fake devices: the suite ran
# 11% faster). The tests whose subject is a mesh, and the launcher's, set
# their own.
TINY_MESH = dict(data=1, model=1)


def parse_choice(arg, choices, default, what):
  """`CHOICE[,tiny]` -> (choice, tiny); a clear error for anything else."""
  parts = [p for p in (arg or '').split(',') if p]
  tiny = 'tiny' in parts
  chosen = [p for p in parts if p != 'tiny']
  if len(chosen) > 1 or (chosen and chosen[0] not in choices):
    raise ValueError(f'config arg must be {what.upper()}[,tiny] with '
                     f'{what.upper()} in {tuple(choices)}, got {arg!r}')
  return (chosen[0] if chosen else default), tiny
