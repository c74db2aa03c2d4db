"""Adds the pool read-out, and every method's meta-test cost, to a finished run's results.json
whose checkpoints are gone: the pool needs only the teachers, and a run keeps its methods'
scores per task, so `purer-pool` pairs on the same tasks without retraining.

  python -m purer_jax.rescore --config=configs/ss.py:quick --workdir=W \
      --results=docs/results/<run>/results.json

W's teachers must be the run's (the same held-out accuracy, teacher by teacher: teachers
retrained with the same seed on the same kind of machine come out identical), and the config
must give the run's tasks. The pool's variant is chosen on meta-val, as in `meta_test`.
"""
import json
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
  if record.get('tasks') != config.eval.tasks or 'by_dataset' in record:
    raise utils.UserError(f'{path}: {record.get("tasks")} tasks on one dataset expected '
                          f'({config.eval.tasks}, config.eval.tasks); MH runs are re-scored by '
                          're-running their main command')


def run_configs(record: dict) -> dict:
  """{method: the config it was scored with}: the run's, at its tuned test-time adaptation
  where it tuned one."""
  base = ml_collections.ConfigDict(record['config'])
  tuned = record.get('adaptation') or {}
  return {m: evaluate.with_adaptation(base, tuned[m]['steps'], tuned[m]['lr']) if m in tuned
          else base for m in record['methods'] if m not in ('pool', 'purer+icfil')}


def rescore(record: dict, config, teachers, *, val_split, test_split) -> dict:
  """The record with `pool` (methods, per_task, paired `purer-pool`, pool_variant) and
  `cost_gflop` for each method."""
  t0 = time.time()
  choice = evaluate.pool_choice(teachers, config, [val_split])
  accs = evaluate.pool_accuracies(teachers, choice, config, test_split, desc='pool')
  out = dict(record)
  out['methods'] = dict(record['methods'], pool=dict(zip(('acc', 'ci95'),
                                                          evaluate.summarize(accs))))
  out['per_task'] = dict(record['per_task'], pool=[round(float(x), 4) for x in accs])
  if 'purer' in record['per_task']:
    out['paired'] = dict(record.get('paired') or {}, **{'purer-pool': dict(zip(
        ('mean_diff', 'ci95'), evaluate.paired(record['per_task']['purer'], accs)))})
  out['pool_variant'] = choice
  out['cost_gflop'] = evaluate.method_costs(
      ml_collections.ConfigDict(record['config']), run_configs(record), teachers, choice)
  out['rescored'] = dict(record.get('rescored') or {}, pool=dict(
      utils.provenance(), eval_s=round(time.time() - t0, 1)))
  return out


def main(argv):
  del argv
  config, workdir = cli.config_and_workdir(splits=('meta_val', 'meta_test'))
  path = flags.FLAGS.results
  if not path:
    raise utils.UserError('--results is required: the results.json of the run to re-score')
  with open(path) as f:
    record = json.load(f)
  teachers = zoo.pool(config, workdir)
  check_same_run(record, config, teachers, path)
  d = config.data
  out = rescore(record, config, teachers,
                val_split=data_lib.load(d.dataset, 'meta_val', d.data_dir, d.source),
                test_split=data_lib.load(d.dataset, 'meta_test', d.data_dir, d.source))
  utils.write_json(path, out)
  pool = out['methods']['pool']
  print(f"pool ({out['pool_variant']['layer']}/{out['pool_variant']['norm']}/"
        f"{out['pool_variant']['metric']}): {100 * pool['acc']:.2f} ± {100 * pool['ci95']:.2f}; "
        f"GFLOP per task {out['cost_gflop']}")
  if 'purer-pool' in out['paired']:
    d = out['paired']['purer-pool']
    print(f"purer - pool: {100 * d['mean_diff']:+.2f} ± {100 * d['ci95']:.2f}")


if __name__ == '__main__':
  cli.run(main, define_flags)
