"""The API's job watcher (``processor.api.watch``): one per replica wakes every waiter of a job when
its claim or done markers change, from OS events on the local store and from one shared probe per
job elsewhere; a change between a waiter's read and its wait is never lost."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from processor.api.watch import JobWatch
from processor.config import Settings
from processor.queue.jobs import UnknownJob
from processor.queue.outcomes import Outcome
from processor.queue.protocol import BucketQueue
from processor.queue.submit import Submission
from processor.store.local import LocalStore
from testkit.images import photo_bytes

#: Seconds a waiter may wait for a change that must come (generous for a loaded machine).
DEADLINE_S = 20.0
POLL_S = 0.02


def _job(tmp_path: Path) -> tuple[LocalStore, BucketQueue, str]:
    store = LocalStore(tmp_path / "bucket")
    queue = BucketQueue.for_settings(store, Settings(store={"kind": "local", "root": str(tmp_path / "bucket")}))
    job, _ = queue.submit(Submission(image=photo_bytes(64, 64), format="JPEG"))
    return store, queue, job


@pytest.mark.parametrize("os_events", [True, False], ids=["os-events", "probes"])
def test_a_claim_and_then_a_done_marker_wake_the_waiter(tmp_path: Path, os_events: bool) -> None:
    store, queue, job = _job(tmp_path)
    keys = queue.keys_of(job)
    watch = JobWatch(queue, POLL_S, local_root=store.root if os_events else None)

    async def scenario() -> list[int]:
        generations = [watch.generation(job)]
        if not os_events:  # the first probe counts as a change (the job may have moved before it)
            generations.append(await watch.changed(job, generations[-1], DEADLINE_S))
        waiter = asyncio.create_task(watch.changed(job, generations[-1], DEADLINE_S))
        await asyncio.sleep(0.1)
        assert not waiter.done()  # nothing moved yet
        store.put(keys.claim, b'{"worker": "w1"}')
        generations.append(await waiter)
        done_at = generations[-1]
        store.put(keys.done_marker(store.head(keys.input).etag, Outcome.DONE), b"")
        while generations[-1] == done_at:  # a claim event may still be on its way: wait for the marker's
            generations.append(await watch.changed(job, generations[-1], DEADLINE_S))
        return generations

    try:
        started = time.monotonic()
        generations = asyncio.run(scenario())
    finally:
        watch.close()
    assert generations == sorted(generations) and len(set(generations)) == len(generations)
    assert time.monotonic() - started < DEADLINE_S
    if os_events:
        assert watch.probes == 0  # the OS told it: no request


def test_reading_the_claim_wakes_nobody(tmp_path: Path) -> None:
    """A state read opens the claim: were that a change, each waiter's read would wake it again."""
    store, queue, job = _job(tmp_path)
    keys = queue.keys_of(job)
    store.put(keys.claim, b'{"worker": "w1"}')
    watch = JobWatch(queue, POLL_S, local_root=store.root)

    async def scenario() -> tuple[int, int, int]:
        before = watch.generation(job)
        for _ in range(5):
            store.get(keys.claim)
            queue.state(job)
        after_reads = await watch.changed(job, before, 1.0)
        store.put(keys.claim, b'{"worker": "w2"}')
        return before, after_reads, await watch.changed(job, after_reads, DEADLINE_S)

    try:
        before, after_reads, after_write = asyncio.run(scenario())
    finally:
        watch.close()
    assert after_reads == before
    assert after_write > after_reads


def test_a_change_between_the_read_and_the_wait_is_not_lost(tmp_path: Path) -> None:
    store, queue, job = _job(tmp_path)
    watch = JobWatch(queue, POLL_S, local_root=store.root)

    async def scenario() -> tuple[int, int, float]:
        before = watch.generation(job)  # taken before the (imagined) state read
        store.put(queue.keys_of(job).claim, b"{}")
        await asyncio.sleep(0.5)  # the event arrives while nobody waits
        started = time.monotonic()
        after = await watch.changed(job, before, DEADLINE_S)
        return before, after, time.monotonic() - started

    try:
        before, after, waited = asyncio.run(scenario())
    finally:
        watch.close()
    assert after > before and waited < DEADLINE_S / 2


def test_many_streams_of_one_job_share_one_probe(tmp_path: Path) -> None:
    """Probes are per job, not per waiter: 8 streams cost what one does (a HEAD and a LIST a tick)."""
    store, queue, job = _job(tmp_path)
    watch = JobWatch(queue, POLL_S)

    async def scenario() -> None:
        generation = watch.generation(job)
        generation = await watch.changed(job, generation, DEADLINE_S)  # the first probe
        before = store.request_count()
        probes = watch.probes
        await asyncio.gather(*(watch.changed(job, generation, 0.5) for _ in range(8)))
        sent = store.request_count() - before
        assert sent == 2 * (watch.probes - probes) and sent > 0

    try:
        asyncio.run(scenario())
    finally:
        watch.close()
    # 0.5 s at one probe every 20 ms is at most ~25 probes, however many waiters.
    assert watch.probes < 0.5 / POLL_S * 2 + 10


def test_an_id_that_names_no_key_is_unknown(tmp_path: Path) -> None:
    _store, queue, _job_id = _job(tmp_path)
    watch = JobWatch(queue, POLL_S)
    with pytest.raises(UnknownJob):
        watch.generation("not an id!")
    watch.close()


def test_an_id_only_named_is_not_probed(tmp_path: Path) -> None:
    """A request for a job that does not exist takes a generation, then answers 404 and never waits:
    the watcher must not spend store requests on it (a client could name any number of ids)."""
    from processor.queue.jobs import job_id

    store, queue, _job_id = _job(tmp_path)
    watch = JobWatch(queue, POLL_S)
    try:
        for n in range(20):
            watch.generation(job_id(f"api/no-such-{n}.jpg"))
        before = store.request_count()
        time.sleep(10 * POLL_S)
        assert watch.probes == 0 and store.request_count() == before
    finally:
        watch.close()


def test_an_event_wakes_only_the_jobs_it_belongs_to_and_forgotten_jobs_leave_no_index(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "bucket")
    queue = BucketQueue.for_settings(store, Settings(store={"kind": "local", "root": str(tmp_path / "bucket")}))
    jobs = [queue.submit(Submission(image=photo_bytes(32, 32, seed=i), format="JPEG"))[0] for i in range(40)]
    watch = JobWatch(queue, POLL_S)  # no OS events: the events are handed to it directly
    try:
        before = {job: watch.generation(job) for job in jobs}
        target, other = queue.keys_of(jobs[7]), queue.keys_of(jobs[8])
        watch._seen(target.done_marker("etag", Outcome.DONE))
        watch._seen(other.claim)
        watch._seen(other.done_prefix.rstrip("/"))  # the marker folder's own event: no marker yet
        after = {job: watch.generation(job) for job in jobs}
        assert {job for job in jobs if after[job] != before[job]} == {jobs[7], jobs[8]}
        assert after[jobs[7]] == before[jobs[7]] + 1 and after[jobs[8]] == before[jobs[8]] + 1
        with watch._lock:
            for job in jobs:
                watch._forget(job)
        assert watch._by_key == {}
    finally:
        watch.close()
