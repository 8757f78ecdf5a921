"""Which licences a style's weights come under, and the ``run.allow_noncommercial`` check.

A licence is what the operator declares in config (``license:`` on a style, its LoRA, LCM-LoRA,
ControlNets and background model): the worker cannot read a model card offline, so nothing here
is guessed. Every variant records the licences of the models that made it (``Variant.licenses``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from processor.config.base import NONCOMMERCIAL_LICENSES
from processor.config.styles import background_model

#: Setting that lets a worker run non-commercial weights.
ALLOW_KEY = "run.allow_noncommercial"
#: What a model is to the style that runs it (``processor.manifest.LicenseRecord.role``).
Role = Literal["model", "lora", "lcm", "control", "background", "ip_adapter"]


@dataclass(frozen=True)
class LicenseUse:
    """One model a style runs and its declared licence (None: not declared in config)."""

    role: Role
    model: str
    license: str | None


def style_licenses(style: Any) -> list[LicenseUse]:
    """The models ``style`` runs, in order (its model, LoRA, LCM-LoRA, ControlNets or T2I-Adapters
    and their preprocessors, IP-Adapter, background), each with its declared licence; a toon style
    runs none."""
    uses: list[LicenseUse] = []
    own = getattr(style, "model", None)
    if own:
        uses.append(LicenseUse("model", own, style.license))
    lora = getattr(style, "lora", None)
    if lora is not None:
        uses.append(LicenseUse("lora", lora.path, lora.license))
    lcm = getattr(style, "lcm", None)
    if lcm is not None:
        uses.append(LicenseUse("lcm", lcm.lora, lcm.license))
    for control in getattr(style, "control", None) or []:
        uses.append(LicenseUse("control", control.model, control.license))
        if control.preprocessor is not None:  # the model that makes the ControlNet's map
            uses.append(LicenseUse("control", control.preprocessor.model, control.preprocessor.license))
    ip_adapter = getattr(style, "ip_adapter", None)
    if ip_adapter is not None:
        uses.append(LicenseUse("ip_adapter", ip_adapter.model, ip_adapter.license))
    background = background_model(style)
    if background is not None:
        bg = style.background
        declared = bg.license
        if declared is None and own and background == (own, style.revision):
            declared = style.license  # the background runs on the style's own weights
        uses.append(LicenseUse("background", background[0], declared))
    return uses


def noncommercial_uses(style: Any) -> list[LicenseUse]:
    return [u for u in style_licenses(style) if u.license in NONCOMMERCIAL_LICENSES]


def noncommercial_problem(names: Sequence[str], styles: Mapping[str, Any]) -> str | None:
    """What is wrong with running ``names`` while non-commercial weights are not allowed (the text
    follows the key that asked: "run.styles ...", "--style ..."); None: nothing is."""
    found = []
    for name in names:
        if name not in styles:
            continue
        for use in noncommercial_uses(styles[name]):
            found.append(f"style {name!r} ({use.role} {use.model}: license {use.license})")
    if not found:
        return None
    return (f"include {', '.join(found)}, and {ALLOW_KEY} is false; set {ALLOW_KEY}: true if your use is "
            f"non-commercial, or drop the style")
