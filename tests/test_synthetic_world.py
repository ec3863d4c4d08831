"""The synthetic world generator: formats, determinism, the noise model and the lexicon."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from datamodules.records import RECORD_FIELDS, make_clip_id
from datamodules.synthetic_world import generate as generate_module
from datamodules.synthetic_world import generate_world
from datamodules.synthetic_world.__main__ import main
from datamodules.synthetic_world.asr_noise import (
    COLOR_SWAP, IMPERATIVES, MOTION_DERANGEMENT, OPENERS, THIRD_PERSON, UNRELATED, WITH_MOTION,
    WITHOUT_MOTION, video_asr,
)
from datamodules.synthetic_world.captions import MOTION_PHRASES, SCENE_PHRASES
from datamodules.synthetic_world.lexicon import (
    ATTRIBUTES, MISHEARINGS, SYNONYMS, VALUES, attributes_mentioned, tokenize,
)
from datamodules.synthetic_world.spec import rng_for, sample_video

REPO = Path(__file__).resolve().parents[1]
SEED = 3
TINY = dict(foundation_images=20, msrvtt_train=6, msrvtt_test=4, msvd_videos=6)
NO_DOWNSTREAM = dict(foundation_images=0, msrvtt_train=0, msrvtt_test=0, msvd_videos=0)
ANNOTATION_SUFFIXES = {".json", ".jsonl", ".csv", ".txt"}


def annotation_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.suffix in ANNOTATION_SUFFIXES}


def has_mishearing(text: str) -> bool:
    padded = f" {' '.join(tokenize(text))} "
    return any(f" {form} " in padded for forms in MISHEARINGS.values() for form in forms)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def frame_count(path: Path) -> tuple[int, int, int, str]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(video=0))
        return len(frames), frames[0].width, frames[0].height, stream.codec_context.name


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("worlds") / "world"
    generate_world(out, 6, SEED, noise_rate=0.5, workers=2, **TINY)
    return out


@pytest.fixture(scope="module")
def ground_truth(world) -> list[dict]:
    return read_jsonl(world / "ground_truth.jsonl")


@pytest.fixture(scope="module")
def clean_world(tmp_path_factory) -> Path:
    """Same seed as ``world`` but no ASR noise and more videos (the first six are shared)."""
    out = tmp_path_factory.mktemp("worlds") / "clean"
    generate_world(out, 30, SEED, noise_rate=0.0, workers=1, **NO_DOWNSTREAM)
    return out


# ----------------------------------------------------------------------------- layout, formats

def test_layout_and_world_json(world):
    for rel in ("world.json", "ground_truth.jsonl", "pool/asr.json", "pool/human_refined.jsonl",
                "foundation/captions.jsonl", "msrvtt/MSRVTT_data.json",
                "msrvtt/MSRVTT_train.9k.csv", "msrvtt/MSRVTT_JSFUSION_test.csv",
                "msvd_qa/train_qa.json", "msvd_qa/val_qa.json", "msvd_qa/test_qa.json",
                "msvd_qa/youtube_mapping.txt"):
        assert (world / rel).is_file(), rel
    info = json.loads((world / "world.json").read_text())
    assert info["seed"] == SEED and info["num_videos"] == 6
    assert info["noise"]["dist"] == "uniform" and info["noise"]["rate"] == 0.5
    assert info["video"] == {"size": 64, "fps": 8, "segments_per_video": [3, 5],
                             "segment_seconds": [1.5, 2.5]}
    assert info["counts"]["pool_videos"] == 6
    assert sum(info["noise"]["counts"].values()) == info["counts"]["pool_clips"]
    assert not list(world.parent.glob(".*partial*"))


def test_asr_json_howto100m_format(world, ground_truth):
    asr = json.loads((world / "pool" / "asr.json").read_text())
    assert sorted(asr) == [f"pool_{i:05d}" for i in range(6)]
    pool_rows = [r for r in ground_truth if r["split"] == "pool"]
    for video_id, entry in asr.items():
        assert set(entry) == {"start", "end", "text"}
        starts, ends, texts = entry["start"], entry["end"], entry["text"]
        assert 3 <= len(starts) == len(ends) == len(texts) <= 5
        assert all(e > s for s, e in zip(starts, ends))
        assert all(1.5 - 1e-9 <= e - s <= 2.5 + 1e-9 for s, e in zip(starts, ends))
        assert starts == sorted(starts) and ends == sorted(ends)
        assert all(b >= a for a, b in zip(ends, starts[1:]))
        assert all(isinstance(t, str) and t == t.lower() and t.strip() for t in texts)
        rows = [r for r in pool_rows if r["video_id"] == video_id]
        clip_ids = [make_clip_id(video_id, k) for k in range(len(texts))]
        assert [r["clip_id"] for r in rows] == clip_ids
        assert [r["start"] for r in rows] == starts and [r["end"] for r in rows] == ends


def test_pool_videos_decode_with_pyav(world):
    asr = json.loads((world / "pool" / "asr.json").read_text())
    for video_id, entry in asr.items():
        n, width, height, codec = frame_count(world / "pool" / "videos" / f"{video_id}.mp4")
        assert codec == "h264" and (width, height) == (64, 64)
        assert n == round(entry["end"][-1] * 8)


def test_motion_is_visible():
    """The drawn object really moves (centroid) or changes size (area) the way its label says."""
    from datamodules.synthetic_world.render import render_background, render_segment
    from datamodules.synthetic_world.spec import sample_clip
    checked = set()
    for i in range(80):
        segment = sample_clip(rng_for(99, 0, i, 0), 8, two_objects=0.0)
        frames = render_segment(segment, 64).astype(float)
        background = render_background(segment.scene, 64, segment.background_seed)
        masks = np.abs(frames - background).max(-1) > 40
        ys, xs = np.nonzero(masks[0])
        ye, xe = np.nonzero(masks[-1])
        dx, dy = xe.mean() - xs.mean(), ye.mean() - ys.mean()
        growth = masks[-1].sum() / masks[0].sum()
        motion = segment.objects[0].motion
        expected = {"left": dx < -15, "right": dx > 15, "up": dy < -15, "down": dy > 15,
                    "grows": growth > 2, "shrinks": growth < 0.5,
                    "stays": abs(dx) < 1 and abs(dy) < 1 and abs(growth - 1) < 0.05}
        assert expected[motion], (motion, dx, dy, growth)
        checked.add(motion)
    assert len(checked) == 7


def test_msrvtt_files(world, ground_truth):
    root = world / "msrvtt"
    data = json.loads((root / "MSRVTT_data.json").read_text())
    assert set(data) == {"info", "videos", "sentences"}
    videos = data["videos"]
    assert len(videos) == 10
    for v in videos:
        assert set(v) == {"category", "url", "video_id", "start time", "end time", "split", "id"}
        assert v["video_id"] == f"video{v['id']}" and isinstance(v["category"], int)
        assert v["split"] in {"train", "validate", "test"} and v["end time"] > v["start time"]
        n, width, height, codec = frame_count(root / "videos" / "all" / f"{v['video_id']}.mp4")
        assert (width, height, codec) == (64, 64, "h264") and 12 <= n <= 20
    per_video = {}
    for s in data["sentences"]:
        assert set(s) == {"caption", "video_id", "sen_id"}
        per_video.setdefault(s["video_id"], []).append(s["caption"])
    assert all(len(c) == 20 for c in per_video.values()) and len(per_video) == 10
    assert len({s["sen_id"] for s in data["sentences"]}) == 200

    with open(root / "MSRVTT_train.9k.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["video_id"]
    train_ids = [r[0] for r in rows[1:]]
    assert train_ids == [v["video_id"] for v in videos if v["split"] in ("train", "validate")]
    assert len(train_ids) == 6

    with open(root / "MSRVTT_JSFUSION_test.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["", "key", "vid_key", "video_id", "sentence"]
    test_ids = [v["video_id"] for v in videos if v["split"] == "test"]
    assert [r[3] for r in rows[1:]] == test_ids
    for i, (index, key, vid_key, video_id, sentence) in enumerate(rows[1:]):
        assert index == str(i) and key == f"ret{i}" and vid_key == "msr" + video_id[len("video"):]
        assert sentence in per_video[video_id]
    assert not set(train_ids) & set(test_ids)


def test_msvd_qa_files(world):
    root = world / "msvd_qa"
    mapping = dict(reversed(line.split(" ")) for line in
                   (root / "youtube_mapping.txt").read_text().splitlines())
    assert sorted(mapping) == sorted(f"vid{i}" for i in range(1, 7))
    splits = {s: json.loads((root / f"{s}_qa.json").read_text()) for s in ("train", "val", "test")}
    video_split, ids, answers = {}, [], set()
    for split, rows in splits.items():
        assert isinstance(rows, list) and rows
        for row in rows:
            assert set(row) == {"answer", "id", "question", "video_id"}
            assert isinstance(row["video_id"], int) and 1 <= row["video_id"] <= 6
            assert video_split.setdefault(row["video_id"], split) == split
            assert len(row["answer"].split()) == 1 and row["question"].endswith("?")
            ids.append(row["id"])
            answers.add(row["answer"])
    assert len(ids) == len(set(ids)) and len(video_split) == 6
    # every question family is present: colour, shape, motion, count, scene
    families = (VALUES["color"], VALUES["shape"], VALUES["motion"], ("one", "two"), VALUES["scene"])
    for values in families:
        assert answers & set(values)
    for name in mapping.values():
        n, width, height, codec = frame_count(root / "YouTubeClips" / f"{name}.avi")
        assert (width, height, codec) == (64, 64, "mpeg4") and 12 <= n <= 20


def test_videos_decode_with_decord(world):
    decord = pytest.importorskip("decord")
    name = (world / "msvd_qa" / "youtube_mapping.txt").read_text().split()[0]
    for path in (world / "msvd_qa" / "YouTubeClips" / f"{name}.avi",
                 world / "pool" / "videos" / "pool_00000.mp4"):
        reader = decord.VideoReader(str(path))
        assert len(reader) == frame_count(path)[0]
        assert reader[len(reader) - 1].shape == (64, 64, 3)


def test_human_refined_records(world, ground_truth):
    records = read_jsonl(world / "pool" / "human_refined.jsonl")
    asr = json.loads((world / "pool" / "asr.json").read_text())
    by_clip = {r["clip_id"]: r for r in ground_truth}
    assert len(records) == max(1, round(0.05 * sum(r["split"] == "pool" for r in ground_truth)))
    for record in records:
        assert tuple(sorted(record)) == tuple(sorted(RECORD_FIELDS))
        assert record["round"] == -1 and record["source"] == "human"
        truth = by_clip[record["clip_id"]]
        assert truth["split"] == "pool" and record["caption"] == truth["caption"]
        assert record["video_path"] == f"videos/{truth['video_id']}.mp4"
        assert (world / "pool" / record["video_path"]).is_file()
        k = int(record["clip_id"].rsplit("_", 1)[1])
        assert record["asr"] == asr[truth["video_id"]]["text"][k]


def test_ground_truth_covers_every_split(world, ground_truth):
    keys = {"clip_id", "video_id", "split", "start", "end", "scene", "objects", "caption",
            "asr_noise"}
    assert all(set(r) == keys for r in ground_truth)
    assert len({r["clip_id"] for r in ground_truth}) == len(ground_truth)
    counts = {s: sum(r["split"] == s for r in ground_truth) for s in ("pool", "msrvtt", "msvd")}
    assert counts["msrvtt"] == 10 and counts["msvd"] == 6 and counts["pool"] >= 18
    for r in ground_truth:
        assert 1 <= len(r["objects"]) <= 2 and r["end"] > r["start"]
        for obj in r["objects"]:
            assert set(obj) == {"shape", "color", "size", "motion"}
            assert all(obj[a] in VALUES[a] for a in obj)
        if len(r["objects"]) == 2:
            assert r["objects"][0]["shape"] != r["objects"][1]["shape"]
    pool_videos = {r["video_id"] for r in ground_truth if r["split"] == "pool"}
    other_videos = {r["video_id"] for r in ground_truth if r["split"] != "pool"}
    assert not pool_videos & other_videos


def test_neighbouring_segments_differ(ground_truth):
    pool = [r for r in ground_truth if r["split"] == "pool"]
    for a, b in zip(pool, pool[1:]):
        if a["video_id"] == b["video_id"]:
            assert a["objects"][0]["shape"] != b["objects"][0]["shape"]
            assert a["objects"][0]["motion"] != b["objects"][0]["motion"]


def test_foundation_captions_are_static(world):
    rows = read_jsonl(world / "foundation" / "captions.jsonl")
    assert len(rows) == 20
    from PIL import Image
    for row in rows:
        assert set(row) == {"image", "caption"}
        with Image.open(world / "foundation" / row["image"]) as image:
            assert image.size == (64, 64) and image.format == "PNG"
        mentioned = attributes_mentioned(row["caption"])
        assert not mentioned["motion"], row["caption"]
        assert mentioned["shape"] and mentioned["color"]
        assert not {"left", "right", "top", "bottom", "up", "down"} & set(tokenize(row["caption"]))


# ----------------------------------------------------------------------------- determinism

def test_same_seed_same_bytes_regardless_of_workers(world, tmp_path):
    """Every file, videos and images included: the encoder must not vary from process to process
    (x264's CRF rate control did, one video in a few generations)."""
    twin = tmp_path / "twin"
    generate_world(twin, 6, SEED, noise_rate=0.5, workers=1, **TINY)
    assert annotation_bytes(twin) == annotation_bytes(world)
    media = [p.relative_to(world) for p in sorted(world.rglob("*")) if p.suffix in {".mp4", ".avi", ".png"}]
    assert len(media) > 30 and sorted(p.relative_to(twin) for p in twin.rglob("*") if p.suffix in {
        ".mp4", ".avi", ".png"}) == media
    for name in media:
        assert (twin / name).read_bytes() == (world / name).read_bytes(), name


def test_different_seed_differs(world, tmp_path):
    other = tmp_path / "other"
    generate_world(other, 6, SEED + 1, noise_rate=0.5, workers=1, **TINY)
    a, b = annotation_bytes(world), annotation_bytes(other)
    assert a.keys() == b.keys()
    for name in ("pool/asr.json", "ground_truth.jsonl", "msrvtt/MSRVTT_data.json",
                 "msvd_qa/train_qa.json", "foundation/captions.jsonl"):
        assert a[name] != b[name], name


def test_noise_settings_do_not_change_the_pictures(world, clean_world, ground_truth):
    """Same seed: the shared pool videos, their truth and their clean speech are identical."""
    clean_truth = {r["clip_id"]: r for r in read_jsonl(clean_world / "ground_truth.jsonl")}
    noisy_asr = json.loads((world / "pool" / "asr.json").read_text())
    clean_asr = json.loads((clean_world / "pool" / "asr.json").read_text())
    for row in (r for r in ground_truth if r["split"] == "pool"):
        other = clean_truth[row["clip_id"]]
        assert {**row, "asr_noise": None} == {**other, "asr_noise": None}
        k = int(row["clip_id"].rsplit("_", 1)[1])
        if row["asr_noise"] == "clean":
            assert noisy_asr[row["video_id"]]["text"][k] == clean_asr[row["video_id"]]["text"][k]
    for i in range(6):
        name = f"pool/videos/pool_{i:05d}.mp4"
        assert (world / name).read_bytes() == (clean_world / name).read_bytes()


# ----------------------------------------------------------------------------- the noise model

def test_zero_noise_rate_speech_is_relevant(clean_world):
    truth = read_jsonl(clean_world / "ground_truth.jsonl")
    asr = json.loads((clean_world / "pool" / "asr.json").read_text())
    assert {r["asr_noise"] for r in truth} == {"clean"}
    for row in truth:
        text = asr[row["video_id"]]["text"][int(row["clip_id"].rsplit("_", 1)[1])]
        mentioned = attributes_mentioned(text)
        true_shapes = {o["shape"] for o in row["objects"]}
        assert row["objects"][0]["shape"] in mentioned["shape"], (text, row)
        assert mentioned["shape"] <= true_shapes, (text, row)
        assert mentioned["motion"] <= {o["motion"] for o in row["objects"]}, (text, row)
        assert mentioned["color"] <= {o["color"] for o in row["objects"]}, (text, row)
        assert not has_mishearing(text), text
        assert text not in UNRELATED


def test_noise_rate_matches_and_kinds_behave(tmp_path):
    out = tmp_path / "noisy"
    generate_world(out, 60, 11, noise_rate=0.3, workers=1, **NO_DOWNSTREAM)
    truth = read_jsonl(out / "ground_truth.jsonl")
    asr = json.loads((out / "pool" / "asr.json").read_text())
    noisy = [r["asr_noise"] != "clean" for r in truth]
    assert len(noisy) >= 180
    assert abs(np.mean(noisy) - 0.3) < 0.1
    by_video: dict[str, list[dict]] = {}
    for r in truth:
        by_video.setdefault(r["video_id"], []).append(r)
    seen = set()
    for video_id, rows in by_video.items():
        for k, row in enumerate(rows):
            text, kind = asr[video_id]["text"][k], row["asr_noise"]
            mentioned = attributes_mentioned(text)
            seen.add(kind)
            if kind == "unrelated":
                assert not any(mentioned.values()), text
            elif kind == "misaligned":
                neighbours = {rows[j]["objects"][0]["shape"] for j in (k - 1, k + 1)
                              if 0 <= j < len(rows)}
                assert mentioned["shape"] & neighbours, text
                assert row["objects"][0]["shape"] not in mentioned["shape"], text
            elif kind == "misrecognised":
                assert has_mishearing(text), text
    assert seen == {"clean", "misrecognised", "misaligned", "unrelated"}


def _many_videos(n=400, seed=5):
    return [sample_video(rng_for(seed, 0, i, 0), 8) for i in range(n)]


def _asr_of(videos, dist, rate, seed=5):
    out = []
    for i, segments in enumerate(videos):
        texts, kinds = video_asr(rng_for(seed, 0, i, 2),
                                 [rng_for(seed, 0, i, 3, k) for k in range(len(segments))],
                                 segments, dist, rate)
        out.append((segments, texts, kinds))
    return out


def test_bursty_noise_is_heavy_tailed_with_the_requested_mean():
    videos = _many_videos()

    def rates(dist):
        return [np.mean([k != "clean" for k in kinds])
                for _, _, kinds in _asr_of(videos, dist, 0.4)]

    uniform, bursty = rates("uniform"), rates("bursty")
    assert abs(np.mean(bursty) - 0.4) < 0.08
    assert np.std(bursty) > 1.4 * np.std(uniform)
    extreme = {name: np.mean([r in (0.0, 1.0) for r in values])
               for name, values in (("uniform", uniform), ("bursty", bursty))}
    assert extreme["bursty"] > 2 * extreme["uniform"]


def test_structured_noise_swaps_systematically():
    results = _asr_of(_many_videos(200), "structured", 0.5)
    swapped_videos = 0
    for segments, texts, kinds in results:
        assert len(set(kinds)) == 1 and kinds[0] in ("clean", "swapped")
        if kinds[0] == "clean":
            continue
        swapped_videos += 1
        said = [attributes_mentioned(text) for text in texts]
        firsts = [segment.objects[0] for segment in segments]
        motion_rule = all(MOTION_DERANGEMENT[o.motion] in m["motion"] for o, m in zip(firsts, said))
        color_rule = all(COLOR_SWAP[o.color] in m["color"] for o, m in zip(firsts, said))
        assert motion_rule != color_rule, texts  # one speaker, one rule, on every segment
        assert all(o.shape in m["shape"] for o, m in zip(firsts, said))
    assert 60 < swapped_videos < 140


# ----------------------------------------------------------------------------- lexicon

def test_clean_captions_round_trip_through_the_lexicon(ground_truth, world):
    data = json.loads((world / "msrvtt" / "MSRVTT_data.json").read_text())
    captions = [(r["caption"], r) for r in ground_truth]
    truth_by_video = {r["video_id"]: r for r in ground_truth if r["split"] == "msrvtt"}
    captions += [(s["caption"], truth_by_video[s["video_id"]]) for s in data["sentences"]]
    for caption, row in captions:
        mentioned = attributes_mentioned(caption)
        for attribute in ("shape", "color", "motion"):
            assert mentioned[attribute] == {o[attribute] for o in row["objects"]}, (caption, row)
        assert mentioned["size"] <= {o["size"] for o in row["objects"]}, caption
        assert mentioned["scene"] <= {row["scene"]}, caption


def test_lexicon_recognises_every_phrase_and_no_mishearing():
    for attribute, values in SYNONYMS.items():
        for value, phrases in values.items():
            for phrase in phrases:
                assert attributes_mentioned(f"the {phrase} here")[attribute] == {value}, phrase
    for motion, phrases in MOTION_PHRASES.items():
        for phrase in phrases:
            found = attributes_mentioned(phrase)
            assert found["motion"] == {motion} and not found["size"], phrase
    for motion, forms in {**IMPERATIVES}.items():
        for form in forms + THIRD_PERSON[motion]:
            assert attributes_mentioned(form.format(x="it"))["motion"] == {motion}, form
    for scene, phrases in SCENE_PHRASES.items():
        for phrase in phrases:
            found = attributes_mentioned(phrase)
            assert found["scene"] == {scene} and not found["motion"], phrase
    for word, forms in MISHEARINGS.items():
        assert any(word in tokenize(p) for v in SYNONYMS.values() for ps in v.values() for p in ps)
        for form in forms:
            assert not any(attributes_mentioned(form).values()), form
    for sentence in UNRELATED:
        assert not any(attributes_mentioned(sentence).values()), sentence
    clean_banks = [*MOTION_PHRASES.values(), *SCENE_PHRASES.values(), *IMPERATIVES.values(),
                   *THIRD_PERSON.values(), OPENERS, WITH_MOTION, WITHOUT_MOTION]
    for bank in clean_banks:
        for phrase in bank:
            assert not has_mishearing(phrase.format(x="it", o="", imp="", vp="")), phrase


def test_attributes_mentioned_examples():
    found = attributes_mentioned("Now we SLIDE this little ball to the left, on the beach!")
    assert found == {"shape": {"circle"}, "color": set(), "motion": {"left"},
                     "scene": {"beach"}, "size": {"small"}}
    assert not any(attributes_mentioned("i read that he blew it so write it").values())
    assert attributes_mentioned("red blue right")["color"] == {"red", "blue"}
    assert attributes_mentioned("it does not move")["motion"] == {"stays"}
    assert attributes_mentioned("it does not")["motion"] == set()
    assert attributes_mentioned("under the sea")["scene"] == {"underwater"}
    assert attributes_mentioned("the sea")["scene"] == set()
    assert set(attributes_mentioned("")) == set(ATTRIBUTES)


def test_lexicon_imports_without_heavy_packages():
    code = ("import sys; import datamodules.synthetic_world.lexicon; "
            "bad = {'torch', 'numpy', 'av', 'PIL'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# ----------------------------------------------------------------------------- CLI, safety

def test_cli_help_documents_every_option():
    result = subprocess.run([sys.executable, "-m", "datamodules.synthetic_world", "--help"],
                            cwd=REPO, capture_output=True, text=True, check=True)
    for option in ("--out", "--num-videos", "--seed", "--noise-dist", "--noise-rate",
                   "--noise-mix", "--human-fraction", "--foundation-images", "--msrvtt-train",
                   "--msrvtt-test", "--msrvtt-videos", "--msvd-videos", "--size", "--fps",
                   "--workers", "--overwrite", "uniform", "bursty", "structured"):
        assert option in result.stdout, option


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as error:
        main(["--out", str(tmp_path / "w"), "--num-videos", "2", "--seed", "0",
              "--noise-dist", "gaussian"])
    assert error.value.code == 2
    assert "invalid choice: 'gaussian'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as error:
        main(["--out", str(tmp_path / "w"), "--num-videos", "2", "--seed", "0",
              "--noise-rate", "1.5"])
    assert error.value.code == 2
    assert not (tmp_path / "w").exists()


def test_cli_refuses_a_finished_world_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "w"
    args = ["--out", str(out), "--num-videos", "1", "--seed", "0", "--quiet", "--workers", "0",
            "--foundation-images", "0", "--msrvtt-train", "0", "--msrvtt-test", "0",
            "--msvd-videos", "0"]
    assert main(args) == 0
    first = (out / "pool" / "asr.json").read_bytes()
    with pytest.raises(SystemExit) as error:
        main(args[:5] + ["1"] + args[6:])
    assert error.value.code == 2 and "finished synthetic world" in capsys.readouterr().err
    assert (out / "pool" / "asr.json").read_bytes() == first
    assert main(args[:5] + ["1"] + args[6:] + ["--overwrite"]) == 0
    assert (out / "pool" / "asr.json").read_bytes() != first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_crash_leaves_no_world(tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(generate_module, "_render_all", explode)
    with pytest.raises(RuntimeError):
        generate_world(tmp_path / "w", 1, 0, workers=0, **NO_DOWNSTREAM)
    assert list(tmp_path.iterdir()) == []
