"""PURER end to end: teachers, meta-training, meta-test.

  python -m purer_jax.main --config=configs/ss.py:smoke --workdir=W

Teachers come from `pretrain.run` (skipping those W already has) or, with
config.teachers.source == 'torch', from PyTorch checkpoints via `convert_torch.import_pool`.
Re-running the same command resumes an interrupted run (see purer_jax/train.py); compiled
programs are cached in W/jax_cache (unless JAX_COMPILATION_CACHE_DIR is set), so a resumed
run skips the minute-long compilation of the meta-iteration.
"""
import os
import time

from purer_jax import cli
from purer_jax import data as data_lib

# JAX and the library load inside the functions below, after `cli.run` has checked the config:
# a bad value is refused in a fraction of a second instead of after a 3-second import.


def get_teachers(config, workdir):
  from purer_jax import pretrain, zoo
  t = config.teachers
  if t.source == 'pretrain':
    return pretrain.run(config, workdir)
  if t.source != 'torch':
    raise ValueError(f"config.teachers.source must be 'pretrain' or 'torch', got {t.source!r}")
  if zoo.read_manifest(workdir)['teachers']:
    return zoo.read_manifest(workdir)['teachers']
  if not t.torch_dir:
    raise ValueError("config.teachers.source='torch' needs config.teachers.torch_dir, the folder "
                     'of model_{i}.pth files')
  from purer_jax import convert_torch  # needs torch: import only on this path
  return convert_torch.import_pool(
      t.torch_dir, workdir, arch=t.archs, image_size=data_lib.IMAGE_SIZE[config.data.dataset],
      dataset=config.data.dataset, data_dir=config.data.data_dir, ways=t.ways,
      assignment=t.assignment)


def main(argv):
  del argv
  started = time.time()
  import jax
  from purer_jax import meta_test, pretrain, utils, zoo
  config, workdir = cli.config_and_workdir(splits=data_lib.SPLITS)
  if not os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    jax.config.update('jax_compilation_cache_dir', os.path.join(os.path.abspath(workdir),
                                                                'jax_cache'))
  # A pool trained (or imported) by an earlier command: its time is not in this wall time.
  reused = set(range(config.teachers.num)) <= zoo.complete(workdir)
  if jax.process_count() > 1:  # one process writes the zoo; the others would race it
    if not config.inversion.shard:  # else each process keeps its own bank: orbax refuses it
      raise utils.UserError('a multi-process run shards the bank over its processes: add '
                            '--config.inversion.shard=True')
    if (pretrain.missing(config, workdir)[1] if config.teachers.source == 'pretrain' else
        not zoo.read_manifest(workdir)['teachers']):
      raise utils.UserError(
          f'a multi-process run needs its teachers in {zoo.teachers_dir(workdir)} first: train '
          'or import them with one process (python -m purer_jax.pretrain --config=... '
          f'--workdir={workdir}), then start every process')
  else:
    get_teachers(config, workdir)
  meta_test.train_and_evaluate(config, workdir, started=started, teachers_reused=reused)


if __name__ == '__main__':
  cli.run(main)
