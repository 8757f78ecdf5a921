"""Every conditional write the worker makes lands but its response is lost, and the store's retry of
it meets the object it wrote (412): claims, outputs and the manifest commit must still count as
ours. Each photo ends committed, first pass, nothing refused (before, the worker waited out its own
claims: a TTL per photo)."""

from __future__ import annotations

import pytest

from processor.cli.compose import build_registry
from processor.queue.keys import KeyLayout
from processor.queue.outcomes import Outcome
from processor.store.local import LocalStore
from processor.worker.metrics import WorkerObserver
from processor.worker.runner import Worker
from testkit.images import photo_bytes
from tests.integration.test_store_hardening import make_settings, manifest_of
from tests.unit.test_claims import LostResponses

PHOTOS = [f"inputs/toy-{i}.jpg" for i in range(3)]


class Outcomes(WorkerObserver):
    """The outcome of every item the worker finished, in order."""

    def __init__(self) -> None:
        self.seen: list[Outcome] = []

    def item(self, outcome, timings=None) -> None:
        self.seen.append(outcome)


@pytest.mark.parametrize("coordination", ["claims", "shards"])
def test_lost_responses_to_conditional_writes_still_commit_every_photo(tmp_path, coordination):
    settings = make_settings(tmp_path, coordination=coordination)
    local = LocalStore(settings.store.root)
    for i, key in enumerate(PHOTOS):
        local.put(key, photo_bytes(120, 96, seed=i))
    store = LostResponses(local)
    outcomes = Outcomes()
    worker = Worker(store, settings, build_registry(settings), worker_id="w1", observer=outcomes)
    worker.setup()
    assert worker.run_once() == 0
    assert outcomes.seen == [Outcome.DONE] * len(PHOTOS)  # each committed at once: none refused, none redone
    layout = KeyLayout(settings.prefixes)
    for key in PHOTOS:
        manifest = manifest_of(local, layout, key)
        assert manifest.source.key == key and len(manifest.variants) == 2
        for variant in manifest.variants:
            assert local.head(variant.key).size > 0
        # The commit counted as ours: its done marker is there (a refused commit leaves none).
        etag = local.head(key).etag
        assert local.head(layout.for_input(key).done_marker(etag, Outcome.DONE)).size == 0
    if worker.claims is not None:
        assert worker.claims.conflicts == 0  # no claim was taken for another worker's
