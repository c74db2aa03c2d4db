"""The training loop: its pieces in-process, and `tiny_run`, the end-to-end run of `purer_jax.main`
that test_distributed's preempted two-process run must match (killed while saving and the NaN
guard, in-process: test_workdir)."""
import os
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from purer_jax import meta_test, models, train, utils, viz, zoo
from tests.conftest import command_env, once

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tiny but complete: 3 teachers, ECI switching often (patience 1), val, PNG and checkpoints;
# the bank sharded over DEVICES fake devices, so that test_distributed's two processes of one
# device each run the same programs (an unsharded run would not: its reductions add in another
# order, which Adam's first sign-like steps amplify; sharded alike, the two agree to 1e-7). Two
# devices, not four: each of the suite's three cold compiles of the step costs less.
TINY = ['--config.teachers.num=3', '--config.train.iterations=6', '--config.train.ckpt_every=2',
        '--config.train.val_every=3', '--config.train.val_tasks=20', '--config.train.png_every=3',
        '--config.train.log_every=2', '--config.eval.tasks=20', '--config.eci.start=0.17',
        '--config.eci.patience=1', '--config.meta.meta_batch=1', '--config.meta.queries=5',
        '--config.inversion.spc=6', '--config.inversion.strategy=loop',
        '--config.inversion.shard=True']
DEVICES = 2


def tiny_command(workdir, data_dir, *extra) -> list:
  """`main` on the TINY run (test_distributed starts it as two processes)."""
  return [sys.executable, '-m', 'purer_jax.main', '--config=configs/ss.py:smoke',
          f'--workdir={workdir}', f'--config.data.data_dir={data_dir}', *TINY, *extra]


def _launch(workdir, data_dir, *extra):
  return subprocess.Popen(tiny_command(workdir, data_dir, *extra), cwd=ROOT,
                          env=command_env(DEVICES), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=600):
  out, _ = proc.communicate(timeout=timeout)
  return proc.returncode, out


@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory, smoke_zoo, smoke_config):
  """The TINY run, uninterrupted in one process, made once per test run: the reference that
  test_distributed's preempted two-process run, resumed in one process, must match."""
  def make(workdir):
    shutil.copytree(zoo.teachers_dir(smoke_zoo), zoo.teachers_dir(workdir))
    code, out = _finish(_launch(workdir, smoke_config.data.data_dir))
    assert code == 0, out[-3000:]
  return once(tmp_path_factory, 'tiny_run', make)


def test_save_episode_png(tmp_path):
  rng = np.random.default_rng(0)
  task = {'support_x': rng.normal(size=(3, 16, 16, 3)).astype(np.float32),
          'query_x': rng.normal(size=(6, 16, 16, 3)).astype(np.float32),
          'classes': np.array([4, 0, 2])}
  path = str(tmp_path / 'ep.png')
  viz.save_episode_png(path, task, ['cifar_fs', 'mini_imagenet', 'cifar_fs'])
  grid = np.asarray(Image.open(path))
  # 3 rows, 1 support + gap + 2 query columns, 2 px padding.
  assert grid.shape == (3 * 18 + 2, 4 * 18 + 2, 3)
  # The gap column is white; images are de-normalised pixels (mean of N(0,1) ~ dataset mean).
  assert (grid[2:18, 2 + 18:18 + 18] == 255).all()
  mean = np.asarray([0.5071, 0.4867, 0.4408]) * 255
  np.testing.assert_allclose(grid[2:18, 2:18].reshape(-1, 3).mean(0), mean, atol=25)


def test_save_arch_pngs_one_per_architecture(tmp_path):
  from purer_jax import bank
  def teacher(i, arch):
    return zoo.Teacher(index=i, arch=arch, num_classes=2, image_size=16, dataset='cifar_fs',
                       classes=[2 * i, 2 * i + 1], class_names=[f'c{2 * i}', f'c{2 * i + 1}'],
                       heldout_acc=0.5, checkpoint='')
  pool = [teacher(0, 'conv4'), teacher(1, 'resnet10'), teacher(2, 'conv4')]
  layout = bank.make_layout(pool, 3)
  images = np.random.default_rng(0).normal(size=layout.shape).astype(np.float32)
  paths = viz.save_arch_pngs(str(tmp_path / 'p'), images, layout, pool)
  assert [os.path.basename(p) for p in paths] == ['p_cifar_fs_conv4.png', 'p_cifar_fs_resnet10.png']
  assert all(np.asarray(Image.open(p)).std() > 10 for p in paths)
  same = [teacher(0, 'conv4'), teacher(1, 'conv4')]  # one architecture: the episode PNG suffices
  assert viz.save_arch_pngs(str(tmp_path / 'q'), images[:4], bank.make_layout(same, 3),
                            same) == []


