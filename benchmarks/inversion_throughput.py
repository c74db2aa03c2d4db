"""Throughput of one full inversion step (docs/DESIGN.md §4): JAX against PyTorch eager and
torch.compile, each runner in its own process, timed in alternating rounds.

  python benchmarks/inversion_throughput.py --json OUT.json [--quick] [--rounds 6] [--autotune]

One step = every teacher's loss on its slice (jitter, CE, TV, BN matching from the BN inputs'
statistics, L2), the gradient w.r.t. the bank and the bank's Adam update. Headline: the
original protocol, 13 Conv4 teachers at 32 px, 80 images each (spc 16 x 5 classes).
Images/s counts teacher-images (teachers x images per teacher) per second.

Every runner (a JAX strategy, PyTorch eager, torch.compile) lives in a worker process of its
own, so that no two share threads or allocators; each is built and compiled first, then the
workers are timed in turn, A B C A B C ..., so that machine load hits them alike. Per runner:
median and best step, compile time, peak resident memory; per case the 1-minute load at each
round. JAX runners also report the step's FLOPs (XLA cost analysis) and the achieved fraction
of this CPU's matmul rate, which the benchmark measures itself (a 2048^2 float32 matmul).
Headline fields: `speedup_vs_eager` and `speedup_vs_compile` (ratios of medians; against the
fastest torch.compile mode measured). The headline case also times its convolutions alone
(`floor-jax`, `floor-torch`: XLA's and oneDNN's kernels): `conv_floor_s`, the faster, and
`ceiling_vs_compile`, the speedup over torch.compile of a step that spent no time outside them.
The JSON is written after every case, so an interrupted run keeps what it measured.

The PyTorch reference (tests/torch_reference.py, shared with the tests) has the same math
and a fair best effort: the original networks in eval mode with requires_grad=False, BN
statistics from forward hooks, as many threads as cores. torch.compile compiles the loss of
the whole pool (the jitter is applied before it, as integer rolls would recompile it).
"""
import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


# ---------------------------------------------------------------------------------------------
# Runners (built inside a worker process).

class TorchInversion:
  """The step in PyTorch: eager, or with the pool's loss under torch.compile (`mode`: None is
  torch.compile's default mode)."""

  def __init__(self, case, threads, compiled=False, mode=None):
    import torch
    from purer_jax import config as config_lib, deep_inversion
    from tests import torch_reference
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = config_lib.build('ss').inversion
    w = deep_inversion.Weights.from_config(cfg)
    n, spc, size = case['classes'], case['spc'], case['size']
    self.losses = []
    for _ in range(case['teachers']):
      net = torch_reference.create(case['arch'], n, size).eval()
      for p in net.parameters():
        p.requires_grad_(False)
      self.losses.append(torch_reference.DeepInversionLoss(net, w))
    self.bank = torch.randn(case['teachers'], n * spc, 3, size, size, requires_grad=True)
    self.opt = torch.optim.Adam([self.bank], lr=cfg.lr)
    self.targets = torch.arange(n).repeat(spc)
    self.jitter = int(cfg.jitter)
    self.torch = torch
    pool = lambda xs: sum(loss(x, self.targets) for loss, x in zip(self.losses, xs))
    self.pool = torch.compile(pool, mode=mode) if compiled else pool
    t0 = time.perf_counter()
    self.step()
    self.compile_s = time.perf_counter() - t0

  def step(self):
    self.opt.zero_grad(set_to_none=True)
    j = self.jitter
    xs = [self.torch.roll(self.bank[i], (random.randint(-j, j), random.randint(-j, j)), (2, 3))
          for i in range(len(self.losses))]
    self.pool(xs).backward()
    self.opt.step()

  def info(self):
    return {}


