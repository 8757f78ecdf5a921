"""Integration tier: a real SeaweedFS, real `processor` subprocesses (CLI, run, serve), the worker end to end."""
