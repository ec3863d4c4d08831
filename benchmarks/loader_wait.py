"""Does the loader keep up? The share of training step time spent waiting for data.

Trains the tiny VideoLLM (random init, AdaTaiLr pretraining step) on a synthetic world's pool
through the project's own ``ClipCaptionDataModule`` and ``L.Trainer``, once with ``--workers``
DataLoader workers (default 2) and once with none, the baseline, in the same process. Both runs
see the same batches (the stream's batches do not depend on the worker count; the script
checks that the per-step losses agree) from the same initial weights.

Per training step:

- ``step``: time from the end of the previous step (``on_train_batch_end``) to the end of this one;
- ``wait``: time spent inside the loop's ``next()`` on the train loader during the step, taken
  from Lightning's own ``train_dataloader_next`` profiler action (Lightning fetches one batch
  ahead, so this is the wait for the next batch);
- ``gap``: end of the previous step to the start of this one (the wait plus the loop's own
  bookkeeping and the batch hooks), an upper bound on what data loading costs a step.

The first ``--warmup`` steps (worker start-up, first decodes, allocator warm-up) are left out;
``--steps`` steps are measured (if they run past the end of an epoch, the next epoch's worker
start-up is inside them, as in any real run). ``1st batch`` is the time from the start of the
fit (model built) to the first step: the loader's start-up, workers and their first batches
included.

Prints the mean step and wait per mode, the wait fraction (target < 10% with 2 workers on the
tiny preset) and the ratios workers / no workers. With ``--repeats`` > 1 both modes run that
many times, their order alternating, and the medians are reported. Writes
``<out>/loader_wait.json``. Run by hand, from the repository root:

    python benchmarks/loader_wait.py [--world data/demo_world] [--workers 2] [--steps 40 --warmup 5]

``make world`` writes ``data/demo_world``. Torch runs ``--threads`` threads in the training
process (default 1: on a small shared CPU the workers need the other cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine_info import start_run  # noqa: E402

import lightning as L  # noqa: E402
from lightning.pytorch.profilers import Profiler  # noqa: E402

from datamodules.annotation_store import atomic_write_json  # noqa: E402
from datamodules.clip_datamodule import ClipCaptionDataModule  # noqa: E402
from lightning_modules.video_llm_module import VideoLLMModule  # noqa: E402

FETCH_ACTION = "train_dataloader_next"


class FetchTimer(Profiler):
    """Records (start, stop) of every ``next()`` the training loop calls on its train loader."""

    def __init__(self) -> None:
        super().__init__()
        self.fetches: list[tuple[float, float]] = []
        self._started: float | None = None

    def start(self, action_name: str) -> None:
        if action_name.endswith(FETCH_ACTION):
            self._started = time.perf_counter()

    def stop(self, action_name: str) -> None:
        if action_name.endswith(FETCH_ACTION) and self._started is not None:
            self.fetches.append((self._started, time.perf_counter()))
            self._started = None

    def summary(self) -> str:
        return ""


class StepTimer(L.Callback):
    """Timestamps of each training step's start and end, and its loss."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.losses: list[float] = []
        self.fit_start = 0.0
        self.epochs = 0

    def on_fit_start(self, trainer, pl_module) -> None:
        self.fit_start = time.perf_counter()  # the model is built; the train loader is not started yet

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epochs += 1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ends.append(time.perf_counter())
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss) if loss is not None else float("nan"))



def train_once(args: argparse.Namespace, workers: int, tokenizer: Path) -> dict:
    """One training run with ``workers`` DataLoader workers; per-step timings of the measured steps."""
    L.seed_everything(args.seed, workers=True, verbose=False)
    model = VideoLLMModule(preset="tiny", tokenizer=str(tokenizer), tokenizer_sources=[str(args.source)],
                           num_frames=args.num_frames, image_size=args.image_size)
    data = ClipCaptionDataModule(train_source=str(args.source), val_fraction=0.0, batch_size=args.batch_size,
                                 num_workers=workers, num_frames=args.num_frames, image_size=args.image_size,
                                 seed=args.seed)
    steps = StepTimer()
    fetch = FetchTimer()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=args.warmup + args.steps, max_epochs=-1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, gradient_clip_val=1.0, callbacks=[steps], profiler=fetch,
        default_root_dir=str(args.out / "trainer"),
    )
    began = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(model, datamodule=data)
    wall = time.perf_counter() - began

    rows = []
    for i in range(args.warmup, len(steps.ends)):
        lo, hi = steps.ends[i - 1], steps.ends[i]
        wait = sum(stop - start for start, stop in fetch.fetches if lo < stop <= hi)
        rows.append({"step": hi - lo, "wait": wait, "gap": steps.starts[i] - lo})
    if len(rows) < args.steps:
        raise RuntimeError(f"only {len(rows)} measured steps of {args.steps}")
    total = {k: sum(r[k] for r in rows) for k in ("step", "wait", "gap")}
    return {
        "workers": workers,
        "measured_steps": len(rows),
        "epochs_started": steps.epochs,
        "mean_step_ms": 1e3 * total["step"] / len(rows),
        "mean_wait_ms": 1e3 * total["wait"] / len(rows),
        "mean_gap_ms": 1e3 * total["gap"] / len(rows),
        "wait_fraction": total["wait"] / total["step"],
        "gap_fraction": total["gap"] / total["step"],
        "max_wait_ms": 1e3 * max(r["wait"] for r in rows),
        "first_batch_s": steps.starts[0] - steps.fit_start,
        "fit_wall_s": wall,
        "losses": steps.losses,
    }


