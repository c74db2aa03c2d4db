"""MH: teachers from CIFAR-FS and MiniImageNet, heterogeneous archs, inputs at 84 px.

  python -m purer_jax.main --config=configs/mh.py:smoke --workdir=W

Variants: smoke | quick | 1shot | 5shot | protonet | anil. Figures in README.md.
"""
from purer_jax import config


def get_config(arg=''):
  return config.build('mh', arg)
