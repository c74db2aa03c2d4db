"""The inversion engine (docs/DESIGN.md §4): the pool's loss and one compiled bank update.

Runs the objective of `purer_jax.deep_inversion` over a teacher pool:
  stack_losses -> per-teacher losses of one group of stacked teachers;
  inversion_loss -> L_inv = sum over all teachers, group by group;
  inversion_update -> one Adam step on the bank (optionally plus an extra loss, for ECI);
and `make_inversion_step`, which picks an evaluation strategy per teacher group (by
measurement for 'auto'), optionally shards teachers over a device mesh, and jits the update
as one program.

Teachers that share (arch, num_classes, image_size) form a group (see `bank.Layout`) whose
variables are stacked on a leading axis. A group is evaluated either by a Python loop over
its members inside the jit ('loop': one ordinary conv per teacher) or by `jax.vmap` ('vmap':
one batched program; Conv4 then computes its convs as im2col matmuls, because vmapped convs
over different weights become grouped convolutions, very slow on XLA:CPU - docs/DESIGN.md §13).
'auto' times them on the actual shapes. A pool too large to unroll in one program (100
teachers) can run as one program per chunk of CHUNK teachers plus one for the update
('chunks', `ChunkedInversionStep`), at the unrolled loop's speed per teacher.
"""
import functools
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from purer_jax import bank as bank_lib
from purer_jax import deep_inversion, parallel

STRATEGIES = ('loop', 'vmap')
# `auto` skips 'loop' above this many teachers: unrolled, it takes minutes to compile.
MAX_UNROLL = 32
# Teachers per program of the 'chunks' step (the headline pool's size: seconds to compile).
CHUNK = 13


# ---------------------------------------------------------------------------------------------
# A stack of teachers (one group).

def stack_losses(x, variables, keys, *, group: bank_lib.Group,
                 weights: deep_inversion.Weights, max_shift: int, strategy: str):
  """Per-teacher (loss, terms) of a stack: x (T, N, H, W, 3), variables and keys stacked on T.

  strategy: 'loop' (unrolled in the program) or 'vmap' (batched). The result does not
  depend on it, only the speed does.
  """
  model = group.model
  tgt = bank_lib.targets(group.num_classes, x.shape[1] // group.num_classes)

  def one(xt, vt, kt):
    return deep_inversion.deep_inversion_loss(
        deep_inversion.jitter(xt, kt, max_shift), vt, tgt, model=model, weights=weights,
        strategy=strategy)

  if strategy == 'vmap':
    return jax.vmap(one)(x, variables, keys)
  if strategy != 'loop':
    raise ValueError(f'inversion strategy must be one of {STRATEGIES} (or auto), got '
                     f'{strategy!r}')
  outs = [one(x[i], jax.tree.map(lambda a, i=i: a[i], variables), keys[i])
          for i in range(x.shape[0])]
  return jax.tree.map(lambda *a: jnp.stack(a), *outs)


def _teacher_keys(key, group):
  # Per-teacher keys from the pool position: independent of grouping, strategy and sharding.
  return jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.asarray(group.members, jnp.uint32))


def per_group(layout: bank_lib.Layout, per_iter: int) -> tuple:
  """Teachers refined per step in each group when `per_iter` of the pool are (0: all): the
  group's share of per_iter, at least one, static so the program's shapes are."""
  if not per_iter or per_iter >= layout.num_teachers:
    return tuple(g.size for g in layout.groups)
  return tuple(min(g.size, max(1, round(per_iter * g.size / layout.num_teachers)))
               for g in layout.groups)


