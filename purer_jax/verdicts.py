"""The sentences a cell's section of the results page prints under its table: ECI against
its twin (`eci_comparison`), the seed spread (`seed_spread`), the shortfall to the paper with
what would close it (`shortfall`) and the recipes tried for the cell that meta-val did not choose
(`tried`). A twin or tried run is named in the cell's results.json from the results folder, and
refused when it is not the run it claims to be.
"""
import json
import math
import os

from purer_jax import ablation, records


def eci_comparison(cell: dict) -> str:
  """A sentence setting the cell's run against its ECI twin (`eci_twin`: the same recipe and
  teachers with ECI the other way, under the same results folder): meta-vals and the paired
  meta-test difference, each on its read-out chosen on meta-val. Without one, its seed twin's
  pair where that run has one (a pool is rebuilt only on the kind of CPU that trained it)."""
  res = cell['res']
  state, other = ('on', 'off') if records.eci_on(res) else ('off', 'on')
  if res.get('eci_twin'):
    mine, theirs, diff = _eci_pair(cell)
    verdict = ('chosen on meta-val' if mine >= theirs else
               'declared before the run, though meta-val prefers the other way')
    return (f"ECI: {state} in this run, {verdict} ({mine:.2f} against {theirs:.2f} with it "
            f"{other}, `{res['eci_twin']}`, the same teachers); meta-test ECI on − off {diff} "
            "on the same tasks, each run's read-out chosen on meta-val.")
  line = f'ECI: {state} (no run of this recipe with it {other} on these teachers).'
  seed, path = _twin(cell, 'seed_twin') if res.get('seed_twin') else ({}, None)
  if seed.get('eci_twin'):  # the cell's dir kept: twins are named from the results folder
    mine, theirs, diff = _eci_pair(dict(cell, res=seed, path=path))
    on, off = (mine, theirs) if records.eci_on(seed) else (theirs, mine)
    line += (f" On its seed twin's: meta-val {on:.2f} with it on against {off:.2f} off "
             f"(`{res['seed_twin']}`, `{seed['eci_twin']}`, the same teachers); meta-test "
             f"ECI on − off {diff} on the same tasks, each run's read-out chosen on meta-val.")
  return line


def _eci_pair(cell: dict) -> tuple:
  """(the run's meta-val, its `eci_twin`'s, their meta-test ECI on − off, formatted)."""
  res = cell['res']
  twin, path = _twin(cell, 'eci_twin')
  if (records.eci_on(twin) == records.eci_on(res)
      or twin.get('teachers_heldout') != res.get('teachers_heldout')):
    raise ValueError(f"{path} is not {cell['path']}'s run with ECI the other way on its teachers")
  on, off = (res, twin) if records.eci_on(res) else (twin, res)
  return _val(res), _val(twin), records.fmt_diff(records.paired_diff(_chosen(on), _chosen(off)))


def _chosen(res: dict) -> list:
  """Per-task meta-test accuracy of the run's read-out chosen on meta-val."""
  return res['per_task'][records.learner_choice(res)]


def _val(res: dict) -> float:
  """Meta-val accuracy (%) of the run's read-out chosen on meta-val."""
  return 100 * (res.get('readout_val') or {}).get(records.learner_choice(res), res.get('best_val'))


def seed_spread(cell: dict):
  """A sentence setting the cell's learner (its read-out chosen on meta-val) against the run of
  results.json's `seed_twin`: the same config with another seed (new teachers, new inversion)
  under the same results folder, paired on the same tasks, beside the cell's task CI; None
  without one."""
  res = cell['res']
  if not res.get('seed_twin'):
    return None
  twin, path = _twin(cell, 'seed_twin')
  flat, other = (records.flatten(r.get('config') or {}) for r in (res, twin))
  # What else is scored does not change the learner: the twin may skip the baselines.
  ignored = records.NOT_PROTOCOL + ('eval.tune_adapt',)
  if flat.get('seed') == other.get('seed') or not _same_tasks(res, twin) or any(
      not records.same(flat.get(k), other.get(k)) for k in set(flat) | set(other)
      if not any(k == p or (p.endswith('.') and k.startswith(p)) for p in ignored)):
    raise ValueError(f"{path} is not {cell['path']}'s config with another seed")
  mine, theirs = _chosen(res), _chosen(twin)
  return (f"Seed spread: seed {other.get('seed')} (new teachers and inversion, "
          f"`{res['seed_twin']}`) scores {100 * records.summary(theirs)[0]:.2f} against this "
          f"run's {records.fmt_acc(dict(zip(('acc', 'ci95'), records.summary(mine))))}: "
          f"{records.fmt_diff(records.paired_diff(theirs, mine))} paired on the same tasks.")


