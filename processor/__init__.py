"""Toy cartoonizer: an object-storage-driven batch processor (see README.md)."""

__version__ = "0.1.0"
