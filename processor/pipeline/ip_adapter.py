"""``style_image`` + ``ip_adapter`` on an img2img style: the picture of the look the user wants,
read once when the style loads, steering every round through an IP-Adapter.

Contract: the style image is a local path or ``bucket:<key>`` in the configured store (the
``lora.path`` convention), decoded with the same safe decoder as inputs (``pipeline.decode``,
default limits). One that cannot be read or decoded is a ``ConfigError`` at worker start naming
the style and the key (for a per-input engine the registry turns that into a failed input). Every
variant records the adapter, its scale(s) and the image's key and sha256 (``record``).

An input may bring its own picture (``processor.pipeline.look``, in ``ItemContext.style_image``):
the same engine then uses it for that input only, and records it with ``style_image_source:
input``; the style's picture stays loaded for the next input. A style with an ``ip_adapter`` and
no ``style_image`` runs only inputs that bring one (the sidecar check refuses the others first).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from processor.config import DecodeSettings, Img2ImgStyle
from processor.errors import ConfigError, ItemError, StoreError
from processor.models.loader import BUCKET_SCHEME, ModelLoader, is_bucket
from processor.pipeline.look import FROM_INPUT, FROM_STYLE


@dataclass(frozen=True)
class StyleImage:
    """The decoded style image and where it came from."""

    #: As configured: a path or ``bucket:<key>``.
    source: str
    #: sha256 of the file's bytes (what the manifest records).
    sha256: str
    image: Image.Image
    #: The object's ETag when it came from the bucket.
    etag: str | None = None


def read_style_image(style_name: str, source: str, models: ModelLoader,
                     limits: DecodeSettings | None = None) -> StyleImage:
    """Read and decode ``source`` (see the module docstring); ``ConfigError`` naming the key otherwise."""
    from processor.pipeline.decode import decode_image

    limits = limits or DecodeSettings()
    key = f"styles.{style_name}.style_image"
    etag = None
    try:
        if is_bucket(source):
            data, etag = models.read_bucket(source[len(BUCKET_SCHEME):].lstrip("/"), what=f"{key} {source!r}",
                                            max_bytes=limits.max_bytes)
        else:
            data = Path(source).expanduser().read_bytes()
    except (OSError, StoreError) as exc:
        raise ConfigError(f"{key} {source!r} cannot be read ({type(exc).__name__}: {exc}); upload the picture there "
                          f"or fix {key}") from None
    try:
        decoded = decode_image(data, limits, name=source)
    except ItemError as exc:
        raise ConfigError(f"{key} {source!r} is not a usable picture: {exc}; {exc.hint}") from None
    return StyleImage(source, hashlib.sha256(data).hexdigest(), decoded.image, etag)


class IpAdapterUse:
    """One style's IP-Adapter and style image, as its engine runs them."""

    def __init__(self, style_name: str, style: Img2ImgStyle, pipe: Any, models: ModelLoader) -> None:
        from processor.models.ip_adapter import check_scale

        if style.ip_adapter is None:
            raise ValueError(f"style {style_name!r} has no ip_adapter")
        self.style_name = style_name
        if models.switches(style.model, style.revision).get("compile_unet"):
            # The adapter goes in and out of the shared UNet around every call; a compiled UNet
            # would recompile each time (and its wrapper does not pass the swap through).
            raise ConfigError(f"styles.{style_name}.ip_adapter does not work with models.performance.compile_unet: "
                              f"true; turn one of them off")
        self.settings = style.ip_adapter
        self.scale = style.ip_adapter.scale
        # The picture first: a bad key is the likelier mistake and needs no weights to report.
        # None: each input brings its own (``processor.pipeline.look``).
        self.style_image = (read_style_image(style_name, style.style_image, models)
                            if style.style_image is not None else None)
        self.adapter = models.ip_adapter(pipe, style.model, style.revision, style.ip_adapter)
        check_scale(style_name, self.scale, pipe.unet)

    @contextmanager
    def active(self, pipe: Any) -> Iterator[None]:
        """The adapter switched on in the shared UNet at this style's scale, for the calls inside."""
        with self.adapter.active(pipe, self.scale):
            yield

    def picture(self, context: Any = None) -> Any:
        """The picture for one input: its own (``ItemContext.style_image``) or the style's
        (``StyleImage``); ``InvalidSidecar`` when the style has none and the input gives none."""
        own = getattr(context, "style_image", None)
        if own is not None:
            return own
        if self.style_image is None:
            from processor.errors import InvalidSidecar

            raise InvalidSidecar(f"style {self.style_name!r} takes its style picture from each input, and this "
                                 f"input names none", hint="Set style_image in the sidecar to the key of a picture "
                                 "of the look under the styles prefix, or pick another style.")
        return self.style_image

    def pipe_kwargs(self, context: Any = None) -> dict[str, Any]:
        """The pipeline keywords that hand this input's picture (``picture``) to the adapter."""
        return {"ip_adapter_image": self.picture(context).image}

    def record(self, context: Any = None) -> dict[str, Any]:
        """What the manifest says steered the variant (``parameters.ip_adapter``): the adapter and
        the picture used for this input, and whether it was the input's own or the style's."""
        picture = self.picture(context)
        own = picture is not self.style_image
        files = self.adapter.files
        from processor.models.ip_adapter import encoder_source

        enc_model, enc_sub, _ = encoder_source(self.settings)
        return {
            "model": self.settings.model,
            "revision": self.settings.revision or files.revision,
            "subfolder": self.settings.subfolder,
            "weight_name": self.settings.weight_name,
            "hash": self.adapter.sha256[:12],
            "image_encoder": f"{enc_model}/{enc_sub}" if enc_sub else enc_model,
            "image_encoder_revision": self.settings.image_encoder.revision or files.encoder_revision,
            "scale": self.scale,
            "style_image": picture.source,
            "style_image_sha256": picture.sha256,
            "style_image_etag": picture.etag,
            "style_image_source": FROM_INPUT if own else FROM_STYLE,
        }


def _number(value: float) -> str:
    return f"{value:g}"


def a1111_unit(record: dict[str, Any]) -> str:
    """A ``record()`` as the A1111 ControlNet extension writes an IP-Adapter unit
    (``Module: ip-adapter_clip, Model: ip-adapter_sd15 [hash], Weight: ...``). A per-block scale
    is written as its largest value plus ``Block Weights`` (group.block=layer/layer ...)."""
    scale = record.get("scale", 1.0)
    model = str(record.get("weight_name", "ip-adapter")).removesuffix(".safetensors")
    text = f"Module: ip-adapter_clip, Model: {model} [{str(record.get('hash', ''))[:8]}], "
    if isinstance(scale, dict):
        blocks = []
        values: list[float] = []
        for group, spec in scale.items():
            if isinstance(spec, dict):
                for block, layers in spec.items():
                    layers = layers if isinstance(layers, list) else [layers]
                    values.extend(layers)
                    blocks.append(f"{group}.{block}=" + "/".join(_number(x) for x in layers))
            else:
                spec = spec if isinstance(spec, list) else [spec]
                values.extend(spec)
                blocks.append(f"{group}=" + "/".join(_number(x) for x in spec))
        text += f"Weight: {_number(max(values, default=0.0))}, Block Weights: {' '.join(blocks)}"
    else:
        text += f"Weight: {_number(scale)}"
    text += ", Guidance Start: 0, Guidance End: 1"
    if record.get("style_image_sha256"):
        text += f", Style Image Hash: {record['style_image_sha256'][:10]}"
    return text
