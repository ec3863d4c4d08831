"""Does cleaner text make a better dual encoder? Raw ASR versus a refined stand-in, same recipe.

Pretrains the dual encoder twice with ``configs/retrieval/pretrain_dual_encoder.yaml`` (same
seed, same number of steps, same clips; only ``data.train_source`` differs), then evaluates
each checkpoint zero-shot on the world's MSR-VTT 1k-A-style test set with
``configs/retrieval/msrvtt.yaml``, both through the real CLI (``train.cli_main``):

- ``raw_asr``: the pool folder, captions = ASR transcripts;
- ``refined_standin``: the same clips with their clean ground-truth caption. Refinement rounds are
  not produced by this experiment; their upper bound, perfect refinement, stands in for one. The
  ground truth is read here only, never by the library.

Prints both t2v R@1 values, their difference and the chance level, and writes
``<out>/comparison.json``. The recipe is the pretraining config as it stands (the locked
MiniLM text tower, the tiny TimeSformer) with 4 frames per clip instead of 8 to save CPU time;
on 2 CPU cores with the defaults (a 120-video world, 150 steps per run) it takes under ten
minutes.

    python benchmarks/retrieval_source_comparison.py --out runs/retrieval_source_comparison
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datamodules.annotation_sources import open_source  # noqa: E402
from train import cli_main  # noqa: E402

PRETRAIN_CONFIG = ROOT / "configs" / "retrieval" / "pretrain_dual_encoder.yaml"
MSRVTT_CONFIG = ROOT / "configs" / "retrieval" / "msrvtt.yaml"
DEFAULT_SETTINGS = ("data.num_frames=4",)


def ensure_world(world: Path, num_videos: int, msrvtt_test: int, seed: int) -> Path:
    if (world / "world.json").is_file():
        return world
    from datamodules.synthetic_world import generate_world

    print(f"generating a synthetic world in {world} ({num_videos} pool videos, {msrvtt_test} MSR-VTT test videos)")
    generate_world(world, num_videos=num_videos, seed=seed, msrvtt_train=20, msrvtt_test=msrvtt_test,
                   msvd_videos=0, foundation_images=0, workers=2)
    return world


def write_refined_standin(world: Path, out: Path) -> Path:
    """The raw pool's clips (same ids, same order) with their clean ground-truth captions."""
    truth = {}
    with open(world / "ground_truth.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["split"] == "pool":
                truth[row["clip_id"]] = row["caption"]
    pool = world / "pool"
    path = out / "refined_standin.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for record in open_source(pool):
            record = dict(record)
            record["caption"] = truth[record["clip_id"]]
            record["video_path"] = str((pool / record["video_path"]).resolve())
            record["source"] = "ground_truth_standin"
            f.write(json.dumps(record) + "\n")
            n += 1
    print(f"refined stand-in: {n} clips -> {path}")
    return path


def run(name: str, source: Path, world: Path, out: Path, steps: int, seed: int, workers: int,
        overrides: list[str]) -> dict:
    common = ["--seed_everything", str(seed), "--trainer.logger.init_args.save_dir", str(out),
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    for item in overrides:  # KEY=VALUE, the same for pretraining and test
        key, _, value = item.partition("=")
        common += [f"--{key}", value]
    t0 = time.perf_counter()
    fit = cli_main(["fit", "--config", str(PRETRAIN_CONFIG), "--data.train_source", str(source),
                    "--data.num_workers", str(workers),
                    "--trainer.max_steps", str(steps), "--trainer.max_epochs", "-1",
                    "--trainer.logger.init_args.name", name, *common])
    fit_s = time.perf_counter() - t0
    ckpt = Path(fit.trainer.log_dir) / "checkpoints" / "last.ckpt"
    t0 = time.perf_counter()
    test = cli_main(["test", "--config", str(MSRVTT_CONFIG), "--data.root", str(world / "msrvtt"),
                     "--data.num_workers", str(workers), "--ckpt_path", str(ckpt),
                     "--trainer.logger.init_args.name", f"{name}_msrvtt_zeroshot", *common])
    test_s = time.perf_counter() - t0
    metrics = json.loads((Path(test.trainer.log_dir) / "metrics.json").read_text())
    metrics.update({"fit_seconds": round(fit_s, 1), "test_seconds": round(test_s, 1), "steps": steps,
                    "train_source": str(source)})
    return metrics


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=Path, default=Path("data/retrieval_world"),
                        help="synthetic world folder (generated when absent)")
    parser.add_argument("--num-videos", type=int, default=120, help="pool videos of a generated world")
    parser.add_argument("--msrvtt-test", type=int, default=200, help="MSR-VTT test videos of a generated world")
    parser.add_argument("--world-seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/retrieval_source_comparison"))
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps of each pretraining run")
    parser.add_argument("--seed", type=int, default=0, help="seed of both runs")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers")
    parser.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                        help="CLI setting for both runs and their tests (repeatable); default: "
                             + " ".join(DEFAULT_SETTINGS) + " (half the frames of the configs, for CPU time)")
    args = parser.parse_args(argv)
    if args.set is None:
        args.set = list(DEFAULT_SETTINGS)
    sys.argv = sys.argv[:1]  # cli_main gets its own arguments

    world = ensure_world(args.world, args.num_videos, args.msrvtt_test, args.world_seed)
    refined = write_refined_standin(world, args.out)
    results = {}
    for name, source in (("raw_asr", world / "pool"), ("refined_standin", refined)):
        results[name] = run(name, source, world, args.out, args.steps, args.seed, args.workers, args.set)
    raw, ref = results["raw_asr"], results["refined_standin"]
    summary = {
        "steps": args.steps, "seed": args.seed, "overrides": args.set, "num_queries": ref["num_queries"],
        "chance_t2v_R@1": ref["chance/R@1"],
        "raw_asr_t2v_R@1": raw["t2v/R@1"], "refined_standin_t2v_R@1": ref["t2v/R@1"],
        "difference_points": ref["t2v/R@1"] - raw["t2v/R@1"],
        "runs": results,
    }
    (args.out / "comparison.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\nzero-shot MSR-VTT text->video, same recipe, {} steps, seed {}, {} queries".format(
        args.steps, args.seed, int(ref["num_queries"])))
    print(f"{'source':<18}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'MdR':>8}{'fit s':>8}")
    for name, m in results.items():
        print(f"{name:<18}{m['t2v/R@1']:>8.1f}{m['t2v/R@5']:>8.1f}{m['t2v/R@10']:>8.1f}{m['t2v/MdR']:>8.1f}"
              f"{m['fit_seconds']:>8.0f}")
    print(f"{'chance':<18}{ref['chance/R@1']:>8.1f}")
    print(f"refined - raw ASR: {summary['difference_points']:+.1f} points of t2v R@1")
    return summary


if __name__ == "__main__":
    main()
