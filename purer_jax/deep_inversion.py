"""The inversion loss (docs/DESIGN.md §4): DeepInversion's objective for one teacher, pure.

Bottom-up: `bn_statistics` -> (logits, BN-input statistics) of an eval-mode teacher in one
pass; `bn_loss`, `tv_loss`, `l2_loss`, `jitter` -> the terms of §4, and `objective`, their
weighted sum (shared with ICFIL's inversion of an adapted model); `deep_inversion_loss` -> one
teacher's loss on its (jittered) slice of the bank. Conv4 teachers run through
`conv4_forward`, a functional forward that is numerically the Flax model but several times
faster to differentiate on CPU; other archs use the Flax model itself (`bn_statistics`).
The engine that evaluates it over a pool and updates the bank: `purer_jax.inversion`.
"""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from purer_jax.models.conv4 import Conv4
from purer_jax.models.layers import BatchNorm


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
