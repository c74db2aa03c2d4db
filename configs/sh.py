"""SH: same data (CIFAR-FS), heterogeneous teachers (conv4 / resnet10 / resnet18 by i % 3).

  python -m purer_jax.main --config=configs/sh.py:smoke --workdir=W

Variants: smoke | quick | 1shot | 5shot | protonet | anil. Figures in README.md.
"""
from purer_jax import config


def get_config(arg=''):
  return config.build('sh', arg)
