"""The teacher zoo on disk: `W/teachers/manifest.json` plus one orbax checkpoint per teacher.

`purer_jax.pretrain` and `purer_jax.convert_torch` write it; inversion, training and
evaluation read it. Entries are written one at a time, so an interrupted job keeps the
teachers it finished. Checkpoint paths are stored relative to the workdir and each entry holds
its files' digest, so a copied workdir reads its own files and a damaged one is named.
"""
import dataclasses
import glob
import json
import os
import shutil
from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from purer_jax import data as data_lib
from purer_jax import models, utils
from purer_jax import workdir as workdir_lib

MANIFEST = 'manifest.json'


@dataclasses.dataclass
class Teacher:
  index: int
  arch: str
  num_classes: int
  image_size: int
  dataset: str
  classes: list          # indices into the dataset's meta_train split
  class_names: list
  heldout_acc: Optional[float]
  checkpoint: str        # the orbax checkpoint (relative to the workdir in the manifest)
  digest: Optional[str] = None  # of the checkpoint's files (purer_jax.workdir.digest)
  variables: Optional[dict] = None
  train_seconds: Optional[float] = None

  @property
  def model(self):
    return models.create(self.arch, self.num_classes, self.image_size)


def teachers_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'teachers')


def read_manifest(workdir: str) -> dict:
  path = os.path.join(teachers_dir(workdir), MANIFEST)
  if not os.path.isfile(path):
    return {'teachers': []}
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:  # written atomically: only damage from outside gets here
    raise workdir_lib.WorkdirError(
        f'{path} is damaged ({e}); delete it and re-run pretrain (teachers are retrained) or '
        'restore it from a backup') from None


def checkpoint_path(workdir: str, entry: dict) -> str:
  """Absolute path of a manifest entry's checkpoint inside `workdir`. Older manifests hold
  absolute paths: the workdir's own teachers/ folder is used (a copied workdir reads its
  own files, never the original's)."""
  ckpt = entry['checkpoint']
  if os.path.isabs(ckpt):
    return os.path.join(teachers_dir(workdir), os.path.basename(ckpt.rstrip('/')))
  return os.path.join(os.path.abspath(workdir), ckpt)


def _fix(workdir, index) -> str:
  return (f'delete {os.path.join(teachers_dir(workdir), f"teacher_{index:03d}")} and re-run '
          f'`python -m purer_jax.pretrain --config=... --workdir={workdir}` to retrain teacher '
          f'{index} (PyTorch teachers: import them again into a fresh workdir)')


def save_teacher(workdir: str, teacher: Teacher, variables: dict, meta: Optional[dict] = None):
  """Writes the checkpoint, then records it in the manifest (atomically)."""
  tdir = teachers_dir(workdir)
  os.makedirs(tdir, exist_ok=True)
  name = f'teacher_{teacher.index:03d}'
  ckpt = os.path.join(tdir, name)
  variables = jax.tree.map(np.asarray, {k: variables[k] for k in ('params', 'batch_stats')})
  for leftover in glob.glob(ckpt + '.orbax-checkpoint-tmp*'):  # of a save that was killed
    shutil.rmtree(leftover, ignore_errors=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(ckpt, variables, force=True)
  manifest = read_manifest(workdir)
  for k, v in (meta or {}).items():  # how the zoo was made: kept from its first teacher
    manifest.setdefault(k, v)
  entry = {k: v for k, v in dataclasses.asdict(teacher).items() if k != 'variables'}
  entry['checkpoint'] = os.path.join('teachers', name)
  entry['digest'] = workdir_lib.digest(ckpt)
  manifest['teachers'] = [t for t in manifest['teachers'] if t['index'] != teacher.index]
  manifest['teachers'].append(entry)
  manifest['teachers'].sort(key=lambda t: t['index'])
  utils.write_json(os.path.join(tdir, MANIFEST), manifest)


def source(workdir: str) -> dict:
  """Where the workdir's pool came from, for a run that found it there: the workdir that
  trained it (teachers copied in from another run name it) and its recorded training time."""
  manifest = read_manifest(workdir)
  where = manifest.get('trained_in')
  seconds = [t.get('train_seconds') for t in manifest['teachers']]
  out = {'reused': ('this workdir, by an earlier command' if where == os.path.abspath(workdir)
                    else where or f"a pool from {manifest.get('source', 'elsewhere')}")}
  if seconds and None not in seconds:
    out['seconds'] = round(sum(seconds), 1)
  return out


def complete(workdir: str) -> set:
  """Indices of the manifest's teachers whose checkpoint is on disk."""
  return {t['index'] for t in read_manifest(workdir)['teachers']
          if os.path.isdir(checkpoint_path(workdir, t))}


def load(workdir: str, with_variables: bool = True, num: Optional[int] = None) -> list:
  """The zoo's teachers in index order (those with an index below `num`, if given); a clear
  error if the workdir has none, or if a teacher's checkpoint is missing or damaged."""
  manifest = read_manifest(workdir)
  if not manifest['teachers']:
    raise FileNotFoundError(
        f'no teacher zoo under {teachers_dir(workdir)!r}: run `python -m purer_jax.pretrain '
        f'--config=... --workdir={workdir}` or import PyTorch teachers with '
        '`python -m purer_jax.convert_torch --pool ...`')
  out = []
  for entry in manifest['teachers']:
    if num is not None and entry['index'] >= num:
      continue
    t = Teacher(**dict(entry, checkpoint=checkpoint_path(workdir, entry)))
    if with_variables:
      what = f'teacher {t.index}'
      if not os.path.isdir(t.checkpoint):
        raise FileNotFoundError(f'{what}: checkpoint {t.checkpoint!r} is missing; re-run '
                                'pretrain to retrain it')
      workdir_lib.verify(t.checkpoint, t.digest, what, _fix(workdir, t.index))
      abstract = jax.eval_shape(lambda m=t.model: models.init(m, jax.random.key(0)))
      try:
        with ocp.StandardCheckpointer() as ckptr:
          t.variables = ckptr.restore(t.checkpoint, abstract)
      except Exception as e:  # tensorstore / orbax errors of a truncated or damaged file
        raise workdir_lib.damaged(what, t.checkpoint, e, _fix(workdir, t.index)) from None
    out.append(t)
  return out


def pool(config, workdir: str) -> list:
  """The teachers a run with `config` uses, variables loaded: the one pool rule of every
  entry point (meta-training, synthesis, the `average` baseline, ICFIL tuning).

  The pool is the zoo's teachers 0..config.teachers.num-1, so a bigger zoo serves a smaller
  run. Each must come from one of the config's datasets (config.data.dataset, plus
  config.data.extra_dataset for MH) and archs (config.teachers.archs): a zoo trained for
  another scenario is an error that names the teacher, not a silently different pool.
  """
  datasets = tuple(name for name, _, _ in data_lib.run_datasets(config))
  archs = tuple(config.teachers.archs)
  teachers = load(workdir, num=config.teachers.num)
  if not teachers:
    raise workdir_lib.WorkdirError(
        f'the zoo under {teachers_dir(workdir)!r} has no teacher with an index below '
        f'config.teachers.num={config.teachers.num}')
  bad = [f'teacher {t.index} is {t.arch} on {t.dataset}' for t in teachers
         if t.arch not in archs or t.dataset not in datasets]
  if bad:
    raise workdir_lib.WorkdirError(
        f'the zoo under {teachers_dir(workdir)!r} does not fit this config (archs {archs}, '
        f'datasets {datasets}): {"; ".join(bad[:4])}. Use a new workdir for this config, or '
        'the config the zoo was trained with')
  return teachers
