"""The API's routers, one per concern: ``jobs`` (submit, list, read, retry), ``files`` (a job's
files), ``events`` (a job's event stream), ``prototype`` (``/generate_image_rest_direct``),
``health`` (probes and ``/metrics``) and ``pages`` (the web pages). ``processor.api.app``
registers them; their dependencies are ``processor.api.deps``'s."""
