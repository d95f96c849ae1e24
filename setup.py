"""Install mtv: Multiview Transformers for Video Recognition in Keras 3."""

from setuptools import find_packages, setup

setup(
    name="mtv",
    version="0.1.0",
    description="Multiview Transformers (MTV) and M&M for video recognition, in Keras 3 on TensorFlow",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["mtv", "mtv.*"]),
    include_package_data=True,
    package_data={"mtv": ["classnames/*.txt", "registry/*.json", "embedded/*", "embedded/**/*"]},
    install_requires=[
        "tensorflow==2.21.*",
        "keras>=3.10,<4",
        "tensorflow-hub>=0.16",
        "numpy>=1.26",
        "absl-py>=2.0",
        "ml-collections>=1.0",
        "msgpack>=1.0",
        "av>=12",
        "opencv-python-headless>=4.8",
        "tqdm>=4.60",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "ruff>=0.6",
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel>=6",
            "matplotlib>=3.8",
        ],
    },
    entry_points={"console_scripts": ["mtv=mtv.cli:main"]},
)
