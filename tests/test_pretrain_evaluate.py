"""The teacher zoo and the evaluation harness (synthetic data; real CIFAR-FS in `slow`)."""
import json
import os
import shutil

import chex
import jax
import numpy as np
import pytest

from purer_jax import data, evaluate, models, pretrain, tune_icfil, zoo
from purer_jax import workdir as workdir_lib


def test_pool_plans(smoke_config):
  c = smoke_config.copy_and_resolve_references()
  c.teachers.num = 13
  plan = pretrain.pool_plan(c, {'cifar_fs': 64})
  assert len(plan) == 13 and plan[12][2] == [60, 61, 62, 63]
  assert [cls for _, _, p in plan for cls in p] == list(range(64))
  c.teachers.archs = ('conv4', 'resnet10', 'resnet18')
  assert [a for _, a, _ in pretrain.pool_plan(c, {'cifar_fs': 64})[:4]] == [
      'conv4', 'resnet10', 'resnet18', 'conv4']
  c.teachers.assignment, c.teachers.num = 'random', 100
  plan = pretrain.pool_plan(c, {'cifar_fs': 64})
  assert len(plan) == 100 and all(len(set(p)) == 5 for _, _, p in plan)


def test_heldout_split_is_last_20_percent(meta_train):
  (xt, yt), (xh, yh) = pretrain.split_heldout(meta_train, [3, 7], 0.2)
  assert len(xt) == 2 * 16 and len(xh) == 2 * 4  # 20 images per class
  rows = meta_train.class_indices()[7]
  np.testing.assert_array_equal(xh[-1], data.normalize(meta_train.images[rows[-1:]], 'cifar_fs')[0])


def test_teacher_keeps_the_epoch_config_names(meta_train, smoke_config, monkeypatch):
  tc = smoke_config.teachers.copy_and_resolve_references()
  tc.epochs, tc.milestones = 4, (2,)
  train, heldout = pretrain.split_heldout(meta_train, [0, 1, 2, 3, 4], 0.2)
  model = models.create('conv4', 5, 32)
  kept = {}
  for keep in pretrain.KEEP:
    scripted = iter([0.5, 0.9, 0.6, 0.7])  # held-out accuracies by epoch: best 1, last 3
    monkeypatch.setattr(pretrain, 'accuracy', lambda *a, **k: next(scripted))
    tc.keep = keep
    kept[keep] = pretrain.train_teacher(model, train, heldout, tc, jax.random.key(0))
  assert (kept['best'][1], kept['last'][1]) == (0.9, 0.7)
  leaves = lambda v: jax.tree.leaves(v['params'])
  assert not all(np.array_equal(a, b) for a, b in zip(leaves(kept['best'][0]),
                                                      leaves(kept['last'][0])))


def test_teacher_on_every_image_keeps_its_last_epoch(meta_train, smoke_config):
  tc = smoke_config.teachers.copy_and_resolve_references()
  tc.epochs, tc.milestones, tc.heldout_frac = 2, (1,), 0.0
  train, heldout = pretrain.split_heldout(meta_train, [0, 1], tc.heldout_frac)
  assert len(train[0]) == 2 * 20 and len(heldout[0]) == 0
  model = models.create('conv4', 2, 32)
  with pytest.raises(ValueError, match="no held-out images .* set config.teachers.keep='last'"):
    pretrain.train_teacher(model, train, heldout, tc, jax.random.key(0))
  tc.keep = 'last'
  variables, acc = pretrain.train_teacher(model, train, heldout, tc, jax.random.key(0))
  assert acc is None and jax.tree.leaves(variables['params'])


def test_unknown_teacher_keep_is_named(meta_train, smoke_config):
  tc = smoke_config.teachers.copy_and_resolve_references()
  tc.keep = 'final'
  train, heldout = pretrain.split_heldout(meta_train, [0, 1], 0.2)
  with pytest.raises(ValueError, match=r"teachers.keep='final': choose one of best \| last"):
    pretrain.train_teacher(models.create('conv4', 2, 32), train, heldout, tc, jax.random.key(0))


