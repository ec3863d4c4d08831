"""Speech transcripts of the pool: the noise under study.

Every pool segment gets one ASR sentence (lower case, no punctuation, like HowTo100M). It is
either **clean** or one of four kinds of noise:

``clean``
    Relevant but partial speech about the segment: always names the first object's shape (by a
    synonym), usually its motion (70%), sometimes its size (30%), rarely its colour (12%) or the
    scene (15%); a second object is mentioned 30% of the time. E.g. "now we slide this little
    ball to the left".
``misrecognised``
    Relevant speech with recognition errors: each attribute word that has a sound-alike in
    :data:`~.lexicon.MISHEARINGS` is replaced with probability 0.5, at least one of them
    (red -> read, blue -> blew, right -> write, kitchen -> chicken ...).
``misaligned``
    Relevant speech about a neighbouring segment of the same video (the previous or the next),
    as when speech and picture drift apart. Neighbouring segments never share the first object's
    shape or motion, so this speech is wrong.
``unrelated``
    Talk with no attribute words at all (greetings, channel plugs, anecdotes).
``swapped``
    Only with the ``structured`` distribution: relevant speech that systematically confuses one
    attribute. A biased speaker either permutes motions (left <-> right, up <-> down,
    grows -> shrinks -> stays -> grows) and always says the motion, or swaps colours in pairs
    (red <-> green, blue <-> yellow, purple <-> orange, white <-> black) and always says the colour.

How many segments are noisy (``noise_rate`` = R) depends on the distribution:

``uniform``
    Every segment is noisy independently with probability R; the kind of noise is drawn from
    ``noise_mix`` (misrecognised, misaligned, unrelated), default (0.3, 0.35, 0.35).
``bursty``
    Each video draws its own rate r ~ Beta(kR, k(1 - R)) with k = 0.5 (mean R, heavy mass near
    0 and 1: most videos are nearly clean or nearly all noise), then segments are noisy
    independently with probability r; kinds as for ``uniform``.
``structured``
    Each video's speaker is biased with probability R; every segment of a biased speaker's video
    is ``swapped`` by that speaker's rule (motion or colour, equally likely); other videos are
    clean. The expected noisy fraction is R.

Every segment draws from its own random stream, and its clean speech is drawn first, so changing
the noise settings changes only the noisy segments' text; the pictures and the ground truth never
depend on them.
"""

from dataclasses import replace

import numpy as np

from .captions import SCENE_PHRASES, pick
from .lexicon import MISHEARINGS, SYNONYMS
from .spec import ObjectSpec, SegmentSpec

NOISE_DISTS = ("uniform", "bursty", "structured")
NOISE_KINDS = ("misrecognised", "misaligned", "unrelated")
DEFAULT_NOISE_MIX = (0.3, 0.35, 0.35)
BURSTY_CONCENTRATION = 0.5

MOTION_DERANGEMENT = {"left": "right", "right": "left", "up": "down", "down": "up",
                      "grows": "shrinks", "shrinks": "stays", "stays": "grows"}
COLOR_SWAP = {"red": "green", "green": "red", "blue": "yellow", "yellow": "blue",
              "purple": "orange", "orange": "purple", "white": "black", "black": "white"}

