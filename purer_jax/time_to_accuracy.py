"""Time to accuracy from an empty workdir: the ablation page's section and its figure.

A run counts when its teachers were trained by the run itself (results.json's
`teachers_source`), so its clock starts at an empty workdir. Its meta-val curve is placed on
that clock: the minutes before meta-training (teachers, data, compiling), then the logged
meta-training minutes stretched to the recorded meta-training time (the logs time the steps,
not the meta-val evaluations between them). A run may name, in `time_control`, the `:quick` run
it was timed against the same day (its results.json's timing note says how close in time); the
section gives their ratio.
"""
import os

from purer_jax import records

PAPER_1SHOT = 38.66  # PURER, SS CIFAR-FS 5-way 1-shot (docs/RESULTS.md)


def from_empty(runs: list) -> list:
  """The 1-shot runs whose teachers were trained in the run, with a meta-val curve."""
  return [r for r in runs if r['res']['shots'] == 1 and r['res'].get('val_curve')
          and str((r['res'].get('teachers_source') or {}).get('trained', '')).startswith(
              'in this run')]


def timeline(res: dict) -> tuple:
  """([(wall minutes from the empty workdir, meta-val %)], end minute) of one run."""
  t, curve = res['timing'], res['val_curve']
  pre = (t['wall_time_s'] - t['meta_train_s'] - t['eval_s']) / 60
  done = curve[-1]['it'] == res['iterations'] and curve[-1]['minutes'] > 0
  scale = t['meta_train_s'] / 60 / curve[-1]['minutes'] if done else 1.0
  return ([(pre + scale * p['minutes'], 100 * p['val_acc']) for p in curve],
          t['wall_time_s'] / 60)


def section(runs: list, figure: str = None) -> list:
  """The page's lines: a table of the runs from an empty workdir, each one's ratio of wall
  time to its `time_control`, and the figure."""
  mine = from_empty(runs)
  if not mine:
    return []
  lines = ['## Time to accuracy from an empty workdir', '',
           '1-shot runs whose teachers were trained by the run: the wall time a user waits from '
           "an empty workdir, teachers included. Meta-test is the learner's read-out that "
           f'meta-val chose; the paper reports {PAPER_1SHOT}.', '',
           '| run | wall time | best meta-val | meta-test (read-out) |', '|---|---|---|---|']
  by_name = {r['name']: r for r in runs}
  pairs = []
  for r in mine:
    res = r['res']
    m = records.learner_choice(res)
    acc = records.fmt_acc(res['methods'][m]) if m in res.get('methods', {}) else '—'
    lines.append(f"| `{r['name']}` | {records.wall_time(res)} | {100 * res['best_val']:.2f} | "
                 f'{acc} ({records.readout_name(m)}) |')
    control = by_name.get(res.get('time_control'))
    if control is not None:
      pairs.append((r, m, control, records.learner_choice(control['res'])))
  lines.append('')
  for r, m, c, mc in pairs:
    ratio = r['res']['timing']['wall_time_s'] / c['res']['timing']['wall_time_s']
    lines += [f"`{r['name']}` against `{c['name']}`, both from empty workdirs the same day: "
              f"{100 * r['res']['methods'][m]['acc']:.2f} against "
              f"{100 * c['res']['methods'][mc]['acc']:.2f} on meta-test, in "
              f"{records.fmt_time(r['res']['timing']['wall_time_s'])} against "
              f"{records.fmt_time(c['res']['timing']['wall_time_s'])}: **×{ratio:.2f}** of the "
              'wall time.', '']
  if figure:
    lines += ['Meta-val against wall-clock minutes from an empty workdir (a star: the meta-test '
              'score at the end of the run):', '', f'![time to accuracy from an empty workdir]'
              f'({figure})', '']
  return lines


def plot(runs: list, path: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(10, 4.5))
  colours = plt.get_cmap('tab20').colors  # more runs than tab10 has colours
  for i, r in enumerate(from_empty(runs)):
    points, end = timeline(r['res'])
    line, = ax.plot([x for x, _ in points], [y for _, y in points], marker='o', ms=3,
                    label=r['name'], color=colours[i % len(colours)])
    m = records.learner_choice(r['res'])
    if m in r['res'].get('methods', {}):
      ax.plot([end], [100 * r['res']['methods'][m]['acc']], marker='*', ms=11,
              color=line.get_color())
  ax.axhline(PAPER_1SHOT, ls='--', color='grey', lw=1, label=f'paper, meta-test {PAPER_1SHOT}')
  ax.set(title='SS CIFAR-FS 1-shot, from an empty workdir',
         xlabel='wall-clock minutes, teachers included', ylabel='meta-val accuracy % (star: '
         'meta-test)')
  ax.grid(alpha=.3)
  ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1))  # beside, not over, the curves
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=100, metadata={'Software': None})
  plt.close(fig)
