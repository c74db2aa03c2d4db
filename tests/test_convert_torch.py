"""The PyTorch importer against models with the original PURER code's module layout."""
import functools
import os
import pickle
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
import safetensors.numpy
import torch

from purer_jax import convert_torch, data, evaluate, models, zoo
from tests import torch_reference
from purer_jax.convert_torch import CheckpointError


torch_model = torch_reference.random_model


@functools.partial(jax.jit, static_argnames='model')
def _apply(variables, x, *, model):
  """Eval-mode logits, jitted: eager, each operation compiles on its own (ResNet-50: 6.9
  CPU-s against 4.3)."""
  return model.apply(variables, x, train=False)


def torch_logits(m, x_nhwc):
  with torch.no_grad():
    return m(torch_reference.nchw(x_nhwc)).numpy()


def images(split, n, size):
  x = data.normalize(split.images[[rows[0] for rows in split.class_indices()[:n]]], 'cifar_fs')
  return data.resize(x, size)


@pytest.fixture(scope='module')
def conv4_sd():
  return torch_model('conv4', 5, 32, seed=0).state_dict()


# (arch, image size, batch, head keys of the original trunk layout)
CASES = [('conv4', 32, 8, 'trunk.5'), ('conv4', 84, 4, 'trunk.5'), ('resnet10', 32, 8, 'trunk.8'),
         ('resnet18', 32, 4, 'trunk.12'), ('resnet50', 32, 2, 'trunk.20')]


@pytest.mark.parametrize('arch,size,batch,head', CASES)
def test_logits_match_pytorch(arch, size, batch, head, meta_train, tmp_path):
  m = torch_model(arch, 5, size, seed=1)
  sd = m.state_dict()
  assert f'{head}.weight' in sd  # the test model reproduces the original keys
  if arch == 'conv4':
    assert 'trunk.3.trunk.0.weight' in sd and 'trunk.3.BN.running_var' in sd
  if arch == 'resnet50':
    assert 'trunk.2.shortcut.weight' in sd and not any('BNshortcut' in k for k in sd)
  path = str(tmp_path / 'model_0.pth')
  torch.save(sd, path)
  x = images(meta_train, batch, size)
  ref = torch_logits(m, x)
  variables = convert_torch.load(path, arch, 5, size)
  out = np.asarray(_apply(variables, x, model=models.create(arch, 5, size)))
  err = np.max(np.abs(out - ref)) / np.max(np.abs(ref))
  print(f'{arch} {size}px batch {batch}: max|logit| {np.max(np.abs(ref)):.3g}, '
        f'max|diff| {np.max(np.abs(out - ref)):.3g}, relative {err:.3g}')
  assert out.shape == ref.shape
  assert err <= 1e-4
  assert np.std(ref) > 1e-3  # logits vary, so a constant output could not pass


def test_safetensors_and_in_memory_state_dict(conv4_sd, meta_train, tmp_path):
  path = str(tmp_path / 'model_0.safetensors')
  safetensors.numpy.save_file({k: v.numpy().copy() for k, v in conv4_sd.items()}, path)
  from_file = convert_torch.load(path, 'conv4', 5, 32)
  from_dict = convert_torch.load(conv4_sd, 'conv4', None, 32)  # num_classes from the head
  chex.assert_trees_all_equal(from_file, from_dict)
  m = torch_model('conv4', 5, 32, seed=0)
  x = images(meta_train, 4, 32)
  out = _apply(from_file, x, model=models.create('conv4', 5, 32))
  np.testing.assert_allclose(out, torch_logits(m, x), atol=1e-4 * np.abs(out).max())


@pytest.mark.parametrize('arch', ['conv4', 'resnet10'])
def test_to_state_dict_inverts_convert(arch, meta_train):
  model = models.create(arch, 5, 32)
  rng = np.random.default_rng(0)
  v = jax.tree.map(lambda a: np.asarray(a) + rng.uniform(0.1, 0.5, a.shape).astype(np.float32),
                   models.init(model, jax.random.key(0)))  # every BN statistic non-trivial
  sd = convert_torch.to_state_dict(v, arch, 32)
  if arch == 'conv4':
    assert 'trunk.3.trunk.0.weight' in sd and 'trunk.3.BN.running_var' in sd
  chex.assert_trees_all_equal(convert_torch.convert(sd, arch, 5, 32), v)
  x = images(meta_train, 4, 32)
  out = np.asarray(_apply(v, x, model=model))
  np.testing.assert_allclose(torch_logits(torch_reference.from_flax(v, arch, 32), x), out,
                             atol=1e-4 * np.abs(out).max())


