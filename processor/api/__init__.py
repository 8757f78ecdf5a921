"""``processor serve``: the HTTP API in front of the bucket.

``app`` (``create_app``: the context, problem responses, the routers), ``routes`` (one router per
concern: jobs, files, events, the prototype's route, probes, pages), ``deps`` (the routers'
dependencies: context, token, queue, settings, clock, renderer), ``auth`` (tokens, the login
cookie, same origin), ``render`` (a job as the API shows it), ``schemas`` (response bodies),
``problems`` (errors as problem+json), ``validate`` (request fields → the sidecar the worker
reads), ``upload`` (bodies read as they stream, capped), ``webhooks`` (signed deliveries),
``http_metrics`` (the backlog KEDA scales workers on); the command is ``processor.cli.serve``. Every read and write
of the bucket goes through ``processor.queue.protocol.BucketQueue``; it never runs a model.
"""
