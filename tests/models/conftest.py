"""Tiny random-weight models as session fixtures: each is built once per test run by the builders of
``testkit.models`` (``build_once``: once for all pytest-xdist workers too) and loaded by the tests
through ``processor.models.loader`` exactly like a production model folder.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from testkit.models.caption import build_hf_clip, build_tiny_blip, build_tiny_clip, build_tiny_git, write_tiny_labels
from testkit.models.flow import build_flux, build_kontext, build_sd3
from testkit.models.qwen import build_qwen_edit
from testkit.models.sd import build_controlnet, build_inpaint, build_lora, build_sd, build_sdxl, build_sdxl_refiner
from testkit.models.segmenters import build_onnx_segmenter, build_segformer

#: Without the ``sd`` extra (torch, diffusers, transformers) this folder is not collected at all.
HAVE_SD = all(importlib.util.find_spec(name) is not None for name in ("torch", "diffusers", "transformers"))
if not HAVE_SD:
    collect_ignore_glob = ["test_*.py"]


def build_once(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Path]) -> Path:
    """``build(path)`` of the model ``name``, once per test run. In one process: a folder of the
    session's temporary directory. Under pytest-xdist: one folder shared by the workers (the parent
    of their temporary directories); the first worker to need a model builds it under a file lock
    while the others wait, and a marker written after the build keeps a half-built model unused."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return build(factory.mktemp("models") / name)
    from filelock import FileLock

    root = factory.getbasetemp().parent / "tiny-models"
    root.mkdir(exist_ok=True)
    target, built = root / name, root / f"{name}.built"
    with FileLock(str(root / f"{name}.lock")):
        if not built.exists():
            if target.is_dir():
                shutil.rmtree(target)
            target.unlink(missing_ok=True)
            build(target)
            built.touch()
    return target


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    return build_once(tmp_path_factory, "tiny-sd", build_sd)


@pytest.fixture(scope="session")
def tiny_pix2pix(tmp_path_factory) -> Path:
    return build_once(tmp_path_factory, "tiny-pix2pix", lambda path: build_sd(path, in_channels=8))


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> Path:
    return build_once(tmp_path_factory, "tiny-sdxl", build_sdxl)


@pytest.fixture(scope="session")
def tiny_sdxl_refiner(tiny_sdxl, tmp_path_factory) -> Path:
    return build_once(tmp_path_factory, "tiny-sdxl-refiner", lambda path: build_sdxl_refiner(path, tiny_sdxl))


@pytest.fixture(scope="session")
def tiny_lora(tiny_sd, tmp_path_factory) -> Path:
    """A LoRA for ``tiny_sd``'s UNet (``build_lora``)."""
    return build_once(tmp_path_factory, "tiny-lora", lambda path: build_lora(path, tiny_sd / "unet"))


@pytest.fixture(scope="session")
def tiny_controlnet(tiny_sd, tmp_path_factory) -> Path:
    return build_once(tmp_path_factory, "tiny-controlnet", lambda path: build_controlnet(path, tiny_sd / "unet"))


@pytest.fixture(scope="session")
def tiny_controlnet_b(tiny_sd, tmp_path_factory) -> Path:
    """A second ControlNet (other random weights), for styles with several."""
    return build_once(tmp_path_factory, "tiny-controlnet-b",
                      lambda path: build_controlnet(path, tiny_sd / "unet", seed=3))


@pytest.fixture(scope="session")
def tiny_sd_for_adapter(tmp_path_factory) -> Path:
    """A tiny SD 1.x with SD 1.5's block order, which SD 1.x T2I-Adapters fit (``testkit.models.adapter``)."""
    from testkit.models.adapter import build_sd_for_adapter

    return build_once(tmp_path_factory, "tiny-sd-for-adapter", build_sd_for_adapter)


@pytest.fixture(scope="session")
def tiny_t2i_adapter(tmp_path_factory) -> Path:
    from testkit.models.adapter import build_t2i_adapter

    return build_once(tmp_path_factory, "tiny-t2i-adapter", build_t2i_adapter)


@pytest.fixture(scope="session")
def tiny_t2i_adapter_b(tmp_path_factory) -> Path:
    """A second SD 1.x T2I-Adapter (other random weights), for styles with several."""
    from testkit.models.adapter import build_t2i_adapter

    return build_once(tmp_path_factory, "tiny-t2i-adapter-b", lambda path: build_t2i_adapter(path, seed=6))


@pytest.fixture(scope="session")
def tiny_t2i_adapter_xl(tmp_path_factory) -> Path:
    from testkit.models.adapter import build_t2i_adapter

    return build_once(tmp_path_factory, "tiny-t2i-adapter-xl", lambda path: build_t2i_adapter(path, xl=True))