def test_teachers_trained_together_match_one_by_one(meta_train, smoke_config):
  tc = smoke_config.teachers.copy_and_resolve_references()
  tc.epochs, tc.milestones = 2, (1,)
  model = models.create('conv4', 2, 32)
  parts = [pretrain.split_heldout(meta_train, c, 0.2) for c in ([0, 1], [2, 3], [4, 5])]
  keys = [jax.random.key(i) for i in range(3)]
  together = pretrain.train_teachers(model, [p[0] for p in parts], [p[1] for p in parts], tc, keys)
  for (train, heldout), key, (variables, acc) in zip(parts, keys, together):
    alone, alone_acc = pretrain.train_teacher(model, train, heldout, tc, key)
    assert acc == alone_acc
    chex.assert_trees_all_close(variables, alone, atol=1e-5)


def test_groups_join_teachers_of_one_shape_up_to_the_limit(smoke_config, meta_train):
  c = smoke_config.copy_and_resolve_references()
  c.teachers.archs = ('conv4', 'conv4', 'resnet10')
  c.teachers.num = 13
  plan = pretrain.pool_plan(c, {'cifar_fs': 64})
  splits = {'cifar_fs': meta_train}
  c.teachers.together = 0
  # conv4 conv4 resnet10 ..., and the last teacher has 4 classes: its own program.
  assert pretrain._groups(c, plan, list(range(13)), splits) == [
      [0, 1], [2], [3, 4], [5], [6, 7], [8], [9, 10], [11], [12]]
  c.teachers.archs, c.teachers.together = ('conv4',), 5
  plan = pretrain.pool_plan(c, {'cifar_fs': 64})
  assert pretrain._groups(c, plan, [1, 2, 3, 4, 5, 6, 7, 12], splits) == [
      [1, 2, 3, 4, 5], [6, 7], [12]]
  c.teachers.together = 1
  assert pretrain._groups(c, plan, [3, 4], splits) == [[3], [4]]


@pytest.mark.parametrize('schedule', pretrain.SCHEDULES)
def test_teacher_lr_schedules(smoke_config, schedule):
  tc = smoke_config.teachers.copy_and_resolve_references()
  tc.schedule, tc.lr, tc.epochs, tc.milestones, tc.gamma = schedule, 0.1, 10, (5,), 0.2
  tx = pretrain.make_optimizer(models.create('conv4', 2, 32), tc, steps_per_epoch=10)
  # Adam's first step moves each weight by about the lr: read the lr off the update.
  params = {'w': np.zeros(3, np.float32)}
  state = tx.init(params)
  lrs = []
  for _ in range(100):
    updates, state = tx.update({'w': np.ones(3, np.float32)}, state, params)
    lrs.append(-float(updates['w'][0]))
  expected = {'step': [0.1] * 50 + [0.02] * 50,
              'cosine': [0.05 * (1 + np.cos(np.pi * t / 100)) for t in range(100)]}
  if schedule in expected:
    np.testing.assert_allclose(lrs, expected[schedule], rtol=1e-3, atol=1e-6)
  else:  # one-cycle: up to the peak at 30%, then down towards 0
    assert np.argmax(lrs) == 30 and abs(max(lrs) - 0.1) < 1e-6 and lrs[0] < 0.01 and lrs[-1] < 1e-3


def test_label_smoothing_changes_the_loss_only_when_set(meta_train, smoke_config):
  model = models.create('conv4', 2, 32)
  tc = smoke_config.teachers.copy_and_resolve_references()
  (x, y), _ = pretrain.split_heldout(meta_train, [0, 1], 0.2)
  tx = pretrain.make_optimizer(model, tc, 1)
  losses = {}
  for s in (0.0, 0.3):
    v = models.init(model, jax.random.key(0))
    losses[s] = float(pretrain.train_step([v], [tx.init(v['params'])], [x[:8]], [y[:8]],
                                          model=model, tx=tx, smoothing=s)[2][0])
  v = models.init(model, jax.random.key(0))
  logits = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])[0])(
      v, x[:8])
  logp = np.asarray(jax.nn.log_softmax(logits))
  hard = -logp[np.arange(8), y[:8]].mean()
  np.testing.assert_allclose(losses[0.0], hard, rtol=1e-5)
  np.testing.assert_allclose(losses[0.3], 0.85 * hard - 0.15 * logp[:, ::-1][
      np.arange(8), y[:8]].mean(), rtol=1e-5)


