"""Mutation fuzzing of the decoder: whatever a damaged file makes a decoder raise, ``decode_image``
answers with a decoded image or an ``InvalidInput`` subclass, nothing else.

Every accepted format (``tests.mutations.samples``) gets ``MUTATIONS_PER_SAMPLE`` seeded mutations.
A failure names the sample, the seed and the mutation; ``tests.mutations.mutate(data, sample,
seed)`` gives back the same bytes.
"""

from __future__ import annotations

import pytest
from PIL import ImageFile

from processor.config import DecodeSettings
from processor.errors import CorruptImage, InvalidInput
from processor.pipeline.base import DecodedImage
from processor.pipeline.decode import decode_image
from tests.mutations import corrupt_avif, mutate, pillow_error, samples, tiff_second_page_without_size

#: Mutations per sample: 300 x 11 samples take about 7 s here.
MUTATIONS_PER_SAMPLE = 300
#: Failures listed in full in a failing test's message.
SHOWN_FAILURES = 20

SAMPLES = samples()
LIMITS = DecodeSettings()


def test_every_accepted_format_has_a_sample() -> None:
    wanted = {"jpeg-baseline", "jpeg-progressive", "png", "gif-animated", "webp", "webp-animated", "tiff",
              "tiff-multipage", "avif", "bmp"}
    assert wanted <= set(SAMPLES)
    if "heic" not in SAMPLES:
        pytest.skip("this libheif has no HEVC encoder: no HEIC sample")


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_the_sample_itself_decodes(sample: str) -> None:
    decoded = decode_image(SAMPLES[sample], LIMITS, name=sample)
    assert decoded.image.mode == "RGB" and decoded.image.size == (96, 72)


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_mutations_decode_or_fail_as_invalid_input(sample: str) -> None:
    failures = []
    outcomes: dict[str, int] = {}
    for seed in range(MUTATIONS_PER_SAMPLE):
        mutation, data = mutate(SAMPLES[sample], sample, seed)
        where = f"{sample} seed {seed} ({mutation})"
        try:
            decoded = decode_image(data, LIMITS, name=where)
        except InvalidInput as exc:
            outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1
            if not str(exc).startswith(f"{where}: ") or not exc.hint.strip():
                failures.append(f"{where}: {type(exc).__name__} without its name or a hint: {exc!r}")
            continue
        except BaseException as exc:  # noqa: BLE001 - collected: the test lists every escape
            failures.append(f"{where}: {type(exc).__name__} escaped: {exc}")
            continue
        outcomes["decoded"] = outcomes.get("decoded", 0) + 1
        if not _is_usable(decoded):
            failures.append(f"{where}: decoded to {decoded.image.mode} {decoded.image.size}")
    shown = "\n".join(failures[:SHOWN_FAILURES])
    assert not failures, f"{len(failures)} of {MUTATIONS_PER_SAMPLE} mutations of {sample} ({outcomes}):\n{shown}"
    # The mutations both break files and leave some decodable: the fuzz reaches past the header.
    assert outcomes.get("decoded", 0) and sum(n for k, n in outcomes.items() if k != "decoded"), outcomes


def _is_usable(decoded: DecodedImage) -> bool:
    image = decoded.image
    return (image.mode == "RGB" and min(image.size) >= LIMITS.min_side
            and image.width * image.height <= LIMITS.max_pixels and not isinstance(image, ImageFile.ImageFile))


# --- the two cases crafted by hand --------------------------------------------------------------


def test_a_corrupt_avif_of_500_bytes_is_a_corrupt_image() -> None:
    data = corrupt_avif()
    assert 400 < len(data) < 600
    assert isinstance(pillow_error(data), RuntimeError)  # what escaped the decoder before
    with pytest.raises(CorruptImage) as caught:
        decode_image(data, LIMITS, name="inputs/small.avif")
    assert str(caught.value).startswith("inputs/small.avif: the AVIF file is truncated or damaged (RuntimeError: ")
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert caught.value.hint.strip()


def test_a_tiff_whose_second_page_lacks_its_size_is_a_corrupt_image() -> None:
    data = tiff_second_page_without_size()
    error = pillow_error(data)
    assert isinstance(error, TypeError) and "Missing dimensions" in str(error)  # what escaped before
    with pytest.raises(CorruptImage, match=r"^inputs/pages\.tif: the TIFF file is truncated or damaged "
                                           r"\(TypeError: Missing dimensions\)") as caught:
        decode_image(data, LIMITS, name="inputs/pages.tif")
    assert isinstance(caught.value.__cause__, TypeError)
