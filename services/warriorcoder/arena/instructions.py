"""Cleaning of mined instructions: cut at the end of the user turn, normalise, reject debris.

Usage::

    text, reason = clean(raw, stop="<|im_end|>", min_chars=20, max_chars=4000)
    if reason is None: key = normalise(text)

Reasons are short, stable strings used as metric labels.
"""

from __future__ import annotations

import re
from typing import Literal

__all__ = ["RejectReason", "clean", "cut_at_stop", "normalise"]

RejectReason = Literal["empty", "too_short", "too_long", "template_debris"]

# Pieces of chat markup that must never reach a dataset: special tokens and role headers of the
# usual templates. A model that leaks them wrote a broken turn, not a question.
_DEBRIS_RE = re.compile(
    r"<\|[a-z_]+\|>|<\|(?:im_start|im_end|eot_id|start_header_id|end_header_id|EOT)\|?>?"
    r"|<｜[^｜]*｜>|\[/?INST\]|<</?SYS>>|^#{2,3} (?:Instruction|Response):"
    r"|^(?:system|user|assistant)\s*$",
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
    """Return the cleaned instruction and None, or the text and why it is rejected."""
    text = cut_at_stop(raw, stops).strip()
    if not text:
        return text, "empty"
    if _DEBRIS_RE.search(text):
        return text, "template_debris"
    if len(text) < min_chars:
        return text, "too_short"
    if len(text) > max_chars:
        return text, "too_long"
    return text, None
