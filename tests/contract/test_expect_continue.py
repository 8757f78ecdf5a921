"""``Expect: 100-continue`` only on large PUT bodies, against the real SeaweedFS through both SDKs:
small writes (claims, manifests, markers) skip the handshake that S3-compatible servers now and then
answer unparseably (a 60 s read-timeout stall); large ones keep it (a refused body is not sent)."""

from __future__ import annotations

import pytest

from processor.store.s3 import EXPECT_CONTINUE_MIN_BYTES


@pytest.mark.parametrize("store_fixture", ["s3_store", "cos_hmac_store"])
def test_small_puts_go_without_expect_and_large_ones_keep_it(store_fixture, request):
    store = request.getfixturevalue(store_fixture)
    sent: list[tuple[str, str | None]] = []

    def capture(request, **_):
        if request.method == "PUT":
            expect = request.headers.get("Expect")
            sent.append((request.url.rsplit("/", 1)[-1], expect.decode() if isinstance(expect, bytes) else expect))

    store._client.meta.events.register("before-send.s3", capture)
    store.put("small.json", b'{"claim": 1}', if_none_match=True)
    store.put("just-below.bin", b"x" * (EXPECT_CONTINUE_MIN_BYTES - 1))
    store.put("large.bin", b"x" * EXPECT_CONTINUE_MIN_BYTES)
    assert sent == [("small.json", None), ("just-below.bin", None), ("large.bin", "100-continue")]
    assert store.get("large.bin").body == b"x" * EXPECT_CONTINUE_MIN_BYTES  # and the writes landed
    assert store.get("small.json").body == b'{"claim": 1}'
