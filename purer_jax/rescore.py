"""Adds the pool read-out, and every method's meta-test cost, to a finished run's results.json
whose checkpoints are gone: the pool needs only the teachers, and a run keeps its methods'
scores per task, so `purer-pool` pairs on the same tasks without retraining.

  python -m purer_jax.rescore --config=configs/ss.py:quick --workdir=W \
      --results=docs/results/<run>/results.json

W's teachers must be the run's (the same held-out accuracy, teacher by teacher: teachers
retrained with the same seed on the same kind of machine come out identical), and the config
must give the run's tasks. The pool's variant is chosen on meta-val, as in `meta_test`. An MH
run's second meta-test set is re-scored too: its record is <dir of R>/<dataset>/results.json.
"""
import json
import os
import time

import ml_collections
from absl import flags

from purer_jax import cli, evaluate, utils, zoo
from purer_jax import data as data_lib


def define_flags():
  flags.DEFINE_string('results', None, 'The results.json of the run to re-score (updated in '
                      'place).')


def check_same_run(record: dict, config, teachers, path: str):
  """Refuses a record whose teachers or tasks are not those of `config` and `teachers`."""
  ours = [t.heldout_acc for t in teachers]
  theirs = record.get('teachers_heldout')
  if theirs is None or len(theirs) != len(ours) or any(
      a is None or abs(a - b) > 1e-9 for a, b in zip(ours, theirs)):
    raise utils.UserError(
        f'{path} was run on other teachers (held-out {theirs}) than the workdir\'s ({ours}): '
        'the pool must read the run\'s own teachers; retrain them with the run\'s config and '
        'seed, or re-run the whole run')
  run = record.get('config', {})
  for field, mine in (('eval.seed', config.eval.seed), ('meta.ways', config.meta.ways),
                      ('meta.shots', config.meta.shots), ('meta.queries', config.meta.queries)):
    group, key = field.split('.')
    if run.get(group, {}).get(key) != mine:
      raise utils.UserError(f'{path} has {field}={run.get(group, {}).get(key)}, this config '
                            f'{mine}: pass the run\'s config (--config.{field}=...)')
  if record.get('tasks') != config.eval.tasks:
    raise utils.UserError(f'{path} has {record.get("tasks")} tasks per meta-test set, this '
                          f'config {config.eval.tasks}: pass --config.eval.tasks='
                          f'{record.get("tasks")}')
  names = [n for n, _, _ in data_lib.run_datasets(config)]
  theirs = list(record['by_dataset']) if 'by_dataset' in record else [record.get('dataset')]
  if sorted(theirs) != sorted(names) or record.get('dataset') != names[0]:
    raise utils.UserError(f'{path} scored {theirs}, this config runs {names}: pass the run\'s '
                          'config (MH: the same data.dataset and data.extra_dataset)')


def run_configs(record: dict) -> dict:
  """{method: the config it was scored with}: the run's, at its tuned test-time adaptation
  where it tuned one."""
  base = ml_collections.ConfigDict(record['config'])
  tuned = record.get('adaptation') or {}
  return {m: evaluate.with_adaptation(base, tuned[m]['steps'], tuned[m]['lr']) if m in tuned
          else base for m in record['methods'] if m not in ('pool', 'purer+icfil')}


def with_pool(record: dict, accs, *, choice: dict, costs: dict, seconds: float) -> dict:
  """One meta-test set's record with the pool's per-task accuracies `accs` added (methods,
  per_task, paired `purer-pool`, pool_variant) and `costs` as its cost_gflop."""
  out = dict(record)
  out['methods'] = dict(record['methods'], pool=dict(zip(('acc', 'ci95'),
                                                          evaluate.summarize(accs))))
  out['per_task'] = dict(record['per_task'], pool=[round(float(x), 4) for x in accs])
  if 'purer' in record['per_task']:
    out['paired'] = dict(record.get('paired') or {}, **{'purer-pool': dict(zip(
        ('mean_diff', 'ci95'), evaluate.paired(record['per_task']['purer'], accs)))})
  out['pool_variant'] = choice
  out['cost_gflop'] = costs
  out['rescored'] = dict(record.get('rescored') or {}, pool=dict(
      utils.provenance(), eval_s=round(seconds, 1)))
  return out


def rescore(records: dict, config, teachers, *, val_splits: list, test_splits: dict) -> dict:
  """{dataset: its record with the pool added (`with_pool`)} for `records` ({dataset: record},
  the run's dataset first): the pool's variant chosen once on every meta-val split, as
  `meta_test` chooses it, then scored on each dataset's meta-test tasks. An MH run's first
  record keeps the table of every set (`by_dataset`)."""
  t0 = time.time()
  choice = evaluate.pool_choice(teachers, config, val_splits)
  accs = {name: evaluate.pool_accuracies(teachers, choice, config, test_splits[name],
                                         desc=f'pool {name}') for name in records}
  first = next(iter(records.values()))
  costs = evaluate.method_costs(ml_collections.ConfigDict(first['config']), run_configs(first),
                                teachers, choice)
  out = {name: with_pool(rec, accs[name], choice=choice, costs=costs,
                         seconds=time.time() - t0) for name, rec in records.items()}
  if 'by_dataset' in first:
    name = next(iter(out))
    out[name]['by_dataset'] = {k: v['methods'] for k, v in out.items()}
  return out


def record_paths(path: str, config) -> dict:
  """{dataset: results.json} of a run whose main record is `path`: an MH run keeps its second
  set's beside it, in <dataset>/results.json, as `meta_test` writes them."""
  names = [n for n, _, _ in data_lib.run_datasets(config)]
  return {n: path if i == 0 else os.path.join(os.path.dirname(path), n, 'results.json')
          for i, n in enumerate(names)}


def main(argv):
  del argv
  config, workdir = cli.config_and_workdir(splits=('meta_val', 'meta_test'))
  path = flags.FLAGS.results
  if not path:
    raise utils.UserError('--results is required: the results.json of the run to re-score')
  paths = record_paths(path, config)
  records = {}
  for name, p in paths.items():
    if not os.path.isfile(p):
      raise utils.UserError(f'{p} not found: an MH run keeps its {name} record there')
    with open(p) as f:
      records[name] = json.load(f)
  teachers = zoo.pool(config, workdir)
  check_same_run(records[config.data.dataset], config, teachers, path)
  sets = data_lib.run_datasets(config)
  out = rescore(records, config, teachers,
                val_splits=[data_lib.load(n, 'meta_val', d, s) for n, d, s in sets],
                test_splits={n: data_lib.load(n, 'meta_test', d, s) for n, d, s in sets})
  for name, res in out.items():
    utils.write_json(paths[name], res)
    pool, v = res['methods']['pool'], res['pool_variant']
    print(f"{name}: pool ({v['layer']}/{v['norm']}/{v['metric']}): {100 * pool['acc']:.2f} ± "
          f"{100 * pool['ci95']:.2f}; GFLOP per task {res['cost_gflop']}")
    if 'purer-pool' in res['paired']:
      d = res['paired']['purer-pool']
      print(f"{name}: purer - pool: {100 * d['mean_diff']:+.2f} ± {100 * d['ci95']:.2f}")


if __name__ == '__main__':
  cli.run(main, define_flags)
