"""The words of the synthetic world: attribute values, their synonyms, and ASR mishearings.

Pure Python (no torch, no numpy) so that evaluation can import it anywhere.

Every attribute has a small set of canonical values (``SHAPES``, ``COLORS``, ``SIZES``,
``MOTIONS``, ``SCENES``). ``SYNONYMS[attribute][value]`` lists every word or phrase that the
generator ever uses to name that value; :func:`attributes_mentioned` recognises exactly these.
``MISHEARINGS`` maps attribute words to the recognition errors the ASR noise produces
(red -> read, right -> write, ...); none of them is a synonym of anything, so a misheard
word is never counted as the attribute it replaced.

Tokenisation (shared with the dataset report): lower-case, split on runs of characters that
are not letters or digits. A phrase matches when its tokens occur contiguously.
"""

import re

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "white", "black")
SIZES = ("small", "big")
MOTIONS = ("left", "right", "up", "down", "grows", "shrinks", "stays")
SCENES = ("beach", "forest", "kitchen", "snow", "night", "desert", "city", "underwater")

ATTRIBUTES = ("shape", "color", "motion", "scene", "size")
VALUES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "color": COLORS,
    "motion": MOTIONS,
    "scene": SCENES,
    "size": SIZES,
}

# Every word or phrase naming a value. Captions, ASR and QA draw their wording from here
# (directly or through phrases built only of these words plus neutral filler).
SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "shape": {
        "circle": ("circle", "ball", "disc", "disk", "dot", "orb"),
        "square": ("square", "box", "block", "cube", "tile"),
        "triangle": ("triangle", "pyramid", "wedge"),
        "star": ("star",),
        "cross": ("cross", "plus sign", "plus symbol"),
        "ring": ("ring", "hoop", "donut", "doughnut", "loop"),
    },
    "color": {
        "red": ("red", "crimson", "scarlet"),
        "orange": ("orange", "tangerine"),
        "yellow": ("yellow", "golden", "lemon"),
        "green": ("green", "emerald"),
        "blue": ("blue", "azure", "cobalt"),
        "purple": ("purple", "violet"),
        "white": ("white", "ivory"),
        "black": ("black", "ebony"),
    },
    "size": {
        "small": ("small", "little", "tiny"),
        "big": ("big", "large", "huge"),
    },
    "motion": {
        "left": ("left", "leftward", "leftwards"),
        "right": ("right", "rightward", "rightwards"),
        "up": ("up", "upward", "upwards", "rises", "rise", "rising", "climbs", "ascends"),
        "down": ("down", "downward", "downwards", "falls", "fall", "falling", "sinks",
                 "descends", "drops"),
        "grows": ("grows", "grow", "growing", "bigger", "larger", "expands", "enlarges",
                  "swells"),
        "shrinks": ("shrinks", "shrink", "shrinking", "smaller", "contracts", "dwindles"),
        "stays": ("stays", "stay", "still", "motionless", "stationary", "not move", "in place"),
    },
    "scene": {
        "beach": ("beach", "seaside", "shore", "seashore", "coast"),
        "forest": ("forest", "woods", "woodland"),
        "kitchen": ("kitchen", "countertop"),
        "snow": ("snow", "snowy", "snowfield"),
        "night": ("night", "nighttime", "starry sky", "night sky"),
        "desert": ("desert", "dunes"),
        "city": ("city", "street", "urban"),
        "underwater": ("underwater", "under the sea", "seabed", "ocean floor"),
    },
}

# Recognition errors the ASR noise may produce, keyed by the word they replace. Sound-alikes
# only; none of them is (or contains) a synonym above.
MISHEARINGS: dict[str, tuple[str, ...]] = {
    # colours
    "red": ("read", "rad"),
    "blue": ("blew",),
    "green": ("grin",),
    "yellow": ("jello",),
    "white": ("wight", "wide"),
    "black": ("plaque",),
    "purple": ("people",),
    "orange": ("arrange",),
    # motions
    "right": ("write", "rite"),
    "left": ("laughed", "loft"),
    "up": ("app",),
    "down": ("dawn",),
    "bigger": ("bigot",),
    "smaller": ("smother",),
    "still": ("steel",),
    "rises": ("ryes",),
    "falls": ("foals",),
    # shapes
    "ball": ("bawl",),
    "circle": ("circus",),
    "disc": ("desk",),
    "dot": ("dart",),
    "ring": ("wring",),
    "hoop": ("whoop",),
    "square": ("scare",),
    "box": ("bocks",),
    "block": ("blog",),
    "cube": ("cue",),
    "triangle": ("try angle",),
    "star": ("stare",),
    "cross": ("crass",),
    "donut": ("doe nut",),
    # sizes
    "little": ("lid all",),
    "big": ("bag",),
    "small": ("smell",),
    # scenes
    "beach": ("beech",),
    "night": ("knight",),
    "kitchen": ("chicken",),
    "desert": ("dessert",),
    "snow": ("slow",),
    "forest": ("for rest",),
    "city": ("pity",),
}

_TOKEN_SPLIT = re.compile(r"[^0-9a-z]+")


def tokenize(text: str) -> list[str]:
    """Lower-case and split on runs of characters that are not letters or digits."""
    return [t for t in _TOKEN_SPLIT.split(text.lower()) if t]


def _build_index() -> dict[str, list[tuple[tuple[str, ...], str, str]]]:
    index: dict[str, list[tuple[tuple[str, ...], str, str]]] = {}
    for attribute, values in SYNONYMS.items():
        for value, phrases in values.items():
            for phrase in phrases:
                tokens = tuple(tokenize(phrase))
                index.setdefault(tokens[0], []).append((tokens, attribute, value))
    return index


_INDEX = _build_index()


def attributes_mentioned(text: str) -> dict[str, set[str]]:
    """The canonical values whose words or phrases occur in ``text``, per attribute.

    Returns a dict with keys ``shape``, ``color``, ``motion``, ``scene``, ``size``, each a
    (possibly empty) set of canonical values. ``"read"`` is not red and ``"write"`` is not
    right: only the synonyms in :data:`SYNONYMS` count.
    """
    found: dict[str, set[str]] = {attribute: set() for attribute in ATTRIBUTES}
    tokens = tokenize(text)
    for i, token in enumerate(tokens):
        for phrase, attribute, value in _INDEX.get(token, ()):
            if tuple(tokens[i:i + len(phrase)]) == phrase:
                found[attribute].add(value)
    return found
