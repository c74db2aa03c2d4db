"""Distilling the pool's representation into the meta-learner, on the pseudo-image bank.

The pool read-out (`purer_jax.pool`) beats every meta-learner trained here, at about 11x its
meta-test cost. This puts the pool's representation into the learner, data-free: the target of
a bank image is what the pool reads out of it (every teacher's block, unit-normalised,
concatenated: `pool.represent`); the learner's penultimate features go through a learnt linear
map to the target's size, and the loss is 1 - cosine (FitNets-style regression, scale-free).
Training adds it, times `distil.weight`, to MAML's outer loss on `distil.batch` bank images per
meta-iteration (randomly flipped), so the bank, the meta-batch and the distillation share one
program.
"""
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from purer_jax import meta, pool


def targets(teacher_vars, x, *, models: tuple, layer: str):
  """The pool's representation of images x: the regression target (no gradient)."""
  return jax.lax.stop_gradient(
      pool.represent(pool.embed(teacher_vars, x, models=models), layer=layer))


def init_map(rng, in_dim: int, out_dim: int) -> dict:
  """The linear map from the learner's features to the target's size."""
  return {'kernel': jax.random.normal(rng, (in_dim, out_dim)) / jnp.sqrt(in_dim)}


def loss(params, proj: dict, x, target, *, model):
  """Mean 1 - cosine between the mapped learner features of x and their targets. The learner
  normalises with the batch's statistics, as MAML's tasks do."""
  f = model.apply({'params': params}, x, train=True, features=True)
  return jnp.mean(1.0 - jnp.sum(pool.unit(f @ proj['kernel']) * pool.unit(target), -1))


def sample_images(images, key, *, batch: int):
  """`batch` distinct bank images (all of them if the bank holds fewer; any layout: the leading
  axes flattened), each flipped left-right at random."""
  flat = images.reshape((-1,) + images.shape[-3:])
  batch = min(batch, flat.shape[0])
  k_pick, k_flip = jax.random.split(key)
  x = flat[jax.random.choice(k_pick, flat.shape[0], (batch,), replace=False)]
  flip = jax.random.bernoulli(k_flip, 0.5, (batch, 1, 1, 1))
  return jnp.where(flip, x[:, :, ::-1], x)


class Distiller(NamedTuple):
  """A run's distillation: its weight, batch and target layer, the teachers' modules and their
  variables (closed over by the compiled step, which JAX passes as inputs, not literals)."""
  weight: float
  batch: int
  layer: str
  models: tuple
  teacher_vars: list


def from_config(config, teachers) -> Optional[Distiller]:
  """config.distil's Distiller over the run's teachers, or None when its weight is 0."""
  d = config.distil
  if not d.weight:
    return None
  return Distiller(float(d.weight), int(d.batch), d.layer, tuple(t.model for t in teachers),
                   [jax.tree.map(jnp.asarray, t.variables) for t in teachers])


def init_state(distiller: Distiller, model, tx, rng) -> dict:
  """{'proj', 'opt'}: the linear map from `model`'s features to the target, and its optimiser's
  state (the outer optimiser's kind)."""
  x = jax.ShapeDtypeStruct((2, model.image_size, model.image_size, 3), jnp.float32)
  feat = jax.eval_shape(lambda x: model.init_with_output(
      jax.random.key(0), x, train=True, features=True)[0], x).shape[-1]
  out = jax.eval_shape(lambda x: targets(distiller.teacher_vars, x, models=distiller.models,
                                         layer=distiller.layer), x).shape[-1]
  proj = init_map(rng, feat, out)
  return {'proj': proj, 'opt': tx.init(proj)}


def outer_grads(params, state: dict, tasks, bank, key, *, learner, distiller: Distiller, tx):
  """MAML's outer loss on `tasks` plus distiller.weight x the distillation loss on a batch of
  `bank` images. Returns (meta loss, (per-task losses, accuracies)), the distillation loss,
  the gradient of the learner's params, and the distillation state after its step."""
  x = sample_images(bank, key, batch=distiller.batch)
  target = targets(distiller.teacher_vars, x, models=distiller.models, layer=distiller.layer)

  def total(p, proj):
    meta_loss, aux = meta.batch_loss(p, tasks, learner=learner)
    d = loss(p, proj, x, target, model=learner.model)
    return meta_loss + distiller.weight * d, (meta_loss, aux, d)
  (_, (meta_loss, aux, d)), (grads, g_proj) = jax.value_and_grad(
      total, argnums=(0, 1), has_aux=True)(params, state['proj'])
  updates, opt = tx.update(g_proj, state['opt'], state['proj'])
  return (meta_loss, aux), d, grads, {'proj': optax.apply_updates(state['proj'], updates),
                                      'opt': opt}
