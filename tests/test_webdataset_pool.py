"""ASR pools as video2dataset tar shards: layout, rank × worker split, resume, damaged input."""

import functools
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from torch.utils.data import DataLoader

from datamodules.annotation_sources import iter_source, open_source, source_exists
from datamodules.loader_restarts import DataLoadingError, batches_with_restarts
from datamodules.streaming_dataset import ClipStream
from datamodules.tar_members import split_member_path, video_exists
from datamodules.video_reader import read_clip
from datamodules.webdataset_pool import WHOLE_VIDEO_END, WebDatasetPoolReader, clip_seconds, expand_braces


# DataLoader workers unpickle what this module defines: it must not import Lightning (seconds a worker).


def make_stream(pool: Path, cls=ClipStream, **kw) -> ClipStream:
    args = dict(batch_size=3, num_frames=2, drop_uneven=False)
    args.update(kw)
    return cls(functools.partial(iter_source, str(pool)), open_source(pool).video_root, **args)


def loader(stream: ClipStream, start: int = 0, workers: int = 0) -> DataLoader:
    """What ``ResumableLoader`` does for a pass starting at batch ``start``."""
    stream.start_batch = start
    return DataLoader(stream, batch_size=None, num_workers=workers,
                      multiprocessing_context="forkserver" if workers else None)


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def member_bytes(shard: Path, name: str) -> bytes:
    with tarfile.open(shard) as tar:
        return tar.extractfile(name).read()


# ----------------------------------------------------------------------------- layout and reading

def test_tar_pool_reads_back_the_folder_pool_with_the_same_frames(tiny_world, wds_world):
    pool = wds_world / "pool"
    assert not (pool / "videos").exists() and not (pool / "asr.json").exists()
    assert sorted(p.name for p in pool.iterdir()) == [
        "00000.tar", "00000_stats.json", "00001.tar", "00001_stats.json", "00002.tar", "00002_stats.json",
        "human_refined.jsonl"]
    stats = json.loads((pool / "00000_stats.json").read_text())
    assert stats["count"] == stats["successes"] == 3 and stats["status_dict"] == {"success": 3}
    with tarfile.open(pool / "00000.tar") as tar:
        names = tar.getnames()
    assert names[:3] == ["000000_00000.mp4", "000000_00000.txt", "000000_00000.json"]  # video2dataset's order
    meta = json.loads(member_bytes(pool / "00000.tar", "000000_00001.json"))
    assert meta["key"] == "000000_00001" and meta["status"] == "success" and meta["clip_id"] == "pool_00000_001"
    assert meta["caption"] == member_bytes(pool / "00000.tar", "000000_00001.txt").decode()

    folder, shards = list(open_source(tiny_world / "pool")), list(open_source(pool))
    assert [dict(r, video_path="") for r in shards] == [dict(r, video_path="") for r in folder]
    assert shards[-1]["video_path"].startswith("00002.tar/") and shards[-1]["video_path"].endswith(".mp4")
    for a, b in zip(folder, shards):  # both backends, every clip: lossless clips, identical frames
        for backend in ("decord", "pyav"):
            fa = read_clip(tiny_world / "pool" / a["video_path"], a["start"], a["end"], 4, backend=backend)
            fb = read_clip(pool / b["video_path"], b["start"], b["end"], 4, backend=backend)
            assert torch.equal(fa, fb), (a["clip_id"], backend)
    human = [json.loads(line) for line in (pool / "human_refined.jsonl").read_text().splitlines()]
    assert human and all(video_exists(pool / r["video_path"]) for r in human)


