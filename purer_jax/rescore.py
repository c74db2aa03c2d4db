"""Adds the methods that need only the teachers (the pool read-out, Random, Average, OTA), and
every method's meta-test cost, to a finished run's results.json whose checkpoints are gone: a run
keeps its methods' scores per task, so `purer-<method>` pairs on the same tasks without
retraining. With --tuned, adds the record's `tuned` column from its learner file instead of
its workdir, so that a run may leave that column (and its cost) to a later session.

  python -m purer_jax.rescore --config=configs/ss.py:quick --workdir=W \
      --results=docs/results/<run>/results.json [--methods=pool,random] [--tuned]

W's teachers must be the run's (the same held-out accuracy, teacher by teacher: teachers
retrained with the same seed on the same kind of machine come out identical), and the config
must give the run's tasks; Random alone reads no teacher, so W may be empty. The pool's variant
is chosen on meta-val, as in `meta_test`; a baseline is scored at the run's own config (seed, one
test-time step), so it is the figure the run would have scored. A method the record already has
is refused, not replaced. An MH run's second meta-test set is re-scored too: its record is
<dir of R>/<dataset>/results.json.

--tuned scores every method of config.eval.tune_methods that the record has at its test-time
adaptation chosen on meta-val, as `meta_test.final_evaluation` does in a run: PURER from
--learner (default: the `learner.npz` that the run wrote, kept beside R), first checked
against the record's own PURER on its first tasks; Average and OTA need the run's teachers in W.
"""
import json
import os
import time

import ml_collections
import numpy as np
from absl import flags

from purer_jax import cli, evaluate, meta_test, tune_icfil, utils, zoo
from purer_jax import data as data_lib


def define_flags():
  flags.DEFINE_string('results', None, 'The results.json of the run to re-score (updated in '
                      'place).')
  flags.DEFINE_list('methods', None, f'What to add: any of {ADDABLE}, none the record has '
                    '(default: pool, or none with --tuned).')
  flags.DEFINE_bool('tuned', False, 'Add the tuned column (test-time adaptation chosen on '
                    'meta-val) from the run\'s learner file.')
  flags.DEFINE_string('learner', '', f'The run\'s learner file for --tuned (default: '
                      f'{meta_test.LEARNER_FILE} beside --results).')


ADDABLE = ('pool',) + evaluate.BASELINES  # the methods that need only the teachers
NO_TEACHERS = ('random',)  # an init from the run's seed: the teachers play no part


def check_same_run(record: dict, config, teachers, path: str):
  """Refuses a record whose teachers or tasks are not those of `config` and `teachers` (None:
  a re-score that reads no teacher)."""
  ours = None if teachers is None else [t.heldout_acc for t in teachers]
  theirs = record.get('teachers_heldout')
  if ours is not None and (theirs is None or len(theirs) != len(ours) or any(
      a is None or abs(a - b) > 1e-9 for a, b in zip(ours, theirs))):
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
  def one(m):
    if m in tuned:
      return evaluate.with_adaptation(base, tuned[m]['steps'], tuned[m]['lr'])
    return evaluate.with_algo(base, 'protonet') if m == 'purer_proto' else base
  return {m: one(m) for m in record['methods'] if m not in ('pool', 'purer+icfil')}


def with_methods(record: dict, accs: dict, *, choice, costs: dict, seconds: float) -> dict:
  """One meta-test set's record with the per-task accuracies `accs` ({method: [...]}) added
  (methods, per_task, paired `purer-<method>`, pool_variant where the pool is among them) and
  `costs` as its cost_gflop."""
  out = dict(record)
  out['methods'] = dict(record['methods'], **{
      m: dict(zip(('acc', 'ci95'), evaluate.summarize(a))) for m, a in accs.items()})
  out['per_task'] = dict(record['per_task'], **{
      m: [round(float(x), 4) for x in a] for m, a in accs.items()})
  if 'purer' in record['per_task']:
    out['paired'] = dict(record.get('paired') or {}, **{f'purer-{m}': dict(zip(
        ('mean_diff', 'ci95'), evaluate.paired(record['per_task']['purer'], a)))
        for m, a in accs.items()})
  if choice is not None:
    out['pool_variant'] = choice
  out['cost_gflop'] = costs
  out['rescored'] = dict(record.get('rescored') or {}, **{
      m: dict(utils.provenance(), eval_s=round(seconds, 1)) for m in accs})
  return out


