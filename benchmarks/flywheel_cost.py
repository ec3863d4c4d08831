"""Cost growth of one flywheel round: time per clip and peak memory on pools of 1k, 2k and 4k clips.

For each pool size (``--sizes``, clips; default 1000 2000 4000) a synthetic world of about
size / 4 source videos (3-5 clips each) is generated once and cached under ``--worlds``. Then
one flywheel round runs on it, each in a fresh process, through the real command line
(``train.py fit --config configs/demo/flywheel.yaml``) with ``rounds 1``, ``--pretrain-epochs``
(default 1) epochs of AdaTaiLr pretraining on round 0 and ``--sft-epochs`` (default 0) of SFT,
validation off, no warm start from a round-0 image captioner; everything else is the demo
config (batch 16, 2 DataLoader workers, TensorBoard logging every step, a checkpoint every 10
steps). Round 0 is the pool's raw transcripts copied into a round folder: the initial refiner is
not what this measures.

Measured in the child process, by a callback appended to the config's:

- ``setup``: building the model (the tiny tokenizer is trained on the pool's text here, so this
  grows with the pool);
- ``train``: from then to the end of training (train loaders started, epochs run), per clip
  trained on;
- ``annotate``: re-annotation of the whole pool at the end of the round (checkpoint, index of
  round 0's captions, the captioning pass, manifest), per pool clip; the manifest's own
  ``annotation_seconds`` (the captioning pass alone) is reported next to it. Each pool trains its
  own model, whose captions differ in length, and generation time follows caption length: the
  mean words per caption of round 1 is printed beside it;
- CPU time of each part, the child's whole process tree (workers included): the steadier figure
  on a machine other jobs share, where wall time follows their load;
- memory: the training process's peak RSS (``getrusage``, exact); while the child runs, this
  process samples every ``--sample-every`` seconds the child's process tree (its fork server
  and DataLoader workers) and keeps the largest RSS high-water mark among those (``worker``) and
  the largest sum of proportional set sizes (PSS counts pages shared between forked processes once).

Prints a table, the ratios of every size to the first (target: time per clip within 20%, peak
memory not growing) and a least-squares split of each part into a fixed cost (process and worker
start-up) and a cost per clip; writes ``<out>/flywheel_cost.json``. About 4 minutes on 2 idle CPU
cores at the default sizes (twice that under load), plus about a minute the first time to
generate the worlds (``--sizes 250 500`` for a quick look):

    python benchmarks/flywheel_cost.py [--sizes 1000 2000 4000] [--worlds DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine_info import describe, machine  # noqa: E402

import lightning as L  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402

from datamodules.annotation_sources import open_source  # noqa: E402
from datamodules.annotation_store import (  # noqa: E402
    ShardWriter,
    atomic_write_json,
    read_manifest,
    round_dir,
    write_manifest,
)

CONFIG = ROOT / "configs" / "demo" / "flywheel.yaml"
CLIPS_PER_VIDEO = 4  # the generator draws 3-5 segments per source video
MIB = 1024 * 1024


class RoundTimer(L.Callback):
    """Wall-clock and CPU marks of one flywheel fit: model setup, training (loaders, epochs), re-annotation."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.epochs: list[dict] = []
        self._epoch_start = 0.0
        self._clips = 0
        self._steps = 0

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.marks["setup"], self.cpu["setup"] = time.perf_counter(), tree_cpu_seconds()

    def on_fit_start(self, trainer, pl_module) -> None:
        # After configure_model (network and tokenizer built), before the first train loader starts.
        self.marks["fit_start"], self.cpu["fit_start"] = time.perf_counter(), tree_cpu_seconds()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start, self._clips, self._steps = time.perf_counter(), 0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._clips += len(batch["clip_id"])
        self._steps += 1

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epochs.append({"phase": pl_module.phase, "seconds": time.perf_counter() - self._epoch_start,
                            "clips": self._clips, "steps": self._steps})

    def on_train_end(self, trainer, pl_module) -> None:
        self.marks["train_end"], self.cpu["train_end"] = time.perf_counter(), tree_cpu_seconds()

    def on_fit_end(self, trainer, pl_module) -> None:
        # Runs after the FlywheelCallback's on_fit_end (earlier in the list), which writes the round.
        self.marks["fit_end"], self.cpu["fit_end"] = time.perf_counter(), tree_cpu_seconds()


