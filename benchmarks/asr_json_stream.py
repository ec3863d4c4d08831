"""Reading HowTo100M's ``asr.json``: streamed member by member vs ``json.loads`` of the whole file.

Writes a synthetic ``asr.json`` of ``--videos`` videos (``--segments`` transcript segments each),
then times, in one process, the baseline (read the file, ``json.loads`` it, walk every segment)
and the pool reader's stream (``datamodules.json_object_stream``), and measures the peak Python
heap of each with ``tracemalloc``. Prints the ratios stream / baseline. Run by hand:

    python benchmarks/asr_json_stream.py [--videos 50000] [--segments 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine_info import describe, machine  # noqa: E402
from datamodules.json_object_stream import iter_json_object  # noqa: E402

WORDS = "and then we move this circle right the ring is heading left now slide little ball".split()


def write_asr_json(path: Path, videos: int, segments: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w") as f:  # written video by video, so writing does not need the whole object either
        f.write("{")
        for v in range(videos):
            starts = sorted(round(rng.uniform(0, 300), 2) for _ in range(segments))
            entry = {"start": starts, "end": [s + 2.5 for s in starts],
                     "text": [" ".join(rng.choices(WORDS, k=rng.randint(4, 14))) for _ in range(segments)]}
            f.write(("," if v else "") + json.dumps(f"v{v:08d}") + ":" + json.dumps(entry))
        f.write("}")


def whole_file(path: Path) -> int:
    data = json.loads(path.read_bytes().decode("utf-8", errors="surrogateescape"))
    return sum(len(entry["text"]) for entry in data.values())


def streamed(path: Path) -> int:
    return sum(len(entry["text"]) for _, entry in iter_json_object(path))


def measure(fn, path: Path, repeats: int) -> tuple[float, float, int]:
    """Median seconds, peak traced heap in MiB, and the segment count."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        count = fn(path)
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    fn(path)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return statistics.median(times), peak, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=50_000, help="videos in the synthetic asr.json")
    parser.add_argument("--segments", type=int, default=8, help="transcript segments per video")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes of each reader (median)")
    args = parser.parse_args()
    print(describe(machine()))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "asr.json"
        write_asr_json(path, args.videos, args.segments)
        size = path.stat().st_size / 2**20
        base_s, base_mib, base_n = measure(whole_file, path, args.repeats)
        stream_s, stream_mib, stream_n = measure(streamed, path, args.repeats)
    if stream_n != base_n:
        raise SystemExit(f"the stream saw {stream_n} segments, the whole-file parse {base_n}")
    print(f"asr.json: {args.videos:,} videos, {base_n:,} segments, {size:.1f} MiB")
    print(f"{'reader':<22}{'seconds':>10}{'peak heap MiB':>16}")
    print(f"{'json.loads (baseline)':<22}{base_s:>10.2f}{base_mib:>16.1f}")
    print(f"{'streamed':<22}{stream_s:>10.2f}{stream_mib:>16.1f}")
    print(f"ratio streamed/baseline: time x{stream_s / base_s:.2f}, peak heap x{stream_mib / base_mib:.3f}")


if __name__ == "__main__":
    main()
