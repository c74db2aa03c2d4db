"""The declared config (purer_jax.schema): every field of every shipped config is declared and
passes; a bad value, or fields that contradict each other, is refused before any work with one
message naming the field, what it allows and a good flag (exit status 2); docs/CONFIG.md is
the declarations' page."""
import itertools
import os
import runpy
import subprocess
import sys

import ml_collections
import pytest

from purer_jax import config, evaluate, inversion, meta, models, pool, pretrain, schema
from tests.conftest import command_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _configs():
  """(scenario, variants, config) of each scenario with up to three variants."""
  for scenario in ('ss', 'sh', 'mh'):
    for chosen in itertools.combinations_with_replacement(('',) + config.VARIANTS, 3):
      arg = ','.join(v for v in chosen if v)
      try:
        yield scenario, arg, config.build(scenario, arg)
      except ValueError:  # a combination apply_variants refuses
        pass


def _with(values: dict, type_safe: bool = True) -> ml_collections.ConfigDict:
  """configs/ss.py:smoke with `values` ({'group.field': value}) set."""
  c = config.build('ss', 'smoke')
  if not type_safe:  # as a config file may build it; the flags refuse such a value earlier
    c = ml_collections.ConfigDict(c.to_dict(), type_safe=False)
  for name, value in values.items():
    group, field = name.split('.')
    c[group][field] = value
  return c


def test_every_config_field_is_declared_and_every_shipped_config_passes():
  built = list(_configs())
  assert len(built) > 100
  for scenario, arg, c in built:
    assert set(schema.leaves(c)) == set(schema.FIELDS), (scenario, arg)
    assert schema.problems(c) == [], (scenario, arg)


def test_choices_match_the_code():
  choices = lambda name: set(schema.FIELDS[name].choices)
  assert choices('meta.arch') == choices('teachers.archs') == set(models.ARCHS)
  assert choices('meta.algo') == set(meta.ALGOS)
  assert choices('teachers.keep') == set(pretrain.KEEP)
  assert choices('teachers.schedule') == set(pretrain.SCHEDULES)
  assert choices('inversion.strategy') == set(inversion.STRATEGIES) | {'auto', 'chunks'}
  assert choices('eval.methods') == set(evaluate.BASELINES) | {'pool', 'purer', 'purer_proto'}
  assert choices('eval.tune_methods') == set(evaluate.BASELINES) | {'purer'}
  assert choices('eval.pool_layers') == set(pool.LAYERS)
  assert choices('eval.pool_norms') == set(pool.NORMS)
  assert set(schema.SPLIT_CLASSES) == set(schema.IMAGES_PER_CLASS) == choices('data.dataset')


@pytest.mark.parametrize('name,value', [
    ('meta.shots', 0), ('meta.ways', 30), ('train.iterations', -5), ('inversion.spc', -1),
    ('teachers.num', 0), ('meta.inner_lr', float('nan')), ('meta.outer_lr', float('inf')),
    ('eci.ema', 1.0), ('eci.start', 1.5), ('teachers.heldout_frac', -0.1), ('data.source', 'ftp'),
    ('teachers.milestones', (10, 'a')), ('teachers.archs', ()), ('eval.adapt_lrs', (0.1, -1.0)),
    ('eval.methods', ('random', 'maml')), ('eval.pool_layers', ()),
    ('eval.pool_norms', ('l2', 'l1')), ('teachers.ways', 65)])
def test_bad_value_is_refused_naming_the_field(name, value):
  with pytest.raises(schema.ConfigError) as e:
    schema.check(_with({name: value}))
  msg = str(e.value)
  assert msg.startswith(f'{name}=') and '\n' not in msg, msg
  assert f'; e.g. --config.{name}=' in msg or f'; e.g. "--config.{name}=' in msg, msg


@pytest.mark.parametrize('name,value', [('meta.shots', '1'), ('meta.inner_lr', 'a'),
                                        ('meta.second_order', 1), ('train.iterations', 1.0),
                                        ('eval.adapt_steps', (1, 2.5))])
