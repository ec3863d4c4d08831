"""Dual encoder: loss and gathering, text towers, the MSR-VTT DataModule, and the CLI end to end."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from datamodules.msrvtt import MSRVTTDataModule, MSRVTTFormatError
from lightning_modules.components.contrastive import (
    DualEncoderNet,
    gather_with_local_grad,
    symmetric_infonce,
)
from lightning_modules.components.text_encoder import TextEncoder, build_text_encoder, minilm_path
from lightning_modules.components.tokenizer import train_tokenizer
from lightning_modules.components.video_encoder import VideoEncoder, tiny_timesformer_config
from rank_processes import rank_env
from train import cli_main

ROOT = Path(__file__).resolve().parents[1]
MSRVTT_CONFIG = ROOT / "configs" / "retrieval" / "msrvtt.yaml"
PRETRAIN_CONFIG = ROOT / "configs" / "retrieval" / "pretrain_dual_encoder.yaml"
WORDS = ["a red circle moves left", "a blue square moves right", "a green star grows", "the ring shrinks"]
# small and quick: the tiny BERT text tower, 4 frames of 32 px, no workers, no progress bar
SMALL = ["--model.text_model", "tiny", "--model.freeze_text", "false",
         "--data.num_frames", "4", "--data.num_workers", "0", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false", "--trainer.accelerator", "cpu",
         "--trainer.log_every_n_steps", "1"]


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    """``cli_main(args)`` runs as if from the command line: hide pytest's own arguments."""
    monkeypatch.setattr(sys, "argv", ["train.py"])


# ----------------------------------------------------------------------------- loss and gathering

def test_symmetric_infonce_matches_its_definition():
    g = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    video = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    scale = torch.tensor(10.0)
    loss, logits = symmetric_infonce(text, video, scale)
    manual_t2v = -torch.log_softmax(scale * text @ video.T, dim=1).diagonal().mean()
    manual_v2t = -torch.log_softmax(scale * video @ text.T, dim=1).diagonal().mean()
    assert torch.allclose(loss, (manual_t2v + manual_v2t) / 2)
    assert logits.shape == (6, 6)
    aligned, _ = symmetric_infonce(video, video, torch.tensor(100.0))
    assert aligned < 1e-3 < loss


def test_gather_is_identity_on_one_process():
    x = torch.randn(3, 4, requires_grad=True)
    gathered, offset = gather_with_local_grad(x)
    assert gathered is x and offset == 0


GATHER_CASES = ([3, 3], [5, 2], [0, 4])  # rows per rank: equal, unequal, one rank empty

# One gloo rank: embeds its share of each case, gathers with local gradients, averages the
# gradients over ranks as DDP does. Run as a plain script, so that it imports only torch.
GATHER_WORKER = """
import os, sys, torch, torch.distributed as dist, torch.nn.functional as F
from lightning_modules.components.contrastive import gather_with_local_grad, symmetric_infonce
rank, world, out = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), sys.argv[1]
dist.init_process_group("gloo", rank=rank, world_size=world)
results = []
for sizes in {cases}:
    torch.manual_seed(sum(sizes))
    net, scale = torch.nn.Linear(5, 4), torch.nn.Parameter(torch.tensor(2.0))
    data = torch.randn(sum(sizes), 2, 5)
    start = sum(sizes[:rank])
    local = data[start:start + sizes[rank]]
    text, offset = gather_with_local_grad(F.normalize(net(local[:, 0]), dim=-1))
    video, _ = gather_with_local_grad(F.normalize(net(local[:, 1]), dim=-1))
    assert offset == start
    loss, _ = symmetric_infonce(text, video, scale)
    loss.backward()
    grads = [p.grad.clone() for p in (*net.parameters(), scale)]
    for g in grads:
        dist.all_reduce(g)
        g /= world
    results.append({{"loss": loss.detach(), "grads": grads}})
if rank == 0:
    torch.save(results, out)
dist.destroy_process_group()
"""


def _case_data(sizes: list[int]):
    torch.manual_seed(sum(sizes))
    net = torch.nn.Linear(5, 4)  # the same weights on every rank
    scale = torch.nn.Parameter(torch.tensor(2.0))
    return net, scale, torch.randn(sum(sizes), 2, 5)


