"""The bucket as a job queue, with one face for every reader and writer of job state:
``protocol.BucketQueue`` (the worker's transitions) on ``jobs.BucketJobs`` (job state, pages,
files, submit, retry, status). Beneath them: claims (``claims``: leases and their one judgement),
bounded record reads (``records``), the key layout (``keys``), scans, outcomes, the failure
policy, requeueing, the rescan hint, submissions (``submit``), idempotency records and webhook
records."""