def test_brace_patterns_name_shards(wds_world):
    assert expand_braces("p/{00000..00002}.tar") == ["p/00000.tar", "p/00001.tar", "p/00002.tar"]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    pool = wds_world / "pool"
    two = open_source(f"{pool}/{{00000..00001}}.tar")
    assert isinstance(two, WebDatasetPoolReader) and two.video_root == pool
    assert {r["video_path"].split("/")[0] for r in two} == {"00000.tar", "00001.tar"}
    assert [r["clip_id"] for r in open_source(pool / "00002.tar")] == [r["clip_id"] for r in open_source(pool)][-len(
        list(open_source(pool / "00002.tar"))):]
    assert not source_exists(f"{pool}/{{00000..00003}}.tar")
    with pytest.raises(FileNotFoundError, match="not found"):
        open_source(f"{pool}/{{00000..00003}}.tar")
    assert clip_seconds("01:02:03.250") == 3723.25 and clip_seconds(4) == 4.0


# ----------------------------------------------------------------------------- split and resume

def test_ranks_and_workers_cover_every_sample_exactly_once(wds_world):
    pool = wds_world / "pool"
    every = [r["clip_id"] for r in open_source(pool)]
    for world in (1, 2, 3):
        seen = []
        for rank in range(world):
            batches = list(loader(make_stream(pool, rank=rank, world_size=world), workers=2 if world == 2 else 0))
            assert [b["batch_index"] for b in batches] == list(range(len(batches)))  # in order, whatever the workers
            seen += [c for b in batches for c in b["clip_id"]]
        assert sorted(seen) == sorted(every), world  # no loss, no padding duplicates
    counts = [len(list(make_stream(pool, rank=r, world_size=3, drop_uneven=True).rank_records())) for r in range(3)]
    assert counts == [len(every) // 3] * 3  # training: equal shares


def test_resume_in_the_middle_of_a_shard_continues_exactly(wds_world):
    pool = wds_world / "pool"
    stream = make_stream(pool, shuffle=True, shuffle_buffer_size=4, seed=5, sampling="random", batch_size=2)
    full = list(loader(stream))
    first_shard = sum(1 for r in open_source(pool) if r["video_path"].startswith("00000.tar/"))
    start = first_shard // 2 // 2  # a batch inside the first shard
    resumed = list(loader(stream, start=start))
    assert [b["clip_id"] for b in resumed] == [b["clip_id"] for b in full[start:]]
    assert all(torch.equal(a["video"], b["video"]) for a, b in zip(resumed, full[start:]))


# ----------------------------------------------------------------------------- damaged input

def test_damaged_shards_cost_only_their_bad_samples(wds_world, tmp_path, caplog):
    pool = tmp_path / "pool"
    pool.mkdir()
    shutil.copy(wds_world / "pool" / "00000.tar", pool)
    good = open_source(wds_world / "pool")
    mp4 = member_bytes(wds_world / "pool" / "00000.tar", "000000_00000.mp4")

    # a shard cut in the middle of a video member, as by a crashed copy
    original = wds_world / "pool" / "00001.tar"
    with tarfile.open(original) as tar:
        infos = [i for i in tar.getmembers() if i.name.endswith(".mp4")]
    victim = infos[2]
    cut = open(original, "rb").read()[: victim.offset_data + victim.size // 2]
    (pool / "00001.tar").write_bytes(cut)
    survivors = 2  # the samples before the cut one

    write_tar(pool / "00002.tar", [
        ("a.mp4", mp4), ("a.json", json.dumps({"clips": [["00:00:00.000", "00:00:01.500"]], "caption": "from json"}).encode()),
        ("b.mp4", mp4), ("b.json", b"{not json"),
        ("c.mp4", mp4), ("c.txt", b"\xff\xfe not utf-8"),
        ("d.txt", b"lost"), ("d.json", json.dumps({"status": "failed_to_download", "error_message": "404"}).encode()),
        ("../e.mp4", mp4), ("../e.txt", b"escapes"),
        ("f.mp4", mp4), ("f.txt", b"x" * ((1 << 20) + 1)),
        ("g.mp4", b"\x00\x00\x00\x18ftypmp42 not a video"), ("g.txt", b"garbage video"),
        ("h.mp4", mp4), ("h.txt", b"a whole video"),
    ])
    with caplog.at_level("WARNING"):
        reader = open_source(pool)
        records = list(reader)
    n0 = sum(1 for r in good if r["video_path"].startswith("00000.tar/"))
    assert len(records) == n0 + survivors + 3
    by_id = {r["clip_id"]: r for r in records}
    assert by_id["a"]["asr"] == "from json" and (by_id["a"]["start"], by_id["a"]["end"]) == (0.0, 1.5)
    assert (by_id["h"]["start"], by_id["h"]["end"]) == (0.0, WHOLE_VIDEO_END)
    assert reader.skip_reasons == {"truncated_shard": 1, "incomplete": 1, "bad_json": 1, "bad_sample": 2,
                                   "status:failed_to_download": 1, "unsafe_member": 2}
    assert reader.skipped == 7  # samples; the truncated shard itself is not one
    assert "00001.tar" in caplog.text and "ends early" in caplog.text and "b.json" in caplog.text

    batches = list(loader(make_stream(pool, batch_size=4)))
    decoded = [c for b in batches for c in b["clip_id"]]
    assert len(decoded) == len(records) - 1 and "g" not in decoded and "h" in decoded
    assert [f for b in batches for f in b["skipped_files"]] == [str(pool / "00002.tar" / "g.mp4")]
    assert split_member_path(pool / "00002.tar" / "g.mp4") == (str(pool / "00002.tar"), "g.mp4")


def test_a_clip_id_met_again_in_its_shard_is_a_counted_skip(wds_world, tmp_path, caplog):
    pool = tmp_path / "pool"
    pool.mkdir()
    mp4 = member_bytes(wds_world / "pool" / "00000.tar", "000000_00000.mp4")
    write_tar(pool / "00000.tar", [("a.mp4", mp4), ("a.txt", b"first a"), ("b.mp4", mp4), ("b.txt", b"first b"),
                                   ("a.mp4", mp4), ("a.txt", b"a again in its shard")])
    write_tar(pool / "00001.tar", [("c.mp4", mp4), ("c.txt", b"first c"), ("d.mp4", mp4), ("d.txt", b"c by its column"),
                                   ("d.json", json.dumps({"clip_id": "c"}).encode())])
    reader = open_source(pool)
    with caplog.at_level("WARNING"):
        records = list(reader)
    assert [(r["clip_id"], r["asr"]) for r in records] == [("a", "first a"), ("b", "first b"), ("c", "first c")]
    assert reader.skipped == 2 and reader.skip_reasons == {"duplicate": 2}
    assert "00001.tar" in caplog.text and "clip id 'c' read before in this shard" in caplog.text


class DyingStream(ClipStream):
    """Its DataLoader worker exits while decoding batch ``die_at``: once (``marker`` written first) or always."""

    def __init__(self, *args, die_at: int, marker: str | None = None, **kw) -> None:
        super().__init__(*args, **kw)
        self.die_at, self.marker = die_at, marker

    def decode_batch(self, index, records):
        if index == self.die_at and (self.marker is None or not os.path.exists(self.marker)):
            if self.marker is not None:
                Path(self.marker).touch()
            os._exit(1)
        return super().decode_batch(index, records)


def test_a_dead_worker_is_restarted_where_it_stopped_or_named_with_its_shard(wds_world, tmp_path):
    pool = wds_world / "pool"
    expected = [b["clip_id"] for b in loader(make_stream(pool))]
    once = make_stream(pool, DyingStream, die_at=3, marker=str(tmp_path / "died"))
    got = [b["clip_id"] for b in batches_with_restarts(lambda s: loader(once, s, workers=2), 0, retries=1, rank=0)]
    assert got == expected and (tmp_path / "died").exists()

    always = make_stream(pool, DyingStream, die_at=0)
    with pytest.raises(DataLoadingError, match=r"rank 0, batches 0-1 \(reading \S*/00000\.tar\).*1 time"):
        list(batches_with_restarts(lambda s: loader(always, s, workers=2), 0, retries=0, rank=0))
