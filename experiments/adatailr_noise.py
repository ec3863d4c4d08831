"""AdaTaiLr vs cross-entropy under injected caption noise, on the synthetic world.

Builds a training set from the world's clean pool captions with a share of them corrupted
(colour and motion words swapped for other values), trains the tiny VideoLLM twice with the
same seed, data order and steps (once with cross-entropy, once with AdaTaiLr), captions
held-out videos, and scores the captions against ground truth per attribute. Ground truth is
used here to build the experiment and to score it; the library never reads it.

    python experiments/adatailr_noise.py --world data/demo_world --out runs/adatailr_noise
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import time
import zlib
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402

from callbacks.gamma_monitor import GammaMonitor  # noqa: E402
from datamodules.annotation_sources import open_source  # noqa: E402
from datamodules.annotation_store import atomic_write_json  # noqa: E402
from datamodules.clip_datamodule import ClipCaptionDataModule  # noqa: E402
from datamodules.synthetic_world.lexicon import COLORS, MOTIONS, SYNONYMS  # noqa: E402
from evaluation.caption_quality import AttributeAccuracy, GroundTruthFile  # noqa: E402
from lightning_modules.components.gamma_schedules import AdaptiveGamma, ConstantGamma  # noqa: E402
from lightning_modules.video_llm_module import VideoLLMModule  # noqa: E402

SWAPPABLE = {"color": COLORS, "motion": MOTIONS}


def corrupt(caption: str, objects: list[dict], rng: random.Random) -> str:
    """Swap every single-word name of the first object's colour and motion for another value."""
    for attribute, values in SWAPPABLE.items():
        true = objects[0][attribute]
        other = rng.choice([v for v in values if v != true and all(v != o[attribute] for o in objects)])
        for word in SYNONYMS[attribute][true]:
            if " " not in word:
                caption = re.sub(rf"\b{re.escape(word)}\b", SYNONYMS[attribute][other][0], caption, flags=re.IGNORECASE)
    return caption


def build_sets(world: Path, out: Path, noise: float, seed: int, transcripts: bool = True) -> tuple[Path, Path, int]:
    truth = {obj["clip_id"]: obj for _, obj in GroundTruthFile(world / "ground_truth.jsonl").lines() if obj["split"] == "pool"}
    rng = random.Random(seed)
    train, held, corrupted = [], [], 0
    for record in open_source(world / "pool"):
        gt = truth[record["clip_id"]]
        clean = dict(record, caption=gt["caption"], source="experiment")
        if not transcripts:  # video-only captioning: nothing to copy from the transcript
            clean["asr"] = ""
        if zlib.crc32(gt["video_id"].encode()) % 5 == 0:
            held.append(clean)
        elif rng.random() < noise:
            train.append(dict(clean, caption=corrupt(gt["caption"], gt["objects"], rng)))
            corrupted += 1
        else:
            train.append(clean)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in (("train.jsonl", train), ("heldout.jsonl", held)):
        path = out / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(path)
    return paths[0], paths[1], corrupted


def one_cycle(args, train: Path):
    """OneCycle over the whole run (10% warm-up), or None for a constant learning rate."""
    if not args.one_cycle:
        return None
    batches = sum(1 for _ in train.open()) // 16 + 1
    return lambda opt: torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.epochs * batches, pct_start=0.1
    )


