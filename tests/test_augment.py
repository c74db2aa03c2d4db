"""augment: random flips and translations, and the config strings that choose them."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from purer_jax import augment


def test_augment_flips_and_shifts_each_image():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(64, 8, 8, 3)), jnp.float32)
  f = jax.jit(lambda x, k: augment.augment(x, k, flip=True, shift=0))(x, jax.random.key(1))
  flipped = np.all(np.isclose(f, x[:, :, ::-1]), axis=(1, 2, 3))
  same = np.all(np.isclose(f, x), axis=(1, 2, 3))
  assert np.all(flipped | same) and 10 < flipped.sum() < 54
  s = np.asarray(augment.augment(x, jax.random.key(2), flip=False, shift=2))
  for i in range(64):  # each output is x[i] translated by (dy, dx) in [-2, 2], zero-filled
    hits = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
            if np.array_equal(s[i], _translate(np.asarray(x[i]), dy, dx))]
    assert len(hits) == 1, i
  assert not np.array_equal(s, np.asarray(x))


def _translate(im, dy, dx):
  out = np.zeros_like(im)
  h, w = im.shape[:2]
  out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
      im[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
  return out


def test_settings_read_a_config_section_and_name_it_in_errors():
  cfg = ml_collections.ConfigDict({'augment': 'flip,shift', 'shift': 3})
  assert augment.settings(cfg) == {'flip': True, 'shift': 3}
  cfg.augment = ''
  assert augment.settings(cfg) == {'flip': False, 'shift': 0}
  cfg.augment = 'crop'
  with pytest.raises(ValueError, match=r"config\.teachers\.augment must list 'flip' and/or"):
    augment.settings(cfg, 'teachers')