def test_warmup_inverts_the_bank_before_meta_training(smoke_zoo, smoke_config):
  c = ml_collections.ConfigDict(smoke_config.to_dict())
  c.inversion.spc, c.train.warmup = 4, 3
  trainer = train.Trainer(c, zoo.load(smoke_zoo))
  state = trainer.init_state()
  loss = lambda s: float(trainer.inv.loss(s['images'], trainer.teacher_vars,
                                          jax.random.key(0))[0])
  before, images0 = loss(state), np.asarray(state['images'])
  warm = trainer.warmup(state)
  assert not np.array_equal(np.asarray(warm['images']), images0)
  assert loss(warm) < before
  assert int(warm['it']) == 0  # warm-up steps are not meta-iterations


def test_pseudo_tasks_take_train_queries(smoke_zoo, smoke_config):
  c = ml_collections.ConfigDict(smoke_config.to_dict())
  c.inversion.spc, c.meta.train_queries = 4, 3
  trainer = train.Trainer(c, zoo.load(smoke_zoo))
  task = trainer.pseudo_episode(trainer.init_state()['images'], 0)
  assert task['support_x'].shape[0] == c.meta.ways
  assert task['query_x'].shape[0] == c.meta.ways * 3
  c.meta.train_queries = 0  # 0: meta.queries, which a 4-image bank cannot hold
  with pytest.raises(ValueError, match='raise config.inversion.spc'):
    train.Trainer(c, zoo.load(smoke_zoo)).pseudo_episode(trainer.init_state()['images'], 0)


def test_init_settings(smoke_zoo):
  teachers = zoo.load(smoke_zoo)
  conv4 = models.create('conv4', 5, 32)
  assert train.resolve_init('auto', teachers, conv4) == 'average'
  assert train.resolve_init('auto', teachers, models.create('resnet10', 5, 32)) == 'random'
  assert train.resolve_init('random', teachers, conv4) == 'random'
  with pytest.raises(ValueError, match='meta.init'):
    train.resolve_init('avg', teachers, conv4)


def test_val_curve_sums_logged_windows(tmp_path):
  path = str(tmp_path / 'metrics.jsonl')
  recs = [{'it': 9, 'it_per_s': 2.0}, {'it': 9, 'val_acc': 0.3, 'best_val': 0.3},
          {'it': 14, 'event': 'eci_switch_on'}, {'it': 19, 'it_per_s': 1.0},
          {'it': 19, 'val_acc': 0.4, 'best_val': 0.4}]
  for r in recs:
    utils.write_jsonl(path, r)
  # 10 iterations at 2/s, then 10 at 1/s.
  assert meta_test.val_curve(path) == [{'it': 10, 'val_acc': 0.3, 'minutes': round(5 / 60, 2)},
                                   {'it': 20, 'val_acc': 0.4, 'minutes': round(15 / 60, 2)}]


def test_cosine_outer_schedule_anneals_to_zero_at_the_last_iteration():
  meta = ml_collections.ConfigDict({'outer_lr': 1e-3, 'outer_schedule': 'cosine'})
  tx = train.outer_optimizer(meta, iterations=4)
  params = {'w': jax.numpy.ones(3)}
  state, sizes = tx.init(params), []
  for _ in range(5):
    updates, state = tx.update({'w': jax.numpy.ones(3)}, state, params)
    sizes.append(float(jax.numpy.abs(updates['w']).max()))
  # Adam's first step is lr * sign(g): the schedule's lr itself.
  np.testing.assert_allclose(sizes[0], 1e-3, rtol=1e-4)
  assert sizes[0] > sizes[1] > sizes[2] > sizes[3] > 0 and sizes[4] == 0
  with pytest.raises(ValueError, match='outer_schedule'):
    train.outer_optimizer(ml_collections.ConfigDict({'outer_lr': 1e-3, 'outer_schedule': 'x'}),
                          iterations=4)
