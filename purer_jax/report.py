"""The results page: `python -m purer_jax.report docs/results` writes docs/RESULTS.md.

Reads one `<cell>/results.json` per cell (written by `train.final_evaluation`, plus the
`config`, `wall_time_s`, `commit` and `teachers_heldout` the runs record) and lays our numbers
beside the paper's (METHOD.md §9) as the paper lays out its table: rows scenario x dataset x
method, columns 1-shot and 5-shot. Cells are placed by the scenario, dataset and shots recorded
in their results.json, not by folder name. The page depends only on those files: re-running
the report on them reproduces it byte for byte.
"""
import json
import math
import os
import sys

from purer_jax import utils
from purer_jax import workdir as workdir_lib

SCENARIOS = (('ss', 'cifar_fs'), ('ss', 'mini_imagenet'), ('sh', 'cifar_fs'),
             ('sh', 'mini_imagenet'), ('mh', 'mixed'))
SHOTS = (1, 5)
NAMES = {'ss': 'SS', 'sh': 'SH', 'mh': 'MH', 'cifar_fs': 'CIFAR-FS',
         'mini_imagenet': 'MiniImageNet', 'mixed': 'mixed'}
METHODS = {'random': 'Random', 'average': 'Average', 'ota': 'OTA', 'dro': 'DRO',
           'pool': 'Pool read-out', 'purer': 'PURER', 'purer+icfil': 'PURER+ICFIL'}

# The paper's figures (poster table, transcribed from METHOD.md §9): 5-way accuracy %,
# (1-shot, 5-shot). The poster prints two OTA figures per SS CIFAR-FS cell; both are kept.
PAPER = {
    ('ss', 'cifar_fs'): {
        'random': ('21.65 ± 0.45', '21.59 ± 0.45'),
        'ota': ('28.12 ± 0.62 / 29.10 ± 0.65', '32.13 ± 0.04 / 34.33 ± 0.67'),
        'dro': ('23.92 ± 0.49', '24.34 ± 0.49'),
        'purer': ('38.66 ± 0.78', '51.95 ± 0.79')},
    ('ss', 'mini_imagenet'): {
        'random': ('22.45 ± 0.41', '23.48 ± 0.45'),
        'average': ('22.87 ± 0.39', '26.13 ± 0.43'),
        'ota': ('24.22 ± 0.53', '27.22 ± 0.59'),
        'dro': ('23.96 ± 0.42', '25.81 ± 0.41'),
        'purer': ('31.14 ± 0.63', '40.86 ± 0.64')},
    ('sh', 'cifar_fs'): {'random': ('21.65', '21.59'), 'purer': ('39.15 ± 0.70', '49.08 ± 0.74')},
    ('sh', 'mini_imagenet'): {'random': ('22.45', '23.48'),
                              'purer': ('28.76 ± 0.60', '35.19 ± 0.64')},
    ('mh', 'mixed'): {'random': ('21.11', '21.34'), 'purer': ('28.50 ± 0.63', '33.10 ± 0.69')},
}

# The paper's protocol (METHOD.md §3-§8) for the config fields that change what is measured.
# Callables take the run's flattened config and shots.
PROTOCOL = {
    'teachers.num': 13,
    'teachers.assignment': 'disjoint',
    'teachers.epochs': 60,
    'teachers.milestones': [30, 40, 50],
    'teachers.batch_size': 128,
    'teachers.max_per_class': 0,               # all images
    'teachers.keep': 'best',                   # the best held-out epoch
    'teachers.per_iter': 0,                    # every teacher refined every meta-iteration
    'inversion.spc': lambda run, shots: 20 if shots == 5 else 16,
    'inversion.lr': 0.25,
    'inversion.ce': 1.0,
    'inversion.bn': 0.01,
    'inversion.tv': 1e-4,
    'inversion.l2': 1e-5,
    'inversion.jitter': 2,
    # Only MH pools mix input sizes: elsewhere the field changes nothing.
    'inversion.native_size': lambda run, shots: (
        False if run.get('scenario') == 'mh' else run['inversion.native_size']),
    'meta.algo': 'maml',
    'meta.inner_lr': 0.01,
    'meta.inner_steps': 1,
    'meta.test_inner_steps': 1,
    'meta.test_inner_lr': lambda run, shots: (  # 0 means inner_lr
        run['meta.test_inner_lr'] if run['meta.test_inner_lr'] == run.get('meta.inner_lr')
        else 0.0),
    'meta.second_order': True,
    'meta.meta_batch': 4,
    'meta.outer_lr': 1e-3,
    'meta.outer_schedule': 'constant',
    'meta.queries': 15,
    'meta.train_queries': 0,                   # pseudo tasks' queries as real ones'
    'eci.adv_start': 4000,
    'eci.patience': 6,
    'eci.adv_scale': 10.0,
    'eci.ema': 0.0,
    'train.warmup': 0,
    'train.augment': '',
    'train.iterations': 60000,
    'eval.tasks': 600,
    'eval.tune_adapt': False,                  # test-time adaptation as at meta-training
}
# Fields that do not change what is measured (paths, logging, speed, what else is scored).
# Any other field is compared with this repository's default for the scenario.
NOT_PROTOCOL = ('seed', 'workdir', 'data.data_dir', 'data.extra_data_dir', 'data.source',
                'teachers.torch_dir', 'inversion.strategy', 'inversion.shard', 'inversion.steps',
                'train.log_every', 'train.ckpt_every', 'train.png_every', 'eval.seed',
                'eval.val_seed', 'eval.batch', 'eval.methods', 'eval.tune_methods', 'icfil.')
