"""purer_jax: PURER (CVPR 2023) data-free meta-learning in JAX/Flax."""
__version__ = '0.1.0'
