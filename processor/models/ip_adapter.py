"""IP-Adapter weights (``styles.<name>.ip_adapter``), resolved, loaded and switched per call.

Contract:

- Files: ``<model>/<subfolder>/<weight_name>`` (safetensors only) and a CLIP image encoder folder
  (``config.json`` + safetensors; default ``<subfolder>/image_encoder`` of the same model, as
  h94/IP-Adapter ships it). A hub id is fetched like every model (``processor.models.hub``: only
  those files, the pinned revision, offline = the cache or ``ModelUnavailableError`` naming
  ``processor models pull``); the resolved commit is recorded.
- Loading goes through diffusers' ``load_ip_adapter`` from the local folder. The image encoder is
  loaded here first with ``use_safetensors=True`` (diffusers' own encoder load would accept a
  pickle ``pytorch_model.bin``) and registered on the pipeline, so diffusers does not load one.
- Sharing: ``load_ip_adapter`` swaps the UNet's cross-attention processors and sets its
  ``encoder_hid_proj``, and the UNet is shared by every style on the same base (``from_pipe``). A
  UNet in that state refuses calls without image embeddings, so after loading the adapter's
  processors and projection are kept aside here and the UNet is put back as it was;
  ``IpAdapter.active`` installs them for one pipeline call and restores the plain UNet after, so
  other styles on the same base never see the adapter. Loaded once per (base, adapter). The swap
  assumes one pipeline call at a time on a UNet, as the worker's single compute thread makes them.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from processor.config import IpAdapterSettings
from processor.errors import ConfigError, ModelUnavailableError
from processor.models.hub import PULL_COMMAND, fetch_snapshot, is_local

log = logging.getLogger("processor.models")

#: Files fetched for an image encoder given as a hub id (one transformers model folder).
ENCODER_PATTERNS = ("*.safetensors", "*.json")


@dataclass(frozen=True)
class IpAdapterFiles:
    """Where an IP-Adapter's weights and image encoder are on disk, and which commits."""

    #: The folder ``load_ip_adapter`` reads (``subfolder`` / ``weight_name`` inside).
    folder: Path
    #: The hub commit, or None for a local folder.
    revision: str | None
    weights: Path
    encoder: Path
    encoder_revision: str | None


def encoder_source(settings: IpAdapterSettings) -> tuple[str, str, str | None]:
    """(model, subfolder, revision) of the image encoder, defaults filled in (see ``IpAdapterEncoderSettings``)."""
    enc = settings.image_encoder
    model = enc.model or settings.model
    subfolder = enc.subfolder if enc.subfolder is not None else "/".join(
        p for p in (settings.subfolder, "image_encoder") if p)
    revision = enc.revision if enc.revision is not None else (settings.revision if model == settings.model else None)
    return model, subfolder.strip("/"), revision


def _folder(model: str, revision: str | None, patterns: list[str], *, what: str, loader: Any,
            download: bool) -> tuple[Path, str | None]:
    if is_local(model):
        return Path(model).expanduser(), None
    path = fetch_snapshot(model, what=what + (f"@{revision}" if revision else ""), revision=revision,
                          cache_dir=loader.cache_dir, allow_patterns=patterns, download=download,
                          offline=loader.offline)
    return path, path.name


