"""Video-text cosine similarity of annotation records under a trained dual encoder.

The dataset report's second quality measure (DESIGN §7): how well does each caption match its
clip in the eyes of a retrieval model? It needs no ground truth, so it applies to real data.
``python -m evaluation.dataset_report … --dual-encoder CKPT`` builds it with
:func:`similarity_from_checkpoint` and passes it to ``build_report(similarity_fn=…)``.

- The checkpoint is a ``DualEncoder`` checkpoint (``train.py fit`` with a retrieval config),
  read with ``torch.load(weights_only=True)``: the network is rebuilt from its stored
  hyperparameters, its weights loaded strictly, and the tiny text tower's tokenizer restored
  from the checkpoint. Optimizer settings and ``init_from`` are ignored.
- A clip is decoded as the retrieval evaluation decodes it: ``read_clip`` with uniform frame
  sampling inside ``[start, end]`` of the record's ``video_file`` (the report resolves it against
  the source's video root), then the evaluation transform; frame count and size come from the
  checkpoint.
- A clip that fails to decode is logged with its file and reason and gets ``None``: the report
  counts it per source (``quality.similarity.failed``) instead of stopping or dropping it unseen.
- A clip's video embedding depends on the clip only, and every round of a pool holds the same
  clips, so it is computed once per run and reused by every source that holds the clip (keyed by
  clip id, start and end): decoding and the video tower are most of the cost. The cache keeps at
  most ``max_cached_clips`` embeddings (``embed_dim`` floats each: 1 KiB at 256-d), so memory
  stays bounded on any pool. Once full it keeps what it holds and stores nothing new: the
  sources are read in the same order, under which an LRU cache would evict every clip before
  its next use.
- Records arrive in the report's batches and are encoded in batches of ``batch_size``; nothing
  else is held, so a round of any size streams through.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from datamodules.video_reader import VideoDecodeError, read_clip
from datamodules.video_transforms import build_video_transform
from lightning_modules.dual_encoder import DualEncoder

log = logging.getLogger(__name__)

#: ``DualEncoder`` arguments that only matter for training: not taken from the checkpoint.
TRAINING_ONLY_ARGS = ("init_from", "optimizer", "lr_scheduler", "lr_scheduler_interval")


def load_dual_encoder(path: str | os.PathLike, device: str | torch.device = "cpu") -> DualEncoder:
    """The ``DualEncoder`` of a checkpoint file, in eval mode on ``device``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--dual-encoder: checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, or one holding more than plain data
        raise ValueError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}: {e})") from None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path}: not a Lightning checkpoint (no hyper_parameters or state_dict)")
    class_path = hparams.get("_class_path", f"{DualEncoder.__module__}.{DualEncoder.__name__}")
    if class_path != f"{DualEncoder.__module__}.{DualEncoder.__name__}":
        raise ValueError(f"{path}: a checkpoint of {class_path}, not of a dual encoder")
    accepted = set(inspect.signature(DualEncoder.__init__).parameters) - {"self", *TRAINING_ONLY_ARGS}
    model = DualEncoder(**{k: v for k, v in hparams.items() if k in accepted})
    model.configure_model()
    try:
        model.load_initial_weights(str(path))  # strict weights + the stored tokenizer
    except RuntimeError as e:
        raise ValueError(f"{path}: its weights do not fit the dual encoder its hyperparameters describe: {e}") from None
    return model.eval().to(device)


class DualEncoderSimilarity:
    """``records -> cosine similarity of each record's caption and clip`` (None: clip undecodable).

    Args:
        model: a trained ``DualEncoder`` (see :func:`load_dual_encoder`).
        batch_size: clips and captions per forward pass.
        max_cached_clips: video embeddings kept for reuse by later sources (0: no cache).
        backend: video decoder (``decord``, ``pyav`` or ``auto``).
        description: how the report names this measure (e.g. the checkpoint's path).
    """

    def __init__(self, model: DualEncoder, batch_size: int = 32, max_cached_clips: int = 200_000,
                 backend: str = "auto", description: str = "dual encoder") -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.batch_size = batch_size
        self.max_cached_clips = max_cached_clips
        self.backend = backend
        self.num_frames = int(model.hparams.num_frames)
        self.transform = build_video_transform(int(model.hparams.image_size), train=False)
        self.description = description
        self.cache: dict[tuple[str, float, float], torch.Tensor] = {}
        self.decoded = 0
        self.reused = 0
        self.failed = 0

    def __call__(self, records: Sequence[dict]) -> list[float | None]:
        out: list[float | None] = []
        for i in range(0, len(records), self.batch_size):
            out += self._batch(records[i:i + self.batch_size])
        return out

    @staticmethod
    def _key(record: dict) -> tuple[str, float, float]:
        return record["clip_id"], float(record.get("start", 0.0)), float(record.get("end", 0.0))

    @torch.no_grad()
    def _batch(self, records: Sequence[dict]) -> list[float | None]:
        videos: dict[int, torch.Tensor] = {}
        to_encode: list[tuple[int, torch.Tensor]] = []
        for i, record in enumerate(records):
            key = self._key(record)
            if key in self.cache:
                videos[i] = self.cache[key]
                self.reused += 1
                continue
            frames = self._decode(record)
            if frames is not None:
                to_encode.append((i, frames))
        if to_encode:
            embedded = self.model.net.encode_video(torch.stack([f for _, f in to_encode]).to(self.device)).float()
            for (i, _), row in zip(to_encode, embedded):
                videos[i] = row
                if len(self.cache) < self.max_cached_clips:
                    self.cache[self._key(records[i])] = row
        if not videos:
            return [None] * len(records)
        kept = sorted(videos)
        text = self.model.net.encode_text(**self.model.net.text.tokenize([records[i]["caption"] for i in kept]))
        sims = (text.float() * torch.stack([videos[i] for i in kept])).sum(dim=-1).tolist()
        out: list[float | None] = [None] * len(records)
        for i, s in zip(kept, sims):
            out[i] = s
        return out

    def _decode(self, record: dict) -> torch.Tensor | None:
        video_file = record.get("video_file") or ""
        start, end = float(record.get("start", 0.0)), float(record.get("end", 0.0))
        try:
            if not video_file:
                raise VideoDecodeError(video_file, start, end, "the record names no video file")
            frames = read_clip(video_file, start, end, self.num_frames, mode="uniform", backend=self.backend)
        except VideoDecodeError as e:
            self.failed += 1
            log.warning("clip %s: no video-text similarity: %s", record.get("clip_id"), e)
            return None
        self.decoded += 1
        return self.transform(frames)


def similarity_from_checkpoint(path: str | os.PathLike, device: str | None = None, **kwargs) -> DualEncoderSimilarity:
    """A :class:`DualEncoderSimilarity` over the checkpoint's model, on CUDA when available by default."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    kwargs.setdefault("description", f"dual encoder `{path}`")
    return DualEncoderSimilarity(load_dual_encoder(path, device), **kwargs)
