"""The runs' records (results.json) as the generated pages read and print them.

The paper's table (SCENARIOS x SHOTS, with the NAMES and METHODS it prints): `load_cells`
places each `<cell>/results.json` of a results folder in it. Both pages (`report`,
`ablation`) print scores, settings, costs and wall times with the `fmt_*` and `wall_time`
helpers, compare configs with `flatten` / `same` (NOT_PROTOCOL: the fields neither compares),
and add the PURER+ICFIL score kept beside a run (`with_icfil`).
"""
import json
import math
import os

from purer_jax import utils

SCENARIOS = (('ss', 'cifar_fs'), ('ss', 'mini_imagenet'), ('sh', 'cifar_fs'),
             ('sh', 'mini_imagenet'), ('mh', 'mixed'))
SHOTS = (1, 5)
NAMES = {'ss': 'SS', 'sh': 'SH', 'mh': 'MH', 'cifar_fs': 'CIFAR-FS',
         'mini_imagenet': 'MiniImageNet', 'mixed': 'mixed'}
METHODS = {'random': 'Random', 'average': 'Average', 'ota': 'OTA', 'dro': 'DRO',
           'pool': 'Pool read-out', 'purer': 'PURER', 'purer_proto': 'PURER, prototype read-out',
           'purer+icfil': 'PURER+ICFIL'}
# Fields that do not change what is measured (paths, logging, speed, what else is scored).
# Any other field is compared with this repository's default for the scenario.
NOT_PROTOCOL = ('seed', 'workdir', 'data.data_dir', 'data.extra_data_dir', 'data.source',
                'teachers.torch_dir', 'inversion.strategy', 'inversion.shard', 'inversion.steps',
                'train.log_every', 'train.ckpt_every', 'train.png_every', 'eval.seed',
                'eval.val_seed', 'eval.batch', 'eval.methods', 'eval.tune_methods', 'icfil.')


def load_cells(results_dir: str) -> dict:
  """{(scenario, dataset, shots): cell} for every `<cell>/results.json` under results_dir."""
  if not os.path.isdir(results_dir):
    raise FileNotFoundError(f'no results folder {results_dir!r}: pass the folder holding one '
                            '<cell>/results.json per cell, e.g. docs/results')
  cells = {}
  for name in sorted(os.listdir(results_dir)):
    path = os.path.join(results_dir, name, 'results.json')
    if not os.path.isfile(path):
      continue
    with open(path) as f:
      res = json.load(f)
    slot = slot_of(res, path)
    if slot in cells:
      raise ValueError(f'{path} and {cells[slot]["path"]} are both '
                       f'{NAMES[slot[0]]} {NAMES[slot[1]]} {slot[2]}-shot: keep one of them')
    cells[slot] = {'name': name, 'dir': os.path.join(results_dir, name), 'path': path,
                   'res': res, 'datasets': _per_dataset(res, os.path.join(results_dir, name))}
  return cells


def slot_of(res: dict, path: str = 'results.json') -> tuple:
  try:
    scenario, dataset, shots, ways = res['scenario'], res['dataset'], res['shots'], res['ways']
  except KeyError as e:
    raise ValueError(f'{path}: no {e} field; is it a results.json of purer_jax?') from None
  slot = (scenario, 'mixed' if scenario == 'mh' else dataset, shots)
  if slot[:2] not in SCENARIOS or shots not in SHOTS or ways != 5:
    raise ValueError(f'{path}: {scenario} {dataset} {ways}-way {shots}-shot is not a cell of '
                     'the paper\'s table (5-way, 1 or 5 shots)')
  return slot


def _per_dataset(res: dict, cell_dir: str) -> dict:
  """{dataset: {'methods', 'paired'}}: MH's per-dataset tables (`by_dataset`, and the paired
  differences of `<cell>/<dataset>/results.json` where kept), else the cell's own; with
  PURER+ICFIL where a `tune_icfil` score is kept (`<cell>[/<dataset>]/icfil_<K>shot/`)."""
  out = {}
  for ds, methods in sorted(res.get('by_dataset', {res['dataset']: res['methods']}).items()):
    if ds == res['dataset']:
      where, own = cell_dir, res
    else:
      where, own = os.path.join(cell_dir, ds), {}
      if os.path.isfile(os.path.join(where, 'results.json')):
        with open(os.path.join(where, 'results.json')) as f:
          own = json.load(f)
    tuned = own.get('tuned') or {}
    out[ds] = dict(with_icfil({'methods': methods, 'paired': own.get('paired')}, res, where),
                   tuned={'methods': tuned.get('methods', {}), 'paired': tuned.get('paired')},
                   per_task=own.get('per_task') or {})
  return out


