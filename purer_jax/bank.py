"""The memory bank of pseudo images (docs/DESIGN.md §4) and how it maps onto the teacher pool.

The bank is one array `images` of shape (P, spc, H, W, 3) in normalised pixel space: P pseudo
classes with `spc` images each. Every pseudo class belongs to exactly one teacher (`owner`,
a position in the teacher list) as one of its classes (`label`, its local label). Pseudo
classes are ordered group by group (teachers that share arch, num_classes and image_size),
teacher by teacher, label by label, so each group's slice of the bank is contiguous and the
inversion step slices it statically. For the disjoint pool (13 Conv4 teachers over 64
classes) pseudo class p is meta-train class p.
"""
import dataclasses
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from purer_jax import models


@dataclasses.dataclass(frozen=True)
class Group:
  """Teachers that share a model, evaluated together as one stack."""
  arch: str
  num_classes: int
  image_size: int
  members: Tuple[int, ...]   # positions in the teacher list, ascending
  start: int                 # first pseudo class of the group in the bank

  @property
  def size(self) -> int:
    return len(self.members)

  @property
  def num_pseudo(self) -> int:
    return self.size * self.num_classes

  @property
  def model(self):
    return models.create(self.arch, self.num_classes, self.image_size)


@dataclasses.dataclass(frozen=True)
class Layout:
  """Static structure of a bank: hashable, so jitted code may close over it."""
  spc: int
  image_size: int
  groups: Tuple[Group, ...]
  owner: Tuple[int, ...]       # per pseudo class: position of its teacher in the teacher list
  label: Tuple[int, ...]       # per pseudo class: the teacher's local label
  class_id: Tuple[int, ...]    # per pseudo class: the dataset class (teacher.classes[label])
  dataset: Tuple[str, ...]     # per pseudo class: the teacher's dataset

  @property
  def num_pseudo(self) -> int:
    return len(self.owner)

  @property
  def num_teachers(self) -> int:
    return sum(g.size for g in self.groups)

  @property
  def shape(self) -> tuple:
    return (self.num_pseudo, self.spc, self.image_size, self.image_size, 3)

  def classes_of(self, teacher: int) -> np.ndarray:
    """Pseudo classes owned by teacher position `teacher`, in local-label order."""
    return np.flatnonzero(np.asarray(self.owner) == teacher)


def make_layout(teachers: Sequence, spc: int, image_size: int = 0) -> Layout:
  """The bank layout for `teachers` (zoo.Teacher-like: arch, num_classes, image_size, classes).

  image_size: the bank's image size; 0 takes the teachers' common size (MH pools, whose
  teachers differ, must name it: the meta-learner's size, e.g. 84).
  """
  if not teachers:
    raise ValueError('the teacher pool is empty: load a zoo with zoo.load(workdir) first')
  if int(spc) < 1:
    raise ValueError(f'spc (images per pseudo class) must be >= 1, got {spc}')
  sizes = sorted({int(t.image_size) for t in teachers})
  if not image_size:
    if len(sizes) > 1:
      raise ValueError(f'teachers have different input sizes {sizes}: pass the bank image_size '
                       '(the meta-learner\'s, e.g. 84); slices are resized per teacher')
    image_size = sizes[0]
  keys = {}
  for i, t in enumerate(teachers):
    keys.setdefault((t.arch, int(t.num_classes), int(t.image_size)), []).append(i)
  groups, owner, label, class_id, dataset = [], [], [], [], []
  for (arch, n, size), members in keys.items():
    groups.append(Group(arch, n, size, tuple(members), len(owner)))
    for i in members:
      classes = list(getattr(teachers[i], 'classes', None) or range(n))
      owner += [i] * n
      label += list(range(n))
      class_id += [int(c) for c in classes]
      dataset += [str(getattr(teachers[i], 'dataset', ''))] * n
  return Layout(int(spc), int(image_size), tuple(groups), tuple(owner), tuple(label),
                tuple(class_id), tuple(dataset))


def init(layout: Layout, rng) -> jax.Array:
  """A fresh bank: N(0, 1) pixels in normalised space, shape `layout.shape`."""
  return jax.random.normal(rng, layout.shape, jnp.float32)


def stack_teachers(teachers: Sequence, layout: Layout) -> tuple:
  """Per group, the members' {'params', 'batch_stats'} stacked on a new leading axis."""
  out = []
  for g in layout.groups:
    vs = [teachers[i].variables for i in g.members]
    if any(v is None for v in vs):
      raise ValueError('teachers without variables: load the zoo with with_variables=True')
    vs = [{k: v[k] for k in ('params', 'batch_stats')} for v in vs]
    out.append(jax.tree.map(lambda *a: jnp.stack([jnp.asarray(x) for x in a]), *vs))
  return tuple(out)


def group_slice(images: jax.Array, group: Group) -> jax.Array:
  """The group's images as (T, spc * n, H, W, 3): teacher t's batch with its classes
  interleaved (row s * n + c has local label c), as the original orders them."""
  spc = images.shape[1]
  x = images[group.start:group.start + group.num_pseudo]
  x = x.reshape((group.size, group.num_classes, spc) + x.shape[2:])
  return x.swapaxes(1, 2).reshape((group.size, spc * group.num_classes) + x.shape[3:])


def as_seen(images: jax.Array, layout: Layout) -> jax.Array:
  """The bank as the meta-learner sees it when each teacher's classes stay at the teacher's
  size: a pseudo class of a teacher with smaller inputs (MH's 32-px CIFAR-FS teachers in an
  84-px bank) is resized to that size and back. The teacher constrains only what survives its
  downsample, and real images of its dataset reach the meta-learner as upsamples from that
  size (`data.resize`), so pseudo and real images get the same transform."""
  images = jnp.asarray(images)
  for g in layout.groups:
    if g.image_size < layout.image_size:
      rows = slice(g.start, g.start + g.num_pseudo)
      x = images[rows]
      flat = x.reshape((-1,) + x.shape[2:])
      small = jax.image.resize(flat, (flat.shape[0], g.image_size, g.image_size, flat.shape[3]),
                               'bilinear')
      images = images.at[rows].set(
          jax.image.resize(small, flat.shape, 'bilinear').reshape(x.shape))
  return images


def apply_gradients(images, opt_state, grads, *, tx: optax.GradientTransformation,
                    lazy: bool = False) -> tuple:
  """(images, opt_state) after one step of `tx` on the bank along `grads`. lazy: pseudo
  classes without gradient this step (their teacher was not drawn: `teachers.per_iter`) keep
  their images and optimiser moments, which Adam's momentum would otherwise keep moving."""
  updates, new_state = tx.update(grads, opt_state, images)
  new_images = optax.apply_updates(images, updates)
  if not lazy:
    return new_images, new_state
  touched = jnp.any(grads != 0, axis=tuple(range(1, grads.ndim)))
  keep = lambda new, old: (jnp.where(touched.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
                           if new.shape == images.shape else new)
  return keep(new_images, images), jax.tree.map(keep, new_state, opt_state)


def targets(num_classes: int, spc: int) -> jax.Array:
  """Local labels of a teacher's interleaved batch: 0..n-1 repeated spc times."""
  return jnp.tile(jnp.arange(num_classes, dtype=jnp.int32), spc)


def save(path: str, images, layout: Layout):
  """Writes the bank and its layout to an .npz file."""
  np.savez_compressed(path, images=np.asarray(images), owner=np.asarray(layout.owner),
                      label=np.asarray(layout.label), class_id=np.asarray(layout.class_id),
                      dataset=np.asarray(layout.dataset), spc=layout.spc)
