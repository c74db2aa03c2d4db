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
import jax
import jax.numpy as jnp

from purer_jax import pool


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
  """`batch` bank images (any layout: the leading axes flattened), each flipped left-right at
  random."""
  flat = images.reshape((-1,) + images.shape[-3:])
  k_pick, k_flip = jax.random.split(key)
  x = flat[jax.random.choice(k_pick, flat.shape[0], (batch,), replace=False)]
  flip = jax.random.bernoulli(k_flip, 0.5, (batch, 1, 1, 1))
  return jnp.where(flip, x[:, :, ::-1], x)