def with_icfil(d: dict, res: dict, where: str) -> dict:
  """d with PURER+ICFIL from a `tune_icfil --test` run of the cell's checkpoint, where it is
  kept. Its plain `purer` scores the same checkpoint on the same tasks: it must be the cell's
  (at config.meta's test-time adaptation: `purer_untuned` where the run tuned it)."""
  path = os.path.join(utils.icfil_dir(where, res['shots']), 'results.json')
  if not os.path.isfile(path):
    return d
  with open(path) as f:
    icf = json.load(f)
  if 'purer+icfil' in d['methods']:
    raise ValueError(f'{path}: the run itself scored PURER+ICFIL already: keep one of them')
  plain = icf['methods'].get('purer')
  ours = d['methods'].get('purer_untuned', d['methods'].get('purer'))
  if (plain is None or ours is None or icf.get('tasks') != res.get('tasks') or
      abs(plain['acc'] - ours['acc']) > 1e-3):
    raise ValueError(f'{path}: its plain PURER ({plain and fmt_acc(plain)}) is not the cell\'s '
                     f'({ours and fmt_acc(ours)}) on the same tasks: re-run `tune_icfil '
                     '--params=best --test` on the workdir of this cell\'s results.json')
  return {'methods': dict(d['methods'], **{'purer+icfil': icf['methods']['purer+icfil']}),
          'paired': dict(d['paired'] or {}, **{'purer+icfil': icf['paired']['purer+icfil']}),
          # `enabled` is how the run was switched, not a setting of the calibration.
          'icfil': {k: v for k, v in (icf.get('icfil', {}).get('settings') or {}).items()
                    if k != 'enabled'}}


def combined(cell: dict, column: str = 'one_step') -> dict:
  """{'methods', 'paired'} of a test-time column (`one_step`: config.meta's adaptation, the
  paper's; `tuned`: each method's chosen on meta-val, empty where the run did not tune) over
  the cell's datasets: their mean, with the CI of a mean of independent estimates
  (sqrt(sum ci^2) / n); a method or difference missing for one dataset is missing."""
  per = list(cell['datasets'].values())
  if column == 'tuned':
    per = [p['tuned'] for p in per]
  if len(per) == 1:
    return {'methods': per[0]['methods'], 'paired': per[0]['paired'] or {}}
  def mean(dicts, a, c):
    if any(d is None for d in dicts):
      return None
    return {a: sum(d[a] for d in dicts) / len(dicts),
            c: math.sqrt(sum(d[c] ** 2 for d in dicts)) / len(dicts)}
  methods = {m: mean([p['methods'].get(m) for p in per], 'acc', 'ci95')
             for m in per[0]['methods']}
  paired = {k: mean([(p['paired'] or {}).get(k) for p in per], 'mean_diff', 'ci95')
            for k in (per[0]['paired'] or {})}
  return {'methods': {k: v for k, v in methods.items() if v},
          'paired': {k: v for k, v in paired.items() if v}}


def per_task_columns(res: dict) -> dict:
  """{'one_step': {method: per-task accuracies}, 'tuned': {...}} of a record; a record of
  the earlier layout (tuned scores under the methods' names, PURER's one step as
  `purer_untuned`) read the same way."""
  per = res.get('per_task', {})
  if 'tuned' in res:
    return {'one_step': per, 'tuned': res['tuned']['per_task']}
  tuned = set(res.get('adaptation') or {}) if 'purer_untuned' in per else set()
  one = {m: v for m, v in per.items() if m not in tuned and m != 'purer_untuned'}
  if tuned:
    one['purer'] = per['purer_untuned']
  return {'one_step': one, 'tuned': {m: per[m] for m in tuned}}


def fmt_acc(v) -> str:
  return f"{100 * v['acc']:.2f} ± {100 * v['ci95']:.2f}"


def fmt_diff(v) -> str:
  return f"{100 * v['mean_diff']:+.2f} ± {100 * v['ci95']:.2f}"


def fmt_settings(settings: dict) -> str:
  return ', '.join(f'{k} {fmt_value(v)}' for k, v in sorted(settings.items()))


def fmt_value(v) -> str:
  if isinstance(v, bool) or v is None:
    return str(v)
  if isinstance(v, int):
    return f'{v:,}'
  if isinstance(v, float):
    return f'{v:,}' if v.is_integer() and abs(v) >= 1000 else f'{v:g}'
  if isinstance(v, (list, tuple)):
    return '(' + ', '.join(fmt_value(x) for x in v) + ')'
  return repr(v) if isinstance(v, str) else str(v)


def fmt_gflop(cell, method: str) -> str:
  """A method's meta-test GFLOP per task as its run recorded it (`cost_gflop`), or —."""
  cost = cell and cell['res'].get('cost_gflop', {}).get(method)
  return '—' if cost is None else f'{cost:.2f}'


def fmt_time(seconds) -> str:
  m = int(round(seconds / 60))
  return f'{m} min' if m < 60 else f'{m // 60} h {m % 60:02d} min'


