"""The results page: `python -m purer_jax.report docs/results` writes docs/RESULTS.md.

Reads one `<cell>/results.json` per cell (written by `meta_test.final_evaluation`, plus the
`config`, `wall_time_s`, `commit` and `teachers_heldout` the runs record) and lays our numbers
beside the paper's (docs/DESIGN.md §9) as the paper lays out its table: rows scenario x dataset x
method, columns 1-shot and 5-shot. Cells are placed by the scenario, dataset and shots recorded
in their results.json, not by folder name. The page depends only on those files: re-running
the report on them reproduces it byte for byte.
"""
import os
import sys

from purer_jax import ablation, records, verdicts

# The paper's figures (poster table, transcribed from docs/DESIGN.md §9): 5-way accuracy %,
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

# The paper's protocol (docs/DESIGN.md §3-§8) for the config fields that change what is measured.
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
    'teachers.augment': '',
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
    'eci.start': 4000 / 60000,                 # iteration 4,000 of 60,000
    'eci.patience': 6,
    'eci.adv_scale': 10.0,
    'eci.ema': 0.0,
    'train.warmup': 0,
    'train.augment': '',
    'train.iterations': 60000,
    'eval.tasks': 600,
    'eval.tune_adapt': False,                  # test-time adaptation as at meta-training
}
PAPER_LABEL = {'teachers.max_per_class': 'all images', 'teachers.per_iter': 'all teachers',
               'eci.start': '1/15, iteration 4,000 of 60,000',
               'meta.test_inner_lr': 'the inner lr',
               'meta.train_queries': 'as meta.queries',
               'inversion.native_size': "the bank's pixels, False",
               'eci.ema': 'raw accuracy, 0', 'train.augment': 'none',
               'teachers.augment': 'none'}  # values needing words
MINI_NOTE = ('Our MiniImageNet copy has 100 images per class where the paper\'s has 600, so '
             'its teachers see a sixth of the data')


def deviations(res: dict) -> list:
  """The run's departures from the paper's protocol, from its recorded config: PROTOCOL's
  fields against the paper, every other field (but records.NOT_PROTOCOL's) against this
  repository's default for the scenario and shots."""
  if not isinstance(res.get('config'), dict):
    return None
  from purer_jax import config as config_lib  # ml_collections: only when a config is recorded
  run = records.flatten(res['config'])
  shots = res['shots']
  # The cell's dataset is not a deviation: compare with the default of that dataset.
  mini = ',mini' if res['scenario'] != 'mh' and run.get('data.dataset') == 'mini_imagenet' else ''
  default = records.flatten(config_lib.build(res['scenario'], f'{shots}shot{mini}').to_dict())
  out = []
  for key, paper in PROTOCOL.items():
    if key not in run:
      continue
    paper = paper(run, shots) if callable(paper) else paper
    if not records.same(run[key], paper):
      out.append(f'`{key}` = {records.fmt_value(run[key])} '
                 f'(paper: {PAPER_LABEL.get(key, records.fmt_value(paper))})')
  for key in sorted(run):
    if key in PROTOCOL or any(key == p or (p.endswith('.') and key.startswith(p))
                              for p in records.NOT_PROTOCOL):
      continue
    value = records.fmt_value(run[key])
    if key not in default:
      out.append(f'`{key}` = {value} (not a field of this repository\'s config)')
    elif not records.same(run[key], default[key]):
      out.append(f'`{key}` = {value} (default: {records.fmt_value(default[key])})')
  return out


def _commit(res) -> str:
  c = str(records.field(res, 'commit', 'provenance'))
  c = c[:10] if len(c) == 40 and all(ch in '0123456789abcdef' for ch in c) else c
  return c + (' (uncommitted changes)' if (res.get('provenance') or {}).get('dirty') else '')


def _vs_best(c: dict) -> str:
  """PURER's paired difference to the cell's most accurate baseline, with its name; '—' if
  there is none."""
  base = {m: v['acc'] for m, v in c['methods'].items() if not m.startswith('purer')}
  best = max(sorted(base), key=base.get) if base and 'purer' in c['methods'] else None
  diff = best and c['paired'].get(f'purer-{best}')
  return f'{records.fmt_diff(diff)} ({records.METHODS.get(best, best)})' if diff else '—'


def _mark(dataset: str) -> str:
  """† beside the datasets of MINI_NOTE."""
  return '†' if dataset in ('mini_imagenet', 'mixed') else ''


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
  measured = {m for s in records.SHOTS if (scenario, dataset, s) in cells
              for m in records.combined(cells[scenario, dataset, s])['methods']}
  paper = PAPER[scenario, dataset]
  rows = []
  for m in records.METHODS:
    if (m in ('random', 'pool', 'purer', 'purer+icfil') or m in paper or m in measured or
        (scenario == 'ss' and m in ('average', 'ota'))):  # one-arch pools
      rows.append(m)
  return rows


