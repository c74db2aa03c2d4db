"""The inversion engine (docs/DESIGN.md §4) on smoke-trained teachers (synthetic data)."""
import dataclasses
import functools
import time
import types

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from purer_jax import bank as bank_lib
from purer_jax import config as config_lib
from purer_jax import deep_inversion, inversion, models, pretrain, zoo
from tests import torch_reference


@pytest.fixture(scope='module')
def teachers(smoke_zoo):
  return zoo.load(smoke_zoo)


@pytest.fixture(scope='module')
def layout(teachers):
  return bank_lib.make_layout(teachers, spc=4)


@pytest.fixture(scope='module')
def stacked(teachers, layout):
  return bank_lib.stack_teachers(teachers, layout)


@pytest.fixture(scope='module')
def cfg():
  return config_lib.build('ss').inversion


def _images(layout, seed=0):
  return bank_lib.init(layout, jax.random.key(seed))


def _slice(images, layout, t):
  """Teacher t's interleaved batch (spc * n, H, W, 3)."""
  g = layout.groups[0]
  return bank_lib.group_slice(images, g)[g.members.index(t)]


# ---------------------------------------------------------------------------------------------
# Layout.

def test_disjoint_layout_maps_pseudo_classes_to_meta_train_classes():
  pool = [types.SimpleNamespace(arch='conv4', num_classes=len(c), image_size=32, classes=c,
                                dataset='cifar_fs')
          for c in (list(range(5 * i, min(5 * i + 5, 64))) for i in range(13))]
  lay = bank_lib.make_layout(pool, spc=16)
  assert [(g.num_classes, g.size) for g in lay.groups] == [(5, 12), (4, 1)]
  assert lay.shape == (64, 16, 32, 32, 3)
  np.testing.assert_array_equal(lay.class_id, np.arange(64))
  np.testing.assert_array_equal(lay.owner, np.arange(64) // 5)
  np.testing.assert_array_equal(lay.classes_of(12), [60, 61, 62, 63])
  # Each teacher's batch interleaves its classes: row s * n + c is class c's image s.
  images = jnp.arange(64 * 16, dtype=jnp.float32).reshape(64, 16, 1, 1, 1) * jnp.ones(
      (1, 1, 32, 32, 3))
  x = bank_lib.group_slice(images, lay.groups[1])
  assert x.shape == (1, 64, 32, 32, 3)
  np.testing.assert_array_equal(x[0, :, 0, 0, 0], [(60 + r % 4) * 16 + r // 4 for r in range(64)])
  np.testing.assert_array_equal(bank_lib.targets(4, 16), np.arange(64) % 4)


def test_bad_input_gives_clear_errors(layout, cfg, teachers):
  with pytest.raises(ValueError, match='strategy'):
    inversion.make_inversion_step(layout, cfg, strategy='pmap')
  with pytest.raises(ValueError, match='pass the bank image_size'):
    bank_lib.make_layout([teachers[0], types.SimpleNamespace(
        arch='conv4', num_classes=5, image_size=84, classes=None)], spc=2)
  with pytest.raises(ValueError, match='teachers=bank.stack_teachers'):
    inversion.make_inversion_step(layout, cfg, strategy='auto')
  step = inversion.make_inversion_step(layout, cfg, strategy='loop')
  with pytest.raises(ValueError, match='InversionStep.init'):
    step(jnp.zeros((3, 4, 32, 32, 3)), None, None, jax.random.key(0))


# ---------------------------------------------------------------------------------------------
# Loss terms against direct computations and PyTorch.

def test_bn_statistics_equal_a_direct_computation(teachers, layout):
  t = teachers[0]
  x = _slice(_images(layout), layout, 0)
  # Jitted: eager, each operation compiles on its own (~10x the CPU here).
  logits, stats = jax.jit(functools.partial(deep_inversion.bn_statistics, t.model))(
      t.variables, x)
  # The BN inputs of Conv4 are its conv outputs: capture them and reduce in float64.
  _, inter = jax.jit(lambda v, x: t.model.apply(v, x, capture_intermediates=lambda m, _: (
      isinstance(m, nn.Conv)), mutable=['intermediates']))(t.variables, x)
  for i in range(4):
    h = np.asarray(inter['intermediates'][f'conv{i}']['__call__'][0], np.float64)
    np.testing.assert_allclose(stats[f'bn{i}']['mean'], h.mean((0, 1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats[f'bn{i}']['var'], h.var((0, 1, 2)), rtol=1e-4, atol=1e-6)
  chex.assert_trees_all_equal_structs(stats, t.variables['batch_stats'])
  np.testing.assert_allclose(logits, jax.jit(t.model.apply)(t.variables, x), rtol=1e-6,
                             atol=1e-6)
  # The fast functional Conv4 (both conv paths) gives the same logits and statistics.
  for conv in ('lax', 'im2col'):
    fl, fs = jax.jit(functools.partial(deep_inversion.conv4_forward, conv=conv))(t.variables, x)
    np.testing.assert_allclose(fl, logits, rtol=1e-4, atol=1e-4)
    chex.assert_trees_all_close(fs, stats, rtol=1e-4, atol=1e-5)


def test_loss_and_gradient_agree_with_pytorch(teachers, layout, cfg):
  w = deep_inversion.Weights.from_config(cfg)
  tgt = bank_lib.targets(5, layout.spc)
  x = _slice(_images(layout, 3), layout, 1)
  t = teachers[1]
  xj = deep_inversion.jitter(x, jax.random.key(7), 2)
  assert not np.array_equal(xj, x)  # an actual roll
  shift = [s for s in range(-2, 3) for r in range(-2, 3)
           if np.array_equal(np.roll(x, (s, r), (1, 2)), xj)]
  assert len(shift) == 1  # one offset for the whole slice
  for strategy in ('loop', 'vmap'):
    loss, grad = jax.jit(jax.value_and_grad(lambda a, s=strategy: (
        deep_inversion.deep_inversion_loss(a, t.variables, tgt, model=t.model, weights=w,
                                           strategy=s)[0])))(xj)
    xt = torch_reference.nchw(xj).requires_grad_(True)
    ref = torch_reference.DeepInversionLoss(torch_reference.from_flax(t.variables, 'conv4', 32),
                                            w)(xt, torch.tensor(np.asarray(tgt)).long())
    ref.backward()
    np.testing.assert_allclose(float(loss), ref.item(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad).transpose(0, 3, 1, 2), xt.grad.numpy(),
                               rtol=1e-3, atol=2e-6)


@pytest.mark.slow  # compile-bound
def test_gradient_check(teachers, cfg):
  t = teachers[2]
  w = deep_inversion.Weights.from_config(cfg)
  tgt = bank_lib.targets(5, 1)
  x = jax.random.normal(jax.random.key(1), (5, 32, 32, 3))
  with jax.enable_x64(True):
    v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t.variables)
    for s in ('loop', 'vmap'):
      # Jitted: check_grads calls it many times, and eager it compiles op by op.
      f = jax.jit(lambda a, s=s: deep_inversion.deep_inversion_loss(a, v64, tgt, model=t.model,
                                                                    weights=w, strategy=s)[0])
      jax.test_util.check_grads(f, (jnp.asarray(x, jnp.float64),), order=1, modes=['rev'],
                                eps=1e-7, atol=1e-6, rtol=1e-5)


def test_mixed_pool_sums_teachers_in_pool_order(teachers, cfg):
  """A pool of two groups (a 4-class teacher made from teacher 2's first 4 outputs) gives
  L_inv = Σ_t loss_t with per-teacher metrics in pool order."""
  v = teachers[2].variables
  v = {**v, 'params': {**v['params'], 'head': jax.tree.map(lambda a: a[..., :4],
                                                          v['params']['head'])}}
  t4 = dataclasses.replace(teachers[2], index=3, num_classes=4,
                           classes=teachers[2].classes[:4], variables=v)
  pool = [teachers[0], t4, teachers[1]]
  lay = bank_lib.make_layout(pool, spc=2)
  assert [g.members for g in lay.groups] == [(0, 2), (1,)]
  w, key = deep_inversion.Weights.from_config(cfg), jax.random.key(5)
  images = _images(lay)
  loss, m = jax.jit(functools.partial(
      inversion.inversion_loss, layout=lay, weights=w, max_shift=2,
      strategies=('loop', 'vmap')))(images, bank_lib.stack_teachers(pool, lay), key)

  @functools.partial(jax.jit, static_argnums=(0,))
  def expected_loss(pos, variables):
    x = images[lay.classes_of(pos)].swapaxes(0, 1).reshape((-1, 32, 32, 3))
    x = deep_inversion.jitter(x, jax.random.fold_in(key, pos), 2)
    t = pool[pos]
    return deep_inversion.deep_inversion_loss(x, variables, bank_lib.targets(t.num_classes, 2),
                                              model=t.model, weights=w)[0]

  expected = [expected_loss(pos, t.variables) for pos, t in enumerate(pool)]
  np.testing.assert_allclose(m['teacher_loss'], expected, rtol=1e-5)
  np.testing.assert_allclose(loss, sum(expected), rtol=1e-5)


def test_teachers_see_their_slice_resized_to_their_input_size(teachers, cfg):
  t = teachers[0]
  w, tgt = deep_inversion.Weights.from_config(cfg), bank_lib.targets(5, 2)
  x = jax.random.normal(jax.random.key(2), (10, 48, 48, 3))

  @jax.jit
  def terms_and_direct(x, v):
    _, terms = deep_inversion.deep_inversion_loss(x, v, tgt, model=t.model, weights=w)
    small = jax.image.resize(x, (10, 32, 32, 3), 'bilinear')
    _, stats = deep_inversion.bn_statistics(t.model, v, small)
    return terms, deep_inversion.bn_loss(stats, v['batch_stats']), deep_inversion.tv_loss(x)

  terms, bn, tv = terms_and_direct(x, t.variables)
  np.testing.assert_allclose(terms['bn'], bn, rtol=1e-5)
  np.testing.assert_allclose(terms['tv'], tv, rtol=1e-6)  # at bank size
  lay = bank_lib.make_layout(teachers, spc=2, image_size=48)
  step = inversion.make_inversion_step(lay, cfg, strategy='loop')
  images, opt = step.init(jax.random.key(0))
  images, opt, m = step(images, opt, bank_lib.stack_teachers(teachers, lay), jax.random.key(1))
  assert images.shape == (15, 2, 48, 48, 3) and np.isfinite(float(m['loss']))


def test_meta_learner_sees_small_teachers_classes_as_upsamples(teachers):
  # A 32-px teacher (CIFAR-FS) and a 48-px one share a 48-px bank, as MH's pools do at 84 px.
  big = types.SimpleNamespace(arch='conv4', num_classes=5, image_size=48, classes=range(5),
                              dataset='mini_imagenet')
  lay = bank_lib.make_layout([teachers[0], big], spc=2, image_size=48)
  small = next(g for g in lay.groups if g.image_size == 32)
  # A 1-px checkerboard: pure high frequency, invisible at 32 px.
  board = np.indices((48, 48)).sum(0) % 2 * 2.0 - 1.0
  images = jnp.broadcast_to(jnp.asarray(board)[..., None], lay.shape)
  seen = np.asarray(bank_lib.as_seen(images, lay))
  rows = slice(small.start, small.start + small.num_pseudo)
  want = jax.image.resize(jax.image.resize(images[rows].reshape(-1, 48, 48, 3),
                                           (10, 32, 32, 3), 'bilinear'), (10, 48, 48, 3),
                          'bilinear')
  np.testing.assert_allclose(seen[rows].reshape(-1, 48, 48, 3), want, atol=1e-6)
  assert np.abs(seen[rows]).max() < 0.5 * np.abs(board).max()
  others = np.ones(lay.num_pseudo, bool)
  others[rows] = False
  np.testing.assert_array_equal(seen[others], np.asarray(images)[others])


# ---------------------------------------------------------------------------------------------
# The compiled step.

@pytest.mark.slow  # compile-bound
def test_strategies_agree_and_auto_picks_one(layout, stacked, cfg):
  images, key = _images(layout), jax.random.key(3)
  out = {}
  for s in inversion.STRATEGIES:
    step = inversion.make_inversion_step(layout, cfg, strategy=s)
    assert step.strategies == (s,)
    out[s] = step.loss(images, step.place_teachers(stacked), key)
  chex.assert_trees_all_close(out['loop'], out['vmap'], rtol=1e-5, atol=1e-5)
  auto = inversion.make_inversion_step(layout, cfg, teachers=stacked, strategy='auto')
  assert auto.strategies[0] in inversion.STRATEGIES
  t0 = time.perf_counter()  # the measured choice is cached: a second build is instant
  again = inversion.make_inversion_step(layout, cfg, teachers=stacked, strategy='auto')
  assert again.strategies == auto.strategies and time.perf_counter() - t0 < 1.0


def test_step_does_not_recompile_and_extra_loss_reaches_the_bank(layout, stacked, cfg,
                                                                  monkeypatch):
  monkeypatch.setattr(inversion, 'inversion_update',
                      chex.assert_max_traces(inversion.inversion_update, n=2))
  step = inversion.make_inversion_step(layout, cfg, strategy='loop')
  images, opt = step.init(jax.random.key(0))
  teachers = step.place_teachers(stacked)
  for i in range(3):
    images, opt, m = step(images, opt, teachers, jax.random.key(i))
  assert float(m['extra']) == 0.0 and float(m['loss']) == pytest.approx(float(m['inv']))
  # An extra loss (ECI's hook) is one more trace, then cached too; it moves the bank.
  extra = lambda x, a: a * jnp.sum(x[0])
  base, _, _ = step(jnp.array(images), jax.tree.map(jnp.array, opt), teachers, jax.random.key(9))
  for i in range(3):
    moved, _, m = step(jnp.array(images), jax.tree.map(jnp.array, opt), teachers,
                       jax.random.key(9), extra_loss=extra, extra_args=jnp.float32(1e3))
  assert float(m['extra']) != 0.0
  assert np.abs(np.asarray(moved[0] - base[0])).max() > 1e-3
  np.testing.assert_allclose(moved[1:], base[1:], atol=1e-6)


@pytest.mark.slow
def test_30_steps_make_teachers_recognise_their_classes(teachers, stacked, cfg):
  # The smoke teachers recognise every target by step 25, at 8 images per class as at 16 (1.5x
  # the time) or after 200 steps (7x).
  lay = bank_lib.make_layout(teachers, spc=8)
  step = inversion.make_inversion_step(lay, cfg, strategy='loop')
  images, opt = step.init(jax.random.key(0))
  tt = step.place_teachers(stacked)
  before = _target_acc(teachers, lay, images)
  for i in range(30):
    images, opt, metrics = step(images, opt, tt, jax.random.fold_in(jax.random.key(1), i))
  after = _target_acc(teachers, lay, images)
  assert np.isfinite(float(metrics['loss']))
  assert max(before) < 0.5 and min(after) >= 0.95, (before, after)


def _target_acc(teachers, lay, images):
  accs = []
  for g in lay.groups:
    x = bank_lib.group_slice(images, g)
    y = np.asarray(bank_lib.targets(g.num_classes, lay.spc))
    for j, i in enumerate(g.members):
      accs.append(pretrain.accuracy(teachers[i].variables, teachers[i].model, x[j], y))
  return accs


@pytest.mark.slow  # compile-bound
def test_sharded_step_equals_single_device(layout, stacked, cfg):
  assert jax.device_count() == 8, 'tests/conftest.py sets 8 fake CPU devices'
  mesh = jax.make_mesh((8,), ('teachers',), axis_types=(jax.sharding.AxisType.Auto,))
  key = jax.random.key(4)
  results = {}
  for name, m in (('single', None), ('sharded', mesh)):
    step = inversion.make_inversion_step(layout, cfg, strategy='loop', mesh=m)
    images, opt = step.init(jax.random.key(0))
    tt = step.place_teachers(stacked)
    loss, grad = jax.jit(jax.value_and_grad(lambda x: step.loss(x, tt, key)[0]))(images)
    new, _, metrics = step(images, opt, tt, key)
    results[name] = (loss, grad, new, metrics)
    if m is not None:
      assert len(jax.tree.leaves(tt)[0].sharding.device_set) == 8
  chex.assert_trees_all_close(results['single'], results['sharded'], rtol=1e-5, atol=1e-5)


def test_sharded_teachers_take_one_share_of_memory_per_device(cfg):
  # 16 teachers: each of n fake devices holds 16/n of their variables (model scale, issue
  # evidence: the teacher pool's memory falls as 1/devices).
  pool = [type('T', (), dict(arch='conv4', num_classes=5, image_size=32, classes=None))()
          for _ in range(16)]
  lay = bank_lib.make_layout(pool, 2)
  one = models.init(models.create('conv4', 5, 32), jax.random.key(0))
  stacked = (jax.tree.map(lambda a: np.repeat(np.asarray(a)[None], 16, 0), one),)
  total = sum(a.nbytes for a in jax.tree.leaves(stacked))
  for n in (1, 2, 4, 8):
    mesh = jax.make_mesh((n,), ('teachers',), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=jax.devices()[:n])
    placed = inversion.make_inversion_step(lay, cfg, strategy='loop', mesh=mesh).place_teachers(
        stacked)
    per_device = {}
    for a in jax.tree.leaves(placed):
      for s in a.addressable_shards:
        per_device[s.device] = per_device.get(s.device, 0) + s.data.nbytes
    assert len(per_device) == n and set(per_device.values()) == {total // n}


def test_auto_times_the_teachers_a_step_evaluates(layout, stacked, cfg, monkeypatch):
  # PURER-Plus draws per_iter of a large group: the strategy is chosen for that many teachers
  # (13 of 100 unroll cheaply; 100 would not).
  sizes = []
  monkeypatch.setattr(inversion, 'choose_strategy',
                      lambda *a, size=None, **k: sizes.append(size) or 'loop')
  inversion.make_inversion_step(layout, cfg, teachers=stacked, strategy='auto', per_iter=1)
  inversion.make_inversion_step(layout, cfg, teachers=stacked, strategy='auto')
  assert sizes == [1, 3]


def test_chunked_step_equals_one_program(layout, stacked, cfg, monkeypatch):
  # 3 teachers in chunks of 2: two programs, the gradients summed, then one Adam update.
  monkeypatch.setattr(inversion, 'CHUNK', 2)
  key = jax.random.key(5)
  out = {}
  for s in ('loop', 'chunks'):
    step = inversion.make_inversion_step(layout, cfg, strategy=s)
    images, opt = step.init(jax.random.key(0))
    teachers = step.place_teachers(stacked)
    for i in range(2):
      images, opt, metrics = step(images, opt, teachers, jax.random.fold_in(key, i))
    out[s] = (images, opt, metrics)
  assert len(inversion.make_inversion_step(layout, cfg, strategy='chunks').chunks) == 2
  chex.assert_trees_all_close(out['chunks'], out['loop'], rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='per_iter'):
    inversion.make_inversion_step(layout, cfg, strategy='chunks', per_iter=1)


def test_pool_metrics_and_bank_update_are_one_rule():
  """The one-program and the chunked steps share both. Where their copies differed: a teacher
  a step does not evaluate has NaN metrics (the chunked copy wrote 0), and a pseudo class
  without gradient keeps its images and Adam moments only when `lazy` (per_iter)."""
  terms = {'ce': jnp.asarray([0.5, 0.25]), 'acc': jnp.asarray([1.0, 0.0])}
  m = inversion.pool_metrics(jnp.asarray([1.0, 2.0]), terms, np.asarray([2, 0]), 3)
  np.testing.assert_array_equal(m['teacher_loss'], [2.0, np.nan, 1.0])
  np.testing.assert_array_equal(m['teacher_acc'], [0.0, np.nan, 1.0])
  assert (float(m['inv']), float(m['ce']), float(m['acc'])) == (3.0, 0.75, 0.5)
  tx = optax.adam(0.1)
  images = jnp.zeros((2, 1, 1, 1, 3))
  images, opt = bank_lib.apply_gradients(images, tx.init(images), jnp.ones_like(images), tx=tx)
  grads = jnp.ones_like(images).at[1].set(0.0)  # class 1's teacher not drawn
  eager, _ = bank_lib.apply_gradients(images, opt, grads, tx=tx)
  lazy, lazy_opt = bank_lib.apply_gradients(images, opt, grads, tx=tx, lazy=True)
  assert not np.array_equal(eager[1], images[1])  # Adam's momentum moves it
  np.testing.assert_array_equal(lazy[1], images[1])
  np.testing.assert_array_equal(lazy[0], eager[0])
  np.testing.assert_array_equal(lazy_opt[0].mu[1], opt[0].mu[1])


def test_per_iter_refines_a_random_subset_and_leaves_the_rest(layout, stacked, cfg):
  assert inversion.per_group(layout, 0) == (3,) and inversion.per_group(layout, 5) == (3,)
  assert inversion.per_group(layout, 1) == (1,)
  full = inversion.make_inversion_step(layout, cfg, strategy='loop')
  sub = inversion.make_inversion_step(layout, cfg, strategy='loop', per_iter=1)
  assert sub.lazy and not full.lazy
  images, opt = sub.init(jax.random.key(0))
  drawn = set()
  for step in range(6):
    key = jax.random.key(10 + step)
    _, m_full = full.loss(images, stacked, key)
    before, opt_before = np.asarray(images), jax.tree.map(np.asarray, opt)
    images, opt, m = sub(images, opt, stacked, key)
    picked = np.flatnonzero(np.isfinite(np.asarray(m['teacher_loss'])))
    assert len(picked) == 1
    drawn.add(int(picked[0]))
    # The drawn teacher's loss is the one the whole-pool step computes for it (same jitter).
    np.testing.assert_allclose(m['teacher_loss'][picked], m_full['teacher_loss'][picked],
                               rtol=1e-5)
    moved = np.any(np.asarray(images) != before, axis=(1, 2, 3, 4))
    np.testing.assert_array_equal(np.flatnonzero(moved), layout.classes_of(int(picked[0])))
    mu, mu_before = opt[0].mu, opt_before[0].mu  # Adam moments of other classes stay too
    rest = ~moved
    np.testing.assert_array_equal(np.asarray(mu)[rest], mu_before[rest])
  assert len(drawn) > 1  # a fresh draw every step