def test_wrong_type_is_refused(name, value):
  found = schema.problems(_with({name: value}, type_safe=False))
  assert len(found) == 1 and found[0].startswith(f'{name}={value!r}: must be '), found


@pytest.mark.parametrize('values,name,words', [
    ({'inversion.shard': True, 'teachers.per_iter': 4}, 'teachers.per_iter', 'inversion.shard'),
    ({'meta.queries': 15, 'inversion.spc': 10}, 'inversion.spc', '= 16'),
    ({'meta.train_queries': 3, 'inversion.spc': 3}, 'inversion.spc', 'meta.train_queries = 4'),
    ({'teachers.num': 1, 'meta.ways': 6}, 'meta.ways', 'the pool can supply'),
    ({'teachers.heldout_frac': 0.0}, 'teachers.keep', 'heldout_frac=0'),
    ({'data.extra_dataset': 'cifar_fs'}, 'data.extra_dataset', 'other than'),
    ({'icfil.enabled': True, 'meta.algo': 'protonet'}, 'icfil.enabled', 'protonet'),
    ({'data.dataset': 'mini_imagenet', 'meta.queries': 100}, 'meta.queries', '<= 99'),
    ({'meta.queries': 600}, 'meta.queries', '<= 599'),
    ({'meta.shots': 600}, 'meta.shots', '< 600')])
def test_contradicting_fields_are_refused(values, name, words):
  found = schema.problems(_with(values))
  assert found and found[0].startswith(f'{name}=') and words in found[0], found


def test_legal_corner_values_pass():
  # ECI that never switches on, no meta-training, all images per teacher, no augmentation.
  assert not schema.problems(_with({'eci.start': 1.0, 'train.iterations': 0,
                                    'teachers.max_per_class': 0, 'train.augment': ''}))
  assert not schema.problems(_with({'teachers.heldout_frac': 0.0, 'teachers.keep': 'last',
                                    'inversion.shard': True, 'teachers.per_iter': 0}))


def test_every_problem_is_listed_and_undeclared_fields_are_named():
  with pytest.raises(schema.ConfigError) as e:
    schema.check(_with({'meta.shots': 0, 'teachers.num': -1}))
  assert str(e.value).startswith('2 problems:\n  ')
  assert '\n  meta.shots=0: ' in str(e.value) and '\n  teachers.num=-1: ' in str(e.value)
  c = config.build('ss')
  c.meta.shotz = 1
  assert schema.problems(c) == ['meta.shotz: not a declared field (purer_jax/schema.py, '
                                'docs/CONFIG.md)']


def test_config_md_is_generated_from_the_schema(tmp_path, monkeypatch):
  out = tmp_path / 'CONFIG.md'
  monkeypatch.setattr(sys, 'argv', ['schema', str(out)])
  runpy.run_path(schema.__file__, run_name='__main__')  # python -m purer_jax.schema <out>
  with open(os.path.join(ROOT, 'docs', 'CONFIG.md'), 'rb') as f:
    assert f.read() == out.read_bytes() == schema.markdown().encode()
  assert all(f'| `{name}` |' in schema.markdown() for name in schema.FIELDS)


def _main(workdir, *flags):
  return subprocess.run([sys.executable, '-m', 'purer_jax.main', '--config=configs/ss.py:smoke',
                         f'--workdir={workdir}', *flags], cwd=ROOT, env=command_env(),
                        capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize('flag,name', [('--config.meta.shots=0', 'meta.shots'),
                                       ('--config.meta.inner_lr=nan', 'meta.inner_lr'),
                                       ('--config.teachers.num=abc', 'teachers.num'),
                                       ('--config.meta.shotz=1', 'meta.shotz')])
def test_main_refuses_a_bad_value_before_any_work(tmp_path, flag, name):
  w = tmp_path / 'w'
  out = _main(w, flag)
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.startswith('ConfigError: ') and name in out.stderr, out.stderr[-2000:]
  assert len(out.stderr.strip().splitlines()) == 1 and 'Traceback' not in out.stderr
  assert not os.path.exists(w)  # nothing written: no teachers/, no lock, no config.json
