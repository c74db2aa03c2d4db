"""Meta-test evaluation on fixed, paired task seeds (docs/DESIGN.md §6).

  python -m purer_jax.evaluate --config=configs/ss.py --workdir=W

scores the `random`, `average` and `ota` baselines (the latter two of the config's teacher
pool, `zoo.pool`) and the pool's own read-out (`pool`, its variant chosen on meta-val) on
`eval.tasks` 5-way K-shot meta-test tasks with config.meta's test-time adaptation (MAML's
inner loop by default) and transductive BatchNorm, and writes W/results.json and W/results.md.
Every method sees the same tasks: task i is drawn from (eval.seed, i).
"""
import os

import jax
import numpy as np

from purer_jax import data as data_lib
from purer_jax import cli, meta, models, ota, pool, utils, zoo


def task_accuracies(params, *, learner, split, ways, shots, queries, num_tasks, seed, batch=25,
                    image_size=None, progress=None, at_steps=None) -> np.ndarray:
  """Per-task query accuracy of `learner` (a `meta.Learner`, test-time settings) after its
  adaptation to each task's support; with `at_steps` (ascending step counts), after each
  count: [tasks, len(at_steps)] (`meta.task_accuracy_at`)."""
  accs = []
  eps = data_lib.episodes(split, ways, shots, queries, seed, num=num_tasks,
                          image_size=image_size)
  for start in range(0, num_tasks, batch):
    tasks = data_lib.stack([next(eps) for _ in range(min(batch, num_tasks - start))])
    tasks.pop('classes')
    accs.append(np.asarray(meta.evaluate_tasks(params, tasks, learner=learner,
                                               at_steps=at_steps)))
    if progress:
      progress.update(start + len(accs[-1]))
  return np.concatenate(accs)


def summarize(accs) -> tuple:
  """(mean, 95% CI half-width) over tasks."""
  accs = np.asarray(accs, np.float64)
  return float(accs.mean()), float(1.96 * accs.std() / np.sqrt(len(accs)))


def paired(accs_a, accs_b) -> tuple:
  """Mean per-task difference a - b on the same tasks, and its 95% CI half-width."""
  return summarize(np.asarray(accs_a, np.float64) - np.asarray(accs_b, np.float64))


BASELINES = ('random', 'average', 'ota')


def baseline_params(name: str, teachers, model, rng):
  """Meta-learner parameters of the `random`, `average` or `ota` baseline.

  `average` is the mean of the teachers' parameters (all must share the meta-learner's
  arch); each tensor counted once. A teacher whose head has fewer classes than the task's
  ways (the pool's last, 4-class teacher) contributes its body but not its head. `ota` is the
  same mean after aligning every teacher's channels to teacher 0's (`purer_jax.ota`).
  """
  init = models.init(model, rng)['params']
  if name == 'random':
    return init
  if name == 'teacher':
    return teacher_params(teachers, model, init)
  if name == 'arch_average':
    return arch_average(teachers, model, init)
  if name not in BASELINES:
    raise ValueError(f'unknown baseline {name!r}: {" | ".join(BASELINES)}')
  if not can_average(teachers, model):
    raise ValueError(f'the {name} baseline needs every teacher to be '
                     f'{type(model).__name__} at {model.image_size}px')
  variables = [t.variables for t in teachers]
  if name == 'ota':
    variables = ota.align(variables)
  return tree_mean([v['params'] for v in variables], init)


def run_baseline(name: str, teachers, config):
  """`baseline_params` as every meta-test scores it: config's meta-learner, initialised from
  config.seed, so that a baseline scored later (`rescore`) is the figure its run scored."""
  return baseline_params(name, teachers, meta_model(config), jax.random.key(config.seed))


def teacher_params(teachers, model, like):
  """The body of the best held-out teacher of the meta-learner's arch and size (the first of
  equals) in `like`'s structure, its head zeroed: a teacher's head reads out its own classes,
  and at zero MAML's first inner step makes the head a read-out of the support's class means."""
  fit = [t for t in teachers if can_average([t], model)]
  if not fit or any(t.heldout_acc is None for t in fit):
    raise ValueError("meta.init='teacher' starts from the teacher with the best held-out "
                     f'accuracy among those that are {type(model).__name__} at '
                     f'{model.image_size}px: this pool has none with a recorded accuracy (use '
                     'average or random)')
  params = max(fit, key=lambda t: t.heldout_acc).variables['params']  # max: the first of equals

  def take(path, ref):
    if path[0].key == 'head':
      return np.zeros(ref.shape, ref.dtype)
    return _at(params, path)
  return jax.tree_util.tree_map_with_path(take, like)