@pytest.mark.distributed
def test_gathered_loss_gives_the_global_batch_gradient_on_two_processes(tmp_path):
    """Two gloo ranks with local-grad gathering + DDP averaging == one process on the whole batch."""
    out = tmp_path / "dist.pt"
    env = rank_env(WORLD_SIZE="2", OMP_NUM_THREADS="1")
    code = GATHER_WORKER.format(cases=list(GATHER_CASES))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(out)], env=dict(env, RANK=str(r))) for r in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    results = torch.load(out)
    for sizes, result in zip(GATHER_CASES, results):
        net, scale, data = _case_data(sizes)
        text, video = F.normalize(net(data[:, 0]), dim=-1), F.normalize(net(data[:, 1]), dim=-1)
        loss, _ = symmetric_infonce(text, video, scale)
        loss.backward()
        assert torch.allclose(result["loss"], loss.detach(), atol=1e-6), sizes
        for got, want in zip(result["grads"], (*net.parameters(), scale)):
            assert torch.allclose(got, want.grad, atol=1e-6), sizes


# ----------------------------------------------------------------------------- towers

def tiny_text(vocab_size: int = 64) -> TextEncoder:
    encoder = build_text_encoder("tiny", vocab_size=vocab_size)
    encoder.set_tokenizer(train_tokenizer(WORDS, kind="word", vocab_size=vocab_size))
    return encoder


def test_tiny_text_tower_pools_over_real_tokens_only():
    torch.manual_seed(0)
    encoder = tiny_text().eval()
    alone = encoder.encode(["a red circle"])
    padded = encoder.encode(["a red circle", "a blue square moves right and a green star grows"])
    assert alone.shape == (1, 64)
    assert torch.allclose(alone[0], padded[0], atol=1e-5)  # padding does not leak into the mean
    with pytest.raises(ValueError, match="embedding table"):
        build_text_encoder("tiny", vocab_size=4).set_tokenizer(train_tokenizer(WORDS, vocab_size=64))


def test_minilm_loads_offline_from_its_package():
    t0 = time.perf_counter()
    encoder = build_text_encoder("minilm")
    seconds = time.perf_counter() - t0
    assert minilm_path().name == "model" and encoder.hidden_size == 384
    out = encoder.eval().encode(["a red circle moves left", "a cat"])
    assert out.shape == (2, 384) and torch.isfinite(out).all()
    assert seconds < 60, f"loading MiniLM took {seconds:.0f}s"


def test_the_network_learns_to_match_videos_and_texts():
    """40 steps on 8 clips whose caption names a colour and a direction: InfoNCE must fall."""
    torch.manual_seed(0)
    colours = {"red": (1.0, -1.0, -1.0), "blue": (-1.0, -1.0, 1.0)}
    dirs = {"left": -1, "right": 1}
    videos, captions = [], []
    for c, rgb in colours.items():
        for d, dx in dirs.items():
            for y in (4, 20):
                v = torch.full((4, 3, 32, 32), -1.0)
                for t in range(4):
                    x = 12 + dx * 4 * t
                    v[t, :, y:y + 6, x:x + 6] = torch.tensor(rgb)[:, None, None]
                videos.append(v)
                captions.append(f"a {c} square moves {d}")
    video = torch.stack(videos)
    video_enc = VideoEncoder(config=tiny_timesformer_config(num_frames=4), pool_grid=(4, 1, 1))
    net = DualEncoderNet(video_enc, tiny_text(), embed_dim=32)
    tokens = net.text.tokenize(captions)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    losses = []
    for _ in range(40):
        out = net.contrastive_loss(net.encode_text(**tokens), net.encode_video(video))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.75 * losses[0], losses
    assert net.log_logit_scale.grad is not None  # the temperature is learned


# ----------------------------------------------------------------------------- MSR-VTT DataModule

def copy_msrvtt(world: Path, tmp_path: Path) -> Path:
    root = tmp_path / "msrvtt"
    shutil.copytree(world / "msrvtt", root)
    return root