def render(cells: dict, out_dir: str) -> str:
  """The page (markdown) for `load_cells`' cells, with links relative to out_dir."""
  lines = [
      '# Results: the paper\'s table, measured here', '',
      'Generated by `python -m purer_jax.report docs/results` from `docs/results/<cell>/'
      'results.json`; do not edit by hand. 5-way accuracy % on fixed, paired meta-test tasks, '
      '± the 95% CI half-width. The paper\'s figures are from its poster (docs/DESIGN.md §9). '
      'Checkpoints are selected on meta-val tasks; the paper reports the best meta-*test* '
      'accuracy seen during training (docs/DESIGN.md §6, §11), so its figures are optimistic by '
      'that selection.', '',
      'The GFLOP columns give each method\'s meta-test cost per 5-way task (support '
      'adaptation and query prediction), from XLA\'s cost analysis of the compiled program. '
      'The pool read-out (no training) embeds the task with every teacher and classifies each '
      'query by its nearest support mean; its variant is chosen on meta-val.', '',
      'Each method is scored twice on the same tasks: with the paper\'s one test-time step '
      '("one step", config.meta\'s adaptation) and with test-time steps and lr chosen on '
      'meta-val for that method ("tuned"; — where the run did not tune). A method without '
      'test-time steps (the pool read-out) scores the same in both. In bold: the cell\'s PURER '
      'figure, the learner read-out (MAML\'s head or the prototype read-out of its features) '
      'that meta-val chose.', '',
      '| scenario | dataset | method | 1-shot, one step | 1-shot, tuned | 1-shot (paper) | '
      '1-shot GFLOP | 5-shot, one step | 5-shot, tuned | 5-shot (paper) | 5-shot GFLOP |',
      '|---|---|---|---|---|---|---|---|---|---|---|']
  for scenario, dataset in records.SCENARIOS:
    mark = _mark(dataset)
    for i, m in enumerate(_rows(scenario, dataset, cells)):
      row = [records.NAMES[scenario] if i == 0 else '',
             records.NAMES[dataset] + mark if i == 0 else '',
             records.METHODS[m] + ('‡' if m == 'dro' else '')]
      for k, shots in enumerate(records.SHOTS):
        cell = cells.get((scenario, dataset, shots))
        if m == 'dro':
          ours = ['quoted, not measured here', '—']
        elif cell is None:
          ours = ['not run yet', '—']
        else:
          ours = [records.fmt_acc(v) if v else '—' for v in (
              records.combined(cell, col)['methods'].get(m) for col in ('one_step', 'tuned'))]
          if m == records.learner_choice(cell['res']):  # the cell's PURER figure
            ours[0] = f'**{ours[0]}**'
        row += [*ours, PAPER[scenario, dataset].get(m, ('—', '—'))[k],
                records.fmt_gflop(cell, m)]
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
    label = f'{records.NAMES[slot[0]]} {records.NAMES[slot[1]]} {slot[2]}-shot'
    if cell is None:
      lines.append(f'| {label} | not run yet |' + ' |' * 8)
      continue
    res, c = cell['res'], records.learner_view(cell)
    rnd = c['paired'].get('purer-random')
    icf = records.combined(cell)['paired'].get('purer+icfil')  # ICFIL calibrates MAML's head
    it = (f"{res['best_it']:,} of {res['iterations']:,}" if 'best_it' in res and
          'iterations' in res else str(res.get('best_it', '—')))
    lines.append('| ' + ' | '.join([
        label, f"`{cell['name']}`", str(res.get('tasks', '—')),
        records.fmt_diff(rnd) if rnd else '—',
        _vs_best(c),
        records.fmt_diff(icf) if icf else '—', it,
        records.wall_time(res),
        _heldout(res.get('teachers_heldout')),
        f'`{_commit(res)}`' if records.field(res, 'commit', 'provenance') else '—']) + ' |')
  lines += ['', 'Paired differences are per-task means over the same tasks, ± their 95% CI '
            'half-width; MH\'s combine its two meta-test sets as a mean of independent '
            'estimates. PURER is the read-out meta-val chose (in bold above), except against '
            'PURER+ICFIL, which calibrates MAML\'s head.', '']
  for slot in _slots():
    if slot in cells:
      lines += _cell_section(slot, cells[slot], out_dir)
  return '\n'.join(lines).rstrip('\n') + '\n'


def _slots():
  return [(s, d, k) for s, d in records.SCENARIOS for k in records.SHOTS]


