"""``styles.<name>.control`` for the img2img and txt2img engines: which kind of model each entry
is, loading it and its map maker, the maps of one input and the pipeline keywords.

Kinds (``processor.models.loader.ControlKind``, from the model's config.json): a ControlNet runs
beside the UNet at every evaluation while ``guidance_end`` lasts (``controlnet_conditioning_scale``,
``control_guidance_end``; a list becomes one MultiControlNetModel). A T2I-Adapter runs ONCE per
pipeline call and its features are added to every UNet evaluation (``adapter_conditioning_scale``;
SDXL: ``adapter_conditioning_factor`` = ``guidance_end``; a list becomes one MultiAdapter). One
style uses one kind: diffusers has no pipeline that runs both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image

from processor.config import ControlSettings
from processor.errors import ConfigError
from processor.manifest import ControlKindName
from processor.models.loader import ControlKind, ModelLoader, ResolvedModel
from processor.pipeline.base import ControlUse
from processor.pipeline.control_preprocess import load_control_map


class StyleControl:
    """A style's ``control`` entries as its engine runs them: ``kind`` and ``load`` at setup,
    ``uses`` and ``pipe_kwargs`` per input. Empty entries: no control, every call a no-op."""

    def __init__(self, style_name: str, entries: Sequence[ControlSettings], models: ModelLoader) -> None:
        self.style_name = style_name
        self.entries = list(entries)
        self.models = models
        #: Per entry: where its model came from (filled by ``load``).
        self.resolved: list[ResolvedModel] = []
        #: Per entry: what makes its map (``processor.pipeline.control_preprocess``).
        self.maps: list[Any] = []
        #: The kind every entry is (one per style), or None without control / before ``load``.
        self.kind: ControlKind | None = None
        #: Per entry: the image channels its model reads (the published canny and sketch
        #: T2I-Adapters read one, a grayscale map; ControlNets three).
        self.channels: list[int] = []
        #: SDXL's adapter pipeline stops the adapter after a fraction of the steps; SD 1.x's cannot.
        self.adapter_factor = False

    def __bool__(self) -> bool:
        return bool(self.entries)

    def entry_kind(self) -> ControlKind:
        """The kind every entry is (read from config.json, nothing loaded yet); ``ConfigError``
        naming the style for a list that mixes the two kinds."""
        kinds = [self.models.control_kind(c.model, c.revision) for c in self.entries]
        if len(set(kinds)) > 1:
            listed = ", ".join(f"{c.model} ({k.value})" for c, k in zip(self.entries, kinds, strict=True))
            raise ConfigError(f"styles.{self.style_name}.control mixes ControlNets and T2I-Adapters ({listed}); "
                              f"diffusers runs one kind per pipeline: keep only ControlNets or only T2I-Adapters")
        return kinds[0]

    def load(self, kind: ControlKind, *, xl: bool = False) -> list[Any]:
        """The entries' loaded modules of ``kind`` (ControlNets or T2I-Adapters) in config order,
        and the map maker of each entry. ``xl``: the style's model is SDXL (adapter factor)."""
        load = self.models.controlnet if kind is ControlKind.CONTROLNET else self.models.t2i_adapter
        modules = []
        self.resolved = []
        for control in self.entries:
            module, resolved = load(control.model, control.revision)
            modules.append(module)
            self.resolved.append(resolved)
        self.maps = [load_control_map(control, self.models) for control in self.entries]
        self.kind = kind
        self.channels = [int(getattr(m.config, "in_channels", 3)) for m in modules]
        self.adapter_factor = kind is ControlKind.T2I_ADAPTER and xl
        return modules

    def describe(self) -> list[str]:
        return [f"{c.type}:{c.model}" for c in self.entries]

    def uses(self, resized: Image.Image) -> list[ControlUse]:
        """The conditioning image of each entry, made from the resized photo."""
        uses = []
        kind: ControlKindName = "t2i-adapter" if self.kind is ControlKind.T2I_ADAPTER else "controlnet"
        for control, resolved, maker in zip(self.entries, self.resolved, self.maps, strict=True):
            made = maker.preprocessor
            uses.append(ControlUse(type=control.type, model=control.model, revision=resolved.revision,
                                   scale=control.scale, guidance_end=control.guidance_end,
                                   image=maker(resized), settings=dict(maker.settings),
                                   preprocessor=made.model if made else None,
                                   preprocessor_revision=made.revision if made else None,
                                   preprocessor_converted=bool(made and made.converted), kind=kind))
        return uses

    def pipe_kwargs(self, uses: list[ControlUse], *, image_key: str = "control_image",
                    batch: int = 1) -> dict[str, Any]:
        """The pipeline keywords for the style's control: one value each, or lists for several.
        ``image_key`` is the ControlNet pipeline's map keyword (img2img: ``control_image``,
        txt2img: ``image``); ``batch`` is the call's image count (an adapter's map is not repeated
        per prompt by diffusers, so each call gets one copy per image)."""
        if not uses:
            return {}
        if self.kind is ControlKind.T2I_ADAPTER:
            return self._adapter_kwargs(uses, batch)
        if len(uses) == 1:
            return {image_key: uses[0].image, "controlnet_conditioning_scale": uses[0].scale,
                    "control_guidance_end": uses[0].guidance_end}
        return {image_key: [u.image for u in uses],
                "controlnet_conditioning_scale": [u.scale for u in uses],
                "control_guidance_end": [u.guidance_end for u in uses]}

    def _adapter_kwargs(self, uses: list[ControlUse], batch: int) -> dict[str, Any]:
        # diffusers gives an adapter as many channels as the PIL image has: "L" for a 1-channel one.
        maps = [u.image.convert("L" if channels == 1 else "RGB")
                for u, channels in zip(uses, self.channels, strict=True)]
        one = len(uses) == 1
        kwargs: dict[str, Any] = {
            "image": [maps[0]] * batch if one else [[m] * batch for m in maps],
            "adapter_conditioning_scale": uses[0].scale if one else [u.scale for u in uses],
        }
        if self.adapter_factor:  # checked at setup: every entry has the same guidance_end
            kwargs["adapter_conditioning_factor"] = uses[0].guidance_end
        return kwargs

    def check_adapter_guidance(self, xl: bool) -> None:
        """``guidance_end`` for T2I-Adapters: SDXL takes one fraction for all of them, SD 1.x none."""
        ends = sorted({c.guidance_end for c in self.entries})
        if not xl and ends != [1.0]:
            raise ConfigError(f"styles.{self.style_name}.control: guidance_end {ends[0]} needs a pipeline that stops "
                              f"the adapter early, and diffusers' SD 1.x adapter pipeline has none (only SDXL's "
                              f"adapter_conditioning_factor); set guidance_end: 1 or use a ControlNet")
        if len(ends) > 1:
            raise ConfigError(f"styles.{self.style_name}.control: T2I-Adapters run with one "
                              f"adapter_conditioning_factor, but the entries' guidance_end differ ({ends}); "
                              f"give them the same guidance_end")
