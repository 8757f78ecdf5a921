"""Tiny random-weight diffusion pipelines, built offline once per test session.

Each is made from small configs, written with ``save_pretrained(safe_serialization=True)`` and then
loaded by the tests through ``processor.models.loader`` exactly like a production model folder. The VAE
keeps Stable Diffusion's four blocks (an 8x downsampling factor), so a 64 px image is an 8x8 latent.
The CLIP tokenizer is built from the BPE merges open_clip ships (a prefix of them), or from a
byte-level vocabulary when open_clip is not installed.
"""

from __future__ import annotations

import gzip
import importlib.util
import warnings
from pathlib import Path

import pytest

#: Without the ``sd`` extra (torch, diffusers, transformers) this folder is not collected at all.
HAVE_SD = all(importlib.util.find_spec(name) is not None for name in ("torch", "diffusers", "transformers"))
if not HAVE_SD:
    collect_ignore_glob = ["test_*.py"]

#: Pixels: the tiny models' native long side (UNet sample size 8 x VAE factor 8).
TINY_NATIVE = 64
#: BPE merges kept from open_clip's vocabulary (the full 48,894 would only make embeddings bigger).
TINY_MERGES = 2000
#: Text encoder width (also the SD UNet's cross-attention width).
TEXT_WIDTH = 32


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def tiny_tokenizer():
    from transformers import CLIPTokenizer

    merges: list[tuple[str, str]] = []
    spec = importlib.util.find_spec("open_clip")
    if spec and spec.origin:
        bpe = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"
        if bpe.exists():
            lines = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 1 + TINY_MERGES]
            merges = [tuple(line.split()) for line in lines if len(line.split()) == 2]
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=list(merges))
    tokenizer.model_max_length = 77
    return tokenizer


def _text_config(tokenizer, **extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        hidden_size=TEXT_WIDTH, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=len(tokenizer), max_position_embeddings=77, hidden_act="gelu", **extra,
    )


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=1, norm_num_groups=8,
        sample_size=TINY_NATIVE,
    )


def _scheduler():
    from diffusers import PNDMScheduler

    return PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                         steps_offset=1, set_alpha_to_one=False)


def _unet(in_channels: int = 4, **extra):
    from diffusers import UNet2DConditionModel

    options = dict(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=TINY_NATIVE // 8, in_channels=in_channels,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=TEXT_WIDTH, attention_head_dim=(2, 4),
        norm_num_groups=32,
    )
    options.update(extra)
    return UNet2DConditionModel(**options)


