"""verdicts: the sentences under a cell's table (ECI against its twin, seed spread, shortfall)."""
import json

import pytest

from purer_jax import config as config_lib
from purer_jax import records, utils, verdicts


def _methods(**accs):
  return {m: {'acc': a, 'ci95': 0.0068} for m, a in accs.items()}


def _cell(acc, curve, seconds=3600.0, iterations=1000):
  res = {'methods': {'purer': {'acc': acc, 'ci95': 0.01}}, 'paired': {}, 'per_task': {},
         'iterations': iterations, 'timing': {'meta_train_s': seconds},
         'val_curve': [{'it': it, 'val_acc': v} for it, v in curve]}
  return {'res': res, 'datasets': {'cifar_fs': {'methods': res['methods'], 'paired': {},
                                                'per_task': res['per_task']}}}


def test_shortfall_extrapolates_the_meta_val_curve_to_the_paper():
  assert verdicts.shortfall(_cell(0.40, [(500, 0.30), (1000, 0.31)]), '39.15 ± 0.70') is None
  # 2 points below the paper; meta-val gains 1 point per doubling: 4x the run's 1,000
  # iterations, at its 3.6 s per iteration.
  line = verdicts.shortfall(_cell(0.3715, [(500, 0.30), (1000, 0.31)]), '39.15 ± 0.70')
  assert line.startswith('Below the paper by 2.00 points.')
  assert 'about 4,000 iterations against the run\'s 1,000: about 4.0 h' in line, line
  flat = verdicts.shortfall(_cell(0.30, [(500, 0.30), (1000, 0.29)]), '39.15')
  assert 'did not rise' in flat
  assert 'fewer than two points' in verdicts.shortfall(_cell(0.30, [(500, 0.3)]), '39.15')


def test_shortfall_of_an_untracked_read_out_borrows_maml_heads_slope_and_says_so():
  cell = _cell(0.3715, [(500, 0.25), (1000, 0.26)])
  cell['res']['readout_val'] = {'purer': 0.26, 'purer_proto': 0.30}
  cell['res']['per_task'].update({'purer': [0.3], 'purer_proto': [0.3]})
  cell['res']['methods']['purer_proto'] = {'acc': 0.3715, 'ci95': 0.01}
  line = verdicts.shortfall(cell, '39.15')
  assert "taken as MAML's head's (meta-val 25.00 → 26.00 over iterations 500, 1,000)" in line
  assert "fitted to MAML's head's 2 meta-val points" in line, line
  assert 'about 4,000 iterations against the run\'s 1,000: about 4.0 h' in line, line


def test_shortfall_without_a_curve_still_reads_as_a_sentence():
  cell = _cell(0.30, [])
  cell['res']['readout_val'] = {'purer': 0.26, 'purer_proto': 0.30}
  cell['res']['per_task'].update({'purer': [0.3], 'purer_proto': [0.3]})
  cell['res']['methods']['purer_proto'] = {'acc': 0.30, 'ci95': 0.01}
  assert verdicts.shortfall(cell, '39.15').endswith('scored once, at the end.')


def test_shortfall_extrapolates_the_prototype_read_out_when_training_tracked_it():
  cell = _cell(0.30, [(500, 0.25), (1000, 0.25)])
  for p, v in zip(cell['res']['val_curve'], (0.30, 0.31)):
    p['val_acc_proto'] = v
  cell['res']['readout_val'] = {'purer': 0.25, 'purer_proto': 0.31}
  cell['res']['per_task'].update({'purer': [0.3], 'purer_proto': [0.3215]})
  cell['res']['methods']['purer_proto'] = {'acc': 0.3715, 'ci95': 0.01}
  line = verdicts.shortfall(cell, '39.15')
  assert 'about 4,000 iterations' in line and 'No extrapolation' not in line, line


