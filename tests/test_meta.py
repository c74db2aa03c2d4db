"""Meta-learners: MAML's meta-gradient against finite differences, ProtoNet, ANIL, mapping."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purer_jax import config, data, meta, models
from purer_jax.meta import anil, maml, protonet


def _tiny_tasks(meta_train, num, ways=3, shots=2, queries=3, size=16, seed=0):
  eps = list(data.episodes(meta_train, ways, shots, queries, seed=seed, num=num,
                           image_size=size))
  tasks = data.stack(eps)
  tasks.pop('classes')
  return tasks


def _outer(learner, tasks):
  return lambda p: meta.batch_loss(p, tasks, learner=learner)[0]


@pytest.mark.slow  # compile-bound
def test_maml_meta_gradient_matches_finite_differences(meta_train):
  with jax.enable_x64(True):
    model = models.Conv4(num_classes=3, image_size=16, width=4)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                          models.init(model, jax.random.key(0))['params'])
    tasks = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) if a.dtype == np.float32 else a,
                         _tiny_tasks(meta_train, 1))
    # A large inner lr makes the second-order term big enough to tell apart from first order.
    learner = meta.Learner('maml', model, inner_lr=0.5, steps=2, second_order=True)
    outer = jax.jit(_outer(learner, tasks))
    grad = jax.jit(jax.grad(outer))(params)
    grad_fo = jax.jit(jax.grad(_outer(learner._replace(second_order=False), tasks)))(params)
    rng = np.random.default_rng(1)
    eps = 1e-7  # small: a random direction must not cross a ReLU or max-pool kink
    so_err, fo_err = [], []
    for _ in range(3):
      v = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), params)
      shift = lambda s: jax.tree.map(lambda p, d: p + s * eps * d, params, v)
      fd = (outer(shift(1.0)) - outer(shift(-1.0))) / (2 * eps)
      dot = lambda g: sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(v)))
      so_err.append(abs(float(dot(grad)) - float(fd)) / abs(float(fd)))
      fo_err.append(abs(float(dot(grad_fo)) - float(fd)) / abs(float(fd)))
  assert max(so_err) < 1e-5, so_err
  assert min(fo_err) > 1e-3, fo_err  # the check can tell second from first order


@pytest.mark.slow  # compile-bound
def test_strategies_agree(meta_train):
  model = models.Conv4(num_classes=3, image_size=16, width=4)
  params = models.init(model, jax.random.key(0))['params']
  tasks = _tiny_tasks(meta_train, 3)
  learner = meta.Learner('maml', model, inner_lr=0.1, steps=1)
  out = {s: jax.jit(lambda p, s=s: meta.batch_loss(p, tasks, learner=learner, strategy=s))(params)
         for s in meta.STRATEGIES}
  for s in ('map', 'vmap'):
    chex.assert_trees_all_close(out[s], out['loop'], rtol=2e-4, atol=1e-5)
  # The sum of the per-task losses, each equal to task_loss on its own.
  total, (losses, accs) = out['loop']
  one = jax.jit(lambda p, t: maml.task_loss(p, t, model=model, inner_lr=0.1, steps=1))(
      params, jax.tree.map(lambda a: a[1], tasks))
  np.testing.assert_allclose(losses[1], one[0], rtol=1e-5)
  np.testing.assert_allclose(total, losses.sum(), rtol=1e-6)
  with pytest.raises(ValueError, match='strategy'):
    meta.batch_loss(params, tasks, learner=learner, strategy='pmap')


def test_protonet_is_negative_squared_distance_to_prototypes(meta_train):
  model = models.Conv4(num_classes=3, image_size=16, width=4)
  params = models.init(model, jax.random.key(0))['params']
  task = jax.tree.map(lambda a: a[0], _tiny_tasks(meta_train, 1, shots=2))
  f = np.asarray(jax.jit(lambda p, x: model.apply({'params': p}, x, train=True, features=True))(
      params, np.concatenate([task['support_x'], task['query_x']])), np.float64)
  fs, fq = f[:6], f[6:]
  protos = np.stack([fs[task['support_y'] == c].mean(0) for c in range(3)])
  want = -((fq[:, None] - protos[None]) ** 2).sum(-1)
  got = jax.jit(lambda p, t: protonet.logits(p, t, model=model))(params, task)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
  loss, acc = meta.Learner('protonet', model).task_loss(params, task)
  assert np.isfinite(loss) and 0 <= acc <= 1


def test_anil_adapts_only_the_head(meta_train):
  model = models.Conv4(num_classes=3, image_size=16, width=4)
  params = models.init(model, jax.random.key(0))['params']
  task = jax.tree.map(lambda a: a[0], _tiny_tasks(meta_train, 1))
  learner = meta.Learner('anil', model, inner_lr=0.5, steps=5)
  # Zero steps: plain query loss of the meta-parameters (jitted: one compile, not one per op).
  zero = jax.jit(lambda p: anil.task_loss(p, task, model=model, inner_lr=0.5, steps=0))(params)
  plain = jax.jit(lambda p: maml.loss_and_acc(p, task['query_x'], task['query_y'],
                                              model=model))(params)
  np.testing.assert_allclose(zero[0], plain[0], rtol=1e-5)
  # Inner steps lower the support loss of the head.
  @jax.jit
  def support_losses(p):
    f = model.apply({'params': p}, task['support_x'], train=True, features=True)
    head = anil.adapt_head(p['head'], f, task['support_y'], inner_lr=0.5, steps=5)
    return (anil._loss_acc(p['head'], f, task['support_y'])[0],
            anil._loss_acc(head, f, task['support_y'])[0], head)
  before, after, head = support_losses(params)
  assert after < before
  # `adapt` (ICFIL's view of ANIL): that head, the backbone untouched.
  adapted = jax.jit(lambda p: learner.adapt(p, task['support_x'], task['support_y']))(params)
  chex.assert_trees_all_close(adapted, {**params, 'head': head}, rtol=1e-6)
  # The meta-gradient reaches the backbone (through the features), second order in the head.
  g = jax.jit(jax.grad(lambda p: learner.task_loss(p, task)[0]))(params)
  assert float(jnp.abs(g['conv0']['kernel']).sum()) > 0
  with pytest.raises(ValueError, match='head'):
    anil.task_loss({k: v for k, v in params.items() if k != 'head'}, task, model=model,
                   inner_lr=0.5, steps=1)


def test_from_config_and_evaluate(meta_train, smoke_config):
  model = models.Conv4(num_classes=3, image_size=16, width=4)
  params = models.init(model, jax.random.key(0))['params']
  tasks = _tiny_tasks(meta_train, 3)
  train = meta.from_config(smoke_config.meta, model)
  test = meta.from_config(smoke_config.meta, model, test=True)
  assert train.second_order and not test.second_order
  assert test.steps == smoke_config.meta.test_inner_steps
  meta.task_accuracy.clear_cache()
  accs = meta.evaluate_tasks(params, tasks, learner=test)
  # One task at a time, each through one compiled program (eager, it compiles op by op).
  one = jax.jit(lambda p, t: maml.task_loss(p, t, model=model, inner_lr=test.inner_lr,
                                            steps=test.steps, second_order=False)[1])
  want = [one(params, jax.tree.map(lambda a, i=i: a[i], tasks)) for i in range(3)]
  np.testing.assert_allclose(accs, want)
  assert meta.task_accuracy._cache_size() == 1  # one program for every task
  # PURER-Plus learners from their config variants, each scored with its own adaptation.
  a_cfg = config.build('ss', 'smoke,anil')
  a_train, a_test = (meta.from_config(a_cfg.meta, model, test=t) for t in (False, True))
  assert (a_train.algo, a_train.steps, a_test.steps) == ('anil', 5, 10)
  proto = meta.from_config(config.build('ss', 'protonet').meta, model, test=True)
  one = jax.jit(lambda p, t: protonet.task_loss(p, t, model=model)[1])
  want = [one(params, jax.tree.map(lambda a, i=i: a[i], tasks)) for i in range(3)]
  np.testing.assert_allclose(meta.evaluate_tasks(params, tasks, learner=proto), want)
  bad = smoke_config.copy_and_resolve_references()
  bad.meta.algo = 'reptile'
  with pytest.raises(ValueError, match='config.meta.algo'):
    meta.from_config(bad.meta, model)


def test_accuracy_at_several_step_counts_is_each_counts_own_adaptation(meta_train):
  # The tuned column's grid adapts once per lr and reads the query accuracy after each count;
  # each reading must be what adapting that many steps from scratch gives.
  model = models.Conv4(num_classes=3, image_size=16, width=4)
  params = models.init(model, jax.random.key(0))['params']
  tasks = _tiny_tasks(meta_train, 2)
  counts = (0, 1, 3)
  for algo in ('maml', 'anil', 'protonet'):
    learner = meta.Learner(algo, model, inner_lr=0.5, steps=3, second_order=False)
    got = np.asarray(meta.evaluate_tasks(params, tasks, learner=learner, at_steps=counts))
    assert got.shape == (2, 3)
    for j, k in enumerate(counts):
      want = meta.evaluate_tasks(params, tasks, learner=learner._replace(steps=k))
      np.testing.assert_allclose(got[:, j], want, atol=1e-6, err_msg=f'{algo}, {k} steps')
    if algo == 'maml':  # the large lr moves the support fit: the counts differ
      assert len({tuple(got[:, j]) for j in range(3)}) > 1


def test_test_time_lr_overrides_inner_lr_at_test_only():
  model = models.create('conv4', 5, 32)
  c = config.build('ss', '').meta
  c.test_inner_lr, c.test_inner_steps = 0.05, 10
  assert meta.from_config(c, model).inner_lr == pytest.approx(0.01)
  test = meta.from_config(c, model, test=True)
  assert test.inner_lr == pytest.approx(0.05) and test.steps == 10 and not test.second_order
  c.test_inner_lr = 0.0
  assert meta.from_config(c, model, test=True).inner_lr == pytest.approx(0.01)
