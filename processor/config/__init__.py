"""One typed Settings tree (pydantic-settings), in modules by responsibility:

- ``base``: the section base class, defaults and bounds shared by every section, and ``ModelRef``
  (a model as configured: model, revision, license, weight_name);
- ``styles``: the style sections (``styles.<name>``), their one diffusion base and the checks that
  span a style; ``animate``: the image-to-video style (``engine: animate``) and its chain checks;
  ``engines``: every style section by its ``engine`` key;
- ``addons``: what a style loads beside its model (LoRA, LCM, refiner, ControlNets and their
  preprocessors, IP-Adapter) and its background;
- ``pipeline``: the ``pipeline`` section (decode limits, the subject mask and segmenters, the CLIP
  score, clip bounds);
- ``sections``: the other sections (store, prefixes, run, claims, models, caption, ...);
- ``licenses``: which licences a style's weights come under (``run.allow_noncommercial``);
- ``settings``: the root ``Settings``, its sources (keywords, environment, ``config.yaml``) and
  ``load_settings``, whose ``ConfigError`` names the key and where it came from.

What callers use is re-exported here (``from processor.config import Settings``); everything else
is imported from its module.
"""

from processor.config.addons import (
    DEFAULT_PREPROCESSOR_WEIGHTS,
    ControlSettings,
    IpAdapterSettings,
    LcmSettings,
    LoraSettings,
    PreprocessorSettings,
    RefinerSettings,
)
from processor.config.animate import AnimateStyle
from processor.config.base import (
    DEFAULT_CLAIM_MAX_TTL_S,
    DEFAULT_CONTACT_SHEET_MAX_PIXELS,
    DEFAULT_METRICS_PORT,
    DEFAULT_PNG_COMPRESS_LEVEL,
    MAX_FRAMES,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    BackgroundMode,
    ModelRef,
    PromptText,
    Seed,
    VariantCount,
)
from processor.config.pipeline import (
    DEFAULT_ONNX_SEGMENTER,
    KNOWN_ONNX_SEGMENTERS,
    ClipScoreSettings,
    DecodeSettings,
    MaskSettings,
    OnnxFamily,
    OnnxSegmenterSettings,
    VideoSettings,
)
from processor.config.sections import (
    DEFAULT_PROMPT_TEMPLATE,
    CaptionSettings,
    MetricsSettings,
    ModelSettings,
    PerformanceSettings,
    PrefixSettings,
    StoreSettings,
)
from processor.config.settings import (
    Settings,
    load_settings,
)
from processor.config.styles import (
    DiffusionStyle,
    EditStyle,
    Img2ImgStyle,
    InstructPix2PixStyle,
    StyleBase,
    StyleOption,
    ToonStyle,
    Txt2ImgStyle,
    background_model,
    with_sources,
    work_bound_problem,
)

__all__ = [
    "DEFAULT_CLAIM_MAX_TTL_S",
    "DEFAULT_CONTACT_SHEET_MAX_PIXELS",
    "DEFAULT_METRICS_PORT",
    "DEFAULT_ONNX_SEGMENTER",
    "DEFAULT_PNG_COMPRESS_LEVEL",
    "DEFAULT_PREPROCESSOR_WEIGHTS",
    "DEFAULT_PROMPT_TEMPLATE",
    "KNOWN_ONNX_SEGMENTERS",
    "MAX_FRAMES",
    "MAX_PROMPT_CHARS",
    "MAX_SEED",
    "AnimateStyle",
    "BackgroundMode",
    "CaptionSettings",
    "ClipScoreSettings",
    "ControlSettings",
    "DecodeSettings",
    "DiffusionStyle",
    "EditStyle",
    "Img2ImgStyle",
    "InstructPix2PixStyle",
    "IpAdapterSettings",
    "LcmSettings",
    "LoraSettings",
    "MaskSettings",
    "MetricsSettings",
    "ModelRef",
    "ModelSettings",
    "OnnxFamily",
    "OnnxSegmenterSettings",
    "PerformanceSettings",
    "PrefixSettings",
    "PreprocessorSettings",
    "PromptText",
    "RefinerSettings",
    "Seed",
    "Settings",
    "StoreSettings",
    "StyleBase",
    "StyleOption",
    "ToonStyle",
    "Txt2ImgStyle",
    "VariantCount",
    "VideoSettings",
    "background_model",
    "load_settings",
    "with_sources",
    "work_bound_problem",
]
