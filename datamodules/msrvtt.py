"""MSR-VTT for text-video retrieval, read from the original files (DESIGN §7).

``root`` (``--data.root DIR``) holds

- ``MSRVTT_data.json``: ``{"videos": [{"video_id", …}], "sentences": [{"caption", "video_id",
  "sen_id"}]}``, 20 captions per video;
- ``MSRVTT_train.9k.csv``: the training list (column ``video_id``);
- ``MSRVTT_JSFUSION_test.csv``: the 1k-A test pairs, one caption per video (columns ``key,
  vid_key, video_id, sentence`` after an unnamed index column);
- ``videos/all/<video_id>.mp4``.

Splits:

- ``fit``: the training list minus a validation split carved from it by a seeded permutation
  (``val_fraction``, ``val_seed``); checkpoints are chosen on it, never on the test set.
  Training items are videos; each time a video is drawn, one of its captions is picked at random
  (``train_captions="random"``), or every (video, caption) pair is its own item (``"all"``).
  Every caption of a training video is thus available. Validation pairs each video with one
  caption picked once by ``val_seed``.
- ``test``: the JSFUSION pairs, in file order.

Bad input: duplicate video ids in any of the three files are an error naming them. A listed video
whose file is missing is counted, logged and left out; ``test_report()`` tells how many test
rows there were and which videos are missing, so that the metrics can say over how many queries
they were computed. A video that fails to decode costs its item, is counted in the batch
(``skipped``, ``skipped_ids``) and logged.

Batches: ``{video: float [B, T, C, H, W], caption: [B], video_id: [B], index: long [B],
skipped: int, skipped_ids: [str]}``; ``index`` is the pair's row in its split (test: its row in
the csv), which keeps pairs in file order after gathering from several ranks.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.records import WHOLE_VIDEO_END
from datamodules.video_reader import VideoDecodeError, read_clip
from datamodules.video_transforms import build_video_transform

log = logging.getLogger(__name__)

DATA_JSON = "MSRVTT_data.json"
TRAIN_CSV = "MSRVTT_train.9k.csv"
TEST_CSV = "MSRVTT_JSFUSION_test.csv"
VIDEO_DIR = "videos/all"


class MSRVTTFormatError(ValueError):
    """An MSR-VTT annotation file is malformed; the message names the file."""


@dataclass(frozen=True)
class RetrievalItem:
    index: int
    video_id: str
    captions: tuple[str, ...]


def _duplicates(ids: list[str]) -> list[str]:
    return sorted(v for v, n in Counter(ids).items() if n > 1)


def _fail_on_duplicates(ids: list[str], path: Path) -> None:
    dups = _duplicates(ids)
    if dups:
        shown = ", ".join(dups[:10]) + (f" and {len(dups) - 10} more" if len(dups) > 10 else "")
        raise MSRVTTFormatError(f"{path}: duplicate video ids ({len(dups)}): {shown}")


def read_data_json(path: Path) -> dict[str, list[str]]:
    """Captions of every video in ``MSRVTT_data.json``, in ``sen_id`` order."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise MSRVTTFormatError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("sentences"), list):
        raise MSRVTTFormatError(f"{path}: expected an object with a 'sentences' list")
    videos = data.get("videos", [])
    if not isinstance(videos, list) or not all(isinstance(v, dict) and "video_id" in v for v in videos):
        raise MSRVTTFormatError(f"{path}: 'videos' must be a list of objects with a 'video_id'")
    _fail_on_duplicates([str(v["video_id"]) for v in videos], path)
    rows: list[tuple[int, str, str]] = []
    for k, s in enumerate(data["sentences"]):
        if not isinstance(s, dict) or not isinstance(s.get("caption"), str) or "video_id" not in s:
            raise MSRVTTFormatError(f"{path}: sentence {k} needs a string 'caption' and a 'video_id'")
        rows.append((int(s.get("sen_id", k)), str(s["video_id"]), s["caption"].strip()))
    captions: dict[str, list[str]] = {}
    for _, video_id, caption in sorted(rows):
        if caption:
            captions.setdefault(video_id, []).append(caption)
    return captions


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise MSRVTTFormatError(f"{path}: missing column(s) {missing}; found {reader.fieldnames}")
        rows = [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    for n, row in enumerate(rows, start=2):
        if any(not row.get(c) for c in required):
            raise MSRVTTFormatError(f"{path}:{n}: empty {', '.join(c for c in required if not row.get(c))}")
    return rows


class MSRVTTClips(Dataset):
    """Decoded clips with their caption(s); ``__getitem__`` returns a dict, or a failure marker."""

    def __init__(
        self,
        items: list[RetrievalItem],
        video_dir: Path,
        video_ext: str,
        num_frames: int,
        image_size: int,
        train: bool,
        backend: str = "auto",
    ) -> None:
        self.items = items
        self.video_dir = video_dir
        self.video_ext = video_ext
        self.num_frames = num_frames
        self.train = train
        self.backend = backend
        self.transform = build_video_transform(image_size, train=train)

    def __len__(self) -> int:
        return len(self.items)

    def path(self, video_id: str) -> Path:
        return self.video_dir / f"{video_id}{self.video_ext}"

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.items[i]
        if self.train:
            # Training randomness (caption choice, frame times, crops) comes from torch's global
            # RNG, which Lightning seeds per worker with ``seed_everything(workers=True)``.
            caption = item.captions[int(torch.randint(len(item.captions), (1,)))]
            mode, generator = "random", None
        else:
            caption, mode, generator = item.captions[0], "uniform", None
        try:
            frames = read_clip(
                str(self.path(item.video_id)), 0.0, WHOLE_VIDEO_END, self.num_frames,
                mode=mode, generator=generator, backend=self.backend,
            )
        except VideoDecodeError as e:
            log.warning("skipping MSR-VTT video %s: %s", item.video_id, e)
            return {"failed": True, "video_id": item.video_id, "index": item.index}
        return {"video": self.transform(frames), "caption": caption, "video_id": item.video_id, "index": item.index}


def collate_clips(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack decoded samples; failed ones are dropped and counted (a batch may end up empty)."""
    ok = [s for s in samples if not s.get("failed")]
    bad = [s["video_id"] for s in samples if s.get("failed")]
    return {
        "video": torch.stack([s["video"] for s in ok]) if ok else torch.empty(0),
        "caption": [s["caption"] for s in ok],
        "video_id": [s["video_id"] for s in ok],
        "index": torch.tensor([s["index"] for s in ok], dtype=torch.long),
        "skipped": len(bad),
        "skipped_ids": bad,
    }


class MSRVTTDataModule(L.LightningDataModule):
    """MSR-VTT retrieval: training list (minus a seeded validation split) and the 1k-A test pairs."""

    def __init__(
        self,
        root: str,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        num_frames: int = 8,
        image_size: int = 32,
        val_fraction: float = 0.1,
        val_seed: int = 0,
        train_captions: Literal["random", "all"] = "random",
        data_json: str = DATA_JSON,
        train_csv: str = TRAIN_CSV,
        test_csv: str = TEST_CSV,
        video_dir: str = VIDEO_DIR,
        video_ext: str = ".mp4",
        backend: str = "auto",
    ) -> None:
        """
        Args:
            root: folder holding the original MSR-VTT files (see the module docstring).
            batch_size: training pairs per batch on each rank.
            eval_batch_size: validation/test pairs per batch; None uses ``batch_size``.
            num_workers: DataLoader worker processes per rank.
            num_frames: frames sampled per clip (random offsets in training, uniform in evaluation).
            image_size: side of the square frames after resizing and cropping.
            val_fraction: share of the training list held out for validation (0 turns it off).
            val_seed: seed of the validation split and of the caption each validation video keeps.
            train_captions: ``random``: one item per video, a random caption each time;
                ``all``: every (video, caption) pair is an item.
            data_json: caption file, relative to ``root``.
            train_csv: training list, relative to ``root``.
            test_csv: test pairs (1k-A), relative to ``root``.
            video_dir: folder of the video files, relative to ``root``.
            video_ext: video file extension.
            backend: video decoder: ``decord``, ``pyav`` or ``auto``.
        """
        super().__init__()
        self.save_hyperparameters()
        if not Path(root).is_dir():
            raise FileNotFoundError(f"data.root: {root} is not a folder (it should hold the MSR-VTT files)")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        if train_captions not in ("random", "all"):
            raise ValueError(f"data.train_captions must be 'random' or 'all', got {train_captions!r}")
        self.root = Path(root)
        self._train: list[RetrievalItem] | None = None
        self._val: list[RetrievalItem] | None = None
        self._test: list[RetrievalItem] | None = None
        self._report: dict[str, Any] = {}

    # ---- files ----------------------------------------------------------------------------
    def _path(self, name: str) -> Path:
        path = self.root / name
        if not path.exists():
            raise FileNotFoundError(f"MSR-VTT file not found: {path}")
        return path

    @property
    def video_root(self) -> Path:
        return self.root / self.hparams.video_dir

    def _video_exists(self, video_id: str) -> bool:
        return (self.video_root / f"{video_id}{self.hparams.video_ext}").is_file()

    def _load_training_list(self) -> None:
        if self._train is not None:
            return
        captions = read_data_json(self._path(self.hparams.data_json))
        csv_path = self._path(self.hparams.train_csv)
        ids = [row["video_id"] for row in _read_csv(csv_path, ("video_id",))]
        _fail_on_duplicates(ids, csv_path)
        no_caption = [v for v in ids if v not in captions]
        if no_caption:
            raise MSRVTTFormatError(
                f"{csv_path}: {len(no_caption)} training video(s) have no caption in "
                f"{self.hparams.data_json}: {', '.join(no_caption[:10])}"
            )
        missing = [v for v in ids if not self._video_exists(v)]
        if missing:
            log.warning("MSR-VTT training list: %d of %d videos missing under %s (left out): %s",
                        len(missing), len(ids), self.video_root, ", ".join(missing[:10]))
        present = [v for v in ids if self._video_exists(v)]
        n_val = 0
        if self.hparams.val_fraction > 0 and len(present) >= 2:
            n_val = min(len(present) - 1, max(1, round(self.hparams.val_fraction * len(present))))
        rng = np.random.default_rng(self.hparams.val_seed)
        val_ids = {present[i] for i in rng.permutation(len(present))[:n_val]}
        train, val = [], []
        for v in present:
            if v in val_ids:
                pick = int(rng.integers(len(captions[v])))
                val.append(RetrievalItem(len(val), v, (captions[v][pick],)))
            elif self.hparams.train_captions == "all":
                train.extend(RetrievalItem(len(train) + k, v, (c,)) for k, c in enumerate(captions[v]))
            else:
                train.append(RetrievalItem(len(train), v, tuple(captions[v])))
        self._train, self._val = train, val
        self._report.update({"train_videos": len(present) - n_val, "val_videos": n_val,
                             "missing_train_videos": missing})

    def _load_test(self) -> None:
        if self._test is not None:
            return
        path = self._path(self.hparams.test_csv)
        rows = _read_csv(path, ("video_id", "sentence"))
        _fail_on_duplicates([r["video_id"] for r in rows], path)
        missing = [r["video_id"] for r in rows if not self._video_exists(r["video_id"])]
        if missing:
            log.warning(
                "MSR-VTT test: %d of %d test videos are missing under %s; the metrics are computed over "
                "the %d remaining queries: %s",
                len(missing), len(rows), self.video_root, len(rows) - len(missing), ", ".join(missing[:10]),
            )
        missing_set = set(missing)
        self._test = [
            RetrievalItem(i, r["video_id"], (r["sentence"],)) for i, r in enumerate(rows) if r["video_id"] not in missing_set
        ]
        self._report.update({"test_rows": len(rows), "missing_test_videos": missing})

    # ---- Lightning hooks ------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate"):
            self._load_training_list()
        if stage in (None, "test"):
            self._load_test()

    def _dataset(self, items: list[RetrievalItem], train: bool) -> MSRVTTClips:
        hp = self.hparams
        return MSRVTTClips(items, self.video_root, hp.video_ext, hp.num_frames, hp.image_size, train=train,
                           backend=hp.backend)

    def _loader(self, dataset: MSRVTTClips, train: bool) -> DataLoader:
        hp = self.hparams
        workers = hp.num_workers
        return DataLoader(
            dataset,
            batch_size=hp.batch_size if train else (hp.eval_batch_size or hp.batch_size),
            shuffle=train,
            num_workers=workers,
            collate_fn=collate_clips,
            drop_last=False,
            persistent_workers=False,
            # as in ClipCaptionDataModule: workers start from a fork server, not a fork of a
            # process whose decoder threads may hold locks
            multiprocessing_context="forkserver" if workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        self._load_training_list()
        return self._loader(self._dataset(self._train, train=True), train=True)

    def val_dataloader(self) -> DataLoader | list:
        self._load_training_list()
        if not self._val:
            return []
        return self._loader(self._dataset(self._val, train=False), train=False)

    def test_dataloader(self) -> DataLoader:
        self._load_test()
        return self._loader(self._dataset(self._test, train=False), train=False)

    # ---- for the model --------------------------------------------------------------------
    def texts(self) -> Iterator[str]:
        """Every caption of the training split (validation videos excluded): tokenizer training text."""
        self._load_training_list()
        for item in self._train:
            yield from item.captions

    def test_report(self) -> dict[str, Any]:
        """``{"test_rows": n, "missing_test_videos": [...]}`` of the test csv (after ``setup("test")``)."""
        self._load_test()
        return {"test_rows": self._report["test_rows"], "missing_test_videos": list(self._report["missing_test_videos"])}

