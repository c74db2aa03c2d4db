"""records: reading committed results.json files."""
from purer_jax import records, verdicts


def test_a_recorded_eci_iteration_reads_as_a_fraction_of_its_run():
  flat = records.flatten({'eci': {'adv_start': 250}, 'train': {'iterations': 6000}})
  assert flat == {'eci.start': 250 / 6000, 'train.iterations': 6000}
  # Starting at or after the last iteration is never.
  assert records.flatten({'eci': {'adv_start': 4000},
                          'train': {'iterations': 2000}})['eci.start'] == 1.0


def test_wall_time_names_a_later_rescoring():
  res = {'timing': {'wall_time_s': 600.0, 'eval_s': 60.0, 'rescore_eval_s': 1200.0},
         'teachers_source': {'trained': 'in this run', 'seconds': 100.0}}
  assert records.wall_time(res) == ('10 min (meta-test 1 min; then 20 min re-scoring it by the '
                                    "table's protocol)")


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
  assert verdicts.shortfall({'res': dict(res, val_curve=[]), 'datasets': sets}, '30.00') is None
