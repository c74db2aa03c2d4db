"""ICFIL (docs/DESIGN.md §7) on synthetic CIFAR-FS tasks with the smoke zoo's average params."""
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from purer_jax import data, evaluate, icfil, meta, tune_icfil, utils, zoo
from purer_jax import meta_test as meta_test_lib

SETTINGS = icfil.Settings(tau=0.1, images_per_class=4, inv_steps=30, cal_steps=5, lr=0.01)


def _maml(model):
  """MAML's test-time learner (1 first-order inner step at lr 0.01)."""
  return meta.Learner('maml', model, inner_lr=0.01, steps=1, second_order=False)


@pytest.fixture(scope='module')
def average(smoke_zoo, smoke_config):
  model = evaluate.meta_model(smoke_config)
  return model, evaluate.baseline_params('average', zoo.load(smoke_zoo), model,
                                         jax.random.key(0))


@pytest.fixture(scope='module')
def one_task(average, meta_test):
  model, params = average
  task = next(data.episodes(meta_test, 5, 1, 15, seed=1234, num=1, start=7))
  task.pop('classes')
  return task, icfil.run_task(params, task, icfil.task_key(1234, 7), learner=_maml(model),
                              settings=SETTINGS)


def test_contrastive_loss_matches_formula():
  rng = np.random.default_rng(0)
  sf, pf = rng.normal(size=(6, 8)), rng.normal(size=(7, 8))
  sy, py = np.array([0, 1, 2, 0, 1, 2]), np.array([0, 1, 2, 0, 1, 2, 2])
  tau = 0.3
  unit = lambda f: f / np.linalg.norm(f)
  want = 0.0
  for i in range(6):
    denom = sum(np.exp(unit(sf[i]) @ unit(pf[j]) / tau) for j in range(7))
    for j in range(7):
      if py[j] == sy[i]:
        want -= np.log(np.exp(unit(sf[i]) @ unit(pf[j]) / tau) / denom)
  got = icfil.contrastive_loss(jnp.asarray(sf, jnp.float32), sy, jnp.asarray(pf, jnp.float32),
                               py, tau)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def _inversion_terms(params, model, task, res):
  """The pseudo support's checks; (unjittered loss terms at its start, at its end)."""
  chex.assert_shape(res['pseudo_x'], (20, 32, 32, 3))
  np.testing.assert_array_equal(res['pseudo_y'], np.tile(np.arange(5), 4))
  assert res['inv_acc'] >= 0.9  # the adapted head recognises its pseudo classes
  adapted, stats, x0, _ = icfil.prepare(params, task['support_x'], task['support_y'],
                                        jax.random.fold_in(icfil.task_key(1234, 7), 0),
                                        learner=_maml(model), settings=SETTINGS)
  terms = jax.jit(lambda x: icfil.inversion_objective(  # eager, each operation would compile
      x, adapted, stats, jax.random.key(0), model=model, settings=SETTINGS._replace(jitter=0))[1])
  return terms(x0), terms(res['pseudo_x'])


def test_pseudo_support_inverts_the_adapted_model(average, one_task):
  model, params = average
  start, end = _inversion_terms(params, model, *one_task)
  assert end['ce'] < 0.25 * start['ce']  # the BN term: real images, the test below


@pytest.mark.slow
def test_pseudo_support_matches_the_real_supports_bn_statistics(real_zoo, real_config):
  model = evaluate.meta_model(real_config)
  params = evaluate.baseline_params('average', zoo.load(real_zoo), model, jax.random.key(0))
  split = data.load('cifar_fs', 'meta_test', real_config.data.data_dir)
  task = next(data.episodes(split, 5, 1, 15, seed=1234, num=1, start=7))
  task.pop('classes')
  res = icfil.run_task(params, task, icfil.task_key(1234, 7), learner=_maml(model),
                       settings=SETTINGS)
  start, end = _inversion_terms(params, model, task, res)
  assert end['ce'] < 0.25 * start['ce'] and end['bn'] < 0.95 * start['bn']


def test_calibration_lowers_loss_and_separates_classes(average, one_task):
  model, params = average
  task, res = one_task
  adapted, x = icfil.invert_task(params, task, icfil.task_key(1234, 7), learner=_maml(model),
                                 settings=SETTINGS)
  np.testing.assert_allclose(x, res['pseudo_x'], rtol=1e-5, atol=1e-5)  # repeatable
  direct = icfil.calibration_loss(adapted, task['support_x'], task['support_y'], x, model=model,
                                  settings=SETTINGS)
  np.testing.assert_allclose(res['loss_before'], direct, rtol=1e-5)
  assert res['loss_after'] < 0.9 * res['loss_before']
  # Real support features end closer to their own class's pseudo features than to others'.
  assert res['margin_after'] > max(res['margin_before'], 0.0) + 0.05
  sims = np.asarray(res['sims_after'])
  pos = np.asarray(task['support_y'])[:, None] == np.asarray(res['pseudo_y'])[None, :]
  assert sims[pos].mean() > sims[~pos].mean()