class Evil:
  """Pickles as a call to `fn(*args)` at load time."""

  def __init__(self, fn, *args):
    self.fn, self.args = fn, args

  def __reduce__(self):
    return self.fn, self.args


@pytest.mark.parametrize('kind', ['torch_save_os_system', 'raw_pickle_open'])
def test_malicious_pickle_is_refused_and_never_runs(kind, conv4_sd, tmp_path):
  marker = tmp_path / 'pwned'
  path = tmp_path / 'model_0.pth'
  if kind == 'torch_save_os_system':
    payload = dict(conv4_sd, evil=Evil(os.system, f'touch {marker}'))
    torch.save(payload, path)
    unsafe = lambda: torch.load(path, weights_only=False)
  else:
    with open(path, 'wb') as f:
      pickle.dump({'evil': Evil(open, str(marker), 'w')}, f, protocol=2)
    unsafe = lambda: pickle.load(open(path, 'rb'))
  unsafe()  # the payload is live: an unsafe load creates the file
  assert marker.exists()
  marker.unlink()
  with pytest.raises(CheckpointError, match='refused to load .*weights-only unpickling'):
    convert_torch.load(str(path), 'conv4', 5, 32)
  with pytest.raises(CheckpointError, match='refused to load'):
    convert_torch.import_pool(str(tmp_path), str(tmp_path / 'w'), arch='conv4', image_size=32,
                              dataset='cifar_fs')
  assert not marker.exists()


@pytest.fixture(scope='module')
def resnet10_sd():
  return torch_model('resnet10', 5, 32, seed=0).state_dict()


def _conv4(**changes):
  """The conv4 state_dict with keys (`.` written `__`) replaced, or removed when None."""
  def make(sd):
    out = dict(sd)
    for k, v in changes.items():
      k = k.replace('__', '.')
      if v is None:
        out.pop(k)
      else:
        out[k] = v(sd) if callable(v) else v
    return out
  return make


# case: (state_dict from the conv4 one, load kwargs, expected error)
BAD = {
    'unknown arch': (_conv4(), dict(arch='vgg16'), r"unknown arch 'vgg16'"),
    'wrong arch': (lambda sd: torch_model('resnet10', 5, 32, 0).state_dict(), {},
                   r"is a resnet10 checkpoint, not conv4: pass arch='resnet10'"),
    'wrong arch resnet50 as resnet18': (
        lambda sd: torch_model('resnet50', 5, 32, 0).state_dict(), dict(arch='resnet18'),
        r"is a resnet50 checkpoint, not resnet18: pass arch='resnet50'"),
    'wrong num_classes': (_conv4(), dict(num_classes=10),
                          r"'trunk.5.(weight|bias)' has shape \(5.*needs \(10.*head has 5 "
                          r'classes, not num_classes=10'),
    'wrong image size': (_conv4(), dict(image_size=84),
                         r"'trunk.5.weight' has shape \(5, 128\), conv4 needs \(5, 800\).*"
                         r'image_size=84'),
    'shape mismatch': (_conv4(trunk__1__C__weight=torch.zeros(16, 32, 3, 3),
                              trunk__1__trunk__0__weight=torch.zeros(16, 32, 3, 3)), {},
                       r"'trunk.1.C.weight' has shape \(16, 32, 3, 3\), conv4 needs "
                       r'\(32, 32, 3, 3\)'),
    'missing keys': (_conv4(trunk__2__BN__running_var=None, trunk__2__trunk__1__running_var=None),
                     {}, r'missing keys: trunk.2.BN.running_var$'),
    'unexpected keys': (_conv4(trunk__6__weight=torch.zeros(3)), {},
                        r'unexpected keys: trunk.6.weight$'),
    'missing and unexpected': (_conv4(trunk__3__C__bias=None, trunk__3__trunk__0__bias=None,
                                      trunk__3__C__offset=torch.zeros(32)), {},
                               r'missing keys: trunk.3.C.bias; unexpected keys: trunk.3.C.offset'),
    'differing aliases': (_conv4(trunk__0__trunk__0__weight=lambda sd: sd['trunk.0.C.weight']
                                 + 1e-3), {}, r"'trunk.0.C.weight' and 'trunk.0.trunk.0.weight' .*differ "
                              r'\(max \|diff\| 0.001\)'),
    'not a tensor': (_conv4(epoch=3), {}, r"'epoch' holds a int, not a tensor"),
}


