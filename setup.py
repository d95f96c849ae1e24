"""Install mtv: Multiview Transformers for Video Recognition in Keras 3."""

from setuptools import find_packages, setup

# configs/ and zoo/ stay at the top of the repository (the layout is part of the project's definition)
# and ship inside the wheel as the packages mtv.configs and mtv.zoo, found through importlib.resources.
CONFIG_PACKAGES = ["mtv.configs"] + [f"mtv.configs.{name}" for name in find_packages(where="configs")]

setup(
    name="mtv",
    version="0.2.0",
    description="Multiview Transformers (MTV) and M&M for video recognition, in Keras 3 on TensorFlow or JAX",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["mtv", "mtv.*"]) + CONFIG_PACKAGES + ["mtv.zoo"],
    package_dir={"mtv.configs": "configs", "mtv.zoo": "zoo"},
    include_package_data=True,
    package_data={
        "mtv": ["classnames/*.txt", "classnames/*.md", "embedded/**/*"],
        "mtv.data": ["samples/*"],
        "mtv.zoo": ["models.json", "README.md"],
    },
    install_requires=[
        "tensorflow==2.21.*",
        "keras>=3.10,<4",
        "tensorflow-hub>=0.16",
        "numpy>=1.26",
        "absl-py>=2.0",
        "ml-collections>=1.0",
        "msgpack>=1.0",
        "ml-dtypes>=0.3",  # bfloat16 arrays in Flax checkpoints (also a TensorFlow dependency)
        "av>=12",
        "opencv-python-headless>=4.8",
        "tqdm>=4.60",
        "filelock>=3.12",  # portable inter-process locks for the download and preset caches
        "matplotlib>=3.8",  # the PNG of `mtv predict --timeline` (imported only there)
    ],
    extras_require={
        # Keras' JAX backend: the model path (build, convert, load, save, predict) and training; jax's CPU build
        # (for a GPU, install jax's CUDA build as jax's documentation says).
        "jax": ["jax>=0.4.34"],
        "test": [
            "jax>=0.4.34",  # tests/test_jax_backend.py runs the model path and training steps on JAX
            "pytest>=8",
            "pytest-xdist>=3.5",  # the suite runs on 2 processes (pyproject addopts), a test file per process
            "ruff>=0.6",
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel>=6",
            "matplotlib>=3.8",
            "scipy>=1.11",  # tests/test_multimodal.py checks the checkpoint resize against scipy.ndimage.zoom
        ],
    },
    entry_points={"console_scripts": ["mtv=mtv.cli:main"]},
)
