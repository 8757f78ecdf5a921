"""Tiny random-weight models as session fixtures: each is built once per test session into its own
temporary folder by the builders of ``testkit.models`` and loaded by the tests through
``processor.models.loader`` exactly like a production model folder.
"""

from __future__ import annotations

import importlib.util
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


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    return build_sd(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_pix2pix(tmp_path_factory) -> Path:
    return build_sd(tmp_path_factory.mktemp("models") / "tiny-pix2pix", in_channels=8)


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> Path:
    return build_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(scope="session")
def tiny_sdxl_refiner(tiny_sdxl, tmp_path_factory) -> Path:
    return build_sdxl_refiner(tmp_path_factory.mktemp("models") / "tiny-sdxl-refiner", tiny_sdxl)


@pytest.fixture(scope="session")
def tiny_lora(tiny_sd, tmp_path_factory) -> Path:
    """A LoRA for ``tiny_sd``'s UNet (``build_lora``)."""
    return build_lora(tmp_path_factory.mktemp("lora"), tiny_sd / "unet")


@pytest.fixture(scope="session")
def tiny_controlnet(tiny_sd, tmp_path_factory) -> Path:
    return build_controlnet(tmp_path_factory.mktemp("models") / "tiny-controlnet", tiny_sd / "unet")


@pytest.fixture(scope="session")
def tiny_controlnet_b(tiny_sd, tmp_path_factory) -> Path:
    """A second ControlNet (other random weights), for styles with several."""
    return build_controlnet(tmp_path_factory.mktemp("models") / "tiny-controlnet-b", tiny_sd / "unet", seed=3)


@pytest.fixture(scope="session")
def tiny_sd_for_adapter(tmp_path_factory) -> Path:
    """A tiny SD 1.x with SD 1.5's block order, which SD 1.x T2I-Adapters fit (``testkit.models.adapter``)."""
    from testkit.models.adapter import build_sd_for_adapter

    return build_sd_for_adapter(tmp_path_factory.mktemp("models") / "tiny-sd-for-adapter")


@pytest.fixture(scope="session")
def tiny_t2i_adapter(tmp_path_factory) -> Path:
    from testkit.models.adapter import build_t2i_adapter

    return build_t2i_adapter(tmp_path_factory.mktemp("models") / "tiny-t2i-adapter")


@pytest.fixture(scope="session")
def tiny_t2i_adapter_b(tmp_path_factory) -> Path:
    """A second SD 1.x T2I-Adapter (other random weights), for styles with several."""
    from testkit.models.adapter import build_t2i_adapter

    return build_t2i_adapter(tmp_path_factory.mktemp("models") / "tiny-t2i-adapter-b", seed=6)


@pytest.fixture(scope="session")
def tiny_t2i_adapter_xl(tmp_path_factory) -> Path:
    from testkit.models.adapter import build_t2i_adapter

    return build_t2i_adapter(tmp_path_factory.mktemp("models") / "tiny-t2i-adapter-xl", xl=True)


@pytest.fixture(scope="session")
def tiny_inpaint(tmp_path_factory) -> Path:
    return build_inpaint(tmp_path_factory.mktemp("models") / "tiny-inpaint")


@pytest.fixture(scope="session")
def tiny_text2img(tiny_sd) -> Path:
    """Text-to-image for background ``generate``: the tiny SD folder is a text-to-image pipeline."""
    return tiny_sd


@pytest.fixture(scope="session")
def tiny_segformer(tmp_path_factory) -> Path:
    return build_segformer(tmp_path_factory.mktemp("models") / "tiny-segformer")


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip")


@pytest.fixture(scope="session")
def tiny_blip(tmp_path_factory) -> Path:
    return build_tiny_blip(tmp_path_factory.mktemp("models") / "tiny-blip")


@pytest.fixture(scope="session")
def tiny_labels(tmp_path_factory) -> Path:
    return write_tiny_labels(tmp_path_factory.mktemp("labels"))


@pytest.fixture(scope="session")
def tiny_git(tmp_path_factory) -> Path:
    return build_tiny_git(tmp_path_factory.mktemp("models") / "tiny-git")


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    return build_onnx_segmenter(tmp_path_factory.mktemp("onnx") / "u2net-tiny.onnx")


@pytest.fixture(scope="session")
def tiny_hf_clip(tmp_path_factory) -> Path:
    return build_hf_clip(tmp_path_factory.mktemp("models") / "tiny-hf-clip")


@pytest.fixture(scope="session")
def tiny_ip_adapter(tiny_sd, tmp_path_factory) -> Path:
    """An IP-Adapter folder for ``tiny_sd``'s UNet in h94/IP-Adapter's layout (``testkit.models.ip_adapter``)."""
    from testkit.models.ip_adapter import build_ip_adapter

    return build_ip_adapter(tmp_path_factory.mktemp("models") / "tiny-ip-adapter", tiny_sd / "unet")


# --------------------------------------------------------------------------- flow transformers, Qwen-Image-Edit


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory) -> Path:
    """FLUX.1 dev, which takes a guidance input (``testkit.models.flow``)."""
    return build_flux(tmp_path_factory.mktemp("models") / "tiny-flux-dev")


@pytest.fixture(scope="session")
def tiny_schnell(tmp_path_factory) -> Path:
    """FLUX.1 schnell (no guidance input)."""
    return build_flux(tmp_path_factory.mktemp("models") / "tiny-flux-schnell", guidance_embeds=False)


@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory) -> Path:
    return build_sd3(tmp_path_factory.mktemp("models") / "tiny-sd3")


@pytest.fixture(scope="session")
def tiny_kontext(tmp_path_factory) -> Path:
    return build_kontext(tmp_path_factory.mktemp("models") / "tiny-kontext")


@pytest.fixture(scope="session")
def tiny_qwen_edit(tmp_path_factory) -> Path:
    """Qwen-Image-Edit (``testkit.models.qwen``)."""
    return build_qwen_edit(tmp_path_factory.mktemp("models") / "tiny-qwen-image-edit")


@pytest.fixture(scope="session")
def tiny_qwen_edit_plus(tmp_path_factory) -> Path:
    """Qwen-Image-Edit-2509 (the Plus pipeline)."""
    return build_qwen_edit(tmp_path_factory.mktemp("models") / "tiny-qwen-image-edit-2509", plus=True)
