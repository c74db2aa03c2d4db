"""One process of the multi-process tests (tests/test_distributed.py), started with the
environment `purer_jax.parallel.initialize` reads:

  python tests/distributed_worker.py OUT.npz

It joins the run, shards the teacher axis of the inversion loss over every device of every
process, and (process 0) writes the loss and its gradient with respect to the bank to OUT.npz.
"""
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from purer_jax import bank as bank_lib  # noqa: E402
from purer_jax import config as config_lib, inversion, models, parallel  # noqa: E402

TEACHERS = 6  # not a multiple of 4 devices: the padded copies must not count


def problem():
  """(layout, stacked teachers, bank images, key, config.inversion): the same in every process
  and in the test's single-process reference."""
  c = config_lib.base().inversion
  pool = [type('T', (), dict(arch='conv4', num_classes=5, image_size=32, classes=None))()
          for _ in range(TEACHERS)]
  layout = bank_lib.make_layout(pool, 4)
  model = models.create('conv4', 5, 32)
  variables = [models.init(model, jax.random.key(i)) for i in range(TEACHERS)]
  stacked = (jax.tree.map(lambda *a: np.stack([np.asarray(x) for x in a]), *variables),)
  images = np.asarray(bank_lib.init(layout, jax.random.key(100)))
  return layout, stacked, images, jax.random.key(7), c


def loss_and_grad(mesh=None):
  layout, stacked, images, key, c = problem()
  step = inversion.make_inversion_step(layout, c, strategy='loop', mesh=mesh)
  teachers = step.place_teachers(stacked)
  if mesh is not None:
    images = jax.make_array_from_callback(images.shape, step.bank_sharding(),
                                          lambda idx: images[idx])
  # Global arrays are arguments: a program may not close over arrays of other processes.
  f = jax.jit(jax.value_and_grad(lambda x, t, k: step.loss(x, t, k)[0]))
  return parallel.to_host(f(images, teachers, key))


def main(out):
  assert parallel.initialize(), 'start with PURER_NUM_PROCESSES, PURER_PROCESS_ID, ...'
  loss, grad = loss_and_grad(parallel.teacher_mesh())
  if parallel.is_primary():
    np.savez(out, loss=loss, grad=grad, devices=jax.device_count(),
             processes=jax.process_count())


if __name__ == '__main__':
  main(sys.argv[1])