def test_a_pool_found_in_a_workdir_names_where_it_was_trained(smoke_zoo, tmp_path):
  assert zoo.source(smoke_zoo)['reused'] == 'this workdir, by an earlier command'
  copied = str(tmp_path / 'copy')
  shutil.copytree(zoo.teachers_dir(smoke_zoo), zoo.teachers_dir(copied))
  source = zoo.source(copied)
  assert source['reused'] == os.path.abspath(smoke_zoo)
  assert source['seconds'] == pytest.approx(
      sum(t['train_seconds'] for t in zoo.read_manifest(smoke_zoo)['teachers']), abs=0.2)


@pytest.mark.slow
def test_smoke_teachers_well_above_chance(real_zoo, cifar_train, real_config):
  teachers = zoo.load(real_zoo)
  assert [t.classes for t in teachers] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14]]
  assert teachers[1].class_names == list(cifar_train.class_names[5:10])
  for t in teachers:
    _, (xh, yh) = pretrain.split_heldout(cifar_train, t.classes, 0.2,
                                         real_config.teachers.max_per_class)
    # The stored checkpoint is the epoch whose held-out accuracy the manifest records.
    acc = pretrain.accuracy(t.variables, t.model, xh, yh)
    assert acc == pytest.approx(t.heldout_acc, abs=1e-6)
    assert acc >= 0.4, f'teacher {t.index}: held-out {acc:.3f} (chance 0.2)'
  assert np.mean([t.heldout_acc for t in teachers]) >= 0.5


def test_pretrain_resumes(smoke_zoo, smoke_config):
  before = os.path.getmtime(os.path.join(zoo.teachers_dir(smoke_zoo), zoo.MANIFEST))
  pretrain.run(smoke_config, smoke_zoo)  # everything is there: nothing retrained
  assert os.path.getmtime(os.path.join(zoo.teachers_dir(smoke_zoo), zoo.MANIFEST)) == before


def test_pool_is_one_rule_for_every_entry_point(smoke_zoo, smoke_config):
  c = smoke_config.copy_and_resolve_references()
  assert [t.index for t in zoo.pool(c, smoke_zoo)] == [0, 1, 2]
  c.teachers.num = 2  # a smaller run reuses a bigger zoo: teachers 0..num-1
  pool = zoo.pool(c, smoke_zoo)
  assert [t.index for t in pool] == [0, 1]
  # The tuner's default params are the `average` baseline of that same pool.
  avg = evaluate.baseline_params('average', pool, evaluate.meta_model(c), jax.random.key(c.seed))
  chex.assert_trees_all_close(tune_icfil.load_params('', c, smoke_zoo), avg)
  c.teachers.archs = ('resnet10',)
  with pytest.raises(workdir_lib.WorkdirError, match=r"teacher 0 is conv4 on cifar_fs; teacher 1 .*new workdir"):
    zoo.pool(c, smoke_zoo)
  c.teachers.archs, c.data.dataset = ('conv4',), 'mini_imagenet'
  with pytest.raises(workdir_lib.WorkdirError, match=r"datasets \('mini_imagenet',\)\): teacher 0"):
    zoo.pool(c, smoke_zoo)
  c.data.dataset, c.teachers.num = 'cifar_fs', 0
  with pytest.raises(workdir_lib.WorkdirError, match='no teacher with an index below config.teachers.num=0'):
    zoo.pool(c, smoke_zoo)


def test_zoo_missing_gives_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='no teacher zoo.*purer_jax.pretrain'):
    zoo.load(str(tmp_path))


def test_evaluate_random_and_average_paired(smoke_zoo, smoke_config, meta_test, tmp_path):
  split = meta_test
  model = evaluate.meta_model(smoke_config)
  teachers = zoo.load(smoke_zoo)
  avg = evaluate.baseline_params('average', teachers, model, jax.random.key(0))
  np.testing.assert_allclose(
      avg['conv2']['kernel'],
      np.mean([t.variables['params']['conv2']['kernel'] for t in teachers], 0), rtol=1e-6)
  rnd = evaluate.baseline_params('random', teachers, model, jax.random.key(0))
  accs = {name: evaluate.evaluate_params(p, smoke_config, split, num_tasks=30)
          for name, p in (('random', rnd), ('average', avg))}
  again = evaluate.evaluate_params(rnd, smoke_config, split, num_tasks=30)
  np.testing.assert_array_equal(accs['random'], again)  # fixed task seeds: paired and repeatable
  assert all(len(a) == 30 and ((a >= 0) & (a <= 1)).all() for a in accs.values())
  assert 0.1 < accs['random'].mean() < 0.4
  res = evaluate.write_results(str(tmp_path), smoke_config, accs)
  on_disk = json.load(open(tmp_path / 'results.json'))
  assert on_disk == res and on_disk['tasks'] == 30 and on_disk['shots'] == 1
  assert set(on_disk['methods']) == {'random', 'average'}
  m, ci = evaluate.summarize(accs['average'])
  assert on_disk['methods']['average'] == {'acc': m, 'ci95': ci}
  assert ci == pytest.approx(1.96 * accs['average'].std() / np.sqrt(30))
  assert 'average' in (tmp_path / 'results.md').read_text()