PAPER_LABEL = {'teachers.max_per_class': 'all images', 'teachers.per_iter': 'all teachers',
               'meta.test_inner_lr': 'the inner lr',
               'meta.train_queries': 'as meta.queries',
               'inversion.native_size': "the bank's pixels, False",
               'eci.ema': 'raw accuracy, 0', 'train.augment': 'none'}  # values needing words
MINI_NOTE = ('Our MiniImageNet copy has 100 images per class where the paper\'s has 600, so '
             'its teachers see a sixth of the data')


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
      where, paired = cell_dir, res.get('paired')
    else:
      where, paired = os.path.join(cell_dir, ds), None
      if os.path.isfile(os.path.join(where, 'results.json')):
        with open(os.path.join(where, 'results.json')) as f:
          paired = json.load(f).get('paired')
    out[ds] = _with_icfil({'methods': methods, 'paired': paired}, res, where)
  return out


def _with_icfil(d: dict, res: dict, where: str) -> dict:
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


def combined(cell: dict) -> dict:
  """{'methods', 'paired'} over the cell's datasets: their mean, with the CI of a mean of
  independent estimates (sqrt(sum ci^2) / n); a method or difference missing for one
  dataset is missing."""
  per = list(cell['datasets'].values())
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


def best_baseline(c: dict):
  """(name, paired PURER - it) of the most accurate baseline, or None."""
  base = {m: v['acc'] for m, v in c['methods'].items() if not m.startswith('purer')}
  if not base or 'purer' not in c['methods']:
    return None
  best = max(sorted(base), key=base.get)
  return best, c['paired'].get(f'purer-{best}')


def _flatten(tree, prefix=''):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[prefix + k] = list(v) if isinstance(v, tuple) else v
  return out


def _same(a, b) -> bool:
  if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(
      a, bool) and not isinstance(b, bool):
    return math.isclose(a, b, rel_tol=1e-9)
  return a == b


def deviations(res: dict) -> list:
  """The run's departures from the paper's protocol, from its recorded config: PROTOCOL's
  fields against the paper, every other field (but NOT_PROTOCOL's) against this
  repository's default for the scenario and shots."""
  if not isinstance(res.get('config'), dict):
    return None
  from purer_jax import config as config_lib  # ml_collections: only when a config is recorded
  run = _flatten(res['config'])
  shots = res['shots']
  # The cell's dataset is not a deviation: compare with the default of that dataset.
  mini = ',mini' if res['scenario'] != 'mh' and run.get('data.dataset') == 'mini_imagenet' else ''
  default = _flatten(config_lib.build(res['scenario'], f'{shots}shot{mini}').to_dict())
  out = []
  for key, paper in PROTOCOL.items():
    if key not in run:
      continue
    paper = paper(run, shots) if callable(paper) else paper
    if not _same(run[key], paper):
      out.append(f'`{key}` = {fmt_value(run[key])} '
                 f'(paper: {PAPER_LABEL.get(key, fmt_value(paper))})')
  for key in sorted(run):
    if key in PROTOCOL or any(key == p or (p.endswith('.') and key.startswith(p))
                              for p in NOT_PROTOCOL):
      continue
    if key not in default:
      out.append(f'`{key}` = {fmt_value(run[key])} (not a field of this repository\'s config)')
    elif not _same(run[key], default[key]):
      out.append(f'`{key}` = {fmt_value(run[key])} (default: {fmt_value(default[key])})')
  return out


def _field(res: dict, key: str, group: str):
  """res[key], or res[group][key] (train.py records `timing` and `provenance` groups)."""
  return res.get(key, (res.get(group) or {}).get(key))


def _commit(res) -> str:
  c = str(_field(res, 'commit', 'provenance'))
  c = c[:10] if len(c) == 40 and all(ch in '0123456789abcdef' for ch in c) else c
  return c + (' (uncommitted changes)' if (res.get('provenance') or {}).get('dirty') else '')


