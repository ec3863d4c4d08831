"""The annotation record every part of VidDF exchanges, and the clip id convention.

A record is one clip of the pool with its current caption:
``clip_id, video_path, start, end, asr, caption, round, source``.
``video_path`` is relative to the pool folder unless absolute; ``round`` is -1 for
records that do not come from a refinement round (raw ASR, human examples).

A ``video_path`` through a tar shard, ``00003.tar/000030002_00001.mp4``, names a member of that
shard: one sample of a video2dataset pool, a clip whose own time 0 is the record's ``start``
(``tar_members``). Rounds keep such paths as they are, and every reader decodes them.
"""

from typing import TypedDict

RECORD_FIELDS = ("clip_id", "video_path", "start", "end", "asr", "caption", "round", "source")
#: ``end`` of a clip that is a whole video (an MSR-VTT or MSVD file, a pool sample without
#: ``clips``): past any video's duration, to which the readers clamp it.
WHOLE_VIDEO_END = 1e9


class AnnotationRecord(TypedDict):
    clip_id: str
    video_path: str
    start: float
    end: float
    asr: str
    caption: str
    round: int
    source: str


def make_clip_id(video_id: str, segment_index: int) -> str:
    """Clip ids are ``<video_id>_<segment index, 3 digits>``, the index counting from 0."""
    return f"{video_id}_{segment_index:03d}"