def test_average_refuses_mixed_archs(smoke_zoo, smoke_config):
  teachers = zoo.load(smoke_zoo)
  teachers[0].arch = 'resnet10'
  with pytest.raises(ValueError, match='average baseline needs'):
    evaluate.baseline_params('average', teachers, models.create('resnet10', 5, 32),
                             jax.random.key(0))


def test_teacher_init_is_the_best_held_out_teachers_body_with_a_zero_head(smoke_zoo):
  teachers = zoo.load(smoke_zoo)
  model = models.create('conv4', 5, 32)
  for t, acc in zip(teachers, (0.7, 0.9, 0.9)):
    t.heldout_acc = acc
  got = evaluate.baseline_params('teacher', teachers, model, jax.random.key(0))
  body = dict(teachers[1].variables['params'])  # the first of equals
  head, _ = got.pop('head'), body.pop('head')
  assert not np.any(head['kernel']) and not np.any(head['bias'])
  chex.assert_trees_all_equal(got, body)
  teachers[1].heldout_acc = None
  with pytest.raises(ValueError, match="meta.init='teacher'.*use average or random"):
    evaluate.baseline_params('teacher', teachers, model, jax.random.key(0))


def test_arch_average_init_averages_only_the_teachers_of_the_learners_arch_and_size(smoke_zoo):
  teachers = zoo.load(smoke_zoo)
  model = models.create('conv4', 5, 32)
  teachers[0].image_size = 84  # as if another arch or size: it must not count
  got = evaluate.baseline_params('arch_average', teachers, model, jax.random.key(0))
  p1, p2 = (t.variables['params'] for t in teachers[1:])
  chex.assert_trees_all_close(got, jax.tree.map(lambda a, b: (a + b) / 2, p1, p2), atol=1e-6)
  for t in teachers:
    t.image_size = 84
  with pytest.raises(ValueError, match="meta.init='arch_average'.*Conv4 at 32px"):
    evaluate.baseline_params('arch_average', teachers, model, jax.random.key(0))


def test_tune_adapt_scores_both_columns_and_tunes_the_listed_methods_only(smoke_zoo, smoke_config,
                                                                         tmp_path):
  from purer_jax import meta_test
  c = smoke_config.copy_and_resolve_references()
  c.eval.tasks, c.train.val_tasks, c.eval.methods = 4, 4, ('random', 'purer')
  c.eval.tune_adapt, c.eval.tune_methods = True, ('purer',)
  c.eval.adapt_steps, c.eval.adapt_lrs = (3, 1), (0.05,)
  c.icfil.enabled, c.icfil.inv_steps, c.icfil.cal_steps = True, 2, 1
  teachers = zoo.load(smoke_zoo)
  params = evaluate.baseline_params('average', teachers, evaluate.meta_model(c), jax.random.key(0))
  res = meta_test.final_evaluation(c, str(tmp_path), teachers, params)['cifar_fs']
  assert set(res['adaptation']) == {'purer'}
  trials = res['adaptation']['purer']['trials']
  assert [(t['steps'], t['lr']) for t in trials] == [(3, 0.05), (1, 0.05)]
  val = [data.load('cifar_fs', 'meta_val', c.data.data_dir)]
  for t in trials:  # one adaptation per lr, read at each count: each count's own score
    want = evaluate.validate(params, evaluate.with_adaptation(c, t['steps'], t['lr']), val)
    assert abs(t['val_acc'] - want) < 1e-6, t
  # The one-step column is config.meta's adaptation for every method, the tuned one each
  # tuned method at its meta-val choice; an untuned method scores the same in both.
  split = data.load('cifar_fs', 'meta_test', c.data.data_dir)
  one = evaluate.evaluate_params(params, c, split, num_tasks=4)
  best = res['adaptation']['purer']
  tuned = evaluate.evaluate_params(params, evaluate.with_adaptation(c, best['steps'], best['lr']),
                                   split, num_tasks=4)
  np.testing.assert_allclose(res['per_task']['purer'], np.round(one, 4))
  np.testing.assert_allclose(res['tuned']['per_task']['purer'], np.round(tuned, 4))
  assert res['tuned']['per_task']['random'] == res['per_task']['random']
  assert set(res['methods']) == set(res['tuned']['methods']) == {'random', 'purer',
                                                                   'purer+icfil'}
  for col in (res, res['tuned']):  # ICFIL calibrates each column's own adaptation
    assert set(col['paired']) == {'purer-random', 'purer+icfil'}
    gain = np.mean(col['per_task']['purer+icfil']) - np.mean(col['per_task']['purer'])
    assert abs(col['paired']['purer+icfil']['mean_diff'] - gain) < 1e-4
    diff = np.mean(col['per_task']['purer']) - np.mean(col['per_task']['random'])
    assert abs(col['paired']['purer-random']['mean_diff'] - diff) < 1e-4
  # Three steps at lr 0.05 cost more than one: each column records its own cost.
  assert res['tuned']['cost_gflop']['purer'] != res['cost_gflop']['purer'] or best['steps'] == 1


