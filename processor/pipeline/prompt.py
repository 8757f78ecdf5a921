"""Prompt building: the text a diffusion style's text encoder sees.

Contract (one place for every engine that takes a prompt):

- The subject is, first found: a sidecar ``prompt``, the input's ``x-amz-meta-prompt``, the caption
  (``caption.mode``), the style's own ``prompt``. A per-image prompt replaces the caption.
- The prompt is ``caption.template`` (default ``{caption}, {trigger}``) filled with the subject and
  the style's trigger words. Control characters are removed, whitespace runs collapse to one space,
  and separators left empty by a missing part are dropped (no caption gives just the trigger words).
- It fits the text encoder's token limit (77 for CLIP, start and end tokens included; a family
  with a T5 encoder beside CLIP, FLUX.1, SD 3 and Kontext, gets a second prompt fitted to the T5's
  own limit, 256 or 512 tokens: ``processor.models.families``). When it does not, the subject is
  cut word by word from its end, keeping the trigger words whole; only if the trigger words alone
  are too long are they cut too. Every cut logs ``prompt_truncated`` with what
  was dropped. The negative prompt (the style's, a sidecar's, plus ``negative`` mode terms) is
  cleaned and fitted the same way.

Token counts come from a ``count_tokens`` callable the engine passes (its pipeline's tokenizer),
so the cut is exact for the model that runs.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from processor.config import DEFAULT_PROMPT_TEMPLATE, StyleBase
from processor.models.families import CLIP_TOKENS, TextEncoder
from processor.pipeline.base import ItemContext

log = logging.getLogger("processor.prompt")

#: Tokens a CLIP text encoder reads, start and end tokens included.
CLIP_MAX_TOKENS = CLIP_TOKENS

#: Counts the tokens of a text as the text encoder sees it (start and end tokens included).
TokenCounter = Callable[[str], int]

_WHITESPACE = re.compile(r"\s+")
#: Separators a missing template part leaves behind: ", ," or a comma at either end.
_EMPTY_SEPARATORS = re.compile(r"(\s*,)(\s*,)+")


def clean_text(text: str | None) -> str:
    """``text`` without control/format characters (newlines and tabs become spaces), whitespace
    runs collapsed to one space, and no leading or trailing space."""
    if not text:
        return ""
    kept = []
    for char in text:
        category = unicodedata.category(char)
        if char.isspace():
            kept.append(" ")
        elif category in ("Cc", "Cf", "Cs", "Co"):  # control, format (zero-width), surrogate, private use
            continue
        else:
            kept.append(char)
    return _WHITESPACE.sub(" ", "".join(kept)).strip()


def first_clause(text: str) -> str:
    """The text up to its first comma ("a stuffed meerkat, by X, trending" -> "a stuffed meerkat")."""
    return text.split(",", 1)[0].strip()


def _tidy(text: str) -> str:
    text = clean_text(text)
    text = _EMPTY_SEPARATORS.sub(",", text)
    return text.strip(" ,")


def render_template(template: str, subject: str, trigger: str) -> str:
    return _tidy(template.format(caption=subject, trigger=trigger))


def default_counter(text: str) -> int:
    """A stand-in when no tokenizer is at hand: one token per word or punctuation mark, plus the
    start and end tokens (CLIP's BPE never gives fewer)."""
    return len(re.findall(r"\w+|[^\w\s]", text)) + 2


@dataclass(frozen=True)
class BuiltPrompt:
    text: str
    #: Tokens of ``text`` (start and end included).
    tokens: int
    #: The words cut to fit the token limit ("" when nothing was cut).
    dropped: str = ""

    @property
    def truncated(self) -> bool:
        return bool(self.dropped)


def _words(text: str) -> list[str]:
    return text.split(" ") if text else []


def _longest_fitting(words: list[str], render: Callable[[str], str], count: TokenCounter, limit: int) -> int:
    """The most leading ``words`` whose rendering fits ``limit`` tokens (binary search: the count
    grows with the number of words)."""
    lo, hi = 0, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(render(" ".join(words[:mid]))) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


def build_prompt(
    subject: str | None,
    trigger: str | None,
    *,
    template: str = DEFAULT_PROMPT_TEMPLATE,
    count_tokens: TokenCounter = default_counter,
    max_tokens: int = CLIP_MAX_TOKENS,
    what: str = "prompt",
    fields: dict[str, Any] | None = None,
) -> BuiltPrompt:
    """The template filled with ``subject`` and ``trigger``, cleaned and fitted to ``max_tokens``
    (see the module docstring). ``what`` and ``fields`` label the warning when text is cut."""
    subject, trigger = clean_text(subject).strip(" ,"), clean_text(trigger).strip(" ,")
    text = render_template(template, subject, trigger)
    tokens = count_tokens(text)
    if tokens <= max_tokens:
        return BuiltPrompt(text, tokens)
    subject_words = _words(subject)
    keep = _longest_fitting(subject_words, lambda s: render_template(template, s, trigger), count_tokens, max_tokens)
    dropped = subject_words[keep:]
    if keep == 0 and count_tokens(render_template(template, "", trigger)) > max_tokens:
        # The trigger words alone are too long: they lose their tail too.
        trigger_words = _words(trigger)
        kept_trigger = _longest_fitting(trigger_words, lambda t: render_template(template, "", t), count_tokens,
                                        max_tokens)
        dropped = subject_words + trigger_words[kept_trigger:]
        text = render_template(template, "", " ".join(trigger_words[:kept_trigger]).rstrip(" ,"))
    else:
        text = render_template(template, " ".join(subject_words[:keep]).rstrip(" ,"), trigger)
    built = BuiltPrompt(text, count_tokens(text), " ".join(dropped))
    log.warning("prompt_truncated", extra=(fields or {}) | {
        "what": what, "tokens_before": tokens, "tokens": built.tokens, "max_tokens": max_tokens,
        "dropped": built.dropped})
    return built


def fit_text(text: str | None, *, count_tokens: TokenCounter = default_counter, max_tokens: int = CLIP_MAX_TOKENS,
             what: str = "negative", fields: dict[str, Any] | None = None) -> BuiltPrompt:
    """``text`` cleaned and cut from its end to ``max_tokens`` (a negative prompt, an instruction)."""
    return build_prompt(None, text, template="{trigger}", count_tokens=count_tokens, max_tokens=max_tokens,
                        what=what, fields=fields)


def join_terms(*parts: str | None) -> str:
    """Comma-joined non-empty parts ("blurry, lowres" + "text, watermark")."""
    return ", ".join(p for p in (clean_text(part).strip(" ,") for part in parts) if p)


@dataclass(frozen=True)
class StylePrompt:
    prompt: BuiltPrompt
    negative: BuiltPrompt
    #: ``sidecar``, ``metadata``, ``caption``, ``style`` (the style's own ``prompt``) or ``none``.
    source: str

    def parameters(self) -> dict[str, Any]:
        """What a variant records about its prompt (manifest and PNG text chunk)."""
        return {
            "prompt": self.prompt.text,
            "negative": self.negative.text,
            "prompt_source": self.source,
            "prompt_tokens": self.prompt.tokens,
            "prompt_truncated": self.prompt.truncated or self.negative.truncated,
        }


def subject_for(context: ItemContext | None, style_prompt: str | None) -> tuple[str | None, str]:
    """The subject text and where it came from (first found: per-image prompt, caption, style)."""
    if context is not None and clean_text(context.prompt):
        return context.prompt, context.prompt_source or "sidecar"
    if context is not None and clean_text(context.caption):
        return context.caption, "caption"
    if clean_text(style_prompt):
        return style_prompt, "style"
    return None, "none"


def style_prompt(
    *,
    trigger: str | None,
    negative: str | None,
    style_subject: str | None,
    context: ItemContext | None,
    count_tokens: TokenCounter = default_counter,
    max_tokens: int = CLIP_MAX_TOKENS,
    fields: dict[str, Any] | None = None,
) -> StylePrompt:
    """The positive and negative prompt of one style for one input."""
    subject, source = subject_for(context, style_subject)
    template = context.template if context is not None else DEFAULT_PROMPT_TEMPLATE
    built = build_prompt(subject, trigger, template=template, count_tokens=count_tokens, max_tokens=max_tokens,
                         what="prompt", fields=fields)
    extra = context.negative_terms if context is not None else None
    fitted = fit_text(join_terms(negative, extra), count_tokens=count_tokens, max_tokens=max_tokens,
                      what="negative", fields=fields)
    return StylePrompt(built, fitted, source)


def takes_prompt(style: Any) -> bool:
    """True for styles whose prompt is built here from a caption (``StyleBase.takes_prompt``:
    img2img, txt2img, an animate style with trigger words or a prompt)."""
    if isinstance(style, StyleBase):
        return style.takes_prompt()
    return "trigger" in getattr(type(style), "model_fields", {})


def tokenizer_counter(tokenizer: Any) -> TokenCounter:
    """A counter from a transformers tokenizer (start and end tokens included, nothing cut)."""

    special = tokenizer.num_special_tokens_to_add()

    def count(text: str) -> int:
        # tokenize() rather than __call__: no "longer than the maximum" warning for long text.
        return len(tokenizer.tokenize(text)) + special

    return count


def encoder_counter(pipe: Any, encoder: TextEncoder) -> tuple[TokenCounter, int]:
    """The token counter of ``encoder``'s tokenizer in ``pipe`` (``TextEncoder.tokenizer`` names
    the pipeline attribute) and the tokens that encoder reads (the family table's limit)."""
    return tokenizer_counter(getattr(pipe, encoder.tokenizer)), encoder.max_tokens