def resolve_files(loader: Any, settings: IpAdapterSettings, *, download: bool | None = None) -> IpAdapterFiles:
    """The local files of ``settings`` (a hub id fetched unless offline; ``download`` forces it either
    way). Raises ``ModelUnavailableError`` naming the missing file and the fix."""
    fetch = not loader.offline if download is None else download
    weights_rel = "/".join(p for p in (settings.subfolder, settings.weight_name) if p)
    enc_model, enc_sub, enc_rev = encoder_source(settings)
    enc_patterns = [f"{enc_sub}/{p}" if enc_sub else p for p in ENCODER_PATTERNS]
    same = enc_model == settings.model and enc_rev == settings.revision
    folder, commit = _folder(settings.model, settings.revision, [weights_rel] + (enc_patterns if same else []),
                             what=f"IP-Adapter {settings.model}", loader=loader, download=fetch)
    weights = folder / weights_rel
    if not weights.is_file():
        raise ModelUnavailableError(
            f"IP-Adapter {settings.model!r}: no {weights_rel} in {folder}; set ip_adapter.subfolder and "
            f"ip_adapter.weight_name to a .safetensors file it has"
            + ("" if is_local(settings.model) else f", or fetch it with `{PULL_COMMAND}`"))
    if same:
        enc_folder, enc_commit = folder, commit
    else:
        enc_folder, enc_commit = _folder(enc_model, enc_rev, enc_patterns, what=f"IP-Adapter image encoder {enc_model}",
                                         loader=loader, download=fetch)
    encoder = enc_folder / enc_sub if enc_sub else enc_folder
    if not (encoder / "config.json").is_file() or not any(encoder.glob("*.safetensors")):
        raise ModelUnavailableError(
            f"IP-Adapter image encoder {enc_model!r}: {encoder} needs config.json and *.safetensors (a "
            f"CLIPVisionModelWithProjection folder); set ip_adapter.image_encoder.model / .subfolder"
            + ("" if is_local(enc_model) else f", or fetch it with `{PULL_COMMAND}`"))
    return IpAdapterFiles(folder, commit, weights, encoder, enc_commit)


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_fits(settings: IpAdapterSettings, weights: Path, unet: Any, encoder: Any, model: str) -> None:
    """A clear error for an IP-Adapter trained for another family (diffusers fails deep in a
    matmul), or a file that is not an IP-Adapter at all."""
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt", device="cpu") as f:
        keys = list(f.keys())
        if not any(k.startswith("image_proj.") for k in keys) or "ip_adapter.1.to_k_ip.weight" not in keys:
            raise ConfigError(f"ip_adapter.weight_name {settings.weight_name!r} is not an IP-Adapter (no "
                              f"image_proj.* / ip_adapter.* tensors); name an IP-Adapter .safetensors file")
        text_width = f.get_slice("ip_adapter.1.to_k_ip.weight").get_shape()[1]
        proj = f.get_slice("image_proj.proj.weight").get_shape() if "image_proj.proj.weight" in keys else None
    width = unet.config.cross_attention_dim
    if text_width != width:
        raise ConfigError(f"IP-Adapter {settings.model}/{settings.weight_name} is for text width {text_width}; model "
                          f"{model!r} has {width}: use the IP-Adapter trained for this family (SD 1.x: "
                          f"models/ip-adapter_sd15.safetensors, SDXL: sdxl_models/ip-adapter_sdxl_vit-h.safetensors)")
    embed = encoder.config.projection_dim
    if proj is not None and proj[-1] != embed:
        raise ConfigError(f"IP-Adapter {settings.weight_name!r} reads {proj[-1]}-wide image embeddings; the image "
                          f"encoder gives {embed}: set ip_adapter.image_encoder to the encoder it was trained with")


def block_layout(unet: Any) -> str:
    """The UNet's attention blocks a per-block scale can name, e.g. ``down: block_1 (2 layers)``."""
    per_block = unet.config.layers_per_block
    if isinstance(per_block, (list, tuple)):  # per-block layer counts: say the first, a hint is enough
        per_block = per_block[0]
    layers = {"down": per_block, "up": per_block + 1}  # an up block has one layer more (diffusers' layout)
    parts = []
    for group, blocks in (("down", unet.down_blocks), ("up", unet.up_blocks)):
        named = [f"block_{i}" for i, b in enumerate(blocks) if hasattr(b, "attentions")]
        n = layers[group]
        parts.append(f"{group}: {', '.join(named) or 'none'} ({n} layer{'s' if n != 1 else ''} each)")
    return "; ".join([*parts, "mid: one number"])


def check_scale(style_name: str, scale: Any, unet: Any) -> None:
    """``ip_adapter.scale`` against this UNet's blocks (names and layer counts), as diffusers'
    ``set_ip_adapter_scale`` expands it; a ``ConfigError`` naming the key and the blocks otherwise."""
    if not isinstance(scale, dict):
        return
    from diffusers.loaders.unet_loader_utils import _maybe_expand_lora_scales

    try:
        _maybe_expand_lora_scales(unet, [scale], default_scale=0.0)
    except ValueError as exc:
        raise ConfigError(f"styles.{style_name}.ip_adapter.scale does not fit this UNet: {exc} "
                          f"(its attention blocks: {block_layout(unet)})") from None


