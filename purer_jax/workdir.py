"""Whether a config may reuse a workdir, and the integrity of what the workdir holds.

A workdir is hours of compute: the teacher zoo (W/teachers), a meta-training run
(W/checkpoints, metrics.jsonl) and results. The zoo records the config fields that define the
pool, the training checkpoints those that define the run; a config that differs in any of
them is refused before any work (`check`). Every checkpoint gets a digest of its files, since
orbax reads a flipped byte in compressed data as silently wrong values (`digest`, `verify`).
W/config.json is the last command's config; the ones it replaced are in W/config_history/.
A command holds W/.lock while it runs, so two commands never write one workdir (`lock`).
W/segments.json lists each command's stretch of meta-training (`begin_segment`), so a resumed
run's record gives the wall time of every segment, an interrupted one's too.
"""
import atexit
import fcntl
import hashlib
import json
import os
import socket
import sys
import time

from purer_jax import utils

# The pretraining recipe, irrelevant to teachers imported from PyTorch.
RECIPE = ('teachers.epochs', 'teachers.batch_size', 'teachers.lr', 'teachers.schedule',
          'teachers.label_smoothing', 'teachers.milestones', 'teachers.gamma', 'teachers.clip',
          'teachers.heldout_frac', 'teachers.max_per_class', 'teachers.keep', 'teachers.augment',
          'teachers.shift')
# Config fields that define the teacher pool. Not `teachers.num`: a pool is teachers
# 0..num-1 of a zoo, so a bigger zoo serves a smaller pool and a bigger pool extends the zoo.
# Not data folders or torch_dir: a moved dataset is the same data.
POOL = ('seed', 'data.dataset', 'data.extra_dataset', 'teachers.source', 'teachers.archs',
        'teachers.assignment', 'teachers.ways') + RECIPE
# Config fields (or whole groups) that define a meta-training run: its pool and how it uses
# it, the learner, the bank, ECI, the training levers and checkpoint selection. Not
# `train.iterations`: a longer run continues a shorter one (`check`).
RUN = ('seed', 'data.dataset', 'data.extra_dataset', 'teachers', 'meta', 'inversion', 'eci',
       'distil', 'train', 'eval.val_seed')
# Not identity either: how the step is computed or placed (same results), and schedules.
RUN_EXCLUDE = ('teachers.torch_dir', 'inversion.strategy', 'inversion.shard', 'inversion.steps',
               'train.iterations', 'train.log_every', 'train.ckpt_every', 'train.png_every')
RUN_FILE = 'run.json'  # in W/checkpoints: deleting that folder restarts meta-training
DIGEST_FILE = 'digest.json'
OVERRIDE_FLAG = '--allow_config_change'
LOCK_FILE = '.lock'
_HELD = {}  # lock path -> open descriptor, for the locks this process holds


class WorkdirError(utils.UserError):
  """A workdir that does not fit the config, or a damaged file in it."""


class BusyError(WorkdirError):
  """Another live process holds the workdir's lock."""
  status = 2


def flat(config) -> dict:
  """{'group.field': JSON value} of a ConfigDict (tuples as lists, as config.json has them)."""
  return utils.flatten(json.loads(config.to_json_best_effort()))


def _select(values: dict, fields, exclude) -> dict:
  inside = lambda k, names: any(k == n or k.startswith(n + '.') for n in names)
  return {k: v for k, v in values.items() if inside(k, fields) and not inside(k, exclude)}


def pool_identity(config) -> dict:
  # The seed draws pretrained teachers' inits and random class subsets.
  torch = config.teachers.source == 'torch'
  return _select(flat(config), POOL, RECIPE + ('seed',) if torch else ())


def run_identity(config) -> dict:
  exclude = RUN_EXCLUDE + (RECIPE if config.teachers.source == 'torch' else ())
  return _select(flat(config), RUN, exclude)


def differences(recorded: dict, current: dict) -> list:
  """[(field, old, new)]; fields the record lacks (written by older code) are not compared."""
  return [(k, recorded[k], current.get(k)) for k in sorted(recorded)
          if k in current and recorded[k] != current[k]]


