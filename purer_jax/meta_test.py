"""The final meta-test of a meta-training run (docs/DESIGN.md §6) and its results.json.

`train_and_evaluate` is `purer_jax.main`'s run after the teachers: meta-training
(`purer_jax.train.train`), then `final_evaluation` of config.eval.methods on each dataset of the
run, then the timings and provenance recorded beside the scores.
"""
import json
import os
import time
from typing import Optional

from purer_jax import data as data_lib
from purer_jax import evaluate, icfil, parallel, train, utils, zoo
from purer_jax import workdir as workdir_lib

# The best meta-val learner, kept as a file small enough to commit beside the record.
LEARNER_FILE = 'learner.npz'


def _timed_records(metrics_path: str):
  """(record, meta-training seconds so far) of a run's metrics.jsonl, the seconds summed over
  the logged windows (compilation and meta-val included) of every segment of a resumed run."""
  seconds, last = 0.0, -1
  with open(metrics_path) as f:
    for rec in map(json.loads, f):
      if 'it_per_s' in rec:  # a window of iterations last+1 .. it
        seconds += (rec['it'] - last) / rec['it_per_s']
        last = rec['it']
      yield rec, seconds


def val_curve(metrics_path: str) -> list:
  """[{'it', 'val_acc', 'minutes'}] from a run's metrics.jsonl: meta-val accuracy against the
  meta-training wall time (`_timed_records`), with 'val_acc_proto' where the run tracked the
  prototype read-out (`evaluate.validate_readouts`)."""
  keep = ('val_acc', 'val_acc_proto')
  return [{'it': rec['it'] + 1, **{k: rec[k] for k in keep if k in rec},
           'minutes': round(seconds / 60, 2)}
          for rec, seconds in _timed_records(metrics_path) if 'val_acc' in rec]


def _results_files(workdir, config):
  """(path, contents) of each results.json that final_evaluation wrote."""
  for i, (name, _, _) in enumerate(data_lib.run_datasets(config)):
    path = os.path.join(workdir if i == 0 else os.path.join(workdir, name), 'results.json')
    with open(path) as f:
      yield path, json.load(f)


def final_evaluation(config, workdir, teachers, purer_params, extra=None) -> dict:
  """Meta-test of config.eval.methods on each dataset; W/results.json for the pool's dataset
  (and W/<dataset>/results.json for MH's second one). Returns {dataset: results}.

  Every method is scored at config.meta's test-time adaptation (the paper's one step): the
  record's `methods`, `per_task` and `paired`. With config.eval.tune_adapt each method of
  config.eval.tune_methods is scored again at its own adaptation chosen on meta-val
  (`evaluate.tune_adaptation`): the `tuned` column, with the same keys, where a method without
  test-time adaptation to tune (pool, prototype read-out) keeps its one score.
  """
  model = evaluate.meta_model(config)
  params, configs, tuned = {}, {}, {}
  for method in config.eval.methods:
    if method == 'pool':
      continue
    if method == 'purer_proto':  # the learner's features read out by nearest support mean
      params[method], configs[method] = purer_params, evaluate.with_algo(config, 'protonet')
      continue
    if not evaluate.applies(method, teachers, model):
      print(f'{method}: skipped (needs every teacher to be the meta-learner\'s arch and size)')
      continue
    params[method] = purer_params if method == 'purer' else evaluate.run_baseline(
        method, teachers, config)
    configs[method] = config
  val_splits = [data_lib.load(n, 'meta_val', d, s) for n, d, s in data_lib.run_datasets(config)]
  pool_choice = None
  if 'pool' in config.eval.methods:
    print('pool: choosing its read-out on meta-val')
    pool_choice = evaluate.pool_choice(teachers, config, val_splits)
  tuned_configs = {}
  if config.eval.tune_adapt:
    tuned, tuned_configs = tune_methods(params, config, val_splits)
  costs = evaluate.method_costs(config, configs, teachers, pool_choice)
  if 'purer_proto' in params and 'purer' in params:  # which read-out: meta-val says
    val = evaluate.validate_readouts(purer_params, config, val_splits)
    extra = dict(extra or {}, readout_val={'purer': val['val_acc'],
                                           'purer_proto': val['val_acc_proto']})
  out = {}
  for i, (name, data_dir, source) in enumerate(data_lib.run_datasets(config)):
    split = data_lib.load(name, 'meta_test', data_dir, source)
    accs = {m: evaluate.evaluate_params(p, configs[m], split, desc=f'{m} {name}')
            for m, p in params.items()}
    if pool_choice is not None:
      accs['pool'] = evaluate.pool_accuracies(teachers, pool_choice, config, split,
                                              desc=f'pool {name}')
    if config.icfil.enabled and 'purer' in accs:  # same tasks as purer: a paired comparison
      accs['purer+icfil'] = icfil.evaluate_params(purer_params, configs['purer'], split,
                                                  desc=f'purer+icfil {name}')
    where = workdir if i == 0 else os.path.join(workdir, name)
    os.makedirs(where, exist_ok=True)
    info = {'paired': _paired_with_purer(accs), 'cost_gflop': costs, **(extra or {})}
    if tuned:
      info['tuned'] = tuned_column(params, tuned_configs, config, split, accs, name=name)
      info['adaptation'] = tuned
    if pool_choice is not None:
      info['pool_variant'] = pool_choice
    out[name] = evaluate.write_results(where, config, accs, dataset=name, extra=info)
  if len(out) > 1:  # MH: every dataset's table in the main results.json too
    res = dict(out[config.data.dataset], by_dataset={k: v['methods'] for k, v in out.items()})
    utils.write_json(os.path.join(workdir, 'results.json'), res)
  return out


