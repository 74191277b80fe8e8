"""m2t_jax: JAX/Flax reference implementation of M2T (ICCV 2023)."""

from setuptools import find_packages, setup

setup(
    name="m2t_jax",
    version="0.1.0",
    description="M2T: Masking Transformers Twice for Faster Decoding, in JAX/Flax",
    packages=find_packages(include=["m2t_jax", "m2t_jax.*"]),
    # Shipped models: manifest.json and one folder (config.json, params.npz) each.
    package_data={"m2t_jax.models": ["manifest.json", "*/config.json", "*/params.npz"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.35", "flax>=0.10", "optax>=0.2.3", "orbax-checkpoint>=0.10",
        "ml_collections>=0.1.1", "absl-py>=2.1", "numpy>=1.26", "constriction>=0.4",
        "pillow>=10", "grain>=0.2.6", "tensorflow-datasets>=4.9.7",
        "scipy>=1.11", "bjontegaard>=1.3", "matplotlib>=3.7", "scikit-image>=0.22",
        "tqdm>=4",
    ],
    # filelock: JAX locks its compilation cache with it (tests/conftest.py).
    extras_require={"test": ["pytest>=8", "pytest-xdist>=3.5", "ruff>=0.5", "filelock>=3.12"]},
    entry_points={"console_scripts": ["m2t=m2t_jax.app.cli:main"]},
)
