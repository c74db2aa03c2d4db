"""Loaders, normalisation and episodes (real shared data: the `slow` tests)."""
import os
import tempfile

import numpy as np
import pytest

from purer_jax import data
from tests.conftest import CIFAR_DIR, MINI_DIR


@pytest.mark.slow
def test_cifar_fs_meta_test_shapes():
  d = data.load('cifar_fs', 'meta_test', CIFAR_DIR)
  assert d.images.shape == (12000, 32, 32, 3) and d.images.dtype == np.uint8
  assert d.num_classes == 20
  assert np.bincount(d.labels).tolist() == [600] * 20
  assert list(d.class_names) == data.CIFAR_FS_CLASSES['meta_test']


@pytest.mark.slow
def test_cifar_fs_train_val_classes(cifar_train):
  assert cifar_train.num_classes == 64 and len(cifar_train.images) == 38400
  assert list(cifar_train.class_names) == data.CIFAR_FS_CLASSES['meta_train']
  assert data.load('cifar_fs', 'meta_val', CIFAR_DIR).num_classes == 16


@pytest.mark.slow
def test_mini_imagenet_folders():
  d = data.load('mini_imagenet', 'meta_test', MINI_DIR)
  assert d.images.shape == (2000, 84, 84, 3)
  assert d.num_classes == 20 and list(d.class_names) == sorted(d.class_names)
  assert np.bincount(d.labels).tolist() == [100] * 20


def test_normalize_matches_formula():
  x = np.array([[[[0, 128, 255]]]], np.uint8)
  mean, std = data.MEAN_STD['cifar_fs']
  expected = (np.array([0, 128, 255]) / 255.0 - mean) / std
  np.testing.assert_allclose(data.normalize(x, 'cifar_fs')[0, 0, 0], expected, rtol=1e-5)


@pytest.mark.parametrize('ways,shots', [(5, 1), (5, 5)])
def test_episodes_deterministic_and_disjoint(ways, shots, meta_val):
  d = meta_val
  a = list(data.episodes(d, ways, shots, 15, seed=3, num=4))
  b = list(data.episodes(d, ways, shots, 15, seed=3, num=4))
  c = list(data.episodes(d, ways, shots, 15, seed=4, num=4))
  for ea, eb in zip(a, b):
    for k in ea:
      np.testing.assert_array_equal(ea[k], eb[k])
  assert any(not np.array_equal(ea['support_x'], ec['support_x']) for ea, ec in zip(a, c))
  # Episode 2 alone (start=2) is the same task as the third of the stream: tasks are addressable.
  np.testing.assert_array_equal(next(data.episodes(d, ways, shots, 15, 3, start=2))['query_x'],
                                a[2]['query_x'])
  for e in a:
    assert e['support_x'].shape == (ways * shots, 32, 32, 3)
    assert e['query_x'].shape == (ways * 15, 32, 32, 3)
    assert e['support_y'].tolist() == np.repeat(np.arange(ways), shots).tolist()
    assert e['query_y'].tolist() == np.repeat(np.arange(ways), 15).tolist()
    assert len(set(e['classes'].tolist())) == ways
    # Disjoint support/query: no query image equals a support image.
    s = e['support_x'].reshape(len(e['support_x']), -1)
    q = e['query_x'].reshape(len(e['query_x']), -1)
    assert not (s[:, None, :] == q[None, :, :]).all(-1).any()


def test_missing_folder_error_names_path(tmp_path, monkeypatch):
  monkeypatch.setattr(data, '_online', lambda *a, **k: False)
  missing = str(tmp_path / 'nowhere')
  with pytest.raises(data.DataError, match='nowhere.*does not exist'):
    data.load('cifar_fs', 'meta_test', missing)


def test_malformed_folders_error(tmp_path):
  (tmp_path / 'meta_test').mkdir()
  with pytest.raises(data.DataError, match='no class sub-folders'):
    data.load('mini_imagenet', 'meta_test', str(tmp_path))
  (tmp_path / 'meta_test' / 'n0001').mkdir()
  with pytest.raises(data.DataError, match='has no images'):
    data.load('mini_imagenet', 'meta_test', str(tmp_path))


def test_damaged_npz_error(tmp_path):
  (tmp_path / 'meta_test.npz').write_bytes(b'PK\x03\x04 not really a zip')
  with pytest.raises(data.DataError, match='damaged'):
    data.load('cifar_fs', 'meta_test', str(tmp_path))
  np.savez(tmp_path / 'meta_val.npz', images=np.zeros((2, 32, 32, 3), np.uint8))
  with pytest.raises(data.DataError, match='lacks arrays'):
    data.load('cifar_fs', 'meta_val', str(tmp_path))