def build_sd(path: Path, *, in_channels: int = 4, unet_options: dict | None = None) -> Path:
    import torch
    from diffusers import StableDiffusionInstructPix2PixPipeline, StableDiffusionPipeline
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    parts = dict(unet=_unet(in_channels, **(unet_options or {})), vae=_vae(),
                 text_encoder=CLIPTextModel(_text_config(tokenizer)), tokenizer=tokenizer, scheduler=_scheduler(),
                 safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    cls = StableDiffusionInstructPix2PixPipeline if in_channels == 8 else StableDiffusionPipeline
    cls(**parts).save_pretrained(path, safe_serialization=True)
    return path


def build_sdxl(path: Path) -> Path:
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    unet = _unet(
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=6 * 8 + TEXT_WIDTH,
        cross_attention_dim=2 * TEXT_WIDTH, norm_num_groups=1,
    )
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(
        unet=unet, vae=_vae(), scheduler=scheduler,
        text_encoder=CLIPTextModel(_text_config(tokenizer)), tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(_text_config(tokenizer, projection_dim=TEXT_WIDTH)),
        tokenizer_2=tokenizer,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def build_sdxl_refiner(path: Path, base: Path) -> Path:
    """A tiny SDXL refiner for the SDXL base in ``base``: no first text encoder (the real refiner
    has none), a UNet that reads only the second encoder's width and an aesthetic-score time
    embedding (5 time ids), and the base's own VAE and second text encoder saved beside it, as
    stabilityai's refiner repo ships them."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(4)
    unet = _unet(
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=5 * 8 + TEXT_WIDTH,
        cross_attention_dim=TEXT_WIDTH, norm_num_groups=1,
    )
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    StableDiffusionXLImg2ImgPipeline(
        unet=unet, scheduler=scheduler, text_encoder=None, tokenizer=None,
        vae=AutoencoderKL.from_pretrained(base / "vae", use_safetensors=True),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(base / "text_encoder_2", use_safetensors=True),
        tokenizer_2=tiny_tokenizer(), requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
    ).save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    return build_sd(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_pix2pix(tmp_path_factory) -> Path:
    return build_sd(tmp_path_factory.mktemp("models") / "tiny-pix2pix", in_channels=8)


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> Path:
    return build_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(scope="session")
def tiny_sdxl_refiner(tiny_sdxl, tmp_path_factory) -> Path:
    return build_sdxl_refiner(tmp_path_factory.mktemp("models") / "tiny-sdxl-refiner", tiny_sdxl)


def build_lora(path: Path, unet_folder: Path) -> Path:
    """A LoRA for the UNet in ``unet_folder`` (random, non-zero B matrices so it visibly changes
    outputs), saved as diffusers' ``pytorch_lora_weights.safetensors`` in ``path``."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    torch.manual_seed(1)
    unet = UNet2DConditionModel.from_pretrained(unet_folder, use_safetensors=True)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    path.mkdir(parents=True, exist_ok=True)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(path, unet_lora_layers=layers, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def tiny_lora(tiny_sd, tmp_path_factory) -> Path:
    """A LoRA for ``tiny_sd``'s UNet (``build_lora``)."""
    return build_lora(tmp_path_factory.mktemp("lora"), tiny_sd / "unet")


#: The ControlNet layers diffusers zero-initialises (its output convolutions).
ZERO_INIT_CONTROLNET = ("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")


def build_controlnet(path: Path, unet_folder: Path, *, seed: int = 2) -> Path:
    """A tiny ControlNet for the UNet in ``unet_folder`` (``ControlNetModel.from_unet``: its
    encoder copied, a conditioning embedding added). diffusers zero-initialises the output
    convolutions, which would make any ControlNet a no-op; they get random weights here so a test
    can tell a steered variant from a free one."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(unet_folder, use_safetensors=True)
    # Four embedding widths: three stride-2 convolutions, the 8x of the VAE, as the real ones.
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.startswith(ZERO_INIT_CONTROLNET):
                param.normal_(0.0, 0.2)
    net.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def tiny_controlnet(tiny_sd, tmp_path_factory) -> Path:
    return build_controlnet(tmp_path_factory.mktemp("models") / "tiny-controlnet", tiny_sd / "unet")


@pytest.fixture(scope="session")
def tiny_controlnet_b(tiny_sd, tmp_path_factory) -> Path:
    """A second ControlNet (other random weights), for styles with several."""
    return build_controlnet(tmp_path_factory.mktemp("models") / "tiny-controlnet-b", tiny_sd / "unet", seed=3)


@pytest.fixture(scope="session")
def tiny_sd_for_adapter(tmp_path_factory) -> Path:
    """A tiny SD 1.x with SD 1.5's block order, which SD 1.x T2I-Adapters fit (``tests.sd.tiny_adapter``)."""
    from tests.sd.tiny_adapter import build_sd_for_adapter

    return build_sd_for_adapter(tmp_path_factory.mktemp("models") / "tiny-sd-for-adapter")


@pytest.fixture(scope="session")
def tiny_t2i_adapter(tmp_path_factory) -> Path:
    from tests.sd.tiny_adapter import build_t2i_adapter

    return build_t2i_adapter(tmp_path_factory.mktemp("models") / "tiny-t2i-adapter")


@pytest.fixture(scope="session")
def tiny_t2i_adapter_b(tmp_path_factory) -> Path:
    """A second SD 1.x T2I-Adapter (other random weights), for styles with several."""
    from tests.sd.tiny_adapter import build_t2i_adapter

    return build_t2i_adapter(tmp_path_factory.mktemp("models") / "tiny-t2i-adapter-b", seed=6)


@pytest.fixture(scope="session")
def tiny_t2i_adapter_xl(tmp_path_factory) -> Path:
    from tests.sd.tiny_adapter import build_t2i_adapter

    return build_t2i_adapter(tmp_path_factory.mktemp("models") / "tiny-t2i-adapter-xl", xl=True)


def build_inpaint(path: Path) -> Path:
    """A tiny Stable Diffusion inpainting pipeline: a 9-channel UNet (4 noisy latents + 1 mask + 4
    masked-image latents), the same VAE, text encoder and tokenizer as ``build_sd``."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    StableDiffusionInpaintPipeline(
        unet=_unet(9), vae=_vae(), text_encoder=CLIPTextModel(_text_config(tokenizer)), tokenizer=tokenizer,
        scheduler=_scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(path, safe_serialization=True)
    return path


def build_segformer(path: Path) -> Path:
    """A tiny random-weight SegFormer with ADE20K-style labels (two background classes, one object)."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(0)
    labels = {0: "wall", 1: "table", 2: "toy"}
    config = SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                             num_attention_heads=[1, 2], decoder_hidden_size=16, num_labels=3,
                             id2label=labels, label2id={v: k for k, v in labels.items()})
    SegformerForSemanticSegmentation(config).save_pretrained(path, safe_serialization=True)
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(path)
    return path


# --------------------------------------------------------------------------- caption models
# A tiny open_clip CLIP saved as a ``local-dir:`` folder (open_clip_config.json + safetensors),
# a tiny BLIP captioner with a WordPiece tokenizer made here, and short label lists, so that the
# label tables of every clip-interrogator mode compute in well under a second.

#: Width of the tiny CLIP's image and text towers and of its joint embedding.
CLIP_WIDTH = 32
#: The tiny CLIP reads 32 px images (4x4 patches of 8 px).
CLIP_IMAGE = 32
#: Words of the tiny BLIP's vocabulary (its random captions are drawn from these).
CAPTION_WORDS = ("a an the toy bear red blue green stuffed brown meerkat dressed in zebra suit on table with small "
                 "big plush robot car wooden dog cat white black sitting standing photo of").split()
#: Labels per tiny table; clip-interrogator's chain needs a few more labels than flavors it keeps.
TINY_LABELS = 12


def build_tiny_clip(path: Path) -> Path:
    """An open_clip CLIP with random weights in ``path`` (load it as ``local-dir:<path>``). The text
    tower keeps CLIP's 49,408-token BPE vocabulary, so open_clip's own tokenizer drives it."""
    import json

    import torch
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    cfg = {
        "model_cfg": {
            "embed_dim": CLIP_WIDTH,
            "vision_cfg": {
                "image_size": CLIP_IMAGE,
                "layers": 1,
                "width": CLIP_WIDTH,
                "patch_size": 8,
                "head_width": 16,
            },
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": CLIP_WIDTH, "heads": 2, "layers": 1},
        },
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    }
    path.mkdir(parents=True, exist_ok=True)
    (path / "open_clip_config.json").write_text(json.dumps(cfg))
    torch.manual_seed(0)
    model = CLIP(**cfg["model_cfg"])
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "open_clip_model.safetensors"))
    return path


