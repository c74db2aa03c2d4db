"""Meta-learners (docs/DESIGN.md §5): MAML (PURER's), ProtoNet and ANIL behind one interface.

A `Learner` is a small hashable spec (algorithm, model, inner-loop settings), so jitted code
takes it as a static argument; `learner.task_loss(params, task)` is the query (loss, accuracy)
of one task and `batch_loss` sums it over a meta-batch.

Mapping over the tasks of a meta-batch: each task adapts its own copy of the weights, so
`jax.vmap` lowers the adapted convs to grouped convolutions and `lax.map` runs them in a loop
XLA:CPU does not optimise. Measured here (4 second-order MAML tasks, Conv4 32 px, 5-way 1-shot,
15 queries, value+grad, median of 10; `python benchmarks/meta_step.py --json OUT --strategies`):
python loop 0.27 s, lax.map 3.45 s, vmap 1.77 s. So the default is the unrolled loop.
"""
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from purer_jax.meta import anil, maml, protonet

ALGOS = ('maml', 'protonet', 'anil')
STRATEGIES = ('loop', 'map', 'vmap')


class Learner(NamedTuple):
  algo: str
  model: Any
  inner_lr: float = 0.01
  steps: int = 1
  second_order: bool = True

  def task_loss(self, params, task):
    """(query loss, query accuracy) of one task {'support_x', 'support_y', 'query_x', 'query_y'}."""
    if self.algo == 'maml':
      return maml.task_loss(params, task, model=self.model, inner_lr=self.inner_lr,
                            steps=self.steps, second_order=self.second_order)
    if self.algo == 'anil':
      return anil.task_loss(params, task, model=self.model, inner_lr=self.inner_lr,
                            steps=self.steps, second_order=self.second_order)
    return protonet.task_loss(params, task, model=self.model)

  def adapt(self, params, support_x, support_y):
    """The parameters adapted to a support set: all of them (MAML) or the head (ANIL).

    ProtoNet has no adapted parameters (it classifies by distance to the support's
    prototypes): a ValueError.
    """
    kw = dict(model=self.model, inner_lr=self.inner_lr, steps=self.steps,
              second_order=self.second_order)
    if self.algo == 'maml':
      return maml.adapt(params, support_x, support_y, **kw)
    if self.algo == 'anil':
      return anil.adapt(params, support_x, support_y, **kw)
    raise ValueError(f'{self.algo} does not adapt parameters to a support set (it classifies '
                     'by distance to prototypes)')


def from_config(meta_config, model, *, test: bool = False) -> Learner:
  """The learner of config.meta; `test=True` gives the first-order test-time adaptation
  (test_inner_steps, and test_inner_lr when set)."""
  algo = meta_config.algo
  if algo not in ALGOS:
    raise ValueError(f'config.meta.algo must be one of {ALGOS}, got {algo!r}')
  if algo == 'protonet' and not hasattr(model, 'features'):
    raise ValueError(f'protonet needs a model with features(); {type(model).__name__} has none')
  steps = meta_config.test_inner_steps if test else meta_config.inner_steps
  lr = meta_config.inner_lr
  if test and meta_config.get('test_inner_lr', 0.0):
    lr = meta_config.test_inner_lr
  return Learner(algo, model, float(lr), int(steps), bool(meta_config.second_order) and not test)


def map_tasks(fn, tasks, strategy: str = 'loop'):
  """fn applied to each task of a stacked meta-batch (leading axis), outputs stacked."""
  if strategy == 'vmap':
    return jax.vmap(fn)(tasks)
  if strategy == 'map':
    return jax.lax.map(fn, tasks)
  if strategy != 'loop':
    raise ValueError(f'task strategy must be one of {STRATEGIES}, got {strategy!r}')
  n = jax.tree.leaves(tasks)[0].shape[0]
  outs = [fn(jax.tree.map(lambda a, i=i: a[i], tasks)) for i in range(n)]
  return jax.tree.map(lambda *a: jnp.stack(a), *outs)


def batch_loss(params, tasks, *, learner: Learner, strategy: str = 'loop'):
  """(sum of the query losses, (per-task losses, per-task accuracies)) of a meta-batch."""
  losses, accs = map_tasks(lambda t: learner.task_loss(params, t), tasks, strategy)
  return jnp.sum(losses), (losses, accs)


@functools.partial(jax.jit, static_argnames=('learner',))
def task_accuracy(params, task, *, learner: Learner):
  return learner.task_loss(params, task)[1]


@functools.partial(jax.jit, static_argnames=('learner', 'at_steps'))
def task_accuracy_at(params, task, *, learner: Learner, at_steps: tuple):
  """Query accuracy after each step count of `at_steps` (ascending), from one adaptation that
  continues from one count to the next: a grid of test-time steps costs its largest count,
  not their sum. Count k scores as `task_accuracy` with `learner.steps` = k."""
  if learner.algo == 'protonet':  # nothing adapts: one score for every count
    return jnp.full(len(at_steps), task_accuracy(params, task, learner=learner))
  accs, done, fast = [], 0, params
  for k in at_steps:
    if k > done:
      fast = learner._replace(steps=k - done).adapt(fast, task['support_x'], task['support_y'])
      done = k
    accs.append(maml.loss_and_acc(fast, task['query_x'], task['query_y'],
                                  model=learner.model)[1])
  return jnp.stack(accs)


def evaluate_tasks(params, tasks, *, learner: Learner, at_steps=None) -> jax.Array:
  """Query accuracy of each task in a stacked batch: one compiled single-task program called
  per task (lax.map over the tasks was measured 8x slower on CPU; see `map_tasks`). With
  `at_steps` (ascending step counts), [tasks, len(at_steps)]: `task_accuracy_at`."""
  if at_steps is not None:
    return map_tasks(lambda t: task_accuracy_at(params, t, learner=learner,
                                                at_steps=tuple(at_steps)), tasks, 'loop')
  return map_tasks(lambda t: task_accuracy(params, t, learner=learner), tasks, 'loop')
