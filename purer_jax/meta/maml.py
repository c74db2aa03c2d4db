"""MAML with transductive BatchNorm (docs/DESIGN.md §5-§6), as pure functions.

The model is applied with `train=True` and no `batch_stats`: every forward pass normalises
with its own batch's statistics (support and query separately), as the original does.
"""
import jax
import jax.numpy as jnp
import optax


def loss_and_acc(params, x, y, *, model):
  logits = model.apply({'params': params}, x, train=True)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return loss, jnp.mean(jnp.argmax(logits, -1) == y)


def adapt(params, x, y, *, model, inner_lr, steps, second_order=True):
  """`steps` SGD steps on the support; differentiable through the steps when second order."""
  for _ in range(steps):
    grads = jax.grad(lambda p: loss_and_acc(p, x, y, model=model)[0])(params)
    if not second_order:
      grads = jax.lax.stop_gradient(grads)
    params = jax.tree.map(lambda p, g: p - inner_lr * g, params, grads)
  return params


def task_loss(params, task, *, model, inner_lr, steps, second_order=True):
  """Query loss and accuracy after adapting on the support of one task."""
  fast = adapt(params, task['support_x'], task['support_y'], model=model, inner_lr=inner_lr,
               steps=steps, second_order=second_order)
  return loss_and_acc(fast, task['query_x'], task['query_y'], model=model)