def _cell_section(slot, cell, out_dir) -> list:
  res = cell['res']
  lines = [f'## {records.NAMES[slot[0]]} {records.NAMES[slot[1]]}, {slot[2]}-shot '
           f'(`{cell["name"]}`)', '']
  if slot[1] in ('mini_imagenet', 'mixed'):
    lines += [f'† {MINI_NOTE}.', '']
  facts = ([f"meta-learner init: {res['init']}"] if 'init' in res else []) + (
      [f"best meta-val accuracy: {100 * res['best_val']:.2f}%"] if 'best_val' in res else [])
  if facts:
    lines += ['; '.join(facts) + '.', '']
  for line in (verdicts.eci_comparison(cell), verdicts.seed_spread(cell), verdicts.shortfall(
      cell, PAPER[slot[:2]]['purer'][records.SHOTS.index(slot[2])]), verdicts.tried(cell)):
    lines += [line, ''] if line else []
  if len(cell['datasets']) > 1:
    order = list(records.METHODS)
    methods = sorted({m for d in cell['datasets'].values() for m in d['methods']},
                     key=lambda m: order.index(m) if m in order else len(order))
    lines += ['| meta-test set | ' + ' | '.join(records.METHODS.get(m, m) for m in methods) +
              ' | PURER − Random |', '|---|' + '---|' * (len(methods) + 1)]
    for ds, d in cell['datasets'].items():
      rnd = (d['paired'] or {}).get('purer-random')
      lines.append(f'| {records.NAMES.get(ds, ds)} | ' + ' | '.join(
          records.fmt_acc(d['methods'][m]) if m in d['methods'] else '—' for m in methods) +
                   f" | {records.fmt_diff(rnd) if rnd else '—'} |")
    lines.append('')
  devs = deviations(res)
  lines.append('Deviations from the paper\'s protocol:')
  if devs is None:
    lines.append('unknown (this results.json records no `config`).')
  else:
    lines += [f'- {d}' for d in devs] or ['- none']
  for ds, d in cell['datasets'].items():
    if d.get('icfil'):
      where = f' on {records.NAMES.get(ds, ds)}' if len(cell['datasets']) > 1 else ''
      lines += ['', f'PURER+ICFIL{where}: `tune_icfil --params=best --test` on the best '
                f"checkpoint, settings chosen on meta-val: {records.fmt_settings(d['icfil'])}."]
  for icfil, title in ((False, 'Pseudo episodes (one row per class; support | query):'),
                       (True, 'ICFIL, meta-test task 0 (real support above its pseudo '
                              'support; similarities before and after calibration):')):
    pngs = _pngs(cell['dir'], out_dir, icfil)
    if pngs:
      lines += ['', title, '']
      lines += [f'![{p.rsplit("/", 1)[-1]}]({p})' for p in pngs]
  return lines + ['']


# The README's copy of the headline sits between these lines; `write` rewrites what is between.
HEADLINE_MARKS = ('<!-- headline: generated by python -m purer_jax.report docs/results -->',
                  '<!-- /headline -->')


def headline(cells: dict, page: str) -> str:
  """The table's headline (markdown): per cell PURER beside the paper's figure, the pool
  read-out with its paired difference and both meta-test costs, and PURER's paired difference
  to the best other baseline; `page` is the full page's link."""
  lines = ['| scenario | dataset | shots | PURER, read-out chosen on meta-val (paper) | '
           'pool read-out | PURER − pool | '
           'GFLOP per task, PURER / pool | PURER − best other baseline |',
           '|---|---|---|---|---|---|---|---|']
  vs_pool = []
  for scenario, dataset in records.SCENARIOS:
    for k, shots in enumerate(records.SHOTS):
      cell, paper = cells.get((scenario, dataset, shots)), PAPER[scenario, dataset]['purer'][k]
      row = [records.NAMES[scenario], records.NAMES[dataset] + _mark(dataset), str(shots)]
      c = cell and records.learner_view(cell)
      if not c or 'purer' not in c['methods']:
        lines.append('| ' + ' | '.join(row + ['not run yet'] + [''] * 4) + ' |')
        continue
      pool, diff = c['methods'].get('pool'), c['paired'].get('purer-pool')
      if diff:
        vs_pool.append(diff)
      others = {**c, 'methods': {m: v for m, v in c['methods'].items() if m != 'pool'}}
      proto = records.learner_choice(cell['res']) == 'purer_proto'
      row += [f"**{records.fmt_acc(c['methods']['purer'])}**{', prototype' * proto} ({paper})",
              records.fmt_acc(pool) if pool else 'not scored',
              records.fmt_diff(diff) if diff else '—',
              f"{records.fmt_gflop(cell, 'purer_proto' if proto else 'purer')} / "
              f"{records.fmt_gflop(cell, 'pool')}",
              _vs_best(others)]
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
  cells = records.load_cells(results_dir)
  page = render(cells, out_dir)
  with open(out, 'w', newline='\n') as f:
    f.write(page)
  root = os.path.dirname(out_dir)
  _update_headline(os.path.join(root, 'README.md'),
                   headline(cells, os.path.relpath(out, root).replace(os.sep, '/')))
  ablation.write(results_dir, out_dir)
  return out


def main(argv):
  if len(argv) not in (2, 3):
    raise SystemExit('usage: python -m purer_jax.report RESULTS_DIR [OUT.md]\n'
                     '  e.g. python -m purer_jax.report docs/results  (writes docs/RESULTS.md)')
  print('wrote', write(*argv[1:]))


if __name__ == '__main__':
  main(sys.argv)
