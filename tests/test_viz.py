"""The one image-grid writer."""
import numpy as np
import pytest
from PIL import Image

from purer_jax import data, viz


def _expected(img, dataset):
  mean, std = (np.asarray(v, np.float32) for v in data.MEAN_STD[dataset])
  return np.clip((img * std + mean) * 255.0, 0, 255).astype(np.uint8)


def test_grid_layout_and_per_row_normalisation(tmp_path):
  rng = np.random.default_rng(0)
  a, b, c = (rng.normal(size=(6, 4, 3)).astype(np.float32) for _ in range(3))
  rows = [[a, None, b], [c]]
  g = viz.grid(rows, ['cifar_fs', 'mini_imagenet'])
  assert g.shape == (2 * 8 + 2, 3 * 6 + 2, 3) and g.dtype == np.uint8
  np.testing.assert_array_equal(g[2:8, 2:6], _expected(a, 'cifar_fs'))
  np.testing.assert_array_equal(g[2:8, 14:18], _expected(b, 'cifar_fs'))
  np.testing.assert_array_equal(g[10:16, 2:6], _expected(c, 'mini_imagenet'))
  assert (g[2:8, 8:12] == 255).all() and (g[10:16, 8:] == 255).all()  # empty cells
  assert (g[:2] == 255).all() and (g[:, :2] == 255).all()  # padding
  path = tmp_path / 'bare.png'
  viz.save(str(path), rows, ['cifar_fs', 'mini_imagenet'])
  np.testing.assert_array_equal(np.asarray(Image.open(path)), g)  # exact pixels
  labelled = tmp_path / 'labelled.png'
  viz.save(str(labelled), rows, ['cifar_fs', 'mini_imagenet'], row_labels=['x', 'y'],
           title='t')
  assert np.asarray(Image.open(labelled)).shape[0] > g.shape[0]  # a figure around the grid
  with pytest.raises(ValueError, match='at least one image'):
    viz.grid([[None]], ['cifar_fs'])