def _vs_best(c: dict) -> str:
  """PURER's paired difference to the cell's best baseline, with its name; '—' if none."""
  best = best_baseline(c)
  return f'{fmt_diff(best[1])} ({METHODS.get(best[0], best[0])})' if best and best[1] else '—'


def _mark(dataset: str) -> str:
  """† beside the datasets of MINI_NOTE."""
  return '†' if dataset in ('mini_imagenet', 'mixed') else ''


def _wall_time(res) -> str:
  """Total wall time, and its parts where recorded. A resumed run's last command saw only
  its own segment: its total is the sum of the parts, meta-training over every segment."""
  timing = res.get('timing') or {}
  resumed = timing.get('resumed_at') and timing.get('meta_train_logged_s') is not None
  meta = 'meta_train_logged_s' if resumed else 'meta_train_s'
  reused = timing.get('teachers_reused')  # trained by an earlier command: named, not counted
  parts = [(label, timing.get(key), counted) for label, key, counted in (
      ('teachers reused, {} when trained earlier, not counted' if reused else 'teachers {}',
       'teachers_train_s', not reused),
      ('meta-training {}', meta, True), ('meta-test {}', 'eval_s', True))]
  text = ', '.join(label.format(fmt_time(v)) for label, v, _ in parts if v is not None)
  if resumed:
    return (fmt_time(sum(v or 0 for _, v, counted in parts if counted)) +
            f" ({text}; summed: resumed at iteration {timing['resumed_at']})")
  total = _field(res, 'wall_time_s', 'timing')
  if total is None:
    return text or '—'
  return fmt_time(total) + (f' ({text})' if text else '')


def _heldout(accs) -> str:
  if not accs or None in accs:  # imported teachers, or trained without held-out images
    return '—'
  accs = [float(a) for a in accs]
  return (f'{100 * sum(accs) / len(accs):.1f}% (min {100 * min(accs):.1f}, '
          f'max {100 * max(accs):.1f}; {len(accs)} teachers)')


def _pngs(cell_dir: str, out_dir: str, icfil: bool = False) -> list:
  """The cell's pseudo-episode PNGs, or with `icfil` those of its ICFIL scores."""
  found = []
  for root, dirs, files in os.walk(cell_dir):
    dirs.sort()
    if os.path.basename(root).startswith('icfil_') != icfil:
      continue
    found += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith('.png')]
  return [os.path.relpath(p, out_dir).replace(os.sep, '/') for p in found]


def _rows(scenario, dataset, cells):
  """The method rows of a (scenario, dataset) group."""
  measured = {m for s in SHOTS if (scenario, dataset, s) in cells
              for m in combined(cells[scenario, dataset, s])['methods']}
  paper = PAPER[scenario, dataset]
  rows = []
  for m in METHODS:
    if (m in ('random', 'pool', 'purer', 'purer+icfil') or m in paper or m in measured or
        (scenario == 'ss' and m != 'dro')):  # average and ota apply to one-arch pools
      rows.append(m)
  return rows


