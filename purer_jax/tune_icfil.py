"""Tunes ICFIL (docs/DESIGN.md §7) on meta-val tasks only (config.eval.val_seed), never meta-test.

  python -m purer_jax.tune_icfil --config=configs/ss.py --workdir=W [--params=PATH|best]
      [--tasks=100] [--test] [--dataset=mini_imagenet]

Coordinate search from config.icfil: each field of GRID in turn takes its best value on the
same meta-val tasks (mean accuracy), the others held at their current best. Pseudo supports
depend only on the inversion settings, so they are computed once per `inv_steps` and reused
by every calibration trial. ICFIL follows config.meta's test-time adaptation (MAML or ANIL;
see purer_jax/icfil.py). Writes W/icfil_search.json (all trials, each with its paired
difference to the learner's plain evaluation on the same tasks) and prints the best settings.

--test then scores the best settings once on config.eval.tasks meta-test tasks (config.eval.seed,
the tasks of the main results): W/icfil_<K>shot/results.json and results.md with `purer`
(plain test-time adaptation), `purer+icfil` and their paired difference, and icfil_task0.png
(task 0's real support beside its pseudo support, similarities before and after calibration).

--dataset: which meta-val / meta-test set (default: the pool's, config.data.dataset); MH's second
one (config.data.extra_dataset) writes under W/<dataset>/, beside that dataset's results.json.

--params: an .npz file ('/'-joined parameter paths, an optional 'params/' prefix: every run
writes its best meta-val learner as W/learner.npz, `meta_test.LEARNER_FILE`), an orbax
checkpoint folder (its 'params' entry if it has one), 'best' (the training loop's best
meta-val checkpoint in W/checkpoints), or empty for the `average` baseline of the config's
teacher pool (`zoo.pool`).
"""
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import flags
from flax import traverse_util

from purer_jax import data as data_lib
from purer_jax import cli, evaluate, icfil, models, train, utils, zoo

GRID = {
    'inv_steps': (25, 50, 100),
    'tau': (0.05, 0.1, 0.2, 0.5),
    'lr': (0.001, 0.003, 0.01, 0.03),
    'cal_steps': (1, 3, 5, 10),
}
SEARCH_FILE = 'icfil_search.json'


def load_params(spec: str, config, workdir: str):
  """Meta-learner params for `evaluate.meta_model(config)` (see the module doc for `spec`)."""
  model = evaluate.meta_model(config)
  key = jax.random.key(config.seed)
  if not spec:
    return evaluate.baseline_params('average', zoo.pool(config, workdir), model, key)
  if spec == 'best':
    params = train.load_best(workdir)
  elif spec.endswith('.npz') and os.path.isfile(spec):
    params = utils.load_params(spec)
  elif os.path.isdir(spec):
    with ocp.StandardCheckpointer() as ckptr:
      params = ckptr.restore(os.path.abspath(spec))
  else:
    raise FileNotFoundError(f'--params={spec!r} is neither an .npz file nor an orbax checkpoint '
                            "folder (nor 'best', nor empty for the zoo average)")
  params = params.get('params', params)
  want = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(
      jax.eval_shape(lambda: models.init(model, key)['params'])).items()}
  got = {k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(params).items()}
  if got != want:
    wrong = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
    raise ValueError(f'params from {spec!r} do not fit the meta-learner '
                     f'({config.meta.arch}, {config.meta.ways}-way, {model.image_size}px): '
                     + ', '.join(f"{'/'.join(k)} expected {want.get(k)} got {got.get(k)}"
                                 for k in wrong[:4]))
  return jax.tree.map(np.asarray, params)


def _record(settings, rows):
  m = {k: np.asarray([r[k] for r in rows]) for k in rows[0]}
  acc, ci = evaluate.summarize(m['acc'])
  diff, diff_ci = evaluate.paired(m['acc'], m['acc_adapted'])
  return {'settings': {k: getattr(settings, k) for k in icfil.FIELDS},
          'acc': acc, 'ci95': ci, 'plain_acc': float(m['acc_adapted'].mean()),
          'mean_diff': diff, 'diff_ci95': diff_ci,
          **{k: float(m[k].mean()) for k in ('margin_before', 'margin_after', 'loss_before',
                                             'loss_after', 'inv_acc')}}


