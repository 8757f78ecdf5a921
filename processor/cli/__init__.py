"""Every ``processor`` command, and the composition root: the top floor, which nothing else imports.

``main``      the parser and the dispatch (``processor`` / ``python -m processor``)
``run``       ``run`` (the worker; ``--once`` drains the bucket) and ``process`` (local files, no bucket)
``mask``      ``mask``: subject masks and overlays of local photos
``submit``    ``submit``: upload photos to ``inputs/``
``bucket``    ``status``, ``results``, ``retry``: job state through the bucket protocol
``doctor``    ``doctor``: config, store, credentials, conditional writes, device, models
``models``    ``models pull`` (and ``--dry-run``): every configured model into the cache
``schema``    ``schema``: the manifest / failure-record JSON Schemas
``serve``     ``serve``: the HTTP API over the bucket (``processor.api``)
``finetune``  ``finetune``: train a LoRA a style can use (``processor.finetune``)
"""
