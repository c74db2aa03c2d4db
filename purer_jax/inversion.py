"""The inversion engine (METHOD.md §4): DeepInversion losses and one compiled bank update.

Pure functions, bottom-up:
  bn_statistics -> (logits, BN-input statistics) of an eval-mode teacher in one pass;
  bn_loss, tv_loss, l2_loss, jitter -> the terms of §4, and `objective`, their weighted sum
    (shared with ICFIL's inversion of an adapted model);
  deep_inversion_loss -> one teacher's loss on its (jittered) slice;
  inversion_loss -> L_inv = sum over all teachers, group by group;
  inversion_update -> one Adam step on the bank (optionally plus an extra loss, for ECI);
and `make_inversion_step`, which picks an evaluation strategy per teacher group (by
measurement for 'auto'), optionally shards teachers over a device mesh, and jits the update
as one program.

Teachers that share (arch, num_classes, image_size) form a group (see `bank.Layout`) whose
variables are stacked on a leading axis. A group is evaluated either by a Python loop over
its members inside the jit ('loop': one ordinary conv per teacher) or by `jax.vmap` ('vmap':
one batched program; Conv4 then computes its convs as im2col matmuls, because vmapped convs
over different weights become grouped convolutions, very slow on XLA:CPU - PITFALLS.md).
'auto' times them on the actual shapes. A pool too large to unroll in one program (100
teachers) can run as one program per chunk of CHUNK teachers plus one for the update
('chunks', `ChunkedInversionStep`), at the unrolled loop's speed per teacher. Conv4 teachers
run through `conv4_forward`, a functional forward that is numerically the Flax model but
several times faster to differentiate on CPU; other archs use the Flax model itself
(`bn_statistics`).
"""
import functools
import time
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

from purer_jax import bank as bank_lib
from purer_jax import parallel
from purer_jax.models.conv4 import Conv4
from purer_jax.models.layers import BatchNorm

STRATEGIES = ('loop', 'vmap')
# `auto` skips 'loop' above this many teachers: unrolled, it takes minutes to compile.
MAX_UNROLL = 32
# Teachers per program of the 'chunks' step (the headline pool's size: seconds to compile).
CHUNK = 13


class Weights(NamedTuple):
  """Loss weights of §4 (config.inversion: ce, tv, bn, l2)."""
  ce: float = 1.0
  tv: float = 1e-4
  bn: float = 0.01
  l2: float = 1e-5

  @classmethod
  def from_config(cls, c) -> 'Weights':
    return cls(float(c.ce), float(c.tv), float(c.bn), float(c.l2))


def _norm(x):
  """The plain L2 norm over all elements (torch.norm), with a finite gradient at 0."""
  return optax.safe_norm(x, 0.0)


# ---------------------------------------------------------------------------------------------
# Loss terms.

def bn_statistics(model, variables, x):
  """(logits, stats) of `model` in eval mode on NHWC `x`, in one forward pass.

  stats has the tree structure of variables['batch_stats'] ({..., 'mean', 'var'} per BN
  layer): the mean and biased variance over (N, H, W) of each BN layer's input.
  """
  logits, state = model.apply(variables, x, train=False, mutable=['bn_stats'])
  return logits, state['bn_stats']


def bn_loss(stats, batch_stats):
  """Σ_layers ||μ − running_mean||₂ + ||σ² − running_var||₂ (plain norms, not squared)."""
  return sum(jax.tree.leaves(jax.tree.map(lambda s, r: _norm(s - r), stats, batch_stats)))


def tv_loss(x):
  """The four plain-norm pixel differences of §4 on NHWC `x`: vertical, horizontal and both
  diagonals (each norm taken over the whole batch)."""
  return (_norm(x[:, 1:, :, :] - x[:, :-1, :, :]) + _norm(x[:, :, 1:, :] - x[:, :, :-1, :])
          + _norm(x[:, 1:, 1:, :] - x[:, :-1, :-1, :])
          + _norm(x[:, 1:, :-1, :] - x[:, :-1, 1:, :]))


def l2_loss(x):
  return _norm(x)


def objective(x, logits, stats, bn_targets, targets, weights: Weights):
  """§4's loss from one forward pass on `x`: CE of `logits` to `targets`, BN matching of
  the BN-input `stats` to `bn_targets` (a teacher's running statistics; for ICFIL the real
  support's), TV and L2 on `x`. Returns (loss, the unweighted terms 'ce', 'tv', 'bn', 'l2')."""
  terms = {
      'ce': optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean(),
      'tv': tv_loss(x),
      'bn': bn_loss(stats, bn_targets),
      'l2': l2_loss(x),
  }
  return sum(getattr(weights, k) * v for k, v in terms.items()), terms


