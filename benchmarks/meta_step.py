"""Seconds per PURER meta-iteration: JAX (`purer_jax.train.train_step`) vs a PyTorch eager
reference of the same step, on this machine.

  python benchmarks/meta_step.py --json OUT.json [--iters 10] [--strategies]

The step (docs/DESIGN.md §10): an inversion step over 13 Conv4 teachers (12 x 5 classes + 1 x 4,
16 images per class: 80 images per teacher) at 32 px with one Adam step on the bank, then 4
second-order MAML tasks (5-way 1-shot, 15 queries) from the detached bank and the outer Adam
step; ECI's switch stays off. Teachers are randomly initialised (the cost does not depend on
their weights). Writes {"jax_s_per_it", "torch_s_per_it", "speedup", ...}: medians over
`--iters` timed iterations after warm-up, and each side's split: the inversion step alone
(`*_inversion_s`) and the meta-batch with its outer step alone (`*_meta_s`; first-order MAML's
in `*_meta_first_order_s`), with this CPU's matmul rate. `*_plain_s` is the convolution floor
under the MAML half: one ordinary training step of the same Conv4 (forward, backward, Adam) on
the meta-batch's 320 images at once, no inner loop, so only the framework's convolution kernels
differ between the two sides. `--strategies` also times the
meta-batch alone mapped by a python loop, lax.map and vmap (the measurement behind
purer_jax.meta's default).
Each side runs in its own subprocess: torch next to a live XLA:CPU runtime in one process ran
10-25x slower here (both runtimes' thread pools competing for the 2 cores).
"""
import argparse
import functools
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WAYS, SHOTS, QUERIES, SPC, META_BATCH, SIZE = 5, 1, 15, 16, 4, 32


def _config():
  from purer_jax import config as config_lib
  c = config_lib.build('ss')
  c.inversion.strategy = 'loop'
  return c


def build_config(spec: str, sets=()):
  """The config `<scenario>:<variants>` (as `configs/<scenario>.py:<variants>`) with each
  (FIELD, VALUE) of `sets` applied (VALUE a Python literal), checked against the schema."""
  import ast
  from purer_jax import config as config_lib
  from purer_jax import schema
  scenario, _, variants = spec.partition(':')
  c = config_lib.build(scenario, variants)
  c.update_from_flattened_dict({key: ast.literal_eval(value) for key, value in sets})
  schema.check(c)
  return c


def random_pool(config):
  """Randomly initialised teachers of the pool plan a run of `config` would train
  (`pretrain.pool_plan`: archs, classes, datasets, image sizes): a step's cost does not depend on
  their weights. For `_config()`, 13 Conv4s at 32 px over CIFAR-FS's 64 classes."""
  import jax
  from purer_jax import data as data_lib
  from purer_jax import models, pretrain, schema, zoo
  classes = {name: schema.SPLIT_CLASSES[name]['meta_train']
             for name, _, _ in data_lib.run_datasets(config)}
  out = []
  for i, (ds, arch, cls) in enumerate(pretrain.pool_plan(config, classes)):
    t = zoo.Teacher(index=i, arch=arch, num_classes=len(cls), image_size=data_lib.IMAGE_SIZE[ds],
                    dataset=ds, classes=cls, class_names=[], heldout_acc=None, checkpoint='')
    t.variables = models.init(t.model, jax.random.key(i))
    out.append(t)
  return out


def median_time(fn, iters, warmup=2):
  for _ in range(warmup):
    fn()
  ts = []
  for _ in range(iters):
    t0 = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t0)
  return float(np.median(ts))


