"""The flywheel inside one fit: rounds written at boundaries, resumable after a kill."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from datamodules.annotation_sources import open_source
from datamodules.annotation_store import RoundReader, ShardWriter, round_dir, write_manifest
from datamodules.caption_checks import caption_failure
from datamodules.caption_index import CaptionIndex, build_caption_index
from datamodules.flywheel_schedule import FlywheelSchedule
from rank_processes import rank_env
from train import cli_main

ROOT = Path(__file__).resolve().parents[1]


def make_round0(world: Path, run: Path) -> None:
    """Round 0 stood in by the raw transcripts (the refiner is tested on its own)."""
    with ShardWriter(round_dir(run, 0), 0) as writer:
        for record in open_source(world / "pool"):
            writer.write({**record, "round": 0, "source": "test"})
    write_manifest(round_dir(run, 0), 0, video_root=str((world / "pool").resolve()))


def flywheel_args(world: Path, run: Path, *extra: str) -> list[str]:
    return [
        "fit", "--config", "configs/demo/flywheel.yaml", "--world_dir", str(world), "--run_dir", str(run),
        "--data.init_args.rounds", "2", "--data.init_args.pretrain_epochs", "1", "--data.init_args.sft_epochs", "1",
        "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0", "--data.init_args.num_frames", "4",
        "--model.init_args.max_new_tokens", "8", "--trainer.enable_progress_bar", "false",
        "--model.init_args.init_from_ilm", "null",  # no image captioner here; tests/test_warm_start.py covers it
        *extra,
    ]


def pool_ids(world: Path) -> list[str]:
    return sorted(r["clip_id"] for r in open_source(world / "pool"))


def test_schedule_maps_epochs_to_rounds_and_phases():
    s = FlywheelSchedule(rounds=2, pretrain_epochs=3, sft_epochs=2)
    assert s.total_epochs == 10
    assert [s.round_of(e) for e in range(10)] == [1] * 5 + [2] * 5
    assert [s.phase_of(e) for e in range(5)] == ["pretrain"] * 3 + ["sft"] * 2
    with pytest.raises(ValueError):
        FlywheelSchedule(rounds=1, pretrain_epochs=0, sft_epochs=0)


@pytest.mark.parametrize("caption, problem", [
    ("", "empty"), ("   ", "empty"), ("...", "empty"), ("это кот", "wrong_script"), ("a red ball moves left", None),
    ("the the the the ball", "repetitive"), ("a red ball a red ball a red ball a red ball", "repetitive"),
    (" ".join(["word"] * 2 + [f"w{i}" for i in range(60)]), "too_long"),
])
def test_caption_checks(caption, problem):
    assert caption_failure(caption, max_words=40) == problem


def test_flywheel_writes_every_round_with_one_record_per_clip(tiny_world, tmp_path):
    run = tmp_path / "run"
    make_round0(tiny_world, run)
    cli_main(flywheel_args(tiny_world, run))
    expected = pool_ids(tiny_world)
    for index in (1, 2):
        reader = RoundReader(round_dir(run, index))
        records = list(reader)
        assert sorted(r["clip_id"] for r in records) == expected
        assert all(r["round"] == index for r in records)
        manifest = reader.manifest
        assert manifest["records"] == len(expected)
        assert manifest["clips_per_second"] > 0 and "failures_detail" in manifest
        assert not Path(manifest["video_root"]).is_absolute()  # the run and its world can move together
        assert reader.video_root.resolve() == (tiny_world / "pool").resolve()
    assert (run / "flywheel" / "gamma_curve.csv").is_file()


def test_undecodable_clips_keep_their_previous_caption_and_are_counted(tiny_world, tmp_path):
    world = tmp_path / "world"
    shutil.copytree(tiny_world, world)
    run = tmp_path / "run"
    make_round0(world, run)
    broken = sorted((world / "pool" / "videos").glob("*.mp4"))[0]
    broken.write_bytes(broken.read_bytes()[:200])  # a torn download
    lost = {r["clip_id"] for r in open_source(world / "pool") if Path(r["video_path"]).stem == broken.stem}
    cli_main(flywheel_args(world, run, "--data.init_args.rounds", "1"))
    reader = RoundReader(round_dir(run, 1))
    records = {r["clip_id"]: r for r in reader}
    assert sorted(records) == pool_ids(world)
    previous = {r["clip_id"]: r["caption"] for r in RoundReader(round_dir(run, 0))}
    assert lost and all(records[c]["source"] == "previous" and records[c]["caption"] == previous[c] for c in lost)
    assert reader.manifest["failures_detail"]["decode"] == len(lost)


def test_flywheel_without_round0_names_the_missing_step(tiny_world, tmp_path):
    run = tmp_path / "run"
    round_dir(run, 0).mkdir(parents=True)
    (round_dir(run, 0) / "part-00000.jsonl").write_text("")
    with pytest.raises(FileNotFoundError, match="round 0 is missing; write it first with initial refinement"):
        cli_main(flywheel_args(tiny_world, run))


@pytest.mark.slow
def test_killed_mid_reannotation_resumes_without_loss_or_duplicates(tiny_world, tmp_path):
    run = tmp_path / "run"
    make_round0(tiny_world, run)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "train.py", *flywheel_args(tiny_world, run)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = round_dir(run, 1) / "part-00000.jsonl.partial"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if partial.exists() and partial.stat().st_size > 0:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run must be killed while it writes round 1"
    assert not (round_dir(run, 1) / "manifest.json").exists()
    written_before = len(partial.read_text().splitlines())
    assert 0 < written_before < len(pool_ids(tiny_world))

    resumed = subprocess.run([*args, "--ckpt_path", str(run / "checkpoints" / "flywheel" / "last.ckpt")],
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for index in (1, 2):
        ids = [r["clip_id"] for r in RoundReader(round_dir(run, index))]
        assert sorted(ids) == pool_ids(tiny_world), f"round {index}: every clip exactly once"
    stats = json.loads((round_dir(run, 1) / "part-00000.stats.json").read_text())
    assert stats["records"] == len(pool_ids(tiny_world))


def test_caption_index_answers_by_clip_id_and_follows_its_round(tiny_world, tmp_path):
    run = tmp_path / "run"
    make_round0(tiny_world, run)
    index = build_caption_index(round_dir(run, 0), tmp_path / "captions.sqlite")
    records = list(RoundReader(round_dir(run, 0)))
    with CaptionIndex(index) as lookup:
        assert lookup.lookup([records[3]["clip_id"], "nowhere", records[0]["clip_id"]]) == {
            records[3]["clip_id"]: records[3]["caption"], records[0]["clip_id"]: records[0]["caption"]}
    with ShardWriter(round_dir(run, 0), 1) as writer:  # the round is rewritten: the index must follow
        writer.write({**records[0], "clip_id": "extra", "caption": "new"})
    write_manifest(round_dir(run, 0), 0)
    with CaptionIndex(build_caption_index(round_dir(run, 0), index)) as lookup:
        assert lookup.lookup(["extra"]) == {"extra": "new"}


def test_resumed_reannotation_skips_what_a_cut_batch_had_written(tiny_world, tmp_path, count_reads):
    run = tmp_path / "run"
    make_round0(tiny_world, run)
    pool = list(open_source(tiny_world / "pool"))
    writer = ShardWriter(round_dir(run, 1), 0)  # killed after batch 0 and half of batch 1 (batch size 4)
    for record in pool[:6]:
        writer.write({**record, "round": 1, "source": "before the kill"})
    writer.close()
    reads = count_reads(writer.partial)
    cli_main(flywheel_args(tiny_world, run, "--data.init_args.rounds", "1"))
    assert reads == ["rb"]  # the resume reads the .partial shard once: its count and its cut batch's clips
    records = list(RoundReader(round_dir(run, 1)))
    assert [r["clip_id"] for r in records] == [r["clip_id"] for r in pool]  # in order, each once
    assert [r["source"] for r in records[:6]] == ["before the kill"] * 6
    assert not (round_dir(run, 1) / "previous_captions.sqlite").exists()


def test_a_pool_of_shards_in_several_folders_finds_its_videos(wds_world, tmp_path):
    """A brace pattern may name shards in different folders; the rounds' ``video_path``s are relative
    to their common folder, not to a folder named by the pattern itself."""
    from datamodules.flywheel_datamodule import FlywheelDataModule
    from datamodules.tar_members import video_exists

    root = tmp_path / "pool"
    for folder, shard in (("a", "00000.tar"), ("b", "00001.tar")):
        (root / folder).mkdir(parents=True)
        shutil.copy(wds_world / "pool" / shard, root / folder / shard)
    pattern = f"{root}/{{a/00000,b/00001}}.tar"
    data = FlywheelDataModule(run_dir=str(tmp_path / "run"), pool=pattern,
                              human_examples=str(wds_world / "pool" / "human_refined.jsonl"))
    assert Path(data.opts.video_root) == root
    records = list(open_source(pattern))
    assert {r["video_path"].split("/")[0] for r in records} == {"a", "b"}
    assert all(video_exists(root / r["video_path"]) for r in records)


@pytest.mark.distributed
def test_two_ranks_write_the_same_records_as_one_process(wds_world, tmp_path):
    """Re-annotation of a tar-shard pool split over 2 gloo ranks: the very records of 1 process,
    each clip once (no padding duplicates). lr 0 keeps both runs' models equal to the seeded init;
    19 clips in batches of 3 give rank 0 four batches and rank 1 three (its last step is a placeholder)."""
    pool = f"{wds_world}/pool/{{00000,00002}}.tar"
    # lr 0 freezes the weights but not a convolutional stem's batch-norm statistics, which follow the
    # batches each process saw: linear patches here.
    frozen = ("--data.init_args.rounds", "1", "--model.init_args.optimizer.init_args.lr", "0",
              "--model.init_args.conv_stem", "false",
              "--trainer.limit_train_batches", "1", "--data.init_args.pool", pool, "--data.init_args.batch_size", "3")
    one, two = tmp_path / "one", tmp_path / "two"
    for run in (one, two):
        make_round0(wds_world, run)
    cli_main(flywheel_args(wds_world, one, *frozen))
    env = rank_env(OMP_NUM_THREADS="1")
    args = flywheel_args(wds_world, two, *frozen, "--trainer.strategy", "ddp", "--trainer.devices", "2")
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    def records(run):
        return sorted(json.dumps(r, sort_keys=True) for r in RoundReader(round_dir(run, 1)))

    assert records(two) == records(one)
    reader = RoundReader(round_dir(two, 1))
    assert reader.manifest["parts"] == ["part-00000.jsonl", "part-00001.jsonl"] and reader.manifest["world_size"] == 2
    ids = [r["clip_id"] for r in reader]
    assert sorted(ids) == sorted(r["clip_id"] for r in open_source(pool))  # each clip once
    assert reader.manifest["records_per_part"] == {"part-00000.jsonl": 10, "part-00001.jsonl": 9}


# Two gloo ranks whose stems saw different batches: before re-annotating, both take rank 0's statistics.
SHARE_BUFFERS = """
import json, os, sys
import torch, torch.distributed as dist
from callbacks.flywheel import _share_buffers
from lightning_modules.components.video_encoder import ConvStem
rank = int(os.environ["RANK"])
dist.init_process_group("gloo", rank=rank, world_size=2)
stem = ConvStem(3, 16, 4)
stem(torch.randn(4, 3, 8, 8) + rank)  # training mode: running statistics follow this rank's batch
before = stem[1].running_mean.tolist()
_share_buffers(stem)
json.dump([before, stem[1].running_mean.tolist()], open(sys.argv[1] + str(rank), "w"))
dist.barrier()
dist.destroy_process_group()  # a gloo group left to the interpreter's exit can abort it
"""


@pytest.mark.distributed
def test_ranks_take_rank_zeros_running_statistics_before_re_annotation(tmp_path):
    env = rank_env(WORLD_SIZE="2", OMP_NUM_THREADS="1")
    out = str(tmp_path / "out")
    procs = [subprocess.Popen([sys.executable, "-c", SHARE_BUFFERS, out], env=dict(env, RANK=str(r)), cwd=ROOT)
             for r in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    (before0, after0), (before1, after1) = (json.loads(Path(out + str(r)).read_text()) for r in range(2))
    assert before0 != before1  # each rank's own batches
    assert after0 == after1 == before0
