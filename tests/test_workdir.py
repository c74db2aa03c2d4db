"""Fault injection on workdirs: kills during teacher and checkpoint saves, flipped bytes and
truncated files, a moved workdir, a reused workdir with a changed config. Each case resumes
to the identical result or stops with an error that names the problem, and nothing finished
is lost. A kill is simulated by an exception no code catches, raised where orbax would
commit (rename) the folder it just wrote."""
import glob
import json
import os
import shutil
import subprocess
import sys

import chex
import numpy as np
import pytest
from orbax.checkpoint._src.path import atomicity

from purer_jax import cli, data, pretrain, train, utils, zoo
from purer_jax import config as config_lib
from purer_jax import workdir as workdir_lib
from tests.conftest import command_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Killed(BaseException):
  """Stands for SIGKILL: not an Exception, so no handler on the way cleans up."""


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """CIFAR-FS-shaped random splits: the real class names, 10 images per class."""
  d = tmp_path_factory.mktemp('data')
  rng = np.random.default_rng(0)
  for split, names in data.CIFAR_FS_CLASSES.items():
    np.savez(d / f'{split}.npz', images=rng.integers(0, 256, (10 * len(names), 32, 32, 3),
                                                     dtype=np.uint8),
             labels=np.repeat(np.arange(len(names)), 10), class_names=np.asarray(names))
  return str(d)


@pytest.fixture(scope='module')
def config(data_dir):
  """Two Conv4 teachers, one epoch; a few meta-iterations of a tiny meta-batch."""
  c = config_lib.build('ss', 'smoke')
  c.data.data_dir = data_dir
  c.teachers.num, c.teachers.epochs, c.teachers.milestones = 2, 1, (1,)
  c.teachers.max_per_class = 10
  c.meta.meta_batch, c.meta.queries, c.inversion.spc = 1, 2, 4
  c.train.iterations, c.train.ckpt_every, c.train.val_every = 4, 2, 2
  c.train.val_tasks, c.train.png_every, c.train.log_every = 2, 100, 1
  c.eci.start = 0.25  # iteration 1 of 4
  return c


@pytest.fixture(scope='module')
def zoo_dir(tmp_path_factory, config):
  """The two teachers, trained once; tests copy the folder before changing it."""
  w = str(tmp_path_factory.mktemp('zoo'))
  assert [t['index'] for t in pretrain.run(config, w)] == [0, 1]
  return w


def _refused(config, workdir) -> str:
  with pytest.raises(workdir_lib.WorkdirError) as e:
    cli.prepare(config, workdir)
  return str(e.value)


def _copy(src, dst):
  shutil.copytree(src, dst)
  return str(dst)


def _variables(workdir):
  return [t.variables for t in zoo.load(workdir)]


def _data_files(ckpt):
  """The OCDBT data files of an orbax checkpoint, largest first (array chunks)."""
  return sorted(glob.glob(os.path.join(ckpt, '**', 'd', '*'), recursive=True),
                key=os.path.getsize, reverse=True)


def _flip(path, at=0.5):
  b = bytearray(open(path, 'rb').read())
  b[int(len(b) * at)] ^= 0xFF
  open(path, 'wb').write(bytes(b))


