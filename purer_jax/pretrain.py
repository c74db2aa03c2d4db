"""Trains the teacher pool (docs/DESIGN.md §3) into `W/teachers/` (manifest + orbax checkpoints).

  python -m purer_jax.pretrain --config=configs/ss.py:smoke --workdir=W

Resumable: teachers already in the manifest (with their checkpoint) are skipped.
"""
import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from purer_jax import data as data_lib
from purer_jax import cli, models, utils, zoo
from purer_jax import workdir as workdir_lib



def pool_plan(config, num_train_classes: dict) -> list:
  """[(dataset, arch, classes)] per teacher: disjoint blocks or random subsets."""
  t = config.teachers
  datasets = [name for name, _, _ in data_lib.run_datasets(config)]
  rng = np.random.default_rng([config.seed, 7])
  plan = []
  # `num` caps a disjoint pool (ceil(64 / ways) = 13 teachers at most) and sizes a random one.
  n = (min(t.num, math.ceil(num_train_classes[datasets[0]] / t.ways))
       if t.assignment == 'disjoint' else t.num)
  for i in range(n):
    ds = datasets[0] if len(datasets) == 1 else datasets[rng.integers(len(datasets))]
    arch = t.archs[i % len(t.archs)] if len(datasets) == 1 else t.archs[rng.integers(len(t.archs))]
    if t.assignment == 'disjoint':
      classes = list(range(t.ways * i, min(t.ways * (i + 1), num_train_classes[ds])))
    elif t.assignment == 'random':
      classes = sorted(rng.choice(num_train_classes[ds], t.ways, replace=False).tolist())
    else:
      raise ValueError(f'teachers.assignment must be disjoint or random, got {t.assignment!r}')
    plan.append((ds, arch, classes))
  return plan


def split_heldout(split: data_lib.SplitData, classes, frac: float, max_per_class: int = 0):
  """Per class: first (1-frac) of its images train, the rest held out; labels 0..n-1."""
  ci = split.class_indices()
  tr, ho = [], []
  for new, c in enumerate(classes):
    rows = ci[c][:max_per_class] if max_per_class else ci[c]
    k = int(round(len(rows) * (1 - frac)))
    tr.append((rows[:k], new))
    ho.append((rows[k:], new))
  def gather(parts):
    rows = np.concatenate([r for r, _ in parts])
    labels = np.concatenate([np.full(len(r), y, np.int32) for r, y in parts])
    return data_lib.normalize(split.images[rows], split.dataset), labels
  return gather(tr), gather(ho)


def make_optimizer(model, tc, steps_per_epoch: int):
  """Conv4: Adam; ResNets: SGD with momentum 0.9 and weight decay 5e-4 (docs/DESIGN.md §3)."""
  return _optimizer(isinstance(model, models.Conv4), tuple(tc.milestones), float(tc.gamma),
                    float(tc.clip), int(steps_per_epoch))


@functools.lru_cache(maxsize=None)
def _optimizer(adam: bool, milestones: tuple, gamma: float, clip: float, steps_per_epoch: int):
  # Cached: equal settings give the same (static) `tx`, so teachers share a compiled step.
  schedule = optax.piecewise_constant_schedule(
      0.01, {m * steps_per_epoch: gamma for m in milestones})
  if adam:
    opt = optax.adam(schedule)
  else:
    opt = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(schedule, momentum=0.9))
  return optax.chain(optax.clip_by_global_norm(clip), opt)


