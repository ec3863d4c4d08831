"""What a segment shows: sampling scenes, objects and their trajectories.

A :class:`SegmentSpec` fully determines the pixels of a segment (together with the frame size);
the renderer only draws it. Geometry is stored in fractions of the frame side, so the same spec
renders at any size.

Randomness comes from :func:`rng_for`, one independent stream per (seed, split, index, purpose),
so parallel rendering cannot change anything and the visual world of a seed does not depend on
the ASR noise settings (``purpose`` separates content, captions and ASR).
"""

from dataclasses import asdict, dataclass

import numpy as np

from .lexicon import COLORS, MOTIONS, SCENES, SHAPES, SIZES

# Random streams, one per split or job (the second element of the seed's spawn key).
STREAM_POOL, STREAM_MSRVTT, STREAM_MSVD, STREAM_FOUNDATION, STREAM_WORLD = range(5)
# Purposes inside one item's stream.
PURPOSE_CONTENT, PURPOSE_CAPTION, PURPOSE_NOISE_PLAN, PURPOSE_ASR = range(4)

# Base object diameter as a fraction of the frame side (64 px frames: 16 and 27 px).
SIZE_DIAMETER = {"small": 0.25, "big": 0.42}
# grows: scale 0.6 -> 1.4 of the base size over the segment; shrinks the reverse.
SCALE_RANGE = (0.6, 1.4)
HORIZONTAL, VERTICAL = ("left", "right"), ("up", "down")
# Object colours that would blend into a scene's background; never drawn on it.
CLASHES = {
    "snow": {"white"},
    "night": {"black"},
    "forest": {"green"},
    "beach": {"blue"},
    "kitchen": {"white"},
    "desert": {"orange"},
    "underwater": {"blue"},
}


@dataclass(frozen=True)
class ObjectSpec:
    shape: str
    color: str
    size: str
    motion: str
    x0: float  # centre at the first frame, fraction of the width
    y0: float
    x1: float  # centre at the last frame
    y1: float
    scale0: float  # multiplier of the base diameter at the first / last frame
    scale1: float

    def attributes(self) -> dict:
        return {"shape": self.shape, "color": self.color, "size": self.size, "motion": self.motion}


@dataclass(frozen=True)
class SegmentSpec:
    scene: str
    objects: tuple[ObjectSpec, ...]
    num_frames: int
    start: float  # seconds from the start of the source video
    end: float
    background_seed: int  # draws the background's texture variation

    def to_dict(self) -> dict:
        return asdict(self)


def rng_for(seed: int, stream: int, index: int, purpose: int, sub: int = 0) -> np.random.Generator:
    """An independent generator for one (seed, stream, item index, purpose, sub-item)."""
    key = (stream, index, purpose, sub)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _choice(rng: np.random.Generator, values, exclude=()) -> str:
    allowed = [v for v in values if v not in exclude]
    return allowed[int(rng.integers(len(allowed)))]


def _place(rng: np.random.Generator, motion: str, size: str, lane: tuple[str, float] | None):
    """Start/end centres and scales of one object; ``lane`` pins one coordinate (two objects)."""
    d = SIZE_DIAMETER[size]
    margin = d / 2 + 0.04
    scale0, scale1 = 1.0, 1.0
    if motion == "grows":
        scale0, scale1 = SCALE_RANGE
    elif motion == "shrinks":
        scale1, scale0 = SCALE_RANGE
    # centres keep the whole object (at its largest) inside the frame
    free = min(0.5, d * max(scale0, scale1) / 2 + 0.03)
    x = float(rng.uniform(free, 1 - free))
    y = float(rng.uniform(free, 1 - free))
    if lane is not None:
        axis, value = lane
        if axis == "row":
            y = value
        else:
            x = value
    x0 = x1 = x
    y0 = y1 = y
    travel = (margin, 1 - margin)
    if motion == "left":
        x0, x1 = travel[1], travel[0]
    elif motion == "right":
        x0, x1 = travel
    elif motion == "up":
        y0, y1 = travel[1], travel[0]
    elif motion == "down":
        y0, y1 = travel
    return dict(x0=x0, y0=y0, x1=x1, y1=y1, scale0=scale0, scale1=scale1)