class JaxInversion:
  """The compiled `InversionStep` with one strategy, on `teachers` distinct Conv4/ResNets."""

  def __init__(self, case, strategy):
    import jax
    from purer_jax import bank as bank_lib
    from purer_jax import config as config_lib, inversion, models
    cfg = config_lib.build('ss').inversion
    n, size, t = case['classes'], case['size'], case['teachers']
    pool = [type('T', (), dict(arch=case['arch'], num_classes=n, image_size=size,
                               classes=None))() for _ in range(t)]
    self.layout = bank_lib.make_layout(pool, case['spc'])
    one = models.init(models.create(case['arch'], n, size), jax.random.key(0))
    # Distinct teachers: perturb one init per teacher (initialising 100 models is slow).
    stacked = (jax.tree.map(lambda a: a[None] * jax.random.uniform(
        jax.random.key(1), (t,) + (1,) * a.ndim, minval=0.9, maxval=1.1), one),)
    self.jax = jax
    self.step_fn = inversion.make_inversion_step(self.layout, cfg, strategy=strategy)
    self.teachers = self.step_fn.place_teachers(stacked)
    self.images, self.opt = self.step_fn.init(jax.random.key(0))
    self.i = 0
    t0 = time.perf_counter()
    self.step()
    self.compile_s = time.perf_counter() - t0

  def step(self):
    self.images, self.opt, _ = self.step_fn(self.images, self.opt, self.teachers,
                                            self.jax.random.key(self.i))
    self.i += 1
    self.jax.block_until_ready(self.images)

  def info(self):
    """The step's GFLOP and its programs' memory (summed over a chunked step's programs)."""
    key, s = self.jax.random.key(0), self.step_fn
    if hasattr(s, 'chunks'):
      programs = [s._grad.lower(self.images, self.images, v, key, gi=gi, lo=lo, hi=hi)
                  for (gi, lo, hi), v in zip(s.chunks, self.teachers)]
      programs.append(s._apply.lower(self.images, self.opt, self.images))
    else:
      programs = [s._step.lower(self.images, self.opt, self.teachers, key, None)]
    flops, mb = 0.0, 0.0
    for p in programs:
      compiled = p.compile()
      cost = compiled.cost_analysis()
      flops += float((cost[0] if isinstance(cost, (list, tuple)) else cost).get('flops', 0.0))
      mem = compiled.memory_analysis()
      if mem is not None:
        mb = max(mb, (mem.temp_size_in_bytes + mem.argument_size_in_bytes +
                      mem.output_size_in_bytes) / 2**20)
    return {'gflop': flops / 1e9, 'program_mb': round(mb, 1)}


class ConvFloor:
  """The step's convolutions alone, for Conv4 pools: each conv's forward and its input gradient
  (the bank needs it; the teachers' weights take none), on random inputs of the step's shapes,
  with nothing else (no BN, ReLU, pool, loss or update). `backend` 'jax' (XLA's convolution)
  or 'torch' (oneDNN's). No step built from these kernels runs faster than this."""

  def __init__(self, case, backend, threads):
    from purer_jax.models.conv4 import Conv4
    t, b, s, w = case['teachers'], case['classes'] * case['spc'], case['size'], Conv4.width
    shapes = [(s >> i, 3 if i == 0 else w) for i in range(4)]  # (spatial, in channels)
    rng = np.random.default_rng(0)
    xs = [[rng.standard_normal((b, c, h, h), np.float32) for h, c in shapes] for _ in range(t)]
    ws = [[rng.standard_normal((w, c, 3, 3), np.float32) for _, c in shapes] for _ in range(t)]
    if backend == 'torch':
      import torch
      torch.set_num_threads(threads)
      xs = [[torch.from_numpy(x) for x in xt] for xt in xs]
      ws = [[torch.from_numpy(k) for k in wt] for wt in ws]

      def step():
        with torch.no_grad():
          for xt, wt in zip(xs, ws):
            for x, k in zip(xt, wt):
              y = torch.nn.functional.conv2d(x, k, padding=1)
              torch.ops.aten.convolution_backward(y, x, k, None, [1, 1], [1, 1], [1, 1], False,
                                                  [0, 0], 1, [True, False, False])
      self.step = step
    else:
      import jax
      from jax import lax
      conv = lambda x, k: lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)),
                                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

      def convs(xs, ws):
        out = []
        for xt, wt in zip(xs, ws):
          for x, k in zip(xt, wt):
            y, vjp = jax.vjp(lambda x, k=k: conv(x, k), x)
            out.append(vjp(y)[0])
        return out
      xs = [[jax.numpy.asarray(x.transpose(0, 2, 3, 1)) for x in xt] for xt in xs]
      ws = [[jax.numpy.asarray(k.transpose(2, 3, 1, 0)) for k in wt] for wt in ws]
      f = jax.jit(convs)
      self.step = lambda: jax.block_until_ready(f(xs, ws))
      cost = f.lower(xs, ws).compile().cost_analysis()
      self.gflop = float((cost[0] if isinstance(cost, (list, tuple)) else cost)['flops']) / 1e9
    t0 = time.perf_counter()
    self.step()
    self.compile_s = time.perf_counter() - t0

  def info(self):
    return {'gflop': self.gflop} if hasattr(self, 'gflop') else {}


def matmul_gflops(n=2048, reps=10) -> float:
  """This CPU's float32 matmul rate under XLA (best of `reps`)."""
  import jax
  a = jax.random.normal(jax.random.key(0), (n, n))
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float('inf')
  for _ in range(reps):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * n ** 3 / best / 1e9


def write_after(out: dict, path: str):
  """Writes `out` to `path` as JSON with this CPU's matmul rate and load at the end of the run,
  and the code it ran (`utils.provenance`), beside it (the smaller benchmarks' common ending)."""
  from purer_jax import utils
  out['matmul_gflops_after'] = matmul_gflops()
  out['load_avg'] = list(os.getloadavg())
  out['provenance'] = utils.provenance()
  with open(path, 'w') as f:
    json.dump(out, f, indent=1)


