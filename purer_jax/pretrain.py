"""Trains the teacher pool (docs/DESIGN.md §3) into `W/teachers/` (manifest + orbax checkpoints).

  python -m purer_jax.pretrain --config=configs/ss.py:smoke --workdir=W

Resumable: teachers already in the manifest (with their checkpoint) are skipped.
"""
import functools
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from purer_jax import data as data_lib
from purer_jax import augment, cli, models, utils, zoo
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


SCHEDULES = ('step', 'cosine', 'onecycle')


def make_optimizer(model, tc, steps_per_epoch: int):
  """Conv4: Adam; ResNets: SGD with momentum 0.9 and weight decay 5e-4 (docs/DESIGN.md §3).
  The lr follows `tc.schedule`: the original's steps at `tc.milestones`, a cosine decay to 0,
  or a one-cycle (warm-up to `tc.lr` over the first 30%, then cosine annealing)."""
  if tc.schedule not in SCHEDULES:
    raise ValueError(f'config.teachers.schedule={tc.schedule!r}: choose one of '
                     f'{" | ".join(SCHEDULES)}')
  return _optimizer(isinstance(model, models.Conv4), tc.schedule, float(tc.lr),
                    tuple(tc.milestones), float(tc.gamma), float(tc.clip), int(steps_per_epoch),
                    int(tc.epochs))


@functools.lru_cache(maxsize=None)
def _optimizer(adam: bool, schedule: str, lr: float, milestones: tuple, gamma: float, clip: float,
               steps_per_epoch: int, epochs: int):
  # Cached: equal settings give the same (static) `tx`, so teachers share a compiled step.
  total = steps_per_epoch * epochs
  if schedule == 'step':
    sched = optax.piecewise_constant_schedule(lr, {m * steps_per_epoch: gamma for m in milestones})
  elif schedule == 'cosine':
    sched = optax.cosine_decay_schedule(lr, total)
  else:
    sched = optax.cosine_onecycle_schedule(total, lr)
  if adam:
    opt = optax.adam(sched)
  else:
    opt = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(sched, momentum=0.9))
  return optax.chain(optax.clip_by_global_norm(clip), opt)


def _step(variables, opt_state, x, y, key=None, *, model, tx, smoothing, flip=False, shift=0):
  if flip or shift:
    x = augment.augment(x, key, flip=flip, shift=shift)

  def loss_fn(params):
    logits, new = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                              train=True, mutable=['batch_stats'])
    if not smoothing:  # the integer-label loss: the same teachers as before the option existed
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new
    target = optax.smooth_labels(jax.nn.one_hot(y, logits.shape[-1]), smoothing)
    return optax.softmax_cross_entropy(logits, target).mean(), new
  (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables['params'])
  updates, opt_state = tx.update(grads, opt_state, variables['params'])
  params = optax.apply_updates(variables['params'], updates)
  return {'params': params, 'batch_stats': new['batch_stats']}, opt_state, loss


@functools.partial(jax.jit, static_argnames=('model', 'tx', 'smoothing', 'flip', 'shift'),
                   donate_argnums=(0, 1))
def train_step(variables, opt_state, x, y, keys=None, *, model, tx, smoothing=0.0, flip=False,
               shift=0):
  """One step of every teacher in the lists, in one program: XLA:CPU keeps each teacher's
  convolutions as they are and overlaps them (a vmap would turn them into grouped convolutions,
  3x slower here: docs/results/bench/pretrain_throughput.json)."""
  outs = [_step(*a, model=model, tx=tx, smoothing=smoothing, flip=flip, shift=shift)
          for a in zip(variables, opt_state, x, y, keys or [None] * len(x))]
  return [o[0] for o in outs], [o[1] for o in outs], jnp.stack([o[2] for o in outs])


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
  return train_teachers(model, [train], [heldout], tc, [rng],
                        log=log and (lambda e, losses, accs: log(e, losses[0], accs[0])))[0]


