"""Diffusion weights, loaded once per worker and shared between styles.

Contract:

- Every model is a local diffusers folder (``model_index.json`` inside) or a hub id. A hub id is
  first resolved to a snapshot folder in the Hugging Face cache (``snapshot_download``, fetching
  only the pipeline's components as ``*.safetensors`` / ``*.json`` / ``*.txt``), then loaded from
  that folder, so production and the tiny-model tests go through the same ``from_pretrained``.
- ``use_safetensors=True`` always (no pickle); remote code is never trusted; ``revision`` pins the
  hub commit and the resolved commit is what the manifest records.
- Offline (``models.offline: true`` or ``HF_HUB_OFFLINE=1``): nothing touches the network, and a
  model missing from the cache raises ``ModelUnavailableError`` at start naming the model and the
  command that fetches it (``processor models pull``).
- Every weight-bearing component (UNet, VAE, text encoders, ...) must have ``*.safetensors``
  (``processor.models.safeweights``). A snapshot without them resolves to its converted folder under
  ``<cache>/processor-converted/`` when ``processor models pull --convert-pickle`` made one; else
  ``ModelUnavailableError`` names the components and the fixes (a ``revision:`` with safetensors,
  or that conversion). The worker itself never unpickles anything.
- Device and dtype: ``auto`` means CUDA when PyTorch sees a GPU, else the CPU; on CUDA each model
  loads in the dtype its family wants (``processor.models.families``: bfloat16 for FLUX.1, SD 3.5,
  Kontext and Qwen-Image-Edit, float16 otherwise), on the CPU in float32.
- Sharing: one base pipeline per (folder, dtype, device). Styles derive their own pipeline object
  with ``from_pipe`` (a new scheduler, the same UNet/VAE/text encoders in memory), so two styles on
  ``mo-di-diffusion`` cost one copy of the weights.
- LoRA adapters are loaded once per (base, adapter) under a stable adapter name; engines switch
  them on (with their scale) or off before each call, since the UNet they patch is shared. A LoRA
  may live in the bucket (``lora.path: bucket:models/loras/<name>/``, what ``processor finetune``
  writes): it is copied once per ETag into ``<cache>/processor-loras/`` and loaded from there.

Torch and diffusers are imported lazily, so a toon-only worker never imports them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from processor.config import IpAdapterSettings, LoraSettings, ModelSettings, PerformanceSettings, StyleOption
from processor.errors import ConfigError, ModelUnavailableError
from processor.models import safeweights
from processor.models.families import Family, FamilyMatch, Task, choose_dtype, identify, read_model_index
from processor.models.hub import (
    IGNORE_PATTERNS,
    PULL_COMMAND,
    SKIPPED_COMPONENTS,
    component_patterns,
    fetch_file,
    fetch_snapshot,
    is_local,
)
from processor.models.lora_hash import a1111_lora_hash
from processor.models.pipelines import check_adapters, check_controlnets, pipeline_class

log = logging.getLogger("processor.models")

#: Files fetched for a LoRA given as a hub id.
LORA_PATTERNS = ["*.safetensors", "*.json"]
#: Files fetched for a ControlNet given as a hub id (one model folder: config + safetensors).
CONTROLNET_PATTERNS = ["*.safetensors", "*.json"]
#: ``lora.path`` prefix of a LoRA stored in the bucket (a key, or a prefix holding ``LORA_FILE``).
BUCKET_SCHEME = "bucket:"
#: The file a LoRA folder holds by default (diffusers' ``save_lora_weights`` name).
LORA_FILE = "pytorch_lora_weights.safetensors"
_TRUTHY = {"1", "true", "yes", "on"}


class ControlKind(str, Enum):
    """What a ``control.model`` is, read from its config.json (``_class_name``)."""

    CONTROLNET = "controlnet"
    T2I_ADAPTER = "t2i-adapter"


#: config.json ``_class_name`` -> the kind of control model it is (nothing else is loaded).
CONTROL_CLASSES = {"ControlNetModel": ControlKind.CONTROLNET, "T2IAdapter": ControlKind.T2I_ADAPTER}


def offline_mode(settings: ModelSettings) -> bool:
    return settings.offline or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUTHY


def is_bucket(path: str) -> bool:
    """A ``lora.path`` naming a key or prefix in the bucket (``bucket:models/loras/x/``)."""
    return path.startswith(BUCKET_SCHEME)


@dataclass(frozen=True)
class ResolvedModel:
    """Where a configured model's files are on disk, and which commit they are."""

    #: As configured: hub id or path.
    model: str
    #: The folder ``from_pretrained`` reads.
    path: Path
    #: The hub commit loaded (the pinned revision resolved), or None for a local folder.
    revision: str | None
    #: True when ``path`` is a ``models pull --convert-pickle`` folder: the commit's pickle weights
    #: converted to safetensors here, not files the repo published (recorded in every manifest).
    converted: bool = False


