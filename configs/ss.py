"""SS: same data (CIFAR-FS), same arch (13 disjoint Conv4 teachers), 5-way.

  python -m purer_jax.main --config=configs/ss.py --workdir=W         # paper protocol
  python -m purer_jax.main --config=configs/ss.py:smoke --workdir=W   # minutes on a 2-core CPU
  python -m purer_jax.main --config=configs/ss.py:quick --workdir=W   # <= 60 min on a 2-core CPU

Variants: smoke | quick | 1shot | 5shot | protonet | anil, comma-separated (`:quick,5shot`).
Measured here (README.md has the curves and the command per figure), 600 meta-test tasks:
  :quick        1-shot PURER 32.95 +- 0.68 (random 22.13, average 24.86), 40 min, teachers included
  :quick,5shot  5-shot PURER 44.25 +- 0.71 (random 21.70, average 25.26), ~55 min
  :smoke        a few minutes; accuracies mean little at that size
"""
from purer_jax import config


def get_config(arg=''):
  return config.build('ss', arg)