def test_prototype_read_out_of_the_learner_is_scored_and_chosen_on_meta_val(smoke_zoo,
                                                                             smoke_config,
                                                                             tmp_path):
  from purer_jax import meta_test
  c = smoke_config.copy_and_resolve_references()
  c.eval.tasks, c.train.val_tasks, c.eval.methods = 10, 10, ('purer', 'purer_proto')
  teachers = zoo.load(smoke_zoo)
  params = evaluate.baseline_params('average', teachers, evaluate.meta_model(c), jax.random.key(0))
  res = meta_test.final_evaluation(c, str(tmp_path), teachers, params)['cifar_fs']
  assert set(res['methods']) == {'purer', 'purer_proto'} and 'purer-purer_proto' in res['paired']
  assert set(res['readout_val']) == {'purer', 'purer_proto'}
  split = data.load('cifar_fs', 'meta_test', c.data.data_dir)
  proto = evaluate.evaluate_params(params, evaluate.with_algo(c, 'protonet'), split, num_tasks=10)
  np.testing.assert_allclose(res['per_task']['purer_proto'], np.round(proto, 4))
  # Prototypes need one forward pass; MAML's adaptation a backward pass too.
  assert 0 < res['cost_gflop']['purer_proto'] < res['cost_gflop']['purer']
  # Training tracks both read-outs' meta-val (the prototype's too, so that a cell judged by it
  # has a curve), and the record's curve keeps both.
  val = evaluate.validate_readouts(params, c, [data.load('cifar_fs', 'meta_val', c.data.data_dir)])
  assert val == pytest.approx({'val_acc': res['readout_val']['purer'],
                               'val_acc_proto': res['readout_val']['purer_proto']})
  c.eval.methods = ('purer',)
  assert set(evaluate.validate_readouts(params, c, [split])) == {'val_acc'}
  metrics = tmp_path / 'metrics.jsonl'
  metrics.write_text('{"it": 9, "it_per_s": 2.0}\n' + json.dumps({'it': 9, **val}) + '\n')
  assert meta_test.val_curve(str(metrics)) == [{'it': 10, **val, 'minutes': 0.08}]


def test_teacher_augmentation_moves_the_training_only_when_set(meta_train, smoke_config):
  tc = smoke_config.teachers.copy_and_resolve_references()
  tc.epochs, tc.milestones = 1, (1,)
  train, heldout = pretrain.split_heldout(meta_train, [0, 1], 0.2)
  model = models.create('conv4', 2, 32)
  run = lambda: pretrain.train_teacher(model, train, heldout, tc, jax.random.key(0))[0]
  plain = run()
  tc.augment, tc.shift = '', 6  # the shift is read only when 'shift' is listed
  chex.assert_trees_all_equal(run(), plain)
  tc.augment = 'flip,shift'
  augmented = run()
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(augmented),
                                                      jax.tree.leaves(plain)))
  chex.assert_trees_all_equal(run(), augmented)  # the same key, the same flips and shifts
  tc.augment = 'crop'
  with pytest.raises(ValueError, match=r"config\.teachers\.augment must list"):
    run()
