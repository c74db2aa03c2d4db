"""Model zoo: `create(arch, num_classes, image_size)` and variable initialisation."""
import functools

import jax
import jax.numpy as jnp

from purer_jax.models.conv4 import Conv4
from purer_jax.models.resnet import ResNet

_SIMPLE = (64, 128, 256, 512)
_FACTORIES = {
    'conv4': Conv4,
    'resnet10': functools.partial(ResNet, stage_sizes=(1, 1, 1, 1), widths=_SIMPLE),
    'resnet18': functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), widths=_SIMPLE),
    'resnet34': functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), widths=_SIMPLE),
    'resnet50': functools.partial(ResNet, stage_sizes=(3, 4, 6, 3),
                                  widths=(256, 512, 1024, 2048), bottleneck=True),
}
ARCHS = tuple(_FACTORIES)


def create(arch: str, num_classes: int, image_size: int = 32):
  """The Flax module of `arch`; `apply(variables, x_nhwc, train=False)` gives logits."""
  if arch not in _FACTORIES:
    raise ValueError(f'unknown arch {arch!r}: choose one of {", ".join(ARCHS)}')
  if int(num_classes) < 1:
    raise ValueError(f'num_classes must be >= 1, got {num_classes}')
  if arch == 'conv4' and image_size < 16:
    raise ValueError(f'conv4 needs image_size >= 16 (four 2x poolings), got {image_size}')
  return _FACTORIES[arch](num_classes=int(num_classes), image_size=int(image_size))


def init(model, rng):
  """{'params', 'batch_stats'} for `model` at its image size."""
  x = jnp.zeros((1, model.image_size, model.image_size, 3), jnp.float32)
  variables = _jit_init(model)(rng, x)
  return {k: variables[k] for k in ('params', 'batch_stats')}


@functools.lru_cache(maxsize=None)
def _jit_init(model):
  # One compiled init per model: a pool of teachers of one arch compiles it once.
  return jax.jit(model.init)


def num_params(variables) -> int:
  return sum(x.size for x in jax.tree.leaves(variables['params']))
