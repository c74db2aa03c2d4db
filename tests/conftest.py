"""Shared fixtures. Fake CPU devices must be requested before jax initialises.

Unit tests run on a synthetic CIFAR-FS (`synthetic_dir`: the real class names and counts,
64/16/20, 20 tiny images per class) and a zoo of 3 Conv4 teachers trained on it in seconds
(`smoke_zoo`). Tests that need the real data (`real_*` fixtures, `cifar_dir`, `MINI_DIR`),
start subprocesses or are compile-bound are marked `slow` (pytest.ini): `pytest -m "not slow"`
is the fast path.
"""
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile

os.environ.setdefault('XLA_FLAGS', '')
if '--xla_force_host_platform_device_count' not in os.environ['XLA_FLAGS']:
  os.environ['XLA_FLAGS'] += ' --xla_force_host_platform_device_count=8'
# In-process test programs are tiny and compiling them is most of their time: XLA's backend
# optimisations off halves it here (set XLA_FLAGS yourself to test another level). The
# commands tests start run more than they compile and keep XLA's own level (`command_env`).
_COMMAND_XLA_FLAGS = os.environ['XLA_FLAGS']
if '--xla_backend_optimization_level' not in os.environ['XLA_FLAGS']:
  os.environ['XLA_FLAGS'] += ' --xla_backend_optimization_level=0'

# One persistent compilation cache for the whole run, set before jax starts: the xdist workers
# and the commands tests start (`purer_jax.main` in subprocesses) inherit it, so a program one of
# them compiled is read by the others (XLA's key leaves out the fake device count). The process
# that made it (pytest itself) deletes it at the end.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='purer_jax_cache_')
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  os.environ['PURER_TEST_CACHE_OWNER'] = str(os.getpid())

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from purer_jax import config as config_lib  # noqa: E402
from purer_jax import data  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get('PURER_SHARED_DATA', os.path.join(ROOT, '..', 'shared', 'data'))
CIFAR_DIR = os.path.join(SHARED, 'cifar-fs')
MINI_DIR = os.path.join(SHARED, 'mini-imagenet-100')
SYNTHETIC_PER_CLASS = 20  # >= 5 shots + 15 queries


