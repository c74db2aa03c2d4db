"""Small shared helpers: the TensorBoard writer and the CPU a result ran on."""
import os
import subprocess
import sys

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
