"""The OTA baseline on synthetic Conv4s: permutations, alignment, fusion, scoring."""
import functools

import jax
import numpy as np
import pytest

from purer_jax import config as config_lib
from purer_jax import data, evaluate, models, ota, zoo


def _conv4(seed, num_classes=5, image_size=32):
  """Random Conv4 variables (numpy, no compilation), BN running statistics included."""
  model = models.create('conv4', num_classes, image_size)
  shapes = jax.eval_shape(lambda: models.init(model, jax.random.key(0)))
  rng = np.random.default_rng(seed)
  def fill(path, leaf):
    if jax.tree_util.keystr(path).endswith("['var']"):
      return rng.uniform(0.5, 2.0, leaf.shape).astype(np.float32)
    return rng.normal(0, 0.2, leaf.shape).astype(np.float32)
  return model, jax.tree_util.tree_map_with_path(fill, shapes)


def _perms(seed, width=32):
  rng = np.random.default_rng(seed)
  return [rng.permutation(width) for _ in range(4)]


def _teacher(i, variables, num_classes=5):
  return zoo.Teacher(index=i, arch='conv4', num_classes=num_classes, image_size=32,
                     dataset='cifar_fs', classes=list(range(num_classes)), class_names=[],
                     heldout_acc=None, checkpoint='', variables=variables)


def _close(a, b, atol=1e-6):
  return all(np.allclose(x, y, atol=atol) for x, y in
             zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_permuted_copy_computes_the_same_logits():
  model, v = _conv4(0)
  p = ota.permute(v, _perms(1))
  assert not _close(p['params'], v['params'])
  x = np.random.default_rng(2).normal(size=(6, 32, 32, 3)).astype(np.float32)
  @functools.partial(jax.jit, static_argnums=1)
  def logits(variables, train):  # running statistics, or batch statistics (MAML's mode)
    if train:
      return model.apply(variables, x, train=True, mutable=['batch_stats'])[0]
    return model.apply(variables, x)
  for train in (False, True):
    np.testing.assert_allclose(logits(p, train), logits(v, train), rtol=1e-5, atol=1e-5)


def test_alignment_recovers_the_permutation_and_moves_bn_statistics():
  _, v = _conv4(0)
  perms = _perms(3)
  aligned = ota.align([v, ota.permute(v, perms)])[1]
  assert _close(aligned, v)  # batch_stats included
  # alignment(ref, permuted)[i] inverts perms[i]
  for p, q in zip(perms, ota.alignment(v, ota.permute(v, perms))):
    np.testing.assert_array_equal(p[q], np.arange(32))


def test_fusing_permuted_copies_returns_the_model_while_averaging_does_not():
  model, v = _conv4(0)
  four = jax.tree.map(lambda a: a, v)  # the pool's last teacher: 4 classes, same body
  four['params']['head'] = {'kernel': v['params']['head']['kernel'][:, :4],
                            'bias': v['params']['head']['bias'][:4]}
  pool = [v] + [ota.permute(v, _perms(s)) for s in (1, 2)] + [ota.permute(four, _perms(4))]
  teachers = [_teacher(i, t, 4 if i == 3 else 5) for i, t in enumerate(pool)]
  fused = evaluate.baseline_params('ota', teachers, model, jax.random.key(9))
  assert _close(fused, v['params'])
  average = evaluate.baseline_params('average', teachers, model, jax.random.key(9))
  assert not _close(average, v['params'], atol=1e-3)
  stats = evaluate.tree_mean([a['batch_stats'] for a in ota.align(pool)], v['batch_stats'])
  assert _close(stats, v['batch_stats'])


def test_fusing_identical_models_returns_the_model():
  model, v = _conv4(5)
  fused = evaluate.baseline_params('ota', [_teacher(i, v) for i in range(3)], model,
                                   jax.random.key(0))
  assert _close(fused, v['params'], atol=0)


def test_fusing_different_models_matches_units_before_averaging():
  _, a = _conv4(0)
  _, b = _conv4(1)
  aligned = ota.align([a, b])[1]
  # The assignment never increases the first layer's distance to the reference.
  d = lambda x: np.sum((x['params']['conv0']['kernel'] - a['params']['conv0']['kernel']) ** 2)
  assert d(aligned) <= d(b)


def test_resnet_pools_get_a_clear_error():
  model = models.create('resnet10', 5, 32)
  v = jax.eval_shape(lambda: models.init(model, jax.random.key(0)))
  with pytest.raises(ValueError, match='Conv4-style chains.*ResNet pools are not supported'):
    ota.align([v, v])
  teachers = [zoo.Teacher(index=i, arch='resnet10', num_classes=5, image_size=32,
                          dataset='cifar_fs', classes=[], class_names=[], heldout_acc=None,
                          checkpoint='', variables=v) for i in range(2)]
  assert evaluate.applies('average', teachers, model)
  assert not evaluate.applies('ota', teachers, model)
  assert not evaluate.applies('ota', teachers, models.create('conv4', 5, 32))
  with pytest.raises(ValueError, match='ota baseline needs every teacher'):
    evaluate.baseline_params('ota', teachers, models.create('conv4', 5, 32), jax.random.key(0))


def test_ota_scores_through_evaluate():
  c = config_lib.build('ss', 'smoke')
  rng = np.random.default_rng(0)
  split = data.SplitData(images=rng.integers(0, 256, (6 * 20, 32, 32, 3), dtype=np.uint8),
                         labels=np.repeat(np.arange(6, dtype=np.int32), 20),
                         class_names=tuple(f'c{i}' for i in range(6)))
  model = evaluate.meta_model(c)
  teachers = [_teacher(i, _conv4(i)[1]) for i in range(3)]
  assert evaluate.applies('ota', teachers, model)
  params = evaluate.baseline_params('ota', teachers, model, jax.random.key(c.seed))
  accs = evaluate.evaluate_params(params, c, split, num_tasks=4)
  assert accs.shape == (4,) and ((accs >= 0) & (accs <= 1)).all()
