"""Clean captions: paraphrase templates and synonym banks over the ground truth.

A clean caption always names the colour, shape and motion of every object; size and scene are
usually named and sometimes left out. Static captions (foundation images) name only shape,
colour, size and scene, never a position or motion. Every word that names an attribute comes
from :data:`~.lexicon.SYNONYMS`, so :func:`~.lexicon.attributes_mentioned` recognises it.
"""

import numpy as np

from .lexicon import SYNONYMS
from .spec import ObjectSpec, SegmentSpec

# Verb phrases, third person singular, for each motion.
MOTION_PHRASES = {
    "left": ("moves left", "slides to the left", "drifts leftward", "travels to the left",
             "heads left", "glides leftwards", "goes left", "moves toward the left"),
    "right": ("moves right", "slides to the right", "drifts rightward", "travels to the right",
              "heads right", "glides rightwards", "goes right", "moves toward the right"),
    "up": ("moves up", "rises", "floats upward", "climbs upwards", "goes up", "ascends",
           "moves upward", "drifts up"),
    "down": ("moves down", "falls", "sinks downward", "drops down", "descends", "goes down",
             "moves downward", "drifts down"),
    "grows": ("grows", "gets bigger", "expands", "grows larger", "swells", "becomes larger",
              "enlarges", "grows in size"),
    "shrinks": ("shrinks", "gets smaller", "contracts", "dwindles", "becomes smaller",
                "shrinks in size", "keeps getting smaller"),
    "stays": ("stays still", "does not move", "stays put", "remains motionless", "sits still",
              "stays in place", "holds still", "remains stationary"),
}

# Where-phrases for each scene (no motion or position words).
SCENE_PHRASES = {
    "beach": ("on the beach", "at the seaside", "on the shore", "along the coast",
              "on a sunny beach"),
    "forest": ("in the forest", "in the woods", "in a dense forest", "in a woodland"),
    "kitchen": ("in the kitchen", "on a kitchen countertop", "in a tiled kitchen",
                "on the countertop"),
    "snow": ("in the snow", "on a snowy field", "on a snowfield", "in a snowy landscape"),
    "night": ("at night", "under a starry sky", "against the night sky", "in the nighttime"),
    "desert": ("in the desert", "among the dunes", "in a sandy desert", "on desert dunes"),
    "city": ("in the city", "on a city street", "in an urban scene", "on the street"),
    "underwater": ("underwater", "under the sea", "on the seabed", "near the ocean floor"),
}

SINGLE_TEMPLATES = (
    "{NP} {vp} {where}.",
    "{Where}, {np} {vp}.",
    "There is {np} that {vp} {where}.",
    "{NP} can be seen {where} as it {vp}.",
    "We see {np} {where}; it {vp}.",
    "{NP} {where} {vp}.",
    "Video of {np} that {vp} {where}.",
    "Here {np} {vp} {where}.",
    "The clip shows {np} which {vp} {where}.",
    "In this clip, {np} {vp} {where}.",
)
SINGLE_TEMPLATES_NO_SCENE = (
    "{NP} {vp}.",
    "There is {np} that {vp}.",
    "The clip shows {np} which {vp}.",
    "We see {np}; it {vp}.",
)
PAIR_TEMPLATES = (
    "{NP} {vp} while {np2} {vp2} {where}.",
    "{Where}, {np} {vp} and {np2} {vp2}.",
    "Two objects {where}: {np} {vp}, and {np2} {vp2}.",
    "{NP} {vp} {where}, next to {np2} that {vp2}.",
    "There are two shapes {where}; {np} {vp} and {np2} {vp2}.",
    "In this clip, {np} {vp} {where} as {np2} {vp2}.",
)
PAIR_TEMPLATES_NO_SCENE = (
    "{NP} {vp} while {np2} {vp2}.",
    "Two objects: {np} {vp}, and {np2} {vp2}.",
)
STATIC_TEMPLATES = (
    "A photo of {np} {where}.",
    "{NP} {where}.",
    "An image showing {np} {where}.",
    "There is {np} {where}.",
    "{Where}, {np}.",
    "A picture of {np} {where}.",
)
STATIC_PAIR_TEMPLATES = (
    "A photo of {np} and {np2} {where}.",
    "{NP} and {np2} {where}.",
    "An image showing {np} and {np2} {where}.",
    "{Where}, {np} and {np2}.",
)


def pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def word(rng: np.random.Generator, attribute: str, value: str, canonical_p: float = 0.4) -> str:
    """A word for ``value``: the canonical one with probability ``canonical_p``, else a synonym."""
    if rng.random() < canonical_p:
        return value
    return pick(rng, SYNONYMS[attribute][value])


def noun_phrase(rng: np.random.Generator, obj: ObjectSpec, size_p: float = 0.75) -> str:
    """``a small red ball`` style phrase; the size is dropped with probability 1 - size_p."""
    color = word(rng, "color", obj.color)
    shape = word(rng, "shape", obj.shape, canonical_p=0.2)
    size = word(rng, "size", obj.size, canonical_p=0.3) if rng.random() < size_p else None
    if size and rng.random() < 0.1:
        return with_article(f"{size} {shape} in {color}")
    return with_article(" ".join(w for w in (size, color, shape) if w))


def clean_caption(rng: np.random.Generator, segment: SegmentSpec, scene_p: float = 0.85) -> str:
    """One clean caption of a segment, drawn from the paraphrase templates."""
    objects = segment.objects
    with_scene = rng.random() < scene_p
    fields = {"np": noun_phrase(rng, objects[0]),
              "vp": pick(rng, MOTION_PHRASES[objects[0].motion])}
    if len(objects) > 1:
        fields["np2"] = noun_phrase(rng, objects[1])
        fields["vp2"] = pick(rng, MOTION_PHRASES[objects[1].motion])
        template = pick(rng, PAIR_TEMPLATES if with_scene else PAIR_TEMPLATES_NO_SCENE)
    else:
        template = pick(rng, SINGLE_TEMPLATES if with_scene else SINGLE_TEMPLATES_NO_SCENE)
    return _fill(template, fields, pick(rng, SCENE_PHRASES[segment.scene]))


def static_caption(rng: np.random.Generator, segment: SegmentSpec, scene_p: float = 0.9) -> str:
    """A caption of a still image: shape, colour, usually size and scene; no motion."""
    objects = segment.objects
    fields = {"np": noun_phrase(rng, objects[0])}
    if len(objects) > 1:
        fields["np2"] = noun_phrase(rng, objects[1])
        template = pick(rng, STATIC_PAIR_TEMPLATES)
    else:
        template = pick(rng, STATIC_TEMPLATES)
    if rng.random() >= scene_p:  # drop the scene
        template = "{NP} and {np2}." if len(objects) > 1 else "{NP}."
    return _fill(template, fields, pick(rng, SCENE_PHRASES[segment.scene]))


def _fill(template: str, fields: dict, where: str) -> str:
    values = dict(fields, where=where, Where=capitalise(where), NP=capitalise(fields["np"]))
    return template.format(**values)
