"""SH: same data (CIFAR-FS), heterogeneous teachers (conv4 / resnet10 / resnet18 by i % 3).

  python -m purer_jax.main --config=configs/sh.py:smoke --workdir=W

Variants: smoke | quick | 1shot | 5shot | mini | protonet | anil (comma-separated).
Measured here so far: smoke runs only (3 teachers, 20 iterations, minutes; accuracies at that
size are near Random and mean little). No SH cell of docs/RESULTS.md has been run yet.
"""
from purer_jax import config


def get_config(arg=''):
  return config.build('sh', arg)