def check_methods(methods, record: dict, teachers, path: str):
  """Refuses a method that needs more than the teachers, does not apply to this pool, or that
  the record already has (its own figure is never replaced)."""
  if not methods:
    raise utils.UserError(f'--methods is empty: name what to add, any of {ADDABLE}')
  base = ml_collections.ConfigDict(record['config'])
  for m in methods:
    if m not in ADDABLE:
      raise utils.UserError(f'--methods: {m!r} cannot be re-scored without the run\'s '
                            f'checkpoint; only {ADDABLE} need nothing but the teachers')
    if m in record['methods']:
      raise utils.UserError(f'{path} already scores {m!r}: drop it from --methods (a re-score '
                            'never replaces the run\'s own figure)')
    if not evaluate.applies(m, teachers, evaluate.meta_model(base)):
      raise utils.UserError(f'--methods: {m!r} needs every teacher to be the meta-learner\'s '
                            'arch and size, and this run\'s pool is not')


def rescore(records: dict, config, teachers, *, val_splits: list, test_splits: dict,
            methods=('pool',)) -> dict:
  """{dataset: its record with `methods` added (`with_methods`)} for `records` ({dataset:
  record}, the run's dataset first). The pool's variant is chosen once on every meta-val split,
  as `meta_test` chooses it; a baseline is built and scored at the record's own config, as the
  run's meta-test scored it. An MH run's first record keeps the table of every set
  (`by_dataset`)."""
  t0 = time.time()
  first = next(iter(records.values()))
  base = ml_collections.ConfigDict(first['config'])
  choice = evaluate.pool_choice(teachers, config, val_splits) if 'pool' in methods else None
  params = {m: evaluate.run_baseline(m, teachers, base) for m in methods if m != 'pool'}
  configs = dict(run_configs(first), **{m: base for m in params})
  accs = {name: {m: evaluate.evaluate_params(p, base, test_splits[name], desc=f'{m} {name}')
                 for m, p in params.items()} for name in records}
  if choice is not None:
    for name in records:
      accs[name]['pool'] = evaluate.pool_accuracies(teachers, choice, config, test_splits[name],
                                                    desc=f'pool {name}')
  # A pool scored earlier keeps its cost: re-counting it would need the teachers.
  costs = dict(first.get('cost_gflop') or {}, **evaluate.method_costs(base, configs, teachers,
                                                                      choice))
  out = {name: with_methods(rec, accs[name], choice=choice, costs=costs,
                            seconds=time.time() - t0) for name, rec in records.items()}
  if 'by_dataset' in first:
    name = next(iter(out))
    out[name]['by_dataset'] = {k: v['methods'] for k, v in out.items()}
  return out


def check_learner(learner, record: dict, split, path: str):
  """Refuses a learner whose one-step PURER is not the record's, task by task, on the record's
  first tasks (one batch, config.eval.batch): it would pair a tuned column with another run's
  learner. Another CPU may flip a query here and there, so up to one query per task on average
  is let through; another learner differs by several."""
  if 'purer' not in record.get('per_task', {}):
    raise utils.UserError(f'{path} has no per-task PURER to tune: --tuned needs a run of PURER')
  base = ml_collections.ConfigDict(record['config'])
  n = min(base.eval.batch, record['tasks'])
  ours = evaluate.evaluate_params(learner, base, split, num_tasks=n)
  theirs = np.asarray(record['per_task']['purer'][:n])
  gap, query = float(np.mean(np.abs(ours - theirs))), 1.0 / (base.meta.ways * base.meta.queries)
  if gap > query:
    raise utils.UserError(
        f'the learner differs from the PURER of {path} by {100 * gap:.2f} points per task on its '
        f'first {n} tasks (one query: {100 * query:.2f}): pass the learner.npz that this run '
        'wrote (--learner)')


