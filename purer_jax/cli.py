"""Command-line flags shared by every entry point (`--config`, `--workdir`,
`--allow_config_change`), defined once, and the entry points' common start and error handling.

Entry points read them through `config_and_workdir()` so that importing several of them
(as main and the tests do) never defines a flag twice, and run through `run()` (or
`user_errors()`), which prints the project's errors as one message without a traceback.
"""
import contextlib
import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from purer_jax import data as data_lib
from purer_jax import train, utils, workdir as workdir_lib, zoo

CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file and variant, e.g. configs/ss.py:smoke; override fields '
    'with --config.meta.shots=5.', lock_config=True)
WORKDIR = flags.DEFINE_string('workdir', None, 'Work directory (teachers, checkpoints, results).')
ALLOW_CHANGE = flags.DEFINE_bool(
    'allow_config_change', False, 'Reuse a workdir whose teachers or checkpoints were made with '
    'other config values (listed as a warning instead of refused).')
# Errors whose message is the whole story; anything else keeps its traceback.
USER_ERRORS = (utils.UserError, OSError, FloatingPointError, json.JSONDecodeError)


def config_and_workdir(splits=()):
  """The locked config and the work directory, checked before any work: the workdir's teachers
  and checkpoints fit the config (`purer_jax.workdir.check`) and every data split the entry
  point will read (`splits`, of each dataset of the run) is there. Then W/config.json is
  written (the one it replaces goes to W/config_history/)."""
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  config = CONFIG.value
  if config is None:
    raise app.UsageError('--config is required, e.g. --config=configs/ss.py:smoke')
  workdir = WORKDIR.value or config.workdir
  if not workdir:
    raise app.UsageError('--workdir is required')
  prepare(config, workdir, splits=splits, allow_change=ALLOW_CHANGE.value)
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
  workdir_lib.record_config(config, workdir)


@contextlib.contextmanager
def user_errors():
  """USER_ERRORS become `<Type>: message` on stderr and exit status 1."""
  try:
    yield
  except USER_ERRORS as e:
    print(f'{type(e).__name__}: {e}', file=sys.stderr)
    raise SystemExit(1) from None


def run(main):
  """absl's `app.run(main)` inside `user_errors()`."""
  def guarded(argv):
    with user_errors():
      return main(argv)
  app.run(guarded)
