"""Throughput of one full inversion step (METHOD.md §4): JAX strategies vs PyTorch eager.

  python benchmarks/inversion_throughput.py --json OUT.json [--threads 2] [--quick]

One step = every teacher's loss on its slice (jitter, CE, TV, BN matching from the BN inputs'
statistics, L2), the gradient w.r.t. the bank and the bank's Adam update. Headline: the
original protocol, 13 Conv4 teachers at 32 px, 80 images each (spc 16 x 5 classes).
Images/s counts teacher-images (teachers x images per teacher) per second.

The PyTorch reference (tests/torch_reference.py, shared with the tests) has the same math
and a fair best effort: the original networks in eval mode with requires_grad=False, BN
statistics from forward hooks, the same number of threads as cores JAX uses. JAX and PyTorch steps are timed in interleaved rounds within one
run, so machine load hits both alike; `speedup` uses the medians, `speedup_min` the best
rounds. PyTorch eager is far more sensitive to other processes on the cores than XLA (its
OpenMP barriers wait for descheduled threads at every op): compare runs at low load.
"""
import argparse
import json
import os
import random
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import torch  # noqa: E402

from purer_jax import bank as bank_lib  # noqa: E402
from purer_jax import config as config_lib  # noqa: E402
from purer_jax import inversion, models  # noqa: E402
from tests import torch_reference  # noqa: E402

XNNPACK = {'xla_cpu_use_xnnpack': True}


# ---------------------------------------------------------------------------------------------
# PyTorch reference (tests/torch_reference.py: the original networks and §4's loss).

class TorchInversion:
  """The same step in PyTorch eager: hooks collect each BN layer's input statistics."""

  def __init__(self, arch, teachers, n, spc, size, w, jitter, lr):
    self.losses = []
    for _ in range(teachers):
      net = torch_reference.create(arch, n, size).eval()
      for p in net.parameters():
        p.requires_grad_(False)
      self.losses.append(torch_reference.DeepInversionLoss(net, w))
    self.bank = torch.randn(teachers, n * spc, 3, size, size, requires_grad=True)
    self.opt = torch.optim.Adam([self.bank], lr=lr)
    self.targets = torch.arange(n).repeat(spc)
    self.jitter = jitter

  def step(self):
    self.opt.zero_grad(set_to_none=True)
    total = 0.0
    for i, loss in enumerate(self.losses):
      j = self.jitter
      x = torch.roll(self.bank[i], (random.randint(-j, j), random.randint(-j, j)), (2, 3))
      total = total + loss(x, self.targets)
    total.backward()
    self.opt.step()


# ---------------------------------------------------------------------------------------------
# JAX.

class JaxInversion:

  def __init__(self, arch, teachers, n, spc, size, cfg, strategy, xla_options=None):
    pool = [type('T', (), dict(arch=arch, num_classes=n, image_size=size, classes=None))()
            for _ in range(teachers)]
    self.layout = bank_lib.make_layout(pool, spc)
    model = models.create(arch, n, size)
    one = models.init(model, jax.random.key(0))
    # Distinct teachers: perturb one init per teacher (initialising 100 models is slow).
    stacked = (jax.tree.map(lambda a: a[None] * jax.random.uniform(
        jax.random.key(1), (teachers,) + (1,) * a.ndim, minval=0.9, maxval=1.1), one),)
    self.step_fn = inversion.make_inversion_step(self.layout, cfg, strategy=strategy,
                                                 xla_options=xla_options)
    self.teachers = self.step_fn.place_teachers(stacked)
    self.images, self.opt = self.step_fn.init(jax.random.key(0))
    self.i = 0
    t0 = time.perf_counter()
    self.step()
    self.compile_s = time.perf_counter() - t0

  def step(self):
    self.images, self.opt, m = self.step_fn(self.images, self.opt, self.teachers,
                                            jax.random.key(self.i))
    self.i += 1
    jax.block_until_ready(self.images)


