"""Imports pre-trained PyTorch teachers (the original PURER code's state_dicts) into Flax.

  # one file -> a one-teacher zoo in OUT_DIR/teachers/ (as purer_jax.pretrain writes it)
  python -m purer_jax.convert_torch --arch conv4 --num-classes 5 --image-size 32 IN.pth OUT_DIR
  # a folder of model_{i}.pth -> the teacher zoo of WORKDIR, ready for a PURER run
  python -m purer_jax.convert_torch --pool --arch conv4 --image-size 32 IN_DIR WORKDIR

Keys follow the original `network.py` (docs/DESIGN.md §3): Conv4 `trunk.{i}.C|BN.*` (+ the same
tensors again as `trunk.{i}.trunk.0|1.*`), head `trunk.5`; ResNets `trunk.0|1` stem,
`trunk.{k+2}.C1|BN1|...|shortcut|BNshortcut` for block k, head after avgpool and flatten.
Conv kernels OIHW -> HWIO, Linear weights transposed, and the Conv4 head's input columns
permuted from PyTorch's (C, H, W) flatten order to NHWC's (H, W, C).

A teacher's index is the i of its `model_{i}` file name (0 for other names). With the
`disjoint` assignment teacher i holds meta-train classes [ways*i, ways*i + n), n read from
its head (the pool's last teacher has 4); an explicit assignment is a list of class lists
indexed by teacher (`--assignment FILE.json` on the command line). Files are untrusted:
`.pth` is read with `torch.load(weights_only=True)`, so a pickle that would run code is
refused before any of it runs; `.safetensors` is read without pickle. Every bad input raises
`CheckpointError`. PyTorch is imported only to read a `.pth` file.
"""
import argparse
import functools
import json
import os
import pickle
import re
from typing import Mapping, Optional, Sequence, Union

import jax
import numpy as np
from flax import traverse_util

from purer_jax import data as data_lib
from purer_jax import models, utils, zoo

_POOL_FILE = re.compile(r'model_(\d+)\.(pth|pt|safetensors)')
# Conv4's ConvBlock registers C and BN twice: as attributes and inside its nn.Sequential.
_ALIASES = ((re.compile(r'^(trunk\.\d+)\.trunk\.0\.'), r'\1.C.'),
            (re.compile(r'^(trunk\.\d+)\.trunk\.1\.'), r'\1.BN.'))
_LEAF = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean',
         'var': 'running_var'}
_BLOCK_LAYER = {'conv1': 'C1', 'bn1': 'BN1', 'conv2': 'C2', 'bn2': 'BN2', 'conv3': 'C3',
                'bn3': 'BN3', 'shortcut': 'shortcut', 'shortcut_bn': 'BNshortcut'}
_RESAVE = ('Re-save it from PyTorch as a plain state_dict (torch.save(model.state_dict(), path)) '
           'or as .safetensors.')


class CheckpointError(utils.UserError, ValueError):
  """A PyTorch checkpoint cannot be read, is unsafe, or does not match the architecture."""


