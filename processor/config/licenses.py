"""Which licences a style's weights come under, and the ``run.allow_noncommercial`` check.

A licence is what the operator declares in config (``license:`` on a style, its refiner, LoRA,
LCM-LoRA, ControlNets, IP-Adapter and background model): the worker cannot read a model card offline, so nothing here
is guessed. Every variant records the licences of the models that made it (``Variant.licenses``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from processor.config.base import NONCOMMERCIAL_LICENSES
from processor.config.styles import StyleBase, WeightsRole

#: Setting that lets a worker run non-commercial weights.
ALLOW_KEY = "run.allow_noncommercial"


@dataclass(frozen=True)
class LicenseUse:
    """One model a style runs and its declared licence (None: not declared in config)."""

    role: WeightsRole
    model: str
    license: str | None


def style_licenses(style: StyleBase) -> list[LicenseUse]:
    """The models ``style`` runs (``StyleBase.weights``: its model, refiner, LoRA, LCM-LoRA,
    ControlNets or T2I-Adapters and their preprocessors, IP-Adapter, background), each with its
    declared licence; a toon style runs none but a background's."""
    return [LicenseUse(use.role, use.ref.model, use.ref.license) for use in style.weights()]


def noncommercial_uses(style: StyleBase) -> list[LicenseUse]:
    return [u for u in style_licenses(style) if u.license in NONCOMMERCIAL_LICENSES]


def noncommercial_problem(names: Sequence[str], styles: Mapping[str, StyleBase]) -> str | None:
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
