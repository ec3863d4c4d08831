"""Sanity checks a refined caption must pass before it replaces the previous one.

A caption that fails keeps the clip's previous caption (or the transcript) and is counted under
its reason, so a bad generation never degrades the dataset and never goes unnoticed. Round 0's
writer and the flywheel's re-annotation use the same checks.
"""

from __future__ import annotations

import unicodedata
from collections import Counter

from datamodules.synthetic_world.lexicon import tokenize

FAILURE_REASONS = ("empty", "repetitive", "too_long", "wrong_script")


def caption_failure(caption: str, max_words: int = 40, ngram_size: int = 2, max_ngram_repeats: int = 2,
                    min_latin_share: float = 0.8) -> str | None:
    """Why ``caption`` fails the sanity checks (one of ``FAILURE_REASONS``), or None if it passes."""
    letters = [ch for ch in caption if ch.isalpha()]
    latin = sum(1 for ch in letters if "LATIN" in unicodedata.name(ch, ""))
    if letters and latin / len(letters) < min_latin_share:
        return "wrong_script"
    words = tokenize(caption)
    if not words:
        return "empty"
    if len(words) > max_words:
        return "too_long"
    grams = Counter(tuple(words[i : i + ngram_size]) for i in range(len(words) - ngram_size + 1))
    if grams and max(grams.values()) > max_ngram_repeats:
        return "repetitive"
    return None
