"""The pool as video2dataset writes it with ``output_format="webdataset"``: tar shards of clips.

Each source video is one input row of video2dataset. Rows go to shards ``videos_per_shard`` at a
time (its ``number_sample_per_shard``); a row's key is its shard id and its index in the shard,
zero-padded as video2dataset's ``compute_key`` does (``000030002`` with 10 000 rows a shard).
The clipping subsampler makes one sample per segment, keyed ``{key}_{segment:05d}``, whose
members come in the order its writer adds them:

- ``{key}.mp4``: the clip alone, its timestamps starting at 0;
- ``{key}.txt``: the clip's transcript (as when each clip carries its own subtitle line);
- ``{key}.json``: the row's columns ``url``, ``caption``, ``video_id``, ``clip_id`` (the last two
  as extra columns), then ``key``, ``status``, ``error_message`` and ``clips: [[start, end]]``,
  the clip's span in the source video.

Beside each ``{shard:05d}.tar`` lies ``{shard:05d}_stats.json`` with video2dataset's per-shard
counters. Its ``.parquet`` copies of the metadata are not written: no reader here needs them and
they would need pyarrow. Clips are cut from the rendered source video without loss (the decoded
frames re-encoded as lossless H.264), so the shards decode to the very frames the folder pool
does. Each shard is written to a temporary file and renamed when complete.
"""

import io
import json
import math
import os
import tarfile
import time
from fractions import Fraction
from pathlib import Path

import av

from .writer import write_json

SHARD_ID_DIGITS = 5  # video2dataset's oom_shard_count
CLIP_DIGITS = 5  # its ClippingSubsampler's oom_clip_count


def shard_of(video_index: int, videos_per_shard: int) -> int:
    return video_index // videos_per_shard


def sample_key(video_index: int, videos_per_shard: int) -> str:
    """video2dataset's key of an input row: shard id, then the row's index within its shard."""
    digits = math.ceil(math.log10(videos_per_shard)) if videos_per_shard > 1 else 0
    shard, index = divmod(video_index, videos_per_shard)
    return f"{shard * 10 ** digits + index:0{digits + SHARD_ID_DIGITS}d}"


def shard_name(shard: int) -> str:
    return f"{shard:0{SHARD_ID_DIGITS}d}.tar"


def clip_member_path(video_index: int, segment: int, videos_per_shard: int) -> str:
    """The ``video_path`` of a clip, relative to the pool folder: ``<shard>.tar/<key>_<clip>.mp4``."""
    key = sample_key(video_index, videos_per_shard)
    return f"{shard_name(shard_of(video_index, videos_per_shard))}/{key}_{segment:0{CLIP_DIGITS}d}.mp4"


def write_shard(pool: Path, shard: int, videos: list[dict], videos_per_shard: int, fps: int) -> None:
    """Write ``pool/<shard>.tar`` (and its stats) from the rendered videos of its rows.

    ``videos``: per row, ``index`` (in the pool), ``video_id``, ``source`` (the rendered file,
    relative to ``pool``), ``frames`` (first frame and count of each segment), ``start``/``end``
    (segment times), ``text`` (transcripts) and ``clip_ids``.
    """
    began = time.time()
    target = pool / shard_name(shard)
    tmp = target.with_name(f".{target.name}.tmp")
    source_bytes = 0
    with open(tmp, "wb") as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for row in videos:
                source = pool / row["source"]
                source_bytes += source.stat().st_size
                key = sample_key(row["index"], videos_per_shard)
                clips = cut_clips(source, row["frames"], fps)
                for k, clip in enumerate(clips):
                    clip_key = f"{key}_{k:0{CLIP_DIGITS}d}"
                    meta = {
                        "url": f"synthetic://{row['video_id']}", "caption": row["text"][k],
                        "video_id": row["video_id"], "clip_id": row["clip_ids"][k], "key": clip_key,
                        "status": "success", "error_message": None, "clips": [[row["start"][k], row["end"][k]]],
                    }
                    _add(tar, f"{clip_key}.mp4", clip)
                    _add(tar, f"{clip_key}.txt", row["text"][k].encode("utf-8"))
                    _add(tar, f"{clip_key}.json", json.dumps(meta, indent=4).encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    ended = time.time()
    stats = pool / f"{shard:0{SHARD_ID_DIGITS}d}_stats.json"
    write_json(stats.with_name(f".{stats.name}.tmp"), {
        "count": len(videos), "successes": len(videos), "failed_to_download": 0, "failed_to_subsample": 0,
        "duration": ended - began, "bytes_downloaded": source_bytes, "start_time": began, "end_time": ended,
        "status_dict": {"success": len(videos)},
    }, indent=4)
    os.replace(stats.with_name(f".{stats.name}.tmp"), stats)


def cut_clips(source: Path, spans: list[tuple[int, int]], fps: int) -> list[bytes]:
    """Each ``(first frame, count)`` span of ``source`` as its own mp4, losslessly, starting at 0."""
    with av.open(str(source)) as container:
        container.streams.video[0].codec_context.thread_count = 1
        frames = list(container.decode(video=0))
    clips = []
    for first, count in spans:
        buffer = io.BytesIO()
        with av.open(buffer, mode="w", format="mp4") as out:
            stream = out.add_stream("libx264", rate=fps)
            stream.width, stream.height = frames[0].width, frames[0].height
            stream.pix_fmt = "yuv420p"
            stream.codec_context.thread_count = 1
            stream.options = {"preset": "veryfast", "qp": "0"}  # qp 0: lossless, the decoded frames exactly
            for i, frame in enumerate(frames[first:first + count]):
                frame.pts, frame.time_base = i, Fraction(1, fps)
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        clips.append(buffer.getvalue())
    return clips


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o444, 0  # mtime 0: the same world, the same headers
    info.uname = info.gname = "bigdata"  # as webdataset's TarWriter
    tar.addfile(info, io.BytesIO(data))
