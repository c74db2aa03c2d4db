"""Command-line entry points: the shared flags (`--config`, `--workdir`,
`--allow_config_change`), their common start, and their error handling.

Flags are defined when a command starts (`run`), never on import, so the library modules
(train, evaluate, icfil, ...) can be imported together, by tests or by other programs, without
defining a flag. A command with more flags passes a function that defines them:

  if __name__ == '__main__':
    cli.run(main)            # or cli.run(main, define_flags)

`run` (or `user_errors()`) prints the project's errors as one message without a traceback.
"""
import contextlib
import json
import os
import sys
from typing import Callable, Optional

from absl import app, flags, logging
from ml_collections import config_flags

from purer_jax import data as data_lib
from purer_jax import parallel, train, utils, workdir as workdir_lib, zoo

# Errors whose message is the whole story; anything else keeps its traceback.
USER_ERRORS = (utils.UserError, OSError, FloatingPointError, json.JSONDecodeError)


def define_flags():
  """--config, --workdir and --allow_config_change (once per process)."""
  if 'config' in flags.FLAGS:
    return
  config_flags.DEFINE_config_file(
      'config', None, 'Config file and variant, e.g. configs/ss.py:smoke; override fields '
      'with --config.meta.shots=5.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Work directory (teachers, checkpoints, results).')
  flags.DEFINE_bool(
      'allow_config_change', False, 'Reuse a workdir whose teachers or checkpoints were made '
      'with other config values (listed as a warning instead of refused).')


def config_and_workdir(splits=()):
  """The locked config and the work directory, checked before any work: the workdir's teachers
  and checkpoints fit the config (`purer_jax.workdir.check`) and every data split the entry
  point will read (`splits`, of each dataset of the run) is there. Then W/config.json is
  written (the one it replaces goes to W/config_history/)."""
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  f = flags.FLAGS
  config = f.config
  if config is None:
    raise app.UsageError('--config is required, e.g. --config=configs/ss.py:smoke')
  workdir = f.workdir or config.workdir
  if not workdir:
    raise app.UsageError('--workdir is required')
  prepare(config, workdir, splits=splits, allow_change=f.allow_config_change)
  return config, workdir


def prepare(config, workdir: str, *, splits=(), allow_change: bool = False):
  """`config_and_workdir` without the flags."""
  workdir_lib.check(config, workdir, zoo_config=zoo.read_manifest(workdir).get('config'),
                    allow_change=allow_change)
  if config.teachers.source != 'pretrain':  # imported teachers need no meta-train images
    splits = [s for s in splits if s != 'meta_train']
  for name, data_dir, source in train.datasets(config):
    for split in splits:
      data_lib.check(name, split, data_dir, source)
  os.makedirs(workdir, exist_ok=True)
  if parallel.is_primary():  # one writer under jax.distributed
    workdir_lib.record_config(config, workdir)


@contextlib.contextmanager
def user_errors():
  """USER_ERRORS become `<Type>: message` on stderr and exit status 1."""
  try:
    yield
  except USER_ERRORS as e:
    print(f'{type(e).__name__}: {e}', file=sys.stderr)
    raise SystemExit(1) from None


def run(main: Callable, define_extra: Optional[Callable] = None):
  """Defines the flags (the shared ones and `define_extra()`'s), then absl's `app.run(main)`
  inside `user_errors()`, in the multi-process run the environment names, if any
  (`purer_jax.parallel.initialize`)."""
  define_flags()
  if define_extra is not None:
    define_extra()

  def guarded(argv):
    with user_errors():
      parallel.initialize()
      return main(argv)
  app.run(guarded)
