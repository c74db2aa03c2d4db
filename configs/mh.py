"""MH: teachers from CIFAR-FS and MiniImageNet, heterogeneous archs, inputs at 84 px.

  python -m purer_jax.main --config=configs/mh.py:smoke --workdir=W
  python -m purer_jax.main --config=configs/mh.py:quick --workdir=W    # planned <= 90 min here

Variants: smoke | quick | 1shot | 5shot | protonet | anil (comma-separated).
`:quick` is SH MiniImageNet's recipe (`config._quick_84px`: 3 teacher epochs at batch 16,
CIFAR-FS teachers on 300 images per class, one teacher per (dataset, arch) group refined per
iteration, shots + 3 bank images per class, 650 / 375 iterations at 1 / 5 shots). A CIFAR-FS
teacher's pseudo classes reach the meta-learner resized to 32 px and back
(`inversion.native_size`), as real CIFAR-FS images do. A 6-iteration probe ran end to end
(about 8 s per iteration while another run shared the cores); the cell has not been run.
Measured here so far: smoke runs only (3 teachers, 10 iterations, minutes; accuracies at that
size are at Random and mean little). No MH cell of docs/RESULTS.md has been run yet.
"""
from purer_jax import config


def get_config(arg=''):
  return config.build('mh', arg)
