"""ICFIL: inversion calibration following the inner loop, at meta-test time (docs/DESIGN.md §7).

A plug-in of the evaluation harness for any meta-learned model (params of
`evaluate.meta_model(config)`) and any learner that adapts parameters (`meta.Learner.adapt`:
MAML all of them, ANIL the head; ProtoNet adapts none and is refused). Per test task:
  1. adapt on the real support with the learner's own test-time adaptation (transductive
     BN) -> φ + head, the model plain evaluation scores;
  2. invert the adapted model into a pseudo support (`images_per_class` per task class) with
     §4's loss (`deep_inversion.objective`, as the bank), BN-matching the pseudo batch to the
     adapted model's BN-input statistics on the real support;
  3. calibrate the backbone φ (head fixed) with the supervised contrastive loss between real
     support features and pseudo features;
  4. predict the query with the calibrated backbone and the adapted head.
Each step is a compiled program and tasks run one after the other (why: see 'Compiled
steps' below). Task i is drawn from (seed, i) as in `evaluate.task_accuracies`, and its
pseudo support from fold_in(key(seed), i), so results are paired with plain evaluation and
repeatable.
"""
import functools
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from purer_jax import bank as bank_lib
from purer_jax import data as data_lib
from purer_jax import deep_inversion, evaluate, meta, utils, viz
from purer_jax.meta import maml

HEAD = 'head'
# The fields of config.icfil that set the calibration (`enabled` only switches it on).
FIELDS = ('tau', 'images_per_class', 'inv_steps', 'cal_steps', 'lr')


class Settings(NamedTuple):
  """Static ICFIL hyper-parameters (config.icfil, plus config.inversion's loss weights,
  jitter and Adam lr for the pseudo support)."""
  tau: float
  images_per_class: int
  inv_steps: int
  cal_steps: int
  lr: float
  inv_lr: float = 0.25
  jitter: int = 2
  weights: deep_inversion.Weights = deep_inversion.Weights()

  @classmethod
  def from_config(cls, icfil_config, inversion_config) -> 'Settings':
    s = cls(tau=float(icfil_config.tau), images_per_class=int(icfil_config.images_per_class),
            inv_steps=int(icfil_config.inv_steps), cal_steps=int(icfil_config.cal_steps),
            lr=float(icfil_config.lr), inv_lr=float(inversion_config.lr),
            jitter=int(inversion_config.jitter),
            weights=deep_inversion.Weights.from_config(inversion_config))
    s.check()
    return s

  def check(self):
    bad = [(f'config.icfil.{k}', v, need) for k, v, ok, need in (
        ('tau', self.tau, self.tau > 0, '> 0'),
        ('images_per_class', self.images_per_class, self.images_per_class >= 1, '>= 1'),
        ('inv_steps', self.inv_steps, self.inv_steps >= 0, '>= 0'),
        ('cal_steps', self.cal_steps, self.cal_steps >= 0, '>= 0'),
        ('lr', self.lr, self.lr >= 0, '>= 0')) if not ok]
    if self.inv_lr <= 0:
      bad.append(('config.inversion.lr', self.inv_lr, '> 0'))
    if bad:
      raise ValueError('; '.join(f'{k} must be {need}, got {v!r}' for k, v, need in bad))

  def compiled(self) -> 'Settings':
    """What the compiled steps see as static: loop counts zeroed, tau and lr left out (they
    are traced arguments), so changing them never recompiles (the tuner's trials)."""
    return self._replace(inv_steps=0, cal_steps=0, tau=1.0, lr=0.0)


# ---------------------------------------------------------------------------------------------
# Loss terms and measurements (pure).

def features(params, x, *, model):
  """Backbone features in transductive mode (the batch's own BN statistics)."""
  return model.apply({'params': params}, x, train=True, features=True)


def support_statistics(params, x, *, model):
  """BN-input mean/biased var of each BN layer of the adapted model on the real support."""
  _, state = model.apply({'params': params}, x, train=True, mutable=['bn_stats'])
  return state['bn_stats']