def test_cell_names_its_eci_twin_and_pairs_them(tmp_path):
  """A cell with `eci_twin` sets itself against that run (ECI the other way, same teachers);
  a twin with ECI the same way, or on other teachers, is refused."""
  off = config_lib.build('ss', 'fast').to_dict()
  on = config_lib.build('ss', 'fast').to_dict()
  on['eci']['start'] = 1 / 15
  per_off, per_on = [0.4, 0.5, 0.3, 0.6], [0.3, 0.5, 0.3, 0.4]
  record = lambda config, per, val, **kw: dict(
      scenario='ss', dataset='cifar_fs', ways=5, shots=1, tasks=4, config=config,
      methods=_methods(purer=sum(per) / 4), per_task={'purer': per}, best_val=val,
      teachers_heldout=[0.8, 0.9], **kw)
  results = tmp_path / 'results'
  utils.write_json(str(results / 'cell' / 'results.json'),
                   record(off, per_off, 0.33, eci_twin='ablation/eci'))
  utils.write_json(str(results / 'ablation' / 'eci' / 'results.json'), record(on, per_on, 0.30))
  cell = records.load_cells(str(results))['ss', 'cifar_fs', 1]
  assert records.eci_on(json.load(open(results / 'ablation' / 'eci' / 'results.json')))
  line = verdicts.eci_comparison(cell)
  assert line.startswith('ECI: off in this run, chosen on meta-val (33.00 against 30.00')
  assert 'meta-test ECI on − off -7.50 ±' in line
  utils.write_json(str(results / 'ablation' / 'eci' / 'results.json'), record(off, per_on, 0.30))
  with pytest.raises(ValueError, match='ECI the other way'):
    verdicts.eci_comparison(cell)
  assert verdicts.eci_comparison(dict(cell, res=dict(cell['res'], eci_twin=None))) == (
      'ECI: off (no run of this recipe with it on on these teachers).')


def test_cell_shows_its_seed_twin_beside_its_task_ci(tmp_path):
  """`seed_twin` names the same config with another seed; any other difference is refused."""
  c0, c1 = config_lib.build('ss', 'fast,cell').to_dict(), config_lib.build('ss', 'fast').to_dict()
  c1['seed'] = 1  # the twin may score the learner alone
  rec = lambda config, per: dict(scenario='ss', dataset='cifar_fs', ways=5, shots=1, tasks=4,
                                 config=config, methods=_methods(purer=sum(per) / 4),
                                 per_task={'purer': per})
  results = tmp_path / 'results'
  utils.write_json(str(results / 'cell' / 'results.json'),
                   dict(rec(c0, [0.4, 0.5, 0.3, 0.6]), seed_twin='ablation/seed1'))
  utils.write_json(str(results / 'ablation' / 'seed1' / 'results.json'),
                   rec(c1, [0.3, 0.5, 0.3, 0.4]))
  cell = records.load_cells(str(results))['ss', 'cifar_fs', 1]
  line = verdicts.seed_spread(cell)
  assert line.startswith('Seed spread: seed 1 (new teachers and inversion, `ablation/seed1`) '
                         "scores 37.50 against this run's 45.00 ± ")
  assert ': -7.50 ± ' in line and line.endswith(' paired on the same tasks.')
  for field, value in (('eval', dict(c1['eval'], seed=7)), ('meta', dict(c1['meta'], shots=5))):
    utils.write_json(str(results / 'ablation' / 'seed1' / 'results.json'),
                     rec(dict(c1, **{field: value}), [0.3, 0.5, 0.3, 0.4]))
    with pytest.raises(ValueError, match='another seed'):  # other tasks, another recipe
      verdicts.seed_spread(cell)