def _truncate(path):
  b = open(path, 'rb').read()
  open(path, 'wb').write(b[:len(b) // 2])


def _kill_at_commit(monkeypatch, when=lambda path: True):
  """The next orbax save whose final path satisfies `when` dies before its commit."""
  real = atomicity.AtomicRenameTemporaryPath.finalize

  async def finalize(self, *a, **k):
    if when(str(self.get_final())):
      raise Killed(str(self.get_final()))
    return await real(self, *a, **k)
  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, 'finalize', finalize)


# A reused workdir with a changed config.

def test_changed_pool_is_refused_before_any_work(zoo_dir, config, tmp_path):
  w = _copy(zoo_dir, tmp_path / 'w')
  cli.prepare(config, w)
  before = open(os.path.join(w, 'config.json')).read()
  sh = config.copy_and_resolve_references()
  sh.teachers.archs, sh.teachers.epochs = ('conv4', 'resnet10', 'resnet18'), 3
  sh.teachers.augment, sh.teachers.lr = 'flip', 0.005
  msg = _refused(sh, w)
  assert "teachers.archs: ['conv4'] (workdir) != ['conv4', 'resnet10', 'resnet18'] (now)" in msg
  for line in ('teachers.epochs: 1 (workdir) != 3 (now)', "teachers.augment: '' (workdir) != "
               "'flip' (now)", 'teachers.lr: 0.01 (workdir) != 0.005 (now)'):
    assert line in msg, msg
  assert 'new --workdir' in msg and '--allow_config_change' in msg
  assert open(os.path.join(w, 'config.json')).read() == before  # nothing written
  # A smaller pool of the same zoo (teachers 0..num-1) and a bigger one (extends it) are
  # legitimate reuse, as is another way of using it; data folders are not part of the pool's
  # identity.
  for num in (1, 5):
    other = config.copy_and_resolve_references()
    other.teachers.num, other.teachers.per_iter = num, 1
    cli.prepare(other, w)
  other.data.data_dir = _copy(config.data.data_dir, tmp_path / 'moved_data')
  cli.prepare(other, w)
  cli.prepare(sh, w, allow_change=True)  # the explicit override
  assert json.load(open(os.path.join(w, 'config.json')))['teachers']['epochs'] == 3


def test_changed_run_is_refused_while_checkpoints_exist(config, tmp_path):
  w = str(tmp_path)
  workdir_lib.record_run(config, w)
  anil = config_lib.apply_variants(config.copy_and_resolve_references(), 'anil')
  cli.prepare(anil, w)  # no checkpoint yet: nothing to protect
  os.makedirs(os.path.join(w, 'checkpoints', '4'))
  anil.teachers.per_iter = 1
  msg = _refused(anil, w)
  assert "meta.algo: 'maml' (workdir) != 'anil' (now)" in msg
  assert 'teachers.per_iter: 0 (workdir) != 1 (now)' in msg
  assert 'meta.inner_steps: 1 (workdir) != 5 (now)' in msg
  assert 'checkpoint 4' in msg and f"delete {os.path.join(w, 'checkpoints')} to meta-train" in msg
  longer = config.copy_and_resolve_references()
  longer.train.iterations, longer.train.ckpt_every, longer.eval.tasks = 8, 4, 50
  cli.prepare(longer, w)  # a longer run, other checkpointing, other final evaluation
  shorter = config.copy_and_resolve_references()
  shorter.train.iterations = 3  # its results would be the 4-iteration run's
  assert "train.iterations: '4 done' (workdir) != 3 (now)" in _refused(shorter, w)


def test_config_history_keeps_every_replaced_config(config, tmp_path):
  w = str(tmp_path)
  path = workdir_lib.record_config(config, w)
  workdir_lib.record_config(config, w)  # the same config: no history entry
  assert not os.path.exists(tmp_path / 'config_history')
  changed = config.copy_and_resolve_references()
  changed.eval.tasks = 7
  workdir_lib.record_config(changed, w)
  (old,) = glob.glob(str(tmp_path / 'config_history' / 'config_*.json'))
  assert json.load(open(old))['eval']['tasks'] == config.eval.tasks
  assert json.load(open(path))['eval']['tasks'] == 7
  workdir_lib.record_config(config, w)
  assert len(os.listdir(tmp_path / 'config_history')) == 2


# A workdir moved to another path.

def test_moved_workdir_reads_its_own_files(zoo_dir, tmp_path):
  orig = _copy(zoo_dir, tmp_path / 'orig')
  moved = _copy(orig, tmp_path / 'moved')
  manifest = zoo.read_manifest(moved)
  assert [t['checkpoint'] for t in manifest['teachers']] == ['teachers/teacher_000',
                                                            'teachers/teacher_001']
  for f in _data_files(os.path.join(orig, 'teachers')):  # the original, damaged: unused
    _truncate(f)
  teachers = zoo.load(moved)
  assert all(t.checkpoint.startswith(moved) for t in teachers)
  chex.assert_trees_all_equal([t.variables for t in teachers], _variables(zoo_dir))
  # A manifest of older code held absolute paths into the original; the copy's own files
  # with the same names are read.
  for t in manifest['teachers']:
    t['checkpoint'] = os.path.join(orig, t['checkpoint'])
  utils.write_json(os.path.join(zoo.teachers_dir(moved), zoo.MANIFEST), manifest)
  shutil.rmtree(orig)
  chex.assert_trees_all_equal(_variables(moved), _variables(zoo_dir))


# Flipped bytes and truncated files.

def test_flipped_byte_in_a_teacher_is_named_and_retrained(zoo_dir, config, tmp_path):
  w = _copy(zoo_dir, tmp_path / 'w')
  ckpt = os.path.join(zoo.teachers_dir(w), 'teacher_001')
  # In the middle of the compressed chunk: orbax alone reads this as silently wrong values.
  _flip(_data_files(ckpt)[0])
  with pytest.raises(workdir_lib.WorkdirError) as e:
    zoo.load(w)
  msg = str(e.value)
  assert msg.startswith('teacher 1:') and ckpt in msg and 'retrain teacher 1' in msg
  # The fix the message gives: delete that teacher, re-run pretrain. Teacher 0 is kept.
  kept = os.path.getmtime(os.path.join(zoo.teachers_dir(w), 'teacher_000'))
  shutil.rmtree(ckpt)
  pretrain.run(config, w)
  assert os.path.getmtime(os.path.join(zoo.teachers_dir(w), 'teacher_000')) == kept
  chex.assert_trees_all_equal(_variables(w), _variables(zoo_dir))


def test_truncated_teacher_without_digest_is_named(zoo_dir, tmp_path):
  w = _copy(zoo_dir, tmp_path / 'w')
  manifest = zoo.read_manifest(w)
  for t in manifest['teachers']:
    t.pop('digest')  # as older code wrote it: orbax's own read error must be named too
  utils.write_json(os.path.join(zoo.teachers_dir(w), zoo.MANIFEST), manifest)
  _truncate(_data_files(os.path.join(zoo.teachers_dir(w), 'teacher_000'))[0])
  with pytest.raises(workdir_lib.WorkdirError, match=r'^teacher 0: cannot read .*teacher_000 '
                     r'\(.*\)\. The files are damaged or incomplete: delete'):
    zoo.load(w)


def _fake_run(step, val):
  """A training checkpoint's layout without training: {'state', 'best'}."""
  rng = np.random.default_rng(step)
  params = {'w': rng.normal(size=(64, 64)).astype(np.float32)}
  return {'state': {'it': np.int32(step), 'params': params},
          'best': {'params': params, 'val': np.float32(val), 'it': np.int32(step)}}


def test_damaged_training_checkpoint_is_named(tmp_path):
  mngr = train.checkpoint_manager(str(tmp_path))
  for step in (2, 4):
    train._save(mngr, step, _fake_run(step, 0.1 * step))
  chex.assert_trees_all_equal(train.load_best(str(tmp_path)), _fake_run(4, 0)['best']['params'])
  ckpt = os.path.join(mngr.directory, '4')
  _flip(_data_files(ckpt)[0])
  with pytest.raises(workdir_lib.WorkdirError) as e:
    train.load_best(str(tmp_path))
  assert str(e.value).startswith('meta-training checkpoint 4:') and ckpt in str(e.value)
  assert f'delete {ckpt} to resume from checkpoint 2' in str(e.value)
  shutil.rmtree(ckpt)  # the fix: the step before is still there
  chex.assert_trees_all_equal(train.load_best(str(tmp_path)), _fake_run(2, 0)['best']['params'])
  os.remove(os.path.join(mngr.directory, '2', workdir_lib.DIGEST_FILE))
  _truncate(_data_files(os.path.join(mngr.directory, '2'))[0])
  with pytest.raises(workdir_lib.WorkdirError, match=r'^meta-training checkpoint 2: cannot '
                     r'read .* to meta-train again from iteration 0'):
    train.load_best(str(tmp_path))


# Kills during saves.

def test_kill_during_teacher_save_keeps_finished_teachers(config, zoo_dir, tmp_path,
                                                          monkeypatch):
  w = str(tmp_path)
  _kill_at_commit(monkeypatch, lambda p: 'teacher_001' in p)
  with pytest.raises(Killed):
    pretrain.run(config, w)
  monkeypatch.undo()
  assert [t['index'] for t in zoo.read_manifest(w)['teachers']] == [0]
  assert glob.glob(os.path.join(zoo.teachers_dir(w), 'teacher_001.orbax-checkpoint-tmp*'))
  kept = os.path.getmtime(os.path.join(zoo.teachers_dir(w), 'teacher_000'))
  pretrain.run(config, w)
  assert os.path.getmtime(os.path.join(zoo.teachers_dir(w), 'teacher_000')) == kept
  assert sorted(os.listdir(zoo.teachers_dir(w))) == ['manifest.json', 'teacher_000',
                                                     'teacher_001']
  chex.assert_trees_all_equal(_variables(w), _variables(zoo_dir))


def test_kill_during_checkpoint_save_keeps_the_previous_one(tmp_path, monkeypatch):
  mngr = train.checkpoint_manager(str(tmp_path))
  train._save(mngr, 2, _fake_run(2, 0.5))
  _kill_at_commit(monkeypatch)
  with pytest.raises(Killed):
    train._save(mngr, 4, _fake_run(4, 0.9))
  monkeypatch.undo()
  assert any('orbax-checkpoint-tmp' in f for f in os.listdir(mngr.directory))
  mngr = train.checkpoint_manager(str(tmp_path))  # as a resumed run: leftovers go
  assert mngr.all_steps() == [2]
  chex.assert_trees_all_equal(train._restore(mngr, 2), _fake_run(2, 0.5))
  train._save(mngr, 4, _fake_run(4, 0.9))  # the resumed run saves again (after the clean-up)
  assert sorted(os.listdir(mngr.directory)) == ['2', '4']


def test_half_written_metrics_line_is_dropped(tmp_path):
  path = str(tmp_path / 'metrics.jsonl')
  for it in range(4):
    utils.write_jsonl(path, {'it': it, 'loss': 1.0})
  with open(path, 'a') as f:
    f.write('{"it": 4, "lo')  # a kill in the middle of a write
  train._truncate_jsonl(path, 3)
  assert [json.loads(l)['it'] for l in open(path)] == [0, 1, 2]


@pytest.mark.slow
@pytest.mark.filterwarnings('ignore:overflow encountered in cast')  # the NaN guard's 1e39
def test_training_killed_while_saving_resumes_identically(zoo_dir, config, tmp_path,
                                                          monkeypatch):
  teachers = zoo.load(zoo_dir)
  config = config.copy_and_resolve_references()
  config.meta.second_order = False  # a kill while saving does not depend on it; compiles faster
  trainer = train.Trainer(config, teachers)  # one compiled step for the three runs
  full = train.train(config, str(tmp_path / 'full'), teachers, trainer=trainer)
  killed = str(tmp_path / 'killed')
  _kill_at_commit(monkeypatch, lambda p: p.endswith(os.path.join('checkpoints', '4')))
  with pytest.raises(Killed):
    train.train(config, killed, teachers, trainer=trainer)
  monkeypatch.undo()
  assert workdir_lib.checkpoint_steps(killed) == [2]
  with open(os.path.join(killed, 'metrics.jsonl'), 'a') as f:
    f.write('{"it": 3, "meta/lo')  # and a half-written line
  resumed = train.train(config, killed, teachers, trainer=trainer)
  chex.assert_trees_all_equal(resumed, full)
  strip = lambda w: [{k: v for k, v in json.loads(l).items() if k != 'it_per_s'}
                     for l in open(os.path.join(w, 'metrics.jsonl'))]
  assert strip(killed) == strip(str(tmp_path / 'full'))
  # The NaN guard: ECI's term is -inf from its first use (it 1), after checkpoint 1. A NaN
  # config value is refused before any work; 1e39 passes the check and overflows float32.
  nan = str(tmp_path / 'nan')
  config.eci.adv_scale, config.train.ckpt_every = 1e39, 1  # the same program, traced anew
  with pytest.raises(ValueError, match='built for another config'):
    train.train(config, nan, teachers, trainer=trainer)
  with pytest.raises(FloatingPointError, match='meta-iteration 1: inv/adv is not finite'):
    train.train(config, nan, teachers)
  assert workdir_lib.checkpoint_steps(nan) == [1]  # the last good one; nothing written after it


# Data splits and the command line.

def test_every_needed_split_is_checked_first(config, tmp_path, monkeypatch):
  monkeypatch.setattr(data, '_online', lambda *a, **k: False)
  partial = _copy(config.data.data_dir, tmp_path / 'data')
  os.remove(os.path.join(partial, 'meta_test.npz'))
  c = config.copy_and_resolve_references()
  c.data.data_dir = partial
  w = str(tmp_path / 'w')
  cli.prepare(c, w, splits=('meta_train', 'meta_val'))
  with pytest.raises(data.DataError, match='has neither meta_test.npz'):
    cli.prepare(c, w, splits=data.SPLITS)
  c.data.data_dir = config.data.data_dir
  c.data.extra_dataset, c.data.extra_data_dir = 'mini_imagenet', str(tmp_path / 'no_mini')
  with pytest.raises(data.DataError, match=r"no_mini' \(dataset mini_imagenet\) does not exist"):
    cli.prepare(c, w, splits=('meta_val',))
  c.data.extra_dataset = ''
  c.teachers.source, c.data.data_dir = 'torch', partial
  os.remove(os.path.join(partial, 'meta_train.npz'))
  cli.prepare(c, w, splits=('meta_train', 'meta_val'))  # imported teachers: no meta-train


def test_user_errors_are_one_line_without_traceback(capsys):
  with pytest.raises(SystemExit) as e:
    with cli.user_errors():
      raise workdir_lib.WorkdirError('teacher 3: cannot read X: delete X')
  assert e.value.code == 1
  assert capsys.readouterr().err == 'WorkdirError: teacher 3: cannot read X: delete X\n'
  with pytest.raises(SystemExit):  # the NaN guard's stop (test_training_killed_while_saving...)
    with cli.user_errors():
      raise FloatingPointError('meta-iteration 1: inv/adv is not finite')
  assert capsys.readouterr().err == 'FloatingPointError: meta-iteration 1: inv/adv is not finite\n'
  with pytest.raises(KeyError):  # a bug keeps its traceback
    with cli.user_errors():
      raise KeyError('params')


def _command(module, *args):
  return subprocess.run([sys.executable, '-m', f'purer_jax.{module}', *args], cwd=ROOT,
                        env=command_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_commands_print_one_message_and_exit_nonzero(zoo_dir, config, tmp_path):
  w = _copy(zoo_dir, tmp_path / 'w')
  base = ['--config=configs/ss.py:smoke', f'--workdir={w}',
          f'--config.data.data_dir={config.data.data_dir}', '--config.teachers.epochs=1',
          '--config.teachers.milestones=(1,)', '--config.teachers.max_per_class=10']
  out = _command('main', *base, "--config.teachers.archs=('conv4','resnet10')")
  assert out.returncode == 1 and 'Traceback' not in out.stderr
  assert out.stderr.startswith(f'WorkdirError: {w} holds work made with a different config'), (
      out.stderr[-2000:])
  assert "\n  teachers.archs: ['conv4'] (workdir) != ['conv4', 'resnet10'] (now)\n" in out.stderr
  assert not os.path.exists(os.path.join(w, 'checkpoints'))  # stopped before any work
  out = _command('evaluate', *base, f'--config.data.data_dir={tmp_path / "nowhere"}',
                 '--config.data.source=npz')
  assert out.returncode == 1 and 'Traceback' not in out.stderr
  assert out.stderr.startswith('DataError: data folder') and 'nowhere' in out.stderr
  _flip(_data_files(os.path.join(zoo.teachers_dir(w), 'teacher_000'))[0])
  out = _command('evaluate', *base)
  assert out.returncode == 1 and 'Traceback' not in out.stderr
  assert out.stderr.startswith('WorkdirError: teacher 0:'), out.stderr[-2000:]