def flatten(tree, prefix=''):
  """{'a.b': value} of a nested config; a record's `eci.adv_start` (an iteration, before ECI's
  start became a fraction of the run) read as today's `eci.start`."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[prefix + k] = list(v) if isinstance(v, tuple) else v
  if not prefix and 'eci.adv_start' in out:
    its = out.get('train.iterations', 0)
    out['eci.start'] = min(out.pop('eci.adv_start') / its, 1.0) if its else 1.0
  return out


def same(a, b) -> bool:
  if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(
      a, bool) and not isinstance(b, bool):
    return math.isclose(a, b, rel_tol=1e-9)
  return a == b


def field(res: dict, key: str, group: str):
  """res[key], or res[group][key] (meta_test.py records `timing` and `provenance` groups)."""
  return res.get(key, (res.get(group) or {}).get(key))


def learner_choice(res: dict) -> str:
  """The run's learner read-out: MAML's head, or its prototype read-out where the run scored
  both and the prototype won on meta-val."""
  val = res.get('readout_val') or {}
  return 'purer_proto' if val.get('purer_proto', -1) > val.get('purer', math.inf) else 'purer'


def learner_view(cell: dict) -> dict:
  """`combined(cell)` with PURER's score and paired differences those of the learner read-out
  chosen on meta-val (`learner_choice`): where the prototype read-out won, its own, paired per
  task with every baseline."""
  if learner_choice(cell['res']) == 'purer':
    return combined(cell)

  def chosen(d):  # one meta-test set's table with the prototype read-out as PURER
    per = d['per_task']
    paired = {f'purer-{m}': paired_diff(per['purer_proto'], per[m])
              for m in per if not m.startswith('purer')}
    return dict(d, methods=dict(d['methods'], purer=d['methods']['purer_proto']),
                paired=dict(d['paired'] or {}, **paired))
  return combined(dict(cell, datasets={ds: chosen(d) for ds, d in cell['datasets'].items()}))


def eci_on(res: dict) -> bool:
  """Whether ECI switched on in the recorded run (its start before the last iteration)."""
  flat = flatten(res.get('config') or {})
  return flat.get('eci.start', 1.0) < 1.0 and (
      round(flat['eci.start'] * flat.get('train.iterations', 0)) < flat.get('train.iterations', 0))


def summary(xs) -> tuple:
  """(mean, 95% CI half-width) of per-task values."""
  n = len(xs)
  mean = sum(xs) / n
  return mean, 1.96 * math.sqrt(sum((x - mean) ** 2 for x in xs) / n) / math.sqrt(n)


def paired_diff(a: list, b: list) -> dict:
  """{'mean_diff', 'ci95'}: the mean per-task difference a − b and its 95% CI half-width."""
  return dict(zip(('mean_diff', 'ci95'), summary([x - y for x, y in zip(a, b)])))


def readout_name(method: str) -> str:
  """How the pages name a learner read-out: `learner_choice`'s result."""
  return 'prototype' if method == 'purer_proto' else 'MAML head'


def _resumed(timing: dict) -> bool:
  return bool(timing.get('resumed_at') and timing.get('meta_train_logged_s') is not None)


def meta_train_seconds(timing: dict):
  """The run's meta-training seconds: a resumed run's last command saw only its own segment,
  so its logged windows, summed over every segment, count instead."""
  return timing.get('meta_train_logged_s' if _resumed(timing) else 'meta_train_s')


def wall_time(res) -> str:
  """Total wall time, and its parts where recorded. A resumed run's last command saw only
  its own segment: its total is the sum of the parts, meta-training over every segment."""
  timing = res.get('timing') or {}
  resumed = _resumed(timing)
  reused = timing.get('teachers_reused')  # trained by an earlier command: named, not counted
  parts = [('teachers reused, {} when trained earlier, not counted' if reused else 'teachers {}',
            timing.get('teachers_train_s'), not reused),
           ('meta-training {}', meta_train_seconds(timing), True),
           ('meta-test {}', timing.get('eval_s'), True)]
  text = ', '.join(label.format(fmt_time(v)) for label, v, _ in parts if v is not None)
  if resumed:
    text += f"; summed: resumed at iteration {timing['resumed_at']}"
  segments = timing.get('segments') or []
  if len(segments) > 1:
    text += '; meta-training in {} segments: {}'.format(len(segments), ', '.join(
        fmt_time(s['wall_s']) + (' (interrupted)' if s.get('interrupted') else '')
        for s in segments))
  if timing.get('rescore_eval_s') is not None:  # a later command scored the table's protocol
    text += f"; then {fmt_time(timing['rescore_eval_s'])} re-scoring it by the table's protocol"
  if 'teachers_source' not in res:
    text += ('; ' if text else '') + "the teachers' source is not recorded"
  if resumed:
    return fmt_time(sum(v or 0 for _, v, counted in parts if counted)) + f' ({text})'
  total = field(res, 'wall_time_s', 'timing')
  if total is None:
    return text or '—'
  return fmt_time(total) + (f' ({text})' if text else '')