def test_batched_accuracies_paired_with_plain_evaluation(average, meta_test):
  model, params = average
  kw = dict(learner=_maml(model), split=meta_test, ways=5, shots=1, queries=15, num_tasks=4,
            seed=99, batch=3)
  plain = evaluate.task_accuracies(params, **kw)
  m = icfil.task_metrics(params, settings=SETTINGS._replace(inv_steps=5), **kw)
  np.testing.assert_array_equal(m['acc_adapted'], plain)
  assert m['acc'].shape == (4,) and ((m['acc'] >= 0) & (m['acc'] <= 1)).all()
  np.testing.assert_allclose(m['acc'] * 75, np.round(m['acc'] * 75), atol=1e-4)
  frozen = icfil.task_metrics(params, settings=SETTINGS._replace(inv_steps=5, lr=0.0), **kw)
  np.testing.assert_array_equal(frozen['acc'], plain)  # lr 0: calibration changes nothing


def test_config_entry_points(average, meta_test, smoke_config):
  model, params = average
  c = smoke_config.copy_and_resolve_references()
  c.icfil.inv_steps, c.icfil.cal_steps = 3, 2
  accs = icfil.evaluate_params(params, c, meta_test, num_tasks=2)
  again = icfil.task_accuracies(
      params, learner=_maml(model), split=meta_test, ways=5, shots=1, queries=15, num_tasks=2,
      seed=c.eval.seed, icfil_config=c.icfil, inversion_config=c.inversion)
  np.testing.assert_array_equal(accs, again)
  c.icfil.tau = 0.0
  with pytest.raises(ValueError, match='config.icfil.tau must be > 0'):
    icfil.evaluate_params(params, c, meta_test, num_tasks=1)
  with pytest.raises(ValueError, match="need a 'head' entry"):
    icfil.task_metrics({k: v for k, v in params.items() if k != 'head'}, learner=_maml(model),
                       split=meta_test, ways=5, shots=1, queries=15, num_tasks=1, seed=0,
                       settings=SETTINGS)


def test_follows_the_learners_own_adaptation(average, meta_test, smoke_config):
  """ANIL: ICFIL calibrates the model ANIL adapted (its head), paired with ANIL's own
  evaluation through the config path the training loop and the tuner take."""
  model, params = average
  c = smoke_config.copy_and_resolve_references()
  c.meta.algo, c.meta.test_inner_steps = 'anil', 10
  c.icfil.inv_steps, c.icfil.cal_steps = 3, 2
  learner = icfil.learner_from_config(c)
  assert (learner.algo, learner.steps, learner.second_order) == ('anil', 10, False)
  task = next(data.episodes(meta_test, 5, 1, 15, seed=5, num=1))
  task.pop('classes')
  adapted, _, _, _ = icfil.prepare(params, task['support_x'], task['support_y'],
                                   jax.random.key(0), learner=learner, settings=SETTINGS)
  chex.assert_trees_all_equal({k: v for k, v in adapted.items() if k != 'head'},
                              {k: v for k, v in params.items() if k != 'head'})
  assert not np.allclose(adapted['head']['kernel'], params['head']['kernel'])
  m = icfil.config_metrics(params, c, meta_test, num_tasks=3)
  np.testing.assert_array_equal(m['acc_adapted'],
                                evaluate.evaluate_params(params, c, meta_test, num_tasks=3))
  frozen = icfil.config_metrics(params, c, meta_test, num_tasks=3,
                                settings=icfil.Settings.from_config(c.icfil, c.inversion)
                                ._replace(lr=0.0))
  np.testing.assert_array_equal(frozen['acc'], m['acc_adapted'])  # lr 0: nothing changes


def test_refuses_protonet_before_any_work(average, meta_test, smoke_config, tmp_path):
  model, params = average
  c = smoke_config.copy_and_resolve_references()
  c.meta.algo, c.icfil.enabled = 'protonet', True
  match = r"config.meta.algo='protonet' adapts no parameters.*config.icfil.enabled=False"
  with pytest.raises(ValueError, match=match):
    icfil.evaluate_params(params, c, meta_test, num_tasks=1)
  with pytest.raises(ValueError, match=match):
    icfil.check_learner(meta.Learner('protonet', model))
  with pytest.raises(ValueError, match=match):  # before the teachers are even looked for
    meta_test_lib.train_and_evaluate(c, str(tmp_path))
  assert not list(tmp_path.iterdir())


