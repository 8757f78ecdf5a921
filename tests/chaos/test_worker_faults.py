"""Worker behaviour under the faults the chaos harness injects, pinned as fast local-store tests.

Each test is a deterministic replay of a race the harness (``bench/chaos.py``) forces with hold
points against SeaweedFS: a claim taken over while the old holder is paused, and store errors
that outlast the retries while claiming.
"""

from __future__ import annotations

import hashlib
import time

from processor.errors import TransientStoreError
from processor.manifest import Manifest
from processor.pipeline.outputs import encode_outputs
from processor.queue.keys import KeyLayout
from processor.queue.scan import scan
from processor.store.local import LocalStore
from processor.worker.runner import Job, PassResult
from testkit.images import photo_bytes
from tests.unit.test_worker import make_settings, make_worker

#: Seconds: a claim TTL short enough to let a test expire it by sleeping.
SHORT_TTL_S = 0.2


def outputs(store: LocalStore) -> dict[str, str]:
    return {o.key: o.etag for o in store.list("outputs/")}


def taken_over(tmp_path, seed: int = 0):
    """A zombie that claimed and computed an input, paused past its TTL, and the worker that took
    its claim over and computed the same input (neither has written anything yet)."""
    settings = make_settings(tmp_path)
    settings = settings.model_copy(update={"claims": settings.claims.model_copy(
        update={"ttl_s": SHORT_TTL_S, "renew_s": SHORT_TTL_S / 2})})
    store = LocalStore(settings.store.root)
    store.put("inputs/cow.jpg", photo_bytes(320, 240, seed=seed))
    item = scan(store, KeyLayout(settings.prefixes)).pending[0]
    zombie = make_worker(store, settings, "zombie")
    zjob = zombie._fetch(item, _Keeper(), PassResult())
    zombie._compute([zjob])
    time.sleep(SHORT_TTL_S * 1.5)  # paused past the TTL: no renewal
    healthy = make_worker(store, settings, "healthy")
    hjob = healthy._fetch(item, _Keeper(), PassResult())
    assert hjob is not None and hjob.claim.took_over_from == "zombie"
    healthy._compute([hjob])
    return store, zombie, zjob, healthy, hjob


class _Keeper:
    """Stands in for the ClaimKeeper thread (these tests renew nothing)."""

    def hold(self, claim) -> None: ...

    def drop(self, claim) -> None: ...


def write_variants(worker, job: Job) -> None:
    """The first half of ``Publisher.outputs_and_commit``: every output written, no manifest yet."""
    keys = job.item.keys
    files, _entries, _sheet = encode_outputs(job.decoded.image, job.variants, output_prefix=keys.output_prefix,
                                             sheet_height=64)
    for f in files:
        worker.queue.put_output(job.delivery, keys.output_prefix + f.name, f.body, f.content_type)


def test_a_zombie_does_not_overwrite_the_variants_of_the_worker_that_took_its_claim(tmp_path):
    store, zombie, zjob, healthy, hjob = taken_over(tmp_path)
    write_variants(healthy, hjob)  # the new holder wrote its variants and is about to commit
    before = outputs(store)
    # The zombie resumes: its creates fail, nothing is committed yet, but its claim is gone.
    assert zombie.publisher.outputs_and_commit(zjob) == "refused"
    assert outputs(store) == before
    assert healthy.publisher.outputs_and_commit(hjob) == "done"
    manifest = Manifest.model_validate_json(store.get(hjob.item.keys.manifest).body)
    assert manifest.worker.id == "healthy"
    for v in manifest.variants:
        assert hashlib.sha256(store.get(v.key).body).hexdigest() == v.sha256


def test_a_zombie_that_wrote_first_does_not_commit_after_a_takeover(tmp_path):
    """The zombie's creates win (it was ahead) but it must not commit: the new holder may already
    have replaced some of those files, and a commit would then name bytes that are not there."""
    store, zombie, zjob, healthy, hjob = taken_over(tmp_path)
    assert zombie.publisher.outputs_and_commit(zjob) == "refused"
    assert not list(store.list(zjob.item.keys.manifest))
    # The holder replaces the zombie's leftovers, then commits.
    assert healthy.publisher.outputs_and_commit(hjob) == "done"
    manifest = Manifest.model_validate_json(store.get(hjob.item.keys.manifest).body)
    for v in manifest.variants:
        assert hashlib.sha256(store.get(v.key).body).hexdigest() == v.sha256


