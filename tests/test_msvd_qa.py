"""MSVD-QA: the DataModule on the original files, bad input, classic and generative QA through the CLI."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from datamodules.msvd_qa import MSVDQADataModule, MSVDQAFormatError
from evaluation.qa import normalize_answer
from lightning_modules.components.tokenizer import train_tokenizer
from lightning_modules.video_qa import VideoQAClassifier
from train import cli_main

ROOT = Path(__file__).resolve().parents[1]
CLASSIC = ROOT / "configs" / "qa" / "msvd_qa.yaml"
GENERATIVE = ROOT / "configs" / "qa" / "msvd_qa_generative.yaml"
# small and quick: 4 frames, no workers, no progress bar
SMALL = ["--data.num_frames", "4", "--data.num_workers", "0", "--data.batch_size", "8",
         "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
         "--trainer.accelerator", "cpu", "--trainer.log_every_n_steps", "1"]
TINY_TOWERS = ["--model.text_model", "tiny", "--model.freeze_text", "false", "--model.embed_dim", "32",
               "--model.hidden_dim", "32"]


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    """``cli_main(args)`` runs as if from the command line: hide pytest's own arguments."""
    monkeypatch.setattr(sys, "argv", ["train.py"])


def qa_rows(root: Path, split: str) -> list[dict]:
    return json.loads((root / f"{split}_qa.json").read_text())


def copy_msvd(world: Path, tmp_path: Path) -> Path:
    root = tmp_path / "msvd_qa"
    shutil.copytree(world / "msvd_qa", root)
    return root


def mapping(root: Path) -> dict[str, str]:
    return {vid: name for name, vid in (line.split() for line in (root / "youtube_mapping.txt").read_text().splitlines())}


def read_scalars(log_dir: Path) -> dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}


# ----------------------------------------------------------------------------- the DataModule

def test_datamodule_reads_the_original_files(tiny_world):
    root = tiny_world / "msvd_qa"
    dm = MSVDQADataModule(root=str(root), batch_size=4, num_frames=4)
    dm.setup("fit")
    train = qa_rows(root, "train")
    assert [(i.id, i.question, i.answer, i.video_id) for i in dm.load("train")] == [
        (r["id"], r["question"], r["answer"], f"vid{r['video_id']}") for r in train]
    assert dm.train_qa() == [(r["question"], r["answer"]) for r in train]
    assert set(dm.texts()) == {r["question"] for r in train} | {r["answer"] for r in train}
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (4, 4, 3, 32, 32) and len(batch["question"]) == 4 and batch["failed"] == []
    dm.setup("test")
    test = [b for b in dm.test_dataloader()]
    rows = qa_rows(root, "test")
    assert [i for b in test for i in b["index"].tolist()] == list(range(len(rows)))  # file order
    assert [q for b in test for q in b["id"]] == [r["id"] for r in rows]
    assert dm.excluded("test") == []


def test_a_question_without_mapping_or_file_is_left_out_and_reported(tiny_world, tmp_path):
    root = copy_msvd(tiny_world, tmp_path)
    rows = qa_rows(root, "test")
    videos = sorted({f"vid{r['video_id']}" for r in rows})
    names = mapping(root)
    unmapped, no_file = videos[0], videos[-1]
    lines = [line for line in (root / "youtube_mapping.txt").read_text().splitlines() if not line.endswith(f" {unmapped}")]
    (root / "youtube_mapping.txt").write_text("\n".join(lines) + "\n")
    (root / "YouTubeClips" / f"{names[no_file]}.avi").unlink()
    dm = MSVDQADataModule(root=str(root))
    kept = dm.load("test")
    excluded = dm.excluded("test")
    reasons = {e["id"]: e["excluded"] for e in excluded}
    assert reasons == {r["id"]: "no_mapping" if f"vid{r['video_id']}" == unmapped else "missing_file"
                       for r in rows if f"vid{r['video_id']}" in (unmapped, no_file)}
    assert len(kept) + len(excluded) == len(rows) and {i.video_id for i in kept}.isdisjoint({unmapped, no_file})


