"""Sample, then keep a grounded sample: BLIP's CapFilt idea (nucleus samples for diverse captions,
a filter against the noisy ones), with the filter made of the tags a caption names.

Greedy decoding returns the mode of a captioner's paraphrases, so a pool captioned greedily falls
into a few templates, and a flywheel that trains on its own greedy captions narrows further each
round. Samples vary the wording, but also the content. ``first_grounded`` keeps a sample only if

- it names only tags that ``allowed`` holds: what its inputs name (round 0: the frame captions and
  the transcript) or what the video encoder recognises (rounds ≥ 1, the tag-guided prompt); and
- it leaves out no kind of attribute that the greedy caption names from ``allowed`` (a sample
  that drops the scene says less than the greedy caption).

The first sample that passes replaces the greedy caption; where none does, the greedy one stays.
Tags are ``attribute:value`` strings from ``parse`` (the synthetic world's lexicon by default;
real data needs its own parser, as the tag head does).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from lightning_modules.components.tag_recognition import world_tags

__all__ = ["first_grounded"]


def _kinds(tags: Iterable[str]) -> set[str]:
    return {t.split(":", 1)[0] for t in tags}


def first_grounded(greedy: str, samples: Sequence[str], allowed: Iterable[str],
                   parse: Callable[[str], set[str]] = world_tags) -> str:
    """The first of ``samples`` grounded in ``allowed`` (see the module docstring), else ``greedy``."""
    allowed = set(allowed)
    needed = _kinds(parse(greedy) & allowed)
    for sample in samples:
        named = parse(sample)
        if sample.strip() and named <= allowed and _kinds(named) >= needed:
            return sample
    return greedy
