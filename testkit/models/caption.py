"""Tiny captioning and image-text models, built offline: an open_clip CLIP (``local-dir:``), BLIP
and GIT captioners, the label lists of clip-interrogator's tables, and a transformers CLIP for the
CLIP image-similarity score."""

from __future__ import annotations

from pathlib import Path

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

