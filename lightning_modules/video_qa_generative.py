"""Video QA, generative mode: the VideoLLM answers each question with greedy decoding.

The network is the VideoLLM (``components.video_llm.VideoLLM``, built from a preset as
``VideoLLMModule`` builds it). Its prompt template has three slots, all constructor arguments
of the VideoLLM, so QA needs no change to it: the instruction, the text introduced by
``transcript_prefix`` (the ASR transcript when captioning) and the cue after which the target
starts. Here they read ``{instruction} Question: {question} Answer: {answer}</s>``: the question
goes where the transcript goes, and only answer tokens are supervised.

- zero-shot: ``test`` with a randomly initialised VideoLLM, or with ``init_from`` a captioning
  checkpoint (a ``VideoLLMModule`` run: VideoLLM pretraining or the flywheel); to ask such a model
  in the prompt it was trained on, set ``instruction``/``question_prefix``/``answer_cue`` to its
  template ("Describe the video.", "Transcript:", "Caption:");
- fine-tuned: ``fit`` trains on the training questions with cross-entropy on the answer tokens
  (from ``init_from`` or from scratch); checkpoints are chosen on the validation accuracy.

Tokenizer (``tiny`` preset): with ``--ckpt_path``, the one stored in that checkpoint (every
checkpoint of this module carries its tokenizer, so it is tested with the vocabulary it was
trained with); else the folder ``tokenizer`` if given; else, with ``init_from``, the folder the
captioning checkpoint was trained with (its ``hyper_parameters.tokenizer``); else one trained
on the prompt words and the training questions and answers.

``test`` scores the generated answers with ``evaluation.qa`` (normalised exact match, per
question type) and writes ``metrics.json`` and ``predictions.jsonl`` (``video_qa.report_test``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from evaluation.qa import normalize_answer
from lightning_modules.components.presets import PRESETS, build_video_llm
from lightning_modules.components.tokenizer import load_tokenizer, train_tokenizer
from lightning_modules.components.video_llm import IGNORE_INDEX, VideoLLM, prompt_words
from lightning_modules.dual_encoder import tokenizer_from_json
from lightning_modules.video_qa import QA_TRAINED_KEY, answer_rows, log_val_accuracy, qa_datamodule, report_test

log = logging.getLogger(__name__)

TOKENIZER_KEY = "video_qa_tokenizer"
#: Arguments a VideoLLM checkpoint given as ``init_from`` must have been built with.
NETWORK_KEYS = ("preset", "num_frames", "image_size", "conv_stem", "pool_grid", "frame_difference",
                "video_encoder_path", "language_model_path")


class GenerativeVideoQA(L.LightningModule):
    """Generative video QA: the VideoLLM answers in free text (greedy), scored by exact match."""

    def __init__(
        self,
        preset: str = "tiny",
        tokenizer: str | None = None,
        init_from: str | None = None,
        video_encoder_path: str | None = None,
        language_model_path: str | None = None,
        cache_dir: str | None = None,
        num_frames: int = 8,
        image_size: int = 32,
        conv_stem: bool = False,
        pool_grid: tuple[int, int, int] | None = None,
        frame_difference: bool = False,
        instruction: str = "Answer the question about the video.",
        question_prefix: str = "Question:",
        answer_cue: str = "Answer:",
        max_question_tokens: int = 32,
        max_answer_tokens: int = 8,
        max_new_tokens: int = 8,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        """
        Args:
            preset: VideoLLM size, one of ``tiny``, ``smol``, ``real`` (see ``components.presets``).
            tokenizer: tokenizer folder. ``tiny``: None takes ``init_from``'s or trains one on the
                training QA text (see the module docstring); ``smol``/``real``: None takes the LM's own.
            init_from: a ``VideoLLMModule`` checkpoint whose VideoLLM weights the model starts from
                (zero-shot test or fine-tuning); ignored with ``--ckpt_path``.
            video_encoder_path: ``real``: local TimeSformer checkpoint folder.
            language_model_path: ``real``: local causal-LM checkpoint folder.
            cache_dir: ``smol``: where the converted SmolLM2 folder is cached.
            num_frames: frames per clip; must match the data.
            image_size: frame side in pixels; must match the data.
            conv_stem: ``tiny``/``smol``: convolutional patch embedding; must match ``init_from``.
            pool_grid: ``(t, h, w)`` visual token grid (None: the preset's default); ditto.
            frame_difference: ``tiny``/``smol``: frame differences as extra channels; ditto.
            instruction: the instruction after the visual tokens.
            question_prefix: the text before the question (the transcript slot of the template).
            answer_cue: the text after which the answer starts.
            max_question_tokens: questions are cut to this many tokens.
            max_answer_tokens: training answers are cut to this many tokens.
            max_new_tokens: answer length limit when generating (greedy).
            optimizer: optimizer factory.
            scheduler: optional learning-rate scheduler factory (stepped every step).
        """
        super().__init__()
        if preset not in PRESETS:
            raise ValueError(f"model.preset: unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        if init_from is not None and not Path(init_from).is_file():
            raise FileNotFoundError(f"model.init_from: checkpoint not found: {init_from}")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.net: VideoLLM | None = None
        self._qa_trained = False
        self._val_counts = torch.zeros(2)
        self._test_rows: list[dict[str, Any]] = []

    # ---- construction -----------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.net is not None:
            return
        hp = self.hparams
        resuming = self._trainer is not None and self.trainer.ckpt_path is not None
        init = None
        if hp.init_from and not resuming:
            init = torch.load(hp.init_from, map_location="cpu", weights_only=True)
        self.net = build_video_llm(
            hp.preset,
            tokenizer=self._tokenizer(init),
            video_encoder_path=hp.video_encoder_path,
            language_model_path=hp.language_model_path,
            cache_dir=hp.cache_dir,
            image_size=hp.image_size,
            num_frames=hp.num_frames,
            conv_stem=hp.conv_stem,
            pool_grid=hp.pool_grid,
            frame_difference=hp.frame_difference,
            instruction=hp.instruction,
            transcript_prefix=hp.question_prefix,
            caption_cue=hp.answer_cue,
            max_asr_tokens=hp.max_question_tokens,
            max_caption_tokens=hp.max_answer_tokens,
        )
        if init is not None:
            self._load_video_llm(init)

    def _tokenizer(self, init: dict[str, Any] | None):
        """The tokenizer to build with (see the module docstring); None lets a real LM use its own."""
        hp = self.hparams
        if hp.preset != "tiny":
            return hp.tokenizer
        if self._trainer is not None and self.trainer.ckpt_path is not None:
            # the weights about to be loaded were trained with the tokenizer stored beside them
            stored = torch.load(self.trainer.ckpt_path, map_location="cpu", weights_only=True).get(TOKENIZER_KEY)
            if stored is not None:
                return tokenizer_from_json(stored)
        if hp.tokenizer is not None:
            return load_tokenizer(hp.tokenizer)
        if init is not None:
            folder = init.get("hyper_parameters", {}).get("tokenizer")
            if not folder or not (Path(folder) / "tokenizer.json").is_file():
                raise FileNotFoundError(f"model.init_from: the tokenizer the checkpoint was trained with ({folder}) "
                                        "is not there; give its folder as model.tokenizer")
            return load_tokenizer(folder)
        if self._trainer is None or self.trainer.datamodule is None:
            raise ValueError("model.tokenizer: preset 'tiny' needs a tokenizer folder, or a DataModule to train one on")
        texts = [*prompt_words(hp.instruction, hp.question_prefix, hp.answer_cue),
                 *qa_datamodule(self.trainer.datamodule).texts()]
        return train_tokenizer(texts, kind="word")  # the same on every rank: the same text

    def _load_video_llm(self, checkpoint: dict[str, Any]) -> None:
        path, built = self.hparams.init_from, checkpoint.get("hyper_parameters", {})
        differ = [f"{k}={built[k]!r} (here {self.hparams[k]!r})" for k in NETWORK_KEYS
                  if k in built and _plain(built[k]) != _plain(self.hparams[k])]
        if differ:
            raise ValueError(f"model.init_from: {path} was built with {', '.join(differ)}; "
                             "set these model arguments to match")
        state = {k[len("net."):]: v for k, v in checkpoint.get("state_dict", {}).items() if k.startswith("net.")}
        if not state:
            raise ValueError(f"model.init_from: {path} holds no VideoLLM weights (no net.* entries)")
        assert self.net is not None
        try:
            self.net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(f"model.init_from: {path} does not fit this VideoLLM (is model.tokenizer the one it was "
                             f"trained with?): {str(e).splitlines()[0]}") from None
        log.info("VideoLLM initialised from %s", path)

    # ---- steps ------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        assert self.net is not None
        if not batch["answer"]:
            # every clip of this batch failed to decode: a zero joined to every trainable weight
            # keeps data-parallel ranks in step
            return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
        loss = self._answer_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["answer"]))
        return loss

    def _answer_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        inputs = self.net.build_batch(batch["question"], batch["answer"], padding_side="right")
        out = self.net(batch["video"], **{k: v.to(self.device) for k, v in inputs.items()})
        return F.cross_entropy(out.logits.flatten(0, 1).float(), out.labels.flatten(), ignore_index=IGNORE_INDEX)

    def answer(self, batch: dict[str, Any]) -> list[str]:
        """Greedy answers to the questions of a batch."""
        assert self.net is not None
        return self.net.generate(batch["video"], batch["question"], max_new_tokens=self.hparams.max_new_tokens)

    def on_train_start(self) -> None:
        self._qa_trained = True

    def on_validation_epoch_start(self) -> None:
        self._val_counts = torch.zeros(2, device=self.device)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if not batch["answer"]:
            return
        self.log("val/loss", self._answer_loss(batch), batch_size=len(batch["answer"]), sync_dist=True)
        correct = [normalize_answer(p) == normalize_answer(a) for p, a in zip(self.answer(batch), batch["answer"])]
        self._val_counts[0] += sum(correct)
        self._val_counts[1] += len(correct)

    def on_validation_epoch_end(self) -> None:
        log_val_accuracy(self, self._val_counts)

    def on_test_epoch_start(self) -> None:
        self._test_rows = []

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._test_rows += answer_rows(batch, self.answer(batch) if batch["answer"] else [])

    def on_test_epoch_end(self) -> None:
        protocol = "fine-tuned" if self._qa_trained else "zero-shot"
        report_test(self, self._test_rows, mode="generative", protocol=protocol,
                    extra={"init_from": self.hparams.init_from, "decoding": "greedy",
                           "max_new_tokens": self.hparams.max_new_tokens})
        self._test_rows = []

    # ---- optimisation and state ---------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[QA_TRAINED_KEY] = self._qa_trained
        if self.hparams.preset == "tiny" and self.net is not None:
            checkpoint[TOKENIZER_KEY] = self.net.tokenizer.backend_tokenizer.to_str()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._qa_trained = bool(checkpoint.get(QA_TRAINED_KEY, False))


def _plain(value: Any) -> Any:
    """A grid from YAML is a list, from Python a tuple: compare them as equal."""
    return tuple(value) if isinstance(value, list | tuple) else value
