"""Small shared helpers: the TensorBoard writer, parameter files and the CPU a result ran on."""
import os
import subprocess
import sys

import numpy as np
import pytest

from purer_jax import utils
from tests.conftest import ROOT, command_env


def test_summary_writer_writes_events_without_loading_torch(tmp_path):
  code = ('import sys\nfrom purer_jax import utils\n'
          f'w = utils.summary_writer({str(tmp_path)!r}, purge_step=0)\n'
          'w.add_scalar("loss", 1.5, 0)\nw.close()\n'
          'print("torch" in sys.modules)\n'
          'import torch  # still importable afterwards')
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=command_env(),
                       capture_output=True, text=True)
  assert out.returncode == 0 and out.stdout.strip() == 'False', out.stderr[-2000:]
  assert [f for f in os.listdir(tmp_path) if f.startswith('events.out.tfevents')]
  quiet = utils.summary_writer(str(tmp_path / 'none'), purge_step=0, enabled=False)
  quiet.add_scalar('loss', 1.5, 0)
  quiet.close()
  assert not os.path.exists(tmp_path / 'none')


def test_cpu_model_names_the_widest_vector_unit(tmp_path):
  info = tmp_path / 'cpuinfo'
  info.write_text('processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse avx avx2\n'
                  'processor\t: 1\nmodel name\t: Some CPU\nflags\t\t: fpu sse avx avx2\n')
  assert utils.cpu_model(str(info)) == 'Some CPU (avx2)'
  info.write_text('model name\t: Old CPU\nflags\t\t: fpu sse\n')
  assert utils.cpu_model(str(info)) == 'Old CPU'
  assert utils.cpu_model(str(tmp_path / 'absent'))  # no /proc: the platform's name


def test_params_file_round_trips_and_refuses_pickles(tmp_path):
  params = {'conv0': {'kernel': np.ones((3, 3, 3, 4), np.float32), 'bias': np.zeros(4)},
            'head': {'kernel': np.arange(6.0).reshape(2, 3)}}
  path = str(tmp_path / 'learner.npz')
  utils.save_params(path, params)
  back = utils.load_params(path)
  assert back.keys() == params.keys() and back['conv0'].keys() == params['conv0'].keys()
  for group in params:
    for k, v in params[group].items():
      np.testing.assert_array_equal(back[group][k], v)
  assert os.listdir(tmp_path) == ['learner.npz']  # the partial file replaced it
  np.savez(tmp_path / 'evil.npz', head=np.array([{'run': 'code'}], dtype=object))
  with pytest.raises(utils.UserError, match='evil.npz is not a parameter file'):
    utils.load_params(str(tmp_path / 'evil.npz'))