def search(params, config, split, *, num_tasks: int, grid=None, log=print) -> dict:
  """Coordinate search of `grid` (default GRID) on `num_tasks` tasks of `split` drawn from
  config.eval.val_seed. Returns {'trials': [...], 'best': trial, 'tasks', 'seed'}."""
  grid = GRID if grid is None else grid
  unknown = set(grid) - set(icfil.Settings._fields)
  if unknown:
    raise ValueError(f'unknown ICFIL settings {sorted(unknown)} in the grid: choose from '
                     f'{icfil.Settings._fields}')
  learner = icfil.learner_from_config(config)
  model = learner.model
  seed = config.eval.val_seed
  tasks = list(data_lib.episodes(split, config.meta.ways, config.meta.shots,
                                 config.meta.queries, seed, num=num_tasks,
                                 image_size=model.image_size))
  for t in tasks:
    t.pop('classes')
  best = icfil.Settings.from_config(config.icfil, config.inversion)
  icfil.check_inputs(params, learner, config.meta.ways, best)
  pseudo, trials = {}, {}

  def trial(settings):
    settings.check()
    if settings in trials:
      return trials[settings]
    inv = settings._replace(tau=1.0, cal_steps=0, lr=0.0)  # what the pseudo support depends on
    if inv not in pseudo:
      pseudo[inv] = [icfil.invert_task(params, t, icfil.task_key(seed, i), learner=learner,
                                       settings=settings)
                     for i, t in enumerate(tasks)]
    rows = jax.device_get([icfil.scalars(icfil.calibrate_task(a, t, x, model=model,
                                                              settings=settings))
                           for (a, x), t in zip(pseudo[inv], tasks)])
    trials[settings] = _record(settings, rows)
    r = trials[settings]
    log(f"{r['settings']}: acc {r['acc']:.4f} ± {r['ci95']:.4f}, vs plain "
        f"{r['mean_diff']:+.4f} ± {r['diff_ci95']:.4f}, margin {r['margin_before']:+.3f} -> "
        f"{r['margin_after']:+.3f}")
    return r

  trial(best)
  for field, values in grid.items():
    for v in values:
      trial(best._replace(**{field: type(getattr(best, field))(v)}))
    best = max(trials, key=lambda s: (trials[s]['acc'], -s.inv_steps, -s.cal_steps))
    pseudo = {k: v for k, v in pseudo.items() if k.inv_steps == best.inv_steps}  # memory
  return {'split': 'meta_val', 'seed': seed, 'tasks': num_tasks,
          'trials': list(trials.values()), 'best': trials[best]}


def dataset_dir(config, workdir: str, dataset: str = ''):
  """(name, data_dir, source, folder for its outputs) of `dataset` among the config's meta-test
  sets (empty: the pool's); MH's second set keeps its outputs in W/<dataset>/, as
  `meta_test.final_evaluation` does."""
  sets = data_lib.run_datasets(config)
  for i, (name, data_dir, source) in enumerate(sets):
    if name == (dataset or sets[0][0]):
      return name, data_dir, source, workdir if i == 0 else os.path.join(workdir, name)
  raise utils.UserError(f'--dataset={dataset!r}: this config meta-tests on '
                        f"{', '.join(n for n, _, _ in sets)} only")