def worker(kind, case, threads):
  """Builds `kind` for `case`, then answers the orchestrator on stdin/stdout: `run K` times K
  steps, `done` reports the runner's info and peak memory."""
  random.seed(0)
  if kind.startswith('jax-'):
    r = JaxInversion(case, kind[4:])
  elif kind == 'torch-eager':
    r = TorchInversion(case, threads)
  elif kind.startswith('torch-compile'):
    r = TorchInversion(case, threads, compiled=True,
                       mode=kind[len('torch-compile'):].lstrip(':') or None)
  elif kind.startswith('floor-'):
    r = ConvFloor(case, kind[len('floor-'):], threads)
  else:
    raise ValueError(f'unknown runner {kind!r}')
  print(json.dumps({'ready': True, 'compile_s': r.compile_s}), flush=True)
  for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == 'run':
      times = []
      for _ in range(int(cmd[1])):
        t0 = time.perf_counter()
        r.step()
        times.append(time.perf_counter() - t0)
      print(json.dumps({'times': times}), flush=True)
    elif cmd[0] == 'done':
      info = r.info()
      info['peak_rss_mb'] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
      print(json.dumps(info), flush=True)
      return


# ---------------------------------------------------------------------------------------------
# The orchestrator.

class Worker:

  def __init__(self, kind, case, threads):
    env = dict(os.environ, PYTHONPATH=ROOT)
    self.kind = kind
    self.p = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), '--worker', kind, '--case', json.dumps(case),
         '--threads', str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=env)
    self.ready = self._read()

  def _read(self):
    for line in self.p.stdout:
      if line.startswith('{'):
        return json.loads(line)
    raise RuntimeError(f'benchmark worker {self.kind} exited ({self.p.wait()})')

  def ask(self, cmd):
    self.p.stdin.write(cmd + '\n')
    self.p.stdin.flush()
    return self._read()


def run_case(case, kinds, *, rounds, steps, threads, budget_s, log):
  """Builds one worker per runner, then times them in alternating rounds."""
  workers = {}
  for k in kinds:  # one at a time: a compiling worker would slow another's build
    workers[k] = Worker(k, case, threads)
  times, loads = {k: [] for k in kinds}, []
  t0 = time.perf_counter()
  for rnd in range(rounds):
    if rnd and time.perf_counter() - t0 > budget_s:
      break  # a loaded machine: keep within the time limit with fewer rounds
    loads.append(os.getloadavg()[0])
    for k, w in workers.items():
      time.sleep(0.2)  # let the previous worker's spinning threads go idle
      times[k] += w.ask(f'run {steps}')['times']
  images = case['teachers'] * case['classes'] * case['spc']
  rec = dict(case, images_per_step=images, rounds=len(loads), load_1min=loads, results={})
  for k, w in workers.items():
    info = w.ask('done')
    w.p.wait()
    med = float(np.median(times[k]))
    rec['results'][k] = dict(info, median_s=med, min_s=float(np.min(times[k])),
                             img_s=images / med, compile_s=round(w.ready['compile_s'], 1))
  # Against eager, and against the fastest torch.compile mode of the case.
  res = rec['results']
  for name in ('eager', 'compile'):
    ks = [k for k in res if k.startswith(f'torch-{name}')]
    if ks:
      ref = min(res[k]['median_s'] for k in ks)
      for r in res.values():
        r[f'speedup_vs_{name}'] = ref / r['median_s']
  log(rec)
  return rec


