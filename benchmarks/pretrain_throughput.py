"""Teacher training throughput: the pool trained one teacher after another
(`teachers.together=1`) against all teachers in one compiled program, on this machine.

  python benchmarks/pretrain_throughput.py --json OUT.json [--rounds 10] [--teachers 13]

One round is one training step of every teacher of an SS CIFAR-FS pool (Conv4, 32 px, 5 classes,
a batch of 128 images each): `loop` calls `pretrain.train_step` once per teacher
(`teachers.together=1`); `unrolled` runs the same steps as one jitted program over the teachers' list
(`teachers.together=0`: XLA:CPU keeps each teacher's convolutions as they are); `vmap`
maps one step over the teachers' stacked variables (convolutions of different weights become
grouped convolutions). Runners alternate round by round (A B C A B C ...), so they see the same
load; the record gives images per second (median round), each runner's ratio to `loop`, XLA's
GFLOP per round and this CPU's matmul rate measured in the same run.
"""
import argparse
import functools
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402  (after the path: the benchmark runs from a checkout)
import jax.numpy as jnp  # noqa: E402

from benchmarks.inversion_throughput import matmul_gflops  # noqa: E402
from purer_jax import models, pretrain, utils  # noqa: E402

BATCH, SIZE, WAYS = 128, 32, 5


def _timed(fn) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def _setup(num: int):
  model = models.create('conv4', WAYS, SIZE)
  tx = pretrain._optimizer(True, 'step', 0.01, (8, 12), 0.2, 50.0, 300, 15)  # :quick's Adam
  variables = [models.init(model, jax.random.key(i)) for i in range(num)]
  opt = [tx.init(v['params']) for v in variables]
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((num, BATCH, SIZE, SIZE, 3)), jnp.float32)
  y = jnp.asarray(rng.integers(0, WAYS, (num, BATCH)), jnp.int32)
  return model, tx, variables, opt, x, y


def runners(num: int) -> dict:
  """{name: (step of one round, GFLOP of one round)}; each keeps its own state."""
  model, tx, variables, opt, x, y = _setup(num)
  step = functools.partial(pretrain.train_step, model=model, tx=tx)
  out = {}

  state = [list(variables), list(opt)]
  def loop():
    for i in range(num):
      (state[0][i],), (state[1][i],), loss = step([state[0][i]], [state[1][i]], [x[i]], [y[i]])
    loss.block_until_ready()
  one = utils.compiled_gflop(pretrain.train_step, variables[:1], opt[:1], [x[0]], [y[0]],
                             model=model, tx=tx)
  out['loop'] = (loop, num * one)

  u_state = [jax.tree.map(jnp.copy, variables), jax.tree.map(jnp.copy, opt)]
  def run_unrolled():
    u_state[0], u_state[1], loss = step(u_state[0], u_state[1], list(x), list(y))
    loss.block_until_ready()
  out['unrolled'] = (run_unrolled, utils.compiled_gflop(pretrain.train_step, variables, opt,
                                                        list(x), list(y), model=model, tx=tx))

  stack = lambda trees: jax.tree.map(lambda *a: jnp.stack(a), *trees)
  mapped = jax.jit(jax.vmap(functools.partial(pretrain._step, model=model, tx=tx, smoothing=0.0)),
                   donate_argnums=(0, 1))
  v_state = [stack(variables), stack(opt)]
  def run_vmap():
    v_state[0], v_state[1], loss = mapped(v_state[0], v_state[1], x, y)
    loss.block_until_ready()
  out['vmap'] = (run_vmap, utils.compiled_gflop(mapped, stack(variables), stack(opt), x, y))
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--json', required=True, help='where to write the record')
  p.add_argument('--rounds', type=int, default=10)
  p.add_argument('--teachers', type=int, default=13)
  p.add_argument('--only', default='', help='comma-separated runners (default: all)')
  args = p.parse_args()
  rate = matmul_gflops()
  print(f'matmul (2048^2 float32, XLA): {rate:.0f} GFLOP/s', flush=True)
  rs = runners(args.teachers)
  if args.only:
    rs = {k: v for k, v in rs.items() if k in args.only.split(',')}
  for fn, _ in rs.values():  # compile and warm up
    fn()
    fn()
  times = {k: [] for k in rs}
  for _ in range(args.rounds):
    for k, (fn, _) in rs.items():
      times[k].append(_timed(fn))
  images = args.teachers * BATCH
  rec = {'matmul_gflops': rate, 'teachers': args.teachers, 'batch': BATCH, 'rounds': args.rounds,
         'load_avg': [round(x, 2) for x in os.getloadavg()], 'provenance': utils.provenance(),
         'runners': {}}
  base = float(np.median(times['loop'])) if 'loop' in times else None
  for k, ts in times.items():
    med = float(np.median(ts))
    rec['runners'][k] = {'median_s': med, 'images_per_s': images / med,
                         'gflop_per_round': rs[k][1],
                         'matmul_fraction': rs[k][1] / med / rate,
                         'speedup_vs_loop': base / med if base else None}
    print(f"{k}: {med * 1e3:.0f} ms per round, {images / med:.0f} img/s, "
          f"{100 * rs[k][1] / med / rate:.0f}% of the matmul rate"
          + (f', x{base / med:.2f} vs loop' if base else ''), flush=True)
  os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
  with open(args.json, 'w') as f:
    json.dump(rec, f, indent=1)


if __name__ == '__main__':
  main()