def test_msrvtt_splits_captions_and_batches(tiny_world):
    dm = MSRVTTDataModule(root=str(tiny_world / "msrvtt"), batch_size=3, num_frames=4, val_fraction=0.25,
                          train_captions="all")
    dm.setup("fit")
    data = json.loads((tiny_world / "msrvtt" / "MSRVTT_data.json").read_text())
    train_list = [r["video_id"] for r in csv.DictReader(open(tiny_world / "msrvtt" / "MSRVTT_train.9k.csv"))]
    train_ids = {i.video_id for i in dm._train}
    val_ids = [i.video_id for i in dm._val]
    assert len(val_ids) == 2 and not train_ids & set(val_ids) and train_ids | set(val_ids) == set(train_list)
    # every caption of every training video is an item
    per_video = {v: [s["caption"] for s in data["sentences"] if s["video_id"] == v] for v in train_ids}
    assert sorted(c for i in dm._train for c in i.captions) == sorted(c for cs in per_video.values() for c in cs)
    assert len(dm._train) == 20 * len(train_ids)
    assert sorted(dm.texts()) == sorted(c for cs in per_video.values() for c in cs)  # no validation text

    again = MSRVTTDataModule(root=str(tiny_world / "msrvtt"), val_fraction=0.25)
    again.setup("fit")
    assert [i.video_id for i in again._val] == val_ids  # the seeded split is stable
    other = MSRVTTDataModule(root=str(tiny_world / "msrvtt"), val_fraction=0.25, val_seed=5)
    other.setup("fit")
    assert {i.video_id for i in other._val} != set(val_ids) or len(train_list) < 4

    batch = next(iter(dm.val_dataloader()))
    assert batch["video"].shape == (2, 4, 3, 32, 32) and batch["index"].tolist() == [0, 1]
    dm.setup("test")
    test = list(dm.test_dataloader())
    rows = list(csv.DictReader(open(tiny_world / "msrvtt" / "MSRVTT_JSFUSION_test.csv")))
    assert [v for b in test for v in b["video_id"]] == [r["video_id"] for r in rows]
    assert [c for b in test for c in b["caption"]] == [r["sentence"] for r in rows]


def test_duplicate_video_ids_are_a_clear_error(tiny_world, tmp_path):
    root = copy_msrvtt(tiny_world, tmp_path)
    path = root / "MSRVTT_JSFUSION_test.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + [lines[1].replace("0,ret0", "99,ret99", 1)]) + "\n")
    dm = MSRVTTDataModule(root=str(root))
    dup = lines[1].split(",")[3]
    with pytest.raises(MSRVTTFormatError, match=f"duplicate video ids.*{dup}"):
        dm.setup("test")
    train = root / "MSRVTT_train.9k.csv"
    train.write_text(train.read_text() + "video0\n")
    with pytest.raises(MSRVTTFormatError, match="MSRVTT_train.9k.csv: duplicate video ids.*video0"):
        MSRVTTDataModule(root=str(root)).setup("fit")


# ----------------------------------------------------------------------------- the CLI end to end

def read_scalars(log_dir: Path) -> dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}


@pytest.mark.parametrize("config", [MSRVTT_CONFIG, PRETRAIN_CONFIG], ids=lambda p: p.name)
def test_every_retrieval_config_parses_with_the_real_cli(config, tiny_world, capsys):
    key = "--data.root" if config == MSRVTT_CONFIG else "--data.train_source"
    value = tiny_world / ("msrvtt" if config == MSRVTT_CONFIG else "pool")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(config), key, str(value), "--data.num_frames", "4", "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "lightning_modules.dual_encoder.DualEncoder" in printed
    assert printed.count("num_frames: 4") == 2  # the model follows the data (one value in the YAML)


def test_zero_shot_test_writes_metrics_similarity_and_ranks(tiny_world, tmp_path):
    cli = cli_main(["test", "--config", str(MSRVTT_CONFIG), "--data.root", str(tiny_world / "msrvtt"),
                    "--trainer.logger.init_args.save_dir", str(tmp_path), *SMALL])
    log_dir = Path(cli.trainer.log_dir)
    metrics = json.loads((log_dir / "metrics.json").read_text())
    n = len(list(csv.DictReader(open(tiny_world / "msrvtt" / "MSRVTT_JSFUSION_test.csv"))))
    assert metrics["num_queries"] == metrics["num_test_rows"] == n and metrics["mode"] == "zero-shot"
    assert {"t2v/R@1", "v2t/MnR", "dsl/t2v/R@1"} <= metrics.keys()
    import numpy as np

    from evaluation.retrieval import retrieval_metrics

    sim = np.load(log_dir / "similarity.npy")
    assert sim.shape == (n, n)
    recomputed = retrieval_metrics(sim)
    assert all(metrics[k] == pytest.approx(v) for k, v in recomputed.items())
    ranks = list(csv.DictReader(open(log_dir / "ranks.csv")))
    assert len(ranks) == n and all(1 <= int(r["t2v_rank"]) <= n for r in ranks)
    scalars = read_scalars(log_dir)
    assert scalars["test/t2v/R@1"] == pytest.approx(metrics["t2v/R@1"])
    assert scalars["test/num_queries"] == n