@dataclass
class IpAdapter:
    """One IP-Adapter loaded for one base UNet: its processors and projection, kept aside."""

    settings: IpAdapterSettings
    files: IpAdapterFiles
    #: The weights file's sha256.
    sha256: str
    image_encoder: Any
    feature_extractor: Any
    unet: Any
    processors: dict[str, Any] = field(default_factory=dict)
    projection: Any = None

    @contextmanager
    def active(self, pipe: Any, scale: float | dict[str, Any]) -> Iterator[None]:
        """The adapter in the shared UNet at ``scale`` for the calls inside; the UNet as it was after."""
        unet = self.unet
        plain = dict(unet.attn_processors)
        plain_projection, plain_kind = unet.encoder_hid_proj, unet.config.encoder_hid_dim_type
        # set_attn_processor pops from the mapping it is given: always pass a copy.
        unet.set_attn_processor(dict(self.processors))
        unet.encoder_hid_proj = self.projection
        unet.config.encoder_hid_dim_type = "ip_image_proj"
        try:
            pipe.set_ip_adapter_scale(scale)
            yield
        finally:
            unet.set_attn_processor(plain)
            unet.encoder_hid_proj = plain_projection
            unet.config.encoder_hid_dim_type = plain_kind


def load(loader: Any, pipe: Any, settings: IpAdapterSettings, model: str) -> IpAdapter:
    """Load ``settings`` into ``pipe``'s (shared) UNet through ``load_ip_adapter`` and put the UNet
    back as it was (see the module docstring). The caller caches the result per base."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    files = resolve_files(loader, settings)
    device, dtype = loader.device(), loader.dtype()
    log.info("model_loading", extra={"model": settings.model, "revision": files.revision, "kind": "ip_adapter",
                                     "device": device, "dtype": str(dtype)})
    try:
        encoder = CLIPVisionModelWithProjection.from_pretrained(files.encoder, use_safetensors=True,
                                                                local_files_only=True, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(f"IP-Adapter image encoder in {files.encoder} could not be loaded: {exc}") from exc
    encoder = encoder.to(device) if device != "cpu" else encoder
    if (files.encoder / "preprocessor_config.json").is_file():
        processor = CLIPImageProcessor.from_pretrained(files.encoder)
    else:  # h94/IP-Adapter ships none: CLIP's resize and crop to the encoder's own input size
        side = encoder.config.image_size
        processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    unet = pipe.unet
    _check_fits(settings, files.weights, unet, encoder, model)
    plain = dict(unet.attn_processors)
    plain_projection, plain_kind = unet.encoder_hid_proj, unet.config.encoder_hid_dim_type
    pipe.register_modules(image_encoder=encoder, feature_extractor=processor)
    try:
        # The encoder is registered already, so diffusers loads none (image_encoder_folder=None).
        pipe.load_ip_adapter(str(files.folder), subfolder=settings.subfolder or None, weight_name=settings.weight_name,
                             image_encoder_folder=None, local_files_only=True)
        adapter = IpAdapter(settings, files, _file_hash(files.weights), encoder, processor, unet,
                            dict(unet.attn_processors), unet.encoder_hid_proj)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelUnavailableError(f"IP-Adapter {settings.model}/{settings.weight_name} could not be loaded into "
                                    f"model {model!r}: {type(exc).__name__}: {exc}") from exc
    finally:
        unet.set_attn_processor(plain)
        unet.encoder_hid_proj = plain_projection
        unet.config.encoder_hid_dim_type = plain_kind
    return adapter


def share(adapter: IpAdapter, pipe: Any) -> None:
    """Give another pipeline object over the same base the adapter's encoder (loaded once)."""
    pipe.register_modules(image_encoder=adapter.image_encoder, feature_extractor=adapter.feature_extractor)