def tuned_baselines(record: dict) -> list:
  """The baselines of `record` that its tuned column tunes (its config.eval.tune_methods)."""
  tune = ml_collections.ConfigDict(record['config']).eval.tune_methods
  return [m for m in record['methods'] if m in evaluate.BASELINES and m in tune]


def add_tuned(records: dict, learner, teachers, *, val_splits: list, test_splits: dict,
              path: str = 'R') -> dict:
  """{dataset: its record with the `tuned` column and the `adaptation` chosen on meta-val}, as
  a run with config.eval.tune_adapt writes them (`meta_test.tune_methods`, `tuned_column`), for
  `records` ({dataset: record}, the run's dataset first) and the run's `learner`."""
  t0 = time.time()
  first = next(iter(records.values()))
  if 'tuned' in first:
    raise utils.UserError(f'{path} has its tuned column already (a re-score never replaces '
                          'the run\'s own figures): drop --tuned')
  base = ml_collections.ConfigDict(first['config'])
  params = {m: evaluate.run_baseline(m, teachers, base) for m in tuned_baselines(first)}
  params['purer'] = learner
  tuned, configs = meta_test.tune_methods(params, base, val_splits)
  out = {}
  for name, rec in records.items():
    accs = {m: np.asarray(a) for m, a in rec['per_task'].items()}
    column = meta_test.tuned_column(params, configs, base, test_splits[name], accs, name=name)
    out[name] = dict(rec, tuned=column, adaptation=tuned, rescored=dict(
        rec.get('rescored') or {}, tuned=dict(utils.provenance(),
                                              eval_s=round(time.time() - t0, 1))))
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
  f = flags.FLAGS
  methods = f.methods if f.methods is not None else ([] if f.tuned else ['pool'])
  record = records[config.data.dataset]
  need = set(methods) - set(NO_TEACHERS)
  if f.tuned:
    need |= set(tuned_baselines(record)) - set(NO_TEACHERS)
  teachers = zoo.pool(config, workdir) if need else None
  check_same_run(record, config, teachers, path)
  if methods or not f.tuned:
    check_methods(methods, record, teachers, path)
  sets = data_lib.run_datasets(config)
  val_splits = [data_lib.load(n, 'meta_val', d, s) for n, d, s in sets]
  test_splits = {n: data_lib.load(n, 'meta_test', d, s) for n, d, s in sets}
  out = records
  if methods:
    out = rescore(records, config, teachers, methods=methods, val_splits=val_splits,
                  test_splits=test_splits)
  if f.tuned:
    spec = f.learner or os.path.join(os.path.dirname(path), meta_test.LEARNER_FILE)
    if not os.path.exists(spec):
      raise utils.UserError(f'{spec} not found: --tuned needs the learner the run scored (its '
                            f'workdir\'s {meta_test.LEARNER_FILE}, kept beside R or passed '
                            'as --learner)')
    learner = tune_icfil.load_params(spec, ml_collections.ConfigDict(record['config']), workdir)
    check_learner(learner, record, test_splits[config.data.dataset], path)
    out = add_tuned(out, learner, teachers, val_splits=val_splits, test_splits=test_splits,
                    path=path)
  for name, res in out.items():
    utils.write_json(paths[name], res)
    if f.tuned:
      print(f"{name}: tuned " + ', '.join(f"{m} {100 * v['acc']:.2f} ± {100 * v['ci95']:.2f}"
                                          for m, v in res['tuned']['methods'].items()))
    for m in methods:
      got, d = res['methods'][m], res['paired'].get(f'purer-{m}')
      print(f"{name}: {m}: {100 * got['acc']:.2f} ± {100 * got['ci95']:.2f}" + (
          f"; purer - {m}: {100 * d['mean_diff']:+.2f} ± {100 * d['ci95']:.2f}" if d else ''))
    if 'pool' in methods:
      print(f"{name}: the pool's variant, chosen on meta-val: {res['pool_variant']['layer']}/"
            f"{res['pool_variant']['norm']}/{res['pool_variant']['metric']}")
    print(f"{name}: GFLOP per task {res['cost_gflop']}")


if __name__ == '__main__':
  cli.run(main, define_flags)
