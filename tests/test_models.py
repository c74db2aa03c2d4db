"""Model zoo: output shapes, parameter counts from docs/DESIGN.md §3's formulas, BN semantics."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax import traverse_util

from purer_jax import models
from purer_jax.models.layers import BatchNorm, max_pool_2x2


def _bn(c):
  return 2 * c


def _simple(cin, cout):
  n = 9 * cin * cout + _bn(cout) + 9 * cout * cout + _bn(cout)
  return n + (cin * cout + _bn(cout) if cin != cout else 0)


def _bottleneck(cin, cout):
  mid = cout // 4
  n = cin * mid + _bn(mid) + 9 * mid * mid + mid + _bn(mid) + mid * cout + _bn(cout)
  return n + (cin * cout if cin != cout else 0)


def _resnet(blocks, widths, block, n):
  total, cin = 27 * 64 + _bn(64), 64
  for b, w in zip(blocks, widths):
    for _ in range(b):
      total, cin = total + block(cin, w), w
  return total + cin * n + n


def _conv4(size, n):
  convs = (27 * 32 + 32) + 3 * (9 * 32 * 32 + 32) + 4 * _bn(32)
  return convs + 32 * (size // 16) ** 2 * n + n


EXPECTED = {
    ('conv4', 32): _conv4(32, 5),
    ('conv4', 84): 32 * 5 * 5 * 5 + 5 + _conv4(16, 5) - (32 * 5 + 5),
    ('resnet10', 32): _resnet((1, 1, 1, 1), (64, 128, 256, 512), _simple, 5),
    ('resnet18', 32): _resnet((2, 2, 2, 2), (64, 128, 256, 512), _simple, 5),
    ('resnet34', 32): _resnet((3, 4, 6, 3), (64, 128, 256, 512), _simple, 5),
    ('resnet50', 32): _resnet((3, 4, 6, 3), (256, 512, 1024, 2048), _bottleneck, 5),
}


@pytest.mark.parametrize('arch,size', list(EXPECTED))
def test_shapes_and_param_counts(arch, size):
  model = models.create(arch, 5, size)
  variables = jax.eval_shape(lambda: models.init(model, jax.random.key(0)))
  assert models.num_params(variables) == EXPECTED[(arch, size)]
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((3, size, size, 3))), variables)
  chex.assert_shape(out, (3, 5))


def test_conv4_84px_head_has_800_inputs():
  model = models.create('conv4', 5, 84)
  v = jax.eval_shape(lambda: models.init(model, jax.random.key(0)))
  assert v['params']['head']['kernel'].shape == (800, 5)


@pytest.mark.slow  # compile-bound
def test_resnet18_84px_runs():
  model = models.create('resnet18', 7, 84)
  v = models.init(model, jax.random.key(1))
  # Jitted, as in every test here that needs no Python inside the model: eager, each operation
  # compiles on its own (ResNet-18: 3.7 CPU-s against 2.4).
  chex.assert_shape(jax.jit(model.apply)(v, jnp.ones((2, 84, 84, 3))), (2, 7))


def test_batchnorm_train_eval_and_running_stats():
  model = models.create('conv4', 5, 32)
  v = models.init(model, jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (8, 32, 32, 3)) * 3 + 1

  @jax.jit
  def run(v, x):
    _, new = model.apply(v, x, train=True, mutable=['batch_stats'])
    conv0 = jax.lax.conv_general_dilated(x, v['params']['conv0']['kernel'], (1, 1),
                                         ((1, 1), (1, 1)),
                                         dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    # Transductive mode needs no running statistics; eval mode reads them.
    return (new, conv0 + v['params']['conv0']['bias'],
            model.apply({'params': v['params']}, x, train=True), model.apply(v, x, train=False))

  new, conv0, a, b = run(v, x)
  m = new['batch_stats']['bn0']['mean']
  # Running mean after one step: 0.9 * 0 + 0.1 * batch mean of the first conv's output.
  conv0 = np.asarray(conv0)
  np.testing.assert_allclose(m, 0.1 * conv0.mean((0, 1, 2)), rtol=1e-4, atol=1e-5)
  n = 8 * 32 * 32
  np.testing.assert_allclose(new['batch_stats']['bn0']['var'],
                             0.9 + 0.1 * conv0.var((0, 1, 2)) * n / (n - 1), rtol=1e-4)
  assert not np.allclose(a, b)  # transductive and eval modes differ


@pytest.mark.parametrize('arch', ['conv4', 'resnet10'])
def test_bn_stats_capture_is_input_statistics(arch):
  model = models.create(arch, 5, 16)
  v = models.init(model, jax.random.key(0))
  x = jax.random.normal(jax.random.key(2), (4, 16, 16, 3))
  logits, st = model.apply(v, x, mutable=['bn_stats'])
  np.testing.assert_allclose(logits, model.apply(v, x), rtol=1e-6)
  assert jax.tree.structure(st['bn_stats']) == jax.tree.structure(v['batch_stats'])
  # The values: mean and biased variance over (N, H, W) of what each BatchNorm received.
  inputs = {}

  def record(call, args, kwargs, context):
    if isinstance(context.module, BatchNorm) and context.method_name == '__call__':
      inputs[context.module.path] = np.asarray(args[0], np.float64)
    return call(*args, **kwargs)

  with nn.intercept_methods(record):
    model.apply(v, x)
  flat = traverse_util.flatten_dict(st['bn_stats'])
  assert {p[:-1] for p in flat} == set(inputs)
  assert len(inputs) == {'conv4': 4, 'resnet10': 12}[arch]  # ResNet: stem, 2 + 3 + 3 + 3
  for path, h in inputs.items():
    np.testing.assert_allclose(flat[path + ('mean',)], h.mean((0, 1, 2)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(flat[path + ('var',)], h.var((0, 1, 2)), rtol=1e-4, atol=1e-5)


def test_bad_arguments():
  with pytest.raises(ValueError, match='unknown arch'):
    models.create('vgg', 5, 32)
  with pytest.raises(ValueError, match='num_classes'):
    models.create('conv4', 0, 32)


def test_max_pool_2x2_matches_flax_to_second_order(monkeypatch):
  # Same values as nn.max_pool (odd sizes drop the edge, as 'VALID'), and the same
  # second-order MAML gradient through a Conv4: a reshape + max, whose gradient splits ties,
  # was off there by up to 50%.
  from purer_jax import meta
  from purer_jax.models import conv4
  x = jax.random.normal(jax.random.key(0), (2, 7, 9, 3))
  ref_pool = lambda a: nn.max_pool(a, (2, 2), strides=(2, 2), padding='VALID')
  np.testing.assert_array_equal(max_pool_2x2(x), ref_pool(x))
  model = models.create('conv4', 5, 32)
  params = models.init(model, jax.random.key(1))['params']
  k1, k2 = jax.random.split(jax.random.key(2))
  task = {'support_x': jax.random.normal(k1, (5, 32, 32, 3)), 'support_y': jnp.arange(5),
          'query_x': jax.random.normal(k2, (15, 32, 32, 3)), 'query_y': jnp.arange(15) % 5}
  learner = meta.Learner('maml', model, 0.01, 1, True)
  grad = lambda: jax.jit(jax.grad(lambda p: learner.task_loss(p, task)[0]))(params)
  ours = grad()
  monkeypatch.setattr(conv4, 'max_pool_2x2', ref_pool)
  chex.assert_trees_all_close(ours, grad(), rtol=1e-3, atol=1e-6)
