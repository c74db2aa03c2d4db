from setuptools import find_packages, setup

setup(
    name='purer_jax',
    version='0.1.0',
    description='PURER (CVPR 2023) data-free meta-learning in JAX/Flax',
    packages=find_packages(include=['purer_jax', 'purer_jax.*']),
    python_requires='>=3.10',
    install_requires=[
        'jax>=0.4.35',
        'flax>=0.10',
        'optax>=0.2.3',
        'orbax-checkpoint>=0.9',
        'tensorflow-datasets>=4.9.6',
        'importlib_resources>=6.0',  # tfds imports it without declaring it
        'chex>=0.1.87',
        'ml-collections>=0.1.1',
        'absl-py>=2.0',
        'numpy>=1.26',
        'pillow>=10.0',
        'scipy>=1.10',  # the OTA baseline's exact assignment
        'matplotlib>=3.8',
        'tensorboardX>=2.6',
    ],
    extras_require={
        # Exact pin: takes the CPU wheel; a looser spec can pull a multi-GB CUDA build.
        'torch': ['torch==2.13.0', 'safetensors>=0.4'],
        # pytest-xdist: the fast path runs on both cores (`-n 2`, README.md).
        'test': ['pytest>=8.0', 'pytest-xdist>=3.5', 'torch==2.13.0', 'safetensors>=0.4'],
    },
)
