import json
import pickle

import pytest

from datamodules.annotation_sources import open_source
from datamodules.caption_index import snapshot_stored_clips
from datamodules.clip_datamodule import StoredClips
from datamodules.annotation_store import (
    AnnotationFormatError,
    JsonlRecordReader,
    RoundReader,
    ShardWriter,
    read_manifest,
    round_dir,
    write_manifest,
)


def record(i: int, caption: str = "a red ball moves left") -> dict:
    return {
        "clip_id": f"vid{i // 4:03d}_{i % 4:03d}",
        "video_path": f"videos/vid{i // 4:03d}.mp4",
        "start": 2.0 * (i % 4),
        "end": 2.0 * (i % 4) + 2.0,
        "asr": "so now we move it",
        "caption": caption,
        "round": 1,
        "source": "test",
    }


def test_round_written_by_two_shards_reads_back_in_order(tmp_path):
    rdir = round_dir(tmp_path, 1)
    for part in range(2):
        with ShardWriter(rdir, part) as w:
            for i in range(part * 5, part * 5 + 5):
                assert w.write(record(i))
    manifest = write_manifest(rdir, 1, failures=0, model="tiny")
    assert manifest["records"] == 10 and manifest["parts"] == ["part-00000.jsonl", "part-00001.jsonl"]
    assert read_manifest(rdir)["model"] == "tiny"
    ids = [r["clip_id"] for r in RoundReader(rdir)]
    assert ids == [record(i)["clip_id"] for i in range(10)]
    assert rdir.name == "round_001" and rdir.parent.name == "annotations"


def test_interrupted_writer_resumes_without_loss_or_duplicates(tmp_path):
    rdir = round_dir(tmp_path, 2)
    w = ShardWriter(rdir, 0, sync_every=1)
    for i in range(6):
        w.write(record(i))
    w.close()  # "crash": never finished
    # A torn line, as a kill in the middle of a write leaves it.
    with open(w.partial, "ab") as f:
        f.write(b'{"clip_id": "vid001_003", "video_pa')
    assert not w.path.exists(), "an unfinished shard must not appear under its final name"

    w2 = ShardWriter(rdir, 0)
    assert len(w2.done_ids) == 6
    written = [w2.write(record(i)) for i in range(10)]
    assert written == [False] * 6 + [True] * 4
    w2.finish()
    write_manifest(rdir, 2)
    ids = [r["clip_id"] for r in RoundReader(rdir)]
    assert sorted(ids) == sorted(record(i)["clip_id"] for i in range(10))
    assert len(ids) == len(set(ids))


def test_a_reopened_partial_shard_gives_its_last_clip_ids_from_the_same_read(tmp_path, count_reads):
    rdir = round_dir(tmp_path, 1)
    w = ShardWriter(rdir, 0, sync_every=1)
    for i in range(6):
        w.write(record(i))
    w.close()
    with open(w.partial, "ab") as f:
        f.write(b'{"clip_id": "torn')  # cut off, not a record
    reads = count_reads(w.partial)
    again = ShardWriter(rdir, 0, track_ids=False, keep_tail=4)
    assert again.count == 6 and again.tail_ids == [record(i)["clip_id"] for i in range(2, 6)]
    assert reads == ["rb", "r+b"]  # one read, then the torn tail is cut
    again.close()
    assert ShardWriter(rdir, 0).tail_ids == []  # not asked for


def test_finished_shard_is_not_rewritten(tmp_path):
    rdir = round_dir(tmp_path, 0)
    with ShardWriter(rdir, 0) as w:
        w.write(record(0))
    again = ShardWriter(rdir, 0)
    assert again.finished and record(0)["clip_id"] in again
    assert again.write(record(0)) is False
    with pytest.raises(RuntimeError, match="already finished"):
        again.write(record(1))


def test_manifest_refuses_unfinished_shards(tmp_path):
    rdir = round_dir(tmp_path, 0)
    w = ShardWriter(rdir, 3)
    w.write(record(0))
    w.close()
    with pytest.raises(RuntimeError, match="part-00003.jsonl.partial"):
        write_manifest(rdir, 0)


