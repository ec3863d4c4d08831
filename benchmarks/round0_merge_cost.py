"""Round-0 merge cost: greedy merges against sampled ones (``merge_samples``), in float32 and bfloat16.

The demo's initial refiner (the image captioner and the tuned merge LLM that the first two stages
of ``make demo`` leave in ``--run``) refines the same ``--num-clips`` pool clips, in batches of
``--batch-size``, once per setting, all in one process. The baseline is greedy merging in float32.
For each setting the script prints the seconds per batch, the ratio to the baseline and the time
spent in the seeded sampler (``components.seeded_sampling``). bfloat16 runs only where the CPU
computes in it natively (``benchmarks.machine_info``); elsewhere it is skipped,
because emulated bfloat16 is slower than float32.

    python benchmarks/round0_merge_cost.py [--run runs/demo] [--world data/demo_world] [--samples 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.machine_info import describe, machine, native_bfloat16_or_float32  # noqa: E402
from datamodules.clip_datamodule import ClipCaptionDataModule  # noqa: E402
from lightning_modules.components import seeded_sampling  # noqa: E402
from lightning_modules.initial_refiner import InitialRefinerModule  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=Path("runs/demo"), help="run folder holding ilm/ and merger_sft/")
    p.add_argument("--world", type=Path, default=Path("data/demo_world"), help="synthetic world (its pool is refined)")
    p.add_argument("--num-clips", type=int, default=64, help="pool clips refined per setting")
    p.add_argument("--batch-size", type=int, default=32, help="clips per batch (the demo's)")
    p.add_argument("--samples", type=int, default=3, help="merge_samples of the sampled settings")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return p.parse_args(argv)


class SamplerClock:
    """Adds up the time spent inside ``SeededSampling.__call__`` while installed."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._original = seeded_sampling.SeededSampling.__call__

    def __enter__(self) -> SamplerClock:
        original = self._original

        def timed(sampler, input_ids, scores):
            start = time.perf_counter()
            out = original(sampler, input_ids, scores)
            self.seconds += time.perf_counter() - start
            return out

        seeded_sampling.SeededSampling.__call__ = timed
        return self

    def __exit__(self, *exc) -> None:
        seeded_sampling.SeededSampling.__call__ = self._original


def pool_batches(world: Path, num_clips: int, batch_size: int) -> list[dict]:
    data = ClipCaptionDataModule(train_source=str(world / "pool"), predict_source=str(world / "pool"),
                                 batch_size=batch_size, num_workers=0, num_frames=3, image_size=32)
    data.setup("predict")
    batches = []
    for batch in data.predict_dataloader():
        batches.append(batch)
        if sum(len(b["clip_id"]) for b in batches) >= num_clips:
            break
    return batches


def seconds_per_batch(args: argparse.Namespace, batches: list[dict], dtype: str, samples: int) -> tuple[float, float]:
    module = InitialRefinerModule(
        ilm_path=str(args.run / "ilm" / "checkpoints" / "last.ckpt"), merger_path=str(args.run / "merger_sft" / "model"),
        frames_per_clip=3, max_new_tokens=32, merge_samples=samples, merger_dtype=dtype,
    )
    module.configure_model()
    with torch.no_grad():
        module.refine(batches[0])  # warm-up (one-off kernel selection, caches)
        with SamplerClock() as clock:
            start = time.perf_counter()
            for batch in batches:
                module.refine(batch)
            total = time.perf_counter() - start
    return total / len(batches), clock.seconds / len(batches)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    for needed in (args.run / "ilm" / "checkpoints" / "last.ckpt", args.run / "merger_sft" / "model", args.world / "pool"):
        if not needed.exists():
            sys.exit(f"round0_merge_cost: {needed} is missing; run `make demo` (its first two stages) first")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(describe(machine()))
    batches = pool_batches(args.world, args.num_clips, args.batch_size)
    print(f"{sum(len(b['clip_id']) for b in batches)} clips in {len(batches)} batches of up to {args.batch_size}")
    settings = [("float32", 0), ("float32", args.samples)]
    if native_bfloat16_or_float32(torch.device("cpu")) == torch.bfloat16:
        settings += [("bfloat16", 0), ("bfloat16", args.samples)]
    else:
        print("bfloat16 skipped: this CPU has neither AMX nor AVX512-BF16")
    baseline = None
    print(f"{'dtype':>9} {'samples':>7} {'s/batch':>8} {'x greedy fp32':>13} {'sampler s/batch':>15}")
    for dtype, samples in settings:
        per_batch, sampler = seconds_per_batch(args, batches, dtype, samples)
        baseline = baseline or per_batch
        print(f"{dtype:>9} {samples:>7} {per_batch:8.2f} {per_batch / baseline:13.2f} {sampler:15.2f}", flush=True)


if __name__ == "__main__":
    main()