def jitter(x, key, max_shift: int):
  """Rolls NHWC `x` by one random offset in [-max_shift, max_shift] per axis (H and W)."""
  if not max_shift:
    return x
  offsets = jax.random.randint(key, (2,), -max_shift, max_shift + 1)
  # A switch over static rolls: a traced shift makes jnp.roll a dynamic slice, whose
  # gradient (a dynamic-update-slice) cost more than the rest of the input's terms on CPU.
  shifts = range(-max_shift, max_shift + 1)
  for axis, d in zip((1, 2), offsets):
    x = lax.switch(d + max_shift, [lambda a, s=s, ax=axis: jnp.roll(a, s, ax) for s in shifts], x)
  return x


@jax.custom_vjp
def bn_pool_relu(y, scale, shift):
  """relu(maxpool_2x2(y * scale + shift)) on NHWC `y` (even H, W) with a one-pass backward.

  JAX's own gradient of a max-reduction (mask, counts, division) and of the affine map takes
  several passes over the full-resolution tensor; this backward takes one. Where several
  inputs tie for a window's maximum each gets the full gradient (PyTorch picks one;
  JAX splits it): ties have probability zero for real-valued images.
  """
  n, h, w, c = y.shape
  z = (y * scale + shift).reshape(n, h // 2, 2, w // 2, 2, c)
  return jax.nn.relu(z.max((2, 4)))


def _bn_pool_relu_fwd(y, scale, shift):
  out = bn_pool_relu(y, scale, shift)
  return out, (y, scale, shift, out)


def _bn_pool_relu_bwd(res, g):
  y, scale, shift, out = res
  n, h, w, c = y.shape
  z = (y * scale + shift).reshape(n, h // 2, 2, w // 2, 2, c)
  up = lambda t: t[:, :, None, :, None, :]
  dz = jnp.where(z == up(out), up(jnp.where(out > 0, g, 0.0)), 0.0).reshape(y.shape)
  return dz * scale, jnp.sum(dz * y, (0, 1, 2)), jnp.sum(dz, (0, 1, 2))


bn_pool_relu.defvjp(_bn_pool_relu_fwd, _bn_pool_relu_bwd)


def _conv3x3_im2col(x, kernel):
  # The 9 shifted copies side by side, then one matmul: under vmap a batched matmul.
  n, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  cols = jnp.concatenate([xp[:, a:a + h, b:b + w] for a in range(3) for b in range(3)], -1)
  return cols @ kernel.reshape(9 * c, -1)


def conv4_forward(variables, x, *, conv: str = 'lax'):
  """Conv4 (models/conv4.py) in eval mode: the (logits, stats) of `bn_statistics`, faster.

  Written out for speed on CPU (measured in benchmarks/README.md): BN-input statistics in
  one pass (E[y²] − E[y]², fused with the forward); eval BN, 2x2 max-pool and ReLU as one
  op with a hand-written backward (`bn_pool_relu`); the first conv (3 input channels, which
  XLA's conv handles poorly) as an im2col matmul. conv='im2col' does that for every conv,
  so that `jax.vmap` over teachers gives batched matmuls instead of grouped convolutions.
  Agrees with `bn_statistics(models.create('conv4', ...), ...)` to float32 rounding.
  """
  p, running = variables['params'], variables['batch_stats']
  stats = {}
  for i in range(4):
    kernel = p[f'conv{i}']['kernel']
    if conv == 'im2col' or i == 0:
      y = _conv3x3_im2col(x, kernel)
    else:
      y = lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    y = y + p[f'conv{i}']['bias']
    mean = jnp.mean(y, (0, 1, 2))
    stats[f'bn{i}'] = {'mean': mean, 'var': jnp.mean(jnp.square(y), (0, 1, 2)) - mean * mean}
    r, bn = running[f'bn{i}'], p[f'bn{i}']
    scale = lax.rsqrt(r['var'] + BatchNorm.epsilon) * bn['scale']
    h, w = y.shape[1] // 2 * 2, y.shape[2] // 2 * 2  # floor pooling drops an odd edge
    x = bn_pool_relu(y[:, :h, :w], scale, bn['bias'] - r['mean'] * scale)
  x = x.reshape(x.shape[0], -1)
  return x @ p['head']['kernel'] + p['head']['bias'], stats


def _forward(model, strategy):
  if isinstance(model, Conv4):
    return functools.partial(conv4_forward, conv='im2col' if strategy == 'vmap' else 'lax')
  return functools.partial(bn_statistics, model)


def deep_inversion_loss(x, variables, targets, *, model, weights: Weights = Weights(),
                        strategy: str = 'loop'):
  """One teacher's DeepInversion loss on its (already jittered) slice `x` (NHWC).

  TV and L2 act on `x` itself; the teacher sees `x` resized (bilinear) to its input size when
  the bank's size differs (MH). `strategy` only picks the fastest equivalent forward pass.
  Returns (loss, terms) with the unweighted terms 'ce', 'tv', 'bn', 'l2' and the target
  accuracy 'acc'.
  """
  size = model.image_size
  xin = x if x.shape[1] == size else jax.image.resize(
      x, (x.shape[0], size, size, x.shape[3]), 'bilinear')
  logits, stats = _forward(model, strategy)(variables, xin)
  loss, terms = objective(x, logits, stats, variables['batch_stats'], targets, weights)
  terms['acc'] = jnp.mean(jnp.argmax(logits, -1) == targets)
  return loss, terms


# ---------------------------------------------------------------------------------------------
# A stack of teachers (one group).

def stack_losses(x, variables, keys, *, group: bank_lib.Group, weights: Weights,
                 max_shift: int, strategy: str):
  """Per-teacher (loss, terms) of a stack: x (T, N, H, W, 3), variables and keys stacked on T.

  strategy: 'loop' (unrolled in the program) or 'vmap' (batched). The result does not
  depend on it, only the speed does.
  """
  model = group.model
  tgt = bank_lib.targets(group.num_classes, x.shape[1] // group.num_classes)

  def one(xt, vt, kt):
    return deep_inversion_loss(jitter(xt, kt, max_shift), vt, tgt, model=model, weights=weights,
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

def inversion_loss(images, teachers, key, *, layout: bank_lib.Layout, weights: Weights,
                   max_shift: int, strategies: Sequence[str], mesh=None, per_iter: int = 0):
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
  total = jnp.sum(losses)
  metrics = {k: jnp.sum(v) for k, v in terms.items() if k != 'acc'}
  in_pool = lambda v: jnp.full(layout.num_teachers, jnp.nan, v.dtype).at[where].set(v)
  metrics.update(inv=total, acc=jnp.mean(terms['acc']), teacher_loss=in_pool(losses),
                 teacher_acc=in_pool(terms['acc']))
  return total, metrics


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
  updates, new_state = tx.update(grads, opt_state, images)
  new_images = optax.apply_updates(images, updates)
  if not lazy:
    return new_images, new_state, metrics
  # Pseudo classes without gradient this step (their teacher was not drawn) keep their images
  # and optimiser moments: Adam's momentum would otherwise keep moving them.
  touched = jnp.any(grads != 0, axis=tuple(range(1, grads.ndim)))
  keep = lambda new, old: (jnp.where(touched.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
                           if new.shape == images.shape else new)
  return (keep(new_images, images), jax.tree.map(keep, new_state, opt_state), metrics)


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
    self._apply = jax.jit(self._update, donate_argnums=(0, 1))

  def _chunk_grad(self, images, acc, variables, key, *, gi, lo, hi):
    g = self.layout.groups[gi]

    def loss(images):
      losses, terms = stack_losses(bank_lib.group_slice(images, g)[lo:hi], variables,
                                   _teacher_keys(key, g)[lo:hi], group=g, weights=self.weights,
                                   max_shift=self.max_shift, strategy='loop')
      return jnp.sum(losses), (losses, terms)

    grad, aux = jax.grad(loss, has_aux=True)(images)
    return acc + grad, aux

  def _update(self, images, opt_state, grads):
    updates, opt_state = self.tx.update(grads, opt_state, images)
    return optax.apply_updates(images, updates), opt_state

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
    in_pool = lambda v: jnp.zeros(self.layout.num_teachers, v.dtype).at[where].set(v)
    total = jnp.sum(losses)
    metrics = {k: jnp.sum(v) for k, v in terms.items() if k != 'acc'}
    metrics.update(inv=total, acc=jnp.mean(terms['acc']), teacher_loss=in_pool(losses),
                   teacher_acc=in_pool(terms['acc']), extra=jnp.zeros((), total.dtype),
                   loss=total)
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
    return ChunkedInversionStep(layout, Weights.from_config(config), config.jitter,
                                float(config.lr))
  if mesh is not None and len(mesh.axis_names) != 1:
    raise ValueError(f'the inversion mesh must have one axis (teachers), got {mesh.axis_names}')
  weights, max_shift = Weights.from_config(config), int(config.jitter)
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
