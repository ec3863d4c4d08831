"""Dataset report speed and memory: the full report against just streaming the same records.

Writes a synthetic ground truth and ``--rounds`` rounds of ``--records`` records each (captions
built from the synthetic world's lexicon, a different share of them corrupted in each round),
then runs, each in its own fresh process so that peak RSS is measured per phase:

- ``stream``: read every record of every round and every ground-truth line, nothing else
  (the baseline: the least any report must do);
- ``report``: ``build_report`` over the same rounds with the ground truth (metrics.json,
  report.md, plots; the example clips have no video files, so no frames are decoded);
- ``report-small``: the same report over rounds of ``--small-records`` records, to show how
  much memory grows with the round size.

Both processes import the same modules before measuring (the report also imports matplotlib,
numpy and PIL for its plots: most of its extra RSS). Prints wall and CPU seconds (CPU time is
the steadier figure on a shared machine), peak RSS and the ratios to the baseline, then one
summary line. The report is single-threaded. Run by hand:

    python benchmarks/dataset_report.py                      # 3 rounds x 10,000 records
    python benchmarks/dataset_report.py --records 100000     # larger rounds
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.synthetic_world.lexicon import SYNONYMS, VALUES  # noqa: E402

TEMPLATES = (
    "{size} {color} {shape} {motion} {scene}.",
    "There is a {color} {shape} that {motion} {scene}.",
    "{scene}, a {size} {shape} in {color} {motion}.",
    "We see a {color} {shape}; it {motion}.",
    "The clip shows a {size} {color} {shape} which {motion} {scene}.",
)
FILLER = ("okay so", "and then", "you can see", "right here", "subscribe to the channel", "welcome back",
          "this one", "let me show you", "now watch")


def _word(rng: random.Random, attribute: str, value: str) -> str:
    return rng.choice(SYNONYMS[attribute][value])


def _caption(rng: random.Random, truth: dict) -> str:
    o = truth["objects"][0]
    return rng.choice(TEMPLATES).format(
        size=_word(rng, "size", o["size"]), color=_word(rng, "color", o["color"]),
        shape=_word(rng, "shape", o["shape"]), motion="moves " + _word(rng, "motion", o["motion"]),
        scene="in the " + _word(rng, "scene", truth["scene"]),
    ).capitalize()


def _noisy(rng: random.Random, truth: dict) -> str:
    o = truth["objects"][0]
    words = [rng.choice(FILLER), "this", _word(rng, "shape", o["shape"])]
    if rng.random() < 0.5:
        words += ["goes", _word(rng, "motion", rng.choice(VALUES["motion"]))]
    return " ".join(words)


def make_data(root: Path, rounds: int, records: int, seed: int) -> tuple[list[Path], Path]:
    from datamodules.annotation_store import ShardWriter, round_dir, write_manifest

    rng = random.Random(seed)
    truths = []
    root.mkdir(parents=True, exist_ok=True)
    gt_path = root / "ground_truth.jsonl"
    with open(gt_path, "w", encoding="utf-8") as f:
        for i in range(records):
            video, segment = divmod(i, 5)
            truth = {
                "clip_id": f"pool_{video:05d}_{segment:03d}", "video_id": f"pool_{video:05d}", "split": "pool",
                "start": 2.0 * segment, "end": 2.0 * segment + 2.0, "scene": rng.choice(VALUES["scene"]),
                "objects": [{a: rng.choice(VALUES[a]) for a in ("shape", "color", "size", "motion")}],
                "asr_noise": "clean",
            }
            truth["caption"] = _caption(rng, truth)
            truths.append(truth)
            f.write(json.dumps(truth) + "\n")
    dirs = []
    for k in range(rounds):
        rdir = round_dir(root / "run", k)
        noise = 0.6 / (k + 1)
        with ShardWriter(rdir, 0, sync_every=4096) as w:
            for t in truths:
                caption = _noisy(rng, t) if rng.random() < noise else _caption(rng, t)
                w.write({"clip_id": t["clip_id"], "video_path": f"videos/{t['video_id']}.mp4", "start": t["start"],
                         "end": t["end"], "asr": _noisy(rng, t), "caption": caption, "round": k,
                         "source": "benchmark"})
        write_manifest(rdir, k, failures=0)
        dirs.append(rdir)
    return dirs, gt_path


def run_phase(phase: str, rounds: list[Path], ground_truth: Path, out: Path) -> dict:
    """Runs in a child process; returns seconds of work and the process's peak RSS."""
    from datamodules.annotation_store import RoundReader
    from evaluation.caption_quality import GroundTruthFile
    from evaluation.dataset_report import build_report

    start, cpu_start = time.perf_counter(), time.process_time()
    if phase == "stream":
        n = 0
        for r in rounds:
            for _ in RoundReader(r):
                n += 1
        for _ in GroundTruthFile(ground_truth).lines():
            n += 1
    else:
        build_report(rounds, ground_truth=ground_truth, out=out, progress=False)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mib": peak_mib}


def child(phase: str, rounds: list[Path], ground_truth: Path, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--phase", phase, "--ground-truth", str(ground_truth), "--out", str(out),
           "--round-dirs", *map(str, rounds)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds to report on")
    parser.add_argument("--records", type=int, default=10_000, help="records per round")
    parser.add_argument("--small-records", type=int, default=2_500, help="records per round of the small report")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated captions")
    parser.add_argument("--phase", choices=("stream", "report"), help=argparse.SUPPRESS)
    parser.add_argument("--round-dirs", nargs="*", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ground-truth", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        print(json.dumps(run_phase(args.phase, args.round_dirs, args.ground_truth, args.out)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        rounds, gt = make_data(tmp / "big", args.rounds, args.records, args.seed)
        small_rounds, small_gt = make_data(tmp / "small", args.rounds, args.small_records, args.seed)
        print(f"data: {args.rounds} rounds x {args.records} records (+ {args.small_records}) "
              f"written in {time.perf_counter() - t0:.1f} s")
        stream = child("stream", rounds, gt, tmp / "out_stream")
        report = child("report", rounds, gt, tmp / "out")
        small = child("report", small_rounds, small_gt, tmp / "out_small")

    print(f"{'phase':<30} {'seconds':>8} {'CPU s':>7} {'peak RSS MiB':>13}")
    for name, r in ((f"stream only ({args.records}/round)", stream), (f"report ({args.records}/round)", report),
                    (f"report ({args.small_records}/round)", small)):
        print(f"{name:<30} {r['seconds']:>8.2f} {r['cpu_seconds']:>7.2f} {r['peak_rss_mib']:>13.1f}")
    rss, rss_stream, rss_small = report["peak_rss_mib"], stream["peak_rss_mib"], small["peak_rss_mib"]
    print(f"dataset_report benchmark: {args.rounds} rounds x {args.records} records: {report['seconds']:.2f} s "
          f"({report['seconds'] / stream['seconds']:.1f}x streaming alone, {report['cpu_seconds']:.2f} CPU s); "
          f"peak RSS {rss:.0f} MiB vs {rss_stream:.0f} MiB streaming alone (+{rss - rss_stream:.0f}); "
          f"{args.small_records}/round report {rss_small:.0f} MiB "
          f"(+{rss - rss_small:.0f} MiB for {args.records / args.small_records:.0f}x the records)")


if __name__ == "__main__":
    main()
