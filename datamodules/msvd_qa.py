"""MSVD-QA for video question answering, read from the original files (DESIGN §7).

``root`` (``--data.root DIR``) holds

- ``train_qa.json``, ``val_qa.json``, ``test_qa.json``: lists of
  ``{"answer", "id", "question", "video_id"}``; ``video_id`` is the number N of ``vidN``;
- ``youtube_mapping.txt``: one ``<clip name> vid<N>`` per line;
- ``YouTubeClips/<clip name>.avi``: the clips, each read whole.

Splits: ``fit`` trains on ``train_qa.json`` and validates on ``val_qa.json`` (checkpoints are
chosen there, never on the test set); ``test`` reads ``test_qa.json``. Items are questions, in
file order; ``index`` is the question's row in its file, which keeps the order after gathering
from several ranks.

Bad input. A malformed file (not JSON, an entry without one of the four keys, a duplicate
question id, a mapping line that is not ``<name> vid<N>``, one video mapped twice) is an error
naming the file and the entry or line. A question whose video id has no mapping line
(``no_mapping``) or whose clip file is missing (``missing_file``) is not an error: it is left
out, logged and reported by ``excluded(split)``, so that the metrics can count it and say over
which questions they were computed. A clip that fails to decode costs its question
(``decode_failed``): the batch carries it in ``failed``.

Batches: ``{video: float [B, T, C, H, W], question: [B], answer: [B], id: [B], video_id: [B],
index: long [B], failed: [{id, video_id, question, answer, index, excluded}]}``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.records import WHOLE_VIDEO_END
from datamodules.video_reader import VideoDecodeError, read_clip
from datamodules.video_transforms import build_video_transform

log = logging.getLogger(__name__)

SPLIT_FILES = {"train": "train_qa.json", "val": "val_qa.json", "test": "test_qa.json"}
MAPPING_FILE = "youtube_mapping.txt"
VIDEO_DIR = "YouTubeClips"
QA_KEYS = ("answer", "id", "question", "video_id")
_MAPPING_LINE = re.compile(r"^(\S+)\s+(vid\d+)$")


class MSVDQAFormatError(ValueError):
    """An MSVD-QA file is malformed; the message names the file and the entry or line."""


@dataclass(frozen=True)
class QAItem:
    index: int
    """Row of the question in its split file."""
    id: int | str
    video_id: str
    """``vid<N>``, the key of ``youtube_mapping.txt``."""
    question: str
    answer: str


def _video_key(value: Any) -> str:
    """``7``, ``"7"`` and ``"vid7"`` all name ``vid7``."""
    text = str(value).strip()
    return text if text.startswith("vid") else f"vid{text}"


def read_qa_json(path: Path) -> list[QAItem]:
    """The questions of one split file, in file order."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise MSVDQAFormatError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise MSVDQAFormatError(f"{path}: expected a list of {{answer, id, question, video_id}} entries")
    items, seen = [], {}
    for k, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise MSVDQAFormatError(f"{path}: entry {k} is not an object")
        missing = [key for key in QA_KEYS if key not in entry]
        if missing:
            raise MSVDQAFormatError(f"{path}: entry {k} (id {entry.get('id')!r}) has no key(s) {', '.join(missing)}")
        for key in ("question", "answer"):
            if not isinstance(entry[key], str) or not entry[key].strip():
                raise MSVDQAFormatError(f"{path}: entry {k} (id {entry['id']!r}): '{key}' must be a non-empty string")
        qid = entry["id"]
        if qid in seen:
            raise MSVDQAFormatError(f"{path}: entries {seen[qid]} and {k} share the question id {qid!r}")
        seen[qid] = k
        items.append(QAItem(k, qid, _video_key(entry["video_id"]), entry["question"].strip(), entry["answer"].strip()))
    return items


def read_mapping(path: Path) -> dict[str, str]:
    """``{"vid<N>": clip name}`` from ``youtube_mapping.txt``; blank lines are skipped."""
    mapping: dict[str, str] = {}
    lines: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            match = _MAPPING_LINE.match(line.strip())
            if match is None:
                raise MSVDQAFormatError(f"{path}:{n}: expected '<clip name> vid<N>', got {line.strip()[:80]!r}")
            name, vid = match.groups()
            if vid in mapping:
                raise MSVDQAFormatError(f"{path}:{n}: {vid} is mapped again (first on line {lines[vid]})")
            mapping[vid], lines[vid] = name, n
    return mapping


class MSVDQAClips(Dataset):
    """Decoded clips with their question; ``__getitem__`` returns a dict, or a failure marker."""

    def __init__(self, items: list[QAItem], paths: dict[str, Path], num_frames: int, image_size: int,
                 train: bool, backend: str = "auto") -> None:
        self.items = items
        self.paths = paths
        self.num_frames = num_frames
        self.train = train
        self.backend = backend
        self.transform = build_video_transform(image_size, train=train)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.items[i]
        sample = asdict(item)
        try:
            # Training draws frame times and crops from torch's global RNG (seeded per worker).
            frames = read_clip(str(self.paths[item.video_id]), 0.0, WHOLE_VIDEO_END, self.num_frames,
                               mode="random" if self.train else "uniform", backend=self.backend)
        except VideoDecodeError as e:
            log.warning("skipping MSVD-QA question %s: video %s: %s", item.id, item.video_id, e)
            return {**sample, "excluded": "decode_failed"}
        return {**sample, "video": self.transform(frames)}