def build_tiny_blip(path: Path) -> Path:
    """A BLIP captioner with random weights and a processor (image processor + a BERT WordPiece
    tokenizer over ``CAPTION_WORDS``, with BLIP's ``[DEC]`` start token), saved like a hub folder."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    path.mkdir(parents=True, exist_ok=True)
    vocab = path / "vocab-source.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *CAPTION_WORDS]) + "\n")
    tokenizer = BertTokenizer(str(vocab))
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    vocab.unlink()
    config = BlipConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=64, encoder_hidden_size=32,
                         bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
                         sep_token_id=tokenizer.sep_token_id, eos_token_id=tokenizer.sep_token_id),
        vision_config=dict(hidden_size=32, image_size=CLIP_IMAGE, patch_size=8, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=37),
        projection_dim=32,
    )
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).save_pretrained(path, safe_serialization=True)
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": CLIP_IMAGE, "width": CLIP_IMAGE}),
                              tokenizer=tokenizer)
    processor.save_pretrained(path)
    return path


def write_tiny_labels(path: Path) -> Path:
    """Short label lists in a ``caption.labels_dir`` (one file per clip-interrogator table)."""
    path.mkdir(parents=True, exist_ok=True)
    words = CAPTION_WORDS[3:3 + TINY_LABELS]
    for table in ("artists", "flavors", "mediums", "movements", "negative", "trendings"):
        (path / f"{table}.txt").write_text("\n".join(f"{table[:-1]} {w}" for w in words) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_inpaint(tmp_path_factory) -> Path:
    return build_inpaint(tmp_path_factory.mktemp("models") / "tiny-inpaint")


@pytest.fixture(scope="session")
def tiny_text2img(tiny_sd) -> Path:
    """Text-to-image for background ``generate``: the tiny SD folder is a text-to-image pipeline."""
    return tiny_sd


@pytest.fixture(scope="session")
def tiny_segformer(tmp_path_factory) -> Path:
    return build_segformer(tmp_path_factory.mktemp("models") / "tiny-segformer")


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip")


@pytest.fixture(scope="session")
def tiny_blip(tmp_path_factory) -> Path:
    return build_tiny_blip(tmp_path_factory.mktemp("models") / "tiny-blip")


@pytest.fixture(scope="session")
def tiny_labels(tmp_path_factory) -> Path:
    return write_tiny_labels(tmp_path_factory.mktemp("labels"))


def build_tiny_git(path: Path) -> Path:
    """A GIT captioner (transformers ``GitForCausalLM``) with random weights and its processor."""
    import torch
    from transformers import BertTokenizer, CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    path.mkdir(parents=True, exist_ok=True)
    vocab = path / "vocab-source.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *CAPTION_WORDS]) + "\n")
    tokenizer = BertTokenizer(str(vocab))
    vocab.unlink()
    config = GitConfig(
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                           image_size=CLIP_IMAGE, patch_size=8),
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=64, bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    GitForCausalLM(config).save_pretrained(path, safe_serialization=True)
    image_processor = CLIPImageProcessor(size={"shortest_edge": CLIP_IMAGE},
                                         crop_size={"height": CLIP_IMAGE, "width": CLIP_IMAGE})
    GitProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_git(tmp_path_factory) -> Path:
    return build_tiny_git(tmp_path_factory.mktemp("models") / "tiny-git")


# --------------------------------------------------------------------------- ONNX segmenters
# A tiny salient-object "model" exported with torch.onnx (the TorchScript exporter: it needs no
# onnxscript and nothing from the network). Its weights are fixed, not random: it undoes the
# family's normalisation and answers "saturated colour" (max - min channel above a threshold), so a
# saturated toy on a pale wall is found only if the production path resizes and normalises the
# input the way the family expects.

#: Saturation (0-1) above which the tiny segmenter calls a pixel subject.
TINY_ONNX_SATURATION = 0.3


def build_onnx_segmenter(path: Path, *, family: str = "u2net", size: int | None = 64, channels: int = 3) -> Path:
    """Export the tiny segmenter to ``path``: a fixed ``size`` x ``size`` input (None: dynamic
    height and width); ``birefnet`` returns logits, the others saliency in [0, 1]."""
    import torch

    from processor.pipeline.onnx_segmenter import FAMILIES

    spec = FAMILIES[family]

    class Saturation(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1))
            self.smooth = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
            torch.nn.init.constant_(self.smooth.weight, 1.0 / 9.0)

        def forward(self, x):
            rgb = x[:, :3] * self.std + self.mean
            saturation = rgb.max(dim=1, keepdim=True).values - rgb.min(dim=1, keepdim=True).values
            logits = 30.0 * (self.smooth(saturation) - TINY_ONNX_SATURATION)
            return logits if spec.logits else torch.sigmoid(logits)

    side = size or 96
    example = torch.zeros(1, channels, side, side)
    dynamic = None if size else {"input": {2: "height", 3: "width"}, "saliency": {2: "height", 3: "width"}}
    model = Saturation().eval() if channels == 3 else torch.nn.Conv2d(channels, 1, 1).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice, on purpose
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, example, str(path), input_names=["input"], output_names=["saliency"],
                          dynamic_axes=dynamic, dynamo=False)
    return path


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    return build_onnx_segmenter(tmp_path_factory.mktemp("onnx") / "u2net-tiny.onnx")


# --------------------------------------------------------------------------- CLIP image similarity


def build_hf_clip(path: Path) -> Path:
    """A transformers ``CLIPModel`` with random weights and its image processor (32 px, 4x4
    patches of 8 px), saved like a hub folder: ``pipeline.clip_score.model`` loads it."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    config = CLIPConfig(
        text_config=dict(vocab_size=99, hidden_size=CLIP_WIDTH, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(image_size=CLIP_IMAGE, patch_size=8, hidden_size=CLIP_WIDTH, intermediate_size=37,
                           num_hidden_layers=2, num_attention_heads=2),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(path, safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": CLIP_IMAGE},
                       crop_size={"height": CLIP_IMAGE, "width": CLIP_IMAGE}).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_hf_clip(tmp_path_factory) -> Path:
    return build_hf_clip(tmp_path_factory.mktemp("models") / "tiny-hf-clip")
@pytest.fixture(scope="session")
def tiny_ip_adapter(tiny_sd, tmp_path_factory) -> Path:
    """An IP-Adapter folder for ``tiny_sd``'s UNet in h94/IP-Adapter's layout (``tests.sd.tiny_ip_adapter``)."""
    from tests.sd.tiny_ip_adapter import build_ip_adapter

    return build_ip_adapter(tmp_path_factory.mktemp("models") / "tiny-ip-adapter", tiny_sd / "unet")
