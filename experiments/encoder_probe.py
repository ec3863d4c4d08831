"""Can the video encoder see an attribute at all? A supervised probe on the synthetic world.

Trains the tiny TimeSformer from scratch with one linear head per attribute (shape, colour and
motion of a clip's first object, and the scene) on clean ground-truth labels, and prints
held-out accuracy next to chance. It separates two failure modes of the captioner: an encoder
that cannot see an attribute at this data size, and a language model that does not read it.
Ground truth is used to build and score the probe; the library never reads it.

    python experiments/encoder_probe.py --world data/demo_world [--image-size 64] [--conv-stem] [--readout flat]

Clips are decoded once (evaluation transform, no augmentation) and held in memory: the demo
world's 811 clips at 32 pixels take about 80 MB.
"""

from __future__ import annotations

import argparse
import time
import zlib
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from datamodules.synthetic_world.lexicon import COLORS, MOTIONS, SCENES, SHAPES
from datamodules.video_reader import VideoDecodeError, read_clip
from datamodules.video_transforms import build_video_transform
from evaluation.caption_quality import GroundTruthFile
from lightning_modules.components.video_encoder import VideoEncoder, tiny_timesformer_config

TARGETS = {"shape": SHAPES, "color": COLORS, "motion": MOTIONS, "scene": SCENES}


def label(truth: dict, attribute: str) -> int:
    value = truth["scene"] if attribute == "scene" else truth["objects"][0][attribute]
    return TARGETS[attribute].index(value)


def load_clips(world: Path, image_size: int, num_frames: int) -> tuple[torch.Tensor, list[dict]]:
    transform = build_video_transform(image_size, train=False)
    clips, kept, failed = [], [], 0
    truths = [obj for _, obj in GroundTruthFile(world / "ground_truth.jsonl").lines() if obj.get("split") == "pool"]
    for truth in tqdm(truths, desc="decoding clips", unit="clip"):
        path = world / "pool" / "videos" / f"{truth['video_id']}.mp4"
        try:
            clips.append(transform(read_clip(path, truth["start"], truth["end"], num_frames)))
        except VideoDecodeError as e:
            failed += 1
            print(f"skipped {truth['clip_id']}: {e}")
            continue
        kept.append(truth)
    if failed:
        print(f"{failed} clips failed to decode and are left out")
    return torch.stack(clips), kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, default=Path("data/demo_world"), help="a synthetic world folder")
    parser.add_argument("--image-size", type=int, default=32, help="frame side in pixels")
    parser.add_argument("--conv-stem", action="store_true", help="convolutional patch embedding")
    parser.add_argument("--frame-difference", action="store_true", help="frame differences as extra channels")
    parser.add_argument("--readout", choices=("cls", "mean", "flat"), default="flat",
                        help="what the heads read: the CLS token, the mean token, or all 65 tokens (keeps position)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    video, truths = load_clips(args.world, args.image_size, num_frames=8)
    labels = {a: torch.tensor([label(t, a) for t in truths]) for a in TARGETS}
    # the same held-out fifth of the videos as experiments/adatailr_noise.py
    held = torch.tensor([zlib.crc32(t["video_id"].encode()) % 5 == 0 for t in truths])
    train_idx, test_idx = (~held).nonzero().squeeze(1), held.nonzero().squeeze(1)

    encoder = VideoEncoder(config=tiny_timesformer_config(image_size=args.image_size), pool_grid=(4, 4, 4),
                           conv_stem=args.conv_stem, frame_difference=args.frame_difference)
    width = encoder.hidden_size * (encoder.num_tokens if args.readout == "flat" else 1)
    heads = nn.ModuleDict({a: nn.Linear(width, len(v)) for a, v in TARGETS.items()})
    params = list(encoder.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)

    def features(x: torch.Tensor) -> torch.Tensor:
        tokens = encoder(x)
        return {"cls": tokens[:, 0], "mean": tokens.mean(1), "flat": tokens.flatten(1)}[args.readout]

    def accuracy(idx: torch.Tensor) -> dict[str, float]:
        encoder.eval()
        with torch.no_grad():
            f = torch.cat([features(video[idx[i:i + 64]]) for i in range(0, len(idx), 64)])
        encoder.train()
        return {a: (heads[a](f).argmax(1) == labels[a][idx]).float().mean().item() for a in TARGETS}

    started = time.time()
    for _ in tqdm(range(args.epochs), desc="training the probe", unit="epoch"):
        order = train_idx[torch.randperm(len(train_idx))]
        for i in range(0, len(order), 16):
            idx = order[i:i + 16]
            f = features(video[idx])
            loss = sum(nn.functional.cross_entropy(heads[a](f), labels[a][idx]) for a in TARGETS)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    held_out, seen = accuracy(test_idx), accuracy(train_idx)
    print(f"{len(train_idx)} training clips, {len(test_idx)} held out, {time.time() - started:.0f} s; "
          f"image {args.image_size}, conv stem {args.conv_stem}, frame difference {args.frame_difference}, readout {args.readout}")
    print(f"{'attribute':10s} {'held-out':>9s} {'train':>7s} {'chance':>7s}")
    for a, values in TARGETS.items():
        print(f"{a:10s} {held_out[a]:9.3f} {seen[a]:7.3f} {1 / len(values):7.3f}")


if __name__ == "__main__":
    main()
