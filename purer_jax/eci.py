"""ECI - Episode Curriculum Inversion (docs/DESIGN.md §8): pseudo tasks from the bank, the plateau
switch I(Ω), and the adversarial term the inversion step adds while the switch is on.

Pseudo tasks mix teachers: N classes drawn from all pseudo classes of the bank, K support +
Q query images per class drawn without overlap from the class's `spc` images, optionally
augmented (`augment`). The switch is a small pytree updated by a pure function, so
the whole meta-iteration stays one program.
"""
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


def real_classes(layout) -> Optional[np.ndarray]:
  """(R, D) table: the pseudo classes of each real class (dataset, class id), padded with -1;
  None when no real class has two pseudo classes (disjoint pools), so tasks draw directly."""
  where = {}
  for p, real in enumerate(zip(layout.dataset, layout.class_id)):
    where.setdefault(real, []).append(p)
  if all(len(v) == 1 for v in where.values()):
    return None
  width = max(len(v) for v in where.values())
  return np.asarray([v + [-1] * (width - len(v)) for v in where.values()], np.int32)


def sample_task(images, key, *, ways: int, shots: int, queries: int,
                real: Optional[np.ndarray] = None) -> dict:
  """One pseudo task from bank `images` (P, spc, H, W, 3); labels 0..ways-1 in draw order.

  real: `real_classes(layout)`; with it, a task draws `ways` distinct real classes and one of
  each's pseudo classes, so it never holds two teachers' versions of one class (random pools).
  Differentiable in `images` (a gather): build it from the non-detached bank for ECI's
  adversarial term, from `lax.stop_gradient(images)` for the meta-batch.
  """
  num_pseudo, spc = images.shape[:2]
  distinct = num_pseudo if real is None else len(real)
  if ways > distinct:
    raise ValueError(f'{ways}-way pseudo tasks need {ways} pseudo classes of distinct real '
                     f'classes; the bank has {distinct}')
  if shots + queries > spc:
    raise ValueError(f'pseudo tasks need shots + queries = {shots + queries} images per class '
                     f'but the bank holds spc = {spc}: raise config.inversion.spc')
  kc, kr = jax.random.split(key)
  if real is None:
    classes = jax.random.choice(kc, num_pseudo, (ways,), replace=False)
  else:
    kc, kp = jax.random.split(kc)
    table = jnp.asarray(real)
    rows = jax.random.choice(kc, len(real), (ways,), replace=False)
    counts = jnp.sum(table[rows] >= 0, axis=1)
    pick = jnp.floor(jax.random.uniform(kp, (ways,)) * counts).astype(jnp.int32)
    classes = table[rows, pick]
  rows = jax.vmap(lambda k: jax.random.permutation(k, spc)[:shots + queries])(
      jax.random.split(kr, ways))
  x = images[classes[:, None], rows]                        # (ways, K + Q, H, W, 3)
  flat = lambda a: a.reshape((-1,) + a.shape[2:])
  label = lambda n: jnp.repeat(jnp.arange(ways, dtype=jnp.int32), n)
  return {'support_x': flat(x[:, :shots]), 'support_y': label(shots),
          'query_x': flat(x[:, shots:]), 'query_y': label(queries), 'classes': classes}


def sample_tasks(images, key, *, num: int, ways: int, shots: int, queries: int,
                 real: Optional[np.ndarray] = None) -> dict:
  """`num` independent pseudo tasks stacked on a leading axis (task i from fold_in(key, i))."""
  keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(num))
  return jax.vmap(lambda k: sample_task(images, k, ways=ways, shots=shots, queries=queries,
                                        real=real))(keys)


def adversarial_loss(images, params, key, *, learner, adv_scale: float, ways: int, shots: int,
                     queries: int, real: Optional[np.ndarray] = None):
  """−adv_scale · L_outer of one pseudo task built from the non-detached bank.

  The meta-learner is held fixed (this term only moves the bank); the learner's inner loop is
  second order so the gradient reaches support pixels through the adaptation.
  """
  task = sample_task(images, key, ways=ways, shots=shots, queries=queries, real=real)
  loss, _ = learner._replace(second_order=True).task_loss(jax.lax.stop_gradient(params), task)
  return -adv_scale * loss


@flax.struct.dataclass
class Switch:
  """I(Ω). `on`: this meta-iteration's inversion step adds the adversarial term."""
  on: jax.Array      # bool
  best: jax.Array    # best tracked signal since the last reset (-inf: none yet)
  stale: jax.Array   # consecutive tracked meta-iterations without improvement
  signal: jax.Array  # the tracked pseudo-query accuracy, smoothed (-inf: none yet)


def start_iteration(start: float, iterations: int) -> int:
  """The meta-iteration at which the curriculum starts: `start` (config.eci.start) of the run;
  `iterations` (never) at start 1."""
  return min(int(round(start * iterations)), int(iterations))


def switch_init(adv_start: int) -> Switch:
  return Switch(on=jnp.asarray(adv_start == 0), best=jnp.asarray(-jnp.inf, jnp.float32),
                stale=jnp.asarray(0, jnp.int32), signal=jnp.asarray(-jnp.inf, jnp.float32))


def switch_update(switch: Switch, it, acc, *, adv_start: int, patience: int,
                  ema: float = 0.0) -> Switch:
  """The switch for meta-iteration it + 1, given iteration it's mean pseudo-query accuracy.

  The signal is `acc` (ema 0, the original's) or its moving average with decay `ema`.
  On at it == adv_start. For it > adv_start, `patience` consecutive iterations without a new
  best signal turn it on for one iteration and reset the best. Otherwise off (on lasts one step).
  """
  signal = jnp.where(jnp.isfinite(switch.signal), ema * switch.signal + (1 - ema) * acc, acc)
  track = it > adv_start
  improved = signal > switch.best
  best = jnp.where(track & improved, signal, switch.best)
  stale = jnp.where(track, jnp.where(improved, 0, switch.stale + 1), switch.stale)
  fire = track & (stale >= patience)
  return Switch(on=fire | (it + 1 == adv_start),
                best=jnp.where(fire, -jnp.inf, best).astype(jnp.float32),
                stale=jnp.where(fire, 0, stale).astype(jnp.int32),
                signal=signal.astype(jnp.float32))
