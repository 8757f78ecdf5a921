"""``processor doctor``: one row per check (config, store, conditional create, device, metrics,
each style's models, add-on and caption models), each independent, so one failure does not hide
others."""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from typing import Any

from processor.cli.compose import StoreUse, build_registry, build_store, detect_device, needs_torch
from processor.cli.extras import PURPOSE, Extra, extra_of, missing_modules
from processor.config import Settings, with_sources
from processor.errors import EXIT_DOCTOR, FatalError, ProcessorError, StoreError
from processor.queue.claims import probe_conditional_create
from processor.redact import redact
from processor.worker.metrics import describe_endpoint


def cmd_doctor(args: argparse.Namespace, settings: Settings) -> int:
    rows = run_checks(settings, build_store=lambda s: build_store(s, StoreUse.READ), build_registry=build_registry,
                      detect_device=detect_device, config_path=args.config_source)
    width = max(len(r.check) for r in rows)
    for r in rows:
        print(f"{r.check:<{width}}  {r.status:<4}  {r.detail}")
    problems = [r for r in rows if r.status == "FAIL"]
    print(f"\n{len(problems)} problem(s)" if problems else "\nall checks passed")
    return EXIT_DOCTOR if problems else 0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``doctor`` (``common``: --config, --log-level, --quiet)."""
    p = sub.add_parser("doctor", parents=[common], help="check config, store, credentials, device and models",
                       description="Check the configuration, that the store is reachable with the configured "
                       "credentials and writable, whether its conditional create is atomic (a race of "
                       "concurrent creates on a scratch key), the compute device, which optional extras are "
                       "installed, and the configured styles' models. Prints a table; exits "
                       f"{EXIT_DOCTOR} when a check fails. Reads a local bucket only where it exists.")
    p.set_defaults(func=cmd_doctor)


@dataclass(frozen=True)
class Row:
    check: str
    status: str  # ok | warn | FAIL
    detail: str


def run_checks(
    settings: Settings,
    *,
    build_store: Callable[[Settings], Any],
    build_registry: Callable[[Settings], Any],
    detect_device: Callable[[], str],
    config_path: str,
) -> list[Row]:
    rows = [Row("config", "ok", f"{config_path}: styles {', '.join(settings.run.styles)}; store {settings.store.kind}")]
    try:
        store = build_store(settings)
    except (FatalError, StoreError) as exc:
        rows.append(Row("store", "FAIL", str(exc)))
    else:
        checks = _store_checks(store, settings)
        # Building a client proves nothing: the store is "ok" only once a listing answered.
        if checks[0].status == "FAIL":
            rows.append(Row("store", "FAIL", f"{store.description}: not reachable with this configuration "
                                             f"(check store.endpoint_url, store.bucket and the credentials)"))
        else:
            rows.append(Row("store", "ok", store.description))
        rows.extend(checks)
    rows.append(Row("device", "ok", detect_device()))
    rows.append(Row("metrics", *describe_endpoint(settings.metrics)))
    extras = _extra_checks(settings)
    rows.extend(extras)
    rows.extend(_model_checks(settings, build_registry))
    if any(r.check == f"extra {Extra.SD.value}" and r.status != "ok" for r in extras):
        # Without the sd extra no hub model can be looked up: one row says so, not one per model.
        rows.append(Row("add-on and caption models", "warn", f"not checked: they need the {Extra.SD.value} "
                                                               f"extra ({Extra.SD.install})"))
    else:
        rows.extend(_addon_checks(settings))
        rows.extend(_caption_checks(settings))
    # Error texts quote endpoints: none may show the credentials written into one.
    return [Row(r.check, r.status, redact(r.detail)) for r in rows]


def _store_checks(store: Any, settings: Settings) -> list[Row]:
    rows = []
    try:
        count = sum(1 for _ in islice(store.list(settings.prefixes.inputs), 1000))
        more = "+" if count == 1000 else ""
        rows.append(Row("list inputs", "ok", f"{count}{more} object(s) under {settings.prefixes.inputs}"))
    except (FatalError, StoreError) as exc:
        return [Row("list inputs", "FAIL", str(exc))]
    scratch = f"{settings.prefixes.state}doctor/{uuid.uuid4().hex}"
    try:
        store.put(scratch, b"doctor")
        store.get(scratch)
        store.delete(scratch)
        rows.append(Row("write", "ok", f"put/get/delete under {settings.prefixes.state}"))
    except (FatalError, StoreError) as exc:
        return [*rows, Row("write", "FAIL", str(exc))]
    try:
        atomic, detail = probe_conditional_create(store, f"{settings.prefixes.state}doctor/")
    except (FatalError, StoreError) as exc:
        atomic, detail = False, f"conditional create failed: {exc}"
    if atomic:
        rows.append(Row("conditional create", "ok", f"atomic ({detail}): claims work"))
    elif settings.run.coordination == "claims":
        rows.append(Row("conditional create", "FAIL", f"not atomic ({detail}); set run.coordination: shards or auto"))
    else:
        rows.append(Row("conditional create", "warn", f"not atomic ({detail}); static shards will be used"))
    return rows


def _extra_checks(settings: Settings) -> list[Row]:
    """Whether the optional extras are installed: ``sd`` fails when a style in ``run.styles`` (or the
    caption stage) needs PyTorch, else only warns; ``api`` warns (only ``serve`` needs it); ``mask``
    warns when ``pipeline.mask`` names an ONNX model (GrabCut makes the masks without it)."""
    rows = []
    extras = [Extra.MASK] if settings.pipeline.mask.onnx is not None else []
    for extra in (*extras, Extra.SD, Extra.API):
        missing = missing_modules(extra)
        if not missing:
            rows.append(Row(f"extra {extra.value}", "ok", f"installed ({PURPOSE[extra]})"))
            continue
        needed = extra is Extra.SD and needs_torch(settings, settings.run.styles)
        why = "run.styles needs it" if needed else f"needed for {PURPOSE[extra]}"
        if extra is Extra.MASK:
            why += "; until then GrabCut makes the masks"
        rows.append(Row(f"extra {extra.value}", "FAIL" if needed else "warn",
                        f"not installed (no module {', '.join(missing)}); {why}: {extra.install}"))
    return rows


def _model_checks(settings: Settings, build_registry: Callable[[Settings], Any]) -> list[Row]:
    rows = []
    registry = build_registry(settings)
    for name in with_sources(settings.run.styles, settings.styles):  # and the still styles animate styles start from
        try:
            engine = registry.engine(name)
            described = engine.describe()
            detail = ", ".join(f"{k}={v}" for k, v in described.items())
            rows.append(Row(f"style {name}", "ok", detail or "ready"))
        except ProcessorError as exc:
            rows.append(Row(f"style {name}", "FAIL", str(exc)))
        except ModuleNotFoundError as exc:
            extra = extra_of(exc)
            if extra is None:
                raise
            rows.append(Row(f"style {name}", "FAIL", f"needs the {extra.value} extra, which is not installed "
                                                     f"(no module {exc.name}): {extra.install}"))
    return rows


def _caption_checks(settings: Settings) -> list[Row]:
    """Whether the caption models are in the cache (nothing is loaded or fetched). A missing
    model fails only when a style in ``run.styles`` would caption with it, or in offline mode."""
    from processor.models.caption import caption_availability
    from processor.models.hub import is_local
    from processor.models.loader import ModelLoader, offline_mode
    from processor.pipeline.caption import caption_used

    mode = settings.caption.mode
    if mode == "none":
        return [Row("caption", "ok", "off (caption.mode: none)")]
    used = caption_used(settings.caption, settings.styles, settings.run.styles)
    rows = [Row("caption", "ok", f"mode {mode}" + ("" if used else "; no style in run.styles takes a prompt"))]
    try:
        checks = caption_availability(settings.caption, ModelLoader(settings.models))
    except ProcessorError as exc:
        return [*rows, Row("caption models", "FAIL" if used else "warn", str(exc))]
    for check in checks:
        model, detail = check.model, check.detail
        local = model.startswith("local-dir:") or is_local(model)
        if check.available:
            rows.append(Row(f"caption {check.role}", "ok", f"{model}: {detail}"))
        elif used and (local or offline_mode(settings.models)):
            rows.append(Row(f"caption {check.role}", "FAIL", detail))
        elif used:
            rows.append(Row(f"caption {check.role}", "warn", f"{model}: not in the cache yet; `processor models pull` "
                                                            f"fetches it (else the worker downloads it at start)"))
        else:
            rows.append(Row(f"caption {check.role}", "warn", f"{detail} (no style in run.styles uses it)"))
    return rows


def _addon_checks(settings: Settings) -> list[Row]:
    """Whether each add-on hub model (CLIP scorer, LoRAs, IP-Adapters, ControlNets and their
    preprocessors, segmenter: ``pull_list.addon_models``, what ``models pull`` fetches) is in the
    cache; nothing is loaded or fetched. A missing one fails offline when a style in
    ``run.styles`` (or every style: the CLIP scorer, the segmenter) needs it, else warns."""
    from processor.models.loader import ModelLoader, offline_mode
    from processor.models.pull_list import addon_models

    loader = ModelLoader(settings.models)
    try:
        addons = addon_models(settings, loader)  # caption models: _caption_checks
    except ProcessorError as exc:
        return [Row("add-on models", "FAIL", str(exc))]
    offline = offline_mode(settings.models)
    rows = []
    for addon in addons:
        used = not addon.styles or any(s in settings.run.styles for s in addon.styles)
        where = f"{addon.shown}" + (f" ({', '.join(addon.styles)})" if addon.styles else "")
        try:
            got = addon.fetch(False)
        except ProcessorError as exc:
            if addon.fallback:  # never fatal: something else runs in its place
                rows.append(Row(addon.label, "warn", f"{exc}; until then {addon.fallback}"))
            elif used and offline:
                rows.append(Row(addon.label, "FAIL", str(exc)))
            elif used:
                rows.append(Row(addon.label, "warn", f"{where}: not in the cache yet; `processor models pull` "
                                                     f"fetches it (else the worker downloads it at start)"))
            else:
                rows.append(Row(addon.label, "warn", f"{where}: not in the cache (no style in run.styles uses it)"))
            continue
        commit = f" (commit {got.commit})" if got.commit else ""
        rows.append(Row(addon.label, "ok", f"{where}: cached, {got.path}{got.note}{commit}"))
    return rows
