"""The GPU-path switches (``models.performance``): applied to the shared modules, recorded per variant."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from PIL import Image

from processor.cli.compose import build_registry
from processor.config import PerformanceSettings
from processor.models import accel
from processor.pipeline.diffusion import prepare_vae
from testkit.images import photo_image
from testkit.models.sd import TINY_NATIVE
from tests.models.test_diffusion import img2img_style, make_settings


def engine_for(tmp_path, tiny_sd, performance: dict | None = None, **style):
    settings = make_settings(tmp_path, {"s": img2img_style(tiny_sd, variants=2, **style)},
                             models={"performance": performance or {}})
    registry = build_registry(settings)
    registry.setup(["s"])
    return registry.engine("s")


def processors(module) -> set[type]:
    return {type(p) for p in module.attn_processors.values()}


def test_defaults_on_the_cpu_are_sdpa_without_channels_last_or_compile(tiny_sd, tmp_path):
    engine = engine_for(tmp_path, tiny_sd)
    assert processors(engine.pipe.unet) == {AttnProcessor2_0}
    assert processors(engine.pipe.vae) == {AttnProcessor2_0}
    variants = engine(photo_image(96, 64))
    record = variants[0].parameters["performance"]
    assert record == {"attention": "sdpa", "channels_last": False, "compile_unet": False, "vae_slicing": True,
                      "vae_tiling": "auto", "offload": "none", "vae_tiled": False}
    assert engine.pipe.vae.use_slicing


def test_eager_attention_channels_last_and_tiling_are_applied_and_recorded(tiny_sd, tmp_path):
    engine = engine_for(tmp_path, tiny_sd, {"attention": "eager", "channels_last": True, "vae_tiling": "on",
                                            "vae_slicing": False})
    unet = engine.pipe.unet
    assert processors(unet) == {AttnProcessor}
    conv = unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    variants = engine(photo_image(96, 64))
    assert len(variants) == 2 and variants[0].image.size == (64, 40)
    record = variants[0].parameters["performance"]
    assert record["attention"] == "eager" and record["channels_last"] and record["vae_tiled"]
    assert engine.pipe.vae.use_tiling and not engine.pipe.vae.use_slicing


def test_auto_tiling_only_above_twice_the_native_size(tiny_sd, tmp_path):
    engine = engine_for(tmp_path, tiny_sd)
    vae, native = engine.pipe.vae, TINY_NATIVE
    assert accel.set_vae_tiling(engine.pipe, engine.switches, 2 * native + 8, native) and vae.use_tiling
    assert not accel.set_vae_tiling(engine.pipe, engine.switches, 2 * native, native) and not vae.use_tiling
    # The engine decides per call: a native-size input after a large one is decoded untiled again.
    prepare_vae(engine.loaded, engine.pipe, (2 * native + 8, native), native)
    assert vae.use_tiling
    assert not engine(photo_image(96, 64))[0].parameters["performance"]["vae_tiled"] and not vae.use_tiling


def test_switches_resolve_per_device():
    settings = PerformanceSettings()
    assert accel.resolve(settings, "cuda:0")["channels_last"] is True
    assert accel.resolve(settings, "cpu")["channels_last"] is False
    assert accel.resolve(PerformanceSettings(channels_last=False), "cuda")["channels_last"] is False
    assert accel.resolve(settings, "cuda")["compile_mode"] is None  # only named when compiling


def test_warm_up_runs_only_when_compiling():
    calls = []
    assert accel.warm_up(lambda: calls.append(1), {"compile_unet": False}, "s") is None and calls == []
    seconds = accel.warm_up(lambda: calls.append(1), {"compile_unet": True}, "s")
    assert calls == [1] and seconds is not None and seconds >= 0


@pytest.mark.slow
def test_compiled_unet_warms_up_at_setup_and_records_it(tiny_sd, tmp_path):
    """torch.compile on the CPU builds C++ kernels: minutes on a small machine, hence slow."""
    engine = engine_for(tmp_path, tiny_sd, {"compile_unet": True})
    assert engine.compile_warmup_s is not None and engine.compile_warmup_s > 0
    record = engine(Image.new("RGB", (64, 64), "gray"))[0].parameters["performance"]
    assert record["compile_unet"] and record["compile_warmup_s"] == engine.compile_warmup_s
