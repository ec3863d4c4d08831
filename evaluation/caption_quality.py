"""Caption quality against the synthetic world's ground truth: per-attribute accuracy.

Ground truth (``ground_truth.jsonl``, one line per clip) gives each clip a scene and one or two
objects with a shape, colour, size and motion. A caption's words are mapped to canonical
values with ``lexicon.attributes_mentioned``; for each attribute A with ``M`` the values the
caption names and ``T`` the values the clip shows (over all its objects; the scene is one
value), the caption is

- **correct** when it names at least one value and every value it names is in the clip
  (``M`` non-empty and ``M ⊆ T``): naming one of two objects' colours is correct, naming a
  colour that is not there is not, so naming every colour never scores;
- **wrong** when it names a value absent from the clip (``M ⊄ T``), whatever else it names;
- **silent** when it names no value of A (``M`` empty). A misheard word ("read" for red) is
  not a synonym of anything, so it leaves the caption silent, not correct.

Per attribute: ``accuracy`` = correct / judged records (silence counts against a caption),
``precision`` = correct / (correct + wrong) (is what it says right?), ``coverage`` = (correct +
wrong) / judged (does it say anything?). ``attr_accuracy["mean"]`` is the unweighted mean of
the shape, colour, motion and scene accuracies; size is reported in ``attributes`` only (clean
captions often omit it). The clean captions themselves sometimes leave the scene out (the
generator does for about 15% of clips), so the ground-truth source scores accuracy 1.0 on
shape, colour and motion, precision 1.0 on everything, and a scene accuracy equal to its scene
coverage: an omitted scene is counted as not said, never as said right.

Records whose clip is absent from the ground truth are not judged; they are counted in
``missing_ground_truth``, never dropped silently.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Container, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from datamodules.annotation_store import MAX_LINE_BYTES, AnnotationFormatError
from datamodules.synthetic_world.lexicon import attributes_mentioned

log = logging.getLogger(__name__)

MEAN_ATTRIBUTES = ("shape", "color", "motion", "scene")
JUDGED_ATTRIBUTES = ("shape", "color", "motion", "scene", "size")
OBJECT_FIELDS = ("shape", "color", "size", "motion")
GROUND_TRUTH_FIELDS = ("clip_id", "scene", "objects", "caption")


class ClipTruth(NamedTuple):
    """The values a clip shows, per attribute (frozensets, interned: clips share them)."""

    shape: frozenset[str]
    color: frozenset[str]
    motion: frozenset[str]
    scene: frozenset[str]
    size: frozenset[str]


def judge(caption: str, truth: ClipTruth) -> dict[str, str]:
    """``{attribute: "correct" | "wrong" | "silent"}`` for every judged attribute."""
    mentioned = attributes_mentioned(caption)
    verdicts = {}
    for attribute in JUDGED_ATTRIBUTES:
        named = mentioned[attribute]
        if not named:
            verdicts[attribute] = "silent"
        elif named <= getattr(truth, attribute):
            verdicts[attribute] = "correct"
        else:
            verdicts[attribute] = "wrong"
    return verdicts


class AttributeAccuracy:
    """Streaming per-attribute accuracy of one source's captions."""

    def __init__(self) -> None:
        self.judged = 0
        self.missing = 0
        self.counts = {a: {"correct": 0, "wrong": 0, "silent": 0} for a in JUDGED_ATTRIBUTES}

    def update(self, caption: str, truth: ClipTruth | None) -> None:
        """Judge one caption; ``truth`` None means the clip is missing from the ground truth."""
        if truth is None:
            self.missing += 1
            return
        self.judged += 1
        for attribute, verdict in judge(caption, truth).items():
            self.counts[attribute][verdict] += 1

    def result(self) -> dict[str, Any]:
        """``attr_accuracy`` (DESIGN §8) and the detail per attribute; None where nothing was judged."""
        attributes = {}
        for attribute, c in self.counts.items():
            said = c["correct"] + c["wrong"]
            attributes[attribute] = {
                "accuracy": c["correct"] / self.judged if self.judged else None,
                "precision": c["correct"] / said if said else None,
                "coverage": said / self.judged if self.judged else None,
                **c,
            }
        accuracy: dict[str, float | None] = {a: attributes[a]["accuracy"] for a in MEAN_ATTRIBUTES}
        accuracy["mean"] = sum(accuracy.values()) / len(MEAN_ATTRIBUTES) if self.judged else None
        return {
            "attr_accuracy": accuracy,
            "attributes": attributes,
            "judged": self.judged,
            "missing_ground_truth": self.missing,
        }


