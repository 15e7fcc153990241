"""Installation script for sslvitals."""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
version = {}
exec((ROOT / "sslvitals" / "_version.py").read_text(), version)

setup(
    name="sslvitals",
    version=version["__version__"],
    description=(
        "Label-free predictors of downstream quality (cluster quality, rank, phone purity, "
        "CCA) for self-supervised speech pretraining in fairseq and ESPnet."
    ),
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["sslvitals", "sslvitals.*"]),
    package_data={"sslvitals": ["py.typed", "synth/data/*"]},
    install_requires=[
        "numpy>=1.24",
        "scipy>=1.10",
        "torch>=2.1",
        "tqdm",
        "pandas",
        "matplotlib",
        "soundfile",
    ],
    extras_require={
        "faiss": ["faiss-cpu>=1.7"],
        "fairseq": ["fairseq-fixed==0.12.3.1", "hydra-core==1.3.2", "omegaconf==2.3.0"],
        "espnet": ["espnet==202511"],
        "s3prl": ["s3prl==0.4.18"],
        "transformers": ["transformers>=4.40"],
        "speechbrain": ["speechbrain==1.1.2"],
        "dev": ["pytest", "pytest-timeout", "scikit-learn>=1.3", "transformers>=4.40"],
    },
    entry_points={"console_scripts": ["sslvitals=sslvitals.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