def tune_methods(params: dict, config, val_splits) -> tuple:
  """({method: its test-time adaptation chosen on meta-val (`evaluate.tune_adaptation`)},
  {method: config at it}) for each method of `params` ({method: learner}) among
  config.eval.tune_methods."""
  tuned, configs = {}, {}
  for method in [m for m in params if m in config.eval.tune_methods]:
    print(f'{method}: tuning test-time adaptation on meta-val')
    tuned[method] = evaluate.tune_adaptation(params[method], config, val_splits)
    configs[method] = evaluate.with_adaptation(config, tuned[method]['steps'],
                                               tuned[method]['lr'])
  return tuned, configs


def tuned_column(params: dict, tuned_configs: dict, config, split, accs: dict, *,
                 name: str) -> dict:
  """One meta-test set's `tuned` record: each method of `tuned_configs` scored again at its own
  adaptation, PURER+ICFIL calibrating PURER's tuned adaptation where `accs` (the one-step
  column, {method: per-task accuracies}) has it; the other methods keep their one score."""
  again = {m: evaluate.evaluate_params(params[m], c, split, desc=f'{m} {name}, tuned')
           for m, c in tuned_configs.items()}
  if 'purer+icfil' in accs and 'purer' in tuned_configs:
    again['purer+icfil'] = icfil.evaluate_params(params['purer'], tuned_configs['purer'], split,
                                                 desc=f'purer+icfil {name}, tuned')
  column = {m: again.get(m, a) for m, a in accs.items() if m != 'purer+icfil' or m in again}
  return dict(evaluate.summaries(column), paired=_paired_with_purer(column),
              cost_gflop=evaluate.method_costs(config, tuned_configs, None))


def _paired_with_purer(accs: dict) -> dict:
  """{'purer-<m>': PURER - m} for every other method of `accs`, and {'purer+icfil': ICFIL's
  gain over PURER}, each paired per task."""
  if 'purer' not in accs:
    return {}
  diff = lambda a, b: dict(zip(('mean_diff', 'ci95'), evaluate.paired(a, b)))
  out = {f'purer-{m}': diff(accs['purer'], a) for m, a in accs.items()
         if m not in ('purer', 'purer+icfil')}
  if 'purer+icfil' in accs:
    out['purer+icfil'] = diff(accs['purer+icfil'], accs['purer'])
  return out


