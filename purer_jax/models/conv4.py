"""Conv4: 4 x [conv3x3(32, bias) -> BN -> ReLU -> maxpool 2], flatten, linear (docs/DESIGN.md
§3)."""
import flax.linen as nn

from purer_jax.models.layers import BatchNorm, conv, max_pool_2x2


class Conv4(nn.Module):
  num_classes: int
  image_size: int = 32
  width: int = 32

  def features(self, x, train: bool = False):
    for i in range(4):
      x = conv(self.width, 3, bias=True, name=f'conv{i}')(x)
      x = BatchNorm(name=f'bn{i}')(x, use_running_average=not train)
      x = max_pool_2x2(nn.relu(x))
    # NHWC flatten: the importer permutes PyTorch's NCHW-ordered head columns to match.
    return x.reshape(x.shape[0], -1)

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False):
    f = self.features(x, train)
    return f if features else nn.Dense(self.num_classes, name='head')(f)
