"""Unit tier: in-process tests over the local store, fakes and pure functions (no server, browser or
model weights)."""
