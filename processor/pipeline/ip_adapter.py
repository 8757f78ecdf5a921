"""``style_image`` + ``ip_adapter`` on an img2img style: the picture of the look the user wants,
read once when the style loads, steering every round through an IP-Adapter.

Contract: the style image is a local path or ``bucket:<key>`` in the configured store (the
``lora.path`` convention), decoded with the same safe decoder as inputs (``pipeline.decode``,
default limits). One that cannot be read or decoded is a ``ConfigError`` at worker start naming
the style and the key (for a per-input engine the registry turns that into a failed input). Every
variant records the adapter, its scale(s) and the image's key and sha256 (``record``).
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

        if style.ip_adapter is None or style.style_image is None:
            raise ValueError(f"style {style_name!r} has no style_image / ip_adapter")
        if models.switches(style.model, style.revision).get("compile_unet"):
            # The adapter goes in and out of the shared UNet around every call; a compiled UNet
            # would recompile each time (and its wrapper does not pass the swap through).
            raise ConfigError(f"styles.{style_name}.ip_adapter does not work with models.performance.compile_unet: "
                              f"true; turn one of them off")
        self.settings = style.ip_adapter
        self.scale = style.ip_adapter.scale
        # The picture first: a bad key is the likelier mistake and needs no weights to report.
        self.style_image = read_style_image(style_name, style.style_image, models)
        self.adapter = models.ip_adapter(pipe, style.model, style.revision, style.ip_adapter)
        check_scale(style_name, self.scale, pipe.unet)

    @contextmanager
    def active(self, pipe: Any) -> Iterator[None]:
        """The adapter switched on in the shared UNet at this style's scale, for the calls inside."""
        with self.adapter.active(pipe, self.scale):
            yield

    def pipe_kwargs(self) -> dict[str, Any]:
        """The pipeline keywords that hand the style image to the adapter."""
        return {"ip_adapter_image": self.style_image.image}

    def record(self) -> dict[str, Any]:
        """What the manifest says steered the variant (``parameters.ip_adapter``)."""
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
            "style_image": self.style_image.source,
            "style_image_sha256": self.style_image.sha256,
            "style_image_etag": self.style_image.etag,
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