def train_teachers(model, trains, heldouts, tc, rngs, log=None):
  """`train_teacher` for teachers of one shape (architecture, classes, images), each with its
  own data and key, trained together in one compiled program; [(variables, accuracy)]."""
  if tc.keep not in KEEP:
    raise ValueError(f'config.teachers.keep={tc.keep!r}: choose one of {" | ".join(KEEP)}')
  scored = len(heldouts[0][0]) > 0
  if not scored and tc.keep != 'last':
    raise ValueError('config.teachers.heldout_frac=0 leaves no held-out images to choose the '
                     "best epoch on: set config.teachers.keep='last' (or a held-out fraction)")
  n = len(trains[0][0])
  bs = min(tc.batch_size, n)
  steps = n // bs
  tx = make_optimizer(model, tc, steps)
  aug = augment.settings(tc, 'teachers')
  variables, opt_state, np_rngs, aug_keys = [], [], [], []
  for rng in rngs:
    key, rng = jax.random.split(rng)
    variables.append(models.init(model, key))
    opt_state.append(tx.init(variables[-1]['params']))
    np_rngs.append(np.random.default_rng(np.asarray(jax.random.key_data(rng))))
    aug_keys.append(jax.random.fold_in(rng, 1))  # its own stream: the others as without it
  kept = [(None, -1.0)] * len(trains)
  for epoch in range(tc.epochs):
    perms = [r.permutation(n) for r in np_rngs]
    for s in range(steps):
      b = [p[s * bs:(s + 1) * bs] for p in perms]
      variables, opt_state, loss = train_step(
          variables, opt_state, [x[i] for (x, _), i in zip(trains, b)],
          [y[i] for (_, y), i in zip(trains, b)],
          [jax.random.fold_in(k, epoch * steps + s) for k in aug_keys] if any(aug.values())
          else None, model=model, tx=tx, smoothing=float(tc.label_smoothing), **aug)
    losses = np.asarray(loss, np.float64)
    if not np.all(np.isfinite(losses)):
      raise FloatingPointError(f'teacher training diverged at epoch {epoch} (losses {losses})')
    accs = [accuracy(v, model, *h) if scored else None for v, h in zip(variables, heldouts)]
    for t, (v, acc) in enumerate(zip(variables, accs)):
      if tc.keep == 'last' or acc > kept[t][1]:  # a copy, not the live state (the original's bug)
        kept[t] = (jax.tree.map(np.array, v), acc)
    if log:
      log(epoch, [float(x) for x in losses], accs)
  return kept


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


def _groups(config, plan, todo, splits) -> list:
  """`todo` in runs of at most `teachers.together` (0: no limit) teachers of one shape: the
  same dataset, architecture, class count and images per class, so one program trains them."""
  counts = {ds: [len(r) for r in split.class_indices()] for ds, split in splits.items()}
  cap = config.teachers.max_per_class
  def shape(i):
    ds, arch, classes = plan[i]
    return ds, arch, tuple(min(counts[ds][c], cap) if cap else counts[ds][c] for c in classes)
  limit = config.teachers.together or len(todo)
  groups = []
  for i in todo:
    if groups and len(groups[-1]) < limit and shape(groups[-1][0]) == shape(i):
      groups[-1].append(i)
    else:
      groups.append([i])
  return groups


def run(config, workdir: str) -> list:
  """Trains every teacher the manifest lacks; returns the zoo's entries."""
  splits = _splits(config)
  plan, todo = missing(config, workdir, splits)
  if not todo:
    print(f'teacher zoo complete: {len(plan)} teachers in {zoo.teachers_dir(workdir)}')
  prog = utils.Progress(len(plan), 'teachers', start=len(plan) - len(todo))
  done = len(plan) - len(todo)
  for group in _groups(config, plan, todo, splits):
    ds, arch, classes = plan[group[0]]
    split = splits[ds]
    model = models.create(arch, len(classes), data_lib.IMAGE_SIZE[ds])
    parts = [split_heldout(split, plan[i][2], config.teachers.heldout_frac,
                           config.teachers.max_per_class) for i in group]
    t0 = time.time()
    name = f'teacher {group[0]}' if len(group) == 1 else f'teachers {group[0]}-{group[-1]}'
    epochs = utils.Progress(config.teachers.epochs, f'  {name} epoch', every_s=30)
    kept = train_teachers(
        model, [p[0] for p in parts], [p[1] for p in parts], config.teachers,
        [jax.random.fold_in(jax.random.key(config.seed), i) for i in group],
        log=lambda e, losses, accs: epochs.update(
            e + 1, f'loss {np.mean(losses):.3f} held-out {_fmt(_mean(accs))}'))
    seconds = (time.time() - t0) / len(group)  # a group's time, shared evenly
    for i, (variables, acc) in zip(group, kept):
      classes = plan[i][2]
      teacher = zoo.Teacher(index=i, arch=arch, num_classes=len(classes),
                            image_size=data_lib.IMAGE_SIZE[ds], dataset=ds, classes=classes,
                            class_names=[split.class_names[c] for c in classes],
                            heldout_acc=None if acc is None else float(acc), checkpoint='',
                            train_seconds=round(seconds, 1))
      zoo.save_teacher(workdir, teacher, variables,
                       meta={'source': 'pretrain', 'assignment': config.teachers.assignment,
                             'config': workdir_lib.pool_identity(config),
                             'trained_in': os.path.abspath(workdir)})
      done += 1
      prog.update(done, f'teacher {i} ({arch}, {ds}) held-out acc {_fmt(acc)} in {seconds:.0f}s',
                  force=True)
  return zoo.read_manifest(workdir)['teachers']


def _mean(accs):
  return None if accs[0] is None else float(np.mean(accs))


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