def pseudo_labels(ways: int, settings: Settings):
  """Labels of the pseudo support: the task's classes 0..ways-1, interleaved."""
  return bank_lib.targets(ways, settings.images_per_class)


def inversion_objective(x, params, stats, key, *, model, settings: Settings):
  """§4's loss (`deep_inversion.objective`) for the adapted model: CE to its head, BN
  matching of the (jittered) pseudo batch's own BN-input statistics to the real support's
  `stats`, TV and L2 on `x`. Returns (loss, unweighted terms)."""
  logits, state = model.apply({'params': params},
                              deep_inversion.jitter(x, key, settings.jitter), train=True,
                              mutable=['bn_stats'])
  return deep_inversion.objective(x, logits, state['bn_stats'], stats,
                                  pseudo_labels(model.num_classes, settings), settings.weights)


def _unit(f):
  return f / optax.safe_norm(f, 1e-12, axis=-1, keepdims=True)


def contrastive_loss(support_f, support_y, pseudo_f, pseudo_y, tau):
  """−Σ_{x∈S} Σ_{x̂⁺} log softmax over all pseudo x̂ of φ(x)ᵀφ(x̂)/τ, taken at x̂⁺ (§7), on
  L2-normalised features; x̂⁺ ranges over the pseudo images of x's class."""
  logp = jax.nn.log_softmax(_unit(support_f) @ _unit(pseudo_f).T / tau, axis=-1)
  return -jnp.sum(jnp.where(support_y[:, None] == pseudo_y[None, :], logp, 0.0))


def calibration_loss(params, support_x, support_y, pseudo_x, *, model, settings: Settings):
  return contrastive_loss(features(params, support_x, model=model), support_y,
                          features(params, pseudo_x, model=model),
                          pseudo_labels(model.num_classes, settings), settings.tau)


def margin(sims, support_y, pseudo_y):
  """Mean cosine similarity of support features to their own class's pseudo features minus
  the mean to other classes'."""
  pos = support_y[:, None] == pseudo_y[None, :]
  return (jnp.sum(jnp.where(pos, sims, 0)) / jnp.sum(pos)
          - jnp.sum(jnp.where(pos, 0, sims)) / jnp.sum(~pos))


# ---------------------------------------------------------------------------------------------
# Compiled steps. Each step is its own program, driven by a Python loop: XLA:CPU runs the
# gradient convolutions inside a while loop (fori_loop, scan, lax.map) without canonicalising
# them, 3x slower on Conv4 here (50x for a lone conv), and vmapping over tasks' different
# weights makes grouped convolutions (docs/DESIGN.md §13). Dispatch costs well under 1 ms per step.

_STATIC = ('model', 'settings')


def _inversion_tx(settings: Settings):
  return optax.adam(settings.inv_lr)


@functools.partial(jax.jit, static_argnames=('learner', 'settings'))
def prepare(params, support_x, support_y, key, *, learner: meta.Learner, settings: Settings):
  """Step 1 and the start of step 2: (params adapted by `learner`, the real support's
  BN-input statistics under them, N(0, 1) pseudo images, their Adam state)."""
  model = learner.model
  fast = learner.adapt(params, support_x, support_y)
  x = jax.random.normal(key, (model.num_classes * settings.images_per_class,)
                        + support_x.shape[1:], support_x.dtype)
  return (fast, support_statistics(fast, support_x, model=model), x,
          _inversion_tx(settings).init(x))


@functools.partial(jax.jit, static_argnames=_STATIC, donate_argnums=(0, 1))
def inversion_step(x, opt_state, params, stats, key, step, *, model, settings: Settings):
  """One Adam step on the pseudo support; jitter drawn from fold_in(key, step)."""
  grads = jax.grad(lambda x: inversion_objective(
      x, params, stats, jax.random.fold_in(key, step), model=model, settings=settings)[0])(x)
  updates, opt_state = _inversion_tx(settings).update(grads, opt_state, x)
  return optax.apply_updates(x, updates), opt_state


