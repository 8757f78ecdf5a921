"""Clips after the model: the MP4 and WebP encoders (``processor.pipeline.video_encode``), their
files and manifest entries (``processor.pipeline.outputs``), and how the API shows and serves them
(byte ranges included). Frames are drawn here (``testkit.clips``); no model runs."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from processor.api.routes.files import byte_range
from processor.config import load_settings
from processor.pipeline.base import ClipSource, VariantImage, VideoFrames
from processor.pipeline.outputs import attempt_scoped, encode_outputs, sheet_frames
from processor.queue.keys import KeyLayout
from processor.queue.protocol import BucketQueue
from processor.queue.submit import Submission
from processor.store.local import LocalStore
from testkit.api_service import OPEN_BASE_URL
from testkit.clips import clip_variant, commit_clip_job, moving_frames
from testkit.images import photo_bytes, photo_image

av = pytest.importorskip("av", reason="PyAV (the sd extra) writes and reads the clips")
from processor.pipeline.video_encode import encode_mp4, encode_webp, probe_mp4  # noqa: E402


def test_the_mp4_is_h264_420_with_its_index_first_and_plays_the_frames_at_the_rate():
    frames = moving_frames(96, 64, 9)
    body = encode_mp4(frames, 12)
    clip = probe_mp4(body)
    assert (clip.codec, clip.pixel_format, clip.width, clip.height, clip.frames, clip.fps) == (
        "h264", "yuv420p", 96, 64, 9, 12.0)
    assert clip.duration_s == pytest.approx(9 / 12)
    assert body.index(b"moov") < body.index(b"mdat")
    # Equal frames, equal bytes: run after run (x264's variation, when it had one, showed about
    # once in 40 runs; see video_encode.MP4_X264_PARAMS).
    assert {encode_mp4(frames, 12) for _ in range(12)} == {body}
    assert encode_mp4(frames, 12, crf=40) != body
    with av.open(io.BytesIO(body)) as container:  # the moving disc survives: frames differ
        first, *_, last = [f.to_image() for f in container.decode(video=0)]
    assert first.tobytes() != last.tobytes()


def test_the_preview_holds_the_same_frames_at_the_same_rate():
    frames = moving_frames(64, 48, 5)
    preview = Image.open(io.BytesIO(encode_webp(frames, 8)))
    preview.load()
    assert preview.format == "WEBP" and preview.n_frames == 5 and preview.info["duration"] == 125
    assert preview.info["loop"] == 0 and preview.size == (64, 48)


@pytest.mark.parametrize("frames, message", [
    ([], "at least one frame"),
    ([Image.new("RGB", (63, 48))], "even sides"),
    ([Image.new("RGB", (64, 48)), Image.new("RGB", (32, 48))], "every frame of a clip must be 64x48"),
])
def test_frames_that_cannot_be_a_clip_are_refused(frames, message):
    with pytest.raises(ValueError, match=message):
        encode_mp4(frames, 8)


def test_a_clip_is_written_as_mp4_and_webp_named_like_stills_with_a_video_record_and_sheet_frames():
    photo = photo_image(96, 72, seed=1)
    still = VariantImage(style="disney", engine="img2img", index=0, seed=7, image=photo_image(64, 48, seed=2))
    frames = moving_frames(64, 48, 7)
    clip = VariantImage(style="dance", engine="animate", index=0, seed=3, image=frames[0], parameters={"frames": 7},
                        video=VideoFrames(frames, 7, ClipSource("variant", "disney", 0, 7)))
    files, entries, sheet = encode_outputs(photo, [still, clip], output_prefix="outputs/toy/", sheet_height=32)
    assert [(f.name, f.content_type) for f in files] == [
        ("disney-00.png", "image/png"), ("dance-00.mp4", "video/mp4"), ("dance-00.webp", "image/webp"),
        ("contact-sheet.jpg", "image/jpeg")]
    entry = entries[1]
    assert entry.key == "outputs/toy/dance-00.mp4" and (entry.width, entry.height) == (64, 48)
    video = entry.video
    assert (video.frames, video.fps, video.duration_s, video.codec, video.pixel_format) == (7, 7, 1.0, "h264",
                                                                                             "yuv420p")
    assert video.preview == "outputs/toy/dance-00.webp"
    assert (video.source.kind, video.source.style, video.source.index, video.source.seed, video.source.key) == (
        "variant", "disney", 0, 7, "outputs/toy/disney-00.png")
    assert entries[0].video is None
    # The sheet: the photo, the still, and three frames of the clip (first, middle, last).
    assert [n for n, _ in sheet_frames(clip.video)] == [0, 3, 6]
    assert Image.open(io.BytesIO(files[-1].body)).width > 5 * 32
    # A worker that may not take the plain names renames the clip, its preview and the source it names.
    renamed, scoped, _ = attempt_scoped(files, entries, sheet, output_prefix="outputs/toy/", token="t1")
    assert [f.name for f in renamed][:3] == ["disney-00.t1.png", "dance-00.t1.mp4", "dance-00.t1.webp"]
    assert scoped[1].key == "outputs/toy/dance-00.t1.mp4" and scoped[1].video.preview == "outputs/toy/dance-00.t1.webp"
    assert scoped[1].video.source.key == "outputs/toy/disney-00.t1.png"


@pytest.mark.parametrize("header, size, expected", [
    (None, 100, None), ("bytes=0-", 100, (0, 99)), ("bytes=10-19", 100, (10, 19)), ("bytes=90-500", 100, (90, 99)),
    ("bytes=-10", 100, (90, 99)), ("bytes=-500", 100, (0, 99)), ("bytes=0-1,5-6", 100, None), ("items=0-1", 100, None),
    ("bytes=-", 100, None),
])
def test_one_byte_range_is_read_and_anything_else_means_the_whole_file(header, size, expected):
    assert byte_range(header, size) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=5-2", "bytes=-0"])
def test_a_range_past_the_end_is_unsatisfiable(header):
    with pytest.raises(ValueError):
        byte_range(header, 100)


def test_the_api_shows_a_clip_with_its_preview_and_serves_it_as_video_with_ranges(tmp_path):
    from fastapi.testclient import TestClient

    from processor.api.app import create_app

    settings = load_settings(None, store={"kind": "local", "root": str(tmp_path / "bucket")})
    store = LocalStore(tmp_path / "bucket")
    queue = BucketQueue.for_settings(store, settings)
    job, _ = queue.submit(Submission(image=photo_bytes(100, 80), format="JPEG"))
    state = queue.state(job)
    manifest = commit_clip_job(store, KeyLayout(settings.prefixes), state.input_key, state.etag, photo_image(100, 80),
                               [clip_variant("dance", 0, moving_frames(64, 48, 9), 9)])
    client = TestClient(create_app(settings, store, keys=[]), base_url=OPEN_BASE_URL)
    body = client.get(f"/v1/jobs/{job}").json()
    (shown,) = body["variants"]
    assert shown["kind"] == "video" and (shown["frames"], shown["fps"], shown["duration_s"]) == (9, 9, 1.0)
    assert shown["url"].endswith("/files/dance-00.mp4") and shown["preview"].endswith("/files/dance-00.webp")
    mp4 = store.get(manifest.variants[0].key).body
    whole = client.get(shown["url"])
    assert whole.status_code == 200 and whole.content == mp4 and whole.headers["content-type"] == "video/mp4"
    assert whole.headers["accept-ranges"] == "bytes"
    part = client.get(shown["url"], headers={"Range": "bytes=100-299"})
    assert part.status_code == 206 and part.content == mp4[100:300]
    assert part.headers["content-range"] == f"bytes 100-299/{len(mp4)}" and part.headers["content-length"] == "200"
    tail = client.get(shown["url"], headers={"Range": "bytes=-16"})
    assert tail.status_code == 206 and tail.content == mp4[-16:]
    stale = client.get(shown["url"], headers={"Range": "bytes=0-9", "If-Range": '"another-version"'})
    assert stale.status_code == 200 and stale.content == mp4
    past = client.get(shown["url"], headers={"Range": f"bytes={len(mp4)}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(mp4)}"
    assert client.get(shown["preview"]).headers["content-type"] == "image/webp"
    page = client.get(f"/jobs/{job}")  # the server-rendered job page plays it, the preview as poster
    assert page.status_code == 200 and f'<video src="{shown["url"]}" poster="{shown["preview"]}"' in page.text