def checkpoint_steps(workdir: str) -> list:
  d = os.path.join(workdir, 'checkpoints')
  return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def recorded_run(workdir: str) -> dict:
  return _read_json(os.path.join(workdir, 'checkpoints', RUN_FILE)) or {}


def record_run(config, workdir: str):
  """Called when meta-training starts: the checkpoints that follow belong to this run."""
  utils.write_json(os.path.join(workdir, 'checkpoints', RUN_FILE), run_identity(config))


def check(config, workdir: str, *, zoo_config: dict, allow_change: bool = False):
  """Raises WorkdirError naming every field where `config` differs from what the workdir's
  teachers (`zoo_config`, from their manifest) or its meta-training checkpoints were made
  with. With `allow_change` the differences are printed instead."""
  problems = []
  diff = differences(zoo_config or {}, pool_identity(config))
  if diff:
    problems.append((f'the teacher zoo in {os.path.join(workdir, "teachers")} was made with '
                     'other values', diff, ''))
  steps = checkpoint_steps(workdir)
  diff = differences(recorded_run(workdir), run_identity(config)) if steps else []
  if steps and steps[-1] > config.train.iterations:  # would report that run as this one
    diff.append(('train.iterations', f'{steps[-1]} done', config.train.iterations))
  if diff:
    ckpts = os.path.join(workdir, 'checkpoints')
    problems.append((f'the meta-training checkpoint {steps[-1]} in {ckpts} was made with other '
                     'values', diff, f'or delete {ckpts} to meta-train again with these teachers'))
  if not problems:
    return
  lines = []
  for what, diff, alt in problems:
    lines.append(what + ':')
    lines += [f'  {k}: {old!r} (workdir) != {new!r} (now)' for k, old, new in diff]
    lines += [f'  ({alt})'] if alt else []
  msg = '\n'.join(lines)
  if allow_change:
    print(f'warning: {OVERRIDE_FLAG}: reusing {workdir} although\n{msg}')
    return
  raise WorkdirError(
      f'{workdir} holds work made with a different config.\n{msg}\nUse a new --workdir, or '
      f'pass {OVERRIDE_FLAG} to reuse this one anyway.')


def record_config(config, workdir: str) -> str:
  """Writes W/config.json; a different previous one moves to W/config_history/."""
  path = os.path.join(workdir, 'config.json')
  new = json.loads(config.to_json_best_effort())
  old = _read_json(path)
  if old is not None and old != new:
    hist = os.path.join(workdir, 'config_history')
    os.makedirs(hist, exist_ok=True)
    stamp = time.strftime('%Y%m%d-%H%M%S', time.localtime(os.path.getmtime(path)))
    dest = os.path.join(hist, f'config_{stamp}.json')
    n = 1
    while os.path.exists(dest):
      dest, n = os.path.join(hist, f'config_{stamp}_{n}.json'), n + 1
    os.replace(path, dest)
  if old != new:
    utils.write_json(path, new)
  return path


SEGMENTS_FILE = 'segments.json'


def begin_segment(workdir: str, from_it: int) -> list:
  """Opens this command's meta-training segment in W/segments.json. A segment left open was
  interrupted: it ends at metrics.jsonl's last write and at the checkpoint this one resumes."""
  path = os.path.join(workdir, SEGMENTS_FILE)
  segments = _read_json(path) or []
  if segments and 'ended' not in segments[-1]:
    last = segments[-1]
    metrics = os.path.join(workdir, 'metrics.jsonl')
    ended = os.path.getmtime(metrics) if os.path.isfile(metrics) else last['started']
    last.update(ended=ended, wall_s=round(ended - last['started'], 1), to_it=int(from_it),
                interrupted=True)
  segments.append({'started': time.time(), 'from_it': int(from_it), 'host': socket.gethostname()})
  utils.write_json(path, segments)
  return segments


