"""Keys cannot escape: derived keys stay under their prefixes, the local store stays in its root.

Property tests (hypothesis) over hostile input keys, style names and ETags: every key the worker
may write for an input (variants, contact sheet, manifest, failure record, claim, done marker)
starts with its prefix, and after POSIX normalisation still does, with no ``.``, ``..`` or empty
segment and no backslash. The local store refuses (``InvalidKey``) every key that would resolve
outside its root: ``..``, absolute paths, NUL bytes, backslashes, and symbolic links inside the
root that point out, for reads as well as writes.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor.config import PrefixSettings
from processor.errors import InvalidKey, ObjectNotFound
from processor.queue.keys import KeyLayout, safe_path
from processor.store.local import LocalStore

LAYOUT = KeyLayout(PrefixSettings())

#: Characters attackers reach for, weighted in beside arbitrary unicode.
_NASTY = ["/", "//", "..", ".", "\\", "%", "%2e", "%2F", "\x00", "\n", " ", "~", ":", "C:", "🧸", "e\u0301"]
segments = st.one_of(st.sampled_from(_NASTY), st.text(min_size=0, max_size=8))
relpaths = st.lists(segments, min_size=1, max_size=8).map("".join)
#: Paths up to S3's 1024-byte key limit, with names past a file system's 255 bytes.
long_relpaths = st.lists(st.one_of(segments, st.text(min_size=100, max_size=300)), min_size=1, max_size=6).map(
    lambda parts: "/".join(parts)
).filter(lambda path: len(("inputs/" + path).encode("utf-8", "surrogatepass")) <= 1024)
#: Style names and ETags are single values; hostile ones must not start new segments either.
values = st.one_of(st.sampled_from([*_NASTY, "a/../../b", "../x"]), st.text(min_size=1, max_size=12))


def written_keys(input_key: str, style: str, etag: str) -> dict[str, str]:
    """Every key the worker writes for ``input_key``, with the prefix it must stay under."""
    keys = LAYOUT.for_input(input_key)
    p = LAYOUT.prefixes
    return {
        keys.variant(style, 0): p.outputs,
        keys.variant(style, 15): p.outputs,
        keys.contact_sheet: p.outputs,
        keys.manifest: p.outputs,
        keys.failure: p.failed,
        keys.claim: LAYOUT.claims_prefix,
        keys.done_marker(etag, "done"): LAYOUT.done_prefix,
        keys.done_marker(etag, "failed"): LAYOUT.done_prefix,
    }


@settings(max_examples=600, deadline=None)
@given(relpath=relpaths, style=values, etag=values)
def test_every_written_key_stays_under_its_prefix(relpath: str, style: str, etag: str) -> None:
    for key, prefix in written_keys("inputs/" + relpath, style, etag).items():
        assert key.startswith(prefix), (key, prefix)
        rest = key[len(prefix):]
        parts = rest.split("/")
        assert all(part not in ("", ".", "..") for part in parts), key
        assert "\\" not in key, key
        # Whatever a server or file system normalises, the key stays where it was put.
        assert posixpath.normpath("/" + key).startswith("/" + prefix), key


@settings(max_examples=300, deadline=None)
@given(relpath=long_relpaths, style=values)
def test_every_written_key_fits_s3_and_file_system_limits(relpath: str, style: str) -> None:
    """S3 takes keys up to 1024 bytes, file systems names up to 255: derived keys cut long parts."""
    for key in written_keys("inputs/" + relpath, style, "0123456789abcdef0123456789abcdef"):
        assert len(key.encode("utf-8", "surrogatepass")) <= 1024, key
        assert max(len(part.encode("utf-8", "surrogatepass")) for part in key.split("/")) <= 255, key


@settings(max_examples=300, deadline=None)
@given(a=st.one_of(relpaths, long_relpaths), b=st.one_of(relpaths, long_relpaths))
def test_distinct_inputs_never_share_a_failure_record_or_done_markers(a: str, b: str) -> None:
    if a == b:
        return
    ka, kb = LAYOUT.for_input("inputs/" + a), LAYOUT.for_input("inputs/" + b)
    assert ka.failure != kb.failure
    assert ka.done_prefix != kb.done_prefix
    assert ka.claim != kb.claim
    assert safe_path(a) != safe_path(b)


@pytest.mark.parametrize(
    ("relpath", "output_prefix"),
    [
        ("../../etc/passwd.jpg", "outputs/%2E%2E/%2E%2E/etc/passwd/"),
        ("//leading.jpg", "outputs/%00/%00/leading/"),
        ("a//b.jpg", "outputs/a/%00/b/"),
        ("..\\..\\win.jpg", "outputs/..%5C..%5Cwin/"),
        ("%2E%2E/pct.jpg", "outputs/%252E%252E/pct/"),
        ("./here.jpg", "outputs/%2E/here/"),
    ],
)
def test_hostile_keys_map_to_plain_folders(relpath: str, output_prefix: str) -> None:
    assert LAYOUT.for_input("inputs/" + relpath).output_prefix == output_prefix


# --- the local store: never outside its root ---------------------------------------------------


@pytest.fixture
def jail(tmp_path: Path) -> tuple[LocalStore, Path]:
    """A store at ``tmp/jail/root`` beside ``tmp/outside`` (what an escape would reach)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("do not read me")
    return LocalStore(tmp_path / "jail" / "root"), outside