def collate_questions(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack decoded samples; failed ones move to ``failed`` (a batch may end up empty)."""
    ok = [s for s in samples if "excluded" not in s]
    return {
        "video": torch.stack([s["video"] for s in ok]) if ok else torch.empty(0),
        **{key: [s[key] for s in ok] for key in ("question", "answer", "id", "video_id")},
        "index": torch.tensor([s["index"] for s in ok], dtype=torch.long),
        "failed": [s for s in samples if "excluded" in s],
    }


class MSVDQADataModule(L.LightningDataModule):
    """MSVD-QA questions with their clips: train / val / test splits from the original files."""

    def __init__(
        self,
        root: str,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        num_frames: int = 8,
        image_size: int = 32,
        video_dir: str = VIDEO_DIR,
        video_ext: str = ".avi",
        mapping_file: str = MAPPING_FILE,
        backend: str = "auto",
    ) -> None:
        """
        Args:
            root: folder holding the original MSVD-QA files (see the module docstring).
            batch_size: training questions per batch on each rank.
            eval_batch_size: validation/test questions per batch; None uses ``batch_size``.
            num_workers: DataLoader worker processes per rank.
            num_frames: frames sampled per clip (random offsets in training, uniform in evaluation).
            image_size: side of the square frames after resizing and cropping.
            video_dir: folder of the clips, relative to ``root``.
            video_ext: clip file extension.
            mapping_file: the ``<clip name> vid<N>`` list, relative to ``root``.
            backend: video decoder: ``decord``, ``pyav`` or ``auto``.
        """
        super().__init__()
        self.save_hyperparameters()
        if not Path(root).is_dir():
            raise FileNotFoundError(f"data.root: {root} is not a folder (it should hold the MSVD-QA files)")
        self.root = Path(root)
        self._splits: dict[str, list[QAItem]] = {}
        self._all: dict[str, list[QAItem]] = {}
        self._excluded: dict[str, list[dict[str, Any]]] = {}
        self._paths: dict[str, Path] = {}
        self._mapping: dict[str, str] | None = None

    # ---- files ----------------------------------------------------------------------------
    def _file(self, name: str) -> Path:
        path = self.root / name
        if not path.is_file():
            raise FileNotFoundError(f"MSVD-QA file not found: {path}")
        return path

    def load(self, split: str) -> list[QAItem]:
        """The readable questions of ``split`` (``train``, ``val`` or ``test``), read once."""
        if split not in SPLIT_FILES:
            raise ValueError(f"unknown MSVD-QA split {split!r}; expected one of {sorted(SPLIT_FILES)}")
        if split in self._splits:
            return self._splits[split]
        if self._mapping is None:
            self._mapping = read_mapping(self._file(self.hparams.mapping_file))
        items = read_qa_json(self._file(SPLIT_FILES[split]))
        kept, excluded = [], []
        for item in items:
            name = self._mapping.get(item.video_id)
            path = self.root / self.hparams.video_dir / f"{name}{self.hparams.video_ext}" if name else None
            reason = "no_mapping" if name is None else None if path.is_file() else "missing_file"
            if reason:
                excluded.append({**asdict(item), "excluded": reason})
            else:
                self._paths[item.video_id] = path
                kept.append(item)
        if excluded:
            shown = ", ".join(f"{e['id']} ({e['video_id']}: {e['excluded']})" for e in excluded[:10])
            log.warning("MSVD-QA %s: %d of %d questions left out, their video cannot be found: %s",
                        split, len(excluded), len(items), shown)
        self._splits[split], self._all[split], self._excluded[split] = kept, items, excluded
        return kept

    # ---- Lightning hooks ------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate"):
            self.load("train")
            self.load("val")
        if stage in (None, "test"):
            self.load("test")

    def _loader(self, split: str, train: bool) -> DataLoader:
        hp = self.hparams
        dataset = MSVDQAClips(self.load(split), self._paths, hp.num_frames, hp.image_size, train=train,
                              backend=hp.backend)
        return DataLoader(
            dataset,
            batch_size=hp.batch_size if train else (hp.eval_batch_size or hp.batch_size),
            shuffle=train,
            num_workers=hp.num_workers,
            collate_fn=collate_questions,
            # as in the other DataModules: workers start from a fork server, not a fork of a
            # process whose decoder threads may hold locks
            multiprocessing_context="forkserver" if hp.num_workers > 0 else None,
            persistent_workers=hp.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", train=False) if self.load("val") else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    # ---- for the model and the metrics -----------------------------------------------------
    def train_qa(self) -> list[tuple[str, str]]:
        """``(question, answer)`` of every training question, in file order, for vocabulary and baselines.

        Questions whose video is missing count too: the answer distribution is the file's.
        """
        self.load("train")
        return [(item.question, item.answer) for item in self._all["train"]]

    def texts(self) -> Iterator[str]:
        """Questions and answers of the training split: text to train a tokenizer on."""
        for question, answer in self.train_qa():
            yield question
            yield answer

    def excluded(self, split: str) -> list[dict[str, Any]]:
        """Questions of ``split`` left out because their video has no mapping or no file, with the reason."""
        self.load(split)
        return list(self._excluded[split])