@pytest.fixture(scope="session")
def tiny_inpaint(tmp_path_factory) -> Path:
    return build_once(tmp_path_factory, "tiny-inpaint", build_inpaint)


@pytest.fixture(scope="session")
def tiny_text2img(tiny_sd) -> Path:
    """Text-to-image for background ``generate``: the tiny SD folder is a text-to-image pipeline."""
    return tiny_sd


@pytest.fixture(scope="session")
def tiny_segformer(tmp_path_factory) -> Path:
    return build_once(tmp_path_factory, "tiny-segformer", build_segformer)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    return build_once(tmp_path_factory, "tiny-clip", build_tiny_clip)


@pytest.fixture(scope="session")
def tiny_blip(tmp_path_factory) -> Path:
    return build_once(tmp_path_factory, "tiny-blip", build_tiny_blip)


@pytest.fixture(scope="session")
def tiny_labels(tmp_path_factory) -> Path:
    return build_once(tmp_path_factory, "tiny-labels", write_tiny_labels)


@pytest.fixture(scope="session")
def tiny_git(tmp_path_factory) -> Path:
    return build_once(tmp_path_factory, "tiny-git", build_tiny_git)


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    return build_once(tmp_path_factory, "u2net-tiny.onnx", build_onnx_segmenter)


@pytest.fixture(scope="session")
def tiny_hf_clip(tmp_path_factory) -> Path:
    return build_once(tmp_path_factory, "tiny-hf-clip", build_hf_clip)


@pytest.fixture(scope="session")
def tiny_ip_adapter(tiny_sd, tmp_path_factory) -> Path:
    """An IP-Adapter folder for ``tiny_sd``'s UNet in h94/IP-Adapter's layout (``testkit.models.ip_adapter``)."""
    from testkit.models.ip_adapter import build_ip_adapter

    return build_once(tmp_path_factory, "tiny-ip-adapter", lambda path: build_ip_adapter(path, tiny_sd / "unet"))


# --------------------------------------------------------------------------- flow transformers, Qwen-Image-Edit


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory) -> Path:
    """FLUX.1 dev, which takes a guidance input (``testkit.models.flow``)."""
    return build_once(tmp_path_factory, "tiny-flux-dev", build_flux)


@pytest.fixture(scope="session")
def tiny_schnell(tmp_path_factory) -> Path:
    """FLUX.1 schnell (no guidance input)."""
    return build_once(tmp_path_factory, "tiny-flux-schnell", lambda path: build_flux(path, guidance_embeds=False))


@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory) -> Path:
    return build_once(tmp_path_factory, "tiny-sd3", build_sd3)


@pytest.fixture(scope="session")
def tiny_kontext(tmp_path_factory) -> Path:
    return build_once(tmp_path_factory, "tiny-kontext", build_kontext)


@pytest.fixture(scope="session")
def tiny_qwen_edit(tmp_path_factory) -> Path:
    """Qwen-Image-Edit (``testkit.models.qwen``)."""
    return build_once(tmp_path_factory, "tiny-qwen-image-edit", build_qwen_edit)


@pytest.fixture(scope="session")
def tiny_qwen_edit_plus(tmp_path_factory) -> Path:
    """Qwen-Image-Edit-2509 (the Plus pipeline)."""
    return build_once(tmp_path_factory, "tiny-qwen-image-edit-2509", lambda path: build_qwen_edit(path, plus=True))


# --------------------------------------------------------------------------- image-to-video (engine: animate)


@pytest.fixture(scope="session")
def tiny_svd(tmp_path_factory) -> Path:
    """Stable Video Diffusion, its UNet built for 4 frames (``testkit.models.video``)."""
    from testkit.models.video import build_svd

    return build_once(tmp_path_factory, "tiny-svd", build_svd)


@pytest.fixture(scope="session")
def tiny_wan(tmp_path_factory) -> Path:
    """Wan 2.1 image-to-video (a CLIP image encoder beside the T5)."""
    from testkit.models.video import build_wan_i2v

    return build_once(tmp_path_factory, "tiny-wan-i2v", build_wan_i2v)


@pytest.fixture(scope="session")
def tiny_wan_ti2v(tmp_path_factory) -> Path:
    """Wan 2.2 TI2V (a WanPipeline folder with a 48-channel transformer and the 16x VAE)."""
    from testkit.models.video import build_wan_ti2v

    return build_once(tmp_path_factory, "tiny-wan-ti2v", build_wan_ti2v)


@pytest.fixture(scope="session")
def tiny_ltx(tmp_path_factory) -> Path:
    """LTX-Video, saved as its text-to-video LTXPipeline as the published checkpoint is."""
    from testkit.models.video import build_ltx

    return build_once(tmp_path_factory, "tiny-ltx-video", build_ltx)
