"""`purer_jax.synthesize`: a pseudo dataset from the config's teacher pool."""
import json
import os
import shutil

import numpy as np

from purer_jax import synthesize, zoo


def test_run_writes_bank_report_and_pictures(smoke_zoo, smoke_config, tmp_path):
  workdir = str(tmp_path / 'w')
  shutil.copytree(zoo.teachers_dir(smoke_zoo), zoo.teachers_dir(workdir))
  c = smoke_config.copy_and_resolve_references()
  c.teachers.num = 2  # the pool rule: teachers 0 and 1 of the 3 in the zoo
  c.inversion.steps, c.inversion.spc, c.train.log_every = 2, 2, 1
  report = synthesize.run(c, workdir)
  out = os.path.join(workdir, 'inversion')
  assert [t['index'] for t in report['teachers']] == [0, 1]
  assert report['bank_shape'] == [10, 2, 32, 32, 3] and report['steps'] == 2
  assert all(0 <= t['target_acc'] <= 1 for t in report['teachers'])
  assert json.load(open(os.path.join(out, 'report.json'))) == report
  with np.load(os.path.join(out, 'bank.npz')) as z:
    assert z['images'].shape == (10, 2, 32, 32, 3)
  assert [json.loads(l)['step'] for l in open(os.path.join(out, 'metrics.jsonl'))] == [1, 2]
  for i in (0, 1):
    with open(os.path.join(out, f'teacher_{i:03d}.png'), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  assert not os.path.exists(os.path.join(out, 'teacher_002.png'))
