"""benchmarks: the config a benchmark builds from `<scenario>:<variants>` and `--set`s."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.meta_step import build_config  # noqa: E402
from purer_jax import schema  # noqa: E402


def test_build_config_applies_sets_and_checks_them():
  c = build_config('sh:fast,5shot', [('distil.batch', '16'), ('teachers.augment', "'flip'")])
  assert (c.scenario, c.meta.shots, c.distil.batch, c.teachers.augment) == ('sh', 5, 16, 'flip')
  with pytest.raises(schema.ConfigError, match='distil.batch'):
    build_config('ss:fast', [('distil.batch', '0')])
