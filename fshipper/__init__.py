"""fshipper: ship log files from many hosts to a central place over NATS."""

__version__ = "0.1.0"
