"""``processor models pull`` (and ``--dry-run``): every configured diffusion model and every
add-on model into the cache, safetensors only."""

from __future__ import annotations

import argparse
from typing import Any

from processor.cli.console import Where
from processor.cli.extras import Extra, require
from processor.config import Settings
from processor.errors import ConfigError, ProcessorError


def cmd_models_pull(args: argparse.Namespace, settings: Settings) -> int:
    """Fetch every configured diffusion model and every add-on model (caption models, CLIP scorer,
    hub LoRAs, IP-Adapters, ControlNets and their preprocessors, segmenter) into the cache,
    safetensors only. The add-ons are ``pull_list.addon_models``, the list ``--dry-run`` prints."""
    from processor.models.loader import ModelLoader
    from processor.models.pull_list import Role, addon_models, configured_models

    loader = ModelLoader(settings.models)
    wanted = configured_models(settings.styles)
    convert = args.convert_pickle or settings.models.convert_pickle
    addons = addon_models(settings, loader, captions=True)
    if args.mask:  # the subject-mask segmenter alone: what `processor mask` needs (the quickstart's pull)
        wanted, addons = [], [a for a in addons if a.role is Role.SEGMENTER]
        if not addons:
            print("pipeline.mask uses no model to fetch (GrabCut, or a local file): nothing to pull")
            return 0
    # The ONNX subject mask downloads over plain HTTPS; everything else (hub metadata, the cache, the
    # conversion) goes through huggingface_hub and torch.
    onnx_mask = settings.pipeline.mask.onnx is not None
    if wanted or any(not (a.role is Role.SEGMENTER and onnx_mask) for a in addons):
        require(Extra.SD, "processor models pull" + (" --dry-run" if args.dry_run else ""))
    if args.dry_run:
        return models_pull_dry_run(loader, wanted, convert, addons)
    if convert and loader.offline:
        # Offline, only the conversion can run: from the *.bin files the cache already holds.
        for model, revision in wanted:
            print(f"{model}{'@' + revision if revision else ''}: {loader.pull_converting(model, revision).path}")
        print("offline: converted from the cache only; caption models, LoRAs and the segmenter were not fetched")
        return 0
    if loader.offline:
        raise ConfigError("cannot pull: offline mode is on (models.offline / HF_HUB_OFFLINE); run `processor "
                          "models pull` where the Hub can be reached, or add --dry-run to see what the cache holds")
    if not wanted and not addons:
        print("no diffusion styles configured: nothing to pull")
        return 0
    for model, revision in wanted:
        resolved = loader.pull_converting(model, revision) if convert else loader.pull(model, revision)
        print(f"{model}{'@' + revision if revision else ''}: {resolved.path}")
    for addon in addons:
        got = addon.fetch(True)
        commit = f" (commit {got.commit})" if got.commit and got.commit != addon.revision else ""
        print(f"{addon.label} {addon.shown}: {got.path}{got.note}{commit}")
    return 0


def models_pull_dry_run(loader: Any, wanted: list[tuple[str, str | None]], convert: bool,
                        addons: list[Any] | None = None) -> int:
    """``models pull --dry-run``: per diffusion model, the files a pull fetches and their sizes
    (hub metadata; offline: what the cache holds), then every add-on model and whether the cache
    has it. Exits non-zero when a model would not load (offline: an add-on missing from the cache)."""
    from processor.errors import EXIT_MODEL
    from processor.models.hub import IGNORE_PATTERNS, component_patterns, is_local
    from processor.models.safeweights import cache_plan, format_plans, hub_plan

    hub = [(m, r) for m, r in wanted if not is_local(m)]
    for model, _ in wanted:
        if is_local(model):
            print(f"{model}: a local folder, nothing to fetch")
    plans = []
    if hub:
        plan = cache_plan if loader.offline else hub_plan
        plans = [plan(m, r, loader.cache_dir, component_patterns, IGNORE_PATTERNS) for m, r in hub]
        print(format_plans(plans, convert=convert))
    elif not addons:
        print("no hub models configured: nothing to fetch")
        return 0
    missing = 0
    if addons:
        print(f"\nadd-on models ({len(addons)}):")
    for addon in addons or []:
        used = f" [{', '.join(addon.styles)}]" if addon.styles else ""
        try:
            got = addon.fetch(False)
            state = f"cached: {got.path}{got.note}" + (f" (commit {got.commit})" if got.commit else "")
        except ProcessorError as exc:
            missing += 0 if addon.fallback else 1  # one that has a fallback does not stop a worker
            state = f"NOT in the cache: {exc}" if loader.offline else "would fetch (not in the cache yet)"
        print(f"  {addon.label} {addon.shown}{used}: {state}")
    failed = not all(p.loads(convert) for p in plans) or (loader.offline and missing > 0)
    return EXIT_MODEL if failed else 0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``models pull`` (``common``: --config, --log-level, --quiet)."""
    p = sub.add_parser("models", help="manage diffusion model weights (pull)")
    models_sub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    p = models_sub.add_parser("pull", parents=[common], help="download every configured model into the cache",
                              description="Download each diffusion style's model (safetensors, configs, tokenizer "
                              "files only) at its pinned revision into models.cache_dir, so workers can run with "
                              "models.offline: true / HF_HUB_OFFLINE=1. Fails when a model has no safetensors "
                              "weights for a component (pin revision: to a commit or refs/pr/N that has them, or "
                              "use --convert-pickle).")
    p.add_argument("--dry-run", action="store_true",
                   help="print the files each model would fetch and their sizes (hub metadata; offline: what the "
                   "cache holds), download nothing")
    p.add_argument("--convert-pickle", action="store_true",
                   help="for components with pickle *.bin weights only, fetch them and convert them once to "
                   "safetensors with PyTorch's restricted unpickler (weights_only=True) into "
                   "<cache>/processor-converted/ (also models.convert_pickle: true); offline, converts what the "
                   "cache holds")
    p.add_argument("--mask", action="store_true",
                   help="only the subject-mask segmenter (pipeline.mask; u2netp by default, 4.5 MB): what "
                   "`processor mask` and background styles need")
    p.set_defaults(func=cmd_models_pull, where=Where.CONFIG)