def shortfall(cell: dict, paper: str):
  """A sentence for a cell whose learner (the read-out chosen on meta-val) is below `paper`
  (the paper's figure, e.g. '39.15 ± 0.70'): the gap, and the iterations and hours of
  meta-training that would close it if meta-val kept rising as it did, a line in log(iteration)
  fitted to the run's meta-val curve (MAML's head's, said so, where a prototype read-out chosen at
  the end was not tracked in training); None at or above the paper."""
  res = cell['res']
  mine = 100 * records.learner_view(cell)['methods']['purer']['acc']
  gap = float(paper.split()[0]) - mine
  if gap <= 0:
    return None
  head = f'Below the paper by {gap:.2f} points.'
  key = 'val_acc_proto' if records.learner_choice(res) == 'purer_proto' else 'val_acc'
  points = [p for p in res.get('val_curve') or [] if p['it'] > 0]
  curve = [(p['it'], 100 * p[key]) for p in points if key in p]
  where = f'a line fitted to its {len(curve)} meta-val points'
  if key == 'val_acc_proto' and not curve:  # a run before the read-out was tracked in training
    head += ' The chosen prototype read-out is scored once, at the end'
    curve = [(p['it'], 100 * p['val_acc']) for p in points]
    if not curve:
      return head + '.'
    # MAML's head's slope stands in for the prototype read-out's, and the page says so.
    head += (", so its rise is taken as MAML's head's (meta-val "
             + ' → '.join(f'{v:.2f}' for _, v in curve) + ' over iterations '
             + ', '.join(f'{it:,}' for it, _ in curve) + ').')
    where = f"a line fitted to MAML's head's {len(curve)} meta-val points"
  if len(curve) < 2:
    return head + ' Its meta-val curve has fewer than two points: no extrapolation.'
  x = [math.log(it) for it, _ in curve]
  y = [v for _, v in curve]
  mx, my = sum(x) / len(x), sum(y) / len(y)
  slope = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)
  if slope <= 0:
    return head + (f' Meta-val did not rise with iterations ({where}): more of them would '
                   'not close it.')
  last = curve[-1][0]
  needed = last * math.exp(gap / slope)
  ran = res.get('iterations') or last
  per_it = (records.meta_train_seconds(res.get('timing') or {}) or 0) / ran
  hours = f': about {needed * per_it / 3600:,.1f} h of meta-training here' if per_it else ''
  return (head + f' Meta-val rose {slope * math.log(2):.2f} points per doubling of iterations '
          f'({where}); at that rate the gap closes at about {needed:,.0f} iterations against '
          f'the run\'s {ran:,}{hours}.')


def tried(cell: dict):
  """Lines listing the runs of results.json's `tried` (folders under the same results
  folder: recipes tried for this cell on its meta-test tasks that meta-val did not choose), each
  with what it changes from this run, its meta-val against this run's, its meta-test paired
  difference and its wall time; None without any. Refused if meta-val would have chosen one."""
  res = cell['res']
  if not res.get('tried'):
    return None
  mine, slot, out = _val(res), records.slot_of(res, cell['path']), []
  for name in res['tried']:
    other, path = _load(cell, name, 'tried')
    if records.slot_of(other, path) != slot or not _same_tasks(res, other):
      raise ValueError(f"{path} is not a run of {cell['path']}'s cell on its meta-test tasks")
    theirs = _val(other)
    if theirs > mine:
      raise ValueError(f"{path}: meta-val prefers it ({theirs:.2f}) to {cell['path']} "
                       f'({mine:.2f}); it is the cell, not a run tried for it')
    what = '; '.join(ablation.changes(other, res)) or 'the same recipe'
    # Two decimals would print a near-tie as a tie; three show which way meta-val went.
    val = (f'{theirs:.2f}' if f'{theirs:.2f}' != f'{mine:.2f}' else
           f'{theirs:.3f} against {mine:.3f}')
    out.append(f"- `{name}` ({what}): meta-val {val}, meta-test "
               f"{records.fmt_diff(records.paired_diff(_chosen(other), _chosen(res)))} "
               f"against this run; {records.wall_time(other)}.")
  return '\n'.join([f"Tried for this cell and not chosen on meta-val (this run's {mine:.2f}); "
                    'each run\'s changes from this run:'] + out)


def _same_tasks(a: dict, b: dict) -> bool:
  """Whether two records scored the same meta-test tasks (their count and eval.seed)."""
  return a.get('tasks') == b.get('tasks') and records.same(
      *(records.flatten(r.get('config') or {}).get('eval.seed') for r in (a, b)))


def _twin(cell: dict, field: str):
  """(record, path) of the run a cell's results.json names in `field`, under the same folder."""
  return _load(cell, cell['res'][field], field)


def _load(cell: dict, name: str, field: str):
  path = os.path.join(os.path.dirname(cell['dir']), name, 'results.json')
  if not os.path.isfile(path):
    raise ValueError(f"{cell['path']} names {field} {name!r}, but {path} is missing")
  with open(path) as f:
    return json.load(f), path
