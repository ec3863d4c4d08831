"""Does refined text make a better dual encoder? Raw ASR against refined rounds, same recipe.

Pretrains the dual encoder with ``configs/retrieval/pretrain_dual_encoder.yaml`` once per source
and seed, then tests every checkpoint zero-shot on the world's MSR-VTT 1k-A-style test set with
``configs/retrieval/msrvtt.yaml``, both through the real CLI (``train.cli_main``). Between the
runs of one seed only ``data.train_source`` differs: same seed (model init, shuffle order,
frame offsets), same clips, same held-out split (a hash of the clip id), same number of
optimizer steps (``--steps``), and each run is tested with its ``last.ckpt``, the final
weights (the config's header says why not ``best.ckpt``).

Sources:

- ``raw_asr``: the world's pool, captions = ASR transcripts;
- every ``--refined PATH``: a round folder (``…/annotations/round_000``) or a ``.jsonl`` of
  records, named by its folder or file name;
- with ``--upper-bound``, ``ground_truth_captions``: the pool's clips with their clean
  ground-truth caption, i.e. perfect refinement. The ground truth is read here only, never by
  the library.

Videos: every run decodes the clips from ``--video-root`` (default: the world's pool), since
every source annotates that pool. A round records its pool relative to its own folder, which
breaks when a run folder is copied elsewhere; one explicit root keeps the comparison on the
same clips. Clips that fail to decode in training are counted per run and printed; a run that
skipped any is flagged, since the comparison is then not on equal data.

Prints t2v and v2t R@1, R@5 and MdR per run, chance R@1 (100 / number of test queries) and
each refined source's t2v R@1 minus raw ASR's per seed; writes ``<out>/comparison.json``.
The steps default to 150 (6 epochs of the demo pool, about 2 minutes a run on 2 CPU cores).

    make retrieval-compare
    python benchmarks/retrieval_source_comparison.py --world data/demo_world \\
        --refined runs/demo/annotations/round_000 [--seeds 0 1] [--upper-bound] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datamodules.annotation_sources import open_source  # noqa: E402
from datamodules.annotation_store import atomic_write_json  # noqa: E402
from train import cli_main  # noqa: E402

PRETRAIN_CONFIG = ROOT / "configs" / "retrieval" / "pretrain_dual_encoder.yaml"
MSRVTT_CONFIG = ROOT / "configs" / "retrieval" / "msrvtt.yaml"
RAW_NAME = "raw_asr"
UPPER_BOUND_NAME = "ground_truth_captions"


def write_ground_truth_captions(world: Path, out: Path) -> Path:
    """The raw pool's records (same clips, same order) with their clean ground-truth captions."""
    truth = {}
    with open(world / "ground_truth.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["split"] == "pool":
                truth[row["clip_id"]] = row["caption"]
    path = out / f"{UPPER_BOUND_NAME}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for record in open_source(world / "pool"):
            f.write(json.dumps({**record, "caption": truth[record["clip_id"]], "source": UPPER_BOUND_NAME}) + "\n")
    tmp.replace(path)
    return path


def source_name(path: Path) -> str:
    return path.stem if path.suffix == ".jsonl" else path.name


def run(name: str, source: Path, world: Path, video_root: Path, out: Path, steps: int, seed: int,
        workers: int, settings: list[str]) -> dict:
    """Pretrain on ``source`` for ``steps`` steps, test its final weights zero-shot; the test metrics."""
    common = ["--seed_everything", str(seed), "--data.num_workers", str(workers),
              "--trainer.logger.init_args.save_dir", str(out),
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    for item in settings:  # KEY=VALUE, the same for every pretraining run and test
        key, _, value = item.partition("=")
        common += [f"--{key}", value]
    t0 = time.perf_counter()
    fit = cli_main(["fit", "--config", str(PRETRAIN_CONFIG), "--data.train_source", str(source),
                    "--data.video_root", str(video_root), "--data.seed", str(seed),
                    "--trainer.max_steps", str(steps), "--trainer.max_epochs", "-1",
                    "--trainer.logger.init_args.name", name, *common])
    fit_s = time.perf_counter() - t0
    if fit.trainer.global_step != steps:
        raise RuntimeError(f"{name}: pretraining stopped after {fit.trainer.global_step} of {steps} steps")
    ckpt = Path(fit.trainer.log_dir) / "checkpoints" / "last.ckpt"
    t0 = time.perf_counter()
    test = cli_main(["test", "--config", str(MSRVTT_CONFIG), "--data.root", str(world / "msrvtt"),
                     "--ckpt_path", str(ckpt), "--trainer.logger.init_args.name", f"{name}_msrvtt_zeroshot",
                     *common])
    test_s = time.perf_counter() - t0
    metrics = json.loads((Path(test.trainer.log_dir) / "metrics.json").read_text())
    metrics.update({"fit_seconds": round(fit_s, 1), "test_seconds": round(test_s, 1), "steps": steps,
                    "seed": seed, "train_source": str(source), "checkpoint": str(ckpt),
                    "skipped_train_clips": int(fit.datamodule.skipped_total)})
    return metrics


def format_table(runs: dict[str, dict]) -> str:
    head = f"{'run':<30}" + "".join(f"{c:>8}" for c in (
        "t2v R@1", "R@5", "MdR", "v2t R@1", "R@5", "MdR", "chance", "skipped", "fit s"))
    lines = [head]
    for name, m in runs.items():
        lines.append(f"{name:<30}" + "".join(f"{m[k]:>8.1f}" for k in (
            "t2v/R@1", "t2v/R@5", "t2v/MdR", "v2t/R@1", "v2t/R@5", "v2t/MdR", "chance/R@1"))
            + f"{m['skipped_train_clips']:>8d}{m['fit_seconds']:>8.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=Path, default=Path("data/demo_world"),
                        help="synthetic world folder (pool/, msrvtt/, ground_truth.jsonl)")
    parser.add_argument("--refined", type=Path, action="append", default=[], metavar="PATH",
                        help="refined source to compare with raw ASR: a round folder or a .jsonl (repeatable)")
    parser.add_argument("--upper-bound", action="store_true",
                        help="also pretrain on the pool's ground-truth captions (perfect refinement)")
    parser.add_argument("--video-root", type=Path, default=None,
                        help="folder the records' video paths resolve against (default: WORLD/pool)")
    parser.add_argument("--out", type=Path, default=Path("runs/retrieval_compare"))
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps of every pretraining run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per source and seed")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="CLI setting for every run and test (repeatable), e.g. data.num_frames=4")
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]  # cli_main gets its own arguments

    for needed in (args.world / "pool", args.world / "msrvtt", *args.refined):
        if not needed.exists():
            parser.error(f"{needed} does not exist")
    video_root = args.video_root or args.world / "pool"
    sources = {RAW_NAME: args.world / "pool"}
    for path in args.refined:
        if source_name(path) in sources:
            parser.error(f"two sources are named {source_name(path)!r}")
        sources[source_name(path)] = path
    if args.upper_bound:
        sources[UPPER_BOUND_NAME] = write_ground_truth_captions(args.world, args.out)

    runs = {}
    for seed in args.seeds:
        for name, path in sources.items():
            runs[f"{name}_seed{seed}"] = run(f"{name}_seed{seed}", path, args.world, video_root, args.out,
                                             args.steps, seed, args.workers, args.set)
    gains = {name: {seed: runs[f"{name}_seed{seed}"]["t2v/R@1"] - runs[f"{RAW_NAME}_seed{seed}"]["t2v/R@1"]
                    for seed in args.seeds} for name in sources if name != RAW_NAME}
    queries = {int(m["num_queries"]) for m in runs.values()}
    summary = {"steps": args.steps, "seeds": args.seeds, "settings": args.set, "video_root": str(video_root),
               "num_queries": sorted(queries), "t2v_R@1_gain_over_raw_asr": gains, "runs": runs}
    atomic_write_json(args.out / "comparison.json", summary)

    print(f"\nzero-shot MSR-VTT retrieval after {args.steps} pretraining steps per run "
          f"(test queries: {', '.join(map(str, sorted(queries)))}; MdR: median rank; chance: R@1 of a random ranking)")
    print(format_table(runs))
    for name, per_seed in gains.items():
        values = ", ".join(f"seed {s}: {g:+.1f}" for s, g in per_seed.items())
        mean = f"; mean {statistics.mean(per_seed.values()):+.1f}" if len(per_seed) > 1 else ""
        print(f"{name} - {RAW_NAME}, t2v R@1 points: {values}{mean}")
    flagged = [n for n, m in runs.items() if m["skipped_train_clips"]]
    if flagged:
        print(f"WARNING: clips failed to decode in training for {', '.join(flagged)}: the runs did not see "
              f"the same data (check --video-root)")
    print(f"details: {args.out / 'comparison.json'}")
    return summary


if __name__ == "__main__":
    main()