def arch_average(teachers, model, like):
  """The mean of the teachers that are the meta-learner's arch and size, in `like`'s structure:
  the `average` init for a pool of several archs (SH, MH), from its Conv4s for a Conv4
  learner."""
  fit = [t.variables['params'] for t in teachers if can_average([t], model) and
         jax.tree.structure(t.variables['params']) == jax.tree.structure(like)]
  if not fit:
    raise ValueError("meta.init='arch_average' averages the teachers that are "
                     f'{type(model).__name__} at {model.image_size}px like the meta-learner: '
                     'this pool has none (use random)')
  return tree_mean(fit, like)


def tree_mean(trees, like):
  """Per-tensor mean of `trees` in `like`'s structure; a tree whose tensor has another shape
  than `like`'s (a 4-class teacher's head) does not count for that tensor."""
  def mean_of(path, ref):
    vals = [_at(t, path) for t in trees]
    vals = [v for v in vals if v.shape == ref.shape]
    if not vals:
      raise ValueError(f'no teacher has parameter {jax.tree_util.keystr(path)} with shape '
                       f'{ref.shape}')
    return np.mean(np.stack(vals), 0)
  return jax.tree_util.tree_map_with_path(mean_of, like)


def can_average(teachers, model) -> bool:
  return bool(teachers) and all(
      t.model.__class__ is model.__class__ and t.image_size == model.image_size and
      t.arch == teachers[0].arch for t in teachers)


def applies(method: str, teachers, model) -> bool:
  """Whether `method` can be scored for this pool: `average` and `ota` need `can_average`
  (and OTA a Conv4-style chain); the others always apply."""
  if method not in ('average', 'ota'):
    return True
  if not can_average(teachers, model):
    return False
  if method == 'ota':
    try:
      ota.chain_layers(teachers[0].variables['params'])
    except ValueError:
      return False
  return True


def _at(tree, path):
  for k in path:
    tree = tree[k.key]
  return np.asarray(tree)


def summaries(accs_by_method: dict) -> dict:
  """{'methods': {m: {acc, ci95}}, 'per_task': {m: [...]}} of per-task accuracies; per task,
  so that runs scored on the same tasks can be paired later (docs/ABLATION.md)."""
  return {'methods': {m: dict(zip(('acc', 'ci95'), summarize(a)))
                      for m, a in accs_by_method.items()},
          'per_task': {m: [round(float(x), 4) for x in a] for m, a in accs_by_method.items()}}


def write_results(workdir: str, config, accs_by_method: dict, dataset=None, extra=None) -> dict:
  """W/results.json (schema of the foundation issue, acc in [0, 1]) and W/results.md."""
  res = {
      'scenario': config.scenario, 'dataset': dataset or config.data.dataset,
      'ways': config.meta.ways, 'shots': config.meta.shots,
      'tasks': int(len(next(iter(accs_by_method.values())))), **summaries(accs_by_method)}
  res.update(extra or {})
  utils.write_json(os.path.join(workdir, 'results.json'), res)
  lines = [f"# {res['scenario'].upper()} {res['dataset']}: {res['ways']}-way {res['shots']}-shot, "
           f"{res['tasks']} meta-test tasks (seed {config.eval.seed})", '',
           '| method | accuracy % | 95% CI |', '|---|---|---|']
  lines += [f"| {m} | {100 * v['acc']:.2f} | ± {100 * v['ci95']:.2f} |"
            for m, v in res['methods'].items()]
  for m, v in res.get('paired', {}).items():
    lines.append(f"\nPaired difference {m}: {100 * v['mean_diff']:+.2f} ± {100 * v['ci95']:.2f}")
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return res


def meta_model(config):
  return models.create(config.meta.arch, config.meta.ways,
                       data_lib.IMAGE_SIZE['mini_imagenet' if config.data.extra_dataset
                                           else config.data.dataset])


