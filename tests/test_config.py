"""Config variants: the cells' settings and the combinations that must be refused."""
import pytest

from purer_jax import config, eci


def test_unknown_variant_is_named():
  with pytest.raises(ValueError, match="'qiuck'"):
    config.build('ss', 'qiuck')


@pytest.mark.parametrize('shots', [1, 5])
def test_sh_mini_bank_holds_exactly_a_pseudo_task_per_class(shots):
  c = config.build('sh', f'quick,mini,{shots}shot')
  assert c.data.dataset == 'mini_imagenet' and c.meta.shots == shots
  # Pseudo tasks use every bank image of a class; real tasks keep the paper's 15 queries.
  assert c.inversion.spc == shots + c.meta.train_queries
  assert c.meta.queries == 15 and c.teachers.per_iter == 3


def test_quick_mini_leaves_other_scenarios_alone():
  ss = config.build('ss', 'quick,mini')
  assert (ss.teachers.per_iter, ss.train.iterations, ss.meta.train_queries) == (4, 1000, 0)
  assert config.build('sh', 'quick').inversion.spc == 16


def test_mh_quick_is_the_84px_recipe():
  mh, sh = config.build('mh', 'quick'), config.build('sh', 'quick,mini')
  assert mh.teachers.max_per_class == 300 and sh.teachers.max_per_class == 0
  for field in ('teachers.epochs', 'teachers.batch_size', 'teachers.per_iter', 'inversion.spc',
                'meta.train_queries', 'train.iterations'):
    assert mh[field] == sh[field], field


def test_mh_refuses_mini():
  with pytest.raises(ValueError, match='MH already draws'):
    config.build('mh', 'quick,mini')


def test_budget_is_ss_cifar_fs_alone():
  c = config.build('ss', 'budget,5shot')
  # 5-shot: fewer, dearer iterations in the same 120 minutes.
  assert (c.meta.shots, c.meta.outer_schedule, c.train.iterations) == (5, 'cosine', 5000)
  assert config.build('ss', 'budget').train.iterations == 6000
  # ECI: on at 1-shot, off at 5-shot (chosen on meta-val), whatever the variants' order.
  assert c.eci.start == config.build('ss', '5shot,budget').eci.start == 1.0
  for arg in ('budget', 'budget,1shot'):
    b = config.build('ss', arg)
    assert eci.start_iteration(b.eci.start, b.train.iterations) == 250
  for scenario, arg in (('sh', 'budget'), ('ss', 'budget,mini'), ('ss', 'quick,budget')):
    with pytest.raises(ValueError, match='budget'):
      config.build(scenario, arg)


def test_fast_is_the_ss_cifar_fs_recipe_with_the_fast_teachers():
  c = config.build('ss', 'fast')
  assert (c.teachers.epochs, c.teachers.schedule, c.teachers.together) == (6, 'onecycle', 4)
  # Pseudo tasks use every bank image of a class; real tasks keep the paper's 15 queries.
  assert c.inversion.spc == c.meta.shots + c.meta.train_queries and c.meta.queries == 15
  assert c.distil.weight > 0 and 'purer_proto' in c.eval.methods
  assert c.eci.start == 1.0  # ECI off, as in the measured run
  assert config.build('ss', 'quick,fast').train.iterations == c.train.iterations  # after quick
  for arg in ('5shot,fast', 'fast,5shot'):  # 5-shot: a bank of 5 + 7 per class, 1,500 iterations
    five = config.build('ss', arg)
    assert (five.inversion.spc, five.train.iterations, five.eci.start) == (12, 1500, 1.0)
  with pytest.raises(ValueError, match='`fast` variant.*MH has `quick`'):
    config.build('mh', 'fast')
  # SS MiniImageNet: fast's meta-training on quick's 84-px teachers, four refined per iteration.
  mini, quick = config.build('ss', 'fast,mini'), config.build('ss', 'quick,mini')
  for f in ('epochs', 'batch_size', 'milestones', 'schedule', 'per_iter'):
    assert mini.teachers[f] == quick.teachers[f], f
  assert (mini.inversion.spc, mini.distil.weight, mini.train.iterations) == (8, 50.0, 1000)


def test_fast_in_sh_keeps_quicks_teachers_and_refines_one_teacher_per_arch():
  sh, quick = config.build('sh', 'fast'), config.build('sh', 'quick')
  for f in ('max_per_class', 'batch_size', 'epochs', 'milestones', 'schedule', 'per_iter'):
    assert sh.teachers[f] == quick.teachers[f], f
  ss = config.build('ss', 'fast')
  for f in ('inversion.spc', 'distil.weight', 'train.iterations', 'meta.outer_schedule'):
    a, b = f.split('.')
    assert sh[a][b] == ss[a][b], f
  # SH MiniImageNet 1-shot: quick's 84-px teachers, bank and length, with fast's distillation.
  mini, quick = config.build('sh', 'fast,mini'), config.build('sh', 'quick,mini')
  for f in ('teachers.epochs', 'teachers.max_per_class', 'teachers.per_iter', 'inversion.spc',
            'train.iterations'):
    a, b = f.split('.')
    assert mini[a][b] == quick[a][b], f
  assert (mini.distil.weight, mini.distil.batch, mini.meta.outer_schedule) == (50.0, 16, 'cosine')
  assert 'purer_proto' in mini.eval.methods and mini.eci.start == 1.0
  assert mini.train.val_every == 325
  # At 5-shot: quick's 5-shot bank (5 + 3 per class) and 300 iterations, meta-val at 150 and 300.
  five, quick5 = config.build('sh', 'fast,mini,5shot'), config.build('sh', 'quick,mini,5shot')
  assert (five.inversion.spc, five.train.iterations) == (quick5.inversion.spc, 300) == (8, 300)
  assert (five.train.val_every, five.distil.batch, five.teachers.epochs) == (150, 16, 3)


def test_cell_scores_every_method_in_both_columns_and_keeps_the_recipes_read_outs():
  c = config.build('ss', 'fast,cell')
  assert c.eval.methods == ('random', 'average', 'ota', 'pool', 'purer', 'purer_proto')
  assert c.eval.tune_adapt and c.icfil.enabled
  assert config.build('ss', 'cell,fast').eval.methods == c.eval.methods  # whatever the order
  assert config.build('sh', 'quick,cell').eval.methods == config.base().eval.methods


def test_eci_switches_on_within_any_run_whatever_the_variants_order():
  for arg in ('fast,eci', 'eci,fast', 'quick,eci', 'eci,quick,5shot,mini'):
    c = config.build('ss', arg)
    start = eci.start_iteration(c.eci.start, c.train.iterations)
    assert 0 < start < c.train.iterations and (c.eci.adv_scale, c.eci.ema) == (1.4, 0.9), arg