def _group_losses(images, variables, key, *, group, weights, max_shift, strategy, mesh=None,
                  select=0):
  """Per-teacher (loss, terms) of one group, and the positions (in the group) evaluated: all,
  or `select` of them drawn from `key` (PURER-Plus: a random subset of teachers per step)."""
  x = bank_lib.group_slice(images, group)
  keys = _teacher_keys(key, group)
  f = functools.partial(stack_losses, group=group, weights=weights, max_shift=max_shift,
                        strategy=strategy)
  if select and select < group.size:
    if mesh is not None:
      raise ValueError('refining a subset of teachers per step (teachers.per_iter) is not '
                       'supported with a device mesh: shard the whole pool instead')
    # 2**32 - 1 is no pool position, so this key is independent of every teacher's jitter key.
    pos = jax.random.choice(jax.random.fold_in(key, 2**32 - 1), group.size, (select,),
                            replace=False)
    pick = lambda a: a[pos]
    return f(pick(x), jax.tree.map(pick, variables), pick(keys)), pos
  pos = jnp.arange(group.size)
  if mesh is None:
    return f(x, variables, keys), pos
  # Shard the teacher axis: pad it to a multiple of the mesh size with copies of real
  # teachers (variables are padded once by `place_teachers`), drop their results after.
  axis = mesh.axis_names
  tp = jax.tree.leaves(variables)[0].shape[0]
  pad = tp - group.size
  if pad:
    rows = np.arange(tp) % group.size
    x, keys = x[rows], keys[rows]
  spec = P(axis)
  out = jax.shard_map(f, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec)(
      x, variables, keys)
  return jax.tree.map(lambda a: a[:group.size], out), pos


# ---------------------------------------------------------------------------------------------
# The whole pool.

def inversion_loss(images, teachers, key, *, layout: bank_lib.Layout,
                   weights: deep_inversion.Weights, max_shift: int, strategies: Sequence[str],
                   mesh=None, per_iter: int = 0):
  """L_inv = Σ_t loss_t over the teachers of the pool (equal weights), and metrics.

  images: the bank (layout.shape); teachers: per group, stacked variables (bank.stack_teachers
  or InversionStep.place_teachers); key: this step's key (each teacher's jitter is drawn from
  fold_in(key, its pool position)); strategies: per group, one of STRATEGIES; per_iter: refine
  only that many teachers, drawn at random from `key` (`per_group` splits them; 0: all).
  Metrics: 'inv' (= L_inv), the unweighted per-term sums 'ce', 'tv', 'bn', 'l2', the mean target
  accuracy 'acc', and per teacher (pool order) 'teacher_loss' and 'teacher_acc' (NaN for the
  teachers not drawn).
  """
  per = [_group_losses(images, v, key, group=g, weights=weights, max_shift=max_shift,
                       strategy=s, mesh=mesh, select=k)
         for g, v, s, k in zip(layout.groups, teachers, strategies, per_group(layout, per_iter))]
  members = [jnp.asarray(g.members)[pos] for g, (_, pos) in zip(layout.groups, per)]
  where = jnp.concatenate(members)
  losses = jnp.concatenate([l for (l, _), _ in per])
  terms = {k: jnp.concatenate([t[k] for (_, t), _ in per]) for k in per[0][0][1]}
  metrics = pool_metrics(losses, terms, where, layout.num_teachers)
  return metrics['inv'], metrics


def pool_metrics(losses, terms: dict, where, num_teachers: int) -> dict:
  """An inversion step's metrics from the per-teacher `losses` and `terms` of the teachers at
  pool positions `where`: 'inv' (their summed loss), the unweighted per-term sums 'ce', 'tv',
  'bn', 'l2', the mean target accuracy 'acc', and per teacher (pool order) 'teacher_loss' and
  'teacher_acc', NaN for the teachers not evaluated."""
  metrics = {k: jnp.sum(v) for k, v in terms.items() if k != 'acc'}
  in_pool = lambda v: jnp.full(num_teachers, jnp.nan, v.dtype).at[where].set(v)
  metrics.update(inv=jnp.sum(losses), acc=jnp.mean(terms['acc']), teacher_loss=in_pool(losses),
                 teacher_acc=in_pool(terms['acc']))
  return metrics


