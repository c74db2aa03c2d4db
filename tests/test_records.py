"""records: reading committed results.json files."""
from purer_jax import records


def test_a_recorded_eci_iteration_reads_as_a_fraction_of_its_run():
  flat = records.flatten({'eci': {'adv_start': 250}, 'train': {'iterations': 6000}})
  assert flat == {'eci.start': 250 / 6000, 'train.iterations': 6000}
  # Starting at or after the last iteration is never.
  assert records.flatten({'eci': {'adv_start': 4000},
                          'train': {'iterations': 2000}})['eci.start'] == 1.0


def _cell(acc, curve, seconds=3600.0, iterations=1000):
  res = {'methods': {'purer': {'acc': acc, 'ci95': 0.01}}, 'paired': {}, 'per_task': {},
         'iterations': iterations, 'timing': {'meta_train_s': seconds},
         'val_curve': [{'it': it, 'val_acc': v} for it, v in curve]}
  return {'res': res, 'datasets': {'cifar_fs': {'methods': res['methods'], 'paired': {},
                                                'per_task': res['per_task']}}}


def test_shortfall_extrapolates_the_meta_val_curve_to_the_paper():
  assert records.shortfall(_cell(0.40, [(500, 0.30), (1000, 0.31)]), '39.15 ± 0.70') is None
  # 2 points below the paper; meta-val gains 1 point per doubling: 4x the run's 1,000
  # iterations, at its 3.6 s per iteration.
  line = records.shortfall(_cell(0.3715, [(500, 0.30), (1000, 0.31)]), '39.15 ± 0.70')
  assert line.startswith('Below the paper by 2.00 points.')
  assert 'about 4,000 iterations against the run\'s 1,000: about 4.0 h' in line, line
  flat = records.shortfall(_cell(0.30, [(500, 0.30), (1000, 0.29)]), '39.15')
  assert 'did not rise' in flat
  assert 'fewer than two points' in records.shortfall(_cell(0.30, [(500, 0.3)]), '39.15')


def test_wall_time_names_a_later_rescoring():
  res = {'timing': {'wall_time_s': 600.0, 'eval_s': 60.0, 'rescore_eval_s': 1200.0},
         'teachers_source': {'trained': 'in this run', 'seconds': 100.0}}
  assert records.wall_time(res) == ('10 min (meta-test 1 min; then 20 min re-scoring it by the '
                                    "table's protocol)")


def test_shortfall_does_not_extrapolate_a_read_out_it_did_not_track():
  cell = _cell(0.30, [(500, 0.25), (1000, 0.26)])
  cell['res']['readout_val'] = {'purer': 0.26, 'purer_proto': 0.30}
  cell['res']['per_task'].update({'purer': [0.3], 'purer_proto': [0.3]})
  cell['res']['methods']['purer_proto'] = {'acc': 0.30, 'ci95': 0.01}
  line = records.shortfall(cell, '39.15')
  assert 'No extrapolation' in line and "25.00 → 26.00 over iterations 500, 1,000" in line, line


def test_shortfall_without_a_curve_still_reads_as_a_sentence():
  cell = _cell(0.30, [])
  cell['res']['readout_val'] = {'purer': 0.26, 'purer_proto': 0.30}
  cell['res']['per_task'].update({'purer': [0.3], 'purer_proto': [0.3]})
  cell['res']['methods']['purer_proto'] = {'acc': 0.30, 'ci95': 0.01}
  assert records.shortfall(cell, '39.15').endswith('scored once, at the end.')


def test_shortfall_extrapolates_the_prototype_read_out_when_training_tracked_it():
  cell = _cell(0.30, [(500, 0.25), (1000, 0.25)])
  for p, v in zip(cell['res']['val_curve'], (0.30, 0.31)):
    p['val_acc_proto'] = v
  cell['res']['readout_val'] = {'purer': 0.25, 'purer_proto': 0.31}
  cell['res']['per_task'].update({'purer': [0.3], 'purer_proto': [0.3215]})
  cell['res']['methods']['purer_proto'] = {'acc': 0.3715, 'ci95': 0.01}
  line = records.shortfall(cell, '39.15')
  assert 'about 4,000 iterations' in line and 'No extrapolation' not in line, line


def test_mh_cell_judged_by_the_prototype_read_out_pairs_it_on_each_meta_test_set():
  # MH keeps a table per meta-test set: the chosen read-out replaces MAML's head in each, paired
  # on each set's own tasks, then the two are averaged.
  sets = {}
  for ds, (head, proto, rand) in {'cifar_fs': ([0.3, 0.3], [0.32, 0.34], [0.2, 0.24]),
                                  'mini_imagenet': ([0.2, 0.3], [0.28, 0.3], [0.2, 0.2])}.items():
    per = {'purer': head, 'purer_proto': proto, 'random': rand}
    sets[ds] = {'methods': {m: {'acc': sum(v) / 2, 'ci95': 0.01} for m, v in per.items()},
                'paired': {'purer-random': {'mean_diff': 0.0, 'ci95': 0.01}}, 'per_task': per}
  res = {'readout_val': {'purer': 0.28, 'purer_proto': 0.29}, 'methods': {}, 'per_task': {}}
  view = records.learner_view({'res': res, 'datasets': sets})
  assert abs(view['methods']['purer']['acc'] - (0.33 + 0.29) / 2) < 1e-9
  assert abs(view['paired']['purer-random']['mean_diff'] - (0.11 + 0.09) / 2) < 1e-9
  assert records.shortfall({'res': dict(res, val_curve=[]), 'datasets': sets}, '30.00') is None
