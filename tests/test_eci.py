"""ECI: the plateau switch I(Ω), pseudo-task sampling from the bank, the adversarial term."""
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purer_jax import augment, eci, meta, models


def _run_switch(accs, adv_start, patience, jit=False, ema=0.0):
  update = lambda s, it, a: eci.switch_update(s, it, a, adv_start=adv_start, patience=patience,
                                              ema=ema)
  update = jax.jit(update) if jit else update
  s, ons = eci.switch_init(adv_start), []
  for it, a in enumerate(accs):
    ons.append(bool(s.on))
    s = update(s, it, jnp.float32(a))
  return [i for i, on in enumerate(ons) if on]


def test_switch_on_at_adv_start_then_off():
  # Flat accuracy before adv_start never triggers it: tracking starts after adv_start.
  assert _run_switch([0.5] * 6, adv_start=3, patience=2)[:1] == [3]
  assert _run_switch([0.5] * 3, adv_start=0, patience=2) == [0]
  assert _run_switch([0.5] * 5, adv_start=10, patience=1) == []


@pytest.mark.parametrize('jit', [False, True])
def test_switch_fires_after_plateau_and_resets_best(jit):
  accs = [.1, .2, .3, .4,          # it 0-3: it 3 == adv_start (on), no tracking up to 3
          .5,                      # it 4: first tracked value, best .5
          .5, .4,                  # it 5, 6: no improvement x2 -> on at it 7, best reset
          .3,                      # it 7: lower than the old best, but the best was reset
          .35, .2, .2,             # it 8 improves; 9, 10 do not -> on at 11
          .9, .95, .99, .999]      # improving: stays off
  assert _run_switch(accs, adv_start=3, patience=2, jit=jit) == [3, 7, 11]
  # Without the reset, it 7 (.3 < .5) would count as a miss and fire at it 9 instead.
  assert _run_switch(accs, adv_start=3, patience=3, jit=jit) == [3, 8]


def test_switch_state_is_a_pytree():
  s = eci.switch_update(eci.switch_init(0), 1, jnp.float32(0.7), adv_start=0, patience=6)
  leaves = jax.tree.leaves(s)
  assert len(leaves) == 4
  assert not bool(s.on) and float(s.best) == pytest.approx(0.7) and int(s.stale) == 0


def test_smoothed_switch_ignores_noise_but_sees_a_plateau():
  # A rising trend plus +-0.1 alternating noise: the raw signal misses a new best every other
  # step and, with patience 2, fires on noise; its moving average rises steadily.
  rng = np.random.default_rng(0)
  rising = 0.3 + 0.002 * np.arange(300) + 0.1 * (rng.random(300) - 0.5)
  raw = _run_switch(rising, adv_start=0, patience=6)
  smooth = _run_switch(rising, adv_start=0, patience=6, ema=0.9)
  assert len(raw) >= 15 and len(smooth) <= 2, (raw, smooth)
  # On a true plateau the smoothed signal still fires, every few `patience` periods.
  flat = np.full(200, 0.6) + 0.1 * (rng.random(200) - 0.5)
  fired = _run_switch(flat, adv_start=0, patience=6, ema=0.9)
  assert len(fired) >= 5, fired
  # ema 0 is exactly the original's raw tracker.
  assert _run_switch(rising, adv_start=0, patience=6, ema=0.0) == raw


def test_augment_tasks_keeps_shapes_and_labels():
  # Jitted: eager, each operation compiles on its own.
  tasks = jax.jit(functools.partial(eci.sample_tasks, num=2, ways=3, shots=2, queries=3))(
      _bank(), jax.random.key(0))
  out = jax.jit(functools.partial(augment.augment_tasks, flip=True, shift=4))(
      tasks, jax.random.key(1))
  for k in tasks:
    assert out[k].shape == tasks[k].shape
  np.testing.assert_array_equal(out['query_y'], tasks['query_y'])


def _bank(num_pseudo=6, spc=5, size=16):
  # Pixel value p * 100 + j identifies pseudo class p, image j.
  ids = np.arange(num_pseudo)[:, None] * 100 + np.arange(spc)[None]
  return jnp.asarray(np.broadcast_to(ids[:, :, None, None, None], (num_pseudo, spc, size, size, 3)),
                     jnp.float32)


