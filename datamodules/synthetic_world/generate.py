"""``generate_world``: sample the whole world, write its annotations, render its media.

All sampling happens first, in this process, from per-item random streams (see
:func:`~.spec.rng_for`); only the pixel work (drawing and encoding) is spread over worker
processes, so the number of workers cannot change any annotation byte.
"""

import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..records import AnnotationRecord, make_clip_id
from .asr_noise import DEFAULT_NOISE_MIX, NOISE_DISTS, NOISE_KINDS, video_asr
from .captions import clean_caption, static_caption
from .downstream import msrvtt_captions, msrvtt_files, msvd_split_sizes, qa_pairs, youtube_like_name
from .lexicon import VALUES
from .render import render_segment, write_image, write_video
from .shards import clip_member_path, shard_of, write_shard
from .spec import (
    PURPOSE_ASR, PURPOSE_CAPTION, PURPOSE_CONTENT, PURPOSE_NOISE_PLAN, STREAM_FOUNDATION,
    STREAM_MSRVTT, STREAM_MSVD, STREAM_POOL, STREAM_WORLD, SegmentSpec, rng_for, sample_clip,
    sample_still, sample_video,
)
from .writer import POOL_FORMATS, WORLD_FILE, staged_output, write_csv, write_json, write_jsonl, write_lines

FORMAT_VERSION = 1
IMAGES_PER_JOB = 100


def pool_video_id(index: int) -> str:
    return f"pool_{index:05d}"


def _ground_truth(clip_id, video_id, split, segment: SegmentSpec, caption, start, end,
                  asr_noise=None) -> dict:
    return {
        "clip_id": clip_id, "video_id": video_id, "split": split,
        "start": start, "end": end, "scene": segment.scene,
        "objects": [o.attributes() for o in segment.objects],
        "caption": caption, "asr_noise": asr_noise,
    }


def _validate(num_videos, noise_dist, noise_rate, noise_mix, human_fraction, size, fps, counts, pool_format,
              videos_per_shard):
    if num_videos < 1:
        raise ValueError(f"num_videos must be at least 1, got {num_videos}")
    if pool_format not in POOL_FORMATS:
        raise ValueError(f"pool_format must be one of {POOL_FORMATS}, got {pool_format!r}")
    if videos_per_shard < 1:
        raise ValueError(f"videos_per_shard must be at least 1, got {videos_per_shard}")
    if noise_dist not in NOISE_DISTS:
        raise ValueError(f"noise_dist must be one of {NOISE_DISTS}, got {noise_dist!r}")
    if not 0.0 <= noise_rate <= 1.0:
        raise ValueError(f"noise_rate must be in [0, 1], got {noise_rate}")
    if len(noise_mix) != 3 or min(noise_mix) < 0 or sum(noise_mix) <= 0:
        raise ValueError(f"noise_mix must be three non-negative weights, not all 0: {noise_mix}")
    if not 0.0 <= human_fraction <= 1.0:
        raise ValueError(f"human_fraction must be in [0, 1], got {human_fraction}")
    if size < 16 or size % 2:
        raise ValueError(f"size must be an even number of pixels >= 16, got {size}")
    if fps < 1:
        raise ValueError(f"fps must be at least 1, got {fps}")
    for name, value in counts.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


# ----------------------------------------------------------------------------- media jobs

def _render_job(root: str, job: tuple) -> int:
    """Draw and encode one video, a batch of images or a pool shard under ``root``; returns files written."""
    kind, payload, size, fps = job
    if kind == "shard":
        shard, rows, videos_per_shard = payload
        write_shard(Path(root) / "pool", shard, rows, videos_per_shard, fps)
        return 1
    if kind == "png":
        for relpath, segment in payload:
            write_image(Path(root) / relpath, render_segment(segment, size)[0])
        return len(payload)
    relpath, segments = payload
    frames = np.concatenate([render_segment(s, size) for s in segments])
    write_video(Path(root) / relpath, frames, fps, codec="libx264" if kind == "mp4" else "mpeg4")
    return 1


