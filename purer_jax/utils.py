"""Small helpers: progress with ETA, JSON and JSON-lines files, parameters as .npz, run
provenance, the user-error type."""
import json
import os
import platform
import subprocess
import sys
import time
import numpy as np


class Progress:
  """`desc  i/total  [elapsed < ETA]  extra` on one line (a new line when not a TTY)."""

  def __init__(self, total: int, desc: str, start: int = 0, stream=sys.stderr, every_s=2.0):
    self.total, self.desc, self.start, self.stream = total, desc, start, stream
    self.t0 = time.time()
    self.every_s = every_s
    self._last = 0.0

  def update(self, i: int, extra: str = '', force: bool = False):
    now = time.time()
    if not force and now - self._last < self.every_s and i < self.total:
      return
    self._last = now
    done = i - self.start
    rate = done / max(now - self.t0, 1e-9)
    eta = (self.total - i) / rate if rate > 0 else float('nan')
    line = (f'{self.desc} {i}/{self.total} [{_fmt(now - self.t0)} < {_fmt(eta)}, '
            f'{rate:.2f}/s] {extra}')
    end = '\r' if self.stream.isatty() and i < self.total else '\n'
    print(line, end=end, file=self.stream, flush=True)


def _fmt(s: float) -> str:
  if s != s:
    return '?'
  s = int(s)
  return f'{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}' if s >= 3600 else f'{s // 60:02d}:{s % 60:02d}'


def write_jsonl(path: str, record: dict):
  with open(path, 'a') as f:
    f.write(json.dumps(record) + '\n')


class _NoWriter:
  """TensorBoard's writer for the processes that write no files."""

  def add_scalar(self, *args, **kwargs):
    pass

  def close(self):
    pass


def summary_writer(logdir: str, *, purge_step: int, enabled: bool = True):
  """tensorboardX's SummaryWriter (or one that writes nothing). tensorboardX imports torch
  whenever it is installed, only to accept torch tensors (1.2 s per process here), so it is
  imported with torch hidden unless torch is loaded already."""
  if not enabled:
    return _NoWriter()
  hide = 'torch' not in sys.modules
  if hide:
    sys.modules['torch'] = None  # makes `import torch` raise ImportError
  try:
    from tensorboardX import SummaryWriter
  finally:
    if hide:
      del sys.modules['torch']
  return SummaryWriter(logdir, purge_step=purge_step)


def write_json(path: str, obj):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def icfil_dir(workdir: str, shots: int) -> str:
  """Where `tune_icfil --test` writes a checkpoint's ICFIL score, and where the results page
  looks for one kept beside a cell."""
  return os.path.join(workdir, f'icfil_{shots}shot')


def save_params(path: str, params) -> None:
  """A parameter tree as a compressed .npz of '/'-joined paths, written whole or not at all.
  A Conv4 learner is ~0.5 MB: small enough to commit beside its record, so that a later
  session scores it (`tune_icfil --params`) when the workdir and its teachers are gone."""
  from flax import traverse_util  # a library import, kept out of this module's import time
  tmp = f'{path}.partial.npz'
  np.savez_compressed(tmp, **{k: np.asarray(v) for k, v in traverse_util.flatten_dict(
      dict(params), sep='/').items()})
  os.replace(tmp, path)


def load_params(path: str) -> dict:
  """`save_params`'s tree back, as numpy arrays (no pickle: a hostile file cannot run code)."""
  from flax import traverse_util
  try:
    with np.load(path, allow_pickle=False) as z:
      return traverse_util.unflatten_dict({tuple(k.split('/')): z[k] for k in z.files})
  except (ValueError, OSError) as e:  # pickled objects, or not an .npz at all
    raise UserError(f'{path} is not a parameter file of plain arrays ({e}): pass the '
                    'learner.npz a run wrote') from None


def cpu_model(cpuinfo: str = '/proc/cpuinfo') -> str:
  """The CPU's model and widest vector unit. XLA's CPU code differs with the vector unit, so
  the same seed trains different teachers on an AVX-512 machine than on an AVX2 one."""
  try:
    with open(cpuinfo) as f:
      info = f.read(65536)
  except OSError:
    return platform.processor() or platform.machine()
  name = next((l.split(':', 1)[1].strip() for l in info.splitlines()
               if l.startswith('model name')), platform.machine())
  flags = next((l.split(':', 1)[1].split() for l in info.splitlines()
                if l.startswith('flags')), [])
  isa = next((i for i in ('avx512f', 'avx2', 'avx') if i in flags), '')
  return f'{name} ({isa})' if isa else name


def provenance() -> dict:
  """Where and on what code a result was produced: commit (with uncommitted changes to tracked
  files flagged), jax version, CPU count, model and load average."""
  here = os.path.dirname(os.path.abspath(__file__))
  def git(*args):
    try:
      return subprocess.run(['git', '-C', here, *args], capture_output=True, text=True,
                            timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
      return ''
  import jax  # a library import, kept out of this module's import time
  return {'commit': git('rev-parse', 'HEAD') or 'unknown',
          'dirty': bool(git('status', '--porcelain', '--untracked-files=no')),
          'jax': jax.__version__, 'backend': jax.default_backend(),
          'cpus': os.cpu_count(), 'load_avg': [round(x, 2) for x in os.getloadavg()],
          'machine': platform.processor() or platform.machine(), 'cpu': cpu_model()}


def flatten(tree: dict, prefix: str = '') -> dict:
  """{'a.b': leaf} of a nested dict."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


class UserError(Exception):
  """An error the user can fix (bad data, workdir or config); the message says how. Command-line
  entry points print it as one line, without a traceback, and exit with `status` (purer_jax.cli):
  2 for a refused command line (bad config value, busy workdir), 1 for the others."""
  status = 1


def compiled_gflop(fn, *args, **kwargs) -> float:
  """GFLOP of one call of the jitted `fn` at these arguments (arrays or ShapeDtypeStructs), from
  XLA's cost analysis of the compiled program: never a hand count."""
  cost = fn.lower(*args, **kwargs).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0]
  return float(cost['flops']) / 1e9
