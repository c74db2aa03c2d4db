"""Few-shot data: split loaders (.npz, class folders, TFDS), normalisation and episodes.

Every split is held in memory as uint8 NHWC (docs/DESIGN.md §2); episodes are drawn from a
per-task seed so the same `(seed, index)` always gives the same task (paired evaluation).
"""
import contextlib
import dataclasses
import os
import socket
import tempfile
from typing import Iterator, Optional, Sequence

import numpy as np

from purer_jax import utils

SPLITS = ('meta_train', 'meta_val', 'meta_test')
DATASETS = ('cifar_fs', 'mini_imagenet')
IMAGE_SIZE = {'cifar_fs': 32, 'mini_imagenet': 84}
MEAN_STD = {
    'cifar_fs': ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    'mini_imagenet': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
# CIFAR-FS (Bertinetto et al. 2019): CIFAR-100 fine labels per split, used to build the
# splits from TFDS' cifar100.
CIFAR_FS_CLASSES = {
    'meta_train': (
        'apple aquarium_fish bear bee bottle bowl boy bridge bus can castle caterpillar chair '
        'clock cloud cockroach couch cup dinosaur dolphin elephant forest girl hamster house '
        'kangaroo keyboard lawn_mower lion lizard lobster mountain mouse mushroom oak_tree '
        'orange orchid palm_tree pear pine_tree plate porcupine possum rabbit raccoon ray road '
        'seal shrew skunk skyscraper snake spider squirrel streetcar sunflower tank tiger train '
        'trout tulip turtle willow_tree wolf').split(),
    'meta_val': ('beaver beetle butterfly camel cattle crab crocodile flatfish lamp maple_tree '
                 'motorcycle otter sea shark television tractor').split(),
    'meta_test': ('baby bed bicycle chimpanzee fox leopard man pickup_truck plain poppy rocket '
                  'rose snail sweet_pepper table telephone wardrobe whale woman worm').split(),
}
_HOW_TO_GET = (
    'Expected either {split}.npz files (arrays images uint8 NHWC, labels, class_names) or '
    'class folders {split}/<class>/*.jpg|png. This repository ships no data: point data_dir '
    'at a prepared copy (for example ../shared/data/cifar-fs or ../shared/data/mini-imagenet-100), '
    'run once online (source="auto" then builds cifar_fs from TFDS\' cifar100 download), or use '
    'source="tfds" with TFDS cifar100 prepared in data_dir.')
_IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp')
_DOWNLOAD_HOST = 'www.cs.toronto.edu'  # TFDS' cifar100 comes from here


class DataError(utils.UserError, ValueError):
  """A data folder is missing or not laid out as expected."""


@dataclasses.dataclass(frozen=True)
class SplitData:
  images: np.ndarray        # uint8 (N, H, W, 3)
  labels: np.ndarray        # int32 (N,), in [0, C)
  class_names: tuple
  dataset: str = 'cifar_fs'

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def class_indices(self) -> list:
    """Row indices of each class, in class order."""
    order = np.argsort(self.labels, kind='stable')
    bounds = np.searchsorted(self.labels[order], np.arange(self.num_classes + 1))
    return [order[bounds[c]:bounds[c + 1]] for c in range(self.num_classes)]


def load(name: str, split: str, data_dir: str, source: str = 'auto') -> SplitData:
  """Loads `split` of dataset `name` from `data_dir` (the dataset's own folder).

  source: 'auto' (a `{split}.npz` file, else `{split}/<class>/` folders; for cifar_fs with
  neither, built once from TFDS' cifar100 download and cached as {split}.npz), 'npz',
  'folders' or 'tfds' (CIFAR-FS built from TFDS' prepared cifar100, offline).
  """
  kind, path = _locate(name, split, data_dir, source)
  if kind == 'tfds':
    return _tfds_cifar_fs(path, (split,))[split]
  images, labels, names = _load_npz(path) if kind == 'npz' else _load_folders(path)
  return _checked(SplitData(images, labels, tuple(names), name), path)


def check(name: str, split: str, data_dir: str, source: str = 'auto'):
  """Raises DataError if `load` would, without decoding images: entry points check every
  split a run needs before compiling anything."""
  kind, path = _locate(name, split, data_dir, source)
  if kind == 'tfds':
    _tfds_sources(path, download=False)
  elif kind == 'npz':
    _load_npz(path, arrays=False)
  else:
    _folder_files(path)


def run_datasets(config) -> list:
  """[(name, data_dir, source)] of a run: the pool's dataset, plus MH's second one
  (config.data.extra_dataset). Entry points read and check their splits from this list alone."""
  c = config.data
  out = [(c.dataset, c.data_dir, c.source)]
  if c.extra_dataset:
    out.append((c.extra_dataset, c.extra_data_dir, 'auto'))
  return out


def _locate(name, split, data_dir, source):
  """('npz' | 'folders' | 'tfds', path) of a split, or the DataError that says what to do."""
  if name not in DATASETS:
    raise DataError(f'unknown dataset {name!r}: choose one of {DATASETS}')
  if split not in SPLITS:
    raise DataError(f'unknown split {split!r}: choose one of {SPLITS}')
  data_dir = os.path.expanduser(str(data_dir))
  if source == 'tfds':
    return 'tfds', data_dir
  npz = os.path.join(data_dir, f'{split}.npz')
  folder = os.path.join(data_dir, split)
  note = ''
  if (source == 'auto' and name == 'cifar_fs' and not os.path.isfile(npz)
      and not os.path.isdir(folder)):
    note = _cache_from_tfds(data_dir)
  if not os.path.isdir(data_dir):
    raise DataError(f'data folder {data_dir!r} (dataset {name}) does not exist.{note} '
                    f'{_HOW_TO_GET}')
  if source in ('auto', 'npz') and os.path.isfile(npz):
    return 'npz', npz
  if source in ('auto', 'folders') and os.path.isdir(folder):
    return 'folders', folder
  raise DataError(f'{data_dir!r} has neither {split}.npz nor a {split}/ folder of classes '
                  f'(source={source!r}).{note} {_HOW_TO_GET}')


def _load_npz(path, arrays=True):
  try:
    with np.load(path, allow_pickle=False) as z:
      missing = {'images', 'labels', 'class_names'} - set(z.files)
      if missing:
        raise DataError(f'{path!r} lacks arrays {sorted(missing)}. {_HOW_TO_GET}')
      if arrays:
        return z['images'], z['labels'].astype(np.int32), [str(c) for c in z['class_names']]
  except DataError:
    raise
  except Exception as e:  # zip/LZMA/pickle errors from a damaged file
    raise DataError(f'cannot read {path!r} ({type(e).__name__}: {e}); the file is damaged or '
                    f'not a numpy .npz. {_HOW_TO_GET}') from None


def _folder_files(folder):
  """(class names, [image paths per class]), sorted."""
  names = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
  if not names:
    raise DataError(f'{folder!r} has no class sub-folders. {_HOW_TO_GET}')
  files = []
  for cname in names:
    files.append([os.path.join(folder, cname, f) for f in sorted(os.listdir(
        os.path.join(folder, cname))) if f.lower().endswith(_IMAGE_EXTS)])
    if not files[-1]:
      raise DataError(f'class folder {os.path.join(folder, cname)!r} has no images. {_HOW_TO_GET}')
  return names, files


def _load_folders(folder):
  from PIL import Image
  names, files = _folder_files(folder)
  images, labels = [], []
  for c, paths in enumerate(files):
    for path in paths:
      try:
        with Image.open(path) as im:
          images.append(np.asarray(im.convert('RGB'), np.uint8))
      except Exception as e:
        raise DataError(f'cannot decode image {path!r}: {e}') from None
      labels.append(c)
  shapes = {im.shape for im in images}
  if len(shapes) != 1:
    raise DataError(f'images under {folder!r} have different sizes {sorted(shapes)[:4]}; '
                    'resize them to one size first.')
  return np.stack(images), np.asarray(labels, np.int32), names


@contextlib.contextmanager
def _private_tempdir():
  # TFDS's DatasetInfo leaves an empty mkdtemp('tfds') folder behind per builder (its GCS
  # lookup, off by default, runs after the mkdtemp): keep them in a folder removed after.
  saved = tempfile.tempdir
  with tempfile.TemporaryDirectory() as tmp:
    tempfile.tempdir = tmp
    try:
      yield
    finally:
      tempfile.tempdir = saved


def _tfds_sources(data_dir, download: bool):
  """TFDS cifar100's train and test data sources and its fine label names."""
  import tensorflow_datasets as tfds
  try:
    with _private_tempdir():
      sources = {part: tfds.data_source('cifar100', split=part, data_dir=data_dir,
                                        download=download) for part in ('train', 'test')}
      fine = tfds.builder('cifar100', data_dir=data_dir).info.features['label'].names
  except Exception as e:
    if download:
      raise DataError(
          f'TFDS could not download and prepare cifar100 ({type(e).__name__}: {e}). Preparing '
          'it needs internet and TensorFlow (pip install tensorflow). '
          f'{_HOW_TO_GET}') from None
    raise DataError(
        f'TFDS cifar100 is not prepared under {data_dir!r} ({type(e).__name__}: {e}). Prepare '
        'it where TFDS can download (tfds build cifar100 --file_format=array_record '
        f'--data_dir={data_dir}); this loader never downloads.') from None
  if fine[0] == '0':  # names live in dataset_info.json; CIFAR-100's fine labels are alphabetical
    fine = sorted(c for cs in CIFAR_FS_CLASSES.values() for c in cs)
  return sources, fine


def _tfds_cifar_fs(data_dir, splits, download: bool = False) -> dict:
  """{split: SplitData} of CIFAR-FS from TFDS' cifar100, in one pass over its records."""
  sources, fine = _tfds_sources(data_dir, download)
  to_split = {fine.index(c): (s, i) for s in splits for i, c in enumerate(CIFAR_FS_CLASSES[s])}
  images = {s: [] for s in splits}
  labels = {s: [] for s in splits}
  for part in ('train', 'test'):  # CIFAR-FS pools both: 600 images per class
    for ex in sources[part]:
      hit = to_split.get(int(ex['label']))
      if hit is not None:
        images[hit[0]].append(np.asarray(ex['image'], np.uint8))
        labels[hit[0]].append(hit[1])
  out = {}
  for s in splits:
    if not images[s]:
      raise DataError(f'TFDS cifar100 under {data_dir!r} holds no image of the {s} classes')
    y = np.asarray(labels[s], np.int32)
    order = np.argsort(y, kind='stable')
    out[s] = _checked(SplitData(np.stack(images[s])[order], y[order],
                                tuple(CIFAR_FS_CLASSES[s]), 'cifar_fs'), f'tfds:{data_dir}')
  return out


def _online(host: str = _DOWNLOAD_HOST, timeout: float = 3.0) -> bool:
  """Whether `host` answers: offline, TFDS would retry its download for minutes."""
  try:
    socket.create_connection((host, 443), timeout=timeout).close()
    return True
  except OSError:
    return False


def _has_tensorflow() -> bool:
  """TFDS prepares cifar100 with TensorFlow (its extractor and image encoder)."""
  import importlib.util
  return importlib.util.find_spec('tensorflow') is not None


def _cache_from_tfds(data_dir) -> str:
  """CIFAR-FS built from TFDS' cifar100 download (in TFDS' own data folder) and cached as
  data_dir/{split}.npz. When that cannot work nothing is tried: returns the note for the
  caller's error."""
  if not _has_tensorflow():
    return (' No CIFAR-FS download was tried: TFDS needs TensorFlow to prepare cifar100 '
            '(pip install tensorflow).')
  if not _online():
    return f' No CIFAR-FS download was tried: {_DOWNLOAD_HOST} is unreachable (offline?).'
  print(f'no CIFAR-FS in {data_dir!r}: building it from the TFDS cifar100 download')
  built = _tfds_cifar_fs(None, SPLITS, download=True)
  os.makedirs(data_dir, exist_ok=True)
  for split, d in built.items():
    tmp = os.path.join(data_dir, f'{split}.tmp.npz')
    np.savez(tmp, images=d.images, labels=d.labels, class_names=np.asarray(d.class_names))
    os.replace(tmp, os.path.join(data_dir, f'{split}.npz'))
  return ''


def _checked(d: SplitData, where: str) -> SplitData:
  if d.images.dtype != np.uint8 or d.images.ndim != 4 or d.images.shape[-1] != 3:
    raise DataError(f'{where}: images must be uint8 NHWC RGB, got {d.images.dtype} '
                    f'{d.images.shape}')
  if len(d.labels) != len(d.images):
    raise DataError(f'{where}: {len(d.labels)} labels for {len(d.images)} images')
  if len(d.labels) and (d.labels.min() < 0 or d.labels.max() >= d.num_classes):
    raise DataError(f'{where}: labels outside [0, {d.num_classes})')
  return d


def normalize(images: np.ndarray, dataset: str) -> np.ndarray:
  """uint8 NHWC -> float32, scaled to [0, 1] and standardised per channel."""
  mean, std = MEAN_STD[dataset]
  return ((images.astype(np.float32) / 255.0 - np.asarray(mean, np.float32))
          / np.asarray(std, np.float32))


def resize(images: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize of float NHWC images (MH: teachers of other input sizes)."""
  if images.shape[1] == size:
    return images
  import jax
  return np.asarray(jax.image.resize(images, images.shape[:1] + (size, size, images.shape[3]),
                                     'bilinear'))


def task_rng(seed: int, index: int) -> np.random.Generator:
  return np.random.default_rng([int(seed), int(index)])


def sample_rows(data: SplitData, ways: int, shots: int, queries: int, rng: np.random.Generator,
                class_indices: Optional[Sequence] = None) -> tuple:
  """One N-way K-shot episode's draw: its classes, and the split's rows of its support and of
  its query images (class by class, disjoint)."""
  class_indices = data.class_indices() if class_indices is None else class_indices
  if ways > data.num_classes:
    raise ValueError(f'{ways}-way episodes need {ways} classes; the split has {data.num_classes}')
  classes = rng.choice(data.num_classes, ways, replace=False)
  sx, qx = [], []
  for c in classes:
    rows = class_indices[c]
    if len(rows) < shots + queries:
      raise ValueError(f'class {data.class_names[c]!r} has {len(rows)} images, fewer than '
                       f'shots + queries = {shots + queries}')
    pick = rng.choice(rows, shots + queries, replace=False)
    sx.append(pick[:shots])
    qx.append(pick[shots:])
  return classes, np.concatenate(sx), np.concatenate(qx)


def images_at(data: SplitData, rows, image_size: Optional[int] = None) -> np.ndarray:
  """The split's images at `rows`, normalised float32 (resized to image_size if given)."""
  x = normalize(data.images[rows], data.dataset)
  return resize(x, image_size) if image_size else x


def sample_episode(data: SplitData, ways: int, shots: int, queries: int,
                   rng: np.random.Generator, class_indices: Optional[Sequence] = None,
                   image_size: Optional[int] = None) -> dict:
  """One N-way K-shot episode: normalised float32 images, labels 0..ways-1 in draw order."""
  classes, support, query = sample_rows(data, ways, shots, queries, rng, class_indices)
  return {
      'support_x': images_at(data, support, image_size),
      'support_y': np.repeat(np.arange(ways, dtype=np.int32), shots),
      'query_x': images_at(data, query, image_size),
      'query_y': np.repeat(np.arange(ways, dtype=np.int32), queries),
      'classes': classes.astype(np.int32),
  }


def episodes(data: SplitData, ways: int, shots: int, queries: int = 15, seed: int = 0,
             num: Optional[int] = None, start: int = 0, image_size: Optional[int] = None
             ) -> Iterator[dict]:
  """Episodes `start, start+1, ...`; episode i depends only on (seed, i)."""
  ci = data.class_indices()
  i = start
  while num is None or i < start + num:
    yield sample_episode(data, ways, shots, queries, task_rng(seed, i), ci, image_size)
    i += 1


def episode_rows(data: SplitData, ways: int, shots: int, queries: int = 15, seed: int = 0,
                 num: int = 1) -> np.ndarray:
  """(num, ways * (shots + queries)) split rows of `episodes`' episodes 0..num-1, support then
  query: the same draws, for a reader that embeds each image of the split once."""
  ci = data.class_indices()
  return np.stack([np.concatenate(sample_rows(data, ways, shots, queries, task_rng(seed, i),
                                              ci)[1:]) for i in range(num)])


def task_spec(ways: int, shots: int, queries: int, image_size: int) -> dict:
  """Shapes and dtypes of one episode's arrays (no `classes`): what a meta-test program takes,
  for lowering it without data (`utils.compiled_gflop`)."""
  import jax
  x = lambda n: jax.ShapeDtypeStruct((n, image_size, image_size, 3), np.float32)
  y = lambda n: jax.ShapeDtypeStruct((n,), np.int32)
  return {'support_x': x(ways * shots), 'support_y': y(ways * shots),
          'query_x': x(ways * queries), 'query_y': y(ways * queries)}


def stack(eps: Sequence[dict]) -> dict:
  return {k: np.stack([e[k] for e in eps]) for k in eps[0]}
