"""Where a recipe's meta-iteration spends its time: the whole step (`train.Trainer.step`), the
same step without its distillation (config.distil.weight = 0), and the inversion step alone.

  python benchmarks/step_parts.py --json OUT.json [--configs sh:fast,mini ss:fast,mini]
      [--iters 4] [--draw] [--set distil.batch=16 ...]

Each config is `<scenario>:<variants>`, as `configs/<scenario>.py:<variants>`. Its teachers are
randomly initialised from the pool plan a run would train (`meta_step.random_pool`): the step's
cost does not depend on their weights. Reported per config: the median seconds of `--iters`
steps after one warm-up step, the compile time, and two shares of the whole step measured in the
same process minutes apart: `distil_share` = (step - step without distillation) / step,
`inversion_share` = inversion alone / step. `--set FIELD=VALUE` (a Python literal) changes a
field of every config. With `--draw`, also the step distilling a draw of
as many teachers as its inversion refines (config.distil.per_iter = teachers.per_iter):
`draw_step_s`, and `draw_saving` = 1 - draw_step_s / step. The matmul rate and load are
recorded before and after (`inversion_throughput.write_after`).
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.meta_step import build_config, median_time, random_pool  # noqa: E402


def time_step(config, teachers, iters: int) -> dict:
  """{'step_s', 'compile_s', 'inversion_s'} of config's meta-iteration on `teachers`."""
  import jax
  from purer_jax import train
  trainer = train.Trainer(config, teachers)
  state = [trainer.init_state()]

  def step():
    state[0], m = trainer.step(state[0], trainer.teacher_vars, trainer.rng)
    jax.block_until_ready(m)
  t0 = time.perf_counter()
  step()
  compile_s = time.perf_counter() - t0
  step_s = median_time(step, iters, warmup=1)
  bank = [state[0]['images'], state[0]['bank_opt']]

  def inversion():
    bank[0], bank[1], m = trainer.inv(bank[0], bank[1], trainer.teacher_vars, trainer.rng)
    jax.block_until_ready(m)
  return {'step_s': round(step_s, 3), 'compile_s': round(compile_s, 1),
          'inversion_s': round(median_time(inversion, iters, warmup=1), 3)}


def parts(spec: str, iters: int, draw: bool = False, sets=()) -> dict:
  config = build_config(spec, sets)
  teachers = random_pool(config)
  whole = time_step(config, teachers, iters)
  out = {'config': spec, 'sets': dict(sets),
         'distil': {k: config.distil[k] for k in ('weight', 'batch', 'layer', 'per_iter')},
         'teachers': [t.arch for t in teachers], **whole,
         'inversion_share': round(whole['inversion_s'] / whole['step_s'], 3)}
  if config.distil.weight and draw and config.teachers.per_iter:
    config.distil.per_iter = config.teachers.per_iter
    out['draw_step_s'] = time_step(config, teachers, iters)['step_s']
    out['draw_saving'] = round(1 - out['draw_step_s'] / whole['step_s'], 3)
  if config.distil.weight:
    config.distil.weight = 0.0
    out['no_distil_step_s'] = time_step(config, teachers, iters)['step_s']
    out['distil_share'] = round(1 - out['no_distil_step_s'] / whole['step_s'], 3)
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--json', required=True)
  ap.add_argument('--configs', nargs='+', default=['sh:fast,mini', 'ss:fast,mini'])
  ap.add_argument('--iters', type=int, default=4)
  ap.add_argument('--draw', action='store_true',
                  help='also time the step distilling as many teachers as the inversion refines')
  ap.add_argument('--set', action='append', default=[], help='FIELD=VALUE, for every config')
  args = ap.parse_args()
  from benchmarks.inversion_throughput import matmul_gflops, write_after
  out = {'matmul_gflops_before': matmul_gflops(), 'iters': args.iters, 'results': []}
  sets = [tuple(kv.split('=', 1)) for kv in args.set]
  for spec in args.configs:
    out['results'].append(parts(spec, args.iters, args.draw, sets))
    print(json.dumps(out['results'][-1]), flush=True)
  write_after(out, args.json)


if __name__ == '__main__':
  main()
