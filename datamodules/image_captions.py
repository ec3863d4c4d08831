"""Captioned still images as one-frame clips: the corpus the offline image captioner (ILM) learns from.

The foundation corpus of the synthetic world (``<world>/foundation/captions.jsonl``, lines
``{"image": "images/000123.png", "caption": "..."}``, paths relative to the file) describes static
attributes only: shapes, colours, sizes, scenes. Any folder or ``.jsonl`` file of that layout
works, for example a real image-caption set converted to it.

Batches have the VideoLLM layout, so a tiny ``VideoLLMModule`` with ``num_frames: 1`` trains on
them unchanged and *is* the image captioner::

    {"video": float [B, 1, C, H, W], "clip_id": [...], "caption": [...], "asr": ["", ...]}

``clip_id`` is the image path relative to the corpus file; the transcript is always empty (an
image has no speech). The validation split is a stable, seeded hash of that id (independent of
file order). Training frames go through the clip transform's mild random crop and a horizontal
flip; evaluation frames are resized and centre-cropped exactly like the frames of pool clips at
prediction time. Decoded stills are kept in memory by default (``cache_images``).

A corpus brings its own words, which the word-level tokenizer of a ``tiny`` model must know:
with ``tokenizer_dir`` set, ``prepare_data`` trains a tokenizer on the corpus captions (plus the
VideoLLM prompt words) and saves it there unless the folder already holds one; point
``model.tokenizer`` at the same folder.
"""

from __future__ import annotations

import itertools
import json
import logging
import zlib
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from datamodules.annotation_store import MAX_LINE_BYTES, AnnotationFormatError
from datamodules.video_transforms import build_video_transform

log = logging.getLogger(__name__)

CAPTIONS_FILE = "captions.jsonl"


def captions_file(root: str | Path) -> Path:
    """The caption file of a corpus: ``root`` itself if it is a ``.jsonl`` file, else ``root/captions.jsonl``."""
    root = Path(root)
    path = root if root.suffix == ".jsonl" else root / CAPTIONS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image-caption file not found")
    return path


def read_image_captions(path: str | Path) -> list[dict[str, str]]:
    """Rows ``{"image", "caption"}`` of a caption file; a malformed line is an error naming file and line.

    Image paths must be relative and stay inside the corpus folder (untrusted input, DESIGN §10).
    """
    path = Path(path)
    rows = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            if len(raw) > MAX_LINE_BYTES:
                raise AnnotationFormatError(f"{path}:{lineno}: line longer than {MAX_LINE_BYTES} bytes")
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise AnnotationFormatError(f"{path}:{lineno}: not a valid UTF-8 JSON line") from None
            if not isinstance(obj, dict) or not all(isinstance(obj.get(k), str) for k in ("image", "caption")):
                raise AnnotationFormatError(f"{path}:{lineno}: expected an object with string fields 'image' and 'caption'")
            image = Path(obj["image"])
            if image.is_absolute() or ".." in image.parts:
                raise AnnotationFormatError(f"{path}:{lineno}: image path must be relative and inside the corpus: {image}")
            rows.append({"image": obj["image"], "caption": " ".join(obj["caption"].split())})
    return rows


def in_val_split(image: str, val_fraction: float, seed: int) -> bool:
    """Stable, seeded held-out membership from a hash of the image path."""
    return (zlib.crc32(f"{seed}/{image}".encode("utf-8")) % 10_000) < round(val_fraction * 10_000)


class ImageCaptionDataset(Dataset):
    """One captioned still per item, as a one-frame clip ``[1, C, H, W]``."""

    def __init__(self, rows: list[dict[str, str]], image_root: Path, transform, cache: bool = False) -> None:
        self.rows = rows
        self.image_root = image_root
        self.transform = transform
        self.cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, index: int) -> torch.Tensor:
        """The decoded still, uint8 ``[C, H, W]`` (kept in memory after the first read if caching)."""
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        path = self.image_root / self.rows[index]["image"]
        try:
            with Image.open(path) as im:
                pixels = np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as e:
            raise RuntimeError(f"cannot read image {path}: {e}") from None
        image = torch.from_numpy(pixels.copy()).permute(2, 0, 1)
        if self.cache is not None:
            self.cache[index] = image
        return image

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        return {"video": self.transform(self.image(index).unsqueeze(0)), "clip_id": row["image"], "caption": row["caption"]}