def end_segment(workdir: str, to_it: int) -> list:
  """Closes the segment `begin_segment` opened; returns every segment of the run."""
  path = os.path.join(workdir, SEGMENTS_FILE)
  segments = _read_json(path)
  now = time.time()
  segments[-1].update(ended=now, wall_s=round(now - segments[-1]['started'], 1),
                      to_it=int(to_it))
  utils.write_json(path, segments)
  return segments


def _read_json(path: str):
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise WorkdirError(f'{path} is damaged ({type(e).__name__}: {e}); restore it from a backup '
                       'or delete it') from None


def digest(path: str) -> str:
  """sha256 over the files of a checkpoint folder (names and contents, in sorted order)."""
  h = hashlib.sha256()
  for root, dirs, files in os.walk(path):
    dirs.sort()
    for name in sorted(files):
      if name == DIGEST_FILE and root == path:
        continue
      full = os.path.join(root, name)
      h.update(os.path.relpath(full, path).encode() + b'\0')
      with open(full, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
          h.update(chunk)
  return h.hexdigest()


def verify(path: str, expected, what: str, fix: str):
  """Raises WorkdirError if the folder's files no longer have digest `expected` (None: not
  recorded, e.g. written by older code or killed before recording it)."""
  if expected is not None and digest(path) != expected:
    raise WorkdirError(f'{what}: the files of {path} changed since they were written (damaged '
                       f'or partly overwritten): {fix}')


def damaged(what: str, path: str, error: Exception, fix: str) -> WorkdirError:
  """The error for a checkpoint that exists but cannot be read."""
  detail = str(error).strip().splitlines()[0][:300] if str(error).strip() else ''
  return WorkdirError(f'{what}: cannot read {path} ({type(error).__name__}: {detail}). The '
                      f'files are damaged or incomplete: {fix}')


def lock(workdir: str, process: int = 0) -> str:
  """Makes this process the one writer of `workdir` until it exits; returns the lock's path.

  An exclusive flock on W/.lock (W/.lock.<i> for process i > 0 of a jax.distributed run, whose
  processes share W), so the kernel releases it when its holder dies, however it dies. The
  file holds pid, host and start time, for the refusal to name the holder. A lock held by a
  live process raises BusyError, and nothing is written; a file left by a killed process is
  taken over with a warning. Taking a lock this process holds again does nothing.
  """
  path = os.path.abspath(os.path.join(workdir, LOCK_FILE + (f'.{process}' if process else '')))
  if path in _HELD:
    return path
  os.makedirs(workdir, exist_ok=True)
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _holder(fd)
      os.close(fd)
      raise BusyError(
          f'{workdir} is in use by pid {holder.get("pid", "?")} on {holder.get("host", "?")} '
          f'(since {holder.get("started", "?")}): wait for that command to end, or use another '
          '--workdir') from None
    if _same_file(fd, path):  # else its holder released it (unlinked) between open and flock
      break
    os.close(fd)
  old = _holder(fd)
  if old:
    print(f'warning: taking over {path}, left by pid {old.get("pid", "?")} on '
          f'{old.get("host", "?")} (since {old.get("started", "?")}), which ended without '
          'releasing it', file=sys.stderr)
  record = {'pid': os.getpid(), 'host': socket.gethostname(),
            'started': time.strftime('%Y-%m-%d %H:%M:%S')}
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps(record).encode(), 0)
  _HELD[path] = fd
  atexit.register(unlock, path)
  return path


def unlock(path: str):
  """Releases a lock `lock` took (at exit, or earlier)."""
  fd = _HELD.pop(path, None)
  if fd is None:
    return
  # Unlinked while still held: a process that opened the file meanwhile sees it is gone.
  if _same_file(fd, path):
    os.unlink(path)
  os.close(fd)


def _same_file(fd: int, path: str) -> bool:
  try:
    return os.path.samestat(os.fstat(fd), os.stat(path))
  except FileNotFoundError:
    return False


def _holder(fd: int) -> dict:
  """The pid, host and start time a lock file records ({} if empty or partly written)."""
  try:
    holder = json.loads(os.pread(fd, 4096, 0) or b'{}')
  except ValueError:
    return {}
  return holder if isinstance(holder, dict) else {}