def test_store_errors_while_claiming_skip_the_item_not_the_daemon(tmp_path):
    """Retries ran out while creating claims (an S3 outage): those items wait for the next pass;
    the pass ends normally and the worker is not told to stop (the daemon would exit 0)."""
    settings = make_settings(tmp_path)

    class Outage(LocalStore):
        down = True

        def put(self, key, body, **kw):
            if self.down and key.startswith(".processor/claims/"):
                raise TransientStoreError(f"{key}: connection refused")
            return super().put(key, body, **kw)

    store = Outage(settings.store.root)
    for i in range(3):
        store.put(f"inputs/t{i}.png", photo_bytes(96, 96, fmt="PNG", seed=i))
    worker = make_worker(store, settings)
    items = scan(store, KeyLayout(settings.prefixes)).pending
    result = worker.run_pass(items)
    assert result.outcomes["transient"] == 3 and result.left == 3
    assert not worker.stop_event.is_set()
    store.down = False
    assert worker.run_once() == 0
    assert scan(store, KeyLayout(settings.prefixes)).done == 3


def test_run_once_gives_up_with_exit_incomplete_when_the_store_keeps_failing(tmp_path):
    """Every claim create fails for good: after MAX_STALLED_PASSES passes without progress,
    ``run --once`` exits EXIT_INCOMPLETE (8), never argparse's usage code 2."""
    from processor.errors import EXIT_INCOMPLETE, EXIT_USAGE
    from processor.worker.runner import MAX_STALLED_PASSES

    settings = make_settings(tmp_path)

    class Outage(LocalStore):
        def put(self, key, body, **kw):
            if key.startswith(".processor/claims/"):
                raise TransientStoreError(f"{key}: connection refused")
            return super().put(key, body, **kw)

    store = Outage(settings.store.root)
    store.put("inputs/t.png", photo_bytes(96, 96, fmt="PNG"))
    worker = make_worker(store, settings)
    assert worker.run_once() == EXIT_INCOMPLETE != EXIT_USAGE
    assert worker.totals["transient"] == MAX_STALLED_PASSES


def test_a_pass_rescans_after_a_claim_ttl_so_expired_claims_are_seen_soon(tmp_path):
    """A long backlog does not delay takeovers: after one claim TTL a pass takes no new items and
    the worker rescans (and sees claims that expired meanwhile); the inputs still all finish."""
    settings = make_settings(tmp_path)
    settings = settings.model_copy(update={"claims": settings.claims.model_copy(update={"ttl_s": 0.3, "renew_s": 0.1})})

    class SlowInputs(LocalStore):
        def get(self, key, **kw):
            if key.startswith("inputs/"):
                time.sleep(0.1)  # a slow download: the pass outlasts the TTL
            return super().get(key, **kw)

    store = SlowInputs(settings.store.root)
    for i in range(8):
        store.put(f"inputs/t{i}.png", photo_bytes(96, 96, fmt="PNG", seed=i))
    worker = make_worker(store, settings)
    result = worker.run_pass(scan(store, KeyLayout(settings.prefixes)).pending)
    assert result.cut_short and 0 < result.progress < 8 and result.left == 8 - result.progress
    assert worker.run_once() == 0
    assert scan(store, KeyLayout(settings.prefixes)).done == 8


def test_claims_judged_from_whole_second_http_dates_get_a_second_of_margin(tmp_path):
    """S3's Last-Modified and Date are whole seconds: a measured age of TTL can be TTL - 1 s in
    truth, so such a claim is only taken over at TTL + 1 s (measured)."""
    from dataclasses import replace
    from datetime import datetime, timedelta, timezone

    from processor.queue.claims import ClaimManager

    written = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    now = {"t": written}

    class HttpDates(LocalStore):
        def get(self, key, **kw):
            found = super().get(key, **kw)
            return replace(found, info=replace(found.info, last_modified=written, server_time=now["t"]))

    store = HttpDates(tmp_path / "bucket")
    a, b = ClaimManager(store, "a", ttl_s=3), ClaimManager(store, "b", ttl_s=3)
    assert a.acquire("claims/x.json", "inputs/x.jpg", "e1") is not None
    now["t"] = written + timedelta(seconds=3)
    assert b.acquire("claims/x.json", "inputs/x.jpg", "e1") is None
    now["t"] = written + timedelta(seconds=4)
    assert b.acquire("claims/x.json", "inputs/x.jpg", "e1").took_over_from == "a"
