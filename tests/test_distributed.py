"""Multi-process runs (`purer_jax.parallel`): two processes on localhost, 2 CPU devices each,
joined by jax.distributed with CPU collectives, so that the mesh spans two processes like a
two-host pod slice. The sharded inversion loss and its gradient match one process's; a
short meta-training run gives one process's metrics and a checkpoint that restores
in one process."""
import json
import os
import socket
import subprocess
import sys
import tempfile

import jax
import numpy as np
import pytest

from purer_jax import parallel, train, utils
from tests import distributed_worker
from tests.conftest import command_env
from tests.test_train import (_metrics, _scored_best, _workdir, tiny_command,  # noqa: F401
                              tiny_run)  # (a fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _processes(cmd, n=2, timeout=900, status=0):
  """Runs `cmd` as processes 0..n-1 of one jax.distributed run, 2 CPU devices each; returns
  their outputs, once each has exited with `status`. Outputs go to files, not pipes: a process
  blocked on a full pipe while its peers wait for it in a collective would never exit (seen
  2026-12-06 with JAX's debug logging on)."""
  port = _port()
  files = [tempfile.TemporaryFile('w+') for _ in range(n)]
  procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=command_env(
      2, JAX_COORDINATOR_ADDRESS=f'localhost:{port}', PURER_NUM_PROCESSES=str(n),
      PURER_PROCESS_ID=str(i))) for i, f in enumerate(files)]
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


@pytest.mark.slow
def test_sharded_inversion_over_two_processes_matches_one(tmp_path):
  out = str(tmp_path / 'two.npz')
  _processes([sys.executable, os.path.join(ROOT, 'tests', 'distributed_worker.py'), out])
  two = np.load(out)
  assert int(two['processes']) == 2 and int(two['devices']) == 4
  loss, grad = distributed_worker.loss_and_grad(mesh=None)
  assert float(two['loss']) == pytest.approx(float(loss), rel=1e-5)
  np.testing.assert_allclose(two['grad'], grad, rtol=1e-5, atol=1e-5 * np.abs(grad).max())


@pytest.mark.slow
def test_two_process_meta_training_matches_one_process(tmp_path, smoke_zoo, smoke_config,
                                                       tiny_run):
  """test_train's tiny run (6 iterations, ECI firing, val and checkpoints) over two processes of
  2 devices each against the same run in one process of 4 (tiny_run): the same programs, so every
  logged value agrees to rounding and every task's accuracy exactly."""
  two, one = _workdir(tmp_path, 'two', smoke_zoo), tiny_run
  # The learner is what the processes trained together; the baselines read the teachers alone
  # (test_train scores every method after a resume).
  outs = _processes(tiny_command(two, smoke_config.data.data_dir, '--config.eval.methods=purer'))
  assert 'purer' in outs[0] and 'purer' not in outs[1]  # process 0 alone scores

  m2, m1 = _metrics(two), _metrics(one)
  assert [sorted(r) for r in m2] == [sorted(r) for r in m1]
  assert any('val_acc' in r for r in m1) and any(r.get('event') for r in m1)  # ECI fired
  for r2, r1 in zip(m2, m1):  # a shard missing or summed twice would show here
    for k, v in r1.items():
      if isinstance(v, str):
        assert r2[k] == v
      else:
        np.testing.assert_allclose(r2[k], v, rtol=1e-5, atol=1e-6, err_msg=f"{k} at {r1['it']}")
  res = [json.load(open(os.path.join(w, 'results.json'))) for w in (two, one)]
  assert res[0]['best_it'] == res[1]['best_it']
  assert set(res[0]['per_task']) == {'purer'}
  np.testing.assert_allclose(res[0]['per_task']['purer'], res[1]['per_task']['purer'], atol=1e-6)
  # The two-process checkpoint restores in this single process (8 devices here) to the
  # parameters its process 0 scored; its tree is the one-process run's.
  assert jax.tree.structure(train.load_best(two)) == jax.tree.structure(train.load_best(one))
  assert _scored_best(two) == pytest.approx(res[0]['methods']['purer']['acc'], abs=1e-6)


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
