"""Cleaning of mined instructions: cut at the end of the user turn, normalise, reject debris.

Usage::

    text, reason = clean(raw, stops=["<|im_end|>"], min_chars=20, max_chars=4000)
    if reason is None:
        key = normalise(text)

Reasons are short, stable strings used as metric labels.
"""

from __future__ import annotations

import re
from typing import Literal

__all__ = ["END_TOKENS", "RejectReason", "clean", "cut_at_stop", "normalise"]

RejectReason = Literal["empty", "too_short", "too_long", "template_debris"]

# End-of-turn and end-of-text tokens of the usual templates. A model that writes one has finished
# its text (Llama-3 instruct models sometimes end with the base model's `<|end_of_text|>` instead of
# `<|eot_id|>`): the instruction is cut there, like at the caller's stops, not rejected.
END_TOKENS = ("<|end_of_text|>", "<|eot_id|>", "<|im_end|>", "<｜end▁of▁sentence｜>", "<|EOT|>")

# Markup that opens or frames a chat turn: a model that writes one went on into another turn, so
# what it wrote is a broken conversation, not a question. Only turn structure counts: a special
# token mentioned in prose (`<|endoftext|>`), or a line that is just a word like `user`, is text.
_DEBRIS_RE = re.compile(
    r"<\|(?:im_start|start_header_id|end_header_id)\|>"
    r"|<｜(?:User|Assistant|begin▁of▁sentence)｜>"
    r"|\[/?INST\]|<</?SYS>>|^#{2,3} (?:Instruction|Response):",
    re.IGNORECASE | re.MULTILINE,
)
_WS_RE = re.compile(r"\s+")


def cut_at_stop(raw: str, stops: list[str]) -> str:
    """The text before the first stop string (the end of the user turn), if the backend
    did not already stop there."""
    cut = len(raw)
    for stop in stops:
        if stop:
            i = raw.find(stop)
            if i != -1:
                cut = min(cut, i)
    return raw[:cut]


def normalise(text: str) -> str:
    """Lower case, whitespace collapsed: the key of exact de-duplication and of battle ids."""
    return _WS_RE.sub(" ", text).strip().lower()


def clean(
    raw: str, *, stops: list[str], min_chars: int, max_chars: int
) -> tuple[str, RejectReason | None]:
    """Return the cleaned instruction and None, or the text and why it is rejected.

    The text is cut at the first of ``stops`` (the end of the user turn, the model's EOS) or of
    ``END_TOKENS``, then checked for turn markup and length.
    """
    text = cut_at_stop(raw, [*stops, *END_TOKENS]).strip()
    if not text:
        return text, "empty"
    if _DEBRIS_RE.search(text):
        return text, "template_debris"
    if len(text) < min_chars:
        return text, "too_short"
    if len(text) > max_chars:
        return text, "too_long"
    return text, None
