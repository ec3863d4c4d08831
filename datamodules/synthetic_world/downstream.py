"""The downstream benchmarks in their original file formats: MSR-VTT and MSVD-QA.

Both are drawn from their own random streams (never the pool's), so their clips are new draws of
the same world, disjoint from the pool.

MSR-VTT (``msrvtt/``): ``MSRVTT_data.json`` with 20 clean captions per video,
``MSRVTT_train.9k.csv`` (train + validate videos), ``MSRVTT_JSFUSION_test.csv`` (one caption per
test video, the 1k-A protocol) and ``videos/all/videoN.mp4``. Videos ``video0 ...`` are the
training list (the last tenth marked ``validate``), then the test videos.

MSVD-QA (``msvd_qa/``): ``{train,val,test}_qa.json`` lists of
``{"answer", "id", "question", "video_id"}`` (1-based video ids, question ids unique across the
three files), ``youtube_mapping.txt`` (``<clip name> vid<N>``) and ``YouTubeClips/<clip>.avi``.
Questions ask for colour, shape, motion, count and scene; answers are one canonical word.
"""

import numpy as np

from .captions import clean_caption, pick
from .lexicon import SCENES, SYNONYMS
from .spec import ObjectSpec, SegmentSpec

VALIDATE_FRACTION = 0.1
MSVD_SPLIT = (0.6, 0.1, 0.3)  # train, val, test fractions of the MSVD videos
CAPTIONS_PER_VIDEO = 20
_YT_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"


# ----------------------------------------------------------------------------- MSR-VTT

def msrvtt_captions(
    rng: np.random.Generator, segment: SegmentSpec, n: int = CAPTIONS_PER_VIDEO
) -> list[str]:
    """``n`` paraphrases of a clip, distinct where the templates allow."""
    captions: list[str] = []
    for _ in range(n):
        for _attempt in range(5):
            caption = clean_caption(rng, segment)
            if caption not in captions:
                break
        captions.append(caption)
    return captions


def msrvtt_split(index: int, num_train: int) -> str:
    if index >= num_train:
        return "test"
    return "validate" if index >= num_train - int(round(VALIDATE_FRACTION * num_train)) else "train"


def msrvtt_files(clips: list[dict], num_train: int, seed: int) -> dict:
    """The annotation files' contents: ``data`` (json), ``train_rows``, ``test_rows`` (csv)."""
    videos, sentences, train_rows, test_rows = [], [], [], []
    for index, clip in enumerate(clips):
        split = msrvtt_split(index, num_train)
        video_id = clip["video_id"]
        videos.append({
            "category": SCENES.index(clip["segment"].scene),
            "url": f"synthetic://msrvtt/{video_id}",
            "video_id": video_id,
            "start time": clip["source_start"],
            "end time": round(clip["source_start"] + clip["segment"].end, 3),
            "split": split,
            "id": index,
        })
        for caption in clip["captions"]:
            sentences.append({"caption": caption, "video_id": video_id, "sen_id": len(sentences)})
        if split == "test":
            n = len(test_rows)
            test_rows.append([n, f"ret{n}", f"msr{index}", video_id, clip["captions"][0]])
        else:
            train_rows.append([video_id])
    info = {"contributor": "VidDF synthetic world generator",
            "description": "Synthetic stand-in for MSR-VTT in its original format",
            "seed": seed, "version": "1.0"}
    return {"data": {"info": info, "videos": videos, "sentences": sentences},
            "train_rows": train_rows, "test_rows": test_rows}


# ----------------------------------------------------------------------------- MSVD-QA

def youtube_like_name(rng: np.random.Generator, seconds: float) -> str:
    """A clip name like ``-4wsuPCjDBc_5_15``: an 11-character id and start/end seconds."""
    ident = "".join(_YT_ALPHABET[i] for i in rng.integers(len(_YT_ALPHABET), size=11))
    start = int(rng.integers(0, 300))
    return f"{ident}_{start}_{start + max(1, int(round(seconds)))}"


def msvd_split_sizes(num_videos: int) -> tuple[int, int, int]:
    train = int(round(MSVD_SPLIT[0] * num_videos))
    val = int(round(MSVD_SPLIT[1] * num_videos))
    if num_videos >= 3:
        train, val = max(1, train), max(1, val)
    test = max(0, num_videos - train - val)
    return train, val, test


def _ref(rng: np.random.Generator, obj: ObjectSpec) -> str:
    """How a question refers to an object: by a shape word (shapes are unique within a clip)."""
    return obj.shape if rng.random() < 0.5 else pick(rng, SYNONYMS["shape"][obj.shape])


def qa_pairs(rng: np.random.Generator, segment: SegmentSpec) -> list[tuple[str, str]]:
    """Questions (colour, shape, motion, count, scene) with one-word canonical answers."""
    objects = segment.objects
    pairs = [
        (pick(rng, ("how many objects are there?", "how many shapes are in the video?",
                    "how many things can you see?")), ("one", "two")[len(objects) - 1]),
        (pick(rng, ("where is this?", "where does this take place?", "what place is shown?")),
         segment.scene),
    ]
    colors = [o.color for o in objects]
    for obj in objects:
        ref = _ref(rng, obj)
        pairs.append((pick(rng, ("what color is the {r}?", "what is the color of the {r}?"))
                      .format(r=ref), obj.color))
        if colors.count(obj.color) == 1:
            pairs.append((pick(rng, ("what shape is the {c} object?", "what is the {c} thing?",
                                     "what is the shape of the {c} object?"))
                          .format(c=obj.color), obj.shape))
        if obj.motion in ("left", "right", "up", "down"):
            question = pick(rng, ("which way does the {r} move?", "where does the {r} move?",
                                  "in which direction does the {r} go?"))
        else:
            question = pick(rng, ("what does the {r} do?", "what happens to the {r}?"))
        pairs.append((question.format(r=_ref(rng, obj)), obj.motion))
    order = rng.permutation(len(pairs))
    return [pairs[i] for i in order]