OPENERS = ("", "okay", "so", "now", "alright so", "and", "okay now", "um", "uh so", "and then")
# Imperative forms: "slide this little ball to the left".
IMPERATIVES = {
    "left": ("slide {x} to the left", "push {x} over to the left", "move {x} left"),
    "right": ("slide {x} to the right", "push {x} over to the right", "move {x} right"),
    "up": ("lift {x} up", "push {x} up", "move {x} upward"),
    "down": ("drop {x} down", "bring {x} down", "move {x} down"),
    "grows": ("make {x} bigger", "let {x} grow"),
    "shrinks": ("make {x} smaller", "let {x} shrink"),
    "stays": ("keep {x} still", "leave {x} in place", "hold {x} still"),
}
# Third-person forms: "this ball goes to the left".
THIRD_PERSON = {
    "left": ("goes to the left", "moves over to the left", "slides left", "is heading left"),
    "right": ("goes to the right", "moves over to the right", "slides right", "is heading right"),
    "up": ("goes up", "moves up", "rises", "climbs up"),
    "down": ("goes down", "falls", "drops down", "comes down"),
    "grows": ("gets bigger", "grows", "is getting bigger", "expands"),
    "shrinks": ("gets smaller", "shrinks", "is getting smaller"),
    "stays": ("stays still", "just sits still", "does not move", "stays put"),
}
DETERMINERS = ("this", "the", "our", "that")
WITH_MOTION = ("{o} we {imp}", "{o} {x} {vp}", "{o} you can see {x} {vp}", "{o} i {imp}",
               "{o} watch how {x} {vp}")
WITHOUT_MOTION = ("{o} here we have {x}", "{o} this is {x}", "{o} look at {x}",
                  "{o} i got {x} here", "{o} we are going to use {x}")
UNRELATED = (
    "hi everyone welcome back to the channel",
    "do not forget to subscribe and hit the bell",
    "thanks for watching see you next time",
    "let me know in the comments what you think",
    "this video is sponsored by our friends",
    "before we start grab a cup of coffee",
    "i have been doing this for years",
    "my grandmother taught me this trick",
    "so yeah that is pretty much it",
    "check out the link in the description",
    "sorry my camera was acting weird today",
    "if you enjoyed this please share it with a friend",
    "we will talk more about that in the next episode",
    "hello and welcome to another tutorial",
    "my dog keeps barking in the background sorry",
    "i bought this at the store last week",
)


def _word(rng: np.random.Generator, attribute: str, value: str) -> str:
    return value if rng.random() < 0.5 else pick(rng, SYNONYMS[attribute][value])


def _mention(rng: np.random.Generator, obj: ObjectSpec, color_p: float, size_p: float = 0.3) -> str:
    words = [pick(rng, DETERMINERS)]
    if rng.random() < size_p:
        words.append(_word(rng, "size", obj.size))
    if rng.random() < color_p:
        words.append(_word(rng, "color", obj.color))
    words.append(_word(rng, "shape", obj.shape))
    return " ".join(words)


def relevant_speech(
    rng: np.random.Generator,
    segment: SegmentSpec,
    motion_p: float = 0.7,
    color_p: float = 0.12,
    scene_p: float = 0.15,
    second_p: float = 0.3,
) -> str:
    """What a narrator says about a segment: always the first object's shape, partial otherwise."""
    first = segment.objects[0]
    x = _mention(rng, first, color_p)
    if rng.random() < motion_p:
        text = pick(rng, WITH_MOTION).format(
            o=pick(rng, OPENERS), x=x,
            imp=pick(rng, IMPERATIVES[first.motion]).format(x=x),
            vp=pick(rng, THIRD_PERSON[first.motion]))
    else:
        text = pick(rng, WITHOUT_MOTION).format(o=pick(rng, OPENERS), x=x)
    if len(segment.objects) > 1 and rng.random() < second_p:
        second = segment.objects[1]
        text += f" and {_mention(rng, second, color_p)} {pick(rng, THIRD_PERSON[second.motion])}"
    if rng.random() < scene_p:
        text += " here " + pick(rng, SCENE_PHRASES[segment.scene])
    return " ".join(text.split())


def misrecognise(rng: np.random.Generator, text: str, p: float = 0.5) -> str | None:
    """Replace attribute words by sound-alikes (at least one); None if no word can be misheard."""
    words = text.split()
    eligible = [i for i, w in enumerate(words) if w in MISHEARINGS]
    if not eligible:
        return None
    chosen = [i for i in eligible if rng.random() < p]
    if not chosen:
        chosen = [eligible[int(rng.integers(len(eligible)))]]
    for i in chosen:
        words[i] = pick(rng, MISHEARINGS[words[i]])
    return " ".join(words)