def _truth_from(obj: Any, path: Path, lineno: int, intern: dict) -> tuple[str, ClipTruth]:
    if not isinstance(obj, dict):
        raise AnnotationFormatError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in GROUND_TRUTH_FIELDS if k not in obj]
    if missing:
        raise AnnotationFormatError(f"{path}:{lineno}: ground-truth line lacks field(s) {', '.join(missing)}")
    objects = obj["objects"]
    if not isinstance(objects, list) or not objects:
        raise AnnotationFormatError(f"{path}:{lineno}: 'objects' must be a non-empty list")
    for k, o in enumerate(objects):
        if not isinstance(o, dict) or any(not isinstance(o.get(f), str) for f in OBJECT_FIELDS):
            raise AnnotationFormatError(
                f"{path}:{lineno}: object {k} needs string fields {', '.join(OBJECT_FIELDS)}"
            )
    for key in ("clip_id", "scene", "caption"):
        if not isinstance(obj[key], str):
            raise AnnotationFormatError(f"{path}:{lineno}: field {key!r} must be a string")

    def shared(values: Iterable[str]) -> frozenset[str]:
        key = frozenset(values)
        return intern.setdefault(key, key)

    truth = ClipTruth(
        shape=shared(o["shape"] for o in objects),
        color=shared(o["color"] for o in objects),
        motion=shared(o["motion"] for o in objects),
        scene=shared((obj["scene"],)),
        size=shared(o["size"] for o in objects),
    )
    return obj["clip_id"], truth


class GroundTruthFile:
    """Streams ``ground_truth.jsonl``: a bad line raises an error naming file and line; a torn
    final line (no newline) or a line over the size cap is counted in ``skipped``."""

    def __init__(self, path: str | os.PathLike, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: ground-truth file not found")
        self.max_line_bytes = max_line_bytes
        self.skipped = 0

    def lines(self) -> Iterator[tuple[int, dict]]:
        """``(line number, parsed object)`` for every well-formed line."""
        self.skipped = 0
        with open(self.path, "rb") as f:
            lineno = 0
            while True:
                raw = f.readline(self.max_line_bytes + 1)
                if not raw:
                    return
                lineno += 1
                if len(raw) > self.max_line_bytes and not raw.endswith(b"\n"):
                    while raw and not raw.endswith(b"\n"):
                        raw = f.readline(1 << 16)
                    self.skipped += 1
                    log.warning("%s:%d: line longer than %d bytes skipped", self.path, lineno, self.max_line_bytes)
                    continue
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    if not raw.endswith(b"\n"):
                        self.skipped += 1
                        log.warning("%s:%d: truncated final line skipped", self.path, lineno)
                        continue
                    reason = "not valid UTF-8" if isinstance(e, UnicodeDecodeError) else f"not valid JSON ({e.msg})"
                    raise AnnotationFormatError(f"{self.path}:{lineno}: {reason}") from None
                yield lineno, obj

    def load(self) -> dict[str, ClipTruth]:
        """Every clip's attribute values, keyed by clip id (only the attribute tuple is kept)."""
        intern: dict[frozenset[str], frozenset[str]] = {}
        truth: dict[str, ClipTruth] = {}
        for lineno, obj in self.lines():
            clip_id, clip_truth = _truth_from(obj, self.path, lineno, intern)
            truth[clip_id] = clip_truth
        return truth

    def records(self, clip_ids: Container[str] | None = None, split: str | None = "pool") -> Iterator[dict]:
        """The clean captions as annotation-like records (caption, scene as ``category``).

        ``clip_ids`` keeps only those clips; without it, ``split`` (if not None) selects lines.
        """
        for lineno, obj in self.lines():
            clip_id, _ = _truth_from(obj, self.path, lineno, {})
            if clip_ids is not None:
                if clip_id not in clip_ids:
                    continue
            elif split is not None and obj.get("split") != split:
                continue
            yield {
                "clip_id": clip_id,
                "video_path": "",
                "start": obj.get("start", 0.0),
                "end": obj.get("end", 0.0),
                "asr": "",
                "caption": obj["caption"],
                "round": -1,
                "source": "ground_truth",
                "category": obj["scene"],
            }