def render(cells: dict, out_dir: str) -> str:
  """The page (markdown) for `load_cells`' cells, with links relative to out_dir."""
  lines = [
      '# Results: the paper\'s table, measured here', '',
      'Generated by `python -m purer_jax.report docs/results` from `docs/results/<cell>/'
      'results.json`; do not edit by hand. 5-way accuracy % on fixed, paired meta-test tasks, '
      '± the 95% CI half-width. The paper\'s figures are from its poster (METHOD.md §9). '
      'Checkpoints are selected on meta-val tasks; the paper reports the best meta-*test* '
      'accuracy seen during training (METHOD.md §6, §11), so its figures are optimistic by '
      'that selection.', '',
      'The GFLOP columns give each method\'s meta-test cost per 5-way task (support '
      'adaptation and query prediction), from XLA\'s cost analysis of the compiled program. '
      'The pool read-out (no training) embeds the task with every teacher and classifies each '
      'query by its nearest support mean; its variant is chosen on meta-val.', '',
      '| scenario | dataset | method | 1-shot (ours) | 1-shot (paper) | 1-shot GFLOP | '
      '5-shot (ours) | 5-shot (paper) | 5-shot GFLOP |',
      '|---|---|---|---|---|---|---|---|---|']
  for scenario, dataset in SCENARIOS:
    mark = _mark(dataset)
    for i, m in enumerate(_rows(scenario, dataset, cells)):
      row = [NAMES[scenario] if i == 0 else '', NAMES[dataset] + mark if i == 0 else '',
             METHODS[m] + ('‡' if m == 'dro' else '')]
      for k, shots in enumerate(SHOTS):
        cell = cells.get((scenario, dataset, shots))
        if m == 'dro':
          ours = 'quoted, not measured here'
        elif cell is None:
          ours = 'not run yet'
        else:
          v = combined(cell)['methods'].get(m)
          ours = fmt_acc(v) if v else '—'
        row += [ours, PAPER[scenario, dataset].get(m, ('—', '—'))[k], fmt_gflop(cell, m)]
      lines.append('| ' + ' | '.join(row) + ' |')
  lines += [
      '', f'† {MINI_NOTE} (MH teachers come from CIFAR-FS and '
      'MiniImageNet; its row is the mean over both meta-test sets).', '',
      '‡ DRO (Wang et al., UAI 2022) has no public code nor a description detailed enough to '
      'rebuild it: its figures are quoted from the paper, not measured here.', '',
      '— : not applicable or not scored (Average and OTA need a pool of one architecture; '
      'PURER+ICFIL where the run enabled `icfil` or a `tune_icfil --params=best --test` score of '
      'its checkpoint is kept beside it). The poster prints two OTA figures in '
      'each SS CIFAR-FS cell; both are shown as printed.', '',
      '## Runs', '',
      '| cell | folder | tasks | PURER − Random | PURER − best baseline | PURER+ICFIL − PURER '
      '| best iteration | wall time | teachers\' held-out acc. | commit |',
      '|---|---|---|---|---|---|---|---|---|---|']
  for slot in _slots():
    cell = cells.get(slot)
    label = f'{NAMES[slot[0]]} {NAMES[slot[1]]} {slot[2]}-shot'
    if cell is None:
      lines.append(f'| {label} | not run yet |' + ' |' * 8)
      continue
    res, c = cell['res'], combined(cell)
    rnd = c['paired'].get('purer-random')
    icf = c['paired'].get('purer+icfil')
    it = (f"{res['best_it']:,} of {res['iterations']:,}" if 'best_it' in res and
          'iterations' in res else str(res.get('best_it', '—')))
    lines.append('| ' + ' | '.join([
        label, f"`{cell['name']}`", str(res.get('tasks', '—')),
        fmt_diff(rnd) if rnd else '—',
        _vs_best(c),
        fmt_diff(icf) if icf else '—', it,
        _wall_time(res),
        _heldout(res.get('teachers_heldout')),
        f'`{_commit(res)}`' if _field(res, 'commit', 'provenance') else '—']) + ' |')
  lines += ['', 'Paired differences are per-task means over the same tasks, ± their 95% CI '
            'half-width; MH\'s combine its two meta-test sets as a mean of independent '
            'estimates.', '']
  for slot in _slots():
    if slot in cells:
      lines += _cell_section(slot, cells[slot], out_dir)
  return '\n'.join(lines).rstrip('\n') + '\n'


def _slots():
  return [(s, d, k) for s, d in SCENARIOS for k in SHOTS]


def _cell_section(slot, cell, out_dir) -> list:
  res = cell['res']
  lines = [f'## {NAMES[slot[0]]} {NAMES[slot[1]]}, {slot[2]}-shot (`{cell["name"]}`)', '']
  if slot[1] in ('mini_imagenet', 'mixed'):
    lines += [f'† {MINI_NOTE}.', '']
  facts = ([f"meta-learner init: {res['init']}"] if 'init' in res else []) + (
      [f"best meta-val accuracy: {100 * res['best_val']:.2f}%"] if 'best_val' in res else [])
  if facts:
    lines += ['; '.join(facts) + '.', '']
  if len(cell['datasets']) > 1:
    methods = sorted({m for d in cell['datasets'].values() for m in d['methods']},
                     key=lambda m: list(METHODS).index(m) if m in METHODS else len(METHODS))
    lines += ['| meta-test set | ' + ' | '.join(METHODS.get(m, m) for m in methods) +
              ' | PURER − Random |', '|---|' + '---|' * (len(methods) + 1)]
    for ds, d in cell['datasets'].items():
      rnd = (d['paired'] or {}).get('purer-random')
      lines.append(f'| {NAMES.get(ds, ds)} | ' + ' | '.join(
          fmt_acc(d['methods'][m]) if m in d['methods'] else '—' for m in methods) +
                   f" | {fmt_diff(rnd) if rnd else '—'} |")
    lines.append('')
  devs = deviations(res)
  lines.append('Deviations from the paper\'s protocol:')
  if devs is None:
    lines.append('unknown (this results.json records no `config`).')
  else:
    lines += [f'- {d}' for d in devs] or ['- none']
  for ds, d in cell['datasets'].items():
    if d.get('icfil'):
      where = f' on {NAMES.get(ds, ds)}' if len(cell['datasets']) > 1 else ''
      lines += ['', f'PURER+ICFIL{where}: `tune_icfil --params=best --test` on the best '
                f"checkpoint, settings chosen on meta-val: {fmt_settings(d['icfil'])}."]
  for icfil, title in ((False, 'Pseudo episodes (one row per class; support | query):'),
                       (True, 'ICFIL, meta-test task 0 (real support above its pseudo '
                              'support; similarities before and after calibration):')):
    pngs = _pngs(cell['dir'], out_dir, icfil)
    if pngs:
      lines += ['', title, '']
      lines += [f'![{p.rsplit("/", 1)[-1]}]({p})' for p in pngs]
  return lines + ['']