def evaluate_params(params, config, split, seed=None, num_tasks=None, desc=None,
                    at_steps=None) -> np.ndarray:
  """`task_accuracies` with the config's protocol (meta-test by default)."""
  model = meta_model(config)
  n = num_tasks or config.eval.tasks
  return task_accuracies(
      params, learner=meta.from_config(config.meta, model, test=True), split=split,
      ways=config.meta.ways, shots=config.meta.shots, queries=config.meta.queries, num_tasks=n,
      seed=config.eval.seed if seed is None else seed, batch=config.eval.batch,
      image_size=model.image_size, progress=utils.Progress(n, desc) if desc else None,
      at_steps=at_steps)


def with_adaptation(config, steps: int, lr: float):
  """A copy of config whose test-time adaptation takes `steps` inner steps at lr `lr`."""
  c = config.copy_and_resolve_references()
  c.meta.test_inner_steps, c.meta.test_inner_lr = int(steps), float(lr)
  return c


def with_algo(config, algo: str):
  """A copy of config whose meta-learner algorithm is `algo` (the same parameters read out
  another way, e.g. `protonet`'s nearest support mean of the learner's features)."""
  c = config.copy_and_resolve_references()
  c.meta.algo = algo
  return c


def validate(params, config, splits, num_tasks=None, at_steps=None):
  """Mean query accuracy on fixed meta-val tasks (config.eval.val_seed; num_tasks, default
  config.train.val_tasks), per dataset of `splits`, averaged; with `at_steps`, one mean per
  step count (`task_accuracies`)."""
  n = num_tasks or config.train.val_tasks
  per_split = [evaluate_params(params, config, s, seed=config.eval.val_seed, num_tasks=n,
                               at_steps=at_steps).mean(0) for s in splits]
  return np.mean(per_split, 0) if at_steps is not None else float(np.mean(per_split))


def validate_readouts(params, config, splits) -> dict:
  """Meta-val during training: {'val_acc': MAML's head, which picks the checkpoint, and
  'val_acc_proto': the prototype read-out of the same features when config.eval.methods scores
  it}, so the read-out a run is judged by has a curve to extrapolate."""
  out = {'val_acc': validate(params, config, splits)}
  if 'purer_proto' in config.eval.methods:
    out['val_acc_proto'] = validate(params, with_algo(config, 'protonet'), splits)
  return out


def tune_adaptation(params, config, splits, *, num_tasks=None, log=print) -> dict:
  """Test-time inner steps x lr (config.eval.adapt_steps x config.eval.adapt_lrs) chosen by
  mean accuracy on meta-val tasks (config.eval.val_seed; `splits`: meta-val, one per dataset).
  Returns {'steps', 'lr', 'val_acc', 'trials': [...]}."""
  n = num_tasks or config.train.val_tasks
  counts = sorted(set(int(s) for s in config.eval.adapt_steps))
  acc = {}
  for lr in config.eval.adapt_lrs:  # one adaptation per lr, scored at every step count
    means = validate(params, with_adaptation(config, counts[-1], lr), splits, n, at_steps=counts)
    for k, a in zip(counts, means):
      acc[k, float(lr)] = float(a)
  trials = []
  for steps in config.eval.adapt_steps:
    for lr in config.eval.adapt_lrs:
      trials.append({'steps': int(steps), 'lr': float(lr), 'val_acc': acc[int(steps), float(lr)]})
      log(f'  test-time adaptation {steps} steps at lr {lr}: meta-val {trials[-1]["val_acc"]:.4f}')
  best = max(trials, key=lambda t: (t['val_acc'], -t['steps']))
  return dict(best, trials=trials, tasks=n)


def pool_choice(teachers, config, val_splits, *, log=print, per_task=False) -> dict:
  """The pool read-out's variant (`purer_jax.pool`), chosen on config.train.val_tasks meta-val
  tasks (config.eval.val_seed; `val_splits`: one per dataset of the run, averaged)."""
  return pool.choose_variant(
      teachers, val_splits, ways=config.meta.ways, shots=config.meta.shots,
      queries=config.meta.queries, num_tasks=config.train.val_tasks, seed=config.eval.val_seed,
      variant_list=pool.variants(config.eval.pool_layers, config.eval.pool_norms),
      image_size=meta_model(config).image_size, log=log, per_task=per_task)