def _render_all(root: Path, jobs: list, workers: int, progress: bool) -> None:
    total = sum(len(j[1]) if j[0] == "png" else 1 for j in jobs)
    with tqdm(total=total, desc="rendering media", unit="file", disable=not progress) as bar:
        if workers <= 1:
            for job in jobs:
                bar.update(_render_job(str(root), job))
            return
        context = multiprocessing.get_context("spawn")  # safe inside threaded parents
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [pool.submit(_render_job, str(root), job) for job in jobs]
            for future in as_completed(futures):
                bar.update(future.result())


# ----------------------------------------------------------------------------- the world

def generate_world(
    out: str | Path,
    num_videos: int,
    seed: int,
    noise_dist: str = "uniform",
    noise_rate: float = 0.5,
    *,
    noise_mix: tuple[float, float, float] = DEFAULT_NOISE_MIX,
    human_fraction: float = 0.05,
    foundation_images: int = 2000,
    msrvtt_train: int = 150,
    msrvtt_test: int = 50,
    msrvtt_videos: int | None = None,
    msvd_videos: int = 120,
    size: int = 64,
    fps: int = 8,
    workers: int = 2,
    overwrite: bool = False,
    progress: bool = False,
    pool_format: str = "folder",
    videos_per_shard: int = 100,
) -> Path:
    """Write a complete synthetic world to ``out`` and return its path.

    Args:
        out: the world's folder; must not exist, be empty, or ``overwrite`` must be set.
        num_videos: pool source videos (3-5 segments each).
        seed: everything is a function of the seed (annotation files byte for byte).
        noise_dist: ``uniform``, ``bursty`` or ``structured`` (see ``asr_noise``).
        noise_rate: expected fraction of noisy ASR segments, in [0, 1].
        noise_mix: weights of misrecognised / misaligned / unrelated noise (uniform, bursty).
        human_fraction: fraction of pool clips with a clean human caption (at least one if > 0).
        foundation_images: still images with static captions for the offline ILM / LLM.
        msrvtt_train: MSR-VTT training-list videos (the last tenth are ``validate``).
        msrvtt_test: MSR-VTT test videos (one JSFUSION caption each).
        msrvtt_videos: if given, the MSR-VTT total: three quarters go to the training list,
            the rest to test (overrides ``msrvtt_train`` and ``msrvtt_test``).
        msvd_videos: MSVD-QA videos, split 60/10/30 into train/val/test.
        size: frame side in pixels (even).
        fps: frames per second of every video.
        workers: processes for drawing and encoding; 0 or 1 renders in this process.
        overwrite: replace an existing world or non-empty folder at ``out``.
        progress: show a tqdm progress bar.
        pool_format: ``folder`` (``pool/asr.json`` + ``pool/videos/``) or ``webdataset`` (the pool
            as video2dataset tar shards ``pool/00000.tar`` …, one sample per clip; see ``shards``).
        videos_per_shard: ``webdataset``: source videos per shard (video2dataset's
            ``number_sample_per_shard``).
    """
    if msrvtt_videos is not None:
        msrvtt_train = int(round(0.75 * msrvtt_videos))
        msrvtt_test = msrvtt_videos - msrvtt_train
    counts = {"foundation_images": foundation_images, "msrvtt_train": msrvtt_train,
              "msrvtt_test": msrvtt_test, "msvd_videos": msvd_videos, "workers": workers}
    _validate(num_videos, noise_dist, noise_rate, noise_mix, human_fraction, size, fps, counts, pool_format,
              videos_per_shard)
    shards = pool_format == "webdataset"
    noise_mix = tuple(float(w) for w in noise_mix)
    with staged_output(Path(out), overwrite) as root:
        jobs: list = []
        ground_truth: list[dict] = []

        # ---- pool: segmented source videos with noisy ASR
        (root / "pool" / "videos").mkdir(parents=True)
        asr: dict[str, dict] = {}
        pool_clips: list[tuple[dict, str, str]] = []  # (ground truth row, asr text, video path)
        shard_rows: dict[int, list[dict]] = {}
        noise_counts = dict.fromkeys(("clean", *NOISE_KINDS, "swapped"), 0)
        for i in range(num_videos):
            video_id = pool_video_id(i)
            segments = sample_video(rng_for(seed, STREAM_POOL, i, PURPOSE_CONTENT), fps)
            caption_rng = rng_for(seed, STREAM_POOL, i, PURPOSE_CAPTION)
            texts, kinds = video_asr(
                rng_for(seed, STREAM_POOL, i, PURPOSE_NOISE_PLAN),
                [rng_for(seed, STREAM_POOL, i, PURPOSE_ASR, k) for k in range(len(segments))],
                segments, noise_dist, noise_rate, noise_mix)
            asr[video_id] = {"start": [s.start for s in segments], "end": [s.end for s in segments],
                             "text": texts}
            for k, (segment, text, kind) in enumerate(zip(segments, texts, kinds)):
                row = _ground_truth(make_clip_id(video_id, k), video_id, "pool", segment,
                                    clean_caption(caption_rng, segment), segment.start,
                                    segment.end, asr_noise=kind)
                ground_truth.append(row)
                path = clip_member_path(i, k, videos_per_shard) if shards else f"videos/{video_id}.mp4"
                pool_clips.append((row, text, path))
                noise_counts[kind] += 1
            jobs.append(("mp4", (f"pool/videos/{video_id}.mp4", segments), size, fps))
            if shards:
                firsts = np.cumsum([0] + [s.num_frames for s in segments[:-1]]).tolist()
                shard_rows.setdefault(shard_of(i, videos_per_shard), []).append({
                    "index": i, "video_id": video_id, "source": f"videos/{video_id}.mp4",
                    "frames": [(f, s.num_frames) for f, s in zip(firsts, segments)],
                    "start": asr[video_id]["start"], "end": asr[video_id]["end"], "text": texts,
                    "clip_ids": [make_clip_id(video_id, k) for k in range(len(segments))],
                })
        if not shards:  # the shards carry the transcripts instead
            write_json(root / "pool" / "asr.json", asr)

        if human_fraction > 0:
            n_human = max(1, int(round(human_fraction * len(pool_clips))))
            chosen = rng_for(seed, STREAM_WORLD, 0, PURPOSE_CONTENT).choice(
                len(pool_clips), size=n_human, replace=False)
        else:
            chosen = []
        human: list[AnnotationRecord] = []
        for index in sorted(int(c) for c in chosen):
            row, text, path = pool_clips[index]
            human.append(AnnotationRecord(
                clip_id=row["clip_id"], video_path=path,
                start=row["start"], end=row["end"], asr=text, caption=row["caption"],
                round=-1, source="human"))
        write_jsonl(root / "pool" / "human_refined.jsonl", human)

        # ---- MSR-VTT
        (root / "msrvtt" / "videos" / "all").mkdir(parents=True)
        clips = []
        for j in range(msrvtt_train + msrvtt_test):
            content = rng_for(seed, STREAM_MSRVTT, j, PURPOSE_CONTENT)
            segment = sample_clip(content, fps)
            video_id = f"video{j}"
            captions = msrvtt_captions(rng_for(seed, STREAM_MSRVTT, j, PURPOSE_CAPTION), segment)
            clips.append({"video_id": video_id, "segment": segment, "captions": captions,
                          "source_start": round(float(content.uniform(0, 300)), 2)})
            ground_truth.append(_ground_truth(make_clip_id(video_id, 0), video_id, "msrvtt",
                                              segment, captions[0], segment.start, segment.end))
            jobs.append(("mp4", (f"msrvtt/videos/all/{video_id}.mp4", [segment]), size, fps))
        files = msrvtt_files(clips, msrvtt_train, seed)
        write_json(root / "msrvtt" / "MSRVTT_data.json", files["data"])
        write_csv(root / "msrvtt" / "MSRVTT_train.9k.csv", ["video_id"], files["train_rows"])
        write_csv(root / "msrvtt" / "MSRVTT_JSFUSION_test.csv",
                  ["", "key", "vid_key", "video_id", "sentence"], files["test_rows"])

        # ---- MSVD-QA
        (root / "msvd_qa" / "YouTubeClips").mkdir(parents=True)
        splits = {"train": [], "val": [], "test": []}
        n_train, n_val, _ = msvd_split_sizes(msvd_videos)
        mapping, names, question_id = [], set(), 0
        for j in range(msvd_videos):
            content = rng_for(seed, STREAM_MSVD, j, PURPOSE_CONTENT)
            segment = sample_clip(content, fps)
            name = youtube_like_name(content, segment.end)
            while name in names:
                name = youtube_like_name(content, segment.end)
            names.add(name)
            vid = j + 1
            mapping.append(f"{name} vid{vid}")
            split = "train" if j < n_train else "val" if j < n_train + n_val else "test"
            caption_rng = rng_for(seed, STREAM_MSVD, j, PURPOSE_CAPTION)
            for question, answer in qa_pairs(caption_rng, segment):
                splits[split].append({"answer": answer, "id": question_id, "question": question,
                                      "video_id": vid})
                question_id += 1
            ground_truth.append(_ground_truth(make_clip_id(f"vid{vid}", 0), f"vid{vid}", "msvd",
                                              segment, clean_caption(caption_rng, segment),
                                              segment.start, segment.end))
            jobs.append(("avi", (f"msvd_qa/YouTubeClips/{name}.avi", [segment]), size, fps))
        for split, rows in splits.items():
            write_json(root / "msvd_qa" / f"{split}_qa.json", rows)
        write_lines(root / "msvd_qa" / "youtube_mapping.txt", mapping)

        # ---- foundation stills
        (root / "foundation" / "images").mkdir(parents=True)
        stills, foundation_rows = [], []
        for j in range(foundation_images):
            segment = sample_still(rng_for(seed, STREAM_FOUNDATION, j, PURPOSE_CONTENT))
            relpath = f"images/{j:06d}.png"
            foundation_rows.append({"image": relpath, "caption": static_caption(
                rng_for(seed, STREAM_FOUNDATION, j, PURPOSE_CAPTION), segment)})
            stills.append((f"foundation/{relpath}", segment))
        write_jsonl(root / "foundation" / "captions.jsonl", foundation_rows)
        for start in range(0, len(stills), IMAGES_PER_JOB):
            jobs.append(("png", stills[start:start + IMAGES_PER_JOB], size, fps))

        write_jsonl(root / "ground_truth.jsonl", ground_truth)
        _render_all(root, jobs, workers, progress)
        if shards:  # cut the rendered source videos into clip samples, then drop them
            _render_all(root, [("shard", (shard, rows, videos_per_shard), size, fps)
                               for shard, rows in shard_rows.items()], workers, progress)
            shutil.rmtree(root / "pool" / "videos")

        # ---- the marker, written last
        write_json(root / WORLD_FILE, {
            "format_version": FORMAT_VERSION,
            "seed": seed,
            "num_videos": num_videos,
            "noise": {"dist": noise_dist, "rate": noise_rate,
                      "mix": dict(zip(NOISE_KINDS, noise_mix)), "counts": noise_counts},
            "video": {"size": size, "fps": fps, "segments_per_video": [3, 5],
                      "segment_seconds": [1.5, 2.5]},
            "pool": {"format": pool_format, **({"videos_per_shard": videos_per_shard} if shards else {})},
            "counts": {
                "pool_videos": num_videos, "pool_clips": len(pool_clips),
                "human_refined": len(human), "foundation_images": foundation_images,
                "msrvtt_train": msrvtt_train, "msrvtt_test": msrvtt_test,
                "msvd_videos": msvd_videos, "msvd_questions": question_id,
            },
            "vocabulary": {attribute: list(values) for attribute, values in VALUES.items()},
        }, indent=2)
    return Path(out)