@functools.partial(jax.jit, static_argnames=_STATIC)
def calibration_step(params, support_x, support_y, pseudo_x, tau, lr, *, model,
                     settings: Settings):
  """One SGD step at `lr` on the contrastive loss at `tau`, for the backbone only (head
  fixed)."""
  body = {k: v for k, v in params.items() if k != HEAD}
  grads = jax.grad(lambda b: calibration_loss(
      {**b, HEAD: params[HEAD]}, support_x, support_y, pseudo_x, model=model,
      settings=settings._replace(tau=tau)))(body)
  return {**jax.tree.map(lambda p, g: p - lr * g, body, grads), HEAD: params[HEAD]}


@functools.partial(jax.jit, static_argnames=_STATIC)
def measure(adapted, calibrated, task, pseudo_x, tau, *, model, settings: Settings) -> dict:
  """Query accuracy after calibration ('acc') and of the adapted model alone ('acc_adapted',
  = plain evaluation of the learner); per model ('before' = adapted, 'after' = calibrated) the
  contrastive loss, the support × pseudo cosine similarities and their pos-minus-neg margin;
  'inv_acc', the adapted model's accuracy on its own pseudo support. Both accuracies predict
  the query with the full model in transductive mode, as MAML and ANIL score a task."""
  sx, sy = task['support_x'], task['support_y']
  py = pseudo_labels(model.num_classes, settings)
  out = {'pseudo_y': py, 'inv_acc': maml.loss_and_acc(adapted, pseudo_x, py, model=model)[1]}
  for when, p in (('before', adapted), ('after', calibrated)):
    sf, pf = features(p, sx, model=model), features(p, pseudo_x, model=model)
    out[f'sims_{when}'] = _unit(sf) @ _unit(pf).T
    out[f'margin_{when}'] = margin(out[f'sims_{when}'], sy, py)
    out[f'loss_{when}'] = contrastive_loss(sf, sy, pf, py, tau)
  out['acc_adapted'] = maml.loss_and_acc(adapted, task['query_x'], task['query_y'],
                                         model=model)[1]
  out['acc'] = maml.loss_and_acc(calibrated, task['query_x'], task['query_y'], model=model)[1]
  return out


# ---------------------------------------------------------------------------------------------
# One task, many tasks.

def invert_task(params, task, key, *, learner: meta.Learner, settings: Settings):
  """Steps 1-2 on one task (an episode dict): (adapted params, pseudo support images).

  learner: the test-time learner (`meta.from_config(config.meta, model, test=True)`), MAML or
  ANIL. key: this task's key; the pseudo support starts from fold_in(key, 0) noise and is
  jittered with fold_in(fold_in(key, 1), step).
  """
  adapted, stats, x, opt_state = prepare(
      params, task['support_x'], task['support_y'], jax.random.fold_in(key, 0),
      learner=learner, settings=settings.compiled())
  jitter_key = jax.random.fold_in(key, 1)
  for i in range(settings.inv_steps):
    x, opt_state = inversion_step(x, opt_state, adapted, stats, jitter_key, i,
                                  model=learner.model, settings=settings.compiled())
  return adapted, x


def calibrate_task(adapted, task, pseudo_x, *, model, settings: Settings) -> dict:
  """Steps 3-4: the `measure` results of calibrating `adapted` against `pseudo_x`, plus
  'pseudo_x'."""
  calibrated = adapted
  for _ in range(settings.cal_steps):
    calibrated = calibration_step(calibrated, task['support_x'], task['support_y'], pseudo_x,
                                  settings.tau, settings.lr, model=model,
                                  settings=settings.compiled())
  out = measure(adapted, calibrated, task, pseudo_x, settings.tau, model=model,
                settings=settings.compiled())
  out['pseudo_x'] = pseudo_x
  return out


