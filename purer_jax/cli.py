"""Command-line flags shared by every entry point (`--config`, `--workdir`), defined once.

Entry points read them through `config_and_workdir()` so that importing several of them
(as main and the tests do) never defines a flag twice.
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags

from purer_jax import utils

CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file and variant, e.g. configs/ss.py:smoke; override fields '
    'with --config.meta.shots=5.', lock_config=True)
WORKDIR = flags.DEFINE_string('workdir', None, 'Work directory (teachers, checkpoints, results).')


def config_and_workdir():
  """The locked config and the work directory (created, with config.json written)."""
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  config = CONFIG.value
  if config is None:
    raise app.UsageError('--config is required, e.g. --config=configs/ss.py:smoke')
  workdir = WORKDIR.value or config.workdir
  if not workdir:
    raise app.UsageError('--workdir is required')
  os.makedirs(workdir, exist_ok=True)
  utils.save_config(config, workdir)
  return config, workdir
