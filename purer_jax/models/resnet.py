"""ResNet-10/18/34 (SimpleBlock) and ResNet-50 (BottleneckBlock) of docs/DESIGN.md §3."""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from purer_jax.models.layers import BatchNorm, conv


class SimpleBlock(nn.Module):
  features: int
  stride: int

  @nn.compact
  def __call__(self, x, train):
    bn = lambda name: (lambda y: BatchNorm(name=name)(y, use_running_average=not train))
    out = nn.relu(bn('bn1')(conv(self.features, 3, self.stride, name='conv1')(x)))
    out = bn('bn2')(conv(self.features, 3, name='conv2')(out))
    if x.shape[-1] != self.features:
      x = bn('shortcut_bn')(conv(self.features, 1, self.stride, name='shortcut')(x))
    return nn.relu(out + x)


class BottleneckBlock(nn.Module):
  features: int
  stride: int

  @nn.compact
  def __call__(self, x, train):
    bn = lambda name: (lambda y: BatchNorm(name=name)(y, use_running_average=not train))
    mid = self.features // 4
    out = nn.relu(bn('bn1')(conv(mid, 1, name='conv1')(x)))
    out = nn.relu(bn('bn2')(conv(mid, 3, self.stride, bias=True, name='conv2')(out)))
    out = bn('bn3')(conv(self.features, 1, name='conv3')(out))
    if x.shape[-1] != self.features:  # the original's bottleneck shortcut has no BN
      x = conv(self.features, 1, self.stride, name='shortcut')(x)
    return nn.relu(out + x)


class ResNet(nn.Module):
  num_classes: int
  stage_sizes: Sequence[int]
  widths: Sequence[int]
  bottleneck: bool = False
  image_size: int = 32

  def features(self, x, train: bool = False):
    x = conv(64, 3, name='stem_conv')(x)
    x = BatchNorm(name='stem_bn')(x, use_running_average=not train)  # no ReLU, as the original
    block = BottleneckBlock if self.bottleneck else SimpleBlock
    k = 0
    for i, (n, w) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(n):
        x = block(w, 2 if (i > 0 and j == 0) else 1, name=f'block{k}')(x, train)
        k += 1
    return jnp.mean(x, axis=(1, 2))

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False):
    f = self.features(x, train)
    return f if features else nn.Dense(self.num_classes, name='head')(f)