class ModelLoader:
    """One per worker: resolves, loads and shares pipelines (see the module docstring)."""

    def __init__(self, settings: ModelSettings | None = None, store: Callable[[], Any] | None = None) -> None:
        self.settings = settings or ModelSettings()
        #: Opens the bucket (an ``ObjectStore``) for ``bucket:`` LoRAs; called only when one is configured.
        self._store = store
        self._lock = threading.RLock()
        self._bases: dict[tuple[str, str, str], Any] = {}
        self._adapters: dict[tuple[tuple[str, str, str], str], str] = {}
        self._resolved: dict[tuple[str, str | None], ResolvedModel] = {}
        #: Per base pipeline: the performance switches active on it (``processor.models.accel``).
        self._switches: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._controlnets: dict[tuple[str, str, str], Any] = {}
        self._lora_hashes: dict[Path, str] = {}
        #: Hub LoRAs resolved (path, revision) -> snapshot folder: one hub call per LoRA and worker.
        self._hub_loras: dict[tuple[str, str | None], Path] = {}
        #: (base, IP-Adapter) -> that adapter loaded for the base's UNet (``processor.models.ip_adapter``).
        self._ip_adapters: dict[tuple[tuple[str, str, str], str], Any] = {}
        self._families: dict[tuple[str, str | None], FamilyMatch] = {}
        #: Per base pipeline: the switches it was loaded with (``base(performance=...)``).
        self._performance: dict[tuple[str, str, str], PerformanceSettings] = {}

    # ----------------------------------------------------------------- device / dtype

    @property
    def offline(self) -> bool:
        return offline_mode(self.settings)

    @property
    def cache_dir(self) -> str | None:
        return str(self.settings.cache_dir) if self.settings.cache_dir else None

    def device(self) -> str:
        import torch

        wanted = self.settings.device
        if wanted == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if wanted.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"models.device is {wanted!r} but PyTorch sees no CUDA device")
        return wanted

    def dtype(self, family: Family | None = None) -> Any:
        """The torch dtype ``family``'s weights load in (``families.choose_dtype``: under ``auto``
        the family's own on a GPU, float32 on the CPU); without a family, what UNet models and
        their add-ons load in (float16 on a GPU)."""
        import torch

        device = self.device()
        if device != "cpu" and not device.startswith("cuda"):
            family = None  # another accelerator (mps): float16 for every family, as before
        return getattr(torch, choose_dtype(self.settings.dtype, family, on_gpu=device != "cpu"))

    def family(self, model: str, revision: str | None = None) -> FamilyMatch:
        """The family of ``model`` (``processor.models.families.identify``), resolving it first."""
        key = (model, revision)
        if key not in self._families:
            self._families[key] = identify(self.resolve(model, revision).path, model)
        return self._families[key]

    # ----------------------------------------------------------------- resolving

    def resolve(self, model: str, revision: str | None = None, *, download: bool | None = None) -> ResolvedModel:
        """The local folder for ``model``; fetches a hub id unless offline (``download=False``
        only looks in the cache). Raises ``ModelUnavailableError`` naming the model and the fix."""
        key = (model, revision)
        if key in self._resolved:
            return self._resolved[key]
        if is_local(model):
            path = Path(model).expanduser()
            if not (path / "model_index.json").is_file():
                raise ModelUnavailableError(
                    f"model {model!r}: {path} is not a diffusers pipeline folder (no model_index.json)"
                )
            missing = safeweights.missing_safetensors(path, read_model_index(path))
            if missing:
                raise safeweights.unsafe_weights_error(model, None, None, missing, path, local=True)
            resolved = ResolvedModel(model, path, None)
        else:
            resolved = self._resolve_hub(model, revision, download=not self.offline if download is None else download)
        self._resolved[key] = resolved
        return resolved

    def _resolve_hub(self, model: str, revision: str | None, *, download: bool) -> ResolvedModel:
        path, index = self.snapshot(model, revision, download=download)
        missing = safeweights.missing_safetensors(path, index)
        if not missing:
            return ResolvedModel(model, path, path.name)
        converted = safeweights.usable_conversion(self.cache_dir, model, path.name, index)
        if converted is not None:
            log.info("model_converted_folder", extra={"model": model, "revision": path.name, "path": str(converted)})
            return ResolvedModel(model, converted, path.name, converted=True)
        hints = safeweights.conversion_pull_requests(model) if download else []
        raise safeweights.unsafe_weights_error(model, revision, path.name, missing, path, hints=hints)

    def snapshot(self, model: str, revision: str | None, *, download: bool,
                 extra_patterns: list[str] | None = None) -> tuple[Path, dict[str, Any]]:
        """The cached snapshot folder of hub id ``model`` (fetched first when ``download``) and its
        ``model_index.json``, without the safetensors check. ``extra_patterns`` adds files to fetch
        (the pickle weights ``--convert-pickle`` converts)."""
        what = f"model {model}" + (f"@{revision}" if revision else "")
        index_file = fetch_file(model, "model_index.json", what=what, revision=revision, cache_dir=self.cache_dir,
                                download=download, offline=self.offline)
        index = json.loads(index_file.read_text(encoding="utf-8"))
        folder = fetch_snapshot(model, what=what, revision=revision, cache_dir=self.cache_dir,
                                allow_patterns=component_patterns(index) + list(extra_patterns or []),
                                ignore_patterns=IGNORE_PATTERNS, download=download, offline=self.offline)
        return Path(folder), index

    def pull(self, model: str, revision: str | None = None) -> ResolvedModel:
        """Download ``model`` into the cache (progress bars from huggingface_hub); for ``models pull``."""
        if self.offline:
            raise ConfigError(f"cannot pull {model!r}: offline mode is on (models.offline / HF_HUB_OFFLINE)")
        self._resolved.pop((model, revision), None)
        return self.resolve(model, revision, download=True)

    def pull_converting(self, model: str, revision: str | None = None) -> ResolvedModel:
        """``models pull --convert-pickle``: fetch ``model`` (from the cache only when offline) and,
        for components without safetensors, convert their pickle weights once with the restricted
        unpickler (``processor.models.safeweights``). Local folders are checked, not converted."""
        self._resolved.pop((model, revision), None)
        if is_local(model):
            return self.resolve(model, revision)
        download = not self.offline
        path, index = self.snapshot(model, revision, download=download)
        missing = safeweights.missing_safetensors(path, index)
        if missing and safeweights.usable_conversion(self.cache_dir, model, path.name, index) is None:
            if download:  # the pickle weights of exactly the components that need them
                path, index = self.snapshot(model, path.name, download=True, extra_patterns=[
                    f"{component}/{pattern}" for component in missing for pattern in safeweights.PICKLE_PATTERNS])
            target = safeweights.converted_folder(self.cache_dir, model, path.name)
            safeweights.convert_components(path, index, missing, target, model=model, revision=revision,
                                           commit=path.name)
        return self.resolve(model, revision, download=False)

    def resolve_lora(self, lora: LoraSettings) -> Path:
        """A LoRA's local file or folder (a hub id is fetched like a model, safetensors only; a
        ``bucket:`` key is copied from the bucket)."""
        if is_bucket(lora.path):
            return self._bucket_lora(lora)
        if is_local(lora.path) or Path(lora.path).expanduser().is_file():
            path = Path(lora.path).expanduser()
            if not path.exists():
                raise ConfigError(f"lora.path {lora.path!r} does not exist")
            return path
        key = (lora.path, lora.revision)
        with self._lock:
            if key not in self._hub_loras:
                what = f"LoRA {lora.path!r}" + (f" at revision {lora.revision!r}" if lora.revision else "")
                self._hub_loras[key] = fetch_snapshot(
                    lora.path, what=what, revision=lora.revision, cache_dir=self.cache_dir,
                    allow_patterns=LORA_PATTERNS, download=not self.offline, offline=self.offline)
            return self._hub_loras[key]

    def lora_revision(self, lora: LoraSettings) -> str | None:
        """The hub commit of a LoRA given as a hub id (its snapshot folder's name: ``lora.revision``
        resolved), or None for a local file or folder or a bucket key."""
        if is_bucket(lora.path) or is_local(lora.path) or Path(lora.path).expanduser().is_file():
            return None
        return self.resolve_lora(lora).name

    def _bucket_lora(self, lora: LoraSettings) -> Path:
        """The local copy of a LoRA in the bucket, made once per (key, ETag)."""
        from huggingface_hub.constants import HF_HUB_CACHE

        from processor.errors import ObjectNotFound

        key = lora.path[len(BUCKET_SCHEME):].lstrip("/")
        if not key.endswith(".safetensors"):
            key = key.rstrip("/") + "/" + (lora.weight_name or LORA_FILE)
        if self._store is None:
            raise ConfigError(f"lora.path {lora.path!r} names a bucket key, but this command has no store to read it")
        store = self._store()
        try:
            info = store.head(key)
            digest = hashlib.sha256(f"{key}|{info.etag}".encode()).hexdigest()[:16]
            target = Path(self.cache_dir or HF_HUB_CACHE) / "processor-loras" / digest / Path(key).name
            if not target.is_file():  # a new ETag is a new copy: a retrained LoRA is never mixed up
                body = store.get(key).body
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
                partial.write_bytes(body)
                os.replace(partial, target)  # whole or absent: a crash never leaves half a LoRA
        except ObjectNotFound:
            raise ModelUnavailableError(
                f"LoRA {lora.path!r}: no object {key} in {store.description}; train it with `processor finetune "
                f"--name NAME` (it writes models/loras/NAME/{LORA_FILE}) or fix lora.path") from None
        log.info("lora_from_bucket", extra={"key": key, "etag": info.etag, "path": str(target)})
        return target

    # ----------------------------------------------------------------- loading

    def base(self, model: str, revision: str | None = None, *,
             performance: PerformanceSettings | None = None) -> tuple[Any, ResolvedModel]:
        """The shared pipeline for ``model`` (loaded on first use, in its family's dtype) and where
        it came from; ``performance``: this model's own switches (an animate style's ``offload``),
        the same for every style that shares it, instead of ``models.performance``."""
        resolved = self.resolve(model, revision)
        device, dtype = self.device(), self.dtype(self.family(model, revision).family)
        key = (str(resolved.path.resolve()), str(dtype), device)
        wanted = performance or self.settings.performance
        with self._lock:
            if key not in self._bases:
                self._bases[key] = self._load(resolved, device, dtype, offload=wanted.offload)
                from processor.models.accel import apply

                self._switches[key] = apply(self._bases[key], wanted, device)
                self._performance[key] = wanted
            elif performance is not None and self._performance.get(key) != performance:
                raise ConfigError(f"model {model!r} is loaded by another style with other offload / vae_tiling; "
                                  f"styles that share a model share its switches: give them the same values")
            return self._bases[key], resolved

    def switches(self, model: str, revision: str | None = None, *,
                 performance: PerformanceSettings | None = None) -> dict[str, Any]:
        """The performance switches active on ``model``'s shared modules (loads it if needed);
        the engines add warm-up seconds here and record it in every variant's parameters."""
        base, _ = self.base(model, revision, performance=performance)
        with self._lock:
            return next(self._switches[k] for k, v in self._bases.items() if v is base)

    def _load(self, resolved: ResolvedModel, device: str, dtype: Any, shared: dict[str, Any] | None = None, *,
              offload: str | None = None) -> Any:
        from diffusers import DiffusionPipeline

        index = read_model_index(resolved.path)
        extra: dict[str, Any] = dict(shared or {})  # modules passed in are not loaded again
        for name in SKIPPED_COMPONENTS & index.keys():
            extra[name] = None
        if "requires_safety_checker" in index or "safety_checker" in index:
            extra["requires_safety_checker"] = False
        log.info("model_loading", extra={"model": resolved.model, "revision": resolved.revision,
                                         "device": device, "dtype": str(dtype)})
        extra[_dtype_keyword()] = dtype
        try:
            pipe = DiffusionPipeline.from_pretrained(
                resolved.path,
                use_safetensors=True,
                trust_remote_code=False,
                local_files_only=True,
                **extra,
            )
        except (OSError, ValueError) as exc:
            raise ModelUnavailableError(
                f"model {resolved.model!r} could not be loaded from {resolved.path}: {exc} "
                f"(safetensors weights are required; `{PULL_COMMAND}` fetches them)"
            ) from exc
        # Loaded on the CPU; moving to the CPU again only logs dtype warnings. With offload the
        # weights stay in host memory (``processor.models.accel`` installs the offload hooks).
        if device != "cpu" and (offload or self.settings.performance.offload) == "none":
            pipe.to(device)
        return pipe

    def resolve_controlnet(self, model: str, revision: str | None = None, *,
                           download: bool | None = None) -> ResolvedModel:
        """The local folder of a ControlNet or T2I-Adapter (one model, ``config.json`` +
        safetensors, not a pipeline): a local folder as is, a hub id fetched like a pipeline
        (safetensors only; offline: the cache or ``ModelUnavailableError`` naming the pull command)."""
        key = (f"controlnet:{model}", revision)
        if key in self._resolved:
            return self._resolved[key]
        if is_local(model):
            path, commit = Path(model).expanduser(), None
        else:
            fetch = not self.offline if download is None else download
            path = fetch_snapshot(model, what=f"ControlNet {model}" + (f"@{revision}" if revision else ""),
                                  revision=revision, cache_dir=self.cache_dir, allow_patterns=CONTROLNET_PATTERNS,
                                  download=fetch, offline=self.offline)
            commit = path.name
        if not (path / "config.json").is_file():
            raise ModelUnavailableError(f"ControlNet {model!r}: {path} has no config.json (a diffusers ControlNetModel "
                                        f"or T2IAdapter folder, as their save_pretrained writes, is needed)")
        if not any(path.glob("*.safetensors")):
            raise ModelUnavailableError(f"control model {model!r}: no *.safetensors in {path}; pick a revision that "
                                        f"publishes safetensors (pickle weights are never loaded)")
        resolved = ResolvedModel(model, path, commit)
        self._resolved[key] = resolved
        return resolved

    def control_kind(self, model: str, revision: str | None = None) -> ControlKind:
        """Whether ``model`` is a ControlNet or a T2I-Adapter (its config.json ``_class_name``);
        ``ConfigError`` for anything else."""
        resolved = self.resolve_controlnet(model, revision)
        try:
            name = json.loads((resolved.path / "config.json").read_text(encoding="utf-8")).get("_class_name")
        except (OSError, ValueError) as exc:
            raise ModelUnavailableError(f"control model {model!r}: {resolved.path / 'config.json'} is unreadable: "
                                        f"{exc}") from exc
        if name not in CONTROL_CLASSES:
            raise ConfigError(f"control model {model!r} is a {name!r} (config.json _class_name), neither a ControlNet "
                              f"(ControlNetModel) nor a T2I-Adapter (T2IAdapter); point control.model at one of those")
        return CONTROL_CLASSES[name]

    def controlnet(self, model: str, revision: str | None = None) -> tuple[Any, ResolvedModel]:
        """The shared ``ControlNetModel`` for ``model`` (loaded once per device and dtype)."""
        return self._control_module(model, revision, ControlKind.CONTROLNET)

    def t2i_adapter(self, model: str, revision: str | None = None) -> tuple[Any, ResolvedModel]:
        """The shared ``T2IAdapter`` for ``model`` (loaded once per device and dtype, as a ControlNet)."""
        return self._control_module(model, revision, ControlKind.T2I_ADAPTER)

    def _control_module(self, model: str, revision: str | None, kind: ControlKind) -> tuple[Any, ResolvedModel]:
        resolved = self.resolve_controlnet(model, revision)
        device, dtype = self.device(), self.dtype()
        key = (f"{kind.value}:{resolved.path.resolve()}", str(dtype), device)
        what = "ControlNet" if kind is ControlKind.CONTROLNET else "T2I-Adapter"
        with self._lock:
            if key not in self._controlnets:
                import diffusers

                cls = diffusers.ControlNetModel if kind is ControlKind.CONTROLNET else diffusers.T2IAdapter
                log.info("model_loading", extra={"model": model, "revision": resolved.revision, "kind": kind.value,
                                                 "device": device, "dtype": str(dtype)})
                try:
                    net = cls.from_pretrained(resolved.path, use_safetensors=True,
                                              local_files_only=True, **{_dtype_keyword(): dtype})
                except (OSError, ValueError) as exc:
                    raise ModelUnavailableError(f"{what} {model!r} could not be loaded from {resolved.path}: "
                                                f"{exc} (`{PULL_COMMAND}` fetches it)") from exc
                self._controlnets[key] = net.to(device) if device != "cpu" else net
            return self._controlnets[key], resolved

    def pipeline(self, task: Task | str, model: str, revision: str | None = None, *,
                 controlnets: list[Any] | None = None, adapters: list[Any] | None = None,
                 performance: PerformanceSettings | None = None) -> tuple[Any, ResolvedModel]:
        """A new pipeline object for ``task`` that shares the base pipeline's modules: the class
        the model's family runs it with (``processor.models.families``); the caller may replace
        its scheduler freely. ``controlnets`` (img2img, text2img) makes it a ControlNet pipeline
        over them; ``adapters`` (text2img only: diffusers has no img2img adapter pipeline) a
        T2I-Adapter one. ``ConfigError`` saying what to use when the family does not run the task."""
        found = self.family(model, revision)
        name = pipeline_class(found, Task(task), model, controlnets=bool(controlnets), adapters=bool(adapters))
        base, resolved = self.base(model, revision, performance=performance)
        import diffusers

        cls = getattr(diffusers, name)
        if controlnets:
            check_controlnets(controlnets, base, model, found.family)
            # A list makes diffusers wrap them in one MultiControlNetModel.
            return _quiet(cls.from_pipe(base, controlnet=controlnets[0] if len(controlnets) == 1
                                        else list(controlnets))), resolved
        if adapters:
            check_adapters(adapters, model, found)
            # A list makes diffusers wrap them in one MultiAdapter (which needs one downscale factor).
            try:
                return _quiet(cls.from_pipe(base, adapter=adapters[0] if len(adapters) == 1 else list(adapters))), \
                    resolved
            except ValueError as exc:
                raise ConfigError(f"these T2I-Adapters cannot run together on {model!r}: {exc}") from exc
        return _quiet(cls.from_pipe(base)), resolved

    def refiner(self, model: str, revision: str | None, base_model: str,
                base_revision: str | None = None) -> tuple[Any, ResolvedModel]:
        """An SDXL refiner's img2img pipeline, loaded once per base: the base's VAE and second text
        encoder are passed in (diffusers' refiner pattern), so only the refiner's UNet is loaded."""
        found = self.family(base_model, base_revision)
        if StyleOption.REFINER not in found.family.options:
            raise ConfigError(f"refiner {model!r} needs an SDXL base model; {base_model!r} is a "
                              f"{found.class_name} (drop refiner, or use an SDXL model)")
        base, _ = self.base(base_model, base_revision)
        resolved = self.resolve(model, revision)
        device, dtype = self.device(), self.dtype(found.family)
        base_key = next(k for k, v in self._bases.items() if v is base)
        key = (f"refiner:{resolved.path.resolve()}|{base_key[0]}", str(dtype), device)
        with self._lock:
            if key not in self._bases:
                pipe = self._load(resolved, device, dtype,
                                  shared={"text_encoder_2": base.text_encoder_2, "vae": base.vae})
                width = base.text_encoder_2.config.hidden_size
                if pipe.unet.config.cross_attention_dim != width or pipe.unet.config.in_channels != 4:
                    raise ConfigError(
                        f"refiner {model!r} does not fit base {base_model!r}: its UNet reads text width "
                        f"{pipe.unet.config.cross_attention_dim} and {pipe.unet.config.in_channels} channels, the "
                        f"base's second text encoder gives {width}; use the refiner trained with this base")
                self._bases[key] = pipe
                from processor.models.accel import apply

                self._switches[key] = apply(pipe, self.settings.performance, device)
            refiner = self._bases[key]
        import diffusers

        # A pipeline object of its own (the engine sets its scheduler) over the shared modules.
        return _quiet(getattr(diffusers, found.family.pipelines[Task.IMG2IMG]).from_pipe(refiner)), resolved

    def lora_adapter(self, pipe: Any, model: str, revision: str | None, lora: LoraSettings) -> str:
        """Load ``lora`` into the (shared) modules behind ``pipe`` once; returns its adapter name."""
        base, _ = self.base(model, revision)
        base_key = next(k for k, v in self._bases.items() if v is base)
        ident = f"{lora.path}|{lora.weight_name}|{lora.revision}"
        with self._lock:
            key = (base_key, ident)
            if key not in self._adapters:
                name = "lora_" + hashlib.sha1(ident.encode()).hexdigest()[:10]
                path = self.resolve_lora(lora)
                kwargs: dict[str, Any] = {"adapter_name": name}
                if lora.weight_name:
                    kwargs["weight_name"] = lora.weight_name
                try:
                    pipe.load_lora_weights(str(path), use_safetensors=True, **kwargs)
                except (OSError, ValueError) as exc:
                    raise ModelUnavailableError(f"LoRA {lora.path!r} could not be loaded: {exc}") from exc
                # diffusers skips keys that name no module of this pipeline with only a warning: a
                # LoRA for another family (an SD 1.x LoRA on FLUX.1) would load as nothing at all.
                if not any(name in names for names in pipe.get_list_adapters().values()):
                    denoiser = "transformer" if getattr(pipe, "transformer", None) is not None else "UNet"
                    raise ModelUnavailableError(
                        f"LoRA {lora.path!r} has no weights for {model!r} ({type(pipe).__name__}): none of its keys "
                        f"names a module of this model's {denoiser} or text encoders; it was trained for another "
                        f"model family. Use a LoRA trained for this model, or drop lora from the style")
                self._adapters[key] = name
            return self._adapters[key]

    def lora_hash(self, lora: LoraSettings) -> tuple[str, str]:
        """(name, short hash) of a LoRA for A1111's ``Lora hashes``: the file's stem (a hub repo's
        name) and the hash AUTOMATIC1111 computes for it (``processor.models.lora_hash``)."""
        path = self.resolve_lora(lora)
        if path.is_dir():
            named = path / (lora.weight_name or LORA_FILE)
            found = [named] if named.is_file() else sorted(path.glob("*.safetensors"))
            if not found:
                raise ModelUnavailableError(f"LoRA {lora.path!r}: no .safetensors file in {path}")
            path = found[0]
        with self._lock:
            if path not in self._lora_hashes:
                self._lora_hashes[path] = a1111_lora_hash(path)
        stem = Path(lora.path.rstrip("/")).name.removesuffix(".safetensors")
        return stem or path.stem, self._lora_hashes[path]

    def ip_adapter(self, pipe: Any, model: str, revision: str | None, settings: IpAdapterSettings) -> Any:
        """The IP-Adapter ``settings`` for ``model``'s shared UNet (``processor.models.ip_adapter.IpAdapter``),
        loaded once per base; ``pipe`` (a pipeline object over that base) gets its image encoder."""
        from processor.models import ip_adapter

        base, _ = self.base(model, revision)
        base_key = next(k for k, v in self._bases.items() if v is base)
        # The scale is the style's, applied per call; everything else names the weights.
        key = (base_key, settings.model_dump_json(exclude={"scale", "license"}))
        with self._lock:
            if key not in self._ip_adapters:
                self._ip_adapters[key] = ip_adapter.load(self, pipe, settings, model)
            else:
                ip_adapter.share(self._ip_adapters[key], pipe)
            return self._ip_adapters[key]

    def read_bucket(self, key: str, *, what: str, max_bytes: int | None = None) -> tuple[bytes, str]:
        """The body and ETag of ``key`` in the configured store (a ``bucket:`` style image);
        ``what`` names the setting in the error when this command has no store."""
        if self._store is None:
            raise ConfigError(f"{what} names a bucket key, but this command has no store to read it")
        found = self._store().get(key, max_bytes=max_bytes)
        return found.body, found.info.etag

    def has_adapters(self, model: str, revision: str | None) -> bool:
        base, _ = self.base(model, revision)
        return any(self._bases.get(k[0]) is base for k in self._adapters)


def _quiet(pipe: Any) -> Any:
    """No per-call progress bars: the worker logs events, not bars."""
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _dtype_keyword() -> str:
    """diffusers renamed ``torch_dtype`` to ``dtype`` (0.36+ warns on the old name); older ones
    only know ``torch_dtype``."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"
