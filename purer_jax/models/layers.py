"""Layers shared by the model families: PyTorch-compatible BatchNorm and convs."""
import flax.linen as nn
import jax.numpy as jnp
from jax import lax

# PyTorch's init_layer: N(0, sqrt(2 / (k*k*C_out))).
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')  # 'normal' is untruncated


class BatchNorm(nn.Module):
  """BatchNorm2d with PyTorch semantics (eps 1e-5, momentum 0.1, unbiased running var).

  `use_running_average=False` normalises with the batch's statistics; running statistics
  are updated only when the `batch_stats` collection is mutable, so MAML's transductive
  mode needs no running statistics at all. When `bn_stats` is mutable, the biased
  mean/variance of the layer's *input* are stored there (same tree paths as
  `batch_stats`), which is what the inversion loss matches, in the same pass as the logits.
  """
  momentum: float = 0.9
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x, use_running_average: bool):
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,))
    bias = self.param('bias', nn.initializers.zeros, (c,))
    track = use_running_average or self.is_mutable_collection('batch_stats')
    if track:
      ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (c,))
      ra_var = self.variable('batch_stats', 'var', jnp.ones, (c,))
    capture = self.is_mutable_collection('bn_stats')
    if not use_running_average or capture:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x, axes)
      var = jnp.mean(jnp.square(x - mean), axes)
    if capture:
      self.put_variable('bn_stats', 'mean', mean)
      self.put_variable('bn_stats', 'var', var)
    if use_running_average:
      mean, var = ra_mean.value, ra_var.value
    elif track and not self.is_initializing():
      n = x.size // c
      m = self.momentum
      ra_mean.value = m * ra_mean.value + (1 - m) * lax.stop_gradient(mean)
      ra_var.value = m * ra_var.value + (1 - m) * lax.stop_gradient(var) * n / max(n - 1, 1)
    return (x - mean) * (lax.rsqrt(var + self.epsilon) * scale) + bias


def conv(features, kernel, stride=1, bias=False, name=None):
  """A conv with PyTorch's symmetric zero padding (k // 2), not XLA's 'SAME'."""
  p = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((p, p), (p, p)), use_bias=bias, kernel_init=conv_init, name=name)


def max_pool_2x2(x):
  """2x2 max-pool, stride 2, an odd edge dropped (nn.max_pool 'VALID'), as three selects.

  Same values and derivatives of every order as nn.max_pool, whose reduce_window gradient
  (select-and-scatter) is slow on XLA:CPU: 1.5x faster second-order MAML at 32 and 84 px
  (benchmarks/meta_step.py). A reshape + max is not: its gradient splits ties evenly, and
  its second-order MAML gradient was off by up to 50% (float64, against finite differences).
  """
  h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
  a, b, c, d = (x[:, i:h:2, j:w:2] for i in (0, 1) for j in (0, 1))
  top, bottom = jnp.where(a >= b, a, b), jnp.where(c >= d, c, d)
  return jnp.where(top >= bottom, top, bottom)
