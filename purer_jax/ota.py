"""OTA: model fusion by optimal transport (Singh & Jaggi, NeurIPS 2020), weight-based mode.

docs/DESIGN.md §11. Layer by layer, each model's units are aligned to a reference model's by an
exact transport plan on the squared Euclidean distance between the units' incoming weights
(otfusion's default ground metric), after the previous layer's alignment has been applied to
the inputs ("past correction"). With equal widths and uniform masses the exact plan is a
permutation, so it is solved as an assignment problem. The head's outputs (classes) are not
permuted, only its inputs. `evaluate.baseline_params('ota', ...)` averages the aligned
models and scores them exactly as `average`.

Supported: Conv4-style chains (conv{i} -> bn{i} -> ReLU -> pool, flattened NHWC, head), where
a channel permutation commutes with ReLU and pooling. ResNet pools raise a clear error.
"""
import numpy as np
from scipy.optimize import linear_sum_assignment


def chain_layers(params) -> list:
  """['conv0', ..., 'conv{n-1}'] of a Conv4-style parameter tree, or a clear error."""
  keys = set(params)
  n = sum(1 for k in keys if k.startswith('conv'))
  want = {f'conv{i}' for i in range(n)} | {f'bn{i}' for i in range(n)} | {'head'}
  if n == 0 or keys != want:
    raise ValueError(
        'the ota baseline fuses Conv4-style chains (params conv{i}, bn{i}, head); got params '
        f'{sorted(keys)}. ResNet pools are not supported: use the random or average baseline')
  return [f'conv{i}' for i in range(n)]


def permute(variables: dict, perms) -> dict:
  """`variables` with the output channels of conv layer i reordered by perms[i] (new channel
  j = old channel perms[i][j]), carried into BN (params and running statistics), the next
  conv's input channels and the head's input rows. The function it computes is unchanged."""
  params = {k: dict(v) for k, v in variables['params'].items()}
  stats = {k: dict(v) for k, v in variables.get('batch_stats', {}).items()}
  convs = chain_layers(params)
  if len(perms) != len(convs):
    raise ValueError(f'{len(convs)} conv layers need {len(convs)} permutations, got {len(perms)}')
  prev = None
  for i, (name, p) in enumerate(zip(convs, perms)):
    kernel = np.asarray(params[name]['kernel'])  # HWIO
    if prev is not None:
      kernel = kernel[:, :, prev, :]
    params[name]['kernel'] = kernel[..., p]
    params[name]['bias'] = np.asarray(params[name]['bias'])[p]
    for tree in (params[f'bn{i}'], stats.get(f'bn{i}', {})):
      for k in tree:
        tree[k] = np.asarray(tree[k])[p]
    prev = p
  params['head'] = dict(params['head'], kernel=_head_rows(params['head']['kernel'], prev))
  out = dict(variables, params=params)
  if 'batch_stats' in variables:
    out['batch_stats'] = stats
  return out


def _head_rows(kernel, perm):
  """The head's input rows are the flattened NHWC features: (H*W*C, N), C fastest."""
  kernel = np.asarray(kernel)
  c = len(perm)
  if kernel.shape[0] % c:
    raise ValueError(f'head kernel {kernel.shape} does not flatten {c}-channel NHWC features')
  return kernel.reshape(-1, c, kernel.shape[1])[:, perm, :].reshape(kernel.shape)


def alignment(reference: dict, variables: dict) -> list:
  """Per conv layer, the permutation of `variables`' channels that best matches
  `reference`'s (exact assignment on squared distances of incoming weights and bias)."""
  ref, other = reference['params'], variables['params']
  convs = chain_layers(ref)
  if chain_layers(other) != convs:
    raise ValueError(f'ota: models have {len(convs)} and {len(chain_layers(other))} conv layers')
  perms, prev = [], None
  for name in convs:
    kernel = np.asarray(other[name]['kernel'], np.float64)
    if prev is not None:  # past correction: inputs already in the reference's order
      kernel = kernel[:, :, prev, :]
    if kernel.shape != np.shape(ref[name]['kernel']):
      raise ValueError(f'ota: {name} kernels differ in shape ({np.shape(ref[name]["kernel"])} '
                       f'vs {kernel.shape}); OTA here needs equal widths')
    a = _units(ref[name]['kernel'], ref[name]['bias'])
    b = _units(kernel, other[name]['bias'])
    cost = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    rows, cols = linear_sum_assignment(cost)
    perm = cols[np.argsort(rows)]  # reference unit j <- model unit perm[j]
    perms.append(perm)
    prev = perm
  return perms


def _units(kernel, bias):
  """One row per output unit: its flattened incoming kernel and its bias."""
  kernel = np.asarray(kernel, np.float64)
  w = np.moveaxis(kernel, -1, 0).reshape(kernel.shape[-1], -1)
  return np.concatenate([w, np.asarray(bias, np.float64)[:, None]], 1)


def align(variables_list, reference: int = 0) -> list:
  """Every model's variables aligned to `variables_list[reference]` (which is unchanged)."""
  if not variables_list:
    raise ValueError('ota: no models to align')
  ref = variables_list[reference]
  return [v if i == reference else permute(v, alignment(ref, v))
          for i, v in enumerate(variables_list)]
