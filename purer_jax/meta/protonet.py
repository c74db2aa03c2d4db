"""ProtoNet (PURER-Plus) on the backbone's flattened features, squared Euclidean distance.

Support and query go through the backbone in one batch (batch-statistic BatchNorm over the
whole episode, as ProtoNet implementations do). Labels are 0..N-1; N is the model's head size.
"""
import jax
import jax.numpy as jnp
import optax


def logits(params, task, *, model):
  ns = task['support_x'].shape[0]
  f = model.apply({'params': params}, jnp.concatenate([task['support_x'], task['query_x']]),
                  train=True, features=True)
  onehot = jax.nn.one_hot(task['support_y'], model.num_classes, dtype=f.dtype)
  protos = (onehot.T @ f[:ns]) / jnp.maximum(onehot.sum(0), 1.0)[:, None]
  q = f[ns:]
  # ||q - p||^2 expanded: one matmul instead of an (Q, N, D) difference tensor.
  return -(jnp.sum(q * q, -1, keepdims=True) - 2 * q @ protos.T + jnp.sum(protos * protos, -1))


def task_loss(params, task, *, model):
  out = logits(params, task, model=model)
  y = task['query_y']
  return (optax.softmax_cross_entropy_with_integer_labels(out, y).mean(),
          jnp.mean(jnp.argmax(out, -1) == y))