def test_sample_task_layout():
  images = _bank()
  tasks = jax.jit(lambda k: eci.sample_tasks(images, k, num=8, ways=3, shots=2, queries=3))(
      jax.random.key(0))
  assert tasks['support_x'].shape == (8, 6, 16, 16, 3)
  assert tasks['query_x'].shape == (8, 9, 16, 16, 3)
  np.testing.assert_array_equal(tasks['support_y'][0], [0, 0, 1, 1, 2, 2])
  np.testing.assert_array_equal(tasks['query_y'][0], [0, 0, 0, 1, 1, 1, 2, 2, 2])
  for t in range(8):
    classes = np.asarray(tasks['classes'][t])
    assert len(set(classes.tolist())) == 3
    s_ids = np.asarray(tasks['support_x'][t, :, 0, 0, 0]).astype(int)
    q_ids = np.asarray(tasks['query_x'][t, :, 0, 0, 0]).astype(int)
    np.testing.assert_array_equal(s_ids // 100, classes[tasks['support_y'][t]])
    np.testing.assert_array_equal(q_ids // 100, classes[tasks['query_y'][t]])
    assert not set(s_ids) & set(q_ids)          # support and query do not overlap
    assert len(set(q_ids)) == len(q_ids)
  # Tasks differ from each other (independent keys), and the same key gives the same task.
  assert len({tuple(np.asarray(c)) for c in tasks['classes']}) > 1
  again = eci.sample_tasks(images, jax.random.key(0), num=8, ways=3, shots=2, queries=3)
  np.testing.assert_array_equal(again['classes'], tasks['classes'])


def test_sample_task_errors():
  with pytest.raises(ValueError, match='config.inversion.spc'):
    eci.sample_task(_bank(spc=4), jax.random.key(0), ways=3, shots=2, queries=3)
  with pytest.raises(ValueError, match='pseudo classes'):
    eci.sample_task(_bank(num_pseudo=2), jax.random.key(0), ways=3, shots=1, queries=1)


def test_adversarial_gradient_reaches_support_and_query_pixels():
  model = models.Conv4(num_classes=3, image_size=16, width=4)
  params = models.init(model, jax.random.key(0))['params']
  images = jax.random.normal(jax.random.key(1), (6, 5, 16, 16, 3))
  key = jax.random.key(2)
  kw = dict(ways=3, shots=2, queries=3)
  learner = meta.Learner('maml', model, inner_lr=0.1, steps=1, second_order=False)
  adv = lambda x: eci.adversarial_loss(x, params, key, learner=learner, adv_scale=10.0, **kw)
  value, grad = jax.jit(jax.value_and_grad(adv))(images)
  loss, _ = jax.jit(learner.task_loss)(params, eci.sample_task(images, key, **kw))
  np.testing.assert_allclose(value, -10.0 * loss, rtol=1e-5)
  g = np.asarray(jnp.abs(grad).sum(axis=(2, 3, 4)))   # per (class, image)
  ids = lambda x: {(int(v) // 100, int(v) % 100) for v in np.asarray(x[:, 0, 0, 0])}
  idx = eci.sample_task(_bank(), key, **kw)
  support, query = ids(idx['support_x']), ids(idx['query_x'])
  # Second order even though the learner was first order: support pixels get a gradient
  # only through the inner loop.
  assert all(g[p, j] > 0 for p, j in support | query)
  unused = [(p, j) for p in range(6) for j in range(5) if (p, j) not in support | query]
  assert all(g[p, j] == 0 for p, j in unused)


def test_tasks_of_a_random_pool_hold_distinct_real_classes():
  # 12 pseudo classes over 5 real classes: class 0 has 4 versions, class 1 three, ...
  class_id = (0, 1, 2, 0, 1, 3, 0, 4, 1, 0, 2, 3)
  layout = types.SimpleNamespace(class_id=class_id, dataset=('cifar_fs',) * 12)
  real = eci.real_classes(layout)
  assert sorted(sorted(int(p) for p in row if p >= 0) for row in real) == [
      [0, 3, 6, 9], [1, 4, 8], [2, 10], [5, 11], [7]]
  images = _bank(num_pseudo=12, spc=4)
  tasks = jax.jit(lambda k: eci.sample_tasks(images, k, num=300, ways=5, shots=1, queries=1,
                                             real=real))(jax.random.key(0))
  ids = np.asarray(class_id)[np.asarray(tasks['classes'])]
  assert all(len(set(row)) == 5 for row in ids)
  # Every pseudo version of class 0 gets drawn, and pixels follow the drawn pseudo class.
  assert set(np.asarray(tasks['classes'])[ids == 0]) == {0, 3, 6, 9}
  np.testing.assert_array_equal(np.asarray(tasks['support_x'])[:, :, 0, 0, 0] // 100,
                                np.asarray(tasks['classes']))
  with pytest.raises(ValueError, match='6 pseudo classes of distinct real classes; the bank has 5'):
    eci.sample_task(images, jax.random.key(0), ways=6, shots=1, queries=1, real=real)
  # A disjoint pool needs no table: tasks are drawn as before.
  assert eci.real_classes(types.SimpleNamespace(class_id=tuple(range(12)),
                                                dataset=('cifar_fs',) * 12)) is None


def test_start_is_a_fraction_of_the_run():
  # The paper's iteration 4,000 of 60,000 is the same point of a 1,500-iteration run.
  assert eci.start_iteration(4000 / 60000, 60000) == 4000
  assert eci.start_iteration(4000 / 60000, 1500) == 100
  assert eci.start_iteration(1.0, 1000) == 1000  # never: the last iteration is 999
  assert eci.start_iteration(0.0, 1000) == 0
