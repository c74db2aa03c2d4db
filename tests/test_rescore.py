"""Re-scoring a finished run with what needs only its teachers (purer_jax/rescore.py): the pool
read-out and the baselines, one set or MH's two."""
import json

import jax
import numpy as np
import pytest

from purer_jax import data as data_lib
from purer_jax import evaluate, meta_test, rescore, tune_icfil, utils, zoo


def _record(config, teachers, name, per_task):
  methods = {m: dict(zip(('acc', 'ci95'), evaluate.summarize(a))) for m, a in per_task.items()}
  return {'dataset': name, 'tasks': config.eval.tasks, 'methods': methods,
          'per_task': per_task, 'paired': {}, 'config': config.to_dict(),
          'teachers_heldout': [t.heldout_acc for t in teachers]}


@pytest.fixture(scope='module')
def mh_run(smoke_config, smoke_zoo):
  config = smoke_config.copy_and_resolve_references()
  config.eval.tasks, config.train.val_tasks, config.data.extra_dataset = 6, 4, 'mini_imagenet'
  teachers = zoo.pool(config, smoke_zoo)
  rng = np.random.default_rng(0)
  records = {name: _record(config, teachers, name, {
      m: [float(x) for x in rng.uniform(0.2, 0.6, config.eval.tasks)] for m in ('purer', 'random')})
      for name in ('cifar_fs', 'mini_imagenet')}
  records['cifar_fs']['by_dataset'] = {k: v['methods'] for k, v in records.items()}
  return config, teachers, records


def test_mh_run_is_scored_on_each_set_with_one_choice_made_on_every_meta_val_set(
    mh_run, meta_val, meta_test, meta_train):
  config, teachers, records = mh_run
  # Two sets stand in for MH's, the second with its labels shuffled (the synthetic classes are
  # too easy to tell apart otherwise): each must be scored on its own tasks.
  shuffled = data_lib.SplitData(images=meta_train.images,
                                labels=np.random.default_rng(1).permutation(meta_train.labels),
                                class_names=meta_train.class_names)
  tests = {'cifar_fs': meta_test, 'mini_imagenet': shuffled}
  out = rescore.rescore(records, config, teachers, val_splits=[meta_val, meta_train],
                        test_splits=tests)
  choice = evaluate.pool_choice(teachers, config, [meta_val, meta_train])
  assert out['cifar_fs']['pool_variant'] == out['mini_imagenet']['pool_variant'] == choice
  for name, res in out.items():
    want = evaluate.pool_accuracies(teachers, choice, config, tests[name])
    np.testing.assert_allclose(res['per_task']['pool'], want, atol=1e-4)
    assert res['per_task']['purer'] == records[name]['per_task']['purer']
    diff = np.mean(np.subtract(res['per_task']['purer'], want))
    assert res['paired']['purer-pool']['mean_diff'] == pytest.approx(diff, abs=1e-4)
    assert res['cost_gflop']['pool'] > 0 and 'rescored' in res
  assert out['cifar_fs']['per_task']['pool'] != out['mini_imagenet']['per_task']['pool']
  table = out['cifar_fs']['by_dataset']
  assert {k: v['pool'] for k, v in table.items()} == {
      k: v['methods']['pool'] for k, v in out.items()}
  assert 'by_dataset' not in out['mini_imagenet']


def test_refuses_a_record_of_other_sets_or_task_counts(mh_run):
  config, teachers, records = mh_run
  rescore.check_same_run(records['cifar_fs'], config, teachers, 'R')  # the run's own: accepted
  one_set = dict(records['cifar_fs'])
  del one_set['by_dataset']
  with pytest.raises(utils.UserError, match="scored \\['cifar_fs'\\].*extra_dataset"):
    rescore.check_same_run(one_set, config, teachers, 'R')
  with pytest.raises(utils.UserError, match='--config.eval.tasks=600'):
    rescore.check_same_run(dict(records['cifar_fs'], tasks=600), config, teachers, 'R')
  with pytest.raises(utils.UserError, match='other teachers'):
    rescore.check_same_run(dict(records['cifar_fs'], teachers_heldout=[0.1]), config, teachers,
                           'R')


def test_an_mh_runs_second_record_is_read_beside_its_first(mh_run):
  config = mh_run[0]
  assert rescore.record_paths('d/results.json', config) == {
      'cifar_fs': 'd/results.json', 'mini_imagenet': 'd/mini_imagenet/results.json'}