# ---------------------------------------------------------------------------------------------
# The recipe ablation (SS CIFAR-FS): docs/ABLATION.md and the time-to-accuracy figure.

# Fields that do not change what meta-training learns: left out of a run's "changes".
NOT_LEVER = NOT_PROTOCOL + ('eval.', 'icfil.', 'train.log_every', 'train.ckpt_every',
                            'train.png_every', 'inversion.strategy', 'inversion.steps')


def load_runs(results_dir: str) -> list:
  """Every SS CIFAR-FS run below results_dir (cells and `ablation/<run>/`), by folder name."""
  runs = []
  for root, dirs, files in os.walk(results_dir):
    dirs.sort()
    if 'results.json' in files:
      with open(os.path.join(root, 'results.json')) as f:
        res = json.load(f)
      if (res.get('scenario'), res.get('dataset')) == ('ss', 'cifar_fs') and 'config' in res:
        runs.append({'name': os.path.relpath(root, results_dir).replace(os.sep, '/'),
                     'res': res, 'dir': root})
  return runs


def _lever_config(res: dict) -> dict:
  out = {k: v for k, v in _flatten(res['config']).items()
         if not any(k == p or (p.endswith('.') and k.startswith(p)) for p in NOT_LEVER)}
  if 'init' in res:  # the init used: `auto` resolved for the run's pool
    out['meta.init'] = res['init']
  if out.get('eci.adv_start', 0) >= out.get('train.iterations', 0):
    # ECI never switched on: its settings did not change what meta-training learnt.
    out = {k: v for k, v in out.items() if not k.startswith('eci.')}
  return out


def _changed(res: dict, control: dict) -> list:
  """(field, control's value, run's value) for each meta-training setting that differs."""
  from purer_jax import config as config_lib
  # A field added after a run was recorded takes its default, which keeps the old behaviour.
  base = _lever_config({'config': config_lib.base().to_dict()})
  a, b = _lever_config(control), _lever_config(res)
  get = lambda d, k: d[k] if k in d else base.get(k)
  return [(k, get(a, k), get(b, k)) for k in sorted(set(a) | set(b))
          if not _same(get(a, k), get(b, k))]


def changes(res: dict, control: dict) -> list:
  """`field a -> b` for each meta-training setting where the run differs from the control."""
  return [f'`{k}` {fmt_value(a)} → {fmt_value(b)}' for k, a, b in _changed(res, control)]


# The recipe's levers and the config fields that move each (a trailing dot: every field below).
# Test-time adaptation is measured by eval.tune_adapt on any run (its "tuned adaptation" row).
LEVERS = (
    ('iteration count and outer-lr schedule',
     ('train.iterations', 'meta.outer_schedule', 'meta.outer_lr')),
    ('inversion-only warm-up', ('train.warmup',)),
    ('ECI', ('eci.',)),
    ('test-time inner steps and lr', ()),
    ('inner steps at train', ('meta.inner_steps', 'meta.inner_lr')),
    ('pseudo-image augmentation', ('train.augment', 'train.shift')),
    ('meta-learner', ('meta.algo',)),
    ('meta-batch size', ('meta.meta_batch',)),
    ('bank size', ('inversion.spc',)),
    ('teachers refined per iteration', ('teachers.per_iter',)),
    ("teachers' recipe", workdir_lib.RECIPE),
)


def _lever_runs(pairs: list, fields) -> list:
  if not fields:
    return [r['name'] for r, _ in pairs if (r['res'].get('adaptation') or {}).get('purer')]
  return [r['name'] for r, c in pairs if c is not None and any(
      k == f or (f.endswith('.') and k.startswith(f)) for k, _, _ in
      _changed(r['res'], c['res']) for f in fields)]


def find_controls(runs: list, shots: int) -> list:
  """The runs of the `:quick` recipe (default init) for `shots`, the results page's cell first."""
  from purer_jax import config as config_lib
  quick = {'config': config_lib.build('ss', f'quick,{shots}shot').to_dict(),
           'init': 'average'}  # `auto` for the 13 Conv4 teachers
  return sorted([r for r in runs if r['res']['shots'] == shots and not changes(r['res'], quick)],
                key=lambda r: '/' in r['name'])


