import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
VERSION = re.search(
    r'^__version__ = "([^"]+)"', (HERE / "fshipper" / "__init__.py").read_text(), re.M
).group(1)

setup(
    name="fshipper",
    version=VERSION,
    description="Ship log files from many hosts to per-host files over NATS JetStream",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(include=["fshipper", "fshipper.*"]),
    python_requires=">=3.9",
    install_requires=[
        "nats-py[nkeys]>=2.7",
        "python-daemon>=3.0",
        "pyinotify>=0.9.6",
        "prometheus-client>=0.12",
        "pyasyncore>=1.0.2; python_version >= '3.12'",
    ],
    entry_points={
        "console_scripts": [
            "fshipper = fshipper.cli:admin_main",
            "fshipper-producer = fshipper.cli:producer_main",
            "fshipper-consumer = fshipper.cli:consumer_main",
        ]
    },
    classifiers=[
        "Environment :: No Input/Output (Daemon)",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Topic :: System :: Logging",
    ],
)
