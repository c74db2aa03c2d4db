"""Seconds for the tuned column's grid of test-time steps x lrs: one adaptation per lr read at
every step count (`evaluate.tune_adaptation`) against adapting each (steps, lr) pair from scratch
(`evaluate.validate` per pair, how the grid ran before), on the same meta-val tasks.

  python benchmarks/tune_grid.py --json OUT.json [--tasks 50] [--shots 1 5]

The learner is a randomly initialised 84-px Conv4 (the cost does not depend on its weights) on
real MiniImageNet meta-val tasks (config.data.data_dir), with the default grid
(config.eval.adapt_steps x config.eval.adapt_lrs). Both ways are timed twice, alternating,
after a warm-up pass that compiles their programs; the two must agree on every trial's
accuracy. Writes per shot count the seconds of each way (the faster of the two rounds), their
ratio, and this CPU's matmul rate measured before and after.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--json', required=True)
  ap.add_argument('--tasks', type=int, default=50)
  ap.add_argument('--shots', type=int, nargs='+', default=[1, 5])
  args = ap.parse_args()
  import jax
  from benchmarks.inversion_throughput import matmul_gflops, write_after
  from purer_jax import config as config_lib
  from purer_jax import data, evaluate, models
  out = {'matmul_gflops_before': matmul_gflops(), 'tasks': args.tasks, 'cases': {}}
  for shots in args.shots:
    c = config_lib.build('ss', f'mini,{shots}shot')
    split = [data.load('mini_imagenet', 'meta_val', c.data.data_dir)]
    params = models.init(evaluate.meta_model(c), jax.random.key(0))['params']
    pairs = [(s, lr) for s in c.eval.adapt_steps for lr in c.eval.adapt_lrs]

    def grid():
      return [t['val_acc'] for t in evaluate.tune_adaptation(
          params, c, split, num_tasks=args.tasks, log=lambda _: None)['trials']]

    def each_pair():
      return [evaluate.validate(params, evaluate.with_adaptation(c, s, lr), split, args.tasks)
              for s, lr in pairs]
    seconds = {'one_adaptation_per_lr': [], 'each_pair_from_scratch': []}
    got = {}
    for rnd in range(3):  # round 0 compiles; 1 and 2 are timed, alternating
      for name, fn in (('one_adaptation_per_lr', grid), ('each_pair_from_scratch', each_pair)):
        t0 = time.perf_counter()
        got[name] = fn()
        if rnd:
          seconds[name].append(time.perf_counter() - t0)
    diff = max(abs(a - b) for a, b in zip(got['one_adaptation_per_lr'],
                                          got['each_pair_from_scratch']))
    if diff > 1e-6:
      raise SystemExit(f'{shots}-shot: the two ways disagree by {diff} on a trial')
    best = {k: min(v) for k, v in seconds.items()}
    out['cases'][f'{shots}shot'] = dict(
        seconds=best, rounds=seconds, pairs=len(pairs),
        ratio=best['one_adaptation_per_lr'] / best['each_pair_from_scratch'])
    print(f"{shots}-shot: {best['one_adaptation_per_lr']:.1f} s against "
          f"{best['each_pair_from_scratch']:.1f} s (x{out['cases'][f'{shots}shot']['ratio']:.3f})")
  write_after(out, args.json)


if __name__ == '__main__':
  main()
