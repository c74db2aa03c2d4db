"""Small shared helpers: the TensorBoard writer."""
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