def inversion_update(images, opt_state, teachers, key, *, tx, extra_loss=None, extra_args=None,
                     lazy: bool = False, **loss_kw):
  """One optimiser step on the bank: images <- tx(∇ (L_inv + extra_loss(images, extra_args))).

  Not jitted: call it inside your own jit (the meta-learning loop does), or use the compiled
  `InversionStep`. extra_loss: optional `(images, extra_args) -> scalar`, differentiated
  together with L_inv (ECI passes −adv_scale · L_outer of a pseudo task built from `images`).
  lazy: pseudo classes that got no gradient keep their images and optimiser state (set with
  `per_iter`, where the teachers not drawn leave their classes' gradients at zero).
  loss_kw: the keyword arguments of `inversion_loss`. Returns (images, opt_state, metrics);
  metrics as `inversion_loss` plus 'extra' and 'loss' (the total that was differentiated).
  """
  def total(x):
    loss, metrics = inversion_loss(x, teachers, key, **loss_kw)
    extra = jnp.zeros((), loss.dtype) if extra_loss is None else extra_loss(x, extra_args)
    metrics.update(extra=extra, loss=loss + extra)
    return loss + extra, metrics

  grads, metrics = jax.grad(total, has_aux=True)(images)
  images, opt_state = bank_lib.apply_gradients(images, opt_state, grads, tx=tx, lazy=lazy)
  return images, opt_state, metrics


# ---------------------------------------------------------------------------------------------
# The compiled step.

_AUTO_CACHE = {}