def test_random_rescored_without_its_run_or_teachers_is_the_figure_the_run_scored(
    smoke_config, smoke_zoo, meta_val, tmp_path):
  """Random dropped from a run's own record and re-scored without the run (nor its teachers:
  it reads none) comes back task for task, paired with the same PURER: rescore builds it at the
  run's config and seed."""
  c = smoke_config.copy_and_resolve_references()
  c.eval.tasks, c.eval.methods, c.eval.tune_adapt = 6, ('random', 'purer'), False
  teachers = zoo.pool(c, smoke_zoo)
  model = evaluate.meta_model(c)
  learner = evaluate.baseline_params('random', teachers, model, jax.random.key(7))
  run = meta_test.final_evaluation(c, str(tmp_path), teachers, learner)['cifar_fs']
  run['config'] = json.loads(c.to_json_best_effort())  # as train_and_evaluate records it
  without = dict(run, methods={'purer': run['methods']['purer']},
                 per_task={'purer': run['per_task']['purer']}, paired={})
  other = c.copy_and_resolve_references()
  other.seed = c.seed + 1  # the CLI's config must not decide the baseline's init: the run's does
  split = data_lib.load('cifar_fs', 'meta_test', c.data.data_dir)
  rescore.check_same_run(without, c, None, 'R')  # Random reads no teacher: none are loaded
  out = rescore.rescore({'cifar_fs': without}, other, None, val_splits=[meta_val],
                        test_splits={'cifar_fs': split}, methods=('random',))['cifar_fs']
  assert out['per_task']['random'] == run['per_task']['random']
  # The record keeps per-task figures to 4 decimals; the run paired the unrounded ones.
  assert out['paired']['purer-random'] == pytest.approx(run['paired']['purer-random'], abs=1e-4)
  assert 'pool' not in out['methods'] and out['cost_gflop']['random'] > 0
  assert set(out['rescored']) == {'random'}


def test_refuses_methods_it_cannot_add_or_would_replace(mh_run):
  config, teachers, records = mh_run
  rec = records['cifar_fs']
  rescore.check_methods(['pool'], rec, teachers, 'R')
  for methods, match in ((['purer'], "cannot be re-scored without the run's checkpoint"),
                         (['random'], "R already scores 'random'"),
                         ([], '--methods is empty')):
    with pytest.raises(utils.UserError, match=match):
      rescore.check_methods(methods, rec, teachers, 'R')


@pytest.fixture(scope='module')
def tuned_run(smoke_config, smoke_zoo, meta_val, tmp_path_factory):
  """A run that tuned its test-time adaptation in-run, its learner file, and its record
  without the tuned column."""
  c = smoke_config.copy_and_resolve_references()
  c.eval.tasks, c.eval.methods, c.eval.tune_adapt = 6, ('random', 'purer'), True
  c.eval.tune_methods, c.eval.adapt_steps, c.eval.adapt_lrs = ('random', 'purer'), (1, 3), (
      0.01, 0.1)
  teachers = zoo.pool(c, smoke_zoo)
  learner = evaluate.baseline_params('random', teachers, evaluate.meta_model(c),
                                     jax.random.key(7))
  workdir = tmp_path_factory.mktemp('tuned_run')
  run = meta_test.final_evaluation(c, str(workdir), teachers, learner)['cifar_fs']
  run['config'] = json.loads(c.to_json_best_effort())
  utils.save_params(str(workdir / meta_test.LEARNER_FILE), learner)
  without = {k: v for k, v in run.items() if k not in ('tuned', 'adaptation')}
  split = data_lib.load('cifar_fs', 'meta_test', c.data.data_dir)
  return c, run, without, split, str(workdir / meta_test.LEARNER_FILE)


def test_tuned_column_from_the_learner_file_is_the_one_the_run_scored(tuned_run, meta_val):
  """A run's tuned column, dropped and re-scored from its learner file alone (no teachers:
  Random reads none), comes back task for task with the same adaptations chosen on meta-val."""
  c, run, without, split, path = tuned_run
  learner = tune_icfil.load_params(path, c, '')
  rescore.check_learner(learner, without, split, 'R')
  out = rescore.add_tuned({'cifar_fs': without}, learner, None, val_splits=[meta_val],
                          test_splits={'cifar_fs': split})['cifar_fs']
  assert out['adaptation'] == run['adaptation']
  assert out['tuned']['per_task'] == run['tuned']['per_task']
  assert out['tuned']['methods'].keys() == run['tuned']['methods'].keys() == {'random', 'purer'}
  for k, v in run['tuned']['paired'].items():  # the record's per-task figures are rounded
    assert out['tuned']['paired'][k] == pytest.approx(v, abs=1e-4)
  assert out['per_task'] == run['per_task'] and set(out['rescored']) == {'tuned'}
  with pytest.raises(utils.UserError, match='has its tuned column already'):
    rescore.add_tuned({'cifar_fs': run}, learner, None, val_splits=[meta_val],
                      test_splits={'cifar_fs': split})


def test_refuses_a_learner_that_is_not_the_records(tuned_run):
  c, _, without, split, _ = tuned_run
  theirs = np.asarray(without['per_task']['purer'])
  forged = dict(without, per_task=dict(without['per_task'], purer=list(
      np.where(theirs > 0.5, theirs - 0.2, theirs + 0.2))))
  learner = tune_icfil.load_params(tuned_run[4], c, '')
  with pytest.raises(utils.UserError, match='pass the learner.npz that this run wrote'):
    rescore.check_learner(learner, forged, split, 'R')
  with pytest.raises(utils.UserError, match='no per-task PURER'):
    rescore.check_learner(learner, dict(without, per_task={}), split, 'R')