def run_task(params, task, key, *, learner: meta.Learner, settings: Settings) -> dict:
  """ICFIL on one task: `calibrate_task` after `invert_task`."""
  adapted, pseudo_x = invert_task(params, task, key, learner=learner, settings=settings)
  return calibrate_task(adapted, task, pseudo_x, model=learner.model, settings=settings)


def scalars(result: dict) -> dict:
  """The per-task numbers of a `run_task` result (drops images and matrices)."""
  return {k: v for k, v in result.items() if v.ndim == 0}


def task_key(seed: int, index: int):
  """Task i's key: fold_in(key(seed), i), so the same task always gets the same noise."""
  return jax.random.fold_in(jax.random.key(seed), index)


def check_learner(learner: meta.Learner):
  """ICFIL calibrates what the learner adapted, with its adapted head fixed: refuses a
  learner that adapts no parameters (ProtoNet)."""
  if learner.algo not in ('maml', 'anil'):
    raise ValueError(
        f"ICFIL calibrates the model a learner adapts to the support, with its adapted head "
        f"fixed; config.meta.algo={learner.algo!r} adapts no parameters (it classifies by "
        "distance to prototypes). Set config.icfil.enabled=False, or use "
        "config.meta.algo='maml' or 'anil'")


def learner_from_config(config) -> meta.Learner:
  """The test-time learner of config.meta, checked to suit ICFIL (`check_learner`)."""
  learner = meta.from_config(config.meta, evaluate.meta_model(config), test=True)
  check_learner(learner)
  return learner


def check_inputs(params, learner: meta.Learner, ways: int, settings: Settings):
  check_learner(learner)
  model = learner.model
  if not isinstance(params, Mapping) or HEAD not in params:
    raise ValueError(f'ICFIL calibrates the backbone with the head fixed: params need a '
                     f'{HEAD!r} entry (the classifier Dense), got keys {list(params)[:8]}')
  if model.num_classes != ways:
    raise ValueError(f'the meta-learner has {model.num_classes} outputs but tasks are '
                     f'{ways}-way: create it with evaluate.meta_model(config)')
  settings.check()


def task_metrics(params, *, learner: meta.Learner, split, ways, shots, queries, num_tasks, seed,
                 settings: Settings, batch=25, image_size=None, progress=None) -> dict:
  """Per-task scalar results of `run_task` (numpy arrays) on tasks (seed, 0..num_tasks-1):
  the tasks of `evaluate.task_accuracies` with the same arguments, so 'acc_adapted' is its
  accuracy. Tasks run one after the other (see 'Compiled steps'); `batch` is how many are
  drawn and reported at a time."""
  check_inputs(params, learner, ways, settings)
  if num_tasks < 1 or batch < 1:
    raise ValueError(f'num_tasks and batch must be >= 1, got {num_tasks} and {batch}')
  eps = data_lib.episodes(split, ways, shots, queries, seed, num=num_tasks,
                          image_size=image_size)
  rows = []
  for start in range(0, num_tasks, batch):
    chunk = []
    for i in range(start, min(start + batch, num_tasks)):
      task = next(eps)
      task.pop('classes')
      out = run_task(params, task, task_key(seed, i), learner=learner, settings=settings)
      chunk.append(scalars(out))
    rows += jax.device_get(chunk)
    if progress:
      progress.update(len(rows))
  return {k: np.asarray([r[k] for r in rows]) for k in rows[0]}


def task_accuracies(params, *, learner: meta.Learner, split, ways, shots, queries, num_tasks, seed,
                    icfil_config, inversion_config, batch=25, image_size=None,
                    progress=None) -> np.ndarray:
  """Per-task query accuracy of purer+icfil, paired with `evaluate.task_accuracies`."""
  return task_metrics(
      params, learner=learner, split=split, ways=ways, shots=shots, queries=queries,
      num_tasks=num_tasks, seed=seed,
      settings=Settings.from_config(icfil_config, inversion_config), batch=batch,
      image_size=image_size, progress=progress)['acc']


