"""The teacher pool's own read-out at meta-test: no training, no synthetic data.

Every teacher embeds a task's images (eval-mode BatchNorm, each at its own input size); each
teacher's block is normalised on its own, the blocks are concatenated, and a query takes the
class of the nearest support mean (SimpleShot applied to a pool). A `Variant` says which
representation (penultimate `features`, `logits`, or `both` as two blocks per teacher), whether a
block is `centred` on the task's support mean before its L2 norm, and the distance (`cosine` to
the normalised class means, or `euclidean`). It reads only what PURER has at meta-test: the
teachers and the task's support (queries are classified one by one). `choose_variant` picks it
on meta-val tasks; the meta-test never enters the choice.
"""
import itertools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from purer_jax import data as data_lib
from purer_jax import utils

LAYERS = ('features', 'logits', 'both')
NORMS = ('l2', 'centred')
METRICS = ('cosine', 'euclidean')
# Images per embedding program, in pixels at the largest input size: 640 images at 32 px, 92 at
# 84. 2,000 at 84 px made XLA ask for one 75 GB buffer for four ResNet-18s (2026-12-06).
EMBED_PIXELS = 640 * 32 * 32


class Variant(NamedTuple):
  layer: str = 'features'
  norm: str = 'l2'
  metric: str = 'cosine'


def variants(layers: Sequence[str] = LAYERS, norms: Sequence[str] = NORMS,
             metrics: Sequence[str] = METRICS) -> list:
  for name, given, allowed in (('layer', layers, LAYERS), ('norm', norms, NORMS),
                               ('metric', metrics, METRICS)):
    bad = [g for g in given if g not in allowed]
    if bad or not given:
      raise ValueError(f'pool {name}s must be a non-empty subset of {allowed}, got {given}')
  return [Variant(*v) for v in itertools.product(layers, norms, metrics)]


def embed(variables: Sequence[dict], x, *, models: tuple) -> list:
  """Per teacher, (features, logits) of the images x (NHWC, any size: each teacher sees them
  resized to its own)."""
  out = []
  for v, m in zip(variables, models):
    xi = x if x.shape[1] == m.image_size else jax.image.resize(
        x, (x.shape[0], m.image_size, m.image_size, x.shape[3]), 'bilinear')
    f = m.apply(v, xi, train=False, features=True)
    head = v['params']['head']
    out.append((f, f @ head['kernel'] + head['bias']))
  return out


def _blocks(embeds, layer: str) -> list:
  if layer == 'features':
    return [f for f, _ in embeds]
  if layer == 'logits':
    return [l for _, l in embeds]
  return [b for fl in embeds for b in fl]


def unit(a):
  return a / (jnp.linalg.norm(a, axis=-1, keepdims=True) + 1e-8)


def represent(embeds, *, layer: str, norm: str = 'l2', num_support: int = 0):
  """`embed`'s output as one vector per image: each block (teacher and representation) unit
  normalised, centred first on the mean of the first `num_support` rows if norm == 'centred',
  so that every block weighs the same; the blocks concatenated."""
  blocks = []
  for b in _blocks(embeds, layer):
    if norm == 'centred':
      b = b - b[:num_support].mean(0, keepdims=True)
    blocks.append(unit(b))
  return jnp.concatenate(blocks, -1)


def readout(embeds, support_y, *, ways: int, variant: Variant):
  """Query class scores (n_query, ways) from `embed`'s output over [support; query] rows."""
  ns = support_y.shape[0]
  z = represent(embeds, layer=variant.layer, norm=variant.norm, num_support=ns)
  onehot = jax.nn.one_hot(support_y, ways, dtype=z.dtype)
  means = (onehot.T @ z[:ns]) / onehot.sum(0)[:, None]
  q = z[ns:]
  if variant.metric == 'cosine':
    return q @ unit(means).T
  return 2 * q @ means.T - jnp.sum(means ** 2, -1)  # -|q - mean|^2 up to a per-query constant


def task_accuracy(variables, task, *, models: tuple, ways: int, variant: Variant):
  """Query accuracy of the pool read-out on one task: the program whose cost is the pool's."""
  x = jnp.concatenate([task['support_x'], task['query_x']])
  scores = readout(embed(variables, x, models=models), task['support_y'], ways=ways,
                   variant=variant)
  return jnp.mean(jnp.argmax(scores, -1) == task['query_y'])


