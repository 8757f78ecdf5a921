"""Which diffusers pipeline class runs a task on a model's family (``processor.models.families``),
and what to use instead when the family does not run it; the checks that keep a ControlNet or
T2I-Adapter on the family it was trained for."""

from __future__ import annotations

from typing import Any

from processor.errors import ConfigError
from processor.models.families import VIDEO_FAMILIES, Denoiser, Family, FamilyMatch, Task

#: T2I-Adapter ``adapter_type`` values built for SDXL's UNet (the others are for SD 1.x / 2.x).
XL_ADAPTER_TYPES = {"full_adapter_xl"}

#: (task, control kind) -> the task of the pipeline that runs that kind of control model.
_CONTROL_TASKS = {(Task.IMG2IMG, "controlnet"): Task.CONTROLNET_IMG2IMG,
                  (Task.TXT2IMG, "controlnet"): Task.CONTROLNET_TXT2IMG,
                  (Task.TXT2IMG, "adapter"): Task.ADAPTER_TXT2IMG}


def task_problem(task: Task, model: str, found: FamilyMatch) -> str:
    """What to use instead when ``found``'s family does not run ``task`` (the message names the key)."""
    family, channels = found.family, found.family.unet_channels
    if task is Task.VIDEO:
        runs = ", ".join(dict.fromkeys(f.label for f in VIDEO_FAMILIES))
        return (f"model {model!r} is {family.label} ({found.class_name}), not an image-to-video model; engine animate "
                f"runs {runs} models")
    if family.video is not None:
        return (f"model {model!r} is an image-to-video model ({family.label}); it runs under engine: animate only, "
                f"not as a {task.value} model")
    if family.denoiser is Denoiser.TRANSFORMER:
        return (f"model {model!r} ({found.class_name}) has no UNet; {task.value} here (backgrounds, instruct-pix2pix, "
                f"ControlNets) needs an SD 1.x / 2.x / SDXL model: set background.model to one, or drop it")
    if task is Task.INSTRUCT_PIX2PIX:
        return (f"model {model!r} is not an instruct-pix2pix model (its UNet takes {channels} channels, not 8); "
                f"use engine: img2img for it")
    if task is Task.INPAINT:
        return (f"model {model!r} is not an inpainting model (its UNet takes {channels} channels, not 9); "
                f"background.model for mode inpaint needs an inpainting checkpoint, "
                f"e.g. stable-diffusion-v1-5/stable-diffusion-inpainting")
    if task is Task.TXT2IMG:
        return (f"model {model!r} has a {channels}-channel UNet; background mode generate needs a "
                f"text-to-image checkpoint (set styles.<name>.background.model)")
    return (f"model {model!r} has a {channels}-channel UNet ({found.class_name}); engine {task.value} needs "
            f"a text-to-image checkpoint (use engine: instruct-pix2pix for instruct-pix2pix models)")


def check_controlnets(controlnets: list[Any], base: Any, model: str, family: Family) -> None:
    """An SD 1.x ControlNet on SDXL (or back) fails deep in the UNet: refuse it by its text width."""
    width = base.unet.config.cross_attention_dim
    for net in controlnets:
        if net.config.cross_attention_dim != width:
            raise ConfigError(
                f"a ControlNet for text width {net.config.cross_attention_dim} does not fit model {model!r} "
                f"(text width {width}); use a ControlNet trained for {family.label}")


def check_adapters(adapters: list[Any], model: str, found: FamilyMatch) -> None:
    """An SD 1.x adapter's features do not line up with SDXL's UNet blocks (or back)."""
    xl = found.family.series == "sdxl"
    for adapter in adapters:
        for_xl = adapter.config.adapter_type in XL_ADAPTER_TYPES
        if for_xl != xl:
            raise ConfigError(
                f"a T2I-Adapter of type {adapter.config.adapter_type} is for {'SDXL' if for_xl else 'SD 1.x / 2.x'}"
                f" and does not fit model {model!r} ({found.class_name}); use a T2I-Adapter trained for "
                f"{'SDXL' if xl else 'SD 1.x / 2.x'}")


def pipeline_class(found: FamilyMatch, task: Task, model: str, *, controlnets: bool = False,
                   adapters: bool = False) -> str:
    """The diffusers class name ``found``'s family runs ``task`` with (with ControlNets or
    T2I-Adapters: that control pipeline); ``ConfigError`` saying what to use instead."""
    if adapters and task is Task.IMG2IMG:
        raise ConfigError(f"model {model!r}: diffusers has no img2img adapter pipeline: use engine: txt2img for "
                          f"a T2I-Adapter, or a ControlNet")
    wanted = _CONTROL_TASKS.get((task, "controlnet" if controlnets else "adapter" if adapters else ""), task)
    if wanted not in found.family.pipelines:
        # The plain task's message: the family's control pipelines exist wherever its plain one does.
        raise ConfigError(task_problem(task, model, found))
    return found.family.pipelines[wanted]
