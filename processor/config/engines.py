"""Every style section by its ``engine`` key: the union ``styles.<name>`` validates against, and
the styles a config without ``styles:`` has."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from processor.config.animate import AnimateStyle
from processor.config.styles import EditStyle, Img2ImgStyle, InstructPix2PixStyle, ToonStyle, Txt2ImgStyle

StyleSettings = Annotated[
    ToonStyle | Img2ImgStyle | InstructPix2PixStyle | Txt2ImgStyle | EditStyle | AnimateStyle,
    Field(discriminator="engine"),
]

#: The ``engine`` values (pydantic puts them in a style's error location, after its name).
ENGINE_KEYS = frozenset({"toon", "img2img", "instruct-pix2pix", "txt2img", "edit", "animate"})


def default_styles() -> dict[str, Any]:
    """The styles a config without ``styles:`` has: the weight-free toon filter."""
    return {"toon": ToonStyle()}
