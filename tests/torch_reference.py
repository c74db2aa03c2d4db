"""PyTorch references for tests and benchmarks: the original PURER networks and §4's loss.

The networks follow the original `network.py` module by module, attribute names included,
so their state_dict keys are the original's (docs/DESIGN.md §3; Conv4's ConvBlock registers its
conv and BN twice). `DeepInversionLoss` is docs/DESIGN.md §4's loss for one teacher, with the
original's forward hooks on every BatchNorm2d. Needs torch: only tests and benchmarks import
this module, never the library.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from purer_jax import convert_torch


class Flatten(nn.Module):

  def forward(self, x):
    return x.view(x.size(0), -1)


class ConvBlock(nn.Module):

  def __init__(self, indim, outdim):
    super().__init__()
    self.C = nn.Conv2d(indim, outdim, 3, padding=1)
    self.BN = nn.BatchNorm2d(outdim)
    self.relu = nn.ReLU(inplace=True)
    self.pool = nn.MaxPool2d(2)
    self.trunk = nn.Sequential(self.C, self.BN, self.relu, self.pool)  # registers C, BN twice

  def forward(self, x):
    return self.trunk(x)


class ConvNet(nn.Module):

  def __init__(self, out_dim, img_size):
    super().__init__()
    blocks = [ConvBlock(3 if i == 0 else 32, 32) for i in range(4)]
    self.trunk = nn.Sequential(*blocks, Flatten(), nn.Linear(32 * (img_size >> 4) ** 2, out_dim))

  def forward(self, x):
    return self.trunk(x)


class SimpleBlock(nn.Module):

  def __init__(self, indim, outdim, half_res):
    super().__init__()
    self.C1 = nn.Conv2d(indim, outdim, 3, stride=2 if half_res else 1, padding=1, bias=False)
    self.BN1 = nn.BatchNorm2d(outdim)
    self.C2 = nn.Conv2d(outdim, outdim, 3, padding=1, bias=False)
    self.BN2 = nn.BatchNorm2d(outdim)
    self.relu1, self.relu2 = nn.ReLU(inplace=True), nn.ReLU(inplace=True)
    self.identity = indim == outdim
    if not self.identity:
      self.shortcut = nn.Conv2d(indim, outdim, 1, 2 if half_res else 1, bias=False)
      self.BNshortcut = nn.BatchNorm2d(outdim)

  def forward(self, x):
    out = self.BN2(self.C2(self.relu1(self.BN1(self.C1(x)))))
    return self.relu2(out + (x if self.identity else self.BNshortcut(self.shortcut(x))))


class BottleneckBlock(nn.Module):

  def __init__(self, indim, outdim, half_res):
    super().__init__()
    mid = outdim // 4
    self.C1 = nn.Conv2d(indim, mid, 1, bias=False)
    self.BN1 = nn.BatchNorm2d(mid)
    self.C2 = nn.Conv2d(mid, mid, 3, stride=2 if half_res else 1, padding=1)  # with bias
    self.BN2 = nn.BatchNorm2d(mid)
    self.C3 = nn.Conv2d(mid, outdim, 1, bias=False)
    self.BN3 = nn.BatchNorm2d(outdim)
    self.relu = nn.ReLU()
    self.identity = indim == outdim
    if not self.identity:
      self.shortcut = nn.Conv2d(indim, outdim, 1, stride=2 if half_res else 1, bias=False)

  def forward(self, x):
    short = x if self.identity else self.shortcut(x)
    out = self.relu(self.BN1(self.C1(x)))
    out = self.relu(self.BN2(self.C2(out)))
    return self.relu(self.BN3(self.C3(out)) + short)


class ResNet(nn.Module):

  def __init__(self, block, layers, dims, out_dim):
    super().__init__()
    trunk = [nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(64)]
    indim = 64
    for i in range(4):
      for j in range(layers[i]):
        trunk.append(block(indim, dims[i], i >= 1 and j == 0))
        indim = dims[i]
    trunk += [nn.AdaptiveAvgPool2d(1), Flatten(), nn.Linear(dims[-1], out_dim)]
    self.trunk = nn.Sequential(*trunk)

  def forward(self, x):
    return self.trunk(x)


_SIMPLE = (64, 128, 256, 512)
FACTORIES = {
    'conv4': ConvNet,
    'resnet10': lambda n, s: ResNet(SimpleBlock, (1, 1, 1, 1), _SIMPLE, n),
    'resnet18': lambda n, s: ResNet(SimpleBlock, (2, 2, 2, 2), _SIMPLE, n),
    'resnet34': lambda n, s: ResNet(SimpleBlock, (3, 4, 6, 3), _SIMPLE, n),
    'resnet50': lambda n, s: ResNet(BottleneckBlock, (3, 4, 6, 3), (256, 512, 1024, 2048), n),
}


def create(arch: str, num_classes: int, image_size: int) -> nn.Module:
  """The original code's `arch` (NCHW input), PyTorch's default initialisation."""
  return FACTORIES[arch](num_classes, image_size)


def random_model(arch: str, num_classes: int, image_size: int, seed: int) -> nn.Module:
  """`create` with seeded random weights and non-trivial BN affine parameters and running
  statistics, in eval mode."""
  torch.manual_seed(seed)
  m = create(arch, num_classes, image_size)
  with torch.no_grad():
    for mod in m.modules():
      if isinstance(mod, nn.BatchNorm2d):
        c = mod.num_features
        mod.weight.uniform_(0.5, 1.5)
        mod.bias.normal_(0, 0.2)
        mod.running_mean.normal_(0, 0.2)
        mod.running_var.uniform_(0.5, 2.0)
        mod.num_batches_tracked.fill_(c)
  return m.eval()


def from_flax(variables, arch: str, image_size: int) -> nn.Module:
  """The original network holding Flax {'params', 'batch_stats'}: eval mode, frozen. On
  NCHW images it gives the Flax model's eval-mode logits on the same images in NHWC."""
  sd = convert_torch.to_state_dict(variables, arch, image_size)
  net = create(arch, int(np.shape(variables['params']['head']['bias'])[0]), image_size)
  state = net.state_dict()
  state.update({k: torch.from_numpy(v) for k, v in sd.items()})
  net.load_state_dict(state)
  net.eval()
  for q in net.parameters():
    q.requires_grad_(False)
  return net