@pytest.mark.parametrize('case', BAD)
def test_bad_input_gives_named_error(case, conv4_sd):
  make, kwargs, pattern = BAD[case]
  kwargs = dict(dict(arch='conv4', num_classes=5, image_size=32), **kwargs)
  with pytest.raises(CheckpointError, match=pattern):
    convert_torch.load(make(conv4_sd), **kwargs)


def test_aliases_alone_and_num_batches_tracked_are_accepted(conv4_sd):
  only_c = {k: v for k, v in conv4_sd.items() if '.trunk.' not in k}
  only_trunk = {k: v for k, v in conv4_sd.items() if not ('.C.' in k or '.BN.' in k)}
  assert any(k.endswith('num_batches_tracked') for k in only_trunk)
  a = convert_torch.load(only_c, 'conv4', 5, 32)
  b = convert_torch.load(only_trunk, 'conv4', 5, 32)
  chex.assert_trees_all_equal(a, b)


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_truncated_or_missing_file(suffix, conv4_sd, tmp_path):
  path = tmp_path / f'model_0{suffix}'
  if suffix == '.pth':
    torch.save(conv4_sd, path)
  else:
    safetensors.numpy.save_file({k: v.numpy().copy() for k, v in conv4_sd.items()}, str(path))
  blob = path.read_bytes()
  path.write_bytes(blob[:len(blob) // 2])
  with pytest.raises(CheckpointError, match='truncated'):
    convert_torch.load(str(path), 'conv4', 5, 32)
  path.write_bytes(b'')
  with pytest.raises(CheckpointError, match='truncated'):
    convert_torch.load(str(path), 'conv4', 5, 32)
  with pytest.raises(CheckpointError, match='does not exist'):
    convert_torch.load(str(tmp_path / 'nope.pth'), 'conv4', 5, 32)


def test_import_pool_of_13_conv4_teachers(meta_train, synthetic_dir, tmp_path):
  src = tmp_path / 'model_try'
  src.mkdir()
  sds = []
  for i in range(13):
    sd = torch_model('conv4', 5 if i < 12 else 4, 32, seed=100 + i).state_dict()
    torch.save(sd, src / f'model_{i}.pth')
    sds.append(sd)
  workdir = str(tmp_path / 'w')
  entries = convert_torch.import_pool(str(src), workdir, arch='conv4', image_size=32,
                                      dataset='cifar_fs', data_dir=synthetic_dir)
  assert len(entries) == 13
  teachers = zoo.load(workdir)
  assert [t.index for t in teachers] == list(range(13))
  for t in teachers:
    want = list(range(5 * t.index, min(5 * t.index + 5, 64)))
    assert (t.arch, t.image_size, t.dataset, t.heldout_acc) == ('conv4', 32, 'cifar_fs', None)
    assert t.classes == want and t.num_classes == len(want)
    assert t.class_names == [meta_train.class_names[c] for c in want]
  assert teachers[-1].num_classes == 4
  chex.assert_trees_all_equal(teachers[7].variables, convert_torch.load(sds[7], 'conv4', 5, 32))

  # The `average` baseline = the import of the tensor-wise mean of the PyTorch teachers
  # (each aliased tensor once; the 4-class head left out), by linearity of the conversion.
  meta = models.create('conv4', 5, 32)
  avg = evaluate.baseline_params('average', teachers, meta, jax.random.key(0))
  mean_sd = {k: torch.stack([sd[k].float() for sd in sds if sd[k].shape == sds[0][k].shape])
             .mean(0) for k in sds[0] if not k.endswith('num_batches_tracked')}
  want = convert_torch.load(mean_sd, 'conv4', 5, 32)['params']
  chex.assert_trees_all_close(avg, want, atol=1e-6)

  # Re-importing the same folder is idempotent; another folder into the same zoo is refused.
  assert len(convert_torch.import_pool(str(src), workdir, arch='conv4', image_size=32,
                                       dataset='cifar_fs')) == 13
  torch.save(sds[0], tmp_path / 'model_0.pth')
  with pytest.raises(CheckpointError, match='already holds teachers from .*model_try'):
    convert_torch.import_pool(str(tmp_path), workdir, arch='conv4', image_size=32,
                              dataset='cifar_fs')


def test_pool_assignment_errors(conv4_sd, tmp_path):
  torch.save(conv4_sd, tmp_path / 'model_12.pth')  # 5 classes at index 12: classes 60..64
  kw = dict(arch='conv4', image_size=32, dataset='cifar_fs')
  with pytest.raises(CheckpointError, match='classes .*64.*split has 64 classes'):
    convert_torch.import_pool(str(tmp_path), str(tmp_path / 'w'), **kw)
  with pytest.raises(CheckpointError, match='more than ways=4'):
    convert_torch.import_pool(str(tmp_path), str(tmp_path / 'w'), ways=4, **kw)
  with pytest.raises(CheckpointError, match='do not record their classes'):
    convert_torch.import_pool(str(tmp_path), str(tmp_path / 'w'), assignment='random', **kw)
  given = [[]] * 12 + [[1, 3, 5, 7, 9]]
  (t,) = convert_torch.import_pool(str(tmp_path), str(tmp_path / 'w'), assignment=given, **kw)
  assert t['classes'] == [1, 3, 5, 7, 9] and t['class_names'][0] == 'aquarium_fish'
  with pytest.raises(CheckpointError, match='no model_'):
    convert_torch.import_pool(str(tmp_path / 'w'), str(tmp_path / 'w2'), **kw)


def test_cli_single_file_and_pool(conv4_sd, resnet10_sd, tmp_path, capsys):
  src = tmp_path / 'src'
  src.mkdir()
  torch.save(conv4_sd, src / 'model_2.pth')
  convert_torch.main(['--arch', 'conv4', '--num-classes', '5', '--image-size', '32',
                      str(src / 'model_2.pth'), str(tmp_path / 'one')])
  (t,) = zoo.load(str(tmp_path / 'one'))
  assert (t.index, t.classes) == (2, [10, 11, 12, 13, 14])
  assert t.class_names == list(data.CIFAR_FS_CLASSES['meta_train'][10:15])
  torch.save(resnet10_sd, src / 'model_1.pth')
  with pytest.raises(SystemExit) as exit_:
    convert_torch.main(['--pool', '--arch', 'conv4', '--image-size', '32', str(src),
                        str(tmp_path / 'pool')])
  assert exit_.value.code == 1  # one message, no traceback
  assert 'model_1.pth is a resnet10 checkpoint, not conv4' in capsys.readouterr().err
  convert_torch.main(['--pool', '--arch', 'conv4', 'resnet10', '--image-size', '32', str(src),
                      str(tmp_path / 'pool')])
  assert [(t.index, t.arch) for t in zoo.load(str(tmp_path / 'pool'))] == [(1, 'resnet10'),
                                                                           (2, 'conv4')]
  assert 'resnet10' in capsys.readouterr().out


@pytest.mark.slow
def test_importing_purer_jax_needs_no_torch(tmp_path, conv4_sd):
  path = str(tmp_path / 'model_0.safetensors')
  safetensors.numpy.save_file({k: v.numpy().copy() for k, v in conv4_sd.items()}, path)
  code = ('import sys; sys.modules["torch"] = None\n'
          'import purer_jax, purer_jax.convert_torch as c\n'
          f'v = c.load({path!r}, "conv4", 5, 32)\n'
          'print(v["params"]["head"]["kernel"].shape)')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       env=dict(os.environ, JAX_PLATFORMS='cpu'), check=True)
  assert out.stdout.strip() == '(128, 5)'
