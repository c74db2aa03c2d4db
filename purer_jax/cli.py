"""Command-line entry points: the shared flags (`--config`, `--workdir`,
`--allow_config_change`), their common start, and their error handling.

Flags are defined when a command starts (`run`), never on import, so the library modules
(train, evaluate, icfil, ...) can be imported together, by tests or by other programs, without
defining a flag. A command with more flags passes a function that defines them:

  if __name__ == '__main__':
    cli.run(main)            # or cli.run(main, define_flags)

`run` (or `user_errors()`) prints the project's errors as one message without a traceback.
A refused command line exits with status 2 before any work: a bad flag or config value
(`purer_jax.schema`), or a workdir another command holds (`purer_jax.workdir.lock`).
"""
import contextlib
import difflib
import json
import os
import re
import sys
from typing import Callable, Optional

from absl import app, flags, logging
from ml_collections import config_flags

# No JAX, Flax or Orbax at import: `run` checks the config before they load, so a refused
# value exits in a fraction of a second (the functions below import them where they need them).
from purer_jax import data as data_lib
from purer_jax import schema, utils, workdir as workdir_lib

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
  """The locked config and the work directory, checked before any work: every config value
  was checked by `run` (`purer_jax.schema.check`); this process becomes the workdir's one writer
  (`purer_jax.workdir.lock`), then `prepare`."""
  import jax
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  f = flags.FLAGS
  config = f.config
  if config is None:
    raise app.UsageError('--config is required, e.g. --config=configs/ss.py:smoke')
  workdir = f.workdir or config.workdir
  if not workdir:
    raise app.UsageError('--workdir is required')
  workdir_lib.lock(workdir, jax.process_index())
  prepare(config, workdir, splits=splits, allow_change=f.allow_config_change)
  return config, workdir


def prepare(config, workdir: str, *, splits=(), allow_change: bool = False):
  """The workdir's teachers and checkpoints fit the config (`purer_jax.workdir.check`) and
  every data split the entry point will read (`splits`, of each dataset of the run) is there.
  Then W/config.json is written (the one it replaces goes to W/config_history/)."""
  from purer_jax import parallel, zoo
  workdir_lib.check(config, workdir, zoo_config=zoo.read_manifest(workdir).get('config'),
                    allow_change=allow_change)
  if config.teachers.source != 'pretrain':  # imported teachers need no meta-train images
    splits = [s for s in splits if s != 'meta_train']
  for name, data_dir, source in data_lib.run_datasets(config):
    for split in splits:
      data_lib.check(name, split, data_dir, source)
  os.makedirs(workdir, exist_ok=True)
  if parallel.is_primary():  # one writer under jax.distributed
    workdir_lib.record_config(config, workdir)


@contextlib.contextmanager
def user_errors():
  """USER_ERRORS become `<Type>: message` on stderr and exit status 1 (a UserError's
  `status`: 2 for a refused command line)."""
  try:
    yield
  except USER_ERRORS as e:
    print(f'{type(e).__name__}: {e}', file=sys.stderr)
    raise SystemExit(getattr(e, 'status', 1)) from None


def _parse_flags(argv):
  """absl's flag parsing, where a refused flag exits with status 2 as `schema.check` does: a
  --config.<field> value of the wrong type says what the field allows, an unknown field is
  named (ml_collections' own error is a traceback)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    bad = re.match(r'flag --config\.([\w.]+)=(.*?): ', str(e))
    msg = (f'{schema.ConfigError.__name__}: {schema.field_problem(*bad.groups())}'
           if bad and bad[1] in schema.FIELDS else f'FATAL Flags parsing error: {e}')
  except (AttributeError, KeyError):
    names = [a.split('=')[0][len('--config.'):] for a in argv if a.startswith('--config.')]
    unknown = [n for n in names if n not in schema.FIELDS]
    if not unknown:
      raise
    near = difflib.get_close_matches(unknown[0], schema.FIELDS, n=1)
    msg = (f'{schema.ConfigError.__name__}: --config.{unknown[0]}: no such config field'
           + (f'; did you mean {near[0]}?' if near else ' (the fields: docs/CONFIG.md)'))
  print(msg, file=sys.stderr)
  raise SystemExit(2)


def run(main: Callable, define_extra: Optional[Callable] = None):
  """Defines the flags (the shared ones and `define_extra()`'s), then absl's `app.run(main)`
  inside `user_errors()`: the config is checked (`purer_jax.schema.check`) before JAX loads,
  then the multi-process run the environment names, if any, starts
  (`purer_jax.parallel.initialize`)."""
  define_flags()
  if define_extra is not None:
    define_extra()

  def guarded(argv):
    with user_errors():
      if flags.FLAGS.config is not None:
        schema.check(flags.FLAGS.config)
      from purer_jax import parallel
      parallel.initialize()
      return main(argv)
  app.run(guarded, flags_parser=_parse_flags)
