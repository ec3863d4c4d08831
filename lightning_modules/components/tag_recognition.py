"""Tag recognition for the video encoder: name, from the frames, the tags its caption holds.

Trained by captioning alone, the tiny encoder learns what a few pixels show (colour, scene) and not
what needs an object's layout (shape, how it moves): on the synthetic world's stills its tokens
carry no shape (a linear probe at chance) and the captions name shapes at chance, though the same
encoder learns shape from a direct read-out. Tag2Text (Huang et al., 2023) trains an image-tag
head beside the captioner on tags parsed from the captions; so does this module. A caption's tags
are the attribute values it names, parsed with the synthetic world's lexicon (synonyms fold into
one tag: "orb", "disk" and "circle" are all ``shape:circle``); the encoder's tokens, max-pooled
(what is there, wherever it is), feed a linear layer with one logit per tag under a binary
cross-entropy. The tags come from the training captions themselves, never from ground truth, and
are as noisy as those captions; for other data, give a parser of its own words.

``speech_attributes`` take their tags from the clip's transcript instead. An image captioner cannot
see motion, so round 0's motion words are copied from the speech where it names one and guessed
where it is silent; a guess says nothing about the video and teaches the head noise. The speech,
where it names a motion, names the right one in most clips (narration as weak supervision of
video, as in MIL-NCE); where it names none of an attribute, that attribute's tags are left out of
the loss. On the demo world this trains a motion reader that is right on 0.77 of held-out clips,
against 0.48 with round 0's motion words (``README``: "Tag-guided captioning").

``predict`` names the tags of a clip (``VideoLLMModule(tag_prompt=True)`` writes them into the
prompt, as Tag2Text guides its captioner with recognised tags): every tag above ``threshold``,
and for each attribute in ``always_named`` its most likely value even when none passes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from datamodules.synthetic_world.lexicon import ATTRIBUTES, VALUES, attributes_mentioned

__all__ = ["WORLD_TAGS", "world_tags", "tag_text", "TagRecognition"]

WORLD_TAGS: tuple[str, ...] = tuple(f"{a}:{v}" for a in ATTRIBUTES for v in VALUES[a])


def world_tags(caption: str) -> set[str]:
    """The tags a caption names, e.g. ``{"shape:circle", "color:red", "motion:left"}``."""
    return {f"{a}:{v}" for a, values in attributes_mentioned(caption).items() for v in values}


# The order a prompt names tags in, as an English noun phrase does: "big red circle left kitchen".
PHRASE_ORDER = ("size", "color", "shape", "motion", "scene")


def tag_text(tags: set[str] | Sequence[str], vocabulary: Sequence[str] = WORLD_TAGS) -> str:
    """The words a prompt shows for ``tags``: their values, attribute by attribute in ``PHRASE_ORDER``
    (others last), then in vocabulary order."""
    wanted = set(tags)
    chosen = [t for t in vocabulary if t in wanted]

    def rank(tag: str) -> int:
        attribute = tag.split(":", 1)[0]
        return PHRASE_ORDER.index(attribute) if attribute in PHRASE_ORDER else len(PHRASE_ORDER)

    return " ".join(t.split(":", 1)[1] for t in sorted(chosen, key=rank))


class TagRecognition(nn.Module):
    """``forward(tokens, captions, transcripts)`` → the mean over the batch of the summed per-tag
    cross-entropy.

    Args:
        width: width of the encoder tokens.
        tags: the tag vocabulary (one logit each), ``"attribute:value"``.
        parse: text → the tags it names (tags outside ``tags`` are ignored).
        speech_attributes: attributes whose tags come from the transcript, not the caption
            (left out of the loss where the transcript names none of them).
        speech_weight: weight of the speech attributes' terms in the loss. Beside the caption's
            many tags, a few motion tags teach the shared encoder little: on the demo world a
            motion probe reached 0.42 of held-out clips at weight 1, 0.63 at 5, 0.70 at 10
            (0.66–0.78 trained on motion alone).
        always_named: attributes ``predict`` names a value of even when no tag passes the threshold;
            None = those of shape, colour, motion and scene the tags have (a clean caption names
            them; size it often leaves out).
    """

    def __init__(self, width: int, tags: Sequence[str] = WORLD_TAGS,
                 parse: Callable[[str], set[str]] = world_tags,
                 speech_attributes: Sequence[str] = (),
                 speech_weight: float = 1.0,
                 always_named: Sequence[str] | None = None) -> None:
        super().__init__()
        self.tags = list(tags)
        self.index = {t: i for i, t in enumerate(self.tags)}
        self.attribute_of = {t: t.split(":", 1)[0] for t in self.tags}
        self.columns: dict[str, list[int]] = {}  # attribute → its tags' logit indices
        for i, tag in enumerate(self.tags):
            self.columns.setdefault(self.attribute_of[tag], []).append(i)
        if always_named is None:
            always_named = [a for a in ("shape", "color", "motion", "scene") if a in self.columns]
        for key, attributes in (("speech_attributes", speech_attributes), ("always_named", always_named)):
            unknown = sorted(set(attributes) - set(self.columns))
            if unknown:
                raise ValueError(f"{key}: no tag of attribute(s) {unknown}; tags have {sorted(self.columns)}")
        self.speech_attributes = frozenset(speech_attributes)
        self.register_buffer("column_weight", torch.tensor(
            [speech_weight if self.attribute_of[t] in self.speech_attributes else 1.0 for t in self.tags]),
            persistent=False)
        self.always_named = tuple(always_named)
        self.parse = parse
        self.head = nn.Linear(width, len(self.tags))

    def targets(self, captions: Sequence[str], transcripts: Sequence[str] | None = None) -> tuple[Tensor, Tensor]:
        """``(targets, mask)``, both ``[B, len(tags)]``: mask 0 where a tag is left out of the loss."""
        if self.speech_attributes and (transcripts is None or len(transcripts) != len(captions)):
            raise ValueError("speech_attributes need one transcript per caption")
        hot = torch.zeros(len(captions), len(self.tags))
        mask = torch.ones_like(hot)
        for row, caption in enumerate(captions):
            named = [t for t in self._known(caption) if self.attribute_of[t] not in self.speech_attributes]
            if self.speech_attributes:
                spoken = [t for t in self._known(transcripts[row]) if self.attribute_of[t] in self.speech_attributes]
                named += spoken
                for attribute in self.speech_attributes - {self.attribute_of[t] for t in spoken}:
                    mask[row, self.columns[attribute]] = 0.0  # the transcript does not say
            hot[row, [self.index[t] for t in named]] = 1.0
        return hot, mask

    def _known(self, text: str) -> list[str]:
        return [t for t in self.parse(text) if t in self.index]

    def logits(self, tokens: Tensor) -> Tensor:
        """``tokens`` ``[B, N, width]`` (CLS first) → ``[B, len(tags)]``."""
        return self.head(tokens[:, 1:].max(dim=1).values)

    @torch.no_grad()
    def predict(self, tokens: Tensor, threshold: float = 0.5) -> list[set[str]]:
        """The tags each clip shows: those above ``threshold``, and the top value of every
        ``always_named`` attribute."""
        probs = torch.sigmoid(self.logits(tokens).float()).cpu()
        named = []
        for row in probs:
            chosen = {self.tags[i] for i in (row >= threshold).nonzero().flatten().tolist()}
            for attribute in self.always_named:
                columns = self.columns[attribute]
                chosen.add(self.tags[columns[int(row[columns].argmax())]])
            named.append(chosen)
        return named

    def forward(self, tokens: Tensor, captions: Sequence[str], transcripts: Sequence[str] | None = None) -> Tensor:
        target, mask = (x.to(tokens.device) for x in self.targets(captions, transcripts))
        loss = F.binary_cross_entropy_with_logits(self.logits(tokens).float(), target, reduction="none")
        return (loss * mask * self.column_weight).sum(dim=1).mean()