def pair_with_controls(runs: list, shots: int) -> list:
  """[(run, its control)] for the runs of `shots`, each control first with None, then its
  runs: those that name it (results.json's `control`: the run whose teachers were copied in,
  so the same teachers and code), else those that share its teachers (equal held-out
  accuracies); a run no control shares teachers with goes with the first (the cell's). Empty
  without a control."""
  mine = [r for r in runs if r['res']['shots'] == shots]
  controls = find_controls(mine, shots)
  if not controls:
    return []

  def control_of(r):
    found = _named_or_same_teachers(r, controls)
    if r['res'].get('control') is None:
      return found or controls[0]
    if found is None or found['res'].get('teachers_heldout') != r['res'].get('teachers_heldout'):
      raise ValueError(f"{r['dir']}/results.json names control {r['res']['control']!r}, which "
                       f'is not a {shots}-shot `:quick` run on its teachers under the results '
                       'folder: fix its `control` field or add that run')
    return found

  own = {id(r): control_of(r) for r in mine if r not in controls}
  return [p for c in controls for p in [(c, None)] + [(r, c) for r in mine if own.get(id(r)) is c]]


def _named_or_same_teachers(r: dict, candidates: list):
  """The candidate run `r` names (results.json's `control`), else the first on its teachers
  (equal held-out accuracies); None if there is none. One rule for a run's control and for
  the earlier control a control re-runs."""
  named = r['res'].get('control')
  same = lambda c: c['res'].get('teachers_heldout') == r['res'].get('teachers_heldout')
  return next((c for c in candidates if (c['name'] == named if named else same(c))), None)


def _default_scores(res: dict):
  """Per-task PURER accuracies at config.meta's test-time adaptation (training levers are
  compared there; tuned adaptation is its own row)."""
  per = res.get('per_task', {})
  return per.get('purer_untuned', per.get('purer'))