def pool_accuracies(teachers, choice: dict, config, split, desc=None) -> np.ndarray:
  """Per-task accuracies of the pool read-out (`choice`: `pool_choice`'s) on config.eval's
  tasks: the same tasks as every other method."""
  size, n = meta_model(config).image_size, config.eval.tasks
  per_task = config.meta.ways * (config.meta.shots + config.meta.queries)
  # Tasks per call: about 4,096 images of 32 px in flight (84-px ResNets need fewer).
  batch = max(1, min(config.eval.batch, 4096 * 32 * 32 // (per_task * size * size)))
  return pool.accuracies(
      teachers, split, ways=config.meta.ways, shots=config.meta.shots,
      queries=config.meta.queries, num_tasks=n, seed=config.eval.seed,
      variant_list=[pool.variant_of(choice)], batch=batch, image_size=size,
      progress=utils.Progress(n, desc) if desc else None)[:, 0]


def method_gflop(config, teachers=None, choice=None) -> float:
  """GFLOP of one meta-test task, support adaptation and query prediction, from XLA's cost
  analysis: the pool read-out of `choice` (`pool_choice`'s) over `teachers`, else config.meta's
  learner with its test-time adaptation (the program `task_accuracies` runs)."""
  model = meta_model(config)
  m = config.meta
  if choice is not None:
    return pool.task_gflop(teachers, ways=m.ways, shots=m.shots, queries=m.queries,
                           image_size=model.image_size, variant=pool.variant_of(choice))
  params = jax.eval_shape(lambda: models.init(model, jax.random.key(0)))['params']
  return utils.compiled_gflop(meta.task_accuracy, params,
                              data_lib.task_spec(m.ways, m.shots, m.queries, model.image_size),
                              learner=meta.from_config(m, model, test=True))


def method_costs(config, configs: dict, teachers, pool_choice=None) -> dict:
  """{method: GFLOP per meta-test task} (`method_gflop`): each method of `configs` at
  its own test-time adaptation, and the pool's chosen read-out."""
  by_adaptation = {}  # methods that adapt alike run one program: compile it once
  out = {}
  for m, c in configs.items():
    key = (c.meta.algo, c.meta.test_inner_steps, c.meta.get('test_inner_lr', 0.0))
    if key not in by_adaptation:
      by_adaptation[key] = round(method_gflop(c), 4)
    out[m] = by_adaptation[key]
  if pool_choice is not None:
    out['pool'] = round(method_gflop(config, teachers, pool_choice), 4)
  return out


def main(argv):
  del argv
  config, workdir = cli.config_and_workdir(splits=('meta_val', 'meta_test'))
  model = meta_model(config)
  teachers = zoo.pool(config, workdir) if zoo.read_manifest(workdir)['teachers'] else []
  d = config.data
  split = data_lib.load(d.dataset, 'meta_test', d.data_dir, d.source)
  accs = {}
  for name in BASELINES:
    if not applies(name, teachers, model):
      print(f'{name}: skipped (needs a teacher zoo of one arch at the meta-learner size'
            f'{", a Conv4-style chain" if name == "ota" else ""})')
      continue
    params = run_baseline(name, teachers, config)
    accs[name] = evaluate_params(params, config, split, desc=name)
    print('{}: {:.4f} ± {:.4f}'.format(name, *summarize(accs[name])))
  extra = {}
  if teachers and 'pool' in config.eval.methods:
    choice = pool_choice(teachers, config, [data_lib.load(d.dataset, 'meta_val', d.data_dir,
                                                          d.source)])
    accs['pool'] = pool_accuracies(teachers, choice, config, split, desc='pool')
    extra = {'pool_variant': choice}
  extra['cost_gflop'] = method_costs(config, {m: config for m in accs if m != 'pool'}, teachers,
                                     extra.get('pool_variant'))
  write_results(workdir, config, accs, extra=extra)
  print(open(os.path.join(workdir, 'results.md')).read())


if __name__ == '__main__':
  cli.run(main)