def sample_objects(
    rng: np.random.Generator,
    scene: str,
    num_objects: int,
    avoid_shape: str | None = None,
    avoid_motion: str | None = None,
    static: bool = False,
) -> tuple[ObjectSpec, ...]:
    """One or two objects on ``scene``; two objects get distinct shapes and separate lanes.

    ``avoid_*`` constrain the first object (so that neighbouring segments differ);
    ``static`` makes every object stay (still images).
    """
    shapes, motions = [], []
    for i in range(num_objects):
        taken = set(shapes) | ({avoid_shape} if i == 0 else set())
        shapes.append(_choice(rng, SHAPES, exclude=taken))
    if static:
        motions = ["stays"] * num_objects
    else:
        motions.append(_choice(rng, MOTIONS, exclude={avoid_motion} if avoid_motion else ()))
        if num_objects == 2:
            if motions[0] in HORIZONTAL:
                motions.append(_choice(rng, MOTIONS, exclude=VERTICAL))
            elif motions[0] in VERTICAL:
                motions.append(_choice(rng, MOTIONS, exclude=HORIZONTAL))
            else:
                motions.append(_choice(rng, MOTIONS))
    lanes: list = [None] * num_objects
    if num_objects == 2:
        vertical = any(m in VERTICAL for m in motions) or (
            not any(m in HORIZONTAL for m in motions) and rng.random() < 0.5
        )
        axis = "column" if vertical else "row"
        order = [0.27, 0.73] if rng.random() < 0.5 else [0.73, 0.27]
        lanes = [(axis, order[0]), (axis, order[1])]
    objects = []
    for shape, motion, lane in zip(shapes, motions, lanes):
        color = _choice(rng, COLORS, exclude=CLASHES.get(scene, set()))
        size = _choice(rng, SIZES)
        objects.append(ObjectSpec(shape=shape, color=color, size=size, motion=motion,
                                  **_place(rng, motion, size, lane)))
    return tuple(objects)


def _num_frames(rng: np.random.Generator, fps: int, seconds: tuple[float, float]) -> int:
    lo, hi = max(1, round(seconds[0] * fps)), max(1, round(seconds[1] * fps))
    return int(rng.integers(lo, hi + 1))


def sample_video(
    rng: np.random.Generator,
    fps: int,
    num_segments: tuple[int, int] = (3, 5),
    seconds: tuple[float, float] = (1.5, 2.5),
    scene_change: float = 0.4,
    two_objects: float = 0.35,
) -> list[SegmentSpec]:
    """Consecutive segments of one source video (HowTo100M-like).

    The first object of a segment never repeats the previous segment's shape or motion, so that
    speech moved to a neighbouring segment is really wrong. The scene changes with probability
    ``scene_change`` between segments.
    """
    count = int(rng.integers(num_segments[0], num_segments[1] + 1))
    segments: list[SegmentSpec] = []
    frame = 0
    scene = _choice(rng, SCENES)
    for k in range(count):
        if k > 0 and rng.random() < scene_change:
            scene = _choice(rng, SCENES, exclude={scene})
        prev = segments[-1].objects[0] if segments else None
        objects = sample_objects(
            rng, scene, 2 if rng.random() < two_objects else 1,
            avoid_shape=prev.shape if prev else None,
            avoid_motion=prev.motion if prev else None,
        )
        n = _num_frames(rng, fps, seconds)
        segments.append(SegmentSpec(
            scene=scene, objects=objects, num_frames=n,
            start=round(frame / fps, 3), end=round((frame + n) / fps, 3),
            background_seed=int(rng.integers(2**31)),
        ))
        frame += n
    return segments


def sample_clip(
    rng: np.random.Generator,
    fps: int,
    seconds: tuple[float, float] = (1.5, 2.5),
    two_objects: float = 0.35,
) -> SegmentSpec:
    """A single-segment clip (MSR-VTT, MSVD) starting at time 0."""
    scene = _choice(rng, SCENES)
    objects = sample_objects(rng, scene, 2 if rng.random() < two_objects else 1)
    n = _num_frames(rng, fps, seconds)
    return SegmentSpec(scene=scene, objects=objects, num_frames=n, start=0.0,
                       end=round(n / fps, 3), background_seed=int(rng.integers(2**31)))


def sample_still(rng: np.random.Generator, two_objects: float = 0.35) -> SegmentSpec:
    """One still image (foundation corpus): static objects on a scene."""
    scene = _choice(rng, SCENES)
    objects = sample_objects(rng, scene, 2 if rng.random() < two_objects else 1, static=True)
    return SegmentSpec(scene=scene, objects=objects, num_frames=1, start=0.0, end=0.0,
                       background_seed=int(rng.integers(2**31)))