def config_metrics(params, config, split, seed=None, num_tasks=None, desc=None,
                   settings=None) -> dict:
  """`task_metrics` with the config's protocol (config.meta's test-time learner, as
  `evaluate.evaluate_params`); `settings` overrides config.icfil."""
  learner = learner_from_config(config)
  n = num_tasks or config.eval.tasks
  return task_metrics(
      params, learner=learner, split=split, ways=config.meta.ways, shots=config.meta.shots,
      queries=config.meta.queries, num_tasks=n,
      seed=config.eval.seed if seed is None else seed,
      settings=settings or Settings.from_config(config.icfil, config.inversion),
      batch=config.eval.batch, image_size=learner.model.image_size,
      progress=utils.Progress(n, desc) if desc else None)


def evaluate_params(params, config, split, seed=None, num_tasks=None, desc=None) -> np.ndarray:
  """`task_accuracies` with the config's protocol, as `evaluate.evaluate_params`."""
  return config_metrics(params, config, split, seed=seed, num_tasks=num_tasks, desc=desc)['acc']


# ---------------------------------------------------------------------------------------------
# Picture.

def save_figure(path: str, task: dict, result: dict, dataset: str = 'cifar_fs'):
  """PNG: the task's real support (top row per shot) above its pseudo support, one column per
  class, beside the support × pseudo cosine similarities before and after calibration.

  task: one episode (data.sample_episode); result: `run_task` on it.
  """
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  sy, py = np.asarray(task['support_y']), np.asarray(result['pseudo_y'])
  ways = int(py.max()) + 1
  real = [np.asarray(task['support_x'])[sy == c] for c in range(ways)]
  fake = [np.asarray(result['pseudo_x'])[py == c] for c in range(ways)]
  rows = [[real[c][r] for c in range(ways)] for r in range(len(real[0]))]
  rows += [[fake[c][r] for c in range(ways)] for r in range(len(fake[0]))]
  fig = plt.figure(figsize=(1.1 * ways + 7.5, max(1.1 * len(rows), 3.5)))
  # An empty column keeps the heat map's axis label off the pictures.
  grid = fig.add_gridspec(1, 4, width_ratios=[ways, 0.6, 3, 3], wspace=0.15)
  viz.draw(fig.add_subplot(grid[0, 0]), rows, [dataset] * len(rows),
           row_labels=['real'] * len(real[0]) + ['pseudo'] * len(fake[0]),
           col_labels=[f'class {c}' for c in range(ways)])
  order = np.argsort(py, kind='stable')
  sims = {w: np.asarray(result[f'sims_{w}'])[np.argsort(sy, kind='stable')][:, order]
          for w in ('before', 'after')}
  low = min(0.0, *(v.min() for v in sims.values()))  # post-ReLU features: cosines >= 0
  for j, when in enumerate(('before', 'after')):
    ax = fig.add_subplot(grid[0, 2 + j])
    im = ax.imshow(sims[when], vmin=low, vmax=1, cmap='viridis', aspect='auto')
    ax.set_title(f'cos(support, pseudo) {when} calibration\n'
                 f'margin {float(result[f"margin_{when}"]):+.3f}, '
                 f'loss {float(result[f"loss_{when}"]):.2f}', fontsize=8)
    ax.set_xlabel('pseudo images, by class', fontsize=8)
    if not j:
      ax.set_ylabel('real support, by class', fontsize=8)
  fig.colorbar(im, ax=ax, fraction=0.05)
  fig.suptitle(f'ICFIL: query acc adapted {float(result["acc_adapted"]):.3f} -> calibrated '
               f'{float(result["acc"]):.3f}; adapted model on its pseudo support '
               f'{float(result["inv_acc"]):.2f}', fontsize=9)
  fig.savefig(path, dpi=110, bbox_inches='tight')
  plt.close(fig)
