"""Random flips and translations of image batches, as pure functions of a key: the teachers'
real training images (config.teachers.augment) and the pseudo meta-batch (config.train.augment)
take the same transform.
"""
import jax
import jax.numpy as jnp

KINDS = ('flip', 'shift')


def augment(x, key, *, flip: bool, shift: int):
  """Per image of x (N, H, W, C): a random horizontal flip and a random translation by up to
  `shift` px, the uncovered border zero (the dataset mean in normalised space)."""
  kf, ks = jax.random.split(key)
  n, h, w, c = x.shape
  if flip:
    x = jnp.where(jax.random.bernoulli(kf, 0.5, (n, 1, 1, 1)), x[:, :, ::-1], x)
  if shift:
    padded = jnp.pad(x, ((0, 0), (shift, shift), (shift, shift), (0, 0)))
    offsets = jax.random.randint(ks, (n, 2), 0, 2 * shift + 1)
    x = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))(
        padded, offsets)
  return x


def augment_tasks(tasks: dict, key, *, flip: bool, shift: int) -> dict:
  """`augment` on every support and query image of a stacked meta-batch."""
  out = dict(tasks)
  for name, k in zip(('support_x', 'query_x'), jax.random.split(key)):
    x = tasks[name]
    out[name] = augment(x.reshape((-1,) + x.shape[-3:]), k, flip=flip, shift=shift
                        ).reshape(x.shape)
  return out


def settings(section, name: str = 'train') -> dict:
  """{'flip', 'shift'} from a config section's `augment` ('', 'flip', 'shift' or 'flip,shift')
  and `shift` (px); `name` is the section's, for the error."""
  kinds = {k for k in section.augment.split(',') if k}
  if kinds - set(KINDS):
    raise ValueError(f"config.{name}.augment must list 'flip' and/or 'shift', got "
                     f'{section.augment!r}')
  return {'flip': 'flip' in kinds, 'shift': int(section.shift) if 'shift' in kinds else 0}