def tree_cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process and its descendants: the fork server
    and DataLoader workers, live ones directly and finished ones through their parent's children
    times. Other jobs on the machine disturb it far less than wall time."""
    total = 0.0
    me = psutil.Process()
    for p in (me, *me.children(recursive=True)):
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue  # ended between the listing and the read
        total += t.user + t.system + t.children_user + t.children_system
    return total



# ---- the child: one flywheel round ---------------------------------------------------------------
def run_child(spec_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    from train import cli_main

    torch.set_num_threads(spec["threads"])
    began = time.perf_counter()
    cli = cli_main(spec["cli_args"])
    ended = time.perf_counter()
    timer = next(c for c in cli.trainer.callbacks if isinstance(c, RoundTimer))
    m = timer.marks
    manifest = read_manifest(round_dir(spec["run_dir"], 1))
    result = {
        "process_s": ended - began,
        "setup_s": m["fit_start"] - m["setup"],
        "train_s": m["train_end"] - m["fit_start"],
        "epochs_s": sum(e["seconds"] for e in timer.epochs),
        "train_clips": sum(e["clips"] for e in timer.epochs),
        "train_steps": sum(e["steps"] for e in timer.epochs),
        "epochs": timer.epochs,
        "annotate_s": m["fit_end"] - m["train_end"],
        "setup_cpu_s": timer.cpu["fit_start"] - timer.cpu["setup"],
        "train_cpu_s": timer.cpu["train_end"] - timer.cpu["fit_start"],
        "annotate_cpu_s": timer.cpu["fit_end"] - timer.cpu["train_end"],
        "manifest_annotation_s": manifest.get("annotation_seconds"),
        "manifest_clips_per_second": manifest.get("clips_per_second"),
        "records": manifest["records"],
        "failures": manifest.get("failures_detail", {}),
        "peak_rss_main_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
    }
    atomic_write_json(spec["result"], result)


# ---- the parent ----------------------------------------------------------------------------------
def world_for(size: int, seed: int, worlds: Path) -> tuple[Path, float | None]:
    """The cached world of about ``size`` pool clips, generated if missing; (folder, seconds or None)."""
    world = worlds / f"clips{size}_seed{seed}"
    if (world / "world.json").is_file():
        return world, None
    videos = math.ceil(size / CLIPS_PER_VIDEO)
    began = time.perf_counter()
    # The downstream sets and the foundation corpus are not used here: the smallest the generator takes.
    subprocess.run([sys.executable, "-m", "datamodules.synthetic_world", "--out", str(world), "--num-videos",
                    str(videos), "--seed", str(seed), "--foundation-images", "1", "--msrvtt-train", "2",
                    "--msrvtt-test", "1", "--msvd-videos", "2", "--overwrite", "--quiet"], cwd=ROOT, check=True)
    return world, time.perf_counter() - began


def write_round0(world: Path, run: Path) -> int:
    """Round 0 stood in by the raw transcripts (the initial refiner is not measured); returns its records."""
    path = round_dir(run, 0)
    with ShardWriter(path, 0, sync_every=4096, track_ids=False) as writer:
        for record in open_source(world / "pool"):
            writer.write({**record, "round": 0, "source": "raw_asr"})
    pool = (world / "pool").resolve()
    return write_manifest(path, 0, video_root=os.path.relpath(pool, path.resolve()), source="raw_asr")["records"]


def watch(proc: subprocess.Popen, every: float) -> dict:
    """Sample the process tree of ``proc`` until it exits: peak tree PSS and RSS, peak worker high-water mark."""
    peak = {"tree_pss_mib": 0.0, "tree_rss_mib": 0.0, "worker_hwm_mib": 0.0, "processes": 0}
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        pss = rss = 0.0
        for p in tree:
            try:
                info = p.memory_full_info()
                pss, rss = pss + info.pss / MIB, rss + info.rss / MIB
                if p.pid != proc.pid:
                    peak["worker_hwm_mib"] = max(peak["worker_hwm_mib"], _high_water_mark(p.pid))
            except (psutil.NoSuchProcess, psutil.AccessDenied, FileNotFoundError, ProcessLookupError):
                continue
        peak["tree_pss_mib"] = max(peak["tree_pss_mib"], pss)
        peak["tree_rss_mib"] = max(peak["tree_rss_mib"], rss)
        peak["processes"] = max(peak["processes"], len(tree))
        time.sleep(every)
    return peak


def _high_water_mark(pid: int) -> float:
    """A process's peak RSS so far (``VmHWM``), MiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_round(size: int, world: Path, args: argparse.Namespace) -> dict:
    run = args.out / "runs" / f"clips{size}"
    if run.exists():
        shutil.rmtree(run)  # a fresh round every time
    clips = write_round0(world, run)
    cli_args = [
        "fit", "--config", str(CONFIG), "--world_dir", str(world), "--run_dir", str(run),
        "--seed_everything", str(args.seed),
        "--data.init_args.rounds", "1",
        "--data.init_args.pretrain_epochs", str(args.pretrain_epochs),
        "--data.init_args.sft_epochs", str(args.sft_epochs),
        "--data.init_args.num_workers", str(args.workers),
        "--data.init_args.batch_size", str(args.batch_size),
        # The demo warm-starts from the round-0 image captioner, part of the initial stage that is
        # not measured here; it only sets the initial weights.
        "--model.init_args.init_from_ilm", "null",
        "--trainer.limit_val_batches", "0",
        "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks+=__main__.RoundTimer",
    ]
    for item in args.set:
        key, _, value = item.partition("=")
        cli_args += [f"--{key}", value]
    spec = {"cli_args": cli_args, "threads": args.threads, "run_dir": str(run), "result": str(run / "result.json")}
    spec_path = run / "spec.json"
    atomic_write_json(spec_path, spec)
    log_path = args.out / "logs" / f"clips{size}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    began = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        peaks = watch(proc, args.sample_every)
        proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"the round on {clips} clips failed (exit {proc.returncode}); see {log_path}")
    result = json.loads(Path(spec["result"]).read_text())
    words = [len(r["caption"].split()) for r in open_source(round_dir(run, 1))]
    result.update(peaks, pool_clips=clips, child_wall_s=time.perf_counter() - began, log=str(log_path),
                  caption_words=sum(words) / max(len(words), 1))
    result["train_ms_per_clip"] = 1e3 * result["train_s"] / result["train_clips"]
    result["annotate_ms_per_clip"] = 1e3 * result["annotate_s"] / clips
    result["train_cpu_ms_per_clip"] = 1e3 * result["train_cpu_s"] / result["train_clips"]
    result["annotate_cpu_ms_per_clip"] = 1e3 * result["annotate_cpu_s"] / clips
    return result


