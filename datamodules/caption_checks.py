"""Sanity checks a refined caption must pass before it replaces the previous one.

A caption that fails keeps the clip's previous caption and is counted under its reason, so a
bad generation never degrades the dataset and never goes unnoticed.
"""

from __future__ import annotations

import re
from collections import Counter

_TOKEN = re.compile(r"[^\W_]+")


def caption_problem(caption: str, max_words: int = 40, max_ngram_repeats: int = 2) -> str | None:
    """The reason ``caption`` is unusable (``empty``, ``too_long``, ``repetitive``, ``not_text``), or None.

    ``repetitive``: some word 3-gram occurs more than ``max_ngram_repeats`` times, or a word is
    repeated four times in a row (the usual failure of greedy decoding).
    """
    text = caption.strip()
    if not text:
        return "empty"
    words = _TOKEN.findall(text.lower())
    if not words:
        return "not_text"
    if len(words) > max_words:
        return "too_long"
    trigrams = Counter(zip(words, words[1:], words[2:]))
    if trigrams and max(trigrams.values()) > max_ngram_repeats:
        return "repetitive"
    if any(len(set(words[i : i + 4])) == 1 for i in range(len(words) - 3)):
        return "repetitive"
    return None