def read_state_dict(path: str) -> dict:
  """{key: ndarray} of a `.pth`/`.pt` (weights only) or `.safetensors` state_dict file.

  `num_batches_tracked` entries are dropped.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise CheckpointError(f'checkpoint {path!r} does not exist')
  if path.endswith('.safetensors'):
    from safetensors.numpy import load_file
    try:
      obj = load_file(path)
    except Exception as e:  # SafetensorError: truncated header/data, unsupported dtype
      raise CheckpointError(f'cannot read safetensors file {path!r} ({e}): it is truncated, '
                            f'damaged or holds a dtype numpy lacks. {_RESAVE}') from None
    return _as_numpy(obj, path)
  import torch
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    why = re.search(r'(Trying to load unsupported[^\n]*|Unsupported[^\n]*)', str(e))
    raise CheckpointError(
        f'refused to load {path!r}: it is not a plain state_dict of tensors, weights-only '
        f'unpickling rejected it ({why.group(1) if why else "unsupported pickle content"}). '
        'Such a pickle can run arbitrary code, so it is never loaded with weights_only=False. '
        f'{_RESAVE}') from None
  except Exception as e:  # zip/EOF errors of a truncated or foreign file
    raise CheckpointError(f'cannot read {path!r} ({type(e).__name__}: {_first(e)}): the '
                          f'file is truncated or not a PyTorch checkpoint. {_RESAVE}') from None
  return _as_numpy(obj, path)


def _first(e: Exception) -> str:
  return re.split(r'\.\s', str(e), maxsplit=1)[0][:200]


def _as_numpy(obj, where: str) -> dict:
  if not isinstance(obj, Mapping):
    raise CheckpointError(f'{where}: expected a state_dict (a dict of tensors), got '
                          f'{type(obj).__name__}. {_RESAVE}')
  out = {}
  for k, v in obj.items():
    if not isinstance(k, str):
      raise CheckpointError(f'{where}: state_dict key {k!r} is not a string')
    if k.endswith('num_batches_tracked'):
      continue
    if hasattr(v, 'detach'):  # a torch.Tensor
      v = v.detach().cpu()
      v = (v.float() if v.is_floating_point() else v).numpy()
    if not isinstance(v, np.ndarray):
      raise CheckpointError(f'{where}: {k!r} holds a {type(v).__name__}, not a tensor. '
                            f'{_RESAVE}')
    out[k] = v
  return out


def _canonical(key: str) -> str:
  for pattern, repl in _ALIASES:
    key = pattern.sub(repl, key)
  return key


def _dealias(sd: dict, where: str) -> tuple:
  """(tensors by canonical key, original key names by canonical key); aliases must agree."""
  tensors, names = {}, {}
  for k, v in sd.items():
    c = _canonical(k)
    if c in tensors:
      first = names[c][0]
      if tensors[c].shape != v.shape or not np.array_equal(tensors[c], v):
        diff = (f'max |diff| {np.max(np.abs(tensors[c] - v)):.3g}'
                if tensors[c].shape == v.shape else f'shapes {tensors[c].shape} vs {v.shape}')
        raise CheckpointError(f'{where}: {first!r} and {k!r} are the same layer in the original '
                              f'Conv4 and must hold equal tensors, but they differ ({diff}); '
                              'the file was edited or is damaged.')
    tensors[c] = v
    names.setdefault(c, []).append(k)
  return tensors, names


@functools.lru_cache(maxsize=None)
def _layout(arch: str, num_classes: int, image_size: int) -> dict:
  """{torch key: (Flax variable path, Flax shape)} of `arch`."""
  model = models.create(arch, num_classes, image_size)
  shapes = jax.eval_shape(lambda: models.init(model, jax.random.key(0)))
  flat = traverse_util.flatten_dict(shapes)
  num_blocks = len({p[1] for p in flat if p[1].startswith('block')})
  return {_torch_key(arch, p, num_blocks): (p, s.shape) for p, s in flat.items()}


def _torch_key(arch: str, path: tuple, num_blocks: int) -> str:
  _, layer, *rest = path
  if arch == 'conv4':  # trunk = 4 ConvBlocks, Flatten, Linear
    m = re.fullmatch(r'(conv|bn)(\d)', layer)
    prefix = 'trunk.5' if layer == 'head' else f'trunk.{m[2]}.{"C" if m[1] == "conv" else "BN"}'
  elif layer.startswith('block'):
    prefix = f'trunk.{int(layer[5:]) + 2}.{_BLOCK_LAYER[rest[0]]}'
  else:  # trunk = conv, BN, blocks, AdaptiveAvgPool, Flatten, Linear
    prefix = {'stem_conv': 'trunk.0', 'stem_bn': 'trunk.1',
              'head': f'trunk.{num_blocks + 4}'}[layer]
  return f'{prefix}.{_LEAF[path[-1]]}'


def _torch_shape(flax_shape: tuple) -> tuple:
  if len(flax_shape) == 4:  # HWIO -> OIHW
    return tuple(flax_shape[i] for i in (3, 2, 0, 1))
  return tuple(reversed(flax_shape))  # Linear (in, out) -> (out, in); 1-D unchanged


def _to_flax(arr: np.ndarray, arch: str, width: int) -> np.ndarray:
  if arr.ndim == 4:
    return arr.transpose(2, 3, 1, 0)
  if arr.ndim == 2:
    if arch == 'conv4':  # (N, C*H*W) -> (N, H*W*C): NHWC flatten order
      arr = arr.reshape(arr.shape[0], width, -1).transpose(0, 2, 1).reshape(arr.shape[0], -1)
    return arr.T
  return arr


def _check_keys(tensors: dict, names: dict, arch: str, image_size: int, where: str):
  layout = _layout(arch, 1, image_size)  # the key names do not depend on num_classes
  missing = sorted(set(layout) - set(tensors))
  unexpected = sorted(n for c in set(tensors) - set(layout) for n in names[c])
  if not (missing or unexpected):
    return
  for other in models.ARCHS:
    if other != arch and set(_layout(other, 1, 32)) == set(tensors):
      raise CheckpointError(f'{where} is a {other} checkpoint, not {arch}: pass arch={other!r}')
  show = lambda keys: ', '.join(keys[:8]) + (f' (+{len(keys) - 8} more)' if len(keys) > 8 else '')
  parts = ([f'missing keys: {show(missing)}'] if missing else []) + (
      [f'unexpected keys: {show(unexpected)}'] if unexpected else [])
  raise CheckpointError(f'{where} does not match the original code\'s {arch}: '
                        f'{"; ".join(parts)}')


def _shape_error(key, got, want, path, arch, num_classes, image_size, where):
  msg = f'{where}: {key!r} has shape {got}, {arch} needs {want}'
  if path[1] == 'head' and got[0] != want[0]:
    msg += f': the checkpoint\'s head has {got[0]} classes, not num_classes={num_classes}'
  elif path[1] == 'head' and arch == 'conv4':
    msg += (f': at image_size={image_size} Conv4 flattens {want[1]} features, the head takes '
            f'{got[1]}; pass the image size it was trained at (32 -> 128, 84 -> 800)')
  return CheckpointError(msg)


def convert(state_dict: Mapping, arch: str, num_classes: Optional[int], image_size: int,
            where: str = 'state_dict') -> dict:
  """Flax {'params', 'batch_stats'} of an original-layout state_dict (numpy or torch values).

  num_classes=None takes it from the head's shape.
  """
  if arch not in models.ARCHS:
    raise CheckpointError(f'unknown arch {arch!r}: choose one of {", ".join(models.ARCHS)}')
  tensors, names = _dealias(_as_numpy(state_dict, where), where)
  try:
    _layout(arch, 1, image_size)  # validates image_size before any key is compared
  except ValueError as e:
    raise CheckpointError(f'{where}: {e}') from None
  _check_keys(tensors, names, arch, image_size, where)
  if num_classes is None:
    num_classes = _head_classes(tensors, arch, image_size)
  if int(num_classes) < 1:
    raise CheckpointError(f'num_classes must be >= 1, got {num_classes}')
  layout = _layout(arch, int(num_classes), image_size)
  width = models.create(arch, 1, image_size).width if arch == 'conv4' else 0
  flat = {}
  for key, (path, shape) in layout.items():
    arr, want = tensors[key], _torch_shape(shape)
    if arr.shape != want:
      raise _shape_error(key, arr.shape, want, path, arch, num_classes, image_size, where)
    flat[path] = np.ascontiguousarray(_to_flax(arr, arch, width), np.float32)
  return traverse_util.unflatten_dict(flat)


def to_state_dict(variables: Mapping, arch: str, image_size: int) -> dict:
  """`convert`'s inverse: the original-layout state_dict (numpy, Conv4's aliased keys
  included, no `num_batches_tracked`) of Flax {'params', 'batch_stats'}, for PyTorch
  references of a Flax model (tests/torch_reference.py)."""
  flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, dict(variables)))
  layout = _layout(arch, int(flat[('params', 'head', 'bias')].shape[0]), image_size)
  width = models.create(arch, 1, image_size).width if arch == 'conv4' else 0
  out = {}
  for key, (path, _) in layout.items():
    arr = flat[path]
    if arr.ndim == 4:  # HWIO -> OIHW
      arr = arr.transpose(3, 2, 0, 1)
    elif arr.ndim == 2:
      arr = arr.T
      if arch == 'conv4':  # (N, H*W*C) -> (N, C*H*W): PyTorch's NCHW flatten order
        arr = arr.reshape(arr.shape[0], -1, width).transpose(0, 2, 1).reshape(arr.shape[0], -1)
    out[key] = np.ascontiguousarray(arr)
  for key in list(out):  # Conv4's ConvBlock holds C and BN again in its nn.Sequential
    m = re.fullmatch(r'(trunk\.\d+)\.(C|BN)\.(.+)', key) if arch == 'conv4' else None
    if m:
      out[f'{m[1]}.trunk.{0 if m[2] == "C" else 1}.{m[3]}'] = out[key]
  return out


def _head_classes(tensors: dict, arch: str, image_size: int) -> int:
  key = next(k for k, (p, _) in _layout(arch, 1, image_size).items()
             if p[1:] == ('head', 'bias'))
  return int(np.shape(tensors[key])[0])


def load(path_or_state_dict: Union[str, os.PathLike, Mapping], arch: str,
         num_classes: Optional[int], image_size: int) -> dict:
  """{'params', 'batch_stats'} for `models.create(arch, num_classes, image_size)`.

  Applied with `train=False` to NHWC images it gives the PyTorch model's eval-mode logits
  on the same images in NCHW. num_classes=None takes it from the head.
  """
  if isinstance(path_or_state_dict, Mapping):
    return convert(path_or_state_dict, arch, num_classes, image_size)
  path = os.fspath(path_or_state_dict)
  return convert(read_state_dict(path), arch, num_classes, image_size, where=path)


def pool_files(torch_dir: str) -> dict:
  """{teacher index: path} of the `model_{i}.pth|.pt|.safetensors` files in `torch_dir`."""
  if not os.path.isdir(torch_dir):
    raise CheckpointError(f'teacher folder {torch_dir!r} does not exist')
  files = {}
  for f in os.listdir(torch_dir):
    m = _POOL_FILE.fullmatch(f)
    if m:
      if int(m[1]) in files:
        raise CheckpointError(f'{torch_dir!r} holds two files for teacher {m[1]}: '
                              f'{os.path.basename(files[int(m[1])])} and {f}')
      files[int(m[1])] = os.path.join(torch_dir, f)
  if not files:
    raise CheckpointError(f'{torch_dir!r} holds no model_{{i}}.pth files (the original writes '
                          'pretrained/{dataset}/{arch}/meta_train/5way/model_try/model_{i}.pth)')
  return dict(sorted(files.items()))


def _meta_train_names(dataset: str, data_dir: Optional[str]) -> Optional[tuple]:
  if data_dir:
    return data_lib.load(dataset, 'meta_train', data_dir).class_names
  return tuple(data_lib.CIFAR_FS_CLASSES['meta_train']) if dataset == 'cifar_fs' else None


def _classes(index: int, n: int, ways: int, assignment, num_train: Optional[int],
             where: str) -> list:
  if isinstance(assignment, str):
    if assignment != 'disjoint':
      raise CheckpointError(f'assignment {assignment!r}: model_{{i}}.pth files do not record '
                            'their classes; use "disjoint" or pass the class lists per teacher')
    if n > ways:
      raise CheckpointError(f'{where}: the head has {n} classes, more than ways={ways} of a '
                            'disjoint pool; pass the ways the pool was trained with')
    classes = list(range(ways * index, ways * index + n))
  else:
    if index >= len(assignment) or len(assignment[index]) != n:
      given = len(assignment[index]) if index < len(assignment) else 'no'
      raise CheckpointError(f'{where}: the head has {n} classes, the assignment gives teacher '
                            f'{index} {given} classes')
    classes = [int(c) for c in assignment[index]]
  if num_train is not None and max(classes) >= num_train:
    raise CheckpointError(f'{where}: teacher {index} would hold meta-train classes '
                          f'{classes}, but the split has {num_train} classes')
  return classes


def import_pool(torch_dir: str, workdir: str, *, arch: Union[str, Sequence[str]],
                image_size: int, dataset: str, data_dir: Optional[str] = None, ways: int = 5,
                assignment: Union[str, Sequence[Sequence[int]]] = 'disjoint') -> list:
  """Writes the teachers of `torch_dir` (model_{i}.pth) as the zoo of `workdir`.

  arch: one arch, or a sequence where teacher i gets arch[i % len] (as config.teachers.archs).
  Returns the manifest's entries, as `purer_jax.pretrain.run` does.
  """
  return _import(pool_files(torch_dir), workdir, arch=arch, image_size=image_size,
                 dataset=dataset, data_dir=data_dir, ways=ways, assignment=assignment,
                 source_dir=torch_dir)


def _import(files: dict, workdir, *, arch, image_size, dataset, data_dir, ways, assignment,
            source_dir, num_classes=None) -> list:
  source = {'source': 'torch', 'torch_dir': os.path.abspath(source_dir),
            'assignment': assignment if isinstance(assignment, str) else 'given'}
  manifest = zoo.read_manifest(workdir)
  if manifest['teachers'] and any(manifest.get(k) != source[k] for k in ('source', 'torch_dir')):
    raise CheckpointError(f'{zoo.teachers_dir(workdir)!r} already holds teachers from '
                          f'{manifest.get("torch_dir") or manifest.get("source")}: import into '
                          'a fresh workdir')
  names = _meta_train_names(dataset, data_dir)
  archs = (arch,) if isinstance(arch, str) else tuple(arch)
  for i, path in files.items():
    a = archs[i % len(archs)]
    variables = load(path, a, num_classes, image_size)
    n = int(variables['params']['head']['bias'].shape[0])
    classes = _classes(i, n, ways, assignment, len(names) if names else None, path)
    teacher = zoo.Teacher(
        index=i, arch=a, num_classes=n, image_size=image_size, dataset=dataset,
        classes=classes,
        class_names=[names[c] for c in classes] if names else [f'meta_train[{c}]' for c in classes],
        heldout_acc=None, checkpoint='')
    zoo.save_teacher(workdir, teacher, variables, meta=source)
  return zoo.read_manifest(workdir)['teachers']


def main(argv=None):
  from purer_jax import cli  # flags of the other entry points: not on library import
  p = argparse.ArgumentParser(prog='python -m purer_jax.convert_torch', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('src', help='a .pth/.safetensors file, or with --pool a folder of model_{i}.pth')
  p.add_argument('workdir', help='work directory; the zoo goes to WORKDIR/teachers/')
  p.add_argument('--pool', action='store_true', help='import a folder of model_{i}.pth')
  p.add_argument('--arch', required=True, nargs='+', choices=models.ARCHS,
                 help='one arch, or several: teacher i gets the (i %% n)-th (SH pools)')
  p.add_argument('--num-classes', type=int, help='checked against the head (default: read it)')
  p.add_argument('--image-size', type=int, required=True)
  p.add_argument('--dataset', default='cifar_fs', choices=data_lib.DATASETS)
  p.add_argument('--data-dir', help='the dataset folder, for meta-train class names')
  p.add_argument('--ways', type=int, default=5, help='classes per teacher of a disjoint pool')
  p.add_argument('--assignment', default='disjoint',
                 help='"disjoint" or a JSON file with one list of class indices per teacher')
  args = p.parse_args(argv)
  with cli.user_errors():
    assignment = args.assignment
    if assignment != 'disjoint':
      with open(assignment) as f:
        assignment = json.load(f)
    if args.pool:
      files, source_dir = pool_files(args.src), args.src
    else:
      m = _POOL_FILE.fullmatch(os.path.basename(args.src))
      files, source_dir = {int(m[1]) if m else 0: args.src}, os.path.dirname(args.src) or '.'
    teachers = _import(files, args.workdir, arch=args.arch, image_size=args.image_size,
                       dataset=args.dataset, data_dir=args.data_dir, ways=args.ways,
                       assignment=assignment, source_dir=source_dir, num_classes=args.num_classes)
  print(f'{len(teachers)} teachers in {zoo.teachers_dir(args.workdir)}: ' + ', '.join(
      f'{t["index"]}:{t["arch"]}/{t["num_classes"]}' for t in teachers))


if __name__ == '__main__':
  main()
