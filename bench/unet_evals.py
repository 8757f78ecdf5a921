"""UNet (or transformer) evaluations per input and per variant for every shipped style: what a
style costs on any GPU, counted rather than timed.

Each diffusion style of ``config.yaml`` runs once on one synthetic photo through the production
engines (``processor.cli.compose.build_registry``: the transform, its ControlNets and LoRAs, its
background stage) with tiny random-weight models of the same families built offline (an SDXL
model, one whose id contains "xl", gets the tiny SDXL base and its refiner the tiny refiner; one
whose id names FLUX.1 or SD 3 the tiny flow transformer of that family, ``engine: edit`` the tiny
Qwen-Image-Edit for an id naming Qwen, else the tiny FLUX.1 Kontext; the counts depend on steps,
rounds, guidance and variants, not on weights or image size). ``UNet2DConditionModel.forward`` and
the flow transformers' ``forward`` (``FluxTransformer2DModel``, ``SD3Transformer2DModel``,
``QwenImageTransformer2DModel``) are wrapped to count calls and the samples each evaluates (a
classifier-free-guided call evaluates two per image, instruct-pix2pix three; FLUX.1's distilled
guidance is an input, not a second sample; Qwen-Image-Edit's true CFG is a second call), and each
scheduler's ``step`` to count denoising steps. ControlNet evaluations are counted per sample as
the UNet's (a ControlNet runs beside every UNet evaluation while its guidance lasts, on img2img
and txt2img alike); a T2I-Adapter runs ONCE per pipeline call (its features are reused at every
step), so ``T2IAdapter.forward`` is counted per call and per sample it encodes. A control model
whose id names "t2i" is counted as a tiny T2I-Adapter (on a tiny SD of SD 1.5's block layout, or
the tiny SDXL for an id with "xl"), any other as a tiny ControlNet.

    python -m bench.unet_evals [--config config.yaml] [--also bench/flow_styles.yaml] [--also bench/video_styles.yaml]
                               [--reference modern-disney] [--fast modern-disney-fast --min-ratio 8]
                               [--models DIR]

``--also`` adds the styles of another config file: ``bench/flow_styles.yaml`` holds the
flow-family styles ``config.yaml`` offers commented out (not shipped enabled: ``models pull``
would fetch tens of GB of FLUX.1 weights for every deployment); ``bench/video_styles.yaml`` the
image-to-video styles (``engine: animate``: Stable Video Diffusion, Wan 2.x, LTX-Video), each counted
per clip on a tiny model of its family (``UNetSpatioTemporalConditionModel``, ``WanTransformer3DModel``
and ``LTXVideoTransformer3DModel`` are wrapped too: a sample is one clip, whatever its frames;
SVD and LTX-Video batch the negative sample into the step's call, Wan calls twice).

With ``--fast`` the run fails (exit 1) unless that style needs at least ``--min-ratio`` times fewer
UNet evaluations per input than ``--reference``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Long side (px) every style runs at here: counts do not depend on it, CPU time does.
BENCH_SIZE = 64
DIFFUSION_ENGINES = ("img2img", "instruct-pix2pix", "txt2img", "edit", "animate")
#: Frames each tiny video family runs here (its shortest clip that fits): the calls per clip do not
#: depend on the frame count, CPU time does.
BENCH_FRAMES = {"svd": 4, "wan": 5, "ltx": 9}
#: The flow-matching scheduler every FLUX.1 / SD 3 pipeline runs (its ``step`` is counted too).
FLOW_SCHEDULER = "FlowMatchEulerDiscreteScheduler"


@dataclass
class Counts:
    calls: int = 0
    evaluations: int = 0
    steps: int = 0
    controlnet: int = 0
    adapter_calls: int = 0
    adapter: int = 0
    transformer_calls: int = 0
    transformer: int = 0


def _count(counts: Counts) -> list[tuple[Any, str, Any]]:
    """Wrap the UNet, ControlNet and scheduler entry points to add to ``counts``; returns what to restore."""
    import diffusers

    from processor.pipeline.sampling import SCHEDULERS

    patched: list[tuple[Any, str, Any]] = []

    def wrap(cls: Any, name: str, record: Any) -> None:
        original = getattr(cls, name)

        def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
            record(args, kwargs)
            return original(self, *args, **kwargs)

        patched.append((cls, name, original))
        setattr(cls, name, counted)

    def unet(args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        counts.calls += 1
        counts.evaluations += int(sample.shape[0])

    def transformer(args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        counts.transformer_calls += 1
        counts.transformer += int(hidden.shape[0])

    def controlnet(args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        counts.controlnet += int(sample.shape[0])

    def adapter(args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["x"]
        counts.adapter_calls += 1
        counts.adapter += int(sample.shape[0])

    def step(args: tuple, kwargs: dict) -> None:
        sample = args[2] if len(args) > 2 else kwargs["sample"]
        counts.steps += int(sample.shape[0])

    wrap(diffusers.UNet2DConditionModel, "forward", unet)
    wrap(diffusers.ControlNetModel, "forward", controlnet)
    wrap(diffusers.T2IAdapter, "forward", adapter)
    wrap(diffusers.FluxTransformer2DModel, "forward", transformer)
    wrap(diffusers.SD3Transformer2DModel, "forward", transformer)
    wrap(diffusers.QwenImageTransformer2DModel, "forward", transformer)
    # Image to video: SVD's spatio-temporal UNet (a batch of clips: (clips, frames, ...)), Wan's and
    # LTX-Video's transformers; a sample is one clip, whatever its frame count.
    wrap(diffusers.UNetSpatioTemporalConditionModel, "forward", unet)
    wrap(diffusers.WanTransformer3DModel, "forward", transformer)
    wrap(diffusers.LTXVideoTransformer3DModel, "forward", transformer)
    for cls_name in sorted({name for name, _ in SCHEDULERS.values()} | {"PNDMScheduler", FLOW_SCHEDULER}):
        wrap(getattr(diffusers, cls_name), "step", step)
    return patched


def built(path: Path, build: Callable[[Path], Path]) -> Path:
    """``path`` as ``build`` makes it, built only when absent: a ``--models`` folder that an earlier
    run filled is reused (each model's random weights come from a fixed seed)."""
    return path if path.exists() else build(path)


def tiny_config(config: dict[str, Any], root: Path) -> tuple[dict[str, Any], list[str]]:
    """``config`` with every model replaced by a tiny one of its family (built in ``root``, or found
    there); the diffusion style names."""
    from testkit.models.sd import build_controlnet, build_inpaint, build_lora, build_sd, build_sdxl, build_sdxl_refiner

    sd = built(root / "tiny-sd", build_sd)
    xl: list[Path] = []  # built on first use: (base, refiner)

    def tiny_xl() -> list[Path]:
        if not xl:
            xl.append(built(root / "tiny-sdxl", build_sdxl))
            xl.append(built(root / "tiny-sdxl-refiner", lambda p: build_sdxl_refiner(p, xl[0])))
        return xl

    pix2pix = built(root / "tiny-pix2pix", lambda p: build_sd(p, in_channels=8))
    models = {"inpaint": lambda: built(root / "tiny-inpaint", build_inpaint)}
    lora = built(root / "tiny-lora", lambda p: build_lora(p, sd / "unet"))
    controlnet = built(root / "tiny-controlnet", lambda p: build_controlnet(p, sd / "unet"))
    flow: dict[str, Path] = {}  # built on first use, by family

    def tiny_flow(family: str) -> Path:
        from testkit.models.flow import build_flux, build_kontext, build_sd3
        from testkit.models.qwen import build_qwen_edit

        if family not in flow:
            builders = {"flux-dev": build_flux, "kontext": build_kontext, "sd3": build_sd3,
                        "flux-schnell": lambda p: build_flux(p, guidance_embeds=False),
                        "qwen-edit": build_qwen_edit,
                        "qwen-edit-plus": lambda p: build_qwen_edit(p, plus=True)}
            flow[family] = built(root / f"tiny-{family}", builders[family])
        return flow[family]

    def tiny_flow_lora(family: str) -> Path:
        from testkit.models.flow import build_flow_lora

        target = root / f"tiny-{family}-lora"
        return target if target.is_dir() else build_flow_lora(target, tiny_flow(family))

    out = copy.deepcopy(config)
    names = []
    for name, style in out.get("styles", {}).items():
        if style.get("engine") not in DIFFUSION_ENGINES:
            continue
        names.append(name)
        if style["engine"] == "animate":
            tiny_video_style(style, root)
            continue
        family = flow_family_of(style)
        controls = style.get("control") or []
        controls = controls if isinstance(controls, list) else [controls]
        xl_model = "xl" in style["model"].lower()
        if any(is_adapter_id(c["model"]) for c in controls):  # an adapter fits only its UNet's block layout
            style["model"] = str(tiny_xl()[0] if xl_model else tiny_sd_for_adapter(root))
            for control in controls:
                control["model"] = str(tiny_adapter(root, xl=xl_model))
        elif family is not None:
            style["model"] = str(tiny_flow(family))
        elif style["engine"] == "img2img" and "xl" in style["model"].lower():
            style["model"] = str(tiny_xl()[0])
        else:
            style["model"] = str(pix2pix if style["engine"] == "instruct-pix2pix" else sd)
        style.pop("revision", None)
        style["size"] = BENCH_SIZE
        if style.get("refiner"):
            style["refiner"] = {**style["refiner"], "model": str(tiny_xl()[1])}
            style["refiner"].pop("revision", None)
        if style.get("lora"):
            # A flow model takes a LoRA for its own transformer (an SD 1.x one has no weights for it).
            style["lora"]["path"] = str(lora if family is None else tiny_flow_lora(family))
            style["lora"].pop("revision", None)
        if style.get("lcm"):
            style["lcm"]["lora"] = str(lora)
        if style.get("ip_adapter"):  # a tiny IP-Adapter for the UNet the style got, and a picture on disk
            style["ip_adapter"] = tiny_ip_adapter(root, Path(style["model"]), style["ip_adapter"])
            style["style_image"] = str(style_image(root))
        for control in controls:
            if not is_adapter_id(control["model"]):
                control["model"] = str(controlnet)
            control.pop("revision", None)
            if control.get("preprocessor"):  # lineart / softedge / depth: a tiny map maker of the type
                control["preprocessor"] = {"model": str(tiny_preprocessor(control["type"], root))}
        background = style.get("background")
        if background and background.get("mode", "none") != "none":
            mode = background["mode"]
            background["model"] = str(models["inpaint"]() if mode == "inpaint"
                                      else pix2pix if mode == "instruct" else sd)
            background.pop("revision", None)
            background["size"] = BENCH_SIZE
    out["run"] = {**out.get("run", {}), "styles": names or ["toon"]}
    out.pop("store", None)
    out["caption"] = {"mode": "none"}
    return out, names


def video_family_of(style: dict[str, Any]) -> str:
    """The tiny image-to-video family an animate style is counted on, from its model id: ``wan``
    for an id naming Wan, ``ltx`` for LTX-Video, else ``svd`` (Stable Video Diffusion)."""
    model = str(style.get("model", "")).lower()
    return "wan" if "wan" in model else "ltx" if "ltx" in model else "svd"


def tiny_video_style(style: dict[str, Any], root: Path) -> None:
    """``style`` (an animate one) on the tiny model of its family, at the bench size and that model's
    shortest clip; ``image_from`` is dropped: the clip is counted on the photo, its still style on its own."""
    from testkit.models.video import build_ltx, build_svd, build_wan_i2v

    family = video_family_of(style)
    builders = {"svd": build_svd, "wan": build_wan_i2v, "ltx": build_ltx}
    style["model"] = str(built(root / f"tiny-video-{family}", builders[family]))
    style.pop("revision", None)
    style.pop("image_from", None)
    style.pop("image_from_variants", None)
    style["size"], style["frames"] = BENCH_SIZE, BENCH_FRAMES[family]
    style.pop("decode_chunk_size", None)  # the tiny clip's frames are fewer than a real chunk


def is_adapter_id(model: str) -> bool:
    """A control model counted as a T2I-Adapter (TencentARC's ids name "t2i"; tiny ones are paths)."""
    return "t2i" in model.lower()


def tiny_sd_for_adapter(root: Path) -> Path:
    from testkit.models.adapter import build_sd_for_adapter

    path = root / "tiny-sd-for-adapter"
    return path if path.is_dir() else build_sd_for_adapter(path)


def tiny_adapter(root: Path, *, xl: bool) -> Path:
    from testkit.models.adapter import build_t2i_adapter

    path = root / ("tiny-t2i-adapter-xl" if xl else "tiny-t2i-adapter")
    return path if path.is_dir() else build_t2i_adapter(path, xl=xl)


def tiny_preprocessor(kind: str, root: Path) -> Path:
    """A tiny random-weight preprocessor for ``kind`` (built once under ``root``)."""
    from testkit.models.control import build_annotator, build_depth

    path = root / f"tiny-{kind}" if kind == "depth" else root / f"tiny-{kind}.safetensors"
    if not path.exists() and kind == "depth":
        build_depth(path)
    elif not path.exists():
        build_annotator(path, kind)
    return path


def flow_family_of(style: dict[str, Any]) -> str | None:
    """The tiny flow model a style is counted on, from its model id (the real ``model_index.json``
    is not at hand offline): for ``engine: edit`` ``qwen-edit`` (``qwen-edit-plus`` for the 2509
    release) for an id naming Qwen, else ``kontext``; ``flux-schnell`` / ``flux-dev`` for an id
    naming FLUX.1 (schnell has no guidance input), ``sd3`` for Stable Diffusion 3 / 3.5; None for a
    UNet model."""
    model = str(style.get("model", "")).lower()
    if style.get("engine") == "edit":
        if "qwen" in model:
            return "qwen-edit-plus" if "2509" in model else "qwen-edit"
        return "kontext"
    if style.get("engine") != "img2img":
        return None
    if "flux" in model:
        return "flux-schnell" if "schnell" in model else "flux-dev"
    if "stable-diffusion-3" in model or "sd3" in model:
        return "sd3"
    return None


def tiny_ip_adapter(root: Path, model: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` pointing at a tiny IP-Adapter built once for ``model``'s UNet (its scale kept)."""
    from testkit.models.ip_adapter import WEIGHT_NAME, build_ip_adapter

    folder = root / f"tiny-ip-adapter-{model.name}"
    if not folder.exists():
        build_ip_adapter(folder, model / "unet")
    return {"model": str(folder), "subfolder": "models", "weight_name": WEIGHT_NAME,
            "scale": settings.get("scale", 1.0)}


def style_image(root: Path) -> Path:
    from testkit.images import photo_image

    path = root / "style-image.png"
    if not path.exists():
        photo_image(96, 96, seed=2).save(path)
    return path


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import yaml

    from processor.cli.compose import build_registry
    from processor.config import Settings
    from testkit.images import photo_image

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(Path(__file__).parents[1] / "config.yaml"))
    parser.add_argument("--also", action="append", default=[],
                        help="another config file whose styles are counted too (bench/flow_styles.yaml)")
    parser.add_argument("--reference", default="modern-disney", help="the style the ratios compare with")
    parser.add_argument("--fast", default=None, help="a style that must be --min-ratio times cheaper")
    parser.add_argument("--min-ratio", type=float, default=8.0)
    parser.add_argument("--styles", nargs="*", help="only these styles (default: every diffusion style)")
    parser.add_argument("--models", metavar="DIR", default=None,
                        help="where the tiny models are built, and found by a later run that names the same "
                        "folder (default: a temporary folder, removed at the end)")
    args = parser.parse_args(argv)

    shipped = yaml.safe_load(Path(args.config).read_text(encoding="utf-8"))
    for extra in args.also:
        more = yaml.safe_load(Path(extra).read_text(encoding="utf-8"))["styles"]
        shipped["styles"] = shipped.get("styles", {}) | more
    photo = photo_image(320, 240, seed=1)
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-evals-") as tmp:
        config, names = tiny_config(shipped, Path(args.models or tmp))
        names = [n for n in names if not args.styles or n in args.styles]
        # allow_noncommercial: every shipped style is counted, on random weights (no model is used);
        # the per-input bounds are a worker's, not a count's (each style runs on its own here).
        run = {"styles": names or ["toon"], "allow_noncommercial": True,
               "max_styles_per_input": min(64, max(len(names), 1)), "max_variants_per_input": 1024}
        settings = Settings.model_validate(config | {"run": config["run"] | run})
        registry = build_registry(settings)
        counts = Counts()
        patched = _count(counts)
        try:
            for name in names:
                engine = registry.engine(name)
                before = Counts(**vars(counts))
                variants = engine(photo, None)
                style = shipped["styles"][name]
                rows[name] = {
                    "model": style["model"],
                    "variants": len(variants),
                    "unet_calls": counts.calls - before.calls,
                    "unet_evaluations": counts.evaluations - before.evaluations,
                    "transformer_calls": counts.transformer_calls - before.transformer_calls,
                    "transformer_evaluations": counts.transformer - before.transformer,
                    "denoising_steps": counts.steps - before.steps,
                    "controlnet_evaluations": counts.controlnet - before.controlnet,
                    # Once per pipeline call, not per step (see the module docstring).
                    "adapter_calls": counts.adapter_calls - before.adapter_calls,
                    "adapter_evaluations": counts.adapter - before.adapter,
                }
        finally:
            for cls, attr, original in patched:
                setattr(cls, attr, original)
    reference = rows.get(args.reference)
    for row in rows.values():
        # A style runs on one denoiser: a UNet or a flow transformer (their sum is that one's count).
        row["denoiser"] = "transformer" if row["transformer_calls"] else "UNet"
        row["evaluations"] = row["unet_evaluations"] + row["transformer_evaluations"]
        row["unet_evaluations_per_variant"] = row["unet_evaluations"] / row["variants"]
        row["transformer_evaluations_per_variant"] = row["transformer_evaluations"] / row["variants"]
        row["evaluations_per_variant"] = row["evaluations"] / row["variants"]
        row["cheaper_than_reference"] = (reference["evaluations"] / row["evaluations"]
                                         if reference and row["evaluations"] else None)
    print(table(rows, args.reference))
    if args.fast:
        ratio = rows[args.fast]["cheaper_than_reference"] if args.fast in rows else None
        if ratio is None or ratio < args.min_ratio:
            print(f"FAIL: {args.fast} is {ratio and round(ratio, 2)}x cheaper than {args.reference} in denoiser "
                  f"evaluations per input; at least {args.min_ratio}x is required", file=sys.stderr)
            raise SystemExit(1)
        print(f"ok: {args.fast} needs {ratio:.1f}x fewer denoiser evaluations per input than {args.reference}")
    return rows


def table(rows: dict[str, dict[str, Any]], reference: str) -> str:
    """The rows as a markdown table (docs/benchmarks.md quotes it). ``denoiser``: what the calls
    and evaluations count, UNet or flow transformer evaluations."""
    lines = [f"| style | model | denoiser | variants | calls / input | denoising steps / input | evaluations / input "
             f"| per variant | ControlNet evaluations / input | vs {reference} |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        ratio = ("reference" if name == reference else f"{r['cheaper_than_reference']:.1f}x fewer"
                 if r["cheaper_than_reference"] else "-")
        calls = r["unet_calls"] + r["transformer_calls"]
        lines.append(f"| {name} | {r['model']} | {r['denoiser']} | {r['variants']} | {calls} | "
                     f"{r['denoising_steps']} | {r['evaluations']} | {r['evaluations_per_variant']:g} | "
                     f"{r['controlnet_evaluations']} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