def run_case(name, arch, teachers, size, n, spc, reps, variants, *, cfg, log, budget_s=60):
  """Times torch and each JAX variant in interleaved rounds; returns a case record."""
  w = inversion.Weights.from_config(cfg)
  images = teachers * n * spc
  runners = {}
  t0 = time.perf_counter()
  runners['torch'] = TorchInversion(arch, teachers, n, spc, size, w, int(cfg.jitter), cfg.lr)
  runners['torch'].step()  # warm-up (allocator, kernels)
  for label, (strategy, opts) in variants.items():
    runners[label] = JaxInversion(arch, teachers, n, spc, size, cfg, strategy, opts)
    runners[label].step()
  setup_s = time.perf_counter() - t0
  times = {k: [] for k in runners}
  t_rounds = time.perf_counter()
  for rnd in range(reps):
    if rnd and time.perf_counter() - t_rounds > budget_s:
      break  # a loaded machine: keep within the time limit with fewer rounds
    for k, r in runners.items():
      time.sleep(0.1)  # let the other runner's spinning worker threads go idle
      t = time.perf_counter()
      r.step()
      times[k].append(time.perf_counter() - t)
  rec = {'name': name, 'arch': arch, 'teachers': teachers, 'image_size': size,
         'images_per_teacher': n * spc, 'reps': len(times['torch']),
         'setup_s': round(setup_s, 1), 'loadavg_1min': os.getloadavg()[0], 'results': {}}
  for k, ts in times.items():
    med = float(np.median(ts))
    rec['results'][k] = {'median_s': med, 'min_s': float(np.min(ts)),
                         'img_s': images / med,
                         'compile_s': getattr(runners[k], 'compile_s', None)}
  ref = rec['results']['torch']
  for r in rec['results'].values():
    r['speedup'] = ref['median_s'] / r['median_s']
    r['speedup_min'] = ref['min_s'] / r['min_s']
  log(rec)
  return rec


def _table(rec):
  lines = [f"{rec['name']}: {rec['teachers']} x {rec['arch']} @ {rec['image_size']}px, "
           f"{rec['images_per_teacher']} img/teacher, {rec['reps']} reps, "
           f"load {rec['loadavg_1min']:.1f}"]
  for k, r in sorted(rec['results'].items(), key=lambda kv: kv[1]['median_s']):
    comp = f"compile {r['compile_s']:.1f}s" if r['compile_s'] is not None else ''
    lines.append(f"  {k:22s} {r['median_s'] * 1e3:9.1f} ms (min {r['min_s'] * 1e3:8.1f})  "
                 f"{r['img_s']:8.0f} img/s  x{r['speedup']:.2f} vs torch (min-based "
                 f"x{r['speedup_min']:.2f})  {comp}")
  return '\n'.join(lines)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--json', required=True, help='where to write the results')
  ap.add_argument('--threads', type=int, default=os.cpu_count(),
                  help='PyTorch threads (XLA:CPU uses one per core)')
  ap.add_argument('--quick', action='store_true', help='headline case only')
  ap.add_argument('--xnnpack', action='store_true',
                  help='also time each strategy compiled with xla_cpu_use_xnnpack')
  args = ap.parse_args()
  torch.set_num_threads(args.threads)
  random.seed(0)
  torch.manual_seed(0)
  cfg = config_lib.build('ss').inversion
  loop, vmap = {'jax-loop': ('loop', None)}, {'jax-vmap': ('vmap', None)}
  both = dict(loop, **vmap)
  if args.xnnpack:
    both.update({k + '+xnnpack': (v[0], XNNPACK) for k, v in both.items()})
  cases = [('headline', 'conv4', 13, 32, 5, 16, 6, both)]
  if not args.quick:
    cases += [
        ('conv4-1', 'conv4', 1, 32, 5, 16, 7, loop),
        # 100 unrolled teachers take minutes to compile: vmap only.
        ('conv4-100', 'conv4', 100, 32, 5, 16, 1, vmap),
        # ~7.6 GFLOP per image forward: 20 images per teacher keep it under a minute.
        ('resnet18-84px', 'resnet18', 1, 84, 5, 4, 1, loop),
    ]
  t0 = time.time()
  load = os.getloadavg()
  recs = [run_case(*c, cfg=cfg, log=lambda r: print(_table(r), flush=True)) for c in cases]
  head = recs[0]['results']
  best = min((k for k in head if k != 'torch'), key=lambda k: head[k]['median_s'])
  out = {
      'headline': {'jax_img_s': head[best]['img_s'], 'torch_img_s': head['torch']['img_s'],
                   'speedup': head[best]['speedup'], 'speedup_min': head[best]['speedup_min'],
                   'jax_variant': best},
      'cases': recs,
      'backend': {'jax': jax.__version__, 'jax_backend': jax.default_backend(),
                  'devices': jax.device_count(), 'torch': torch.__version__,
                  'torch_threads': torch.get_num_threads(), 'cpus': os.cpu_count(),
                  'loadavg_start': load, 'loadavg_end': os.getloadavg()},
      'wall_s': round(time.time() - t0, 1),
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
  with open(args.json, 'w') as f:
    json.dump(out, f, indent=1)
  h = out['headline']
  print(f"headline ({best}): JAX {h['jax_img_s']:.0f} img/s vs PyTorch eager "
        f"{h['torch_img_s']:.0f} img/s = x{h['speedup']:.2f}  (load {load[0]:.1f}, "
        f"{out['wall_s']:.0f}s)")


if __name__ == '__main__':
  main()
