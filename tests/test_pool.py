"""The pool read-out (purer_jax/pool.py) and the meta-test cost (utils.compiled_gflop)."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purer_jax import data as data_lib
from purer_jax import meta_test, models, pool, utils, zoo


@dataclasses.dataclass
class _Teacher:  # what the read-out uses of a zoo.Teacher
  model: object
  variables: dict


def _tiny_teachers(num_classes=(5, 4), size=16):
  out = []
  for i, k in enumerate(num_classes):
    model = models.create('conv4', k, size)
    out.append(_Teacher(model, models.init(model, jax.random.key(i))))
  return out


def _split(size=16, classes=6, per_class=8, seed=0):
  rng = np.random.default_rng(seed)
  return data_lib.SplitData(
      images=rng.integers(0, 256, (classes * per_class, size, size, 3)).astype(np.uint8),
      labels=np.repeat(np.arange(classes, dtype=np.int32), per_class),
      class_names=tuple(f'c{i}' for i in range(classes)))


@functools.lru_cache(maxsize=None)  # flax modules hash by their fields: one program per model
def _features(model):
  """model's features, compiled (eager, every call compiles op by op)."""
  return jax.jit(lambda v, x: model.apply(v, x, features=True))


def _by_hand(teachers, task, variant, ways):
  """The read-out written out in numpy: per-teacher blocks, unit norm, nearest class mean."""
  x = np.concatenate([task['support_x'], task['query_x']])
  ns, sy = len(task['support_y']), task['support_y']
  blocks = []
  for t in teachers:
    f = np.asarray(_features(t.model)(t.variables, x), np.float64)
    logits = f @ np.asarray(t.variables['params']['head']['kernel'], np.float64) + np.asarray(
        t.variables['params']['head']['bias'], np.float64)
    blocks += {'features': [f], 'logits': [logits], 'both': [f, logits]}[variant.layer]
  z = []
  for b in blocks:
    if variant.norm == 'centred':
      b = b - b[:ns].mean(0)
    z.append(b / np.linalg.norm(b, axis=1, keepdims=True))
  z = np.concatenate(z, 1)
  means = np.stack([z[:ns][sy == c].mean(0) for c in range(ways)])
  q = z[ns:]
  if variant.metric == 'cosine':
    pred = np.argmax(q @ (means / np.linalg.norm(means, axis=1, keepdims=True)).T, 1)
  else:
    pred = np.argmin(((q[:, None] - means[None]) ** 2).sum(-1), 1)
  return float(np.mean(pred == task['query_y']))


def test_readout_matches_hand_computation():
  teachers, split = _tiny_teachers(), _split()
  variant_list = pool.variants()
  accs = pool.accuracies(teachers, split, ways=3, shots=2, queries=3, num_tasks=4, seed=7,
                         variant_list=variant_list, batch=3)
  assert accs.shape == (4, len(variant_list))
  eps = list(data_lib.episodes(split, 3, 2, 3, 7, num=4))
  expected = np.array([[_by_hand(teachers, e, v, 3) for v in variant_list] for e in eps])
  np.testing.assert_allclose(accs, expected, atol=1e-6)
  # The single-task program (the one whose cost is the pool's) agrees.
  models_ = tuple(t.model for t in teachers)
  one = pool.task_accuracy([t.variables for t in teachers],
                           {k: v for k, v in eps[0].items() if k != 'classes'},
                           models=models_, ways=3, variant=variant_list[-1])
  assert float(one) == pytest.approx(expected[0, -1], abs=1e-6)


def test_variants_refuse_unknown_names():
  with pytest.raises(ValueError, match=r"pool layers must be a non-empty subset of \('features'"):
    pool.variants(layers=('penultimate',))


def test_pool_variant_never_reads_meta_test(smoke_zoo, smoke_config, tmp_path, monkeypatch):
  """final_evaluation chooses the read-out on meta-val: replacing the meta-test images by noise
  changes the pool's meta-test score, not its choice; the choice sees meta-val splits only."""
  c = smoke_config.copy_and_resolve_references()
  c.eval.tasks, c.train.val_tasks, c.eval.methods = 10, 10, ('pool',)
  teachers = zoo.load(smoke_zoo)
  seen = []
  choose = pool.choose_variant
  monkeypatch.setattr(pool, 'choose_variant',
                      lambda t, splits, **kw: seen.extend(splits) or choose(t, splits, **kw))
  first = meta_test.final_evaluation(c, str(tmp_path / 'a'), teachers, None)['cifar_fs']
  real_val = data_lib.load('cifar_fs', 'meta_val', c.data.data_dir)
  assert seen and all(np.array_equal(s.images, real_val.images) for s in seen)
  load = data_lib.load

  def noisy(name, split, *args, **kw):
    d = load(name, split, *args, **kw)
    if split == 'meta_test':
      noise = np.random.default_rng(0).integers(0, 256, d.images.shape).astype(np.uint8)
      d = dataclasses.replace(d, images=noise)
    return d
  monkeypatch.setattr(data_lib, 'load', noisy)
  second = meta_test.final_evaluation(c, str(tmp_path / 'b'), teachers, None)['cifar_fs']
  assert second['pool_variant'] == first['pool_variant']
  assert second['per_task']['pool'] != first['per_task']['pool']
  assert set(first['methods']) == {'pool'} and first['cost_gflop']['pool'] > 0


def test_gflop_equals_xla_count_for_known_programs():
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  # A matmul: 2 m n k.
  assert utils.compiled_gflop(jax.jit(jnp.matmul), f32(8, 16), f32(16, 4)) * 1e9 == 2 * 8 * 16 * 4
  # A 3x3 SAME convolution: XLA counts the multiply-adds that touch the image, not the padding.
  conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
  taps = sum(sum(0 <= i + k < 8 for k in (-1, 0, 1)) for i in range(8))  # per axis: 22
  gflop = utils.compiled_gflop(conv, f32(2, 8, 8, 3), f32(3, 3, 3, 4))
  assert gflop * 1e9 == 2 * 2 * 3 * 4 * taps ** 2


def test_pool_cost_grows_with_the_pool():
  """The pool's cost is its teachers' forward passes: two teachers cost about twice one."""
  one, two = (pool.task_gflop(_tiny_teachers((5,) * n), ways=5, shots=1, queries=15,
                              image_size=16, variant=pool.Variant()) for n in (1, 2))
  assert 1.9 < two / one < 2.1


def test_embedding_in_chunks_of_any_size_gives_the_same_accuracies(smoke_zoo, meta_val,
                                                                   monkeypatch):
  """Large images are embedded a few at a time (`EMBED_PIXELS`: 84-px ResNet-18s asked for a
  75 GB buffer at 2,000 images); the last chunk is padded and cut: nothing else changes."""
  teachers = zoo.load(smoke_zoo)
  kw = dict(ways=5, shots=1, queries=3, num_tasks=4, seed=3, variant_list=pool.variants())
  whole = pool.accuracies(teachers, meta_val, **kw)
  monkeypatch.setattr(pool, 'EMBED_PIXELS', 7 * 32 * 32)  # 7 images a chunk, the last padded
  np.testing.assert_array_equal(pool.accuracies(teachers, meta_val, **kw), whole)
