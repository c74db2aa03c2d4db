"""Seconds per meta-test task of PURER+ICFIL (inversion of a pseudo support, then calibration:
`icfil.evaluate_params`) against the plain one-step meta-test of the same learner
(`evaluate.evaluate_params`), and what 600 tasks of each would take.

  python benchmarks/icfil_cost.py --json OUT.json [--tasks 4] [--cases cifar_fs:1 mini_imagenet:5]

The learner is a randomly initialised Conv4 at the dataset's size (the cost does not depend on its
weights) on real meta-test tasks (config.data.data_dir), with the config's ICFIL settings
(config.icfil: 1-shot and 5-shot differ). Each way runs once to compile, then is timed on the
next tasks: `--tasks` for ICFIL, which runs tasks one after another, and one batch
(config.eval.batch) for the plain meta-test, which runs a batch in one program. Writes per case
both seconds per task, their ratio, and this CPU's matmul rate measured before and after.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--json', required=True)
  ap.add_argument('--tasks', type=int, default=4)
  ap.add_argument('--cases', nargs='+', default=['cifar_fs:1', 'mini_imagenet:1',
                                                  'mini_imagenet:5'])
  args = ap.parse_args()
  import jax
  from benchmarks.inversion_throughput import matmul_gflops, write_after
  from purer_jax import config as config_lib
  from purer_jax import data, evaluate, icfil, models
  out = {'matmul_gflops_before': matmul_gflops(), 'tasks': args.tasks, 'cases': {}}
  for case in args.cases:
    dataset, shots = case.split(':')
    c = config_lib.build('ss', ('mini,' if dataset == 'mini_imagenet' else '') + f'{shots}shot')
    split = data.load(dataset, 'meta_test', c.data.data_dir)
    params = models.init(evaluate.meta_model(c), jax.random.key(0))['params']
    per_task = {}
    for name, fn, n in (
        ('plain', evaluate.evaluate_params, c.eval.batch),
        ('icfil', icfil.evaluate_params, args.tasks)):
      fn(params, c, split, num_tasks=n)  # compiles (ICFIL's programs do not depend on the task)
      t0 = time.perf_counter()
      fn(params, c, split, seed=c.eval.seed + 1, num_tasks=n)
      per_task[name] = (time.perf_counter() - t0) / n
    out['cases'][case] = dict(
        seconds_per_task=per_task, ratio=per_task['icfil'] / per_task['plain'],
        minutes_for_600=({k: round(600 * v / 60, 1) for k, v in per_task.items()}),
        icfil=dict(c.icfil), image_size=evaluate.meta_model(c).image_size)
    print(f"{case}: ICFIL {per_task['icfil']:.2f} s per task against {per_task['plain']:.3f} s "
          f"plain (x{out['cases'][case]['ratio']:.0f}); 600 tasks: "
          f"{out['cases'][case]['minutes_for_600']} min")
  write_after(out, args.json)


if __name__ == '__main__':
  main()