def run(config, workdir: str, params_spec: str = '', *, num_tasks=None, grid=None, log=print,
        test_best: bool = False, dataset: str = '') -> dict:
  """`search` on `dataset`'s meta-val (see `dataset_dir`) with params from `load_params`;
  writes icfil_search.json. With `test_best`, then `test` of the best settings (its results
  under res['test'])."""
  name, data_dir, source, out = dataset_dir(config, workdir, dataset)
  params = load_params(params_spec, config, workdir)
  split = data_lib.load(name, 'meta_val', data_dir, source)
  res = search(params, config, split, num_tasks=num_tasks or config.train.val_tasks, grid=grid,
               log=log)
  res['params'], res['dataset'] = params_spec or 'average', name
  os.makedirs(out, exist_ok=True)
  utils.write_json(os.path.join(out, SEARCH_FILE), res)
  if test_best:
    res['test'] = test(params, config, workdir, res['best']['settings'], dataset=name)
  return res


def test(params, config, workdir: str, settings: dict, dataset: str = '') -> dict:
  """`settings` (config.icfil fields) scored once on `dataset`'s meta-test tasks of the main
  results; writes icfil_<K>shot/ (see the module doc) and returns its results."""
  name, data_dir, source, out = dataset_dir(config, workdir, dataset)
  config = config.copy_and_resolve_references()
  config.icfil.update(settings)
  split = data_lib.load(name, 'meta_test', data_dir, source)
  m = icfil.config_metrics(params, config, split, desc=f'purer+icfil {name} meta-test')
  out = utils.icfil_dir(out, config.meta.shots)
  os.makedirs(out, exist_ok=True)
  accs = {'purer': m['acc_adapted'], 'purer+icfil': m['acc']}
  diff = dict(zip(('mean_diff', 'ci95'), evaluate.paired(m['acc'], m['acc_adapted'])))
  learner = icfil.learner_from_config(config)
  task = next(data_lib.episodes(split, config.meta.ways, config.meta.shots, config.meta.queries,
                                config.eval.seed, num=1, image_size=learner.model.image_size))
  task.pop('classes')
  result = icfil.run_task(
      params, task, icfil.task_key(config.eval.seed, 0), learner=learner,
      settings=icfil.Settings.from_config(config.icfil, config.inversion))
  icfil.save_figure(os.path.join(out, 'icfil_task0.png'), task, result, name)
  extra = {'paired': {'purer+icfil': diff},
           'icfil': {'settings': {k: config.icfil[k] for k in icfil.FIELDS},
                     'tuned_on': 'meta_val'},
           **{k: float(m[k].mean()) for k in ('margin_before', 'margin_after')}}
  return evaluate.write_results(out, config, accs, dataset=name, extra=extra)

def define_flags():
  """This command's flags (defined by `cli.run`, never on import)."""
  flags.DEFINE_string('params', '', 'Meta-learner parameters: .npz file, orbax checkpoint '
                      'folder, "best", or empty for the zoo average.')
  flags.DEFINE_integer('tasks', 0, 'Meta-val tasks per trial (0: config.train.val_tasks).')
  flags.DEFINE_bool('test', False, 'Then score the best settings on the meta-test tasks.')
  flags.DEFINE_string('dataset', '', "Meta-val / meta-test set (empty: the pool's; MH: "
                      'data.extra_dataset for its second one).')


def main(argv):
  del argv
  f = flags.FLAGS
  config, workdir = cli.config_and_workdir(
      splits=('meta_val', 'meta_test') if f.test else ('meta_val',))
  out = dataset_dir(config, workdir, f.dataset)[3]
  res = run(config, workdir, f.params, num_tasks=f.tasks or None, test_best=f.test,
            dataset=f.dataset)
  b = res['best']
  print(f"best on {res['tasks']} {res['dataset']} meta-val tasks: {b['settings']} acc "
        f"{b['acc']:.4f} ± {b['ci95']:.4f} (plain {b['plain_acc']:.4f}, paired "
        f"{b['mean_diff']:+.4f} ± {b['diff_ci95']:.4f}) -> {os.path.join(out, SEARCH_FILE)}")
  if f.test:
    print(open(os.path.join(utils.icfil_dir(out, config.meta.shots), 'results.md')).read())


if __name__ == '__main__':
  cli.run(main, define_flags)
