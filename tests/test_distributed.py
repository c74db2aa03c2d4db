"""Multi-process runs (`purer_jax.parallel`): two processes on localhost, one CPU device each,
joined by jax.distributed with CPU collectives, so that the mesh spans two processes like a
two-host pod slice. A short meta-training run killed with SIGKILL in two processes and resumed
in one ends like one process's uninterrupted run on 2 devices; with test_inversion's sharded
step against one device, the teachers sharded over two processes (3 over 2 devices: a padded
copy must not count) compute what one device does."""
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from purer_jax import data, evaluate, meta_test, parallel, train, tune_icfil, utils, zoo
from purer_jax import workdir as workdir_lib
from tests.conftest import command_env
from tests.test_train import DEVICES, _finish, _launch, tiny_command, tiny_run  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _workdir(tmp_path, name, zoo_dir):
  """A workdir with a copy of the session's smoke teachers."""
  w = tmp_path / name
  shutil.copytree(zoo.teachers_dir(zoo_dir), zoo.teachers_dir(str(w)))
  return str(w)


def _metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    recs = [json.loads(l) for l in f]
  for r in recs:
    r.pop('it_per_s', None)
  return recs


def _start(cmd, n=2):
  """Starts `cmd` as processes 0..n-1 of one jax.distributed run, sharing the tiny run's DEVICES
  CPU devices (one each, for two). Outputs go to files, not pipes: a process blocked on a full
  pipe while its peers wait for it in a collective would never exit (seen 2026-12-06 with JAX's
  debug logging on)."""
  port = _port()
  files = [tempfile.TemporaryFile('w+') for _ in range(n)]
  procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=command_env(
      DEVICES // n, JAX_COORDINATOR_ADDRESS=f'localhost:{port}', PURER_NUM_PROCESSES=str(n),
      PURER_PROCESS_ID=str(i))) for i, f in enumerate(files)]
  return procs, files


def _outputs(procs, files, status=0, timeout=900):
  """The processes' outputs, once each has exited with `status` (killed at `timeout`)."""
  try:
    for p in procs:
      p.wait(timeout=timeout)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  outs = []
  for f in files:
    with f:
      f.seek(0)
      outs.append(f.read())
  for p, out in zip(procs, outs):
    assert p.returncode == status, out[-3000:]
  return outs


def _processes(cmd, n=2, status=0):
  return _outputs(*_start(cmd, n), status=status)


def test_initialize_reads_the_environment():
  assert not parallel.initialize({})
  for env in ({'PURER_NUM_PROCESSES': '2'},
              {'PURER_NUM_PROCESSES': '2', 'PURER_PROCESS_ID': '0'},
              {'PURER_NUM_PROCESSES': 'two', 'PURER_PROCESS_ID': '0',
               'JAX_COORDINATOR_ADDRESS': 'localhost:1'},
              {'PURER_NUM_PROCESSES': '2', 'PURER_PROCESS_ID': '2',
               'JAX_COORDINATOR_ADDRESS': 'localhost:1'}):
    with pytest.raises(utils.UserError, match='PURER_'):
      parallel.initialize(env)


def _scored_best(workdir) -> float:
  """Mean meta-test accuracy of W's best checkpoint, reloaded and scored in this process with
  W's own config: what the run's final meta-test recorded for `purer`."""
  c = ml_collections.ConfigDict(json.load(open(os.path.join(workdir, 'config.json'))))
  test = data.load(c.data.dataset, 'meta_test', c.data.data_dir)
  return float(np.mean(evaluate.evaluate_params(train.load_best(workdir), c, test)))


def _assert_close(got, want, where=''):
  """Equal trees of JSON values, floats to rounding: rtol 1e-5 (a query flipped in a 20-task
  accuracy moves it by more than 1e-3)."""
  if isinstance(want, dict):
    assert sorted(got) == sorted(want), where
    for k in want:
      _assert_close(got[k], want[k], f'{where}/{k}')
  elif isinstance(want, list):
    assert len(got) == len(want), where
    for i, (g, w) in enumerate(zip(got, want)):
      _assert_close(g, w, f'{where}[{i}]')
  elif isinstance(want, float):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=where)
  else:
    assert got == want, where