def nchw(x_nhwc) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x_nhwc).transpose(0, 3, 1, 2)))


class DeepInversionLoss:
  """§4's loss of one eval-mode teacher on its (already jittered) NCHW batch `x`: CE to
  `targets`, BN matching on each BatchNorm2d's input statistics (collected by forward hooks,
  as the original's DeepInversionFeatureHook), TV and L2 on `x`, weighted by `weights`
  (deep_inversion.Weights). Hooks stay registered for the net's life (cheap for benchmarks)."""

  def __init__(self, net: nn.Module, weights):
    self.net, self.w, self.feats = net, weights, []
    for m in net.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.register_forward_hook(self._hook)

  def _hook(self, mod, inp, _):
    x = inp[0]
    mean = x.mean([0, 2, 3])
    var = x.permute(1, 0, 2, 3).reshape(x.shape[1], -1).var(1, unbiased=False)
    self.feats.append(torch.norm(mod.running_var - var, 2) + torch.norm(mod.running_mean - mean, 2))

  def __call__(self, x, targets):
    self.feats = []
    out = self.net(x)
    tv = (torch.norm(x[:, :, :, :-1] - x[:, :, :, 1:]) + torch.norm(x[:, :, :-1, :] - x[:, :, 1:, :])
          + torch.norm(x[:, :, 1:, :-1] - x[:, :, :-1, 1:])
          + torch.norm(x[:, :, :-1, :-1] - x[:, :, 1:, 1:]))
    return (self.w.ce * F.cross_entropy(out, targets) + self.w.tv * tv
            + self.w.bn * sum(self.feats) + self.w.l2 * torch.norm(x, 2))