def render_ablation(runs: list, figure: str = None) -> str:
  lines = ['# Recipe ablation: SS CIFAR-FS', '',
           'Generated by `python -m purer_jax.report docs/results` from every SS CIFAR-FS '
           '`results.json` under `docs/results/`; do not edit by hand. Each run is compared with '
           'a `:quick` run of its shots (the control: the one it names, whose teachers it '
           'reused, else one on the same teachers where there is one; always the same meta-val '
           'and meta-test tasks). Meta-val is the best of the run\'s meta-val evaluations '
           '(checkpoint selection); meta-test is that checkpoint on the 600 fixed meta-test tasks '
           'with config.meta\'s test-time adaptation; the paired difference is per task against '
           'the control, ± its 95% CI half-width.', '']
  for shots in SHOTS:
    lines += [f'## {shots}-shot', '']
    pairs = pair_with_controls(runs, shots)
    if not pairs:
      lines += ['No `:quick` control run yet.', '']
      continue
    several = sum(c is None for _, c in pairs) > 1
    lines += ['| run | changes from the control | best meta-val | meta-test PURER | '
              'paired vs control | wall time | meta-test GFLOP per task |',
              '|---|---|---|---|---|---|---|']
    controls = [c for c, none in pairs if none is None]
    for r, control in pairs:
      res, scores = r['res'], _default_scores(r['res'])
      acc = _summary(scores)
      # A control after another on its teachers re-runs it.
      twin = (_named_or_same_teachers(r, controls[:controls.index(r)]) if control is None
              else None)
      if control is None and twin is None:
        what, diff = 'control (`:quick`)', None
      elif control is None:  # the recipe again on the same teachers: the run-to-run noise
        what = (f"control (`:quick`), run again on the teachers of `{twin['name']}` (other code "
                'or seed: the paired difference is run-to-run noise)')
        diff = _summary([x - y for x, y in zip(scores, _default_scores(twin['res']))])
      else:
        what = '; '.join(changes(res, control['res'])) or 'the control recipe, run again'
        if res.get('teachers_heldout') != control['res'].get('teachers_heldout'):
          recipe = dict(LEVERS)["teachers' recipe"]
          moved = any(k in recipe for k, _, _ in _changed(res, control['res']))
          whose = 'its teachers by the changed recipe' if moved else 'other teachers of its recipe'
          what += f" (control `{control['name']}`, {whose})"
        elif several:
          what += f" (control `{control['name']}`, the same teachers)"
        diff = _summary([x - y for x, y in zip(scores, _default_scores(control['res']))])
      lines.append('| ' + ' | '.join([
          f"`{r['name']}`", what,
          f"{100 * res['best_val']:.2f}" if 'best_val' in res else '—',
          f'{100 * acc[0]:.2f} ± {100 * acc[1]:.2f}',
          f'{100 * diff[0]:+.2f} ± {100 * diff[1]:.2f}' if diff else '—',
          _wall_time(res), fmt_gflop(r, 'purer')]) + ' |')
      tuned = (res.get('adaptation') or {}).get('purer')
      per = res.get('per_task', {})
      if tuned and 'purer_untuned' in per:
        acc = _summary(per['purer'])
        diff = _summary([x - y for x, y in zip(per['purer'], per['purer_untuned'])])
        lines.append(f"| `{r['name']}` + tuned adaptation | test-time {tuned['steps']} steps at "
                     f"lr {fmt_value(tuned['lr'])}, chosen on meta-val | "
                     f"{100 * tuned['val_acc']:.2f} | {100 * acc[0]:.2f} ± {100 * acc[1]:.2f} | "
                     f'{100 * diff[0]:+.2f} ± {100 * diff[1]:.2f} (vs the same run) | — | '
                     f"{fmt_gflop(r, 'purer')} |")
      if 'pool' in per and 'purer' in per:
        v = res['pool_variant']
        acc = _summary(per['pool'])
        diff = _summary([x - y for x, y in zip(per['pool'], per['purer'])])
        lines.append(f"| `{r['name']}`: pool read-out | the teachers' own {v['layer']}, "
                     f"{v['norm']}, {v['metric']} (no training), chosen on meta-val | "
                     f"{100 * v['val_acc']:.2f} | {100 * acc[0]:.2f} ± {100 * acc[1]:.2f} | "
                     f'{100 * diff[0]:+.2f} ± {100 * diff[1]:.2f} (vs the same run\'s PURER) | '
                     f"— | {fmt_gflop(r, 'pool')} |")
      icf = _with_icfil({'methods': res['methods'], 'paired': res.get('paired')}, res,
                        r['dir'])
      if icf.get('icfil'):
        m, d = icf['methods']['purer+icfil'], icf['paired']['purer+icfil']
        lines.append(f"| `{r['name']}` + ICFIL | ICFIL at meta-test "
                     f"({fmt_settings(icf['icfil'])}), chosen on "
                     f'meta-val | — | {fmt_acc(m)} | {fmt_diff(d)} (vs the same run) | — | — |')
    lines.append('')
  lines += ['## Levers', '', 'The runs above that move each lever of the recipe (a run may move '
            'several: see its changes).', '', '| lever | 1-shot runs | 5-shot runs |',
            '|---|---|---|']
  for lever, fields in LEVERS:
    cols = []
    for shots in SHOTS:
      names = _lever_runs(pair_with_controls(runs, shots), fields)
      cols.append(', '.join(f'`{n}`' for n in names) or 'not measured yet')
    lines.append(f'| {lever} | {cols[0]} | {cols[1]} |')
  lines.append('')
  if figure:
    lines += ['Meta-val accuracy against meta-training wall-clock minutes (the load differed '
              'between runs: see each run\'s wall time and its results.json):', '',
              f'![time to accuracy]({figure})', '']
  return '\n'.join(lines).rstrip('\n') + '\n'


def _summary(xs) -> tuple:
  n = len(xs)
  mean = sum(xs) / n
  sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / n)
  return mean, 1.96 * sd / math.sqrt(n)