@pytest.mark.slow
def test_two_processes_killed_and_resumed_in_one_match_one_uninterrupted_run(
    tmp_path, smoke_zoo, smoke_config, tiny_run, monkeypatch):
  """test_train's tiny run (6 iterations, ECI firing, val, PNGs and checkpoints) as a pod slice
  that is preempted: two processes of one device each, both killed with SIGKILL after their first
  checkpoint, then resumed by one process of 2 devices. It ends like the same run uninterrupted
  in one process (tiny_run): the same programs, so every logged value agrees to rounding and
  every task's accuracy exactly. (Resuming bit for bit: test_workdir, in-process.)"""
  data_dir, full = smoke_config.data.data_dir, tiny_run
  killed = _workdir(tmp_path, 'killed', smoke_zoo)
  procs, files = _start(tiny_command(killed, data_dir))
  try:
    deadline = time.time() + 600
    while not workdir_lib.checkpoint_steps(killed):
      assert all(p.poll() is None for p in procs) and time.time() < deadline
      time.sleep(0.1)
  finally:  # also when a process failed or the deadline passed: its output shows why
    for p in procs:
      if p.poll() is None:
        p.send_signal(signal.SIGKILL)
    outs = _outputs(procs, files, status=-signal.SIGKILL)
  for i, out in enumerate(outs):  # the mesh spans both processes
    assert f'sharded over {DEVICES} devices of 2 process(es) (this is process {i})' in out, out[-3000:]
  assert not os.path.exists(os.path.join(killed, 'results.json'))
  first = workdir_lib.checkpoint_steps(killed)[-1]
  assert first < 6, first

  code, out = _finish(_launch(killed, data_dir))  # one process of 2 devices
  assert code == 0, out[-3000:]
  assert 'resumed from' in out and f'/{first} ' in out

  res = [json.load(open(os.path.join(w, 'results.json'))) for w in (full, killed)]
  # The resumed run's record has both segments' wall times, the killed one marked.
  segments = res[1]['timing']['segments']
  assert [(s['from_it'], s['to_it'], s.get('interrupted')) for s in segments] == [
      (0, first, True), (first, 6, None)] and all(s['wall_s'] > 0 for s in segments)
  assert 'segments' not in res[0]['timing']  # one segment: the run's own times say it all
  for r in res:  # when and where it ran: recorded, but differs between the runs
    timing = r.pop('timing')
    assert timing['wall_time_s'] > 0
    assert timing['teachers_reused']  # the zoo was copied in before the command: named
    assert os.path.isabs(r['teachers_source']['reused']) and r['teachers_source']['seconds'] > 0
    assert len(r.pop('provenance')['commit']) in (40, 7)  # 'unknown' outside a git checkout
    assert r['config']['train']['iterations'] == 6 and r['init'] == 'average'
    assert [p.pop('minutes') >= 0 for p in r['val_curve']] == [True, True]  # wall times
  _assert_close(res[1], res[0])
  assert set(res[0]['methods']) == {'random', 'average', 'ota', 'pool', 'purer'}
  assert set(res[0]['cost_gflop']) == set(res[0]['methods'])
  assert res[0]['tasks'] == 20 and res[0]['best_it'] in (3, 6)
  # The best checkpoint reloads to the parameters the final meta-test scored.
  assert _scored_best(full) == pytest.approx(res[0]['methods']['purer']['acc'], abs=1e-6)
  # ... and so does the learner file kept to commit beside the record, read as tune_icfil does.
  c_full = ml_collections.ConfigDict(json.load(open(os.path.join(full, 'config.json'))))
  kept = tune_icfil.load_params(os.path.join(full, meta_test.LEARNER_FILE), c_full, full)
  for a, b in zip(*(jax.tree.leaves(p) for p in (kept, train.load_best(full)))):
    np.testing.assert_array_equal(a, b)
  # Every logged value after the restart repeats the uninterrupted run's (records of the
  # iterations the killed run redid were dropped, not duplicated), and a shard missing or summed
  # twice in the two processes would show in the first window already.
  m_killed, m_full = _metrics(killed), _metrics(full)
  _assert_close(m_killed, m_full)
  events = [r['it'] for r in m_full if r.get('event') == 'eci_switch_on']
  assert events and events[0] == 1 and any('val_acc' in r for r in m_full)
  # Two kept: a damaged last one can be deleted.
  assert workdir_lib.checkpoint_steps(full) == workdir_lib.checkpoint_steps(killed) == [4, 6]
  pngs = sorted(f for f in os.listdir(full) if f.endswith('.png'))
  assert pngs == ['pseudo_000003.png', 'pseudo_000006.png']
  grid = np.asarray(Image.open(os.path.join(full, pngs[0])))
  assert grid.shape[0] > 5 * 32 and grid.std() > 10  # 5 rows of images, not blank

  # Process 1 of a multi-process run restores the run with the others but neither scores nor
  # writes: process 0 does (here, on the finished workdir).
  c = ml_collections.ConfigDict(json.load(open(os.path.join(killed, 'config.json'))))
  before = open(os.path.join(killed, 'results.json')).read()
  monkeypatch.setattr(parallel, 'is_primary', lambda: False)
  assert meta_test.train_and_evaluate(c, killed) == {}
  assert open(os.path.join(killed, 'results.json')).read() == before


@pytest.mark.slow
def test_multi_process_run_of_an_unsharded_bank_is_refused_before_any_work(tmp_path, smoke_zoo,
                                                                           smoke_config):
  """Each process would keep its own bank, which no checkpoint can hold: refused at once."""
  w = _workdir(tmp_path, 'w', smoke_zoo)
  cmd = tiny_command(w, smoke_config.data.data_dir, '--config.inversion.shard=False')
  for out in _processes(cmd, status=1):
    assert ('UserError: a multi-process run shards the bank over its processes: add '
            '--config.inversion.shard=True' in out and 'Traceback' not in out), out[-3000:]
  assert not os.path.exists(os.path.join(w, 'checkpoints'))
