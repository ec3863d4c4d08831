"""Clip decoding throughput: decord2 against PyAV, measured in one process.

Decodes the same list of clips (random segments of a set of videos, ``--num-frames`` frames
each, uniform sampling, one decoding thread, as in a DataLoader worker) with every backend
and prints clips/s per backend and the ratio decord2 / PyAV. A few warm-up reads come first;
then ``--repeats`` timed passes over the clip list, interleaved (the backend order alternates
every pass) so drift in machine load hits both alike. The median and the best pass are printed
(on a shared machine the best is the steadier figure), and clips per second of process CPU
time (all threads), which other jobs on the machine disturb least. Run by hand:

    python benchmarks/decode.py                      # generates H.264 test videos
    python benchmarks/decode.py --videos DIR         # every .mp4/.avi/.mkv/.webm/.mov in DIR

Generated videos show moving shapes on a shifting gradient (so the encoder has motion to code)
with a keyframe every 2 s, roughly like web video.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.frame_sampling import sample_offsets  # noqa: E402
from datamodules.video_reader import VideoDecodeError, decord_available, get_reader  # noqa: E402

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".webm", ".mov"}


def make_videos(out: Path, num: int, seconds: float, fps: int, width: int, height: int, seed: int) -> list[Path]:
    """Write ``num`` H.264 mp4 files of moving content; returns their paths."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    paths = []
    for v in range(num):
        path = out / f"video{v:03d}.mp4"
        colour = rng.integers(40, 255, 3)
        side = max(4, min(width, height) // 5)
        x0, y0 = rng.integers(0, width - side), rng.integers(0, height - side)
        dx, dy = rng.choice([-3, -2, 2, 3], size=2)
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=fps, options={"g": str(2 * fps), "preset": "veryfast"})
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for i in range(int(seconds * fps)):
                img = np.empty((height, width, 3), np.uint8)
                img[..., 0] = (xx + 2 * i) % 256
                img[..., 1] = (yy + i) % 256
                img[..., 2] = 96
                x = (x0 + dx * i) % (width - side)
                y = (y0 + dy * i) % (height - side)
                img[y : y + side, x : x + side] = colour
                for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        paths.append(path)
    return paths


def video_duration(path: Path) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.duration:
            return float(stream.duration * stream.time_base)
        return container.duration / 1_000_000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=Path, help="folder of videos to use instead of generated ones")
    parser.add_argument("--num-videos", type=int, default=8, help="videos to generate")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each generated video")
    parser.add_argument("--fps", type=int, default=25, help="frame rate of generated videos")
    parser.add_argument("--width", type=int, default=320, help="width of generated videos")
    parser.add_argument("--height", type=int, default=240, help="height of generated videos")
    parser.add_argument("--clips", type=int, default=48, help="clips per timed pass")
    parser.add_argument("--clip-seconds", type=float, default=2.0, help="length of each clip")
    parser.add_argument("--num-frames", type=int, default=8, help="frames sampled per clip")
    parser.add_argument("--warmup", type=int, default=4, help="untimed reads per backend first")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per backend")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    backends = (["decord"] if decord_available() else []) + ["pyav"]
    if len(backends) < 2:
        print("decord2 is not installed: timing PyAV only")
    with tempfile.TemporaryDirectory() as tmp:
        if args.videos:
            paths = sorted(p for p in args.videos.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
            if not paths:
                parser.error(f"no videos in {args.videos}")
        else:
            t0 = time.perf_counter()
            paths = make_videos(Path(tmp), args.num_videos, args.seconds, args.fps, args.width, args.height, args.seed)
            print(f"generated {len(paths)} videos of {args.seconds:g} s, {args.width}x{args.height} "
                  f"@ {args.fps} fps in {time.perf_counter() - t0:.1f} s")

        rng = np.random.default_rng(args.seed)
        durations = {p: video_duration(p) for p in paths}
        clips = []
        for _ in range(args.clips):
            path = paths[rng.integers(len(paths))]
            start = float(rng.uniform(0, max(durations[path] - args.clip_seconds, 0.0)))
            clips.append((path, start, start + args.clip_seconds))
        offsets = sample_offsets(args.num_frames, "uniform")
        readers = {name: get_reader(name) for name in backends}

        def run(name: str, subset) -> int:
            failures = 0
            for path, start, end in subset:
                try:
                    readers[name].read(path, start, end, offsets)
                except VideoDecodeError as err:
                    failures += 1
                    print(f"  {err}")
            return failures

        for name in backends:
            run(name, clips[: args.warmup])
        if len(backends) == 2:  # sanity: both backends return the same frames
            a, b = (readers[n].read(*clips[0], offsets) for n in backends)
            diff = (a.frames.float() - b.frames.float()).abs().mean().item()
            dt = (a.timestamps - b.timestamps).abs().max().item()
            print(f"first clip: max timestamp difference {dt:.2g} s, mean |pixel difference| {diff:.3f}")

        rates: dict[str, list[float]] = {name: [] for name in backends}
        cpu_rates: dict[str, list[float]] = {name: [] for name in backends}
        failures = dict.fromkeys(backends, 0)
        for rep in range(args.repeats):
            for name in backends if rep % 2 == 0 else backends[::-1]:
                t0, c0 = time.perf_counter(), time.process_time()
                failures[name] += run(name, clips)
                rates[name].append(len(clips) / (time.perf_counter() - t0))
                cpu_rates[name].append(len(clips) / (time.process_time() - c0))

    print(f"\n{len(clips)} clips x {args.repeats} passes, {args.num_frames} frames per "
          f"{args.clip_seconds:g} s clip, torch threads {torch.get_num_threads()}")
    print(f"{'backend':<8} {'median clips/s':>15} {'best clips/s':>13} {'clips/CPU-s':>12} {'failures':>9}")
    for name in backends:
        print(f"{name:<8} {statistics.median(rates[name]):>15.1f} {max(rates[name]):>13.1f} "
              f"{statistics.median(cpu_rates[name]):>12.1f} {failures[name]:>9}")
    if len(backends) == 2:
        med = statistics.median(rates["decord"]) / statistics.median(rates["pyav"])
        best = max(rates["decord"]) / max(rates["pyav"])
        cpu = statistics.median(cpu_rates["decord"]) / statistics.median(cpu_rates["pyav"])
        print(f"decord2 / PyAV: {med:.2f}x (median), {best:.2f}x (best), {cpu:.2f}x (per CPU second)")


if __name__ == "__main__":
    main()
