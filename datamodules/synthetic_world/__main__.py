"""Command line: ``python -m datamodules.synthetic_world --out DIR --num-videos N --seed S``."""

import argparse
import sys
import time

from .asr_noise import DEFAULT_NOISE_MIX, NOISE_DISTS
from .writer import POOL_FORMATS


def _noise_mix(text: str) -> tuple[float, float, float]:
    try:
        weights = tuple(float(w) for w in text.split(","))
    except ValueError:
        weights = ()
    if len(weights) != 3 or min(weights) < 0 or sum(weights) <= 0:
        raise argparse.ArgumentTypeError(
            f"expected three non-negative comma-separated weights, got {text!r}")
    return weights


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m datamodules.synthetic_world",
        description=(
            "Generate a synthetic world: a segmented video pool with noisy ASR transcripts "
            "(HowTo100M format), ~5% human-refined clean captions, ground truth for evaluation, "
            "a still-image foundation corpus, and MSR-VTT and MSVD-QA copies in their original "
            "formats. The same seed gives byte-identical annotation files."),
        epilog=(
            "The world is built in a hidden sibling folder and renamed to --out when complete; "
            "world.json is written last, so a folder holding it is a finished world."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", required=True, help="folder to create the world in")
    parser.add_argument("--num-videos", type=int, required=True,
                        help="number of pool source videos (3-5 segments/clips each)")
    parser.add_argument("--seed", type=int, required=True, help="random seed of the whole world")
    parser.add_argument("--noise-dist", choices=NOISE_DISTS, default="uniform",
                        help="how noisy ASR segments are spread: uniform (independent per "
                             "segment), bursty (per-video rates from a heavy-tailed Beta law, "
                             "mean = rate), structured (biased speakers systematically swap "
                             "motions or colours)")
    parser.add_argument("--noise-rate", type=_rate, default=0.5,
                        help="expected fraction of noisy ASR segments, in [0, 1]")
    parser.add_argument("--noise-mix", type=_noise_mix, default=DEFAULT_NOISE_MIX,
                        help="weights of misrecognised,misaligned,unrelated noise "
                             "(uniform and bursty)")
    parser.add_argument("--human-fraction", type=_rate, default=0.05,
                        help="fraction of pool clips with a clean human caption (at least one)")
    parser.add_argument("--foundation-images", type=int, default=2000,
                        help="still images with static-attribute captions (offline ILM/LLM)")
    parser.add_argument("--msrvtt-train", type=int, default=150,
                        help="MSR-VTT training-list videos (last tenth marked validate)")
    parser.add_argument("--msrvtt-test", type=int, default=50,
                        help="MSR-VTT test videos (one JSFUSION caption each)")
    parser.add_argument("--msrvtt-videos", type=int, default=None,
                        help="MSR-VTT total; if given, 3/4 train list and 1/4 test "
                             "(overrides --msrvtt-train and --msrvtt-test)")
    parser.add_argument("--msvd-videos", type=int, default=120,
                        help="MSVD-QA videos, split 60/10/30 into train/val/test")
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels (even)")
    parser.add_argument("--fps", type=int, default=8, help="frames per second of all videos")
    parser.add_argument("--pool-format", choices=POOL_FORMATS, default="folder",
                        help="folder: pool/asr.json (HowTo100M format) + pool/videos/; webdataset: "
                             "the pool as video2dataset writes it, tar shards pool/00000.tar … of "
                             "one sample per clip ({key}.mp4, {key}.txt, {key}.json) and "
                             "pool/00000_stats.json …")
    parser.add_argument("--videos-per-shard", type=int, default=100,
                        help="webdataset: source videos per tar shard (video2dataset's "
                             "number_sample_per_shard)")
    parser.add_argument("--workers", type=int, default=2,
                        help="processes for drawing and encoding (results do not depend on it)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing world (or non-empty folder) at --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .generate import generate_world

    began = time.perf_counter()
    try:
        out = generate_world(
            args.out, args.num_videos, args.seed, args.noise_dist, args.noise_rate,
            noise_mix=args.noise_mix, human_fraction=args.human_fraction,
            foundation_images=args.foundation_images, msrvtt_train=args.msrvtt_train,
            msrvtt_test=args.msrvtt_test, msrvtt_videos=args.msrvtt_videos,
            msvd_videos=args.msvd_videos, size=args.size, fps=args.fps, workers=args.workers,
            overwrite=args.overwrite, progress=not args.quiet, pool_format=args.pool_format,
            videos_per_shard=args.videos_per_shard)
    except (FileExistsError, ValueError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    if not args.quiet:
        print(f"synthetic world written to {out} in {time.perf_counter() - began:.1f} s",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
