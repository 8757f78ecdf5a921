"""``processor serve``: the HTTP API in front of the bucket.

``app`` (routes, auth, problem responses), ``jobs`` (the one adapter to the bucket protocol),
``validate`` (request fields → the sidecar the worker reads), ``upload`` (bodies read as they
stream, capped), ``metrics`` (the backlog KEDA scales workers on); the command is
``processor.cli.serve``. It writes inputs and sidecars and reads claims, manifests and failure
records; it never runs a model.
"""
