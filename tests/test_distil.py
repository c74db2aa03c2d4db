"""Distilling the pool's representation into the learner (purer_jax/distil.py)."""
import jax
import jax.numpy as jnp
import numpy as np

from purer_jax import distil, models, pool


def test_targets_are_the_pool_representation_and_the_loss_learns_it():
  teachers = [models.create('conv4', k, 16) for k in (5, 4)]
  tvars = [models.init(m, jax.random.key(i)) for i, m in enumerate(teachers)]
  x = jax.random.normal(jax.random.key(2), (12, 16, 16, 3))
  # Jitted: eager, each operation compiles on its own.
  target = jax.jit(lambda v, x: distil.targets(v, x, models=tuple(teachers), layer='both'))(
      tvars, x)
  # Four unit blocks (features and logits of two teachers) concatenated.
  assert target.shape == (12, 2 * (32 + 5) - 1)
  np.testing.assert_allclose(jnp.sum(target ** 2, -1), 4.0, rtol=1e-5)
  np.testing.assert_allclose(target, jax.jit(lambda v, x: pool.represent(
      pool.embed(v, x, models=tuple(teachers)), layer='both'))(tvars, x), rtol=1e-6, atol=1e-6)
  learner = models.create('conv4', 5, 16)
  params = models.init(learner, jax.random.key(3))['params']
  proj = distil.init_map(jax.random.key(4), 32, target.shape[1])
  f = jax.jit(lambda p, q: distil.loss(p, q, x, target, model=learner))

  @jax.jit  # one program for the 20 steps: eager, each would compile op by op
  def step(p, q):
    gp, gq = jax.grad(f, argnums=(0, 1))(p, q)
    return (jax.tree.map(lambda a, g: a - 0.5 * g, p, gp),
            jax.tree.map(lambda a, g: a - 0.5 * g, q, gq))

  before = float(f(params, proj))
  assert 0.0 < before < 2.0
  for _ in range(20):
    params, proj = step(params, proj)
  assert float(f(params, proj)) < 0.8 * before


def _pool(sizes=((5, 3), (4, 2))):
  """Fake teachers: per (classes, count), that many 16-px Conv4s, grouped in the bank by it."""
  import types
  from purer_jax import bank as bank_lib
  teachers = []
  for n, count in sizes:
    for _ in range(count):
      m = models.create('conv4', n, 16)
      teachers.append(types.SimpleNamespace(
          arch='conv4', num_classes=n, image_size=16, classes=list(range(n)), dataset='d',
          model=m, variables=models.init(m, jax.random.key(len(teachers)))))
  return teachers, bank_lib.make_layout(teachers, 2)