def _all_variant_accs(embeds, support_y, query_y, *, ways, variant_list):
  return jnp.stack([jnp.mean(jnp.argmax(readout(embeds, support_y, ways=ways, variant=v), -1)
                             == query_y) for v in variant_list])


def accuracies(teachers, split, *, ways, shots, queries, num_tasks, seed, variant_list,
               batch: int = 25, image_size=None, progress=None) -> np.ndarray:
  """(num_tasks, len(variant_list)) query accuracies on `data.episodes`' tasks. An image's
  embedding does not depend on its task (eval-mode BatchNorm), so every image the tasks draw is
  embedded once by every teacher, and each task gathers its rows: 600 CIFAR-FS tasks draw 48,000
  images from a split of 12,000. Every variant reads the same embeddings."""
  models = tuple(t.model for t in teachers)
  variables = [t.variables for t in teachers]
  rows = data_lib.episode_rows(split, ways, shots, queries, seed, num=num_tasks)
  used, where = np.unique(rows, return_inverse=True)
  embed_fn = jax.jit(lambda v, x: embed(v, x, models=models))
  side = max([image_size or split.images.shape[1]] + [m.image_size for m in models])
  chunk = min(batch * rows.shape[1], len(used), max(1, EMBED_PIXELS // side ** 2))
  parts = []
  for start in range(0, len(used), chunk):
    part = used[start:start + chunk]  # the last one padded: one program for every chunk
    out = jax.block_until_ready(embed_fn(variables, data_lib.images_at(  # honest progress
        split, np.pad(part, (0, chunk - len(part)), mode='edge'), image_size)))
    parts.append(jax.tree.map(lambda a, n=len(part): a[:n], out))
    if progress:
      progress.update(round(num_tasks * min(start + chunk, len(used)) / len(used)))
  table = jax.tree.map(lambda *a: jnp.concatenate(a), *parts)
  where = where.reshape(rows.shape)
  support_y = np.repeat(np.arange(ways, dtype=np.int32), shots)
  query_y = np.repeat(np.arange(ways, dtype=np.int32), queries)
  score = jax.jit(jax.vmap(lambda e: _all_variant_accs(
      e, support_y, query_y, ways=ways, variant_list=tuple(variant_list))))
  return np.concatenate([np.asarray(score(jax.tree.map(lambda a: a[where[s:s + batch]], table)))
                         for s in range(0, num_tasks, batch)])


def choose_variant(teachers, val_splits, *, ways, shots, queries, num_tasks, seed,
                   variant_list, image_size=None, log=print, per_task=False) -> dict:
  """The variant with the best mean accuracy on meta-val tasks (`val_splits`: one meta-val
  split per dataset of the run, averaged). Returns {'layer', 'norm', 'metric', 'val_acc',
  'tasks', 'trials'}, and with per_task its accuracy on each task ('per_task'), to pair it."""
  accs = np.mean([accuracies(teachers, s, ways=ways, shots=shots, queries=queries,
                             num_tasks=num_tasks, seed=seed, variant_list=variant_list,
                             image_size=image_size) for s in val_splits], 0)
  means = accs.mean(0)
  trials = [dict(v._asdict(), val_acc=float(a)) for v, a in zip(variant_list, means)]
  for t in trials:
    log(f"  pool {t['layer']}/{t['norm']}/{t['metric']}: meta-val {t['val_acc']:.4f}")
  pick = int(np.argmax(means))  # first of equals: the grid's order
  extra = {'per_task': accs[:, pick].tolist()} if per_task else {}
  return dict(trials[pick], tasks=int(num_tasks), trials=trials, **extra)


def variant_of(choice: dict) -> Variant:
  return Variant(choice['layer'], choice['norm'], choice['metric'])


def task_gflop(teachers, *, ways, shots, queries, image_size, variant: Variant) -> float:
  """GFLOP of the pool's read-out of one task, from XLA's cost analysis of its program."""
  task = data_lib.task_spec(ways, shots, queries, image_size)
  models = tuple(t.model for t in teachers)
  fn = jax.jit(lambda v, t: task_accuracy(v, t, models=models, ways=ways, variant=variant))
  return utils.compiled_gflop(fn, [t.variables for t in teachers], task)