def plot_time_to_accuracy(runs: list, path: str) -> None:
  """Meta-val accuracy against meta-training wall minutes, one panel per shots."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(SHOTS), figsize=(11, 4))
  for ax, shots in zip(axes, SHOTS):
    for r in [r for r in runs if r['res']['shots'] == shots and r['res'].get('val_curve')]:
      curve = r['res']['val_curve']
      ax.plot([p['minutes'] for p in curve], [100 * p['val_acc'] for p in curve],
              marker='o', ms=3, label=r['name'])
    # Meta-training time alone: lever runs reuse their control's teachers (the tables give
    # each run's teacher minutes).
    ax.set(title=f'SS CIFAR-FS {shots}-shot', xlabel='meta-training wall minutes',
           ylabel='meta-val accuracy %')
    ax.grid(alpha=.3)
    if ax.lines:
      ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100, metadata={'Software': None})
  plt.close(fig)


# The README's copy of the headline sits between these lines; `write` rewrites what is between.
HEADLINE_MARKS = ('<!-- headline: generated by python -m purer_jax.report docs/results -->',
                  '<!-- /headline -->')


def headline(cells: dict, page: str) -> str:
  """The table's headline (markdown): per cell PURER beside the paper's figure, the pool
  read-out with its paired difference and both meta-test costs, and PURER's paired difference
  to the best other baseline; `page` is the full page's link."""
  lines = ['| scenario | dataset | shots | PURER (paper) | pool read-out | PURER − pool | '
           'GFLOP per task, PURER / pool | PURER − best other baseline |',
           '|---|---|---|---|---|---|---|---|']
  vs_pool = []
  for scenario, dataset in SCENARIOS:
    for k, shots in enumerate(SHOTS):
      cell, paper = cells.get((scenario, dataset, shots)), PAPER[scenario, dataset]['purer'][k]
      row = [NAMES[scenario], NAMES[dataset] + _mark(dataset), str(shots)]
      c = cell and combined(cell)
      if not c or 'purer' not in c['methods']:
        lines.append('| ' + ' | '.join(row + ['not run yet'] + [''] * 4) + ' |')
        continue
      pool, diff = c['methods'].get('pool'), c['paired'].get('purer-pool')
      if diff:
        vs_pool.append(diff)
      others = {**c, 'methods': {m: v for m, v in c['methods'].items() if m != 'pool'}}
      row += [f"**{fmt_acc(c['methods']['purer'])}** ({paper})",
              fmt_acc(pool) if pool else 'not scored', fmt_diff(diff) if diff else '—',
              f"{fmt_gflop(cell, 'purer')} / {fmt_gflop(cell, 'pool')}", _vs_best(others)]
      lines.append('| ' + ' | '.join(row) + ' |')
  tasks = '/'.join(str(n) for n in sorted({c['res'].get('tasks', 0) for c in cells.values()}))
  wins = sum(d['mean_diff'] - d['ci95'] > 0 for d in vs_pool)
  losses = sum(d['mean_diff'] + d['ci95'] < 0 for d in vs_pool)
  standing = (f'**Against the pool read-out** (the teachers\' own features, no training), '
              f'PURER wins in {wins}, loses in {losses} and ties in {len(vs_pool) - wins - losses}'
              f' of the {len(vs_pool)} cells scored with it (paired 95% CI)'
              + (f', by {100 * min(d["mean_diff"] for d in vs_pool):+.2f} to '
                 f'{100 * max(d["mean_diff"] for d in vs_pool):+.2f} points' if vs_pool else '')
              + '; the other cells predate the pool method. ')
  return '\n'.join(lines + [
      '', standing + f'5-way accuracy % ± 95% CI on {tasks} meta-test tasks per cell, '
      'checkpoints and the pool\'s read-out chosen on meta-val; paired differences on the same '
      'tasks; meta-test cost from XLA\'s cost analysis. '
      f'† {MINI_NOTE} (MH: the mean over its CIFAR-FS and MiniImageNet meta-test sets). Every '
      f"baseline, wall time and deviation from the paper's protocol: [{page}]({page}).", ''])


def _update_headline(readme: str, text: str) -> None:
  """Rewrites the README's headline block if it has one."""
  if not os.path.isfile(readme):
    return
  with open(readme) as f:
    doc = f.read()
  start, end = (doc.find(m) for m in HEADLINE_MARKS)
  if 0 <= start < end:
    start += len(HEADLINE_MARKS[0])
    with open(readme, 'w', newline='\n') as f:
      f.write(doc[:start] + '\n' + text + doc[end:])


def write(results_dir: str, out: str = None) -> str:
  """Writes the page (default: RESULTS.md beside results_dir) and, beside it, ABLATION.md with
  figures/time_to_accuracy.png; returns the page's path. A README.md one folder above the page's
  with HEADLINE_MARKS gets the `headline` between them."""
  out = out or os.path.join(os.path.dirname(os.path.abspath(results_dir)), 'RESULTS.md')
  out_dir = os.path.dirname(os.path.abspath(out))
  cells = load_cells(results_dir)
  page = render(cells, out_dir)
  with open(out, 'w', newline='\n') as f:
    f.write(page)
  root = os.path.dirname(out_dir)
  _update_headline(os.path.join(root, 'README.md'),
                   headline(cells, os.path.relpath(out, root).replace(os.sep, '/')))
  runs = load_runs(results_dir)
  figure = None
  if runs:
    os.makedirs(os.path.join(out_dir, 'figures'), exist_ok=True)
    figure = 'figures/time_to_accuracy.png'
    plot_time_to_accuracy(runs, os.path.join(out_dir, figure))
  with open(os.path.join(out_dir, 'ABLATION.md'), 'w', newline='\n') as f:
    f.write(render_ablation(runs, figure))
  return out


def main(argv):
  if len(argv) not in (2, 3):
    raise SystemExit('usage: python -m purer_jax.report RESULTS_DIR [OUT.md]\n'
                     '  e.g. python -m purer_jax.report docs/results  (writes docs/RESULTS.md)')
  print('wrote', write(*argv[1:]))


if __name__ == '__main__':
  main(sys.argv)