class InversionStep:
  """The compiled inversion step for one bank layout.

  step = make_inversion_step(layout, config.inversion, teachers=stacked)
  images, opt_state = step.init(rng)
  teachers = step.place_teachers(stacked)          # once (pads and shards on a mesh)
  images, opt_state, metrics = step(images, opt_state, teachers, key)

  `images` and `opt_state` are donated: use the returned ones. Calling with the same
  `extra_loss` function object (and the same shapes) never recompiles.
  """

  def __init__(self, layout, weights, max_shift, lr, strategies, mesh=None, xla_options=None,
               per_iter: int = 0):
    self.layout, self.weights, self.max_shift = layout, weights, int(max_shift)
    self.strategies, self.mesh = tuple(strategies), mesh
    self.tx = optax.adam(lr)
    self.loss_kw = dict(layout=layout, weights=weights, max_shift=self.max_shift,
                        strategies=self.strategies, mesh=mesh, per_iter=int(per_iter))
    self.lazy = per_group(layout, per_iter) != tuple(g.size for g in layout.groups)
    jit = functools.partial(jax.jit, compiler_options=xla_options or None)
    self._step = jit(self._update, static_argnames=('extra_loss',), donate_argnums=(0, 1))
    self.loss = jit(functools.partial(inversion_loss, **self.loss_kw))

  def _update(self, images, opt_state, teachers, key, extra_args=None, *, extra_loss=None):
    images, opt_state, metrics = inversion_update(
        images, opt_state, teachers, key, tx=self.tx, extra_loss=extra_loss,
        extra_args=extra_args, lazy=self.lazy, **self.loss_kw)
    images, opt_state = self.constrain((images, opt_state))
    return images, opt_state, metrics

  def constrain(self, tree):
    """Inside a traced step: the bank-shaped arrays of `tree` kept on the bank's sharding,
    so that every step takes and returns the same layout (no recompilation)."""
    if self.mesh is None:
      return tree
    return jax.tree.map(self._constrain, tree)

  def __call__(self, images, opt_state, teachers, key, extra_loss: Optional[Callable] = None,
               extra_args=None):
    """One Adam step on the bank over all teachers; returns (images, opt_state, metrics)."""
    if tuple(images.shape) != self.layout.shape:
      raise ValueError(f'bank images have shape {tuple(images.shape)}, the layout expects '
                       f'{self.layout.shape}: create them with InversionStep.init')
    return self._step(images, opt_state, teachers, key, extra_args, extra_loss=extra_loss)

  def bank_sharding(self):
    """Where the bank lives: its class axis sharded over the mesh when it divides evenly."""
    if self.mesh is None:
      return None
    n = self.mesh.devices.size
    spec = P(self.mesh.axis_names) if self.layout.num_pseudo % n == 0 else P()
    return NamedSharding(self.mesh, spec)

  def _constrain(self, a):
    if a.ndim != len(self.layout.shape):
      return a
    return jax.lax.with_sharding_constraint(a, self.bank_sharding())

  def init(self, rng):
    """(images, opt_state): a fresh N(0, 1) bank and its Adam state, placed on the mesh."""
    images = bank_lib.init(self.layout, rng)
    if self.mesh is not None:
      images = parallel.put(np.asarray(images), self.bank_sharding())
    return images, self.tx.init(images)

  def place_teachers(self, stacked):
    """Stacked teacher variables ready for the step: on a mesh, each group's teacher axis is
    padded to a multiple of the device count and sharded; otherwise unchanged."""
    if self.mesh is None:
      return tuple(stacked)
    n = self.mesh.devices.size
    sharding = NamedSharding(self.mesh, P(self.mesh.axis_names))
    out = []
    for v in stacked:
      t = jax.tree.leaves(v)[0].shape[0]
      tp = -(-t // n) * n
      out.append(jax.tree.map(
          lambda a: parallel.put(np.resize(np.asarray(a), (tp,) + a.shape[1:]), sharding), v))
    return tuple(out)


class ChunkedInversionStep:
  """`InversionStep`'s update as one program per chunk of at most CHUNK teachers (the
  gradients summed into one buffer) and one for the Adam update: for pools too large to unroll
  in one program, whose batched form ('vmap') is slow on CPU. The same math and metrics as
  InversionStep, without a mesh, per_iter or an extra loss; several programs, so it cannot
  sit inside the meta-iteration's single program (train.py refuses it)."""

  def __init__(self, layout, weights, max_shift, lr):
    self.layout, self.weights, self.max_shift = layout, weights, int(max_shift)
    self.strategies = ('chunks',) * len(layout.groups)
    self.tx = optax.adam(lr)
    self.chunks = [(gi, lo, min(lo + CHUNK, g.size)) for gi, g in enumerate(layout.groups)
                   for lo in range(0, g.size, CHUNK)]
    self._grad = jax.jit(self._chunk_grad, static_argnames=('gi', 'lo', 'hi'),
                         donate_argnums=(1,))
    self._apply = jax.jit(functools.partial(bank_lib.apply_gradients, tx=self.tx),
                          donate_argnums=(0, 1))

  def _chunk_grad(self, images, acc, variables, key, *, gi, lo, hi):
    g = self.layout.groups[gi]

    def loss(images):
      losses, terms = stack_losses(bank_lib.group_slice(images, g)[lo:hi], variables,
                                   _teacher_keys(key, g)[lo:hi], group=g, weights=self.weights,
                                   max_shift=self.max_shift, strategy='loop')
      return jnp.sum(losses), (losses, terms)

    grad, aux = jax.grad(loss, has_aux=True)(images)
    return acc + grad, aux

  def init(self, rng):
    images = bank_lib.init(self.layout, rng)
    return images, self.tx.init(images)

  def place_teachers(self, stacked):
    """Per chunk, its teachers' stacked variables."""
    return tuple(jax.tree.map(lambda a, lo=lo, hi=hi: a[lo:hi], stacked[gi])
                 for gi, lo, hi in self.chunks)

  def __call__(self, images, opt_state, teachers, key):
    """One Adam step on the bank over all teachers; returns (images, opt_state, metrics)."""
    acc, per = jnp.zeros_like(images), []
    for (gi, lo, hi), v in zip(self.chunks, teachers):
      acc, aux = self._grad(images, acc, v, key, gi=gi, lo=lo, hi=hi)
      per.append(aux)
    images, opt_state = self._apply(images, opt_state, acc)
    losses = jnp.concatenate([l for l, _ in per])
    terms = {k: jnp.concatenate([t[k] for _, t in per]) for k in per[0][1]}
    where = np.concatenate([self.layout.groups[gi].members[lo:hi] for gi, lo, hi in self.chunks])
    metrics = pool_metrics(losses, terms, where, self.layout.num_teachers)
    metrics.update(extra=jnp.zeros((), metrics['inv'].dtype), loss=metrics['inv'])
    return images, opt_state, metrics


def make_inversion_step(layout: bank_lib.Layout, config, *, teachers=None,
                        strategy: Optional[str] = None, mesh=None,
                        xla_options: Optional[dict] = None, per_iter: int = 0) -> InversionStep:
  """Builds the compiled step for `layout` with config.inversion's weights, jitter and lr.

  strategy: 'loop', 'vmap', 'chunks' (a `ChunkedInversionStep`) or 'auto' (default
  config.strategy). 'auto' times the
  strategies per group on the actual shapes (needs `teachers`, the stacked variables) and caches the
  choice per backend and shape. mesh: a 1-axis jax.sharding.Mesh to shard teachers over.
  xla_options: XLA compiler options for the step (e.g. {'xla_cpu_use_xnnpack': True}).
  per_iter: refine that many teachers per step, drawn at random (PURER-Plus; 0: all).
  """
  strategy = strategy or config.strategy
  if strategy not in STRATEGIES + ('auto', 'chunks'):
    raise ValueError(f'config.inversion.strategy must be one of '
                     f'{STRATEGIES + ("auto", "chunks")}, got {strategy!r}')
  if strategy == 'chunks':
    if mesh is not None or per_iter:
      raise ValueError("inversion strategy 'chunks' runs the whole pool on one device: no "
                       'mesh, no teachers.per_iter')
    return ChunkedInversionStep(layout, deep_inversion.Weights.from_config(config),
                                config.jitter, float(config.lr))
  if mesh is not None and len(mesh.axis_names) != 1:
    raise ValueError(f'the inversion mesh must have one axis (teachers), got {mesh.axis_names}')
  weights, max_shift = deep_inversion.Weights.from_config(config), int(config.jitter)
  if strategy == 'auto':
    if teachers is None:
      raise ValueError("strategy 'auto' measures the strategies on the real teachers: pass "
                       'teachers=bank.stack_teachers(...)')
    # Timed on the teachers a step evaluates: with per_iter, k drawn of the group.
    strategies = tuple(choose_strategy(layout, g, v, weights, max_shift, size=k)
                       for g, v, k in zip(layout.groups, teachers, per_group(layout, per_iter)))
  else:
    strategies = (strategy,) * len(layout.groups)
  return InversionStep(layout, weights, max_shift, float(config.lr), strategies, mesh,
                       xla_options, per_iter)


def choose_strategy(layout, group, variables, weights, max_shift, repeats: int = 3,
                    size: Optional[int] = None) -> str:
  """The fastest strategy for one group's loss + gradient, timed on this backend for `size`
  of its teachers per step (default: all)."""
  size = size or group.size
  cache_key = (jax.default_backend(), group.arch, group.num_classes, group.image_size,
               size, layout.spc, layout.image_size, weights, max_shift)
  if cache_key in _AUTO_CACHE:
    return _AUTO_CACHE[cache_key]
  x = jax.random.normal(jax.random.key(0), (size, layout.spc * group.num_classes,
                                            layout.image_size, layout.image_size, 3))
  keys = _teacher_keys(jax.random.key(1), group)[:size]
  variables = jax.tree.map(lambda a: a[:size], variables)
  times = {}
  for s in [s for s in STRATEGIES if s != 'loop' or size <= MAX_UNROLL]:
    f = jax.jit(jax.grad(lambda x, v, k, s=s: jnp.sum(stack_losses(
        x, v, k, group=group, weights=weights, max_shift=max_shift, strategy=s)[0])))
    jax.block_until_ready(f(x, variables, keys))  # compile
    best = float('inf')
    for _ in range(repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(f(x, variables, keys))
      best = min(best, time.perf_counter() - t0)
    times[s] = best
  _AUTO_CACHE[cache_key] = min(times, key=times.get)
  return _AUTO_CACHE[cache_key]
