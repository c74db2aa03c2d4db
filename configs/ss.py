"""SS: same data (CIFAR-FS), same arch (13 disjoint Conv4 teachers), 5-way.

  python -m purer_jax.main --config=configs/ss.py --workdir=W         # paper protocol
  python -m purer_jax.main --config=configs/ss.py:smoke --workdir=W   # minutes on a 2-core CPU
  python -m purer_jax.main --config=configs/ss.py:quick --workdir=W   # <= 60 min on a 2-core CPU

Variants: smoke | quick | 1shot | 5shot | protonet | anil, comma-separated (`:quick,5shot`).
Expected results and run times are in README.md (measured, with the command that made them).
"""
from purer_jax import config


def get_config(arg=''):
  return config.build('ss', arg)