def test_a_missing_test_video_is_counted_and_reported(tiny_world, tmp_path):
    root = copy_msrvtt(tiny_world, tmp_path)
    rows = list(csv.DictReader(open(root / "MSRVTT_JSFUSION_test.csv")))
    gone = rows[1]["video_id"]
    (root / "videos" / "all" / f"{gone}.mp4").unlink()
    cli = cli_main(["test", "--config", str(MSRVTT_CONFIG), "--data.root", str(root),
                    "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), *SMALL])
    log_dir = Path(cli.trainer.log_dir)
    metrics = json.loads((log_dir / "metrics.json").read_text())
    assert metrics["num_test_rows"] == len(rows)
    assert metrics["num_queries"] == len(rows) - 1 and metrics["chance/R@1"] == pytest.approx(100 / (len(rows) - 1))
    assert metrics["num_missing_videos"] == 1 and metrics["missing_videos"] == [gone]
    ranks = list(csv.DictReader(open(log_dir / "ranks.csv")))
    assert gone not in [r["video_id"] for r in ranks] and len(ranks) == len(rows) - 1
    assert read_scalars(log_dir)["test/num_missing_videos"] == 1


def test_pretrain_on_a_source_then_fine_tune_and_test_on_msrvtt(tiny_world, tmp_path):
    # 1. pretraining on the raw ASR pool: the source is one key
    fit = cli_main(["fit", "--config", str(PRETRAIN_CONFIG), "--data.train_source", str(tiny_world / "pool"),
                    "--data.batch_size", "8", "--data.val_fraction", "0.3", "--trainer.max_epochs", "1",
                    "--trainer.logger.init_args.save_dir", str(tmp_path), *SMALL])
    pre_dir = Path(fit.trainer.log_dir)
    ckpt = pre_dir / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True, map_location="cpu")  # nothing but plain data inside
    assert "dual_encoder_tokenizer" in state and (pre_dir / "tokenizer" / "tokenizer.json").is_file()
    scalars = read_scalars(pre_dir)
    assert "train/loss" in scalars and "val/t2v/R@1" in scalars and "val/rsum" in scalars

    # 2. zero-shot test of that checkpoint: same weights, same tokenizer
    zs = cli_main(["test", "--config", str(MSRVTT_CONFIG), "--data.root", str(tiny_world / "msrvtt"),
                   "--ckpt_path", str(ckpt), "--trainer.logger.init_args.save_dir", str(tmp_path), *SMALL])
    zs_metrics = json.loads((Path(zs.trainer.log_dir) / "metrics.json").read_text())
    assert zs_metrics["mode"] == "zero-shot" and zs_metrics["checkpoint"] == str(ckpt)
    assert zs.model.net.text.tokenizer.get_vocab() == fit.model.net.text.tokenizer.get_vocab()

    # 3. fine-tuning on MSR-VTT from the pretrained weights, checkpoint chosen on validation
    ft = cli_main(["fit", "--config", str(MSRVTT_CONFIG), "--data.root", str(tiny_world / "msrvtt"),
                   "--model.init_from", str(ckpt), "--data.batch_size", "4", "--data.val_fraction", "0.25",
                   "--trainer.max_epochs", "1", "--trainer.logger.init_args.save_dir", str(tmp_path), *SMALL])
    assert ft.model.net.text.tokenizer.get_vocab() == fit.model.net.text.tokenizer.get_vocab()
    best = Path(ft.trainer.log_dir) / "checkpoints" / "best.ckpt"
    assert best.is_file()
    test = cli_main(["test", "--config", str(MSRVTT_CONFIG), "--data.root", str(tiny_world / "msrvtt"),
                     "--ckpt_path", str(best), "--trainer.logger.init_args.save_dir", str(tmp_path), *SMALL])
    assert json.loads((Path(test.trainer.log_dir) / "metrics.json").read_text())["mode"] == "fine-tuned"


def test_an_empty_batch_is_skipped(tiny_world):
    from lightning_modules.dual_encoder import DualEncoder

    import lightning as L

    model = DualEncoder(text_model="tiny", num_frames=4, embed_dim=16)
    model.configure_model()
    model.net.text.set_tokenizer(train_tokenizer(WORDS, vocab_size=4096))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    model.trainer = trainer
    empty = {"video": torch.empty(0), "caption": [], "clip_id": [], "skipped": 3}
    assert model.training_step(empty, 0) is None


def test_a_locked_text_tower_is_cached_and_stays_fixed():
    from lightning_modules.dual_encoder import DualEncoder

    torch.manual_seed(0)
    model = DualEncoder(text_model="tiny", freeze_text=True, text_cache_size=3, num_frames=4, embed_dim=16)
    model.configure_model()
    model.net.text.set_tokenizer(train_tokenizer(WORDS, vocab_size=4096))
    model.train()
    assert not model.net.text.training and model.net.video.training
    assert not any(p.requires_grad for p in model.net.text.parameters())
    uncached = model.net.encode_text(**model.net.text.tokenize(WORDS))
    cached = model._encode_text(WORDS)
    assert torch.allclose(cached, uncached, atol=1e-5) and len(model._text_cache) == 3  # bounded
    again = model._encode_text(WORDS[::-1])
    assert torch.allclose(again, uncached.flip(0), atol=1e-5)
    again.sum().backward()  # the projection still learns
    assert model.net.text_proj.weight.grad is not None


@pytest.mark.distributed
@pytest.mark.slow
def test_two_process_ddp_fit_and_test_match_one_process(tiny_world, tmp_path):
    """fit + test with DDP on 2 CPU processes; the test metrics equal a 1-process test of the same checkpoint.

    One test video is removed, leaving an odd number of pairs: the distributed sampler pads one
    rank with a repeated pair, which the evaluation must drop again.
    """
    root = copy_msrvtt(tiny_world, tmp_path)
    rows = list(csv.DictReader(open(root / "MSRVTT_JSFUSION_test.csv")))
    (root / "videos" / "all" / f"{rows[0]['video_id']}.mp4").unlink()
    args = ["--data.root", str(root), "--data.batch_size", "3", "--data.eval_batch_size", "3",
            "--data.val_fraction", "0.25", *SMALL]
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2"]
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, str(ROOT / "train.py"), *a], cwd=tmp_path, env=rank_env(), check=True,
        capture_output=True, text=True, timeout=300)
    run("fit", "--config", str(MSRVTT_CONFIG), *args, *ddp, "--trainer.max_epochs", "1",
        "--trainer.logger.init_args.save_dir", "ddp")
    ckpt = tmp_path / "ddp" / "msrvtt" / "version_0" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    run("test", "--config", str(MSRVTT_CONFIG), *args, *ddp, "--ckpt_path", str(ckpt),
        "--trainer.logger.init_args.save_dir", "ddp_test")
    one_process = cli_main(["test", "--config", str(MSRVTT_CONFIG), *args, "--ckpt_path", str(ckpt),
                            "--trainer.logger.init_args.save_dir", str(tmp_path / "one_test")])
    two = json.loads((tmp_path / "ddp_test" / "msrvtt" / "version_0" / "metrics.json").read_text())
    one = json.loads((Path(one_process.trainer.log_dir) / "metrics.json").read_text())
    assert two["num_queries"] == one["num_queries"] == len(rows) - 1 and two["num_missing_videos"] == 1
    ranks = list(csv.DictReader(open(tmp_path / "ddp_test" / "msrvtt" / "version_0" / "ranks.csv")))
    assert [r["video_id"] for r in ranks] == [r["video_id"] for r in rows[1:]]
    for key in ("t2v/R@1", "t2v/MnR", "v2t/R@1", "v2t/MnR"):
        assert two[key] == pytest.approx(one[key]), key