def _earlier_record(workdir):
  """The timing, provenance and teachers' source of the workdir's results.json, if a finished
  run wrote one."""
  path = os.path.join(workdir, 'results.json')
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    res = json.load(f)
  if 'timing' not in res or 'provenance' not in res:
    return None
  return {k: res[k] for k in ('timing', 'provenance', 'teachers_source') if k in res}


def train_and_evaluate(config, workdir, started: Optional[float] = None,
                       teachers_reused: bool = False) -> dict:
  """Meta-trains and scores; results.json records the config, the timings and provenance, and
  LEARNER_FILE the learner scored (`started`: when the command began, so that wall_time_s
  includes teacher training, unless `teachers_reused`: the pool was in the workdir already, its
  training time is recorded apart)."""
  if config.icfil.enabled:
    icfil.learner_from_config(config)  # refuses a learner ICFIL cannot follow before training
  teachers = zoo.pool(config, workdir)
  prov = utils.provenance()  # the code as loaded: HEAD may move while the run goes on
  resumed_at = train.checkpoint_manager(workdir).latest_step() or 0
  earlier = _earlier_record(workdir) if resumed_at >= config.train.iterations else None
  if parallel.is_primary():
    workdir_lib.begin_segment(workdir, resumed_at)
  t0 = time.time()
  best = train.train(config, workdir, teachers)
  meta_s = time.time() - t0
  if not parallel.is_primary():  # meta-test runs on the host: process 0 scores and writes
    return {}
  segments = workdir_lib.end_segment(workdir, int(config.train.iterations))
  print(f'meta-training: {meta_s:.0f}s, best meta-val {float(best["val"]):.4f} at '
        f'iteration {int(best["it"])}')
  extra = {'best_val': float(best['val']), 'best_it': int(best['it']),
           'iterations': int(config.train.iterations),
           'init': train.resolve_init(config.meta.init, teachers, evaluate.meta_model(config)),
           'teachers_heldout': [t.heldout_acc for t in teachers],
           'val_curve': val_curve(os.path.join(workdir, 'metrics.jsonl')),
           'config': json.loads(config.to_json_best_effort())}
  utils.save_params(os.path.join(workdir, LEARNER_FILE), best['params'])
  out = final_evaluation(config, workdir, teachers, best['params'], extra=extra)
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  timing = {'meta_train_s': round(meta_s, 1), 'eval_s': round(time.time() - t0 - meta_s, 1),
            # Unknown for teachers imported or trained by older code: then left out.
            'teachers_train_s': (round(sum(t.train_seconds for t in teachers), 1) if all(
                t.train_seconds is not None for t in teachers) else None)}
  if teachers_reused:
    timing['teachers_reused'] = True
  source = (zoo.source(workdir) if teachers_reused else
            {'trained': 'in this run', 'seconds': timing['teachers_train_s']})
  if resumed_at:  # this command's times cover the last segment only: the logged windows all
    timing.update(resumed_at=resumed_at, meta_train_logged_s=round(
        ([0.0] + [s for _, s in _timed_records(metrics_path)])[-1], 1))
  if len(segments) > 1:
    timing['segments'] = [{k: s[k] for k in ('from_it', 'to_it', 'wall_s', 'interrupted', 'host')
                           if k in s} for s in segments]
  if started is not None:
    timing['wall_time_s'] = round(time.time() - started, 1)
  prov = dict(prov, load_avg_end=[round(x, 2) for x in os.getloadavg()])
  if earlier:  # a re-scoring: the run's own times and code stay, this command's are added
    timing = dict(earlier['timing'], rescore_eval_s=timing['eval_s'])
    prov = dict(earlier['provenance'], rescored=prov)
    source = earlier.get('teachers_source', source)
  for where, res in _results_files(workdir, config):
    res.update(timing=timing, provenance=prov, teachers_source=source)
    utils.write_json(where, res)
  for name, res in out.items():
    print(name, {m: f"{100 * v['acc']:.2f} ± {100 * v['ci95']:.2f}"
                 for m, v in res['methods'].items()})
  return out
