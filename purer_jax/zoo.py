"""The teacher zoo on disk: `W/teachers/manifest.json` plus one orbax checkpoint per teacher.

`purer_jax.pretrain` and `purer_jax.convert_torch` write it; inversion, training and
evaluation read it. Entries are written one at a time, so an interrupted job keeps the
teachers it finished.
"""
import dataclasses
import json
import os
from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from purer_jax import models

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
  checkpoint: str        # absolute path of the orbax checkpoint
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
  with open(path) as f:
    return json.load(f)


def save_teacher(workdir: str, teacher: Teacher, variables: dict, meta: Optional[dict] = None):
  """Writes the checkpoint, then records it in the manifest (atomically)."""
  tdir = teachers_dir(workdir)
  os.makedirs(tdir, exist_ok=True)
  ckpt = os.path.join(tdir, f'teacher_{teacher.index:03d}')
  variables = jax.tree.map(np.asarray, {k: variables[k] for k in ('params', 'batch_stats')})
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(ckpt, variables, force=True)
  manifest = read_manifest(workdir)
  manifest.update(meta or {})
  entry = {k: v for k, v in dataclasses.asdict(teacher).items() if k != 'variables'}
  entry['checkpoint'] = ckpt
  manifest['teachers'] = [t for t in manifest['teachers'] if t['index'] != teacher.index]
  manifest['teachers'].append(entry)
  manifest['teachers'].sort(key=lambda t: t['index'])
  tmp = os.path.join(tdir, MANIFEST + '.tmp')
  with open(tmp, 'w') as f:
    json.dump(manifest, f, indent=1)
  os.replace(tmp, os.path.join(tdir, MANIFEST))


def load(workdir: str, with_variables: bool = True) -> list:
  """The zoo's teachers in index order; a clear error if the workdir has none."""
  manifest = read_manifest(workdir)
  if not manifest['teachers']:
    raise FileNotFoundError(
        f'no teacher zoo under {teachers_dir(workdir)!r}: run `python -m purer_jax.pretrain '
        f'--config=... --workdir={workdir}` or import PyTorch teachers with '
        '`python -m purer_jax.convert_torch --pool ...`')
  out = []
  for entry in manifest['teachers']:
    t = Teacher(**entry)
    if with_variables:
      if not os.path.isdir(t.checkpoint):
        raise FileNotFoundError(f'teacher {t.index}: checkpoint {t.checkpoint!r} is missing; '
                                'delete its manifest entry and re-run pretrain to retrain it')
      abstract = jax.eval_shape(lambda m=t.model: models.init(m, jax.random.key(0)))
      with ocp.StandardCheckpointer() as ckptr:
        t.variables = ckptr.restore(t.checkpoint, abstract)
    out.append(t)
  return out