def collate_stills(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "video": torch.stack([it["video"] for it in items]),
        "clip_id": [it["clip_id"] for it in items],
        "caption": [it["caption"] for it in items],
        "asr": [""] * len(items),
    }


class ImageCaptionDataModule(L.LightningDataModule):
    """Captioned stills (one-frame clips, empty transcripts) for training the image captioner."""

    def __init__(
        self,
        root: str,
        val_fraction: float = 0.05,
        batch_size: int = 32,
        num_workers: int = 0,
        image_size: int = 32,
        crop_scale: tuple[float, float] = (0.8, 1.0),
        hflip: bool = True,
        cache_images: bool = True,
        seed: int = 0,
        tokenizer_dir: str | None = None,
    ) -> None:
        """
        Args:
            root: corpus folder holding ``captions.jsonl`` (e.g. ``<world>/foundation``) or the file itself.
            val_fraction: share of images (seeded hash of the path) held out for validation; 0 = none.
            batch_size: images per batch.
            num_workers: DataLoader worker processes.
            image_size: side of the square frames after resizing and cropping; must match the model.
            crop_scale: area range of the random training crop (kept mild: every object must stay in view).
            hflip: random horizontal flips in training (stills have no left/right words to contradict).
            cache_images: keep decoded stills in memory (the demo corpus is ~25 MB); off for large corpora.
            seed: seed of the validation split.
            tokenizer_dir: if set and without a tokenizer, ``prepare_data`` trains a word-level
                tokenizer on the corpus captions and saves it there (see the module docstring).
        """
        super().__init__()
        self.save_hyperparameters()
        self.caption_path = captions_file(root)
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        self.train_set: ImageCaptionDataset | None = None
        self.val_set: ImageCaptionDataset | None = None

    def prepare_data(self) -> None:
        folder = self.hparams.tokenizer_dir
        if folder is None or (Path(folder) / "tokenizer.json").is_file():
            return
        # Imported here: the data side does not otherwise need the model stack.
        from lightning_modules.components.tokenizer import save_tokenizer, train_tokenizer
        from lightning_modules.components.video_llm import prompt_words

        texts = itertools.chain(prompt_words(), (row["caption"] for row in read_image_captions(self.caption_path)))
        save_tokenizer(train_tokenizer(texts, kind="word"), folder)
        log.info("trained a word-level tokenizer on %s into %s", self.caption_path, folder)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        rows = read_image_captions(self.caption_path)
        val = [r for r in rows if hp.val_fraction > 0 and in_val_split(r["image"], hp.val_fraction, hp.seed)]
        val_ids = {r["image"] for r in val}
        train = [r for r in rows if r["image"] not in val_ids]
        root = self.caption_path.parent
        scale = tuple(hp.crop_scale)
        train_tf = build_video_transform(hp.image_size, train=True, crop_scale=scale, hflip=hp.hflip)
        self.train_set = ImageCaptionDataset(train, root, train_tf, cache=hp.cache_images)
        eval_tf = build_video_transform(hp.image_size, train=False)
        self.val_set = ImageCaptionDataset(val, root, eval_tf, cache=hp.cache_images)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_set, shuffle=False) if self.val_set else []

    def _loader(self, dataset: ImageCaptionDataset | None, shuffle: bool) -> DataLoader:
        assert dataset is not None, "call setup() first"
        workers = self.hparams.num_workers
        return DataLoader(
            dataset, batch_size=self.hparams.batch_size, shuffle=shuffle, num_workers=workers,
            collate_fn=collate_stills, persistent_workers=workers > 0,
            multiprocessing_context="forkserver" if workers > 0 else None,
        )