def time_jax(iters):
  import jax
  import optax
  from purer_jax import eci, meta, train
  from purer_jax.meta import maml
  config = _config()
  trainer = train.Trainer(config, random_pool(config))
  state = [trainer.init_state()]
  t0 = time.perf_counter()
  jax.block_until_ready(trainer.step(trainer.init_state(), trainer.teacher_vars, trainer.rng))
  compile_s = time.perf_counter() - t0

  def step():
    state[0], m = trainer.step(state[0], trainer.teacher_vars, trainer.rng)
    jax.block_until_ready(m)
  total = median_time(step, iters)

  # The two halves alone: the inversion step, then the meta-batch's value, gradient and
  # outer Adam step on tasks from the bank.
  bank = [state[0]['images'], state[0]['bank_opt']]

  def inversion():
    bank[0], bank[1], m = trainer.inv(bank[0], bank[1], trainer.teacher_vars, trainer.rng)
    jax.block_until_ready(m)
  inv_s = median_time(inversion, iters)
  tasks = eci.sample_tasks(bank[0], jax.random.key(2), num=META_BATCH,
                           **train.task_kw(config, trainer.layout))

  @functools.partial(jax.jit, static_argnames='learner')
  def meta_update(params, opt_state, *, learner):
    grads = jax.grad(lambda p: meta.batch_loss(p, tasks, learner=learner)[0])(params)
    updates, opt_state = trainer.tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
  outer = [state[0]['params'], state[0]['opt_state']]

  def meta_half(learner):
    outer[0], outer[1] = jax.block_until_ready(meta_update(*outer, learner=learner))
  first_order = trainer.learner._replace(second_order=False)
  images = jax.numpy.concatenate([tasks['support_x'].reshape((-1, SIZE, SIZE, 3)),
                                  tasks['query_x'].reshape((-1, SIZE, SIZE, 3))])
  labels = jax.numpy.arange(len(images)) % WAYS

  @jax.jit
  def plain_update(params, opt_state):
    grads = jax.grad(lambda p: maml.loss_and_acc(p, images, labels, model=trainer.model)[0])(
        params)
    updates, opt_state = trainer.tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  def plain():
    outer[0], outer[1] = jax.block_until_ready(plain_update(*outer))
  return (total, compile_s, inv_s, median_time(lambda: meta_half(trainer.learner), iters),
          median_time(lambda: meta_half(first_order), iters), median_time(plain, iters))


def time_strategies(iters):
  import jax
  from purer_jax import eci, meta, models
  model = models.create('conv4', WAYS, SIZE)
  params = models.init(model, jax.random.key(0))['params']
  images = jax.random.normal(jax.random.key(1), (64, SPC, SIZE, SIZE, 3))
  tasks = eci.sample_tasks(images, jax.random.key(2), num=META_BATCH, ways=WAYS, shots=SHOTS,
                           queries=QUERIES)
  learner = meta.Learner('maml', model, 0.01, 1, True)
  out = {}
  for s in meta.STRATEGIES:
    f = jax.jit(jax.value_and_grad(functools.partial(meta.batch_loss, learner=learner,
                                                     strategy=s), has_aux=True))
    out[s] = median_time(lambda f=f: jax.block_until_ready(f(params, tasks)), iters)
  return out


# ----------------------------------------------------------------------------------------------
# PyTorch eager reference (NCHW), the way the original code computes the step, on the shared
# reference networks and loss (tests/torch_reference.py).

def time_torch(iters):
  import torch
  import torch.nn.functional as F
  from purer_jax import deep_inversion
  from tests import torch_reference
  torch.set_num_threads(os.cpu_count() or 1)
  torch.manual_seed(0)
  teachers = []
  for i in range(13):
    n = min(5, 64 - 5 * i)
    t = torch_reference.create('conv4', n, SIZE).eval()
    for p in t.parameters():
      p.requires_grad_(False)
    teachers.append((torch_reference.DeepInversionLoss(t, deep_inversion.Weights()), n))
  bank = torch.randn(64 * SPC, 3, SIZE, SIZE, requires_grad=True)
  bank_opt = torch.optim.Adam([bank], lr=0.25)
  learner = torch_reference.create('conv4', WAYS, SIZE).train()
  for m in learner.modules():  # transductive BN without running statistics, as the JAX side
    if isinstance(m, torch.nn.BatchNorm2d):
      m.track_running_stats, m.running_mean, m.running_var = False, None, None
  outer_opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
  # The reference Conv4 registers each conv and BN under two names (the original's state
  # dict); functional_call is given every name, so no alias keeps a stale fast weight.
  aliases = list(learner.named_parameters(remove_duplicate=False))
  unique = list(dict.fromkeys(p for _, p in aliases))
  labels = torch.arange(64).repeat_interleave(SPC)  # bank rows per class, for task sampling

  def inversion_step():
    loss = 0.0
    start = 0
    for teacher_loss, n in teachers:
      x = bank[start:start + n * SPC]
      start += n * SPC
      dh, dw = np.random.randint(-2, 3, 2)
      x = torch.roll(x, shifts=(int(dh), int(dw)), dims=(2, 3))
      loss = loss + teacher_loss(x, torch.arange(n).repeat(SPC))
    bank_opt.zero_grad()
    loss.backward()
    bank_opt.step()

  def task():
    data = bank.detach()
    classes = np.random.choice(64, WAYS, replace=False)
    rows = [np.flatnonzero(labels.numpy() == c)[np.random.permutation(SPC)[:SHOTS + QUERIES]]
            for c in classes]
    sx = torch.cat([data[r[:SHOTS]] for r in rows])
    qx = torch.cat([data[r[SHOTS:]] for r in rows])
    return (sx, torch.arange(WAYS).repeat_interleave(SHOTS), qx,
            torch.arange(WAYS).repeat_interleave(QUERIES))

  def meta_step(second_order=True):
    call = lambda weights, x: torch.func.functional_call(
        learner, {k: weights[p] for k, p in aliases}, (x,), tie_weights=False)
    total = 0.0
    for _ in range(META_BATCH):
      sx, sy, qx, qy = task()
      inner = F.cross_entropy(call({p: p for p in unique}, sx), sy)
      grads = torch.autograd.grad(inner, unique, create_graph=second_order)
      fast = {p: p - 0.01 * g for p, g in zip(unique, grads)}
      total = total + F.cross_entropy(call(fast, qx), qy)
    outer_opt.zero_grad()
    total.backward()
    outer_opt.step()

  def step():
    inversion_step()
    meta_step()

  tasks = [task() for _ in range(META_BATCH)]
  x = torch.cat([t[0] for t in tasks] + [t[2] for t in tasks])

  def plain_step():  # the floor: the meta-batch's 320 images in one batch, no inner loop
    loss = F.cross_entropy(learner(x), torch.arange(len(x)) % WAYS)
    outer_opt.zero_grad()
    loss.backward()
    outer_opt.step()
  return (median_time(step, iters), median_time(inversion_step, iters),
          median_time(meta_step, iters), median_time(lambda: meta_step(False), iters),
          median_time(plain_step, iters))


