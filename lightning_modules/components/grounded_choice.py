"""Sample, then keep a grounded sample: BLIP's CapFilt idea (nucleus samples for diverse captions,
a filter against the noisy ones), with the filter made of the tags a caption names.

Greedy decoding returns the mode of a captioner's paraphrases, so a pool captioned greedily falls
into a few templates, and a flywheel that trains on its own greedy captions narrows further each
round. Samples vary the wording, but also the content. ``farthest_grounded`` keeps a sample only if

- it names only tags that ``allowed`` holds: what its inputs name (round 0: the frame captions and
  the transcript) or what the video encoder recognises (rounds ≥ 1, the tag-guided prompt); and
- it leaves out no kind of attribute that the greedy caption names from ``allowed`` (a sample
  that drops the scene says less than the greedy caption).

Of the samples that pass, the one farthest from the greedy caption replaces it: the one sharing
the smallest fraction of its word bigrams with it (the earliest on a tie). The greedy caption is
the mode, so the farthest grounded sample carries the most of the paraphrase variety: of 3
samples of a round-1 VideoLLM, it gave distinct-2 0.129 and mean accuracy 0.822, against 0.124
and 0.818 for the first grounded one (README, "What narrows the VideoLLM"). Where no sample
passes, the greedy caption stays.
Tags are ``attribute:value`` strings from ``parse`` (the synthetic world's lexicon by default;
real data needs its own parser, as the tag head does).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from evaluation.text_stats import ngrams, tokenize
from lightning_modules.components.tag_recognition import world_tags

__all__ = ["farthest_grounded"]


def _kinds(tags: Iterable[str]) -> set[str]:
    return {t.split(":", 1)[0] for t in tags}


def _bigrams(text: str) -> set[tuple[str, ...]]:
    return set(ngrams(tokenize(text), 2))  # the tokens distinct-2 counts (evaluation.text_stats)


def _shared_with(reference: set[tuple[str, ...]], text: str) -> float:
    bigrams = _bigrams(text)
    return len(bigrams & reference) / max(1, len(bigrams))


def _is_grounded(sample: str, allowed: set[str], needed: set[str], parse: Callable[[str], set[str]]) -> bool:
    if not sample.strip():
        return False
    named = parse(sample)
    return named <= allowed and _kinds(named) >= needed


def farthest_grounded(greedy: str, samples: Sequence[str], allowed: Iterable[str],
                      parse: Callable[[str], set[str]] = world_tags) -> str:
    """The sample grounded in ``allowed`` that is farthest from ``greedy`` (see the module
    docstring), else ``greedy``."""
    allowed = set(allowed)
    needed = _kinds(parse(greedy) & allowed)
    grounded = [s for s in samples if _is_grounded(s, allowed, needed, parse)]
    if not grounded:
        return greedy
    reference = _bigrams(greedy)
    return min(grounded, key=lambda s: _shared_with(reference, s))  # min keeps the earliest of equals
