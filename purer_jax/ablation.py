"""The recipe ablation page (SS CIFAR-FS): docs/ABLATION.md and the time-to-accuracy figure,
written by `python -m purer_jax.report docs/results` beside the results page.

Every SS CIFAR-FS run under the results folder (its cells and `ablation/<run>/`) is paired with
a `:quick` control run of its shots (`pair_with_controls`) and listed with the settings it
changes (`changes`) and its paired meta-test difference to the control.
"""
import json
import os

from purer_jax import records, time_to_accuracy
from purer_jax import workdir as workdir_lib

# Fields that do not change what meta-training learns: left out of a run's "changes".
NOT_LEVER = records.NOT_PROTOCOL + ('eval.', 'icfil.', 'train.log_every', 'train.ckpt_every',
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
  out = {k: v for k, v in records.flatten(res['config']).items()
         if not any(k == p or (p.endswith('.') and k.startswith(p)) for p in NOT_LEVER)}
  if 'init' in res:  # the init used: `auto` resolved for the run's pool
    out['meta.init'] = res['init']
  if not records.eci_on(res):
    # ECI never switched on: its other settings did not change what meta-training learnt.
    out = dict({k: v for k, v in out.items() if not k.startswith('eci.')}, **{'eci.start': 1.0})
  return out


def _changed(res: dict, control: dict) -> list:
  """(field, control's value, run's value) for each meta-training setting that differs."""
  from purer_jax import config as config_lib
  # A field added after a run was recorded takes its default, which keeps the old behaviour.
  base = _lever_config({'config': config_lib.base().to_dict()})
  a, b = _lever_config(control), _lever_config(res)
  get = lambda d, k: d[k] if k in d else base.get(k)
  return [(k, get(a, k), get(b, k)) for k in sorted(set(a) | set(b))
          if not records.same(get(a, k), get(b, k))]


def changes(res: dict, control: dict) -> list:
  """`field a -> b` for each meta-training setting where the run differs from the control."""
  return [f'`{k}` {records.fmt_value(a)} → {records.fmt_value(b)}'
          for k, a, b in _changed(res, control)]


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
    ("distilling the pool's representation", ('distil.',)),
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
  return records.per_task_columns(res)['one_step'].get('purer')


def render(runs: list, figure: str = None, empty_figure: str = None) -> str:
  """The page (markdown) for `load_runs`' runs; `figure`: the time-to-accuracy figure's link,
  `empty_figure`: the one from an empty workdir."""
  lines = ['# Recipe ablation: SS CIFAR-FS', '',
           'Generated by `python -m purer_jax.report docs/results` from every SS CIFAR-FS '
           '`results.json` under `docs/results/`; do not edit by hand. Each run is compared with '
           'a `:quick` run of its shots (the control: the one it names, whose teachers it '
           'reused, else one on the same teachers where there is one; always the same meta-val '
           'and meta-test tasks). Meta-val is the best of the run\'s meta-val evaluations '
           '(checkpoint selection); meta-test is that checkpoint on the 600 fixed meta-test tasks '
           'with config.meta\'s test-time adaptation; the paired difference is per task against '
           'the control, ± its 95% CI half-width.', '']
  for shots in records.SHOTS:
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
      acc = records.summary(scores)
      # A control after another on its teachers re-runs it.
      twin = (_named_or_same_teachers(r, controls[:controls.index(r)]) if control is None
              else None)
      if control is None and twin is None:
        what, diff = 'control (`:quick`)', None
      elif control is None:  # the recipe again on the same teachers: the run-to-run noise
        what = (f"control (`:quick`), run again on the teachers of `{twin['name']}` (other code "
                'or seed: the paired difference is run-to-run noise)')
        diff = records.summary([x - y for x, y in zip(scores, _default_scores(twin['res']))])
      else:
        what = '; '.join(changes(res, control['res'])) or 'the control recipe, run again'
        if res.get('teachers_heldout') != control['res'].get('teachers_heldout'):
          recipe = dict(LEVERS)["teachers' recipe"]
          moved = any(k in recipe for k, _, _ in _changed(res, control['res']))
          whose = 'its teachers by the changed recipe' if moved else 'other teachers of its recipe'
          what += f" (control `{control['name']}`, {whose})"
        elif several:
          what += f" (control `{control['name']}`, the same teachers)"
        diff = records.summary([x - y for x, y in zip(scores, _default_scores(control['res']))])
      lines.append('| ' + ' | '.join([
          f"`{r['name']}`", what,
          f"{100 * res['best_val']:.2f}" if 'best_val' in res else '—',
          _pm(acc), _pm(diff, signed=True) if diff else '—',
          records.wall_time(res), records.fmt_gflop(r, 'purer')]) + ' |')
      tuned = (res.get('adaptation') or {}).get('purer')
      per, cols = res.get('per_task', {}), records.per_task_columns(res)
      if tuned and 'purer' in cols['tuned']:
        lines.append(_against(r, ' + tuned adaptation', f"test-time {tuned['steps']} steps at lr "
                              f"{records.fmt_value(tuned['lr'])}, chosen on meta-val",
                              tuned['val_acc'], cols['tuned']['purer'], scores,
                              _tuned_gflop(r)))
      if 'purer_proto' in per and 'purer' in per:
        lines.append(_against(r, ' + prototype read-out', "the learner's features, nearest "
                              "support mean instead of MAML's head",
                              (res.get('readout_val') or {}).get('purer_proto'), per['purer_proto'],
                              scores, records.fmt_gflop(r, 'purer_proto')))
      if 'pool' in per and 'purer' in per:
        v = res['pool_variant']
        lines.append(_against(r, ': pool read-out', f"the teachers' own {v['layer']}, "
                              f"{v['norm']}, {v['metric']} (no training), chosen on meta-val",
                              v['val_acc'], per['pool'], scores, records.fmt_gflop(r, 'pool'),
                              "the same run's PURER"))
      icf = records.with_icfil({'methods': res['methods'], 'paired': res.get('paired')}, res,
                               r['dir'])
      if icf.get('icfil'):
        m, d = icf['methods']['purer+icfil'], icf['paired']['purer+icfil']
        lines.append(f"| `{r['name']}` + ICFIL | ICFIL at meta-test "
                     f"({records.fmt_settings(icf['icfil'])}), chosen on "
                     f'meta-val | — | {records.fmt_acc(m)} | {records.fmt_diff(d)} '
                     '(vs the same run) | — | — |')
    lines.append('')
  lines += _against_pool(runs)
  lines += time_to_accuracy.section(runs, empty_figure)
  lines += ['## Levers', '', 'The runs above that move each lever of the recipe (a run may move '
            'several: see its changes).', '', '| lever | 1-shot runs | 5-shot runs |',
            '|---|---|---|']
  for lever, fields in LEVERS:
    cols = []
    for shots in records.SHOTS:
      names = _lever_runs(pair_with_controls(runs, shots), fields)
      cols.append(', '.join(f'`{n}`' for n in names) or 'not measured yet')
    lines.append(f'| {lever} | {cols[0]} | {cols[1]} |')
  lines.append('')
  if figure:
    lines += ['Meta-val accuracy against meta-training wall-clock minutes (the load differed '
              'between runs: see each run\'s wall time and its results.json):', '',
              f'![time to accuracy]({figure})', '']
  return '\n'.join(lines).rstrip('\n') + '\n'


def _against_pool(runs: list) -> list:
  """The section that sets every run's learner against the pool read-out on its teachers."""
  lines = ['## Against the pool read-out', '',
           "Each run's learner (the read-out its meta-val chose: MAML's head or the prototype "
           "read-out of its features) against the teachers' own read-out on the same 600 tasks "
           '(no training; its variant chosen on meta-val), paired per task.', '']
  for shots in records.SHOTS:
    mine = [r for r in runs
            if r['res']['shots'] == shots and 'pool' in r['res'].get('per_task', {})]
    if not mine:
      continue
    lines += [f'### {shots}-shot', '', '| run | learner read-out | learner | pool | learner − pool '
              '| GFLOP per task, learner / pool | wall time |', '|---|---|---|---|---|---|---|']
    best = None
    for r in mine:
      per, m = r['res']['per_task'], records.learner_choice(r['res'])
      diff = records.summary([x - y for x, y in zip(per[m], per['pool'])])
      best = max(best or (diff, r, m), (diff, r, m), key=lambda t: t[0][0])
      lines.append(f"| `{r['name']}` | {records.readout_name(m)} | "
                   f"{_pm(records.summary(per[m]))} | {_pm(records.summary(per['pool']))} | "
                   f"{_pm(diff, signed=True)} | {records.fmt_gflop(r, m)} / "
                   f"{records.fmt_gflop(r, 'pool')} | {records.wall_time(r['res'])} |")
    (d, ci), r, m = best
    lines += ['', (f"**A learner beats the pool at {shots}-shot**: `{r['name']}`, "
                   f'learner − pool {_pm((d, ci), signed=True)}.') if d - ci > 0 else
              (f'**No learner beats the pool at {shots}-shot yet.** The closest is '
               f"`{r['name']}` ({records.readout_name(m)}), "
               f'learner − pool {_pm((d, ci), signed=True)}.'), '']
  return lines


def _pm(summary, signed: bool = False) -> str:
  """`records.summary`'s (mean, CI half-width) in points: '41.55 ± 0.77', or '+3.01 ± 0.60'
  signed."""
  return f"{100 * summary[0]:{'+' if signed else ''}.2f} ± {100 * summary[1]:.2f}"


def _against(r: dict, label: str, what: str, val, scores: list, base: list, gflop: str,
             vs: str = 'the same run') -> str:
  """A row for another scoring of run r: its meta-val `val` and per-task meta-test `scores`,
  paired against `base` on the same tasks, and its meta-test cost."""
  diff = records.summary([x - y for x, y in zip(scores, base)])
  return (f"| `{r['name']}`{label} | {what} | {'—' if val is None else f'{100 * val:.2f}'} | "
          f'{_pm(records.summary(scores))} | {_pm(diff, signed=True)} (vs {vs}) | — | {gflop} |')


def _tuned_gflop(r: dict) -> str:
  """PURER's meta-test GFLOP at its tuned adaptation (an earlier record's `cost_gflop` has it
  under `purer`, where its scores were the tuned ones)."""
  res = r['res']
  if 'tuned' in res:
    cost = res['tuned'].get('cost_gflop', {}).get('purer')
    return '—' if cost is None else f'{cost:.2f}'
  return records.fmt_gflop(r, 'purer')


def plot_time_to_accuracy(runs: list, path: str) -> None:
  """Meta-val accuracy against meta-training wall minutes, one panel per shots."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(records.SHOTS), figsize=(11, 4))
  for ax, shots in zip(axes, records.SHOTS):
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


def write(results_dir: str, out_dir: str) -> None:
  """Writes out_dir/ABLATION.md for the runs under results_dir and, if there are any, the
  figure it shows (out_dir/figures/time_to_accuracy.png)."""
  runs = load_runs(results_dir)
  figure = empty = None
  if runs:
    os.makedirs(os.path.join(out_dir, 'figures'), exist_ok=True)
    figure = 'figures/time_to_accuracy.png'
    plot_time_to_accuracy(runs, os.path.join(out_dir, figure))
  if time_to_accuracy.from_empty(runs):
    empty = 'figures/time_to_accuracy_from_empty.png'
    time_to_accuracy.plot(runs, os.path.join(out_dir, empty))
  with open(os.path.join(out_dir, 'ABLATION.md'), 'w', newline='\n') as f:
    f.write(render(runs, figure, empty))