@functools.partial(jax.jit, static_argnames=('model', 'tx'), donate_argnums=(0, 1))
def train_step(variables, opt_state, x, y, *, model, tx):
  def loss_fn(params):
    logits, new = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                              train=True, mutable=['batch_stats'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new
  (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables['params'])
  updates, opt_state = tx.update(grads, opt_state, variables['params'])
  params = optax.apply_updates(variables['params'], updates)
  return {'params': params, 'batch_stats': new['batch_stats']}, opt_state, loss


@functools.partial(jax.jit, static_argnames=('model',))
def predict(variables, x, *, model):
  return jnp.argmax(model.apply(variables, x, train=False), -1)


def accuracy(variables, model, x, y, batch=500) -> float:
  hits = sum(int(np.sum(np.asarray(predict(variables, x[i:i + batch], model=model))
                        == y[i:i + batch])) for i in range(0, len(x), batch))
  return hits / len(x)


KEEP = ('best', 'last')


def train_teacher(model, train, heldout, tc, rng, log=None):
  """Trains one teacher; returns (variables, held-out accuracy) of the epoch `tc.keep` names:
  the best held-out one or the last. Without held-out images (teachers.heldout_frac=0: every
  image trains) the accuracy is None and only `last` is possible."""
  if tc.keep not in KEEP:
    raise ValueError(f'config.teachers.keep={tc.keep!r}: choose one of {" | ".join(KEEP)}')
  scored = len(heldout[0]) > 0
  if not scored and tc.keep != 'last':
    raise ValueError('config.teachers.heldout_frac=0 leaves no held-out images to choose the '
                     "best epoch on: set config.teachers.keep='last' (or a held-out fraction)")
  x, y = train
  bs = min(tc.batch_size, len(x))
  steps = len(x) // bs
  tx = make_optimizer(model, tc, steps)
  key, rng = jax.random.split(rng)
  variables = models.init(model, key)
  opt_state = tx.init(variables['params'])
  best, best_acc = None, -1.0
  np_rng = np.random.default_rng(np.asarray(jax.random.key_data(rng)))
  for epoch in range(tc.epochs):
    perm = np_rng.permutation(len(x))
    for s in range(steps):
      b = perm[s * bs:(s + 1) * bs]
      variables, opt_state, loss = train_step(variables, opt_state, x[b], y[b], model=model, tx=tx)
    acc = accuracy(variables, model, *heldout) if scored else None
    if not np.isfinite(float(loss)):
      raise FloatingPointError(f'teacher training diverged at epoch {epoch} (loss {loss})')
    if tc.keep == 'last' or acc > best_acc:  # a copy, not the live state (the original's bug)
      best, best_acc = jax.tree.map(np.array, variables), acc
    if log:
      log(epoch, float(loss), acc)
  return best, best_acc


def _fmt(acc) -> str:
  return '—' if acc is None else f'{acc:.3f}'


def _splits(config) -> dict:
  return {name: data_lib.load(name, 'meta_train', d, source)
          for name, d, source in data_lib.run_datasets(config)}


def missing(config, workdir: str, splits=None) -> tuple:
  """(plan, indices of the planned teachers the zoo lacks)."""
  splits = splits or _splits(config)
  plan = pool_plan(config, {k: v.num_classes for k, v in splits.items()})
  done = zoo.complete(workdir)
  return plan, [i for i in range(len(plan)) if i not in done]


def run(config, workdir: str) -> list:
  """Trains every teacher the manifest lacks; returns the zoo's entries."""
  splits = _splits(config)
  plan, todo = missing(config, workdir, splits)
  if not todo:
    print(f'teacher zoo complete: {len(plan)} teachers in {zoo.teachers_dir(workdir)}')
  prog = utils.Progress(len(plan), 'teachers', start=len(plan) - len(todo))
  for n, i in enumerate(todo):
    ds, arch, classes = plan[i]
    split = splits[ds]
    model = models.create(arch, len(classes), data_lib.IMAGE_SIZE[ds])
    train, heldout = split_heldout(split, classes, config.teachers.heldout_frac,
                                   config.teachers.max_per_class)
    t0 = time.time()
    epochs = utils.Progress(config.teachers.epochs, f'  teacher {i} epoch', every_s=30)
    variables, acc = train_teacher(
        model, train, heldout, config.teachers, jax.random.fold_in(jax.random.key(config.seed), i),
        log=lambda e, loss, acc: epochs.update(e + 1, f'loss {loss:.3f} held-out {_fmt(acc)}'))
    teacher = zoo.Teacher(index=i, arch=arch, num_classes=len(classes),
                          image_size=data_lib.IMAGE_SIZE[ds], dataset=ds, classes=classes,
                          class_names=[split.class_names[c] for c in classes],
                          heldout_acc=None if acc is None else float(acc), checkpoint='',
                          train_seconds=round(time.time() - t0, 1))
    zoo.save_teacher(workdir, teacher, variables,
                     meta={'source': 'pretrain', 'assignment': config.teachers.assignment,
                           'config': workdir_lib.pool_identity(config)})
    prog.update(len(plan) - len(todo) + n + 1,
                f'teacher {i} ({arch}, {ds}) held-out acc {_fmt(acc)} in {time.time() - t0:.0f}s',
                force=True)
  return zoo.read_manifest(workdir)['teachers']


def main(argv):
  del argv
  config, workdir = cli.config_and_workdir(splits=('meta_train',))
  teachers = run(config, workdir)
  accs = [t['heldout_acc'] for t in teachers if t['heldout_acc'] is not None]
  print(f'{len(teachers)} teachers' + (f', mean held-out accuracy {np.mean(accs):.3f} (min '
                                       f'{np.min(accs):.3f}, max {np.max(accs):.3f})' if accs
                                       else ' (no held-out images: the last epochs kept)'))


if __name__ == '__main__':
  cli.run(main)
