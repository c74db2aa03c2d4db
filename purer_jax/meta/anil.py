"""ANIL (PURER-Plus): MAML that adapts only the linear head on frozen backbone features.

The backbone runs once per set (support, query; transductive BatchNorm); the inner loop
then touches only the head, so many inner steps (5 train, 10 test) stay cheap.
"""
import jax
import jax.numpy as jnp
import optax


def _head(head, f):
  return f @ head['kernel'] + head['bias']


def _loss_acc(head, f, y):
  out = _head(head, f)
  return (optax.softmax_cross_entropy_with_integer_labels(out, y).mean(),
          jnp.mean(jnp.argmax(out, -1) == y))


def adapt_head(head, f, y, *, inner_lr, steps, second_order=True):
  for _ in range(steps):
    grads = jax.grad(lambda h: _loss_acc(h, f, y)[0])(head)
    if not second_order:
      grads = jax.lax.stop_gradient(grads)
    head = jax.tree.map(lambda p, g: p - inner_lr * g, head, grads)
  return head


def _check(params, model):
  if 'head' not in params:
    raise ValueError(f'ANIL adapts the Dense `head`; {type(model).__name__} params have none')


def adapt(params, x, y, *, model, inner_lr, steps, second_order=True):
  """`params` with the head adapted on the support (x, y); the backbone unchanged."""
  _check(params, model)
  f = model.apply({'params': params}, x, train=True, features=True)
  return {**params, 'head': adapt_head(params['head'], f, y, inner_lr=inner_lr, steps=steps,
                                       second_order=second_order)}


def task_loss(params, task, *, model, inner_lr, steps, second_order=True):
  _check(params, model)
  feats = lambda x: model.apply({'params': params}, x, train=True, features=True)
  head = adapt_head(params['head'], feats(task['support_x']), task['support_y'],
                    inner_lr=inner_lr, steps=steps, second_order=second_order)
  return _loss_acc(head, feats(task['query_x']), task['query_y'])
