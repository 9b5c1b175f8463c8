"""Where a job's dataset lives, and the only place a world is written.

Two cases, nothing in between:
  * `config.data_dir` names a directory: it must already hold a complete
    dataset (a world or any producer's, see manifest.py); it is only ever read (mmrec never writes into a directory a
    user named for data).
  * `config.data_dir` is empty: the job's own `<workdir>/world`, built there
    from `config.world` if missing.

A world is built aside (`.<name>.building-*` beside the target) and renamed
into place when complete, so a reader never sees half a world. The target
must be absent, empty or hold a world built from the same config: a
directory with other files, or a world from another config, is refused
with a message that says which files or settings differ.
"""

import json
import os

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections

from mmrec import files
from mmrec.data import builders
from mmrec.data import manifest

WORLD_SUBDIR = 'world'


def data_dir(named, world_config, workdir):
  """A job's dataset directory: `named` (config.data_dir) or its own world.

  See the module docstring; `world_config` builds `<workdir>/world` when
  `named` is empty.
  """
  if named:
    path = os.path.abspath(os.path.expanduser(named))
    if not builders.is_complete(path):
      raise FileNotFoundError(
          f'config.data_dir={named}: no complete dataset there '
          f'(missing {manifest.FILE}). mmrec never writes into a data '
          'directory you name: build a world into a new directory with '
          '`python -m experiments.main --config=experiments/configs/world.py '
          '--workdir=NEW_DIR`, convert real data with '
          '`--config=experiments/configs/data.py:SOURCE '
          '--config.source_dir=YOUR_COPY --workdir=NEW_DIR`, or leave '
          f'config.data_dir empty to build a world in <workdir>/{WORLD_SUBDIR}.')
    return path
  path = os.path.join(os.path.abspath(workdir), WORLD_SUBDIR)
  # With several processes, process 0 builds and the others wait for it.
  if jax.process_index() == 0:
    build_world(world_config, path)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('mmrec_resolver_build_world')
  return path


def recorded_data_dir(config, workdir):
  """The dataset a finished job used, from its saved config: the resolved
  `data_dir` it recorded, or (a run saved before jobs recorded it, with
  data_dir '') its own `<workdir>/world`."""
  return config.data_dir or os.path.join(os.path.abspath(workdir),
                                         WORLD_SUBDIR)


def build_world(world_config, target, write_extra=None):
  """Builds the world of `world_config` into `target` unless it is there.

  Returns True if it built, False if `target` already held this world.
  `write_extra(world, directory)` may add files (e.g. a summary) to the world
  before it is moved into place.
  """
  # Imported here: generating needs the generator; reading a dataset not.
  from mmrec.data import world as world_lib  # pylint: disable=g-import-not-at-top
  wanted = builders.world_config_dict(ml_collections.ConfigDict(
      world_config))
  if builders.is_complete(target) and not builders.is_world(target):
    raise FileExistsError(
        f'{target} holds a dataset that is not a synthetic world '
        f'({manifest.load(target).name!r}); refusing to build a world there. '
        'Point config.data_dir at it, or choose another --workdir.')
  if builders.is_complete(target):
    with open(os.path.join(target, builders.CONFIG_FILE)) as f:
      found = json.load(f)
    if found != wanted:
      diff = sorted(k for k in set(found) | set(wanted)
                    if found.get(k) != wanted.get(k))
      raise ValueError(
          f'{target} already holds a world built from another config '
          f'(differs in {", ".join(diff)}); use another --workdir, or point '
          'config.data_dir at it to use it as it is.')
    logging.info('world already built in %s; reusing it', target)
    return False
  if os.path.isdir(target) and os.listdir(target):
    found = sorted(os.listdir(target))
    raise FileExistsError(
        f'{target} holds files but no complete world ({", ".join(found[:8])}'
        f'{", ..." if len(found) > 8 else ""}); refusing to write a world into '
        'it. Remove it, or choose another --workdir.')
  world_lib.validate(world_config)

  def fill(tmp):
    world = world_lib.generate(world_config)
    logging.info('writing the world (array_record) to %s', tmp)
    builders.write(world, tmp)
    if write_extra:
      write_extra(world, tmp)

  files.build_aside(target, fill)
  logging.info('world written to %s', target)
  return True


