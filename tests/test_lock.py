"""One writer per workdir (`purer_jax.workdir.lock`): a command on a workdir another live
process holds exits at once with status 2, naming the holder, and writes nothing; the lock of
a killed process is taken over with a warning; a clean exit releases the lock."""
import json
import os
import socket
import subprocess
import sys

import pytest

from purer_jax import workdir as workdir_lib
from tests.conftest import command_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Takes W's lock as a command does, says so, then holds it until killed.
HOLD = ('import sys, time\n'
        'from purer_jax import workdir\n'
        'workdir.lock(sys.argv[1])\n'
        'print("locked", flush=True)\n'
        'time.sleep(600)\n')


def _holder(workdir) -> subprocess.Popen:
  p = subprocess.Popen([sys.executable, '-c', HOLD, workdir], cwd=ROOT, env=command_env(),
                       stdout=subprocess.PIPE, text=True)
  assert p.stdout.readline() == 'locked\n'
  return p


def _files(workdir) -> dict:
  """{path: (size, mtime)} of everything under workdir."""
  out = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      st = os.stat(os.path.join(root, name))
      out[os.path.join(root, name)] = (st.st_size, st.st_mtime_ns)
  return out


def _main(workdir, *flags):
  return subprocess.run([sys.executable, '-m', 'purer_jax.main', '--config=configs/ss.py:smoke',
                         f'--workdir={workdir}', *flags], cwd=ROOT, env=command_env(),
                        capture_output=True, text=True, timeout=300)


def test_lock_records_its_holder_and_is_released(tmp_path):
  w = str(tmp_path / 'w')
  path = workdir_lib.lock(w)
  try:
    assert path == os.path.join(w, '.lock')
    assert workdir_lib.lock(w) == path  # held already: nothing to do
    with open(path) as f:
      held = json.load(f)
    assert held['pid'] == os.getpid() and held['host'] == socket.gethostname()
    # The processes of one jax.distributed run share W: each has its own lock.
    other = workdir_lib.lock(w, process=1)
    assert other == os.path.join(w, '.lock.1')
    workdir_lib.unlock(other)
  finally:
    workdir_lib.unlock(path)
  assert os.listdir(w) == []


@pytest.mark.slow
def test_second_command_on_a_held_workdir_is_refused_at_once(tmp_path):
  w = str(tmp_path / 'w')
  holder = _holder(w)
  try:
    before = _files(w)
    out = _main(w)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.startswith(f'BusyError: {w} is in use by pid {holder.pid} on '
                                 f'{socket.gethostname()}'), out.stderr[-2000:]
    assert _files(w) == before  # no teachers/, no config.json, the holder's lock untouched
  finally:
    holder.kill()
    holder.wait()


@pytest.mark.slow
def test_lock_of_a_killed_command_is_taken_over_with_a_warning(tmp_path):
  w = str(tmp_path / 'w')
  holder = _holder(w)
  holder.kill()  # SIGKILL: no clean-up, the lock file stays
  holder.wait()
  assert os.path.exists(os.path.join(w, '.lock'))
  # Past the lock, the command stops at the missing data (exit 1), releasing the lock.
  out = _main(w, f'--config.data.data_dir={tmp_path / "nowhere"}', '--config.data.source=npz')
  assert out.returncode == 1, out.stderr[-2000:]
  assert f'warning: taking over {os.path.join(w, ".lock")}, left by pid {holder.pid} ' in (
      out.stderr), out.stderr[-2000:]
  assert 'DataError: data folder' in out.stderr
  assert not os.path.exists(os.path.join(w, '.lock'))
