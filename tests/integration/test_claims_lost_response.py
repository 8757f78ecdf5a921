"""A claim create whose response is lost, against a real SeaweedFS through the S3 adapter's own retry:
the write lands, the client times out reading the answer, the store retries the conditional create
and meets the object it wrote (412). The worker holds its claim; before, it waited its own claim out
(a full TTL: seen in CI, where SeaweedFS sent a malformed response and the read timed out)."""

from __future__ import annotations

from processor.queue.claims import ClaimManager


def test_a_lost_create_response_on_s3_is_still_our_claim(s3_store):
    from botocore.exceptions import ReadTimeoutError

    lost = []

    def lose_the_first_claim_response(http_response, parsed, model, **kwargs):
        # after-call: the server has answered (the object is written); the caller never sees it.
        if not lost and model.name == "PutObject":
            lost.append(http_response.status_code)
            raise ReadTimeoutError(endpoint_url="http://seaweedfs/claim")

    s3_store._client.meta.events.register("after-call.s3.PutObject", lose_the_first_claim_response)
    manager = ClaimManager(s3_store, "w1", ttl_s=600)
    claim = manager.acquire("c/1.json", "inputs/x.jpg", "e1")
    assert lost == [200], "the first create landed and its response was dropped"
    assert claim is not None and manager.conflicts == 0
    assert manager.holds(claim) and manager.renew(claim)
    assert ClaimManager(s3_store, "w2", ttl_s=600).acquire("c/1.json", "inputs/x.jpg", "e1") is None
