"""Shared library of the three AVVP stages: LLP I/O, features, the HAN network, metrics."""
__version__ = "0.1.0"