def write_synthetic(folder: str, per_class: int = SYNTHETIC_PER_CLASS, size: int = 32,
                    seed: int = 0) -> str:
  """CIFAR-FS-shaped `{split}.npz` files in `folder`: the real class names, `per_class`
  uint8 images per class. A class is a random 4x4 colour pattern (upsampled) under uniform
  noise, so a teacher learns it in a few steps and a random network does not."""
  rng = np.random.default_rng(seed)
  os.makedirs(folder, exist_ok=True)
  for split, names in data.CIFAR_FS_CLASSES.items():
    n = len(names)
    templates = rng.integers(0, 256, (n, 1, 4, 4, 3)).repeat(size // 4, 2).repeat(size // 4, 3)
    noise = rng.integers(0, 256, (n, per_class, size, size, 3))
    images = (0.35 * templates + 0.65 * noise).astype(np.uint8).reshape(-1, size, size, 3)
    np.savez(os.path.join(folder, f'{split}.npz'), images=images,
             labels=np.repeat(np.arange(n, dtype=np.int32), per_class),
             class_names=np.asarray(names))
  return folder


def command_env(devices: int = 1, **extra) -> dict:
  """The environment of a command a test starts: this checkout importable, the suite's
  compilation cache, and `devices` fake CPU devices (1: as a user's run). Its XLA flags are the
  suite's without the in-process optimisation level: test_train's tiny run executes twice as
  fast warm at XLA's default and compiles as fast cold (2026-12-06)."""
  env = dict(os.environ, PYTHONPATH=ROOT, **extra)
  env.pop('XLA_FLAGS', None)
  flags = re.sub(r'--xla_force_host_platform_device_count=\d+', '', _COMMAND_XLA_FLAGS)
  if devices > 1:
    flags += f' --xla_force_host_platform_device_count={devices}'
  if flags.strip():
    env['XLA_FLAGS'] = flags.strip()
  return env


def pytest_unconfigure(config):
  if os.environ.get('PURER_TEST_CACHE_OWNER') == str(os.getpid()):
    shutil.rmtree(os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)


# Modules whose slow tests take longest (subprocess runs and test_train's tiny run, their
# reference), in the order they start: a worker's last two tests cannot be stolen by the idle
# one, so they should be short.
_FIRST = ('test_distributed.py', 'test_icfil.py', 'test_workdir.py')


def pytest_collection_modifyitems(config, items):
  """The slow tests first, the longest modules' first (`_FIRST`; stable order otherwise): a long
  test started last would decide the suite's wall time while the other core idles; xdist's work
  stealing balances the rest."""
  def key(item):
    name = os.path.basename(str(item.fspath))
    rank = _FIRST.index(name) if name in _FIRST else len(_FIRST)
    return item.get_closest_marker('slow') is None, rank
  items.sort(key=key)


def once(tmp_path_factory, name: str, make) -> str:
  """The folder `name`, made by make(path) once per test run: xdist's workers share the folder
  above their own basetemps, and the first to take the lock makes it while the others wait.
  Tests read what it holds and never write there."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent
  path = str(root / name)
  with open(str(root / f'{name}.lock'), 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.exists(path + '.done'):
      shutil.rmtree(path, ignore_errors=True)  # what a failed attempt left
      make(path)
      open(path + '.done', 'w').close()
  return path


@pytest.fixture(scope='session')
def synthetic_dir(tmp_path_factory):
  return once(tmp_path_factory, 'synthetic_cifar_fs', write_synthetic)


@pytest.fixture(scope='session')
def meta_train(synthetic_dir):
  return data.load('cifar_fs', 'meta_train', synthetic_dir)


@pytest.fixture(scope='session')
def meta_test(synthetic_dir):
  return data.load('cifar_fs', 'meta_test', synthetic_dir)


@pytest.fixture(scope='session')
def meta_val(synthetic_dir):
  return data.load('cifar_fs', 'meta_val', synthetic_dir)


SMOKE_TEACHERS = 3


def _smoke(data_dir):
  """ss:smoke with only the first SMOKE_TEACHERS disjoint teachers (classes 0-14)."""
  c = config_lib.build('ss', 'smoke')
  c.data.data_dir = data_dir
  c.teachers.num = SMOKE_TEACHERS
  return c


@pytest.fixture(scope='session')
def smoke_config(synthetic_dir):
  """ss:smoke, 3 teachers, on the synthetic data."""
  return _smoke(synthetic_dir)


def _zoo(tmp_path_factory, name, data_dir):
  """The teachers of `_smoke(data_dir)`, trained once per test run by the pretrain command: at
  XLA's default level (`command_env`) it costs two thirds of an in-process training at the
  suite's level 0."""
  def make(workdir):
    out = subprocess.run(
        [sys.executable, '-m', 'purer_jax.pretrain', '--config=configs/ss.py:smoke',
         f'--config.teachers.num={SMOKE_TEACHERS}', f'--config.data.data_dir={data_dir}',
         f'--workdir={workdir}'], cwd=ROOT, env=command_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
  return once(tmp_path_factory, name, make)


@pytest.fixture(scope='session')
def smoke_zoo(tmp_path_factory, synthetic_dir):
  """A workdir with 3 Conv4 teachers smoke-trained on the synthetic meta-train classes."""
  return _zoo(tmp_path_factory, 'zoo', synthetic_dir)


def _unpacked(folder: str) -> None:
  """CIFAR-FS's splits as stored beside the repository, rewritten uncompressed: reading the
  LZMA-packed meta-train costs ~6 CPU-s, its plain copy 0.3 (tests/test_data.py reads the
  stored files themselves)."""
  os.makedirs(folder)
  for name in sorted(os.listdir(CIFAR_DIR)):
    with np.load(os.path.join(CIFAR_DIR, name), allow_pickle=False) as z:
      np.savez(os.path.join(folder, name), **{k: z[k] for k in z.files})


@pytest.fixture(scope='session')
def cifar_dir(tmp_path_factory):
  """The real CIFAR-FS, unpacked once per test run (slow tests only)."""
  return once(tmp_path_factory, 'cifar_fs', _unpacked)


@pytest.fixture(scope='session')
def cifar_train(cifar_dir):
  """The real CIFAR-FS meta-train split (slow tests only)."""
  return data.load('cifar_fs', 'meta_train', cifar_dir)


@pytest.fixture(scope='session')
def real_config(cifar_dir):
  """ss:smoke, 3 teachers, on the real CIFAR-FS."""
  return _smoke(cifar_dir)


@pytest.fixture(scope='session')
def real_zoo(tmp_path_factory, cifar_dir):
  """A workdir with 3 real Conv4 teachers smoke-trained on CIFAR-FS meta-train classes."""
  return _zoo(tmp_path_factory, 'real_zoo', cifar_dir)