def test_unknown_names():
  with pytest.raises(data.DataError, match='unknown dataset'):
    data.load('imagenet', 'meta_test', CIFAR_DIR)
  with pytest.raises(data.DataError, match='unknown split'):
    data.load('cifar_fs', 'train', CIFAR_DIR)


def test_tfds_source_maps_cifar100_classes(tmp_path, monkeypatch):
  """CIFAR-FS from TFDS' cifar100 (mocked offline records): only the split's classes, relabelled."""
  tfds = pytest.importorskip('tensorflow_datasets')
  alphabetical = sorted(c for cs in data.CIFAR_FS_CLASSES.values() for c in cs)
  val_ids = {alphabetical.index(c): i for i, c in enumerate(data.CIFAR_FS_CLASSES['meta_val'])}
  temp = tmp_path / 'temp'  # TFDS leaves empty mkdtemp folders: the loader must clean them
  temp.mkdir()
  monkeypatch.setattr(tempfile, 'tempdir', str(temp))
  with tfds.testing.mock_data(num_examples=300, policy=tfds.testing.MockPolicy.USE_CODE):
    d = data.load('cifar_fs', 'meta_val', str(tmp_path), source='tfds')
    assert not os.listdir(temp)
    raw = [int(ex['label']) for part in ('train', 'test')
           for ex in tfds.data_source('cifar100', split=part, download=False)]
  expected = sorted(val_ids[y] for y in raw if y in val_ids)
  assert d.images.shape[1:] == (32, 32, 3) and d.images.dtype == np.uint8
  assert list(d.class_names) == data.CIFAR_FS_CLASSES['meta_val']
  assert 0 < len(expected) < len(raw)
  assert d.labels.tolist() == expected  # only the split's classes, relabelled, grouped by class


def test_tfds_source_not_prepared(tmp_path):
  pytest.importorskip('tensorflow_datasets')
  with pytest.raises(data.DataError, match='not prepared'):
    data.load('cifar_fs', 'meta_test', str(tmp_path / 'empty'), source='tfds')


def test_auto_builds_cifar_fs_from_the_tfds_download_once(tmp_path, monkeypatch):
  """A fresh machine online: CIFAR-FS from TFDS' cifar100 (mocked), cached as {split}.npz."""
  tfds = pytest.importorskip('tensorflow_datasets')
  monkeypatch.setattr(data, '_has_tensorflow', lambda: True)
  monkeypatch.setattr(data, '_online', lambda *a, **k: True)
  fresh = str(tmp_path / 'cifar-fs')
  with tfds.testing.mock_data(num_examples=300, policy=tfds.testing.MockPolicy.USE_CODE):
    built = data.load('cifar_fs', 'meta_val', fresh)
    from_tfds = data.load('cifar_fs', 'meta_val', str(tmp_path), source='tfds')
  assert sorted(os.listdir(fresh)) == ['meta_test.npz', 'meta_train.npz', 'meta_val.npz']
  for a, b in ((built, from_tfds), (data.load('cifar_fs', 'meta_val', fresh), from_tfds)):
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.class_names == b.class_names
  monkeypatch.setattr(data, '_online', lambda *a, **k: pytest.fail('asked the network again'))
  data.check('cifar_fs', 'meta_test', fresh)  # the cache serves every split from now on


def test_auto_offline_fails_at_once(tmp_path, monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')
  monkeypatch.setattr(data, '_has_tensorflow', lambda: True)
  monkeypatch.setattr(data, '_online', lambda *a, **k: False)
  monkeypatch.setattr(tfds, 'data_source', lambda *a, **k: pytest.fail('TFDS was called'))
  for split_dir in (tmp_path / 'nowhere', tmp_path):  # no folder; a folder without the split
    with pytest.raises(data.DataError, match=r'(does not exist|neither meta_val.npz).* No '
                       r'CIFAR-FS download was tried: www.cs.toronto.edu is unreachable'):
      data.check('cifar_fs', 'meta_val', str(split_dir))
  assert not os.listdir(tmp_path)
  monkeypatch.setattr(data, '_has_tensorflow', lambda: False)  # would download, then fail
  monkeypatch.setattr(data, '_online', lambda *a, **k: pytest.fail('asked the network'))
  with pytest.raises(data.DataError, match='TFDS needs TensorFlow to prepare cifar100'):
    data.check('cifar_fs', 'meta_val', str(tmp_path))


def test_online_check_is_one_short_connection(monkeypatch):
  calls = []
  def connect(address, timeout):
    calls.append((address, timeout))
    raise OSError('network is unreachable')
  monkeypatch.setattr(data.socket, 'create_connection', connect)
  assert not data._online()
  assert calls == [(('www.cs.toronto.edu', 443), 3.0)]
