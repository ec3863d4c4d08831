"""The streamed reader of one large JSON object (HowTo100M's transcript file)."""

import json
import random

import pytest

from datamodules import json_object_stream
from datamodules.annotation_sources import open_source
from datamodules.annotation_store import AnnotationFormatError
from datamodules.json_object_stream import iter_json_object


def sample_object(n: int = 200) -> dict:
    rng = random.Random(0)
    return {
        f"vid{i}": {
            "start": [rng.random(), 2.5], "end": [1e5 * rng.random(), -1.5e-7],
            "text": ['caf\u00e9 "quoted" \\ ' * rng.randint(0, 20), "ok"], "flags": [True, False, None], "n": 12345678,
        }
        for i in range(n)
    } | {"last": 123456}


@pytest.mark.parametrize("indent", [None, 2])
@pytest.mark.parametrize("chunk_chars", [1, 7, 64, 1 << 20])
def test_members_equal_a_whole_file_parse_at_any_chunk_size(tmp_path, indent, chunk_chars):
    data = sample_object()
    path = tmp_path / "asr.json"
    path.write_text(json.dumps(data, indent=indent, ensure_ascii=False), encoding="utf-8")
    members = list(iter_json_object(path, chunk_chars))
    assert [k for k, _ in members] == list(data)  # file order, each once
    assert dict(members) == data


def test_an_empty_object_has_no_members(tmp_path):
    path = tmp_path / "asr.json"
    path.write_text(" {\n}\n")
    assert list(iter_json_object(path, 1)) == []


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"a": 1,\n "b": [1,, 2]}', r":2: not valid JSON"),
        ('[{"a": 1}]', r":1: expected a JSON object"),
        ("", r":1: expected a JSON object"),
        ('{"a": 1} trailing', r":1: unexpected text after the top-level object"),
        ('{"a" 1}', r":1: expected ':', found '1'"),
        ('{"a": 1,\n\n', r":3: expected a string key"),
        ('{"a": {"b": 1}\n,\n"c": tru}', r":3: not valid JSON"),
        ('{"a": 1', r":1: expected ',' or '}', found end of file"),
    ],
)
def test_syntax_errors_name_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "asr.json"
    path.write_text(text)
    with pytest.raises(AnnotationFormatError, match=f"asr.json{message}"):
        list(iter_json_object(path, 3))


def test_an_early_error_is_reported_without_reading_the_rest(tmp_path, monkeypatch):
    path = tmp_path / "asr.json"
    path.write_text('{"a": [1,, 2], ' + ", ".join(f'"k{i}": {i}' for i in range(100_000)) + "}")
    reads = []
    refill = json_object_stream._Buffer.refill
    monkeypatch.setattr(json_object_stream._Buffer, "refill", lambda self: reads.append(1) or refill(self))
    with pytest.raises(AnnotationFormatError, match=":1: not valid JSON"):
        list(iter_json_object(path, 256))
    assert len(reads) <= 3  # the file is ~1.3 MB: 5,000 chunks of 256 characters


def test_the_asr_pool_yields_clips_before_it_reaches_a_later_broken_video(tmp_path):
    path = tmp_path / "asr.json"
    path.write_text('{"vidA": {"start": [0], "end": [2], "text": ["hello"]},\n "vidB": {"start": [0], oops}}')
    clips = iter(open_source(path))
    assert next(clips)["clip_id"] == "vidA_000"
    with pytest.raises(AnnotationFormatError, match="asr.json:2: not valid JSON"):
        next(clips)
