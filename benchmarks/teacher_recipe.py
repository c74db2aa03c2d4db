"""Teacher recipes side by side: the whole pool trained by each recipe, one right after the other,
into fresh workdirs; wall time and held-out accuracy of every teacher.

  python benchmarks/teacher_recipe.py --json OUT.json \
      --recipe quick=ss:quick --recipe fast=ss:fast [--set fast:teachers.epochs=6 ...] \
      [--pool_val 600]

A recipe is NAME=SCENARIO:VARIANTS (`configs/<scenario>.py:<variants>`); `--set NAME:FIELD=VALUE`
changes one of its fields (a Python literal). The first recipe is the reference: the record gives
each recipe's wall time (data loading, compiling and training: what `pretrain.run` costs from an
empty workdir), its ratio to the reference, the mean held-out accuracy and its difference to the
reference's, and this CPU's matmul rate measured in the same run. With --pool_val N, also what
a pool is for: the pool read-out (`purer_jax.pool`, its variant chosen on the same tasks) on N
meta-val tasks of the run's config (eval.val_seed), paired task by task with the reference's.
Meta-test is never read. The workdirs are deleted.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.inversion_throughput import matmul_gflops  # noqa: E402
from benchmarks.meta_step import build_config  # noqa: E402
from purer_jax import data as data_lib  # noqa: E402
from purer_jax import evaluate, pretrain, records, utils, zoo  # noqa: E402


def pool_val(config, workdir: str, tasks: int) -> dict:
  """The pool read-out of the zoo in `workdir` on `tasks` meta-val tasks of `config`."""
  c = config.copy_and_resolve_references()
  c.train.val_tasks = tasks
  splits = [data_lib.load(n, 'meta_val', d, s) for n, d, s in data_lib.run_datasets(c)]
  t0 = time.time()
  choice = evaluate.pool_choice(zoo.load(workdir), c, splits, log=lambda *_: None, per_task=True)
  return {'pool_val_acc': choice['val_acc'], 'pool_val_tasks': tasks,
          'pool_variant': {k: choice[k] for k in ('layer', 'norm', 'metric')},
          'pool_val_s': round(time.time() - t0, 1), 'pool_val_per_task': choice['per_task']}


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--json', required=True, help='where to write the record')
  p.add_argument('--recipe', action='append', required=True, help='NAME=SCENARIO:VARIANTS')
  p.add_argument('--set', action='append', default=[], help='NAME:FIELD=VALUE')
  p.add_argument('--pool_val', type=int, default=0, help='meta-val tasks of the pool read-out')
  args = p.parse_args()
  recipes = dict(r.split('=', 1) for r in args.recipe)
  sets = {name: [] for name in recipes}
  for s in args.set:
    name, _, kv = s.partition(':')
    sets[name].append(tuple(kv.split('=', 1)))
  configs = {name: build_config(spec, sets[name]) for name, spec in recipes.items()}
  rate = matmul_gflops()
  print(f'matmul (2048^2 float32, XLA): {rate:.0f} GFLOP/s', flush=True)
  rec = {'matmul_gflops': rate, 'provenance': utils.provenance(), 'recipes': {}}
  for name, c in configs.items():
    workdir = tempfile.mkdtemp(prefix=f'teachers_{name}_')
    try:
      t0 = time.time()
      teachers = pretrain.run(c, workdir)
      wall = time.time() - t0
      val = pool_val(c, workdir, args.pool_val) if args.pool_val else {}
    finally:
      shutil.rmtree(workdir)
    accs = [t['heldout_acc'] for t in teachers]
    rec['recipes'][name] = {
        'spec': recipes[name], 'sets': dict(sets[name]), 'teachers': dict(c.teachers),
        'wall_s': round(wall, 1), 'heldout_acc': accs, 'mean_heldout_acc': float(np.mean(accs)),
        'load_avg': [round(x, 2) for x in os.getloadavg()], **val}
    print(f'{name}: {len(accs)} teachers in {wall:.0f} s, mean held-out {np.mean(accs):.4f}'
          + (f", pool read-out meta-val {val['pool_val_acc']:.4f}" if val else ''), flush=True)
  ref = next(iter(rec['recipes'].values()))
  for r in rec['recipes'].values():
    r['time_ratio_vs_reference'] = r['wall_s'] / ref['wall_s']
    r['heldout_diff_vs_reference'] = r['mean_heldout_acc'] - ref['mean_heldout_acc']
    if args.pool_val:
      r['pool_val_diff_vs_reference'] = records.fmt_diff(records.paired_diff(
          r['pool_val_per_task'], ref['pool_val_per_task']))
  os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
  with open(args.json, 'w') as f:
    json.dump(rec, f, indent=1, default=list)


if __name__ == '__main__':
  main()
