"""SH: same data (CIFAR-FS), heterogeneous teachers (conv4 / resnet10 / resnet18 by i % 3).

  python -m purer_jax.main --config=configs/sh.py:smoke --workdir=W

  python -m purer_jax.main --config=configs/sh.py:quick --workdir=W      # <= 90 min here

Variants: smoke | quick | 1shot | 5shot | mini | protonet | anil (comma-separated).
Measured here (600 meta-test tasks, checkpoint chosen on meta-val, docs/RESULTS.md):
  :quick   1-shot PURER 33.00 +- 0.73, Random 22.13 +- 0.41 (paired +10.86 +- 0.78); random
           init (the pool has three archs); best meta-val 29.21 at iteration 1,000 of 1,250.
           13 teachers (held-out 72.6% mean: Conv4 77.9%, ResNet-10 68.4%, ResNet-18 70.0%)
           in 26 min, meta-training 49 min (2.3 s/iteration), meta-test 1 min: 76 min of work,
           82 min on the clock with a restart (other jobs shared the cores while the teachers
           trained).
  :smoke   minutes; accuracies at that size are near Random and mean little.
"""
from purer_jax import config


def get_config(arg=''):
  return config.build('sh', arg)
