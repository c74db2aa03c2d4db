"""Distilling the pool's representation into the learner (purer_jax/distil.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purer_jax import distil, models, pool


def test_targets_are_the_pool_representation_and_the_loss_learns_it():
  teachers = [models.create('conv4', k, 16) for k in (5, 4)]
  tvars = [models.init(m, jax.random.key(i)) for i, m in enumerate(teachers)]
  x = jax.random.normal(jax.random.key(2), (12, 16, 16, 3))
  target = distil.targets(tvars, x, models=tuple(teachers), layer='both')
  # Four unit blocks (features and logits of two teachers) concatenated.
  assert target.shape == (12, 2 * (32 + 5) - 1)
  np.testing.assert_allclose(jnp.sum(target ** 2, -1), 4.0, rtol=1e-5)
  np.testing.assert_allclose(target, pool.represent(pool.embed(tvars, x, models=tuple(teachers)),
                                                    layer='both'))
  learner = models.create('conv4', 5, 16)
  params = models.init(learner, jax.random.key(3))['params']
  proj = distil.init_map(jax.random.key(4), 32, target.shape[1])
  f = lambda p, q: distil.loss(p, q, x, target, model=learner)
  before = float(f(params, proj))
  assert 0.0 < before < 2.0
  for _ in range(20):
    gp, gq = jax.grad(f, argnums=(0, 1))(params, proj)
    params = jax.tree.map(lambda a, g: a - 0.5 * g, params, gp)
    proj = jax.tree.map(lambda a, g: a - 0.5 * g, proj, gq)
  assert float(f(params, proj)) < 0.8 * before


def test_sample_images_draws_distinct_bank_images_some_flipped():
  bank = jnp.arange(6 * 4 * 2 * 2 * 3, dtype=jnp.float32).reshape(6, 4, 2, 2, 3)
  x = distil.sample_images(bank, jax.random.key(0), batch=24)
  flat = np.asarray(bank.reshape(24, 2, 2, 3))
  rows = [next(i for i, b in enumerate(flat) if np.array_equal(b, a) or
               np.array_equal(b[:, ::-1], a)) for a in np.asarray(x)]
  assert sorted(rows) == list(range(24))  # every image once: drawn without replacement
  flipped = sum(not np.array_equal(flat[r], a) for r, a in zip(rows, np.asarray(x)))
  assert 0 < flipped < 24
  with pytest.raises(ValueError):
    distil.sample_images(bank, jax.random.key(0), batch=25)
