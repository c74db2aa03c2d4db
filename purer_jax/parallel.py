"""Several devices and several processes: the teacher mesh, global arrays, and joining a
multi-process run (`jax.distributed`), as on a GPU or TPU pod slice.

Every process runs the same program on the same data (SPMD). With `inversion.shard` the
teachers of the inversion step are sharded over the devices of every process; the learner,
the optimisers and the switch are replicated. Host-side work (meta-val, PNGs, logs, results)
reads global arrays through `to_host`; files are written by process 0 only (`is_primary`),
checkpoints by orbax from every process.

A run joins a multi-process job from its environment (`initialize`, called by every CLI):
  JAX_COORDINATOR_ADDRESS=host0:1234 PURER_NUM_PROCESSES=2 PURER_PROCESS_ID=0|1
      explicit (any machines, e.g. two processes on localhost with CPU collectives);
  PURER_DISTRIBUTED=1
      a cluster JAX detects itself (TPU pods, SLURM, Open MPI): `jax.distributed.initialize()`.
"""
import os
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from purer_jax import utils

AXIS = 'teachers'


def initialize(environ=None) -> bool:
  """Joins the multi-process run the environment describes (module docstring); returns
  whether it did. Must run before anything touches a device."""
  env = os.environ if environ is None else environ
  n, pid = env.get('PURER_NUM_PROCESSES'), env.get('PURER_PROCESS_ID')
  if n is not None or pid is not None:
    if n is None or pid is None or not env.get('JAX_COORDINATOR_ADDRESS'):
      raise utils.UserError(
          'a multi-process run needs JAX_COORDINATOR_ADDRESS (host:port of process 0), '
          'PURER_NUM_PROCESSES and PURER_PROCESS_ID, all three; got '
          f"JAX_COORDINATOR_ADDRESS={env.get('JAX_COORDINATOR_ADDRESS')!r}, "
          f'PURER_NUM_PROCESSES={n!r}, PURER_PROCESS_ID={pid!r}')
    try:
      n, pid = int(n), int(pid)
    except ValueError:
      raise utils.UserError(f'PURER_NUM_PROCESSES ({n!r}) and PURER_PROCESS_ID ({pid!r}) must '
                            'be integers') from None
    if not 0 <= pid < n:
      raise utils.UserError(f'PURER_PROCESS_ID must be in [0, {n}), got {pid}')
    jax.distributed.initialize(env['JAX_COORDINATOR_ADDRESS'], num_processes=n, process_id=pid)
    return True
  if env.get('PURER_DISTRIBUTED', '') not in ('', '0'):
    jax.distributed.initialize()
    return True
  return False


def is_primary() -> bool:
  return jax.process_index() == 0


def teacher_mesh() -> jax.sharding.Mesh:
  """A 1-axis mesh over every device of every process, for the inversion's teacher axis."""
  return jax.make_mesh((jax.device_count(),), (AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def put(a: np.ndarray, sharding) -> jax.Array:
  """Host array `a` as a global array with `sharding`: each device takes its block, alike
  for one process and for many (every process must pass the same values)."""
  return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def to_host(tree):
  """NumPy copies of `tree`'s arrays on every process, whether replicated, sharded over
  devices this process does not hold, or local."""
  def get(a):
    if not isinstance(a, jax.Array) or a.is_fully_addressable:
      return np.asarray(a)
    if a.is_fully_replicated:
      return np.asarray(a.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(a, tiled=True))
  return jax.tree.map(get, tree)