def test_a_draw_of_teachers_is_their_columns_of_the_whole_pools_target():
  from purer_jax import bank as bank_lib
  from purer_jax import config as config_lib
  teachers, layout = _pool()
  stacked = bank_lib.stack_teachers(teachers, layout)
  c = config_lib.build('ss', 'smoke')
  c.distil.weight, c.distil.layer = 1.0, 'both'
  for per_iter in (0, 5, 9):  # all of them, or more: no draw
    c.distil.per_iter = per_iter
    assert distil.from_config(c, teachers, layout=layout, stacked=stacked).draws == ()
  c.distil.per_iter = 2  # one of each group's (3 and 2 teachers)
  d = distil.from_config(c, teachers, layout=layout, stacked=stacked)
  assert [(g.k, g.columns.shape) for g in d.draws] == [(1, (3, 37)), (1, (2, 36))]
  x = jax.random.normal(jax.random.key(7), (6, 16, 16, 3))
  full = jax.jit(lambda v, x: distil.targets(v, x, models=d.models, layer='both'))(
      d.teacher_vars, x)
  drawn = jax.jit(lambda k: distil.drawn_targets(d.draws, x, k, layer='both'))
  seen = set()
  for i in range(8):
    target, columns = drawn(jax.random.key(i))
    assert target.shape == (6, 37 + 36)
    np.testing.assert_allclose(target, full[:, np.asarray(columns)], rtol=1e-5, atol=1e-6)
    seen.add(int(columns[0]) // 37)  # which teacher of the first group
  assert len(seen) > 1  # drawn, not fixed


def test_sample_images_draws_distinct_bank_images_some_flipped():
  bank = jnp.arange(6 * 4 * 2 * 2 * 3, dtype=jnp.float32).reshape(6, 4, 2, 2, 3)
  x = distil.sample_images(bank, jax.random.key(0), batch=24)
  flat = np.asarray(bank.reshape(24, 2, 2, 3))
  rows = [next(i for i, b in enumerate(flat) if np.array_equal(b, a) or
               np.array_equal(b[:, ::-1], a)) for a in np.asarray(x)]
  assert sorted(rows) == list(range(24))  # every image once: drawn without replacement
  flipped = sum(not np.array_equal(flat[r], a) for r, a in zip(rows, np.asarray(x)))
  assert 0 < flipped < 24
  assert distil.sample_images(bank, jax.random.key(0), batch=25).shape == x.shape  # all of them


def test_training_step_adds_the_distillation_and_leaves_the_other_streams(smoke_zoo,
                                                                           smoke_config):
  """With distil.weight > 0 the step learns the map and moves the learner differently; the bank,
  whose update comes first, is the same as without it."""
  import ml_collections
  from purer_jax import train, zoo
  runs = {}
  for weight in (0.0, 1.0):
    c = ml_collections.ConfigDict(smoke_config.to_dict())
    c.inversion.spc, c.meta.train_queries, c.distil.weight, c.distil.batch = 4, 3, weight, 8
    c.meta.meta_batch = 1  # one task: the outer loss's sum is what distillation adds to
    c.meta.second_order = False  # what distillation adds does not depend on it; compiles faster
    trainer = train.Trainer(c, zoo.load(smoke_zoo)[:1])  # 5 classes: one 5-way task
    state = trainer.init_state()
    assert ('distil' in state) == bool(weight)
    metrics = []
    for _ in range(3):
      state, m = trainer.step(state, trainer.teacher_vars, trainer.rng)
      metrics.append(jax.device_get(m))
    runs[weight] = state, metrics
  (plain, m0), (dist, m1) = runs[0.0], runs[1.0]
  assert 'distil/loss' not in m0[0]
  losses = [float(m['distil/loss']) for m in m1]
  assert all(0.0 < l < 2.0 for l in losses) and losses[-1] < losses[0]
  # The first step's bank update precedes the outer step: identical; after, the learners differ.
  assert float(m0[0]['inv/loss']) == float(m1[0]['inv/loss'])
  assert not np.allclose(plain['params']['conv0']['kernel'], dist['params']['conv0']['kernel'])


def test_a_step_distilling_a_draw_of_teachers_moves_only_their_blocks_of_the_map(smoke_zoo,
                                                                                 smoke_config):
  import ml_collections
  from purer_jax import train, zoo
  c = ml_collections.ConfigDict(smoke_config.to_dict())
  c.inversion.spc, c.meta.train_queries, c.distil.weight, c.distil.batch = 4, 3, 1.0, 8
  c.meta.meta_batch, c.meta.second_order, c.distil.per_iter = 1, False, 1
  trainer = train.Trainer(c, zoo.load(smoke_zoo))  # 3 teachers, one drawn per iteration
  state = trainer.init_state()
  width = trainer.distiller.draws[0].columns.shape[1]
  for _ in range(2):
    before = np.asarray(state['distil']['proj']['kernel'])
    state, m = trainer.step(state, trainer.teacher_vars, trainer.rng)
    moved = np.flatnonzero(np.any(np.asarray(state['distil']['proj']['kernel']) != before, 0))
    assert len(moved) == width and moved[0] % width == 0 and np.all(np.diff(moved) == 1)
    assert 0.0 < float(m['distil/loss']) < 2.0
