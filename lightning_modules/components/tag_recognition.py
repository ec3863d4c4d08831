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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from datamodules.synthetic_world.lexicon import ATTRIBUTES, VALUES, attributes_mentioned

__all__ = ["WORLD_TAGS", "world_tags", "TagRecognition"]

WORLD_TAGS: tuple[str, ...] = tuple(f"{a}:{v}" for a in ATTRIBUTES for v in VALUES[a])


def world_tags(caption: str) -> set[str]:
    """The tags a caption names, e.g. ``{"shape:circle", "color:red", "motion:left"}``."""
    return {f"{a}:{v}" for a, values in attributes_mentioned(caption).items() for v in values}


class TagRecognition(nn.Module):
    """``forward(tokens, captions)`` → the mean over the batch of the summed per-tag cross-entropy.

    Args:
        width: width of the encoder tokens.
        tags: the tag vocabulary (one logit each).
        parse: caption → the tags it names (tags outside ``tags`` are ignored).
    """

    def __init__(self, width: int, tags: Sequence[str] = WORLD_TAGS,
                 parse: Callable[[str], set[str]] = world_tags) -> None:
        super().__init__()
        self.tags = list(tags)
        self.index = {t: i for i, t in enumerate(self.tags)}
        self.parse = parse
        self.head = nn.Linear(width, len(self.tags))

    def targets(self, captions: Sequence[str]) -> Tensor:
        hot = torch.zeros(len(captions), len(self.tags))
        for row, caption in enumerate(captions):
            for tag in self.parse(caption):
                if tag in self.index:
                    hot[row, self.index[tag]] = 1.0
        return hot

    def logits(self, tokens: Tensor) -> Tensor:
        """``tokens`` ``[B, N, width]`` (CLS first) → ``[B, len(tags)]``."""
        return self.head(tokens[:, 1:].max(dim=1).values)

    def forward(self, tokens: Tensor, captions: Sequence[str]) -> Tensor:
        target = self.targets(captions).to(tokens.device)
        loss = F.binary_cross_entropy_with_logits(self.logits(tokens).float(), target, reduction="none")
        return loss.sum(dim=1).mean()
