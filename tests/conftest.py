"""Shared fixtures. Fake CPU devices must be requested before jax initialises."""
import os

os.environ.setdefault('XLA_FLAGS', '')
if '--xla_force_host_platform_device_count' not in os.environ['XLA_FLAGS']:
  os.environ['XLA_FLAGS'] += ' --xla_force_host_platform_device_count=8'

import pytest  # noqa: E402

from purer_jax import config as config_lib  # noqa: E402
from purer_jax import data  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get('PURER_SHARED_DATA', os.path.join(ROOT, '..', 'shared', 'data'))
CIFAR_DIR = os.path.join(SHARED, 'cifar-fs')
MINI_DIR = os.path.join(SHARED, 'mini-imagenet-100')


@pytest.fixture(scope='session')
def cifar_train():
  return data.load('cifar_fs', 'meta_train', CIFAR_DIR)


@pytest.fixture(scope='session')
def smoke_config():
  """ss:smoke with only the first 3 disjoint teachers (classes 0-14)."""
  c = config_lib.build('ss', 'smoke')
  c.data.data_dir = CIFAR_DIR
  c.teachers.num = 3
  return c


@pytest.fixture(scope='session')
def smoke_zoo(tmp_path_factory, smoke_config):
  """A workdir with 3 real Conv4 teachers smoke-trained on CIFAR-FS meta-train classes."""
  from purer_jax import pretrain
  workdir = str(tmp_path_factory.mktemp('zoo'))
  pretrain.run(smoke_config, workdir)
  return workdir