def summarise(runs: list[dict]) -> dict:
    """Medians over repeats of one mode."""
    keys = ("mean_step_ms", "mean_wait_ms", "mean_gap_ms", "wait_fraction", "gap_fraction", "max_wait_ms",
            "first_batch_s", "fit_wall_s")
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", type=Path, default=Path("data/demo_world"), help="synthetic world folder (make world)")
    p.add_argument("--source", type=Path, default=None,
                   help="annotation source to train on (default: WORLD/pool, captions = transcripts)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the measured mode (baseline: 0)")
    p.add_argument("--batch-size", type=int, default=16, help="clips per batch (the demo configs' 16)")
    p.add_argument("--num-frames", type=int, default=8, help="frames per clip (tiny preset: 8)")
    p.add_argument("--image-size", type=int, default=32, help="frame side after resizing (tiny preset: 32)")
    p.add_argument("--steps", type=int, default=40, help="measured training steps per run")
    p.add_argument("--warmup", type=int, default=5, help="first steps of each run left out (at least 1)")
    p.add_argument("--repeats", type=int, default=1, help="runs per mode, the order alternating")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the training process (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/benchmarks/loader_wait"),
                   help="folder for loader_wait.json (and the tokenizer trained for the run)")
    args = p.parse_args(argv)
    args.source = args.source or args.world / "pool"
    if not args.source.exists():
        p.error(f"{args.source} does not exist (make world writes data/demo_world)")
    if args.warmup < 1 or args.steps < 1 or args.workers < 1:
        p.error("--warmup, --steps and --workers must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    info = start_run(args.out, args.threads)
    tokenizer = args.out / "tokenizer"  # trained by the first run, loaded by the others

    modes = {0: [], args.workers: []}
    for rep in range(args.repeats):
        order = (0, args.workers) if rep % 2 == 0 else (args.workers, 0)
        for workers in order:
            result = train_once(args, workers, tokenizer)
            print(f"  repeat {rep}, {workers} workers: step {result['mean_step_ms']:.1f} ms, wait "
                  f"{result['mean_wait_ms']:.1f} ms ({100 * result['wait_fraction']:.1f}%)")
            modes[workers].append(result)

    base, measured = summarise(modes[0]), summarise(modes[args.workers])
    loss_diff = max(abs(a - b) for r0, r1 in zip(modes[0], modes[args.workers])
                    for a, b in zip(r0["losses"], r1["losses"]))
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report = {
        "benchmark": "loader_wait",
        "machine": info,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "baseline_workers_0": base,
        f"workers_{args.workers}": measured,
        "ratios": {
            "wait_fraction": measured["wait_fraction"] / base["wait_fraction"],
            "mean_step": measured["mean_step_ms"] / base["mean_step_ms"],
        },
        "max_abs_loss_difference": loss_diff,
        "runs": {str(w): [{k: v for k, v in r.items() if k != "losses"} for r in rs] for w, rs in modes.items()},
    }
    atomic_write_json(args.out / "loader_wait.json", report)

    print(f"\ntiny VideoLLM, batch {args.batch_size}, {args.num_frames}x{args.image_size}px clips from {args.source}; "
          f"{args.steps} steps measured after {args.warmup} warm-up steps, median of {args.repeats} run(s)")
    print(f"{'workers':>8} {'step ms':>9} {'wait ms':>9} {'wait %':>8} {'gap %':>7} {'max wait ms':>12} "
          f"{'1st batch s':>12}")
    for name, r in (("0", base), (str(args.workers), measured)):
        print(f"{name:>8} {r['mean_step_ms']:>9.1f} {r['mean_wait_ms']:>9.1f} {100 * r['wait_fraction']:>8.1f} "
              f"{100 * r['gap_fraction']:>7.1f} {r['max_wait_ms']:>12.1f} {r['first_batch_s']:>12.2f}")
    verdict = "meets" if measured["wait_fraction"] < 0.10 else "misses"
    print(f"wait fraction with {args.workers} workers: {100 * measured['wait_fraction']:.1f}% ({verdict} the < 10% "
          f"target); x{report['ratios']['wait_fraction']:.3f} of the no-worker baseline's "
          f"{100 * base['wait_fraction']:.1f}%; step time x{report['ratios']['mean_step']:.2f}")
    print(f"same batches in both modes: max |loss difference| {loss_diff:.2e}; load average now "
          f"{info['load_average_end']}; details: {args.out / 'loader_wait.json'}")
    return report


if __name__ == "__main__":
    main()