def test_cell_without_an_eci_twin_shows_its_seed_twins_pair(tmp_path):
  """A pool is rebuilt only on the CPU that trained it: a cell's ECI evidence may be its seed
  twin's pair, named as such; that pair is held to the same rule (other teachers: refused)."""
  off = config_lib.build('ss', 'fast').to_dict()
  seed1, on1 = dict(off, seed=1), dict(off, seed=1, eci=dict(off['eci'], start=1 / 15))
  record = lambda config, per, val, teachers, **kw: dict(
      scenario='ss', dataset='cifar_fs', ways=5, shots=1, tasks=4, config=config,
      methods=_methods(purer=sum(per) / 4), per_task={'purer': per}, best_val=val,
      teachers_heldout=teachers, **kw)
  results = tmp_path / 'results'
  utils.write_json(str(results / 'cell' / 'results.json'), record(
      off, [0.4, 0.5, 0.3, 0.6], 0.33, [0.8, 0.9], seed_twin='ablation/seed1'))
  utils.write_json(str(results / 'ablation' / 'seed1' / 'results.json'), record(
      seed1, [0.4, 0.4, 0.3, 0.5], 0.32, [0.7, 0.9], eci_twin='ablation/eci1'))
  utils.write_json(str(results / 'ablation' / 'eci1' / 'results.json'),
                   record(on1, [0.3, 0.4, 0.3, 0.4], 0.31, [0.7, 0.9]))
  cell = records.load_cells(str(results))['ss', 'cifar_fs', 1]
  line = verdicts.eci_comparison(cell)
  assert line.startswith('ECI: off (no run of this recipe with it on on these teachers). '
                         "On its seed twin's: meta-val 31.00 with it on against 32.00 off "
                         '(`ablation/seed1`, `ablation/eci1`, the same teachers)'), line
  assert 'meta-test ECI on − off -5.00 ±' in line
  utils.write_json(str(results / 'ablation' / 'eci1' / 'results.json'),
                   record(on1, [0.3, 0.4, 0.3, 0.4], 0.31, [0.8, 0.9]))
  with pytest.raises(ValueError, match='ablation/eci1.*ECI the other way on its teachers'):
    verdicts.eci_comparison(cell)


def test_cell_lists_the_runs_tried_for_it_that_meta_val_did_not_choose(tmp_path):
  """`tried` names runs of the cell's slot on its tasks: each with its changes, meta-val and
  paired meta-test; one meta-val prefers, or of another cell or other tasks, is refused."""
  c0 = config_lib.build('ss', 'fast').to_dict()
  c1 = dict(c0, teachers=dict(c0['teachers'], augment='flip'))
  rec = lambda config, per, val, **kw: dict(dict(
      scenario='ss', dataset='cifar_fs', ways=5, shots=1, tasks=4, config=config,
      methods=_methods(purer=sum(per) / 4), per_task={'purer': per}, best_val=val), **kw)
  results = tmp_path / 'results'
  utils.write_json(str(results / 'cell' / 'results.json'),
                   rec(c0, [0.4, 0.5, 0.3, 0.6], 0.33, tried=['ablation/aug']))
  tried = lambda config, val, **kw: utils.write_json(
      str(results / 'ablation' / 'aug' / 'results.json'),
      rec(config, [0.3, 0.5, 0.3, 0.4], val, **kw))
  tried(c1, 0.32)
  cell = records.load_cells(str(results))['ss', 'cifar_fs', 1]
  assert verdicts.tried(dict(cell, res=dict(cell['res'], tried=None))) is None
  line = verdicts.tried(cell)
  assert line.startswith("Tried for this cell and not chosen on meta-val (this run's 33.00)")
  assert ("- `ablation/aug` (`teachers.augment` '' → 'flip'): meta-val 32.00, meta-test "
          '-7.50 ± ') in line, line
  tried(c1, 0.32996)
  assert 'meta-val 32.996 against 33.000,' in verdicts.tried(cell)
  tried(c1, 0.34)
  with pytest.raises(ValueError, match='meta-val prefers it'):
    verdicts.tried(cell)
  tried(dict(c1, eval=dict(c1['eval'], seed=7)), 0.32)
  with pytest.raises(ValueError, match='not a run of .* on its meta-test tasks'):
    verdicts.tried(cell)
  tried(c1, 0.32, shots=5)
  with pytest.raises(ValueError, match='not a run of'):
    verdicts.tried(cell)