def run(name: str, schedule, args, train: Path, held: Path, world: Path, out: Path) -> dict:
    L.seed_everything(args.seed, workers=True)
    model = VideoLLMModule(
        preset="tiny", tokenizer=str(out / "tokenizer"), tokenizer_sources=[str(train), str(world / "pool")],
        image_size=args.image_size, conv_stem=args.conv_stem, frame_difference=args.frame_difference, asr_dropout=args.asr_dropout,
        tag_weight=args.tag_weight, tag_prompt=args.tag_prompt,
        init_from_ilm=str(args.init_from_ilm) if args.init_from_ilm else None,
        gamma_schedule=schedule, w_min=0.2, optimizer=lambda p: torch.optim.AdamW(p, lr=args.lr, weight_decay=0.01),
        scheduler=one_cycle(args, train),
    )
    data = ClipCaptionDataModule(
        train_source=str(train), predict_source=str(held), video_root=str(world / "pool"), val_fraction=0.0,
        batch_size=16, num_workers=2, num_frames=8, image_size=args.image_size, seed=args.seed,
    )
    monitor = GammaMonitor()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=args.epochs, gradient_clip_val=1.0, log_every_n_steps=1,
        logger=L.pytorch.loggers.TensorBoardLogger(out, name=name, version="", default_hp_metric=False),
        callbacks=[monitor], enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    started = time.time()
    trainer.fit(model, datamodule=data)
    train_seconds = time.time() - started
    predictions = [p for batch in trainer.predict(model, datamodule=data) for p in batch]
    truth = GroundTruthFile(world / "ground_truth.jsonl").load()
    accuracy = AttributeAccuracy()
    for p in predictions:
        accuracy.update(p["caption"], truth.get(p["clip_id"]))
    curve = [row["gamma"] for row in monitor.history]
    nll = [row["nll"] for row in monitor.history]
    return {
        "attr_accuracy": accuracy.result()["attr_accuracy"],
        "heldout_clips": len(predictions),
        "gamma_first_last": [curve[0], curve[-1]] if curve else None,
        "gamma_quartiles": [curve[int(q * (len(curve) - 1))] for q in (0, 0.25, 0.5, 0.75, 1.0)] if curve else None,
        "train_nll_first_last": [nll[0], nll[-1]] if nll else None,
        "train_seconds": round(train_seconds, 1),
        "examples": predictions[:3],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, default=Path("data/demo_world"), help="a synthetic world folder")
    parser.add_argument("--out", type=Path, default=Path("runs/adatailr_noise"), help="where sets, logs and results go")
    parser.add_argument("--noise", type=float, default=0.4, help="share of training captions corrupted")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs of each run")
    parser.add_argument("--lam", type=float, default=1.0, help="AdaTaiLr's λ")
    parser.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise, the data order and the init")
    parser.add_argument("--one-cycle", action="store_true", help="OneCycle learning-rate schedule instead of constant")
    parser.add_argument("--asr-dropout", type=float, default=0.0, help="share of training transcripts left out")
    parser.add_argument("--image-size", type=int, default=32, help="frame side in pixels")
    parser.add_argument("--no-transcripts", action="store_true", help="blank every transcript, in training and captioning")
    parser.add_argument("--conv-stem", action="store_true", help="convolutional patch embedding")
    parser.add_argument("--frame-difference", action="store_true", help="frame differences as extra channels")
    parser.add_argument("--tag-weight", type=float, default=0.0, help="weight of the encoder's tag-recognition term")
    parser.add_argument("--tag-prompt", action="store_true",
                        help="write the tags the encoder recognises into the prompt (needs --tag-weight > 0)")
    parser.add_argument("--init-from-ilm", type=Path, default=None,
                        help="start from this image captioner checkpoint (configs/demo/ilm_pretrain.yaml's last.ckpt)")
    parser.add_argument("--losses", nargs="+", choices=("cross_entropy", "adatailr"), default=["cross_entropy", "adatailr"],
                        help="which runs to make")
    args = parser.parse_args()
    train, held, corrupted = build_sets(args.world, args.out, args.noise, args.seed, transcripts=not args.no_transcripts)
    results = {"corrupted_train_captions": corrupted, "args": {k: str(v) for k, v in vars(args).items()}}
    schedules = {"cross_entropy": ConstantGamma(0.0), "adatailr": AdaptiveGamma(lam=args.lam)}
    for name in args.losses:
        results[name] = run(name, schedules[name], args, train, held, args.world, args.out)
    atomic_write_json(args.out / "results.json", results)
    print(f"{'loss':15s} " + " ".join(f"{a:>7s}" for a in ("shape", "color", "motion", "scene", "mean")) + "  Γ first→last")
    for name in args.losses:
        acc = results[name]["attr_accuracy"]
        g = results[name]["gamma_first_last"]
        print(f"{name:15s} " + " ".join(f"{acc[a]:7.3f}" for a in ("shape", "color", "motion", "scene", "mean"))
              + f"  {g[0]:.3f}→{g[1]:.3f}")
    print(f"results: {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