ESCAPES = [
    "../escape.txt",
    "inputs/../../escape.txt",
    "inputs/../../../outside/secret.txt",
    "/etc/passwd",
    "//etc/passwd",
    "inputs/./x.jpg",
    "inputs//x.jpg",
    "inputs/x.jpg\x00.png",
    "..\\..\\outside\\secret.txt",
    "inputs\\..\\..\\escape.txt",
    ".store/meta/x",
    "",
]


@pytest.mark.parametrize("key", ESCAPES)
def test_local_store_refuses_keys_that_could_leave_the_root(jail, key: str) -> None:
    store, outside = jail
    for op in (lambda: store.put(key, b"x"), lambda: store.get(key), lambda: store.head(key),
               lambda: store.delete(key), lambda: store.put(key, b"x", if_none_match=True)):
        with pytest.raises(InvalidKey):
            op()
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert sorted(p.name for p in store.root.parent.iterdir()) == ["root"]


def test_symlinked_folder_inside_the_root_cannot_lead_out(jail) -> None:
    store, outside = jail
    (store.root / "inputs").mkdir()
    os.symlink(outside, store.root / "inputs" / "link")
    for op in (lambda: store.put("inputs/link/new.txt", b"x"), lambda: store.get("inputs/link/secret.txt"),
               lambda: store.head("inputs/link/secret.txt"), lambda: store.delete("inputs/link/secret.txt")):
        with pytest.raises(InvalidKey, match="outside"):
            op()
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "do not read me"
    assert [o.key for o in store.list("")] == []  # links are not followed when listing


def test_symlinked_file_inside_the_root_cannot_be_read_or_overwritten(jail) -> None:
    store, outside = jail
    (store.root / "inputs").mkdir()
    os.symlink(outside / "secret.txt", store.root / "inputs" / "toy.jpg")
    with pytest.raises(InvalidKey):
        store.get("inputs/toy.jpg")
    with pytest.raises(InvalidKey):
        store.put("inputs/toy.jpg", b"overwritten")
    assert (outside / "secret.txt").read_text() == "do not read me"


def test_symlink_within_the_root_is_allowed(jail) -> None:
    """The check is containment, not "no links": a link that stays inside works."""
    store, _outside = jail
    store.put("real/toy.txt", b"inside")
    os.symlink(store.root / "real", store.root / "alias")
    assert store.get("alias/toy.txt").body == b"inside"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=relpaths)
def test_any_key_is_stored_inside_the_root_or_refused(jail, key: str) -> None:
    store, outside = jail
    try:
        store.put(key, b"x")
    except InvalidKey:
        return
    written = os.path.realpath(store.root.joinpath(*key.split("/")))
    assert written.startswith(os.path.realpath(store.root) + os.sep)
    assert store.get(key).body == b"x"
    store.delete(key)
    with pytest.raises(ObjectNotFound):
        store.head(key)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert sorted(p.name for p in store.root.parent.iterdir()) == ["root"]


def test_long_names_that_differ_only_past_the_cut_stay_distinct() -> None:
    a, b = "x" * 300 + "a.jpg", "x" * 300 + "b.jpg"
    ka, kb = LAYOUT.for_input("inputs/" + a), LAYOUT.for_input("inputs/" + b)
    assert ka.output_prefix != kb.output_prefix and ka.failure != kb.failure
    assert "%~" in ka.output_prefix  # cut, with a hash of the whole name
    # A literal "%~" in a name is escaped, so it can never imitate a cut.
    assert LAYOUT.for_input("inputs/a%~b.jpg").output_prefix == "outputs/a%25~b/"
