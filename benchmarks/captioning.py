"""Captioning throughput: batched generation (KV cache, left padding) against one clip at a time.

The same tiny VideoLLM (random init) captions the same clips twice in one process: in batches of
``--batch-size`` and one clip per call. Every caption is forced to ``--max-new-tokens`` tokens
(``min_new_tokens``), so both runs do the same decoding work. Prints captions/s for both and the
ratio (batched / one-at-a-time); the target is >= 4x.

    python benchmarks/captioning.py [--num-clips 64] [--batch-size 16] [--max-new-tokens 24]
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

from lightning_modules.components.presets import build_video_llm  # noqa: E402

WORDS = "a the red blue green small big square circle triangle moves left right up down grows shrinks stays".split()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-clips", type=int, default=64, help="clips captioned by each run")
    p.add_argument("--batch-size", type=int, default=16, help="clips per generate call in the batched run")
    p.add_argument("--max-new-tokens", type=int, default=24, help="tokens generated per caption")
    p.add_argument("--asr-words", type=int, default=12, help="words per (random) transcript")
    p.add_argument("--num-beams", type=int, default=1, help="1 = greedy")
    # One thread by default: on a small shared CPU, torch's spinning worker threads contend with
    # other processes and make timings erratic (seen here: 2 threads on a busy 2-core machine ran
    # both modes several times slower, and the ratio fell to 2.4x).
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def captions_per_second(model, videos, asrs, batch_size: int, **gen) -> float:
    start = time.perf_counter()
    for i in range(0, len(asrs), batch_size):
        model.generate(videos[i : i + batch_size], asrs[i : i + batch_size], **gen)
    return len(asrs) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    model = build_video_llm("tiny", tokenizer_texts=[" ".join(WORDS)]).eval()
    videos = torch.randn(args.num_clips, 8, 3, 32, 32, generator=g)
    # Transcripts of varying length, so the batched run really pads.
    asrs = [
        " ".join(WORDS[int(j)] for j in torch.randint(len(WORDS), (int(n),), generator=g))
        for n in torch.randint(args.asr_words // 2, args.asr_words + 1, (args.num_clips,), generator=g)
    ]
    gen = dict(max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens, num_beams=args.num_beams)
    model.generate(videos[:2], asrs[:2], **gen)  # warm-up
    batched = captions_per_second(model, videos, asrs, args.batch_size, **gen)
    single = captions_per_second(model, videos, asrs, 1, **gen)
    print(f"clips={args.num_clips} new_tokens={args.max_new_tokens} visual_tokens={model.num_visual_tokens} "
          f"beams={args.num_beams} threads={torch.get_num_threads()}")
    print(f"batch {args.batch_size:>3}: {batched:8.2f} captions/s")
    print(f"batch   1: {single:8.2f} captions/s")
    print(f"ratio: {batched / single:.2f}x (target >= 4x)")


if __name__ == "__main__":
    main()
