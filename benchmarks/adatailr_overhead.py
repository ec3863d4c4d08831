"""Overhead of AdaTaiLr over plain cross-entropy, measured in one process.

Times one training step (forward + backward) of an LM-like head, random hidden states
[B, T, H] -> Linear -> V logits -> loss, with three losses on the same data:

    cross_entropy   F.cross_entropy (the baseline)
    tailr           tailr_loss with a constant Γ
    adatailr        tailr_loss_with_stats + AdaptiveGamma.update (what pretraining runs)

Repeats are interleaved (the case order alternates every repeat) so drift in machine load hits
every case alike; the script prints the median and the minimum ms/step of each case and
their ratios to the baseline (on a shared machine the minimum is the steadier figure).
Run by hand:

    python benchmarks/adatailr_overhead.py [--batch 8 --seq 256 --hidden 576 --vocab 8192]
    python benchmarks/adatailr_overhead.py --loss-only   # the loss on fixed logits, no head
    python benchmarks/adatailr_overhead.py --videollm --batch 16   # the whole tiny VideoLLM step

To measure another model, write a function like ``head_cases`` that returns ``Case``s (a name
and a step closure over the model and data) and pass them to ``measure``; the timing loop and
the report do not change.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_modules.components.adatailr import tailr_loss, tailr_loss_with_stats  # noqa: E402
from lightning_modules.components.gamma_schedules import AdaptiveGamma  # noqa: E402


@dataclass
class Case:
    name: str
    step: Callable[[], None]  # one forward + backward, gradients left in place


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def head_cases(args: argparse.Namespace, device: torch.device) -> list[Case]:
    """The loss-level cases: a linear LM head over random hidden states."""
    g = torch.Generator(device="cpu").manual_seed(0)
    dtype = getattr(torch, args.dtype)
    hidden = torch.randn(args.batch, args.seq, args.hidden, generator=g).to(device, dtype)
    labels = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g)
    labels[torch.rand(args.batch, args.seq, generator=g) < args.ignore_frac] = -100
    labels = labels.to(device)
    head = torch.nn.Linear(args.hidden, args.vocab, bias=False).to(device, dtype)
    estimator = AdaptiveGamma(lam=args.lam)

    fixed_logits = head(hidden).detach() if args.loss_only else None

    def run(loss_fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            if fixed_logits is not None:  # the loss alone: logits are a leaf
                loss_fn(fixed_logits.requires_grad_(True)).backward()
                fixed_logits.grad = None
                return
            head.weight.grad = None
            h = hidden.detach().requires_grad_(True)
            loss_fn(head(h)).backward()

        return step

    def ce(logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.reshape(-1, args.vocab).float(), labels.reshape(-1))

    def tailr(logits: torch.Tensor) -> torch.Tensor:
        return tailr_loss(logits, labels, 0.5, w_min=0.2)

    def adatailr(logits: torch.Tensor) -> torch.Tensor:
        loss, stats = tailr_loss_with_stats(logits, labels, estimator.gamma, w_min=0.2)
        estimator.update(stats.mean_p, stats.num_tokens)
        return loss

    return [Case("cross_entropy", run(ce)), Case("tailr", run(tailr)), Case("adatailr", run(adatailr))]


def videollm_cases(args: argparse.Namespace, device: torch.device) -> list[Case]:
    """The whole VideoLLM training step (tiny preset): encoder, connector, LM, loss, backward."""
    from lightning_modules.components.presets import build_video_llm

    g = torch.Generator(device="cpu").manual_seed(0)
    words = [f"w{i}" for i in range(200)]
    captions = [" ".join(words[(7 * i + j) % 200] for j in range(12)) for i in range(args.batch)]
    asrs = [" ".join(words[(3 * i + j) % 200] for j in range(20)) for i in range(args.batch)]
    net = build_video_llm("tiny", tokenizer_texts=captions + asrs).to(device)
    video = torch.randn(args.batch, 8, 3, 32, 32, generator=g).to(device)
    batch = {k: v.to(device) for k, v in net.build_batch(asrs, captions).items()}
    estimator = AdaptiveGamma(lam=args.lam)

    def run(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            net.zero_grad(set_to_none=True)
            out = net(video, **batch)
            loss_fn(out.logits, out.labels).backward()

        return step

    def ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))

    def adatailr(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss, stats = tailr_loss_with_stats(logits, labels, estimator.gamma, w_min=0.2)
        estimator.update(stats.mean_p, stats.num_tokens)
        return loss

    return [Case("cross_entropy", run(ce)), Case("adatailr", run(adatailr))]


def measure(cases: list[Case], repeats: int, warmup: int, device: torch.device) -> dict[str, list[float]]:
    for case in cases:
        for _ in range(warmup):
            case.step()
    times: dict[str, list[float]] = {c.name: [] for c in cases}
    for r in range(repeats):
        for case in cases if r % 2 == 0 else cases[::-1]:
            _sync(device)
            t0 = time.perf_counter()
            case.step()
            _sync(device)
            times[case.name].append(1e3 * (time.perf_counter() - t0))
    return times


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--ignore-frac", type=float, default=0.3, help="share of unsupervised positions")
    p.add_argument("--lam", type=float, default=2.0, help="λ of the adaptive estimator")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--loss-only", action="store_true", help="time the loss on fixed logits only")
    p.add_argument("--videollm", action="store_true",
                   help="time the whole tiny-preset VideoLLM training step (uses --batch; ignores the head sizes)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args(argv)

    device = torch.device(args.device)
    cases = videollm_cases(args, device) if args.videollm else head_cases(args, device)
    times = measure(cases, args.repeats, args.warmup, device)
    base = statistics.median(times[cases[0].name])
    base_min = min(times[cases[0].name])
    shape = "tiny VideoLLM step" if args.videollm else f"T={args.seq} H={args.hidden} V={args.vocab} loss_only={args.loss_only}"
    print(f"device={device} dtype={args.dtype} B={args.batch} {shape} repeats={args.repeats} threads={torch.get_num_threads()}")
    for case in cases:
        med, best = statistics.median(times[case.name]), min(times[case.name])
        print(
            f"{case.name:>14}: {med:9.3f} ms/step median  x{med / base:.4f}   "
            f"{best:9.3f} ms min  x{best / base_min:.4f}   (ratios to {cases[0].name})"
        )


if __name__ == "__main__":
    main()