def unrelated_talk(rng: np.random.Generator) -> str:
    first = pick(rng, UNRELATED)
    if rng.random() < 0.3:
        second = pick(rng, UNRELATED)
        if second != first:
            return f"{first} {second}"
    return first


def swap(segment: SegmentSpec, rule: str) -> SegmentSpec:
    """The segment as a biased speaker perceives it (``rule`` is ``motion`` or ``color``)."""
    if rule == "motion":
        objects = tuple(replace(o, motion=MOTION_DERANGEMENT[o.motion]) for o in segment.objects)
    else:
        objects = tuple(replace(o, color=COLOR_SWAP[o.color]) for o in segment.objects)
    return replace(segment, objects=objects)


def noise_plan(
    rng: np.random.Generator,
    num_segments: int,
    noise_dist: str,
    noise_rate: float,
    noise_mix: tuple[float, float, float] = DEFAULT_NOISE_MIX,
) -> tuple[list[str], str | None]:
    """The noise kind of each segment of one video, and the speaker's swap rule (structured)."""
    if noise_dist == "structured":
        if rng.random() < noise_rate:
            rule = "motion" if rng.random() < 0.5 else "color"
            return ["swapped"] * num_segments, rule
        return ["clean"] * num_segments, None
    if noise_dist == "bursty":
        if 0.0 < noise_rate < 1.0:
            k = BURSTY_CONCENTRATION
            rate = float(rng.beta(k * noise_rate, k * (1.0 - noise_rate)))
        else:
            rate = noise_rate
    elif noise_dist == "uniform":
        rate = noise_rate
    else:
        raise ValueError(f"noise_dist must be one of {NOISE_DISTS}, got {noise_dist!r}")
    mix = np.asarray(noise_mix, dtype=float)
    mix = mix / mix.sum()
    kinds = []
    for _ in range(num_segments):
        noisy = rng.random() < rate
        kinds.append(NOISE_KINDS[int(rng.choice(len(mix), p=mix))] if noisy else "clean")
    return kinds, None


def video_asr(
    plan_rng: np.random.Generator,
    segment_rngs: list[np.random.Generator],
    segments: list[SegmentSpec],
    noise_dist: str,
    noise_rate: float,
    noise_mix: tuple[float, float, float] = DEFAULT_NOISE_MIX,
) -> tuple[list[str], list[str]]:
    """ASR text and noise kind of every segment of one video."""
    kinds, rule = noise_plan(plan_rng, len(segments), noise_dist, noise_rate, noise_mix)
    texts = []
    for k, (segment, rng, kind) in enumerate(zip(segments, segment_rngs, kinds)):
        # always drawn first, so a clean segment's text never depends on the noise settings
        text = relevant_speech(rng, segment)
        if kind == "misrecognised":
            for _ in range(20):
                misheard = misrecognise(rng, text)
                if misheard is not None:
                    text = misheard
                    break
                text = relevant_speech(rng, segment)
            else:
                kind = kinds[k] = "unrelated"
                text = unrelated_talk(rng)
        elif kind == "misaligned":
            neighbours = [j for j in (k - 1, k + 1) if 0 <= j < len(segments)]
            if not neighbours:  # a one-segment video has no neighbour
                kind = kinds[k] = "unrelated"
                text = unrelated_talk(rng)
            else:
                neighbour = neighbours[int(rng.integers(len(neighbours)))]
                text = relevant_speech(rng, segments[neighbour])
        elif kind == "unrelated":
            text = unrelated_talk(rng)
        elif kind == "swapped":
            if rule == "motion":
                text = relevant_speech(rng, swap(segment, rule), motion_p=1.0)
            else:
                text = relevant_speech(rng, swap(segment, rule), color_p=1.0)
        texts.append(text)
    return texts, kinds
