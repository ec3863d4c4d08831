"""Video-text similarity in the dataset report, from a tiny dual-encoder checkpoint trained here."""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from datamodules.annotation_store import ShardWriter, round_dir, write_manifest
from datamodules.asr_pool import AsrPoolReader
from datamodules.video_reader import read_clip
from datamodules.video_transforms import build_video_transform
from evaluation.dataset_report import build_report, main
from evaluation.video_text_similarity import similarity_from_checkpoint
from lightning_modules.dual_encoder import DualEncoder
from train import cli_main

ROOT = Path(__file__).resolve().parents[1]
NUM_FRAMES = 4


@pytest.fixture(scope="module")
def pretrain_dir(tiny_world, tmp_path_factory):
    """Four pretraining steps of the real recipe on the tiny pool (tiny BERT, 4 frames): one epoch
    of 3 batches, validated, then one step into the next epoch."""
    out = tmp_path_factory.mktemp("dual_encoder")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["train.py"])
        fit = cli_main([
            "fit", "--config", str(ROOT / "configs" / "retrieval" / "pretrain_dual_encoder.yaml"),
            "--data.train_source", str(tiny_world / "pool"), "--data.num_frames", str(NUM_FRAMES),
            "--data.num_workers", "0", "--data.batch_size", "8", "--data.val_fraction", "0.3",
            "--model.text_model", "tiny", "--model.embed_dim", "32", "--trainer.max_steps", "4",
            "--trainer.max_epochs", "-1", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.logger.init_args.save_dir", str(out),
        ])
    return Path(fit.trainer.log_dir) / "checkpoints"


@pytest.fixture(scope="module")
def dual_encoder_ckpt(pretrain_dir):
    return pretrain_dir / "last.ckpt"


def test_last_ckpt_holds_the_final_weights_not_the_best_epoch(pretrain_dir):
    """The comparison of sources relies on it (see the header of pretrain_dual_encoder.yaml)."""
    def step(name):
        return torch.load(pretrain_dir / name, weights_only=True, map_location="cpu")["global_step"]

    assert step("best.ckpt") == 3 and step("last.ckpt") == 4


def pool_records(world: Path) -> list[dict]:
    pool = world / "pool"
    return [{**r, "video_file": str(pool / r["video_path"])} for r in AsrPoolReader(pool)]


def test_similarity_equals_an_independent_computation(tiny_world, dual_encoder_ckpt):
    similarity = similarity_from_checkpoint(dual_encoder_ckpt, device="cpu", batch_size=3)
    records = pool_records(tiny_world)[:5]
    values = similarity(records)
    assert len(values) == 5 and all(-1.0 <= v <= 1.0 for v in values)
    assert similarity.decoded == 5 and similarity.failed == 0

    # Lightning's own loader and the evaluation's decoding path, written out here
    model = DualEncoder.load_from_checkpoint(dual_encoder_ckpt, map_location="cpu").eval()
    r = records[3]
    frames = read_clip(r["video_file"], r["start"], r["end"], NUM_FRAMES, mode="uniform")
    video = build_video_transform(32, train=False)(frames)[None]
    with torch.no_grad():
        v = model.net.encode_video(video)
        t = model.net.encode_text(**model.net.text.tokenize([r["caption"]]))
    assert values[3] == pytest.approx(F.cosine_similarity(t, v).item(), abs=1e-5)

    # the same clip under another caption reuses its video embedding
    again = similarity([{**r, "caption": "a red ball"}, r])
    assert similarity.reused == 2 and similarity.decoded == 5
    assert again[1] == pytest.approx(values[3], abs=1e-6) and again[0] != pytest.approx(values[3], abs=1e-6)


def test_a_clip_that_does_not_decode_is_counted_per_source(tiny_world, dual_encoder_ckpt, tmp_path):
    good = pool_records(tiny_world)[0]
    shutil.copy(good["video_file"], tmp_path / "good.mp4")
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")
    clips = tmp_path / "clips.jsonl"
    rows = [{**good, "clip_id": f"c{i}", "video_path": name} for i, name in
            enumerate(("good.mp4", "broken.mp4", "good.mp4", "missing.mp4"))]
    clips.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "video_file"}) + "\n" for r in rows))
    similarity = similarity_from_checkpoint(dual_encoder_ckpt, device="cpu")
    m = build_report([clips], out=tmp_path / "out", similarity_fn=similarity, num_examples=0, progress=False)
    s = m["sources"]["clips"]["quality"]["similarity"]
    assert m["sources"]["clips"]["quantity"]["records"] == 4
    assert s["count"] == 2 and s["failed"] == 2 and sum(s["histogram"]["counts"]) == 2
    assert s["min"] == pytest.approx(s["max"])  # the same clip and caption twice
    assert "| clips | 2 | 2 |" in (tmp_path / "out" / "report.md").read_text()


def test_report_cli_with_a_dual_encoder(tiny_world, dual_encoder_ckpt, tmp_path, capsys):
    truth = {}
    for line in (tiny_world / "ground_truth.jsonl").read_text().splitlines():
        row = json.loads(line)
        truth[row["clip_id"]] = row["caption"]
    pool = tiny_world / "pool"
    rdir = round_dir(tmp_path / "run", 0)
    with ShardWriter(rdir, 0) as w:
        for r in AsrPoolReader(pool):
            w.write({**r, "caption": truth[r["clip_id"]], "round": 0, "source": "test"})
    write_manifest(rdir, 0, failures=0, video_root=os.path.relpath(pool, rdir))
    out = tmp_path / "out"
    assert main(["--rounds", str(pool), str(rdir), "--ground-truth", str(tiny_world / "ground_truth.jsonl"),
                 "--dual-encoder", str(dual_encoder_ckpt), "--out", str(out), "--log-dir", str(tmp_path / "tb"),
                 "--no-progress", "--examples", "0"]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split()[-1] == "similarity" and "0 undecodable" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    records = metrics["sources"]["raw_asr"]["quantity"]["records"]
    for name in ("raw_asr", "round_000", "ground_truth"):
        s = metrics["sources"][name]["quality"]["similarity"]
        assert s["count"] == records and s["failed"] == 0, name
        assert -1.0 <= s["min"] <= s["mean"] <= s["max"] <= 1.0, name
        assert sum(s["histogram"]["counts"]) == records
    # the round holds the clean captions: it scores exactly as the ground truth
    r0, gt = (metrics["sources"][n]["quality"]["similarity"] for n in ("round_000", "ground_truth"))
    assert r0["mean"] == pytest.approx(gt["mean"], abs=1e-6) and r0["histogram"] == gt["histogram"]
    assert (out / "similarity_hist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Video-text similarity" in (out / "report.md").read_text()
    assert str(dual_encoder_ckpt) in (out / "report.md").read_text()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_a_bad_checkpoint_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {}}, bad)
    rdir = round_dir(tmp_path, 0)
    with ShardWriter(rdir, 0) as w:
        w.write({"clip_id": "c0", "video_path": "v.mp4", "start": 0.0, "end": 1.0, "asr": "", "caption": "a",
                 "round": 0, "source": "test"})
    write_manifest(rdir, 0)
    text = tmp_path / "text.ckpt"
    text.write_text("not a checkpoint")
    for ckpt, message in ((tmp_path / "none.ckpt", "checkpoint not found"), (bad, "not a Lightning checkpoint"),
                          (text, "cannot be read as a checkpoint")):
        assert main(["--rounds", str(rdir), "--dual-encoder", str(ckpt), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert str(ckpt) in err and message in err
