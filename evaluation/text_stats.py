"""Text statistics of a caption source: tokens, vocabulary, distinct-n, entropy, self-BLEU-4.

Pure Python (standard library only), so the dataset report imports it anywhere.

Definitions (DESIGN §7), as computed here:

- **Tokens**: lower-case the text, split on runs of characters that are not letters or digits
  (Unicode-aware: ``[\\W_]+``; on ASCII text this is exactly the synthetic world's
  ``lexicon.tokenize``). Empty strings are dropped.
- **Vocabulary**: number of distinct tokens over the whole source.
- **distinct-n**: distinct n-grams / all n-grams over the whole source, n-grams taken inside
  each caption (never across two captions). A fraction in [0, 1]; ``None`` when the source has
  no n-gram at all.
- **Entropy**: Shannon entropy of the unigram (token) distribution of the whole source, in
  **bits** (log base 2). ``None`` for a source without tokens.
- **Self-BLEU-4** (:func:`self_bleu`): on a sample of S captions, each caption is scored with
  sentence-level BLEU-4 against the S - 1 others as its references, and the S scores are
  averaged. Per hypothesis: modified n-gram precision for n = 1..4 with counts clipped by the
  largest count of that n-gram in any single reference; uniform weights 1/4 (geometric mean);
  brevity penalty ``exp(1 - r/c)`` when c <= r (c the hypothesis length, r the reference
  length closest to c, the shorter one on a tie), 1 when c > r. Smoothing: a precision with
  no match counts as ``epsilon / max(1, total)`` with epsilon = 0.1 (NLTK's ``method1``, used
  by Texygen's Self-BLEU); a hypothesis with no unigram match, or no token, scores 0. This is
  the definition of NLTK's ``sentence_bleu`` with ``SmoothingFunction().method1``; we did not
  check it against NLTK itself (it is not a dependency). Cost: linear in the sample's n-grams
  (the best reference count excluding the hypothesis itself is read from a per-n-gram top-two
  table), so well within the O(S²) bound. Higher self-BLEU = less diverse.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence

_SPLIT = re.compile(r"[\W_]+")


def tokenize(text: str) -> list[str]:
    """Lower-case and split on runs of characters that are not letters or digits."""
    return [t for t in _SPLIT.split(text.lower()) if t]


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """The n-grams of one token list (none when it is shorter than ``n``)."""
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(token_lists: Iterable[Sequence[str]], n: int) -> float | None:
    """Distinct n-grams / all n-grams over all token lists; ``None`` when there is none."""
    seen: set[tuple[str, ...]] = set()
    total = 0
    for tokens in token_lists:
        grams = ngrams(tokens, n)
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else None


def entropy_bits(counts: Iterable[int]) -> float | None:
    """Shannon entropy, in bits, of the distribution given by non-negative ``counts``."""
    counts = [c for c in counts if c > 0]
    total = sum(counts)
    if total == 0:
        return None
    return max(0.0, -sum(c / total * math.log2(c / total) for c in counts))


def unigram_entropy(token_lists: Iterable[Sequence[str]]) -> float | None:
    """Entropy in bits of the token distribution over all token lists."""
    counts: Counter[str] = Counter()
    for tokens in token_lists:
        counts.update(tokens)
    return entropy_bits(counts.values())


class TextStats:
    """Streaming text statistics of one source: feed captions one at a time, read :meth:`result`.

    Memory grows with the vocabulary and the number of distinct n-grams, never with the number
    of captions: tokens are interned to integer ids and n-grams (n >= 2) are stored as one
    packed integer each.
    """

    def __init__(self, orders: Sequence[int] = (1, 2)) -> None:
        if any(n < 1 for n in orders):
            raise ValueError(f"n-gram orders must be >= 1, got {tuple(orders)}")
        self.orders = tuple(orders)
        self.captions = 0
        self.tokens = 0
        self.token_counts: Counter[str] = Counter()
        self.length_counts: Counter[int] = Counter()
        self._ids: dict[str, int] = {}
        self._grams: dict[int, set[int]] = {n: set() for n in self.orders if n >= 2}
        self._gram_totals: dict[int, int] = {n: 0 for n in self.orders}

    def update(self, caption: str) -> list[str]:
        """Add one caption; returns its tokens."""
        tokens = tokenize(caption)
        self.captions += 1
        self.tokens += len(tokens)
        self.length_counts[len(tokens)] += 1
        self.token_counts.update(tokens)
        ids = self._ids
        seq = [ids.setdefault(t, len(ids)) for t in tokens]
        for n, seen in self._grams.items():
            count = len(seq) - n + 1
            if count <= 0:
                continue
            self._gram_totals[n] += count
            for i in range(count):
                packed = 0
                for k in range(n):
                    packed = (packed << 32) | seq[i + k]
                seen.add(packed)
        if 1 in self._gram_totals:
            self._gram_totals[1] += len(tokens)
        return tokens

    def distinct(self, n: int) -> float | None:
        total = self._gram_totals[n]
        if not total:
            return None
        distinct = len(self.token_counts) if n == 1 else len(self._grams[n])
        return distinct / total

    def result(self) -> dict:
        """``captions, tokens, vocabulary, mean_length, entropy, distinct_<n>`` for each order."""
        out = {
            "captions": self.captions,
            "tokens": self.tokens,
            "vocabulary": len(self.token_counts),
            "mean_length": self.tokens / self.captions if self.captions else None,
            "entropy": entropy_bits(self.token_counts.values()),
        }
        for n in self.orders:
            out[f"distinct_{n}"] = self.distinct(n)
        return out


def _closest_length(length_counts: Counter[int], own: int, hyp_len: int) -> int:
    """The reference length closest to ``hyp_len`` (shorter on a tie), ``own`` removed once."""
    best = None
    for length, count in length_counts.items():
        if length == own and count == 1:
            continue
        key = (abs(length - hyp_len), length)
        if best is None or key < best:
            best = key
    assert best is not None
    return best[1]


def self_bleu(sentences: Sequence[Sequence[str]], max_n: int = 4, epsilon: float = 0.1) -> float | None:
    """Mean sentence BLEU-``max_n`` of each tokenised sentence against all the others.

    See the module docstring for the exact protocol. ``None`` for fewer than two sentences.
    """
    size = len(sentences)
    if size < 2:
        return None
    counts = [[Counter(ngrams(s, n)) for n in range(1, max_n + 1)] for s in sentences]
    # Per order, per n-gram: [largest count, index of the sentence holding it, largest count
    # among all other sentences]. The best count over references j != i is then one lookup.
    top: list[dict[tuple[str, ...], list[int]]] = [{} for _ in range(max_n)]
    for i, per_order in enumerate(counts):
        for order, grams in enumerate(per_order):
            table = top[order]
            for gram, k in grams.items():
                entry = table.get(gram)
                if entry is None:
                    table[gram] = [k, i, 0]
                elif k > entry[0]:
                    entry[2], entry[0], entry[1] = entry[0], k, i
                elif k > entry[2]:
                    entry[2] = k
    lengths = Counter(len(s) for s in sentences)
    total_score = 0.0
    for i, sentence in enumerate(sentences):
        c = len(sentence)
        if c == 0:
            continue  # scores 0
        log_sum = 0.0
        for order in range(max_n):
            table = top[order]
            matched = 0
            for gram, k in counts[i][order].items():
                best, holder, second = table[gram]
                matched += min(k, second if holder == i else best)
            denominator = max(1, c - order)
            if matched == 0:
                if order == 0:
                    log_sum = -math.inf
                    break
                log_sum += math.log(epsilon / denominator)
            else:
                log_sum += math.log(matched / denominator)
        if log_sum == -math.inf:
            continue
        r = _closest_length(lengths, c, c)
        brevity = 1.0 if c > r else math.exp(1.0 - r / c)
        total_score += brevity * math.exp(log_sum / max_n)
    return total_score / size
