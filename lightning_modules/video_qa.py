"""Video QA, classic mode: dual-encoder towers + a classifier over the top-K training answers.

The towers are the dual encoder's (``components.contrastive.DualEncoderNet``: the TimeSformer
video tower and the text tower, with their projections); the video and the question are each
embedded into the joint space, and ``QAClassifierHead`` fuses the two embeddings and scores
every answer of the vocabulary. The vocabulary is the ``num_answers`` most frequent normalised
training answers (``evaluation.qa.answer_vocabulary``), built at setup, kept in the
hyperparameters (so ``test --ckpt_path`` rebuilds the same head) and saved as
``answer_vocabulary.json`` by ``test``. Training questions whose answer is outside it carry
no loss; test questions whose answer is outside it count as wrong (``num_oov_answers``).

Pretrained towers: ``towers_from`` names a dual-encoder checkpoint (``configs/retrieval/
pretrain_dual_encoder.yaml`` trained on the raw ASR pool or on a refined round); its tower
weights and tokenizer are loaded at setup, and the tower arguments must match the ones it was
built with (the defaults here are that recipe's). Comparing two sources is two ``fit`` runs
that differ only in ``--model.init_args.towers_from``.

``test`` without a checkpoint runs zero-shot: the classifier head is then untrained, so the
accuracy is at chance level by construction; ``metrics.json`` says which protocol was used.
Outputs of ``test`` (``evaluation.qa``): ``metrics.json``, ``predictions.jsonl``,
``answer_vocabulary.json`` in the logger's log directory, ``test/…`` scalars and the per-type
table in TensorBoard. ``report_test`` and ``gather_rows`` are shared with the generative mode.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from evaluation.qa import (
    QAResult,
    answer_vocabulary,
    format_type_table,
    normalize_answer,
    score_predictions,
    write_qa_outputs,
)
from lightning_modules.components.contrastive import DualEncoderNet
from lightning_modules.components.text_encoder import build_text_encoder
from lightning_modules.dual_encoder import (
    TOKENIZER_KEY,
    DualEncoder,
    tokenizer_from_json,
    train_tokenizer_on_rank_zero,
)

log = logging.getLogger(__name__)

#: Tower arguments a ``towers_from`` checkpoint must have been built with.
TOWER_KEYS = ("text_model", "text_vocab_size", "text_pooling", "video_checkpoint", "video_config", "num_frames",
              "image_size", "video_pooling", "embed_dim")
QA_TRAINED_KEY = "video_qa_trained"


class QAClassifierHead(nn.Module):
    """``[v, q, v⊙q]`` of a video and a question embedding → scores of every answer.

    The product term lets a linear layer see how the question and the video agree; the layer
    norm puts the unit-length embeddings on a scale the MLP trains well from.
    """

    def __init__(self, embed_dim: int, hidden_dim: int, num_answers: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.LayerNorm(3 * embed_dim),
            nn.Linear(3 * embed_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, num_answers),
        )

    def forward(self, video: Tensor, question: Tensor) -> Tensor:
        return self.mlp(torch.cat([video, question, video * question], dim=-1))


class VideoQAClassifier(L.LightningModule):
    """Classic video QA: classification over the training answer vocabulary."""

    def __init__(
        self,
        towers_from: str | None = None,
        answers: list[str] | None = None,
        num_answers: int = 1000,
        text_model: str = "minilm",
        tokenizer: str | None = None,
        text_vocab_size: int = 4096,
        text_pooling: Literal["mean", "cls"] = "mean",
        max_text_tokens: int = 32,
        freeze_text: bool = True,
        freeze_video: bool = False,
        video_checkpoint: str | None = None,
        video_config: dict[str, Any] | None = None,
        num_frames: int = 8,
        image_size: int = 32,
        video_pooling: Literal["mean", "cls"] = "mean",
        embed_dim: int = 256,
        hidden_dim: int = 512,
        dropout: float = 0.1,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["step", "epoch"] = "step",
    ) -> None:
        """
        Args:
            towers_from: a dual-encoder checkpoint (e.g. a pretraining run's ``last.ckpt``) whose
                towers and tokenizer the model starts from; ignored with ``--ckpt_path``.
            answers: the answer vocabulary; None builds it at setup from the training answers
                (and records it here, so checkpoints carry it).
            num_answers: K, the size of the vocabulary built from the training answers.
            text_model: text tower: ``minilm``, ``tiny`` or a local HF encoder folder (as the dual encoder's).
            tokenizer: local tokenizer folder; default: the text model's own, the checkpoint's, or (``tiny``) trained.
            text_vocab_size: ``tiny`` only: embedding rows.
            text_pooling: ``mean`` over tokens or ``cls``.
            max_text_tokens: questions are truncated to this many tokens.
            freeze_text: keep the text tower fixed (its projection still learns).
            freeze_video: keep the video tower fixed (its projection still learns): a probe of the pretraining.
            video_checkpoint: local TimeSformer checkpoint folder; None builds the tiny TimeSformer.
            video_config: overrides of ``tiny_timesformer_config``.
            num_frames: frames per clip (must match the data).
            image_size: frame side (must match the data).
            video_pooling: ``mean`` of the per-time-step tokens or ``cls``.
            embed_dim: width of the joint embedding space.
            hidden_dim: width of the classifier's hidden layer.
            dropout: dropout in the classifier.
            optimizer: optimizer factory; weight decay applies to matrices only.
            lr_scheduler: optional scheduler factory.
            lr_scheduler_interval: step the scheduler every ``step`` or every ``epoch``.
        """
        super().__init__()
        if num_answers < 1:
            raise ValueError(f"model.num_answers must be >= 1, got {num_answers}")
        self.save_hyperparameters()
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        text = build_text_encoder(text_model, tokenizer=tokenizer, vocab_size=text_vocab_size, pooling=text_pooling,
                                  max_length=max_text_tokens)
        video = DualEncoder._video_encoder(video_checkpoint, video_config, num_frames, image_size)
        # The temperature is not used by QA: a buffer, so that no parameter goes without gradient.
        self.towers = DualEncoderNet(video, text, embed_dim=embed_dim, video_pooling=video_pooling,
                                     learn_temperature=False)
        self.towers.text.requires_grad_(not freeze_text)
        self.towers.video.requires_grad_(not freeze_video)
        self.head: QAClassifierHead | None = None
        self._towers_loaded = False
        self.answers: list[str] = []
        self._answer_index: dict[str, int] = {}
        if answers is not None:
            self._set_answers(answers)
        self._qa_trained = False
        self._val_counts = torch.zeros(2)
        self._test_rows: list[dict[str, Any]] = []

    def _set_answers(self, answers: list[str]) -> None:
        """Adopt a vocabulary: (re)build the head when its size changes, and record it in the hparams."""
        normal = [normalize_answer(a) for a in answers]
        if not normal or len(set(normal)) != len(normal) or "" in normal:
            raise ValueError(f"model.answers: need distinct, non-empty answers after normalisation, got {answers[:10]}")
        if self.head is None or self.head.mlp[-1].out_features != len(normal):
            hp = self.hparams
            self.head = QAClassifierHead(hp.embed_dim, hp.hidden_dim, len(normal), hp.dropout)
        self.answers = normal
        self._answer_index = {a: i for i, a in enumerate(normal)}
        self.hparams["answers"] = normal

    # ---- setup: vocabulary, starting weights, tokenizer -------------------------------------
    def setup(self, stage: str) -> None:
        if self.trainer.ckpt_path is not None:  # vocabulary, weights and tokenizer come from the checkpoint
            return
        datamodule = self.trainer.datamodule
        if not self.answers:
            self._set_answers(answer_vocabulary((a for _, a in qa_datamodule(datamodule).train_qa()),
                                                self.hparams.num_answers))
        if self.hparams.towers_from and not self._towers_loaded:  # once: a later stage keeps the trained weights
            self.load_towers(self.hparams.towers_from)
        if self.towers.text.tokenizer is None:
            self._train_tokenizer(datamodule)

    def load_towers(self, path: str) -> None:
        """Tower weights (and a stored tokenizer) from a dual-encoder checkpoint whose tower arguments match."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"model.towers_from: checkpoint not found: {path}")
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        state = {k[len("net."):]: v for k, v in checkpoint.get("state_dict", {}).items() if k.startswith("net.")}
        if "video_proj.weight" not in state:
            raise ValueError(f"model.towers_from: {path} is not a dual-encoder checkpoint (no net.video_proj.weight)")
        built = checkpoint.get("hyper_parameters", {})
        differ = [f"{k}={built[k]!r} (here {self.hparams[k]!r})" for k in TOWER_KEYS
                  if k in built and built[k] != self.hparams[k]]
        if differ:
            raise ValueError(f"model.towers_from: {path} was built with {', '.join(differ)}; "
                             "set these model arguments to match")
        self.towers.load_state_dict(state, strict=True)
        self._towers_loaded = True
        if TOKENIZER_KEY in checkpoint:
            self.towers.text.set_tokenizer(tokenizer_from_json(checkpoint[TOKENIZER_KEY]))
        log.info("video QA towers initialised from %s", path)

    def _train_tokenizer(self, datamodule: Any) -> None:
        if self.hparams.text_model != "tiny":
            raise RuntimeError(f"text model {self.hparams.text_model!r} has no tokenizer; give model.tokenizer")
        self.towers.text.set_tokenizer(
            train_tokenizer_on_rank_zero(self.trainer, datamodule, self.hparams.text_vocab_size, "question")
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.hparams.text_model == "tiny" and self.towers.text.tokenizer is not None:
            checkpoint[TOKENIZER_KEY] = self.towers.text.tokenizer.backend_tokenizer.to_str()
        checkpoint[QA_TRAINED_KEY] = self._qa_trained

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        answers = checkpoint.get("hyper_parameters", {}).get("answers")
        if not answers:
            raise ValueError("the checkpoint holds no answer vocabulary (hyper_parameters.answers): "
                             "not a video QA checkpoint")
        self._set_answers(answers)  # before the weights are loaded: the head must have their shape
        if TOKENIZER_KEY in checkpoint:
            self.towers.text.set_tokenizer(tokenizer_from_json(checkpoint[TOKENIZER_KEY]))
        self._qa_trained = bool(checkpoint.get(QA_TRAINED_KEY, False))

    def train(self, mode: bool = True):
        super().train(mode)
        if self.hparams.freeze_text:
            self.towers.text.eval()
        if self.hparams.freeze_video:
            self.towers.video.eval()
        return self

    # ---- steps ------------------------------------------------------------------------------
    def forward(self, video: Tensor, questions: list[str]) -> Tensor:
        """Scores ``[B, K]`` of every answer for each (video, question) pair."""
        assert self.head is not None, "the answer vocabulary is set at setup (or given as model.answers)"
        tokens = self.towers.text.tokenize(questions)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.hparams.freeze_text):
            features = self.towers.text(**tokens)
        return self.head(self.towers.encode_video(video), self.towers.project_text(features))

    def _targets(self, answers: list[str]) -> Tensor:
        """Vocabulary index of each answer, -100 (no loss) when outside the vocabulary."""
        idx = [self._answer_index.get(normalize_answer(a), -100) for a in answers]
        return torch.tensor(idx, dtype=torch.long, device=self.device)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        targets = self._targets(batch["answer"])
        if not bool((targets >= 0).any()):
            # nothing to learn here (every clip failed, or no answer in the vocabulary); a zero
            # joined to every trainable weight keeps data-parallel ranks in step
            return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
        logits = self(batch["video"], batch["question"])
        loss = F.cross_entropy(logits, targets, ignore_index=-100)
        size = len(batch["answer"])
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/accuracy", (logits.argmax(-1) == targets).float().mean(), batch_size=size)
        return loss

    def on_train_start(self) -> None:
        self._qa_trained = True

    def on_validation_epoch_start(self) -> None:
        self._val_counts = torch.zeros(2, device=self.device)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if batch["answer"]:
            predicted = self(batch["video"], batch["question"]).argmax(-1)
            self._val_counts[0] += (predicted == self._targets(batch["answer"])).sum()
            self._val_counts[1] += len(batch["answer"])

    def on_validation_epoch_end(self) -> None:
        log_val_accuracy(self, self._val_counts)

    def on_test_epoch_start(self) -> None:
        self._test_rows = []

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        predictions = []
        if batch["answer"]:
            predictions = [self.answers[i] for i in self(batch["video"], batch["question"]).argmax(-1).tolist()]
        self._test_rows += answer_rows(batch, predictions)

    def on_test_epoch_end(self) -> None:
        protocol = "fine-tuned" if self._qa_trained else "zero-shot (untrained answer classifier: chance level)"
        report_test(self, self._test_rows, mode="classic", protocol=protocol, vocabulary=self.answers,
                    extra={"towers_from": self.hparams.towers_from})
        self._test_rows = []

    # ---- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self):
        decay = [p for p in self.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.ndim < 2]
        optimizer = self.optimizer_factory([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.lr_scheduler_interval}}


# ---- shared with the generative mode --------------------------------------------------------

def qa_datamodule(datamodule: Any) -> Any:
    """The trainer's DataModule, checked to offer what the QA modules read (``MSVDQADataModule`` does)."""
    if not all(hasattr(datamodule, name) for name in ("train_qa", "excluded")):
        raise TypeError(f"video QA needs a DataModule with train_qa() and excluded(split), such as "
                        f"datamodules.msvd_qa.MSVDQADataModule; got {type(datamodule).__name__}")
    return datamodule


def log_val_accuracy(module: L.LightningModule, counts: Tensor) -> None:
    """``val/accuracy`` from ``[correct, answered]`` counts summed over every rank."""
    correct, count = module.trainer.strategy.reduce(counts, reduce_op="sum").tolist()
    if count and not module.trainer.sanity_checking:
        module.log("val/accuracy", correct / count, sync_dist=False)  # the same number on every rank


def answer_rows(batch: dict[str, Any], predictions: list[str]) -> list[dict[str, Any]]:
    """One row per question of a test batch: the answered ones and those whose clip failed to decode."""
    rows = [{"index": int(i), "id": q, "video_id": v, "question": question, "answer": a, "prediction": p}
            for i, q, v, question, a, p in zip(batch["index"].tolist(), batch["id"], batch["video_id"],
                                               batch["question"], batch["answer"], predictions)]
    return rows + [dict(f) for f in batch["failed"]]


def gather_rows(module: L.LightningModule, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows from every rank (a collective), each question once, in file order.

    Distributed samplers pad a rank with repeated questions; keeping one row per index drops them.
    """
    if module.trainer.world_size > 1:
        gathered: list[list[dict[str, Any]]] = [None] * module.trainer.world_size  # type: ignore[list-item]
        dist.all_gather_object(gathered, rows)
        rows = [r for part in gathered for r in part]
    unique = {r["index"]: r for r in rows}
    return [unique[k] for k in sorted(unique)]


def report_test(
    module: L.LightningModule,
    rows: list[dict[str, Any]],
    mode: str,
    protocol: str,
    vocabulary: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> QAResult:
    """Score the test rows of every rank, log ``test/…`` scalars, write the outputs (rank 0).

    Questions the DataModule left out (no mapping, no file) join as excluded rows, so the
    metrics count them and state the denominator.
    """
    log_dir = module.trainer.log_dir  # on every rank: it may touch the logger
    datamodule = qa_datamodule(module.trainer.datamodule)
    rows = gather_rows(module, rows) + datamodule.excluded("test")
    result = score_predictions(sorted(rows, key=lambda r: r["index"]), vocabulary=vocabulary,
                               train_qa=datamodule.train_qa(), split="test")
    m = result.metrics
    if m["denominator"] == 0:
        raise RuntimeError(f"no test question could be evaluated: {m['denominator_note']}")
    scalars = {"test/accuracy": m["accuracy"], "test/accuracy_excluded_as_wrong": m["accuracy_excluded_as_wrong"],
               "test/denominator": m["denominator"], "test/num_excluded": m["num_excluded"]}
    if "num_oov_answers" in m:
        scalars["test/num_oov_answers"] = m["num_oov_answers"]
    for name, value in m.get("baseline", {}).items():
        if name.endswith("_accuracy"):
            scalars[f"test/baseline/{name}"] = value
    for qtype, entry in m["per_type"].items():
        if entry["count"]:
            scalars[f"test/per_type/{qtype}/accuracy"] = entry["accuracy"]
    module.log_dict({k: float(v) for k, v in scalars.items()}, sync_dist=False)  # identical on every rank
    table = format_type_table(m)
    if module.trainer.is_global_zero:
        rank_zero_info(f"{mode} video QA ({protocol}): {m['denominator_note']}\n{table}")  # on the console
        if log_dir is not None:
            info = {"mode": mode, "protocol": protocol, "checkpoint": module.trainer.ckpt_path, **(extra or {})}
            paths = write_qa_outputs(log_dir, result, extra=info, vocabulary=vocabulary)
            log.info("QA outputs written to %s", paths["metrics"].parent)
        if isinstance(module.logger, TensorBoardLogger):
            module.logger.experiment.add_text("test/per_type", table, global_step=module.global_step)
    return result
