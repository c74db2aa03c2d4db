"""Distilling the pool's representation into the meta-learner, on the pseudo-image bank.

The pool read-out (`purer_jax.pool`) beats every meta-learner trained here, at about 11x its
meta-test cost. This puts the pool's representation into the learner, data-free: the target of
a bank image is what the pool reads out of it (every teacher's block, unit-normalised,
concatenated: `pool.represent`); the learner's penultimate features go through a learnt linear
map to the target's size, and the loss is 1 - cosine (FitNets-style regression, scale-free).
Training adds it, times `distil.weight`, to MAML's outer loss on `distil.batch` bank images per
meta-iteration (randomly flipped), so the bank, the meta-batch and the distillation share one
program. With `distil.per_iter`, each iteration's target is the blocks of that many teachers
drawn at random (split over the pool's groups as `teachers.per_iter` splits the inversion's):
the distilled images go through those teachers only, the most expensive part of an 84-px
iteration (benchmarks/step_parts.py), and only their blocks of the map learn.
"""
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from purer_jax import bank as bank_lib
from purer_jax import inversion, meta, pool


def targets(teacher_vars, x, *, models: tuple, layer: str):
  """The pool's representation of images x: the regression target (no gradient)."""
  return jax.lax.stop_gradient(
      pool.represent(pool.embed(teacher_vars, x, models=models), layer=layer))


def init_map(rng, in_dim: int, out_dim: int) -> dict:
  """The linear map from the learner's features to the target's size."""
  return {'kernel': jax.random.normal(rng, (in_dim, out_dim)) / jnp.sqrt(in_dim)}


class Draw(NamedTuple):
  """One group's part in a per-iteration draw of teachers: the members' model and stacked
  variables, each member's columns in the whole pool's target (members x width), and how many
  of them an iteration draws."""
  model: Any
  variables: dict
  columns: np.ndarray
  k: int


def drawn_targets(draws: tuple, x, key, *, layer: str):
  """(target, columns): the representation of x by `k` teachers drawn from each group (its
  blocks in draw order), and where those blocks sit in the whole pool's target."""
  embeds, columns = [], []
  for i, d in enumerate(draws):
    pos = jax.random.choice(jax.random.fold_in(key, i), d.columns.shape[0], (d.k,),
                            replace=False)
    for j in range(d.k):
      v = jax.tree.map(lambda a, j=j: a[pos[j]], d.variables)
      embeds += pool.embed([v], x, models=(d.model,))
    columns.append(jnp.asarray(d.columns)[pos].reshape(-1))
  return (jax.lax.stop_gradient(pool.represent(embeds, layer=layer)),
          jnp.concatenate(columns))


def loss(params, proj: dict, x, target, *, model, columns=None):
  """Mean 1 - cosine between the mapped learner features of x and their targets (whose
  `columns` of the map they are, when the target is a draw of teachers). The learner
  normalises with the batch's statistics, as MAML's tasks do."""
  f = model.apply({'params': params}, x, train=True, features=True)
  kernel = proj['kernel'] if columns is None else proj['kernel'][:, columns]
  return jnp.mean(1.0 - jnp.sum(pool.unit(f @ kernel) * pool.unit(target), -1))


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
  variables (closed over by the compiled step, which JAX passes as inputs, not literals), and
  per group a `Draw` when each iteration distils a draw of teachers (empty: all of them)."""
  weight: float
  batch: int
  layer: str
  models: tuple
  teacher_vars: list
  draws: tuple = ()


def from_config(config, teachers, *, layout: bank_lib.Layout, stacked: tuple
                ) -> Optional[Distiller]:
  """config.distil's Distiller over the run's teachers (laid out in the bank as `layout`, their
  variables stacked per group as `stacked`, `bank.stack_teachers`), or None when its weight is
  0."""
  d = config.distil
  if not d.weight:
    return None
  models = tuple(t.model for t in teachers)
  variables = [jax.tree.map(jnp.asarray, t.variables) for t in teachers]
  share = inversion.per_group(layout, int(d.per_iter))
  draws = ()
  if share != tuple(g.size for g in layout.groups):
    widths = [jax.eval_shape(lambda v, m=m: targets(
        [v], jnp.zeros((1, m.image_size, m.image_size, 3)), models=(m,), layer=d.layer),
        v).shape[-1] for v, m in zip(variables, models)]
    start = np.cumsum([0] + widths)
    draws = tuple(Draw(models[g.members[0]], v,
                       np.stack([np.arange(start[i], start[i + 1]) for i in g.members]), k)
                  for g, v, k in zip(layout.groups, stacked, share))
  return Distiller(float(d.weight), int(d.batch), d.layer, models, variables, draws)


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
  columns = None
  if distiller.draws:  # a key of its own: the images are those of a run distilling every teacher
    target, columns = drawn_targets(distiller.draws, x, jax.random.fold_in(key, 1),
                                    layer=distiller.layer)
  else:
    target = targets(distiller.teacher_vars, x, models=distiller.models, layer=distiller.layer)

  def total(p, proj):
    meta_loss, aux = meta.batch_loss(p, tasks, learner=learner)
    d = loss(p, proj, x, target, model=learner.model, columns=columns)
    return meta_loss + distiller.weight * d, (meta_loss, aux, d)
  (_, (meta_loss, aux, d)), (grads, g_proj) = jax.value_and_grad(
      total, argnums=(0, 1), has_aux=True)(params, state['proj'])
  updates, opt = tx.update(g_proj, state['opt'], state['proj'])
  new = {'proj': optax.apply_updates(state['proj'], updates), 'opt': opt}
  if columns is not None:  # the blocks of teachers not drawn keep their map and its moments
    drawn = jnp.zeros(state['proj']['kernel'].shape[-1], bool).at[columns].set(True)
    shape = state['proj']['kernel'].shape
    new = jax.tree.map(lambda a, b: jnp.where(drawn, a, b) if a.shape == shape else a, new,
                       {'proj': state['proj'], 'opt': state['opt']})
  return (meta_loss, aux), d, grads, new