def linear_fit(points: list[tuple[float, float]]) -> tuple[float | None, float | None]:
    """Least-squares ``seconds = fixed + per_clip * clips``; returns (fixed s, per clip ms), None for one size."""
    if len({x for x, _ in points}) < 2:
        return None, None
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    return my - slope * mx, 1e3 * slope


COLUMNS = (  # key, header, format
    ("pool_clips", "clips", "{:>7d}"),
    ("setup_s", "setup s", "{:>8.1f}"),
    ("train_s", "train s", "{:>8.1f}"),
    ("train_ms_per_clip", "train ms/clip", "{:>14.2f}"),
    ("train_cpu_ms_per_clip", "CPU ms/clip", "{:>12.2f}"),
    ("annotate_s", "annotate s", "{:>11.1f}"),
    ("annotate_ms_per_clip", "annotate ms/clip", "{:>17.2f}"),
    ("annotate_cpu_ms_per_clip", "CPU ms/clip", "{:>12.2f}"),
    ("caption_words", "caption words", "{:>14.1f}"),
    ("peak_rss_main_mib", "main RSS MiB", "{:>13.0f}"),
    ("worker_hwm_mib", "worker RSS MiB", "{:>15.0f}"),
    ("tree_pss_mib", "tree PSS MiB", "{:>13.0f}"),
)
RATIO_KEYS = ("train_ms_per_clip", "train_cpu_ms_per_clip", "annotate_ms_per_clip", "annotate_cpu_ms_per_clip",
              "peak_rss_main_mib", "worker_hwm_mib", "tree_pss_mib")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000],
                   help="pool sizes in clips (the first is the baseline of the ratios)")
    p.add_argument("--worlds", type=Path, default=None,
                   help="folder caching the generated worlds (default: OUT/worlds)")
    p.add_argument("--out", type=Path, default=Path("runs/benchmarks/flywheel_cost"),
                   help="folder for flywheel_cost.json, the runs and their logs")
    p.add_argument("--pretrain-epochs", type=int, default=1, help="pretraining epochs of the round")
    p.add_argument("--sft-epochs", type=int, default=0, help="SFT epochs of the round")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (the demo config's 2)")
    p.add_argument("--batch-size", type=int, default=16, help="clips per batch (the demo config's 16)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each round's process")
    p.add_argument("--seed", type=int, default=0, help="seed of the worlds and the runs")
    p.add_argument("--sample-every", type=float, default=0.2, help="seconds between memory samples")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra CLI setting for every round (repeatable), e.g. model.init_args.max_new_tokens=16")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.child and (args.pretrain_epochs + args.sft_epochs < 1 or min(args.sizes) < 8):
        p.error("a round needs an epoch, and a pool at least 8 clips")
    args.worlds = args.worlds or args.out / "worlds"
    return args


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.child:
        sys.argv = sys.argv[:1]  # the CLI reads only the arguments it is given
        run_child(args.child)
        return None
    info = machine()
    info["torch_threads"] = args.threads  # what each round's process uses
    print(describe(info))

    results: dict[int, dict] = {}
    for size in args.sizes:
        world, generated = world_for(size, args.seed, args.worlds)
        note = f"generated in {generated:.0f} s" if generated is not None else "cached"
        print(f"pool of ~{size} clips: world {world} ({note}); running one round ...", flush=True)
        results[size] = run_round(size, world, args)
        results[size]["world_generation_s"] = generated
        r = results[size]
        print(f"  {r['pool_clips']} clips: train {r['train_s']:.1f} s, annotate {r['annotate_s']:.1f} s, "
              f"peak RSS {r['peak_rss_main_mib']:.0f} MiB", flush=True)

    base = results[args.sizes[0]]
    ratios = {f"{size}/{args.sizes[0]}": {k: results[size][k] / base[k] for k in RATIO_KEYS if base[k]}
              for size in args.sizes[1:]}
    parts = {"train": "train_clips", "annotate": "pool_clips", "train_cpu": "train_clips", "annotate_cpu": "pool_clips"}
    fits = {part: linear_fit([(r[clips], r[f"{part}_s"]) for r in results.values()]) for part, clips in parts.items()}
    marginal = {part: {(a, b): 1e3 * (results[b][f"{part}_s"] - results[a][f"{part}_s"])
                       / (results[b][clips] - results[a][clips])
                       for a, b in zip(args.sizes, args.sizes[1:]) if results[b][clips] != results[a][clips]}
                for part, clips in parts.items()}
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report = {"benchmark": "flywheel_cost", "machine": info,
              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "child"},
              "rounds": {str(k): v for k, v in results.items()}, "ratios": ratios,
              "fixed_s_plus_ms_per_clip": fits,
              "ms_per_added_clip": {part: {f"{a}->{b}": v for (a, b), v in m.items()} for part, m in marginal.items()}}
    atomic_write_json(args.out / "flywheel_cost.json", report)

    print(f"\none flywheel round ({args.pretrain_epochs} pretrain + {args.sft_epochs} SFT epochs, then re-annotation "
          f"of the pool), {args.workers} workers, batch {args.batch_size}, each in a fresh process")
    print(" ".join(f"{h:>{len(f.format(0) if 'd' in f else f.format(0.0))}}" for _, h, f in COLUMNS))
    for size in args.sizes:
        print(" ".join(f.format(results[size][k]) for k, _, f in COLUMNS))
    print(f"ratios to the {base['pool_clips']}-clip pool (time per clip flat: at most x1.2; memory, main RSS and "
          f"worker high-water mark: at most x1.05; the tree PSS is sampled, so it moves with what runs at the time):")
    for name, values in ratios.items():
        print(f"  {name:>10}: " + ", ".join(f"{k} x{v:.3f}" for k, v in values.items()))
    for part, (fixed, per_clip) in fits.items():
        if fixed is not None:
            steps = ", ".join(f"{a}->{b}: {m:.2f}" for (a, b), m in marginal[part].items())
            kind = "CPU" if part.endswith("_cpu") else "wall"
            print(f"  {part.removesuffix('_cpu'):>8} ({kind}): {fixed:.1f} s fixed + {per_clip:.2f} ms per clip "
                  f"(least squares over the sizes); ms per added clip {steps}")
    worst_wall = max(v[k] for v in ratios.values() for k in ("train_ms_per_clip", "annotate_ms_per_clip"))
    worst_cpu = max(v[k] for v in ratios.values() for k in ("train_cpu_ms_per_clip", "annotate_cpu_ms_per_clip"))
    worst_mem = max(v[k] for v in ratios.values() for k in ("peak_rss_main_mib", "worker_hwm_mib") if k in v)
    print(f"time per clip: wall {'flat' if worst_wall <= 1.2 else 'GROWS'} (largest ratio x{worst_wall:.3f}), CPU "
          f"{'flat' if worst_cpu <= 1.2 else 'GROWS'} (x{worst_cpu:.3f}); peak memory "
          f"{'flat' if worst_mem <= 1.05 else 'GROWS'} (largest ratio x{worst_mem:.3f}); "
          f"load average now {info['load_average_end']}; details: {args.out / 'flywheel_cost.json'}")
    return report


if __name__ == "__main__":
    main()
