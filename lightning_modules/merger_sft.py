"""Optional tuning of round 0's merge LLM on the human refinement examples, and nothing else.

Each example is a pool clip a person captioned (``<world>/pool/human_refined.jsonl``): the
input is what the refiner will see at prediction time, the image captioner's captions of K
frames of that clip plus its ASR transcript, put into the merge prompt
(``components.caption_merger``); the target is the human caption. The loss is cross-entropy
on the target tokens (and the closing eos) only. The image captioner stays frozen; the LLM
learns whole by default, or only its top ``trainable_layers`` decoder blocks (and the final
norm), which is cheaper. The prompt head every example shares runs once per batch.

At the end of ``fit`` rank 0 saves the tuned LLM, its tokenizer and the prompt settings as a
local HF folder (``output_dir``), written to a temporary folder and renamed into place; point
the refiner's ``model.merger_path`` at it::

    python train.py fit --config configs/demo/merger_sft.yaml

Lightning checkpoints of this module would hold the whole LLM; the demo config turns them off.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable

from datamodules.synthetic_world.lexicon import attributes_mentioned
from lightning_modules.components.caption_merger import MERGE_INSTRUCTION, MERGE_SYSTEM, CaptionMerger
from lightning_modules.components.frame_captioner import FRAME_CAPTIONER_KINDS, build_frame_captioner
from lightning_modules.initial_refiner import uniform_frame_indices

log = logging.getLogger(__name__)


class MergerSFTModule(L.LightningModule):
    """Tunes the merge LLM: (frame captions + ASR) → human caption."""

    def __init__(
        self,
        ilm_kind: str = "tiny",
        ilm_path: str | None = None,
        ilm_tokenizer: str | None = None,
        ilm_prompt: str | None = None,
        ilm_max_new_tokens: int = 24,
        base_model_path: str | None = None,
        cache_dir: str | None = None,
        output_dir: str | None = None,
        frames_per_clip: int = 3,
        trainable_layers: int = -1,
        instruction: str = MERGE_INSTRUCTION,
        system: str | None = MERGE_SYSTEM,
        use_chat_template: bool | None = None,
        dedupe_frames: bool = True,
        max_asr_words: int = 48,
        max_target_tokens: int = 48,
        max_new_tokens: int = 40,
        val_show_examples: int = 3,
        optimizer: OptimizerCallable = torch.optim.AdamW,
    ) -> None:
        """
        Args:
            ilm_kind: image captioner backend, ``tiny`` or ``hf`` (as in ``InitialRefinerModule``).
            ilm_path: the image captioner checkpoint (``.ckpt`` for ``tiny``, a folder for ``hf``).
            ilm_tokenizer: ``tiny``: tokenizer folder; None finds it from the checkpoint.
            ilm_prompt: ``hf``: optional prompt the frame caption continues.
            ilm_max_new_tokens: frame caption length limit.
            base_model_path: local HF causal-LM folder to tune; None = SmolLM2-135M-Instruct.
            cache_dir: where the converted SmolLM2 folder is cached.
            output_dir: where the tuned HF folder is saved at the end of ``fit`` (None: not saved).
            frames_per_clip: K frames captioned per clip; use the refiner's value.
            trainable_layers: top decoder blocks that learn (with the final norm); -1 = the whole LLM.
            instruction: merge instruction; the refiner must use the same (saved with the folder).
            system: system message for chat-template LLMs.
            use_chat_template: None = whenever the tokenizer has one.
            dedupe_frames: list identical frame captions once.
            max_asr_words: transcripts are cut to this many words in the prompt.
            max_target_tokens: human captions are cut to this many tokens (eos included).
            max_new_tokens: caption length limit when validating by generation.
            val_show_examples: validation captions logged as examples (first batch).
            optimizer: optimizer factory (e.g. ``torch.optim.AdamW`` with its ``lr``).
        """
        super().__init__()
        if ilm_kind not in FRAME_CAPTIONER_KINDS:
            raise ValueError(f"model.ilm_kind: must be one of {FRAME_CAPTIONER_KINDS}, got {ilm_kind!r}")
        if ilm_path is None:
            raise ValueError("model.ilm_path: merger tuning needs the image captioner checkpoint")
        for key, value in (("ilm_path", ilm_path), ("ilm_tokenizer", ilm_tokenizer), ("base_model_path", base_model_path)):
            if value is not None and not Path(value).exists():
                raise FileNotFoundError(f"model.{key}: {value} does not exist")
        if trainable_layers == 0:
            raise ValueError("model.trainable_layers: 0 would train nothing; use a positive count or -1 for all")
        self.save_hyperparameters()
        self.optimizer_factory = optimizer
        self.captioner: torch.nn.Module | None = None
        self.merger: CaptionMerger | None = None

    # ---- construction -----------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.merger is not None:
            return
        hp = self.hparams
        self.captioner = build_frame_captioner(
            hp.ilm_kind, hp.ilm_path, tokenizer=hp.ilm_tokenizer, max_new_tokens=hp.ilm_max_new_tokens,
            prompt=hp.ilm_prompt, key="model.ilm_path",
        )
        self.captioner.requires_grad_(False)
        self.merger = CaptionMerger.from_path(
            hp.base_model_path, cache_dir=hp.cache_dir, key="model.base_model_path",
            instruction=hp.instruction, system=hp.system, use_chat_template=hp.use_chat_template,
            dedupe_frames=hp.dedupe_frames, max_asr_words=hp.max_asr_words, max_new_tokens=hp.max_new_tokens,
        )
        freeze_below(self.merger.language_model, hp.trainable_layers)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.captioner is not None:
            self.captioner.eval()  # frozen and deterministic, whatever the loop asks
        return self

    # ---- steps --------------------------------------------------------------------------------
    def frame_captions(self, video: torch.Tensor) -> list[list[str]]:
        assert self.captioner is not None
        b, t = video.shape[:2]
        k = self.hparams.frames_per_clip
        frames = video[:, uniform_frame_indices(t, k).to(video.device)]
        with torch.no_grad():
            flat = self.captioner.caption_frames(frames.flatten(0, 1))
        return [flat[i * k : (i + 1) * k] for i in range(b)]

    def _loss(self, batch: dict[str, Any]) -> torch.Tensor:
        assert self.merger is not None
        frames = self.frame_captions(batch["video"])
        inputs = self.merger.sft_batch(frames, batch["asr"], batch["caption"], self.hparams.max_target_tokens)
        inputs = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        return self.merger.target_loss(**inputs)

    def training_step(self, batch: dict[str, Any], batch_idx: int):
        if not batch["clip_id"]:
            return None
        loss = self._loss(batch)
        self.log("train/merge_loss", loss, prog_bar=True, batch_size=len(batch["clip_id"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if not batch["clip_id"]:
            return
        size = len(batch["clip_id"])
        self.log("val/merge_loss", self._loss(batch), prog_bar=True, batch_size=size, sync_dist=True)
        assert self.merger is not None
        captions = self.merger.merge(self.frame_captions(batch["video"]), batch["asr"])
        for attribute in ("shape", "color", "scene", "motion"):
            judged = [(attributes_mentioned(g)[attribute], attributes_mentioned(r)[attribute])
                      for g, r in zip(captions, batch["caption"])]
            agree = [float(bool(g) and g <= r) for g, r in judged if r]
            if agree:
                self.log(f"val/agreement_{attribute}", sum(agree) / len(agree), batch_size=len(agree), sync_dist=True)
        if batch_idx == 0 and self.trainer.is_global_zero:
            for ref, gen in list(zip(batch["caption"], captions))[: self.hparams.val_show_examples]:
                log.info("human: %s | merged: %s", ref, gen)

    def configure_optimizers(self):
        return self.optimizer_factory([p for p in self.parameters() if p.requires_grad])

    def on_fit_end(self) -> None:
        folder = self.hparams.output_dir
        if folder is None or not self.trainer.is_global_zero:
            return
        assert self.merger is not None
        save_atomically(self.merger, folder)
        log.info("tuned merge LLM saved to %s", folder)


def freeze_below(model: torch.nn.Module, trainable_layers: int) -> None:
    """Freeze everything but the top ``trainable_layers`` decoder blocks and the final norm (-1: train all)."""
    if trainable_layers < 0:
        model.requires_grad_(True)
        return
    layers = getattr(model.get_decoder(), "layers", None)
    if layers is None:
        raise ValueError(f"model.trainable_layers: cannot find the decoder blocks of {type(model).__name__}; use -1")
    model.requires_grad_(False)
    for block in list(layers)[-trainable_layers:]:
        block.requires_grad_(True)
    norm = getattr(model.get_decoder(), "norm", None)
    if norm is not None:
        norm.requires_grad_(True)


def save_atomically(merger: CaptionMerger, folder: str | os.PathLike) -> Path:
    """Save to a temporary sibling folder, then swap it into place (no half-written folder on a crash)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
    try:
        merger.save_pretrained(tmp)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return folder
