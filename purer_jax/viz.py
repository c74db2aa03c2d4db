"""The one image-grid writer: pseudo episodes (train), teachers' pseudo classes (synthesize),
ICFIL's real and pseudo supports (icfil).

`grid` lays normalised NHWC images out as rows of cells, de-normalised per row with its
dataset's mean/std (an MH episode mixes datasets); `save` writes it as a PNG, bare pixels
or, with labels or a title, a matplotlib figure; `draw` puts it on a matplotlib axes beside
other plots.
"""
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from purer_jax import data as data_lib

PAD = 2  # white pixels around every cell


def grid(rows: Sequence[Sequence], datasets: Sequence[str], pad: int = PAD) -> np.ndarray:
  """uint8 (H, W, 3): rows[r][c] (a normalised HxWx3 image, or None for an empty cell) at
  row r, column c, de-normalised with data.MEAN_STD[datasets[r]], on white."""
  cells = [np.asarray(img) for row in rows for img in row if img is not None]
  if not cells:
    raise ValueError('an image grid needs at least one image')
  h, w = cells[0].shape[:2]
  cols = max(len(row) for row in rows)
  out = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
  for r, (row, dataset) in enumerate(zip(rows, datasets, strict=True)):
    mean, std = (np.asarray(v, np.float32) for v in data_lib.MEAN_STD[dataset])
    for c, img in enumerate(row):
      if img is None:
        continue
      y, x = pad + r * (h + pad), pad + c * (w + pad)
      out[y:y + h, x:x + w] = np.clip((np.asarray(img) * std + mean) * 255.0, 0, 255).astype(
          np.uint8)
  return out


def draw(ax, rows, datasets, *, row_labels: Sequence[str] = (),
         col_labels: Sequence[str] = (), pad: int = PAD):
  """`grid` on a matplotlib axes, rows and columns labelled at their centres."""
  img = grid(rows, datasets, pad)
  ax.imshow(img, interpolation='nearest')
  cell = ((img.shape[0] - pad) / len(rows), (img.shape[1] - pad) / max(len(r) for r in rows))
  ax.set_yticks([pad / 2 + cell[0] * (i + 0.5) for i in range(len(row_labels))],
                list(row_labels), fontsize=8)
  ax.set_xticks([pad / 2 + cell[1] * (i + 0.5) for i in range(len(col_labels))],
                list(col_labels), fontsize=8)
  ax.xaxis.tick_top()
  ax.tick_params(length=0)
  for side in ax.spines.values():
    side.set_visible(False)


def save_teacher_classes(path: str, images, layout, teacher, position: int, shots: int = 8):
  """A labelled grid of one teacher's pseudo classes (rows, named) x their first `shots`
  bank images. layout: the bank's (`purer_jax.bank.Layout`); position: the teacher's in it."""
  classes = layout.classes_of(position)
  shots = min(shots, layout.spc)
  names = [teacher.class_names[layout.label[c]] if teacher.class_names else str(layout.label[c])
           for c in classes]
  save(path, np.asarray(images[classes, :shots]), [teacher.dataset] * len(classes),
       row_labels=names, title=f'{teacher.dataset}, from {teacher.arch} (teacher {teacher.index})')


def save(path: str, rows, datasets, *, row_labels: Sequence[str] = (),
         col_labels: Sequence[str] = (), title: Optional[str] = None, pad: int = PAD):
  """A PNG of `grid`: its exact pixels, or a labelled figure when labels or a title are given."""
  if not (row_labels or col_labels or title):
    Image.fromarray(grid(rows, datasets, pad)).save(path)
    return
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  cols = max(len(r) for r in rows)
  fig, ax = plt.subplots(figsize=(0.9 * cols + 1.5, 0.9 * len(rows) + 0.6))
  draw(ax, rows, datasets, row_labels=row_labels, col_labels=col_labels, pad=pad)
  if title:
    ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def save_episode_png(path: str, task: dict, class_datasets) -> None:
  """A pseudo episode as a grid: one row per class, support | query, de-normalised.

  class_datasets: per class of the episode, the dataset whose normalisation its pixels use.
  """
  ways = len(task['classes'])
  sx = task['support_x'].reshape((ways, -1) + task['support_x'].shape[1:])
  qx = task['query_x'].reshape((ways, -1) + task['query_x'].shape[1:])
  # An empty column between support and query.
  save(path, [list(s) + [None] + list(q) for s, q in zip(sx, qx)], class_datasets)


def save_arch_pngs(prefix: str, images, layout, teachers) -> list:
  """For a pool of several architectures (SH, MH), `<prefix>_<dataset>_<arch>.png` per
  dataset and architecture: the pseudo classes of its first teacher. Returns the paths."""
  firsts = {}
  for g in layout.groups:
    for pos in g.members:
      firsts.setdefault((teachers[pos].dataset, g.arch), pos)
  if len({arch for _, arch in firsts}) < 2:
    return []
  paths = []
  for (dataset, arch), pos in sorted(firsts.items()):
    paths.append(f'{prefix}_{dataset}_{arch}.png')
    save_teacher_classes(paths[-1], images, layout, teachers[pos], pos)
  return paths