def test_round_without_manifest_is_a_clear_error(tmp_path):
    rdir = round_dir(tmp_path, 4)
    with ShardWriter(rdir, 0) as w:
        w.write(record(0))
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        RoundReader(rdir)


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json}", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({k: v for k, v in record(0).items() if k != "caption"}), "lacks field.*caption"),
        (json.dumps({**record(0), "start": "zero"}), "'start' must be a number"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "records.jsonl"
    path.write_text(json.dumps(record(0)) + "\n" + line + "\n" + json.dumps(record(1)) + "\n")
    with pytest.raises(AnnotationFormatError, match=rf"records.jsonl:2: .*{message}"):
        list(JsonlRecordReader([path]))


def test_truncated_final_line_and_oversized_line_are_counted_skips(tmp_path):
    path = tmp_path / "records.jsonl"
    huge = json.dumps(record(1, caption="x" * 5000))
    path.write_text(json.dumps(record(0)) + "\n" + huge + "\n" + json.dumps(record(2)) + "\n" + '{"clip_id": "vid9')
    reader = JsonlRecordReader([path], max_line_bytes=1000)
    ids = [r["clip_id"] for r in reader]
    assert ids == [record(0)["clip_id"], record(2)["clip_id"]]
    assert reader.skipped == 2


def test_non_utf8_line_is_a_clear_error(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_bytes(json.dumps(record(0)).encode() + b"\n" + b'{"clip_id": "\xff\xfe"}\n')
    with pytest.raises(AnnotationFormatError, match="records.jsonl:2: not valid UTF-8"):
        list(JsonlRecordReader([path]))


def test_reader_streams_without_reading_the_whole_file(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text(json.dumps(record(0)) + "\n" + "garbage that would fail\n")
    first = next(iter(JsonlRecordReader([path])))  # the bad second line is not touched yet
    assert first["clip_id"] == record(0)["clip_id"]


def test_asr_pool_reader_skips_empty_and_non_utf8_transcripts(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    raw = (
        b'{"vidA": {"start": [0, 2, 4, 6], "end": [2, 4, 6, 8], '
        b'"text": ["hello and welcome", "", "caf\xe9 in latin-1", "  now   we slide it left "]}}'
    )
    (pool / "asr.json").write_bytes(raw)
    source = open_source(pool)
    records = list(source)
    assert [r["clip_id"] for r in records] == ["vidA_000", "vidA_003"]
    assert records[1]["caption"] == "now we slide it left" and records[1]["video_path"] == "videos/vidA.mp4"
    assert records[1]["start"] == 6.0 and records[1]["round"] == -1 and records[1]["source"] == "asr"
    assert source.skipped == 2
    assert source.video_root == pool


def test_asr_pool_reader_keeps_the_first_entry_of_a_repeated_video(tmp_path, caplog):
    path = tmp_path / "asr.json"  # JSON allows a key twice; a second entry would repeat vidA's clip ids
    path.write_text('{"vidA": {"start": [0], "end": [2], "text": ["first"]},\n'
                    ' "vidB": {"start": [0], "end": [1], "text": ["other"]},\n'
                    ' "vidA": {"start": [5, 7], "end": [7], "text": ["again", "not even well formed"]}}')
    source = open_source(path)
    with caplog.at_level("WARNING"):
        records = list(source)
    assert [(r["clip_id"], r["asr"]) for r in records] == [("vidA_000", "first"), ("vidB_000", "other")]
    assert source.duplicate_videos == 1 and source.skipped == 0
    assert "asr.json: video 'vidA' skipped" in caplog.text
    assert [r["clip_id"] for r in source] == ["vidA_000", "vidB_000"]  # a second pass sees it afresh


def test_asr_pool_with_mismatched_lists_names_the_video(tmp_path):
    path = tmp_path / "asr.json"
    path.write_text(json.dumps({"vidB": {"start": [0, 1], "end": [1], "text": ["a", "b"]}}))
    with pytest.raises(AnnotationFormatError, match="asr.json: video 'vidB' has 2 starts, 1 ends"):
        list(open_source(path))


def test_open_source_rejects_unknown_paths(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_source(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="not an annotation source"):
        open_source(tmp_path / "notes.txt")


def test_the_stored_clips_snapshot_holds_finished_and_partial_shards_but_not_a_torn_line(tmp_path):
    round_path = tmp_path / "round_000"
    with ShardWriter(round_path, 0) as finished:
        finished.write(record(0))
    unfinished = ShardWriter(round_path, 1)
    unfinished.write(record(1))
    unfinished.close()
    with open(unfinished.partial, "a") as f:
        f.write(json.dumps(record(2))[:20])  # killed mid-line
    index = snapshot_stored_clips(round_path, round_path / ".stored.sqlite")
    done = pickle.loads(pickle.dumps(StoredClips(index)))  # as a DataLoader worker gets it
    assert record(0)["clip_id"] in done and record(1)["clip_id"] in done
    assert record(2)["clip_id"] not in done  # the torn record is done again

    later = ShardWriter(round_path, 2)
    later.write(record(3))  # written after the snapshot: a snapshot does not move
    later.close()
    assert record(3)["clip_id"] not in done
    assert record(3)["clip_id"] in StoredClips(snapshot_stored_clips(round_path, round_path / ".stored.sqlite"))


def test_a_missing_round_folder_has_no_stored_clips(tmp_path):
    assert "any" not in StoredClips(snapshot_stored_clips(tmp_path / "round_000", tmp_path / "stored.sqlite"))