@pytest.mark.parametrize("target, edit, message", [
    ("youtube_mapping.txt", lambda t: t.replace(" vid2\n", " video2\n"), r"youtube_mapping.txt:2: expected '<clip name> vid<N>'"),
    ("youtube_mapping.txt", lambda t: t + "someclip_1_2 vid1\n", r"youtube_mapping.txt:\d+: vid1 is mapped again \(first on line 1\)"),
    ("test_qa.json", lambda t: json.dumps([{k: v for k, v in r.items() if k != "answer"} for r in json.loads(t)]),
     r"test_qa.json: entry 0 \(id \d+\) has no key\(s\) answer"),
    ("test_qa.json", lambda t: json.dumps(json.loads(t) + json.loads(t)[:1]), r"test_qa.json: entries 0 and \d+ share the question id"),
    ("test_qa.json", lambda t: json.dumps([{**r, "question": ""} for r in json.loads(t)]), r"entry 0 .*'question' must be"),
    ("test_qa.json", lambda t: t.rstrip()[:-1], r"test_qa.json:1: not valid JSON"),
])
def test_malformed_files_are_errors_naming_the_file_and_entry(tiny_world, tmp_path, target, edit, message):
    root = copy_msvd(tiny_world, tmp_path)
    path = root / target
    path.write_text(edit(path.read_text()))
    with pytest.raises(MSVDQAFormatError, match=message):
        MSVDQADataModule(root=str(root)).setup("test")


def test_missing_root_or_file_is_named(tiny_world, tmp_path):
    with pytest.raises(FileNotFoundError, match="data.root: .*nowhere"):
        MSVDQADataModule(root=str(tmp_path / "nowhere"))
    root = copy_msvd(tiny_world, tmp_path)
    (root / "val_qa.json").unlink()
    with pytest.raises(FileNotFoundError, match="MSVD-QA file not found: .*val_qa.json"):
        MSVDQADataModule(root=str(root)).setup("fit")


# ----------------------------------------------------------------------------- classic mode

def test_classifier_learns_an_answer_only_the_video_shows():
    """The same question for every clip; the answer is the square's colour: the video path must carry it."""
    torch.manual_seed(0)
    colours = {"red": (1.0, -1.0, -1.0), "green": (-1.0, 1.0, -1.0), "blue": (-1.0, -1.0, 1.0)}
    videos, answers = [], []
    for name, rgb in colours.items():
        for y in (4, 20):
            clip = torch.full((4, 3, 32, 32), -1.0)
            clip[:, :, y:y + 8, 10:18] = torch.tensor(rgb)[None, :, None, None]
            videos.append(clip)
            answers.append(name)
    model = VideoQAClassifier(answers=list(colours), text_model="tiny", freeze_text=False, num_frames=4,
                              embed_dim=32, hidden_dim=32, dropout=0.0)
    model.towers.text.set_tokenizer(train_tokenizer(["what color is the square?"], vocab_size=4096))
    video, questions = torch.stack(videos), ["what color is the square?"] * len(answers)
    targets = model._targets(answers)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(model(video, questions), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        predicted = [model.answers[i] for i in model(video, questions).argmax(-1).tolist()]
    assert predicted == answers


def test_answer_vocabulary_is_normalised_and_checked():
    model = VideoQAClassifier(answers=["The Red", "blue."], text_model="tiny", num_frames=4, embed_dim=16, hidden_dim=16)
    assert model.answers == ["red", "blue"] and model.hparams.answers == ["red", "blue"]
    assert model._targets(["Red!", "green"]).tolist() == [0, -100]  # outside the vocabulary: no loss
    with pytest.raises(ValueError, match="model.answers: need distinct"):
        VideoQAClassifier(answers=["red", "the red"], text_model="tiny", num_frames=4)


def dual_encoder_checkpoint(tmp_path: Path, embed_dim: int = 32) -> Path:
    """A dual-encoder checkpoint as the retrieval pretraining writes it (weights, hparams, tokenizer)."""
    from lightning_modules.dual_encoder import TOKENIZER_KEY, DualEncoder

    torch.manual_seed(1)
    model = DualEncoder(text_model="tiny", num_frames=4, embed_dim=embed_dim)
    model.configure_model()
    tokenizer = train_tokenizer(["a red circle moves left", "what color is the ring"], vocab_size=4096)
    path = tmp_path / "dual_encoder.ckpt"
    hparams = {k: v for k, v in model.hparams.items() if k not in ("optimizer", "lr_scheduler")}  # plain data only
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams,
                TOKENIZER_KEY: tokenizer.backend_tokenizer.to_str()}, path)
    return path


def test_towers_start_from_a_dual_encoder_checkpoint(tmp_path):
    path = dual_encoder_checkpoint(tmp_path)
    saved = torch.load(path, weights_only=True)["state_dict"]
    model = VideoQAClassifier(towers_from=str(path), answers=["red"], text_model="tiny", num_frames=4, embed_dim=32)
    model.load_towers(str(path))
    for key, value in model.towers.state_dict().items():
        assert torch.equal(value, saved[f"net.{key}"]), key
    assert "circle" in model.towers.text.tokenizer.get_vocab()

    other = VideoQAClassifier(answers=["red"], text_model="tiny", num_frames=4, embed_dim=64)
    with pytest.raises(ValueError, match=r"model.towers_from: .* was built with embed_dim=32 \(here 64\)"):
        other.load_towers(str(path))
    not_towers = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"head.weight": torch.zeros(1)}}, not_towers)
    with pytest.raises(ValueError, match="not a dual-encoder checkpoint"):
        model.load_towers(str(not_towers))
    with pytest.raises(FileNotFoundError, match="model.towers_from: checkpoint not found"):
        model.load_towers(str(tmp_path / "missing.ckpt"))


