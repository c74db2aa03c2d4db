"""MH: teachers from CIFAR-FS and MiniImageNet, heterogeneous archs, inputs at 84 px.

  python -m purer_jax.main --config=configs/mh.py:smoke --workdir=W

Variants: smoke | quick | 1shot | 5shot | protonet | anil (comma-separated).
Measured here so far: smoke runs only (3 teachers, 10 iterations, minutes; accuracies at that
size are at Random and mean little). No MH cell of docs/RESULTS.md has been run yet.
"""
from purer_jax import config


def get_config(arg=''):
  return config.build('mh', arg)
