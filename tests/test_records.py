"""records: reading committed results.json files."""
from purer_jax import records


def test_a_recorded_eci_iteration_reads_as_a_fraction_of_its_run():
  flat = records.flatten({'eci': {'adv_start': 250}, 'train': {'iterations': 6000}})
  assert flat == {'eci.start': 250 / 6000, 'train.iterations': 6000}
  # Starting at or after the last iteration is never.
  assert records.flatten({'eci': {'adv_start': 4000},
                          'train': {'iterations': 2000}})['eci.start'] == 1.0