def test_classic_fit_from_pretrained_towers_then_test_through_the_cli(tiny_world, tmp_path):
    towers = dual_encoder_checkpoint(tmp_path)
    root = str(tiny_world / "msvd_qa")
    fit = cli_main(["fit", "--config", str(CLASSIC), "--data.root", root, "--model.towers_from", str(towers),
                    "--trainer.max_epochs", "2", "--trainer.logger.init_args.save_dir", str(tmp_path), *SMALL,
                    *TINY_TOWERS])
    best = Path(fit.trainer.log_dir) / "checkpoints" / "best.ckpt"
    assert best.is_file() and "val/accuracy" in read_scalars(Path(fit.trainer.log_dir))
    vocabulary = sorted({normalize_answer(r["answer"]) for r in qa_rows(tiny_world / "msvd_qa", "train")})
    assert sorted(fit.model.answers) == vocabulary

    test = cli_main(["test", "--config", str(CLASSIC), "--data.root", root, "--ckpt_path", str(best),
                     "--trainer.logger.init_args.save_dir", str(tmp_path), *SMALL, *TINY_TOWERS])
    log_dir = Path(test.trainer.log_dir)
    assert test.model.answers == fit.model.answers  # the head's vocabulary came from the checkpoint
    metrics = json.loads((log_dir / "metrics.json").read_text())
    rows = qa_rows(tiny_world / "msvd_qa", "test")
    assert (metrics["mode"], metrics["protocol"], metrics["towers_from"]) == ("classic", "fine-tuned", str(towers))
    assert metrics["denominator"] == metrics["num_questions"] == len(rows) and metrics["num_excluded"] == 0
    assert metrics["answer_vocabulary_size"] == len(vocabulary)
    assert metrics["num_oov_answers"] == sum(normalize_answer(r["answer"]) not in vocabulary for r in rows)
    predictions = [json.loads(line) for line in (log_dir / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in predictions] == [r["id"] for r in rows]
    assert all(p["prediction"] in vocabulary for p in predictions)
    assert sum(p["correct"] for p in predictions) == metrics["num_correct"]
    assert json.loads((log_dir / "answer_vocabulary.json").read_text()) == fit.model.answers
    scalars = read_scalars(log_dir)
    assert scalars["test/accuracy"] == pytest.approx(metrics["accuracy"])
    assert scalars["test/baseline/majority_accuracy"] == pytest.approx(metrics["baseline"]["majority_accuracy"])


def test_zero_shot_test_counts_unreadable_videos_and_states_the_denominator(tiny_world, tmp_path):
    root = copy_msvd(tiny_world, tmp_path)
    rows = qa_rows(root, "test") + [{"answer": "red", "id": 99999, "question": "what color is it?", "video_id": 999}]
    (root / "test_qa.json").write_text(json.dumps(rows))  # vid999 has no mapping line
    broken = f"vid{rows[0]['video_id']}"  # the tiny world's test split has two videos: one stays readable
    (root / "YouTubeClips" / f"{mapping(root)[broken]}.avi").write_bytes(b"not a video")
    cli = cli_main(["test", "--config", str(CLASSIC), "--data.root", str(root),
                    "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), *SMALL, *TINY_TOWERS])
    log_dir = Path(cli.trainer.log_dir)
    metrics = json.loads((log_dir / "metrics.json").read_text())
    n_unmapped = 1
    n_broken = sum(f"vid{r['video_id']}" == broken for r in rows)
    assert metrics["protocol"].startswith("zero-shot") and metrics["checkpoint"] is None
    assert metrics["excluded_by_reason"] == {"decode_failed": n_broken, "no_mapping": n_unmapped}
    assert metrics["num_excluded"] == n_unmapped + n_broken and metrics["num_questions"] == len(rows)
    assert metrics["denominator"] == len(rows) - n_unmapped - n_broken
    assert f"over {metrics['denominator']} of {len(rows)} test questions" in metrics["denominator_note"]
    predictions = [json.loads(line) for line in (log_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == len(rows) and sum(p.get("excluded") is not None for p in predictions) == metrics["num_excluded"]
    assert read_scalars(log_dir)["test/num_excluded"] == metrics["num_excluded"]


# ----------------------------------------------------------------------------- generative mode

def test_generative_zero_shot_then_fine_tuned_through_the_cli(tiny_world, tmp_path):
    common = ["--config", str(GENERATIVE), "--data.root", str(tiny_world / "msvd_qa"), "--model.max_new_tokens", "4",
              "--trainer.logger.init_args.save_dir", str(tmp_path), *SMALL]
    zero = cli_main(["test", *common])
    metrics = json.loads((Path(zero.trainer.log_dir) / "metrics.json").read_text())
    rows = qa_rows(tiny_world / "msvd_qa", "test")
    assert (metrics["mode"], metrics["protocol"], metrics["decoding"]) == ("generative", "zero-shot", "greedy")
    assert metrics["denominator"] == len(rows) and "num_oov_answers" not in metrics
    predictions = [json.loads(line) for line in (Path(zero.trainer.log_dir) / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in predictions] == [r["id"] for r in rows] and all(isinstance(p["prediction"], str) for p in predictions)
    assert "answer" in zero.model.net.tokenizer.get_vocab()  # trained on the prompt words and the QA text

    fit = cli_main(["fit", *common, "--trainer.max_epochs", "1"])
    best = Path(fit.trainer.log_dir) / "checkpoints" / "best.ckpt"
    tuned = cli_main(["test", *common, "--ckpt_path", str(best)])
    tuned_metrics = json.loads((Path(tuned.trainer.log_dir) / "metrics.json").read_text())
    assert tuned_metrics["protocol"] == "fine-tuned" and tuned_metrics["checkpoint"] == str(best)
    for a, b in zip(fit.model.net.state_dict().values(), tuned.model.net.state_dict().values()):
        assert torch.equal(a, b)
    assert tuned.model.net.tokenizer.get_vocab() == fit.model.net.tokenizer.get_vocab()  # stored in the checkpoint


def test_generative_starts_from_a_videollm_checkpoint(tiny_world, tmp_path):
    from lightning_modules.video_llm_module import VideoLLMModule
    from lightning_modules.video_qa_generative import GenerativeVideoQA

    captioner = VideoLLMModule(preset="tiny", tokenizer=str(tmp_path / "captioner_tok"), num_frames=4,
                               tokenizer_sources=[str(tiny_world / "pool")])
    captioner.configure_model()
    path = tmp_path / "captioner.ckpt"
    torch.save({"state_dict": captioner.state_dict(), "hyper_parameters": dict(captioner.hparams)}, path)

    qa = GenerativeVideoQA(init_from=str(path), num_frames=4)
    qa.configure_model()  # the captioner's tokenizer comes through its checkpoint's hyperparameters
    for (key, a), b in zip(captioner.net.state_dict().items(), qa.net.state_dict().values()):
        assert torch.equal(a, b), key
    assert qa.net.tokenizer.get_vocab() == captioner.net.tokenizer.get_vocab()
    video = torch.zeros(2, 4, 3, 32, 32)
    answers = qa.answer({"video": video, "question": ["what color is the ring?", "how many objects are there?"]})
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)

    with pytest.raises(ValueError, match=r"model.init_from: .* was built with num_frames=4 \(here 8\)"):
        GenerativeVideoQA(init_from=str(path), num_frames=8).configure_model()

    # a grid of visual tokens other than the default: the weights fit either grid, the tokens do not
    grid = VideoLLMModule(preset="tiny", tokenizer=str(tmp_path / "captioner_tok"), num_frames=4, pool_grid=(2, 2, 2))
    grid.configure_model()
    gridded = tmp_path / "gridded.ckpt"
    torch.save({"state_dict": grid.state_dict(), "hyper_parameters": dict(grid.hparams)}, gridded)
    with pytest.raises(ValueError, match=r"was built with pool_grid=\(2, 2, 2\) \(here None\)"):
        GenerativeVideoQA(init_from=str(gridded), num_frames=4).configure_model()
    matched = GenerativeVideoQA(init_from=str(gridded), num_frames=4, pool_grid=[2, 2, 2])  # as YAML gives it
    matched.configure_model()
    tokens = [m.net.video_encoder(video).shape[1] for m in (matched, grid, qa)]
    assert tokens[0] == tokens[1] < tokens[2]
    other_tok = tmp_path / "other_tok"
    train_tokenizer(["just a few words"]).save_pretrained(str(other_tok))
    with pytest.raises(ValueError, match="does not fit this VideoLLM"):
        GenerativeVideoQA(init_from=str(path), tokenizer=str(other_tok), num_frames=4).configure_model()
    with pytest.raises(FileNotFoundError, match="model.init_from: checkpoint not found"):
        GenerativeVideoQA(init_from=str(tmp_path / "missing.ckpt"))