def _side(name, iters, strategies):
  """Runs one side in a fresh process; returns its JSON result."""
  cmd = [sys.executable, os.path.abspath(__file__), '--side', name, '--iters', str(iters)]
  out = subprocess.run(cmd + (['--strategies'] if strategies else []), check=True,
                       stdout=subprocess.PIPE, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--json', help='where to write the results')
  p.add_argument('--iters', type=int, default=10)
  p.add_argument('--strategies', action='store_true',
                 help='also time the meta-batch mapped by loop / lax.map / vmap')
  p.add_argument('--skip_torch', action='store_true')
  p.add_argument('--side', choices=('jax', 'torch'), help=argparse.SUPPRESS)
  a = p.parse_args()
  if a.side == 'jax':
    jax_s, compile_s, inv_s, meta_s, meta_fo_s, plain_s = time_jax(a.iters)
    from benchmarks.inversion_throughput import matmul_gflops
    res = {'jax_s_per_it': jax_s, 'jax_compile_s': compile_s, 'jax_inversion_s': inv_s,
           'jax_meta_s': meta_s, 'jax_meta_first_order_s': meta_fo_s, 'jax_plain_s': plain_s,
           'matmul_gflops': matmul_gflops()}
    if a.strategies:
      res['meta_batch_s'] = time_strategies(a.iters)
    print(json.dumps(res))
    return
  if a.side == 'torch':
    total, inv_s, meta_s, meta_fo_s, plain_s = time_torch(a.iters)
    print(json.dumps({'torch_s_per_it': total, 'torch_inversion_s': inv_s,
                      'torch_meta_s': meta_s, 'torch_meta_first_order_s': meta_fo_s,
                      'torch_plain_s': plain_s}))
    return
  if not a.json:
    p.error('--json OUT is required')
  res = _side('jax', a.iters, a.strategies)
  print(f"jax: {res['jax_s_per_it']:.3f} s/it (inversion {res['jax_inversion_s']:.3f}, meta "
        f"{res['jax_meta_s']:.3f}, first-order {res['jax_meta_first_order_s']:.3f}, plain step "
        f"{res['jax_plain_s']:.3f}; compile + "
        f"first step {res['jax_compile_s']:.1f} s); matmul {res['matmul_gflops']:.0f} GFLOP/s",
        flush=True)
  if 'meta_batch_s' in res:
    print('meta-batch value+grad (s):', res['meta_batch_s'], flush=True)
  if not a.skip_torch:
    res.update(_side('torch', a.iters, False))
    res['speedup'] = res['torch_s_per_it'] / res['jax_s_per_it']
    print(f"torch: {res['torch_s_per_it']:.3f} s/it (inversion {res['torch_inversion_s']:.3f}, "
          f"meta {res['torch_meta_s']:.3f}, first-order {res['torch_meta_first_order_s']:.3f}, "
          f"plain step {res['torch_plain_s']:.3f}), "
          f"speedup {res['speedup']:.2f}x", flush=True)
  res['iters'] = a.iters
  res['load_avg_1min'] = os.getloadavg()[0]  # other work on the machine slows both sides
  os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
  with open(a.json, 'w') as f:
    json.dump(res, f, indent=1)


if __name__ == '__main__':
  main()
