"""The worker: moves jobs between the fetch, compute and upload stages (``runner.Worker``)."""
