"""Harnesses shared by the tests and the benchmarks: tiny random-weight model builders
(``testkit.models``), synthetic photos and scenes, a real SeaweedFS server and a real
``processor serve`` + ``processor run`` pair.

Not part of the shipped package (``pyproject.toml`` packages only ``processor*``); ``bench/`` imports
it instead of ``tests/``, so a benchmark never depends on a test module.
"""