def test_figure(one_task, tmp_path):
  task, res = one_task
  path = tmp_path / 'icfil.png'
  icfil.save_figure(str(path), task, res)
  assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and path.stat().st_size > 10_000


def test_tune_finds_each_meta_test_set(smoke_config, tmp_path):
  c = smoke_config.copy_and_resolve_references()
  w = str(tmp_path)
  assert tune_icfil.dataset_dir(c, w) == (c.data.dataset, c.data.data_dir, c.data.source, w)
  c.data.extra_dataset, c.data.extra_data_dir = 'mini_imagenet', 'M'  # MH: a second set
  assert tune_icfil.dataset_dir(c, w, 'mini_imagenet') == (
      'mini_imagenet', 'M', 'auto', os.path.join(w, 'mini_imagenet'))
  with pytest.raises(utils.UserError, match=r"--dataset='omniglot'.*cifar_fs, mini_imagenet"):
    tune_icfil.dataset_dir(c, w, 'omniglot')


@pytest.mark.slow  # compile-bound
def test_tune_loads_params_and_searches_meta_val(smoke_zoo, smoke_config, average, meta_val,
                                                  meta_test, tmp_path):
  model, params = average
  c = smoke_config.copy_and_resolve_references()
  c.icfil.inv_steps, c.icfil.cal_steps, c.icfil.lr = 3, 1, 0.01
  flat = {'/'.join(k): v for k, v in traverse_util.flatten_dict(params).items()}
  np.savez(tmp_path / 'p.npz', **flat)
  chex.assert_trees_all_equal(tune_icfil.load_params(str(tmp_path / 'p.npz'), c, smoke_zoo),
                              params)
  teacher = zoo.load(smoke_zoo)[0]  # an orbax checkpoint with a 'params' entry
  chex.assert_trees_all_equal(tune_icfil.load_params(teacher.checkpoint, c, smoke_zoo),
                              jax.tree.map(np.asarray, teacher.variables['params']))
  np.savez(tmp_path / 'bad.npz', **{k: v[..., :1] if k == 'head/kernel' else v
                                    for k, v in flat.items()})
  with pytest.raises(ValueError, match='head/kernel expected'):
    tune_icfil.load_params(str(tmp_path / 'bad.npz'), c, smoke_zoo)
  with pytest.raises(FileNotFoundError, match='no training checkpoint'):
    tune_icfil.load_params('best', c, smoke_zoo)
  chex.assert_trees_all_equal(tune_icfil.load_params('', c, smoke_zoo), params)  # zoo average

  grid = {'inv_steps': (2,), 'lr': (0.0, 0.01)}
  c.eval.tasks = 3
  res = tune_icfil.run(c, str(tmp_path), str(tmp_path / 'p.npz'), num_tasks=3, grid=grid,
                       log=lambda s: None, test_best=True)
  on_disk = json.load(open(tmp_path / tune_icfil.SEARCH_FILE))
  assert on_disk['split'] == 'meta_val' and on_disk['seed'] == c.eval.val_seed
  assert on_disk['best']['acc'] == max(t['acc'] for t in on_disk['trials'])
  # The config's settings, inv_steps 2, lr 0 (lr 0.01 repeats a trial).
  assert len(on_disk['trials']) == len(res['trials']) == 3
  plain = evaluate.evaluate_params(params, c, meta_val, seed=c.eval.val_seed, num_tasks=3)
  assert all(t['plain_acc'] == pytest.approx(plain.mean()) for t in on_disk['trials'])
  frozen = [t for t in on_disk['trials'] if t['settings']['lr'] == 0.0]
  assert frozen and all(t['mean_diff'] == 0 for t in frozen)
  # --test: the best setting once on the main results' meta-test tasks, paired with plain.
  out = tmp_path / 'icfil_1shot'
  tested = json.load(open(out / 'results.json'))
  assert tested == res['test'] and tested['tasks'] == 3
  assert tested['icfil']['settings'] == res['best']['settings']  # no `enabled` switch
  assert tested['methods']['purer']['acc'] == pytest.approx(
      evaluate.evaluate_params(params, c, meta_test).mean())
  m = tested['methods']
  assert tested['paired']['purer+icfil']['mean_diff'] == pytest.approx(
      m['purer+icfil']['acc'] - m['purer']['acc'])
  assert (out / 'icfil_task0.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