def _table(rec):
  lines = [f"{rec['name']}: {rec['teachers']} x {rec['arch']} @ {rec['size']}px, "
           f"{rec['classes'] * rec['spc']} img/teacher, {rec['rounds']} rounds, load "
           f"{min(rec['load_1min']):.1f}-{max(rec['load_1min']):.1f}"]
  for k, r in sorted(rec['results'].items(), key=lambda kv: kv[1]['median_s']):
    extra = ''.join(f'  x{r[s]:.2f} vs {s[11:]}' for s in ('speedup_vs_eager',
                                                            'speedup_vs_compile') if s in r)
    lines.append(f"  {k:34s} {r['median_s'] * 1e3:9.1f} ms (min {r['min_s'] * 1e3:8.1f}) "
                 f"{r['img_s']:8.0f} img/s  compile {r['compile_s']:.1f}s  "
                 f"rss {r['peak_rss_mb']:.0f} MB{extra}")
  return '\n'.join(lines)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--json', help='where to write the results')
  ap.add_argument('--threads', type=int, default=os.cpu_count(),
                  help='PyTorch threads (XLA:CPU uses one per core)')
  ap.add_argument('--quick', action='store_true', help='headline case only')
  ap.add_argument('--rounds', type=int, default=6)
  ap.add_argument('--autotune', action='store_true',
                  help="also torch.compile(mode='max-autotune-no-cudagraphs')")
  ap.add_argument('--worker', help=argparse.SUPPRESS)
  ap.add_argument('--case', help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.worker:
    return worker(args.worker, json.loads(args.case), args.threads)
  if not args.json:
    ap.error('--json is required')
  torch_kinds = ['torch-eager', 'torch-compile'] + (
      ['torch-compile:max-autotune-no-cudagraphs'] if args.autotune else [])
  case = lambda name, arch, t, size, spc: dict(name=name, arch=arch, teachers=t, size=size,
                                               classes=5, spc=spc)
  # (case, JAX strategies, steps per round): 100 teachers unrolled in one program compile for
  # minutes; 'chunks' runs them as programs of 13.
  # The 100-teacher case is judged against the 13-teacher rate: PyTorch eager alone there
  # (compiling 100 teachers' loss takes many minutes).
  # The headline also times its convolutions alone (`floor-*`): how fast any step can be.
  cases = [(case('headline', 'conv4', 13, 32, 16), ['loop', 'vmap'], 3,
            torch_kinds + ['floor-jax', 'floor-torch'])]
  if not args.quick:
    cases += [(case('conv4-1', 'conv4', 1, 32, 16), ['loop'], 5, torch_kinds),
              (case('conv4-100', 'conv4', 100, 32, 16), ['chunks', 'vmap'], 1,
               ['torch-eager']),
              (case('resnet18-32px', 'resnet18', 1, 32, 16), ['loop'], 1, torch_kinds),
              # ~7.6 GFLOP per image forward: 20 images per teacher.
              (case('resnet18-84px', 'resnet18', 1, 84, 4), ['loop'], 1, torch_kinds)]
  t0 = time.time()
  load = os.getloadavg()
  rate = matmul_gflops()
  print(f'matmul (2048^2 float32, XLA): {rate:.0f} GFLOP/s', flush=True)
  recs = []
  for c, strategies, steps, torch_case in cases:
    recs.append(run_case(c, [f'jax-{s}' for s in strategies] + torch_case,
                         rounds=args.rounds, steps=steps, threads=args.threads,
                         budget_s=120, log=lambda r: print(_table(r), flush=True)))
    for r in recs[-1]['results'].values():
      if 'gflop' in r:
        r['matmul_fraction'] = r['gflop'] / r['median_s'] / rate
    _write(args.json, {'partial': True, 'matmul_gflops': rate, 'cases': recs})  # kept if cut
  head = recs[0]['results']
  best = min((k for k in head if k.startswith('jax-')), key=lambda k: head[k]['median_s'])
  # The fastest kernels' convolutions alone, and the speedup over torch.compile a step
  # spending no time outside them would have: the ceiling of any step built on them.
  floor = min((k for k in head if k.startswith('floor-')), key=lambda k: head[k]['median_s'])
  out = {
      'headline': {'jax_variant': best, 'jax_img_s': head[best]['img_s'],
                   **{k: head[best][k] for k in ('speedup_vs_eager', 'speedup_vs_compile',
                                                 'gflop', 'matmul_fraction') if k in head[best]},
                   **{f'{k}_img_s': head[k]['img_s'] for k in torch_kinds},
                   'conv_floor_s': head[floor]['median_s'],
                   'ceiling_vs_compile': head[floor]['speedup_vs_compile']},
      'matmul_gflops': rate,
      'cases': recs,
      'backend': _backend(args.threads, load),
      'wall_s': round(time.time() - t0, 1),
  }
  _write(args.json, out)
  h = out['headline']
  print(f"headline ({best}): JAX {h['jax_img_s']:.0f} img/s, x{h['speedup_vs_eager']:.2f} vs "
        f"eager, x{h['speedup_vs_compile']:.2f} vs torch.compile; {h['gflop']:.1f} GFLOP/step "
        f"at {100 * h['matmul_fraction']:.0f}% of the matmul rate; its convolutions alone take "
        f"{h['conv_floor_s'] * 1e3:.0f} ms (a ceiling of x{h['ceiling_vs_compile']:.2f} vs "
        f"torch.compile) ({out['wall_s']:.0f}s)")


def _write(path, out):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(out, f, indent=1)


def _backend(threads, load):
  import jax
  import torch
  return {'jax': jax.__version__, 'jax_backend': jax.default_backend(),
          'devices': jax.device_count(), 'torch': torch.__version__, 'torch_threads': threads,
          'cpus': os.cpu_count(), 'loadavg_start': load, 'loadavg_end': os.getloadavg()}


if __name__ == '__main__':
  main()
