"""Entry points are thin CLIs over the library: importing it defines no flag."""
import importlib
import os
import pkgutil
import subprocess
import sys

import pytest
from absl import flags

import purer_jax
from tests.conftest import command_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_importing_the_library_defines_no_flags():
  for m in pkgutil.walk_packages(purer_jax.__path__, 'purer_jax.'):
    importlib.import_module(m.name)
  assert not [m for m in flags.FLAGS.flags_by_module_dict() if m.startswith('purer_jax')]


@pytest.mark.slow
@pytest.mark.parametrize('module,extra', [('main', ()), ('pretrain', ()), ('evaluate', ()),
                                          ('synthesize', ()),
                                          ('tune_icfil',
                                           ('--params', '--tasks', '--test', '--dataset'))])
def test_commands_define_their_flags(module, extra):
  out = subprocess.run([sys.executable, '-m', f'purer_jax.{module}', '--helpfull'], cwd=ROOT,
                       env=command_env(), capture_output=True, text=True)
  assert out.returncode in (0, 1), out.stderr[-2000:]
  for flag in ('--config', '--workdir') + extra:
    assert flag in out.stdout, (flag, out.stdout[-2000:])
