"""Listing a tar-shard pool: samples/s, against reading the same records from JSONL, in one process.

Every rank and DataLoader worker lists the pool once per pass (``streaming_dataset``): for tar
shards that means reading each member header and the small json/txt members, video data skipped
by seeking. This writes video2dataset-shaped shards of stand-in video members (``--video-kb``
bytes each, never decoded), then times: listing them (``WebDatasetPoolReader``), the baseline of
reading the same records as a round's JSONL (what training on a round costs), and scanning one
shard's member table (what finding a member to decode costs, once per shard and process). The
median of ``--repeats`` passes is printed; run it twice to see the page cache warm. Run by hand:

    python benchmarks/pool_listing.py [--shards 4] [--samples-per-shard 2500] [--video-kb 200]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.annotation_store import JsonlRecordReader  # noqa: E402
from datamodules.tar_members import _scan  # noqa: E402
from datamodules.webdataset_pool import WebDatasetPoolReader  # noqa: E402


def write_pool(out: Path, shards: int, per_shard: int, video_bytes: int) -> None:
    video = bytes(video_bytes)
    for shard in range(shards):
        with tarfile.open(out / f"{shard:05d}.tar", "w") as tar:
            for i in range(per_shard):
                key = f"{shard:05d}{i:04d}_00000"
                meta = {"key": key, "status": "success", "error_message": None, "clips": [[1.0, 3.5]],
                        "url": f"https://example.org/{key}", "caption": "and now we fold the red paper in half"}
                for name, data in ((f"{key}.mp4", video), (f"{key}.txt", meta["caption"].encode()),
                                   (f"{key}.json", json.dumps(meta, indent=4).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--samples-per-shard", type=int, default=2500)
    parser.add_argument("--video-kb", type=int, default=200, help="size of each stand-in video member")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pool = Path(tmp)
        write_pool(pool, args.shards, args.samples_per_shard, args.video_kb * 1024)
        records = list(WebDatasetPoolReader(pool))
        jsonl = pool / "round.jsonl"
        jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
        n = len(records)
        tar_s = timed(lambda: sum(1 for _ in WebDatasetPoolReader(pool)), args.repeats)
        jsonl_s = timed(lambda: sum(1 for _ in JsonlRecordReader([jsonl])), args.repeats)
        shard = str(pool / "00000.tar")
        table_s = timed(lambda: _scan.__wrapped__(shard, 0, 0), args.repeats)
    gb = n * args.video_kb / 1024 / 1024
    print(f"{n} samples in {args.shards} shards ({gb:.1f} GB of video members)")
    print(f"list tar shards : {n / tar_s:9.0f} samples/s")
    print(f"read JSONL      : {n / jsonl_s:9.0f} records/s  (tar / JSONL time: {tar_s / jsonl_s:.1f}x)")
    print(f"member table    : {table_s * 1000:9.0f} ms per {args.samples_per_shard}-sample shard")


if __name__ == "__main__":
    main()
