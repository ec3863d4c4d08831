"""VideoLLM training system: AdaTaiLr pretraining, SFT and captioning in one LightningModule.

The network (``components.video_llm.VideoLLM``) is built in ``configure_model`` from a named
preset. Pretraining and SFT are the same step on different data; ``phase`` says which loss
applies: ``pretrain`` uses AdaTaiLr with the injected Γ schedule, ``sft`` plain cross-entropy
(the human examples are clean, nothing to discount). Validation reports caption loss and, on
worlds whose words the synthetic lexicon knows, how often generated captions name the same
attributes as the reference captions. ``predict_step`` captions clips for re-annotation.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_only

from datamodules.annotation_sources import open_source
from datamodules.synthetic_world.lexicon import attributes_mentioned
from lightning_modules.components.adatailr import tailr_loss_with_stats
from lightning_modules.components.eval_mode import eval_mode
from lightning_modules.components.frame_captioner import TinyVideoLLMCaptioner
from lightning_modules.components.gamma_schedules import AdaptiveGamma, GammaSchedule
from lightning_modules.components.grounded_choice import farthest_grounded
from lightning_modules.components.presets import PRESETS, build_video_llm, network_arguments
from lightning_modules.components.seeded_sampling import clip_seed
from lightning_modules.components.sharding import data_parallel_mesh, shard_model
from lightning_modules.components.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer
from lightning_modules.components.tag_recognition import WORLD_TAGS, TagRecognition, tag_text
from lightning_modules.components.video_llm import VideoLLM, prompt_words
from lightning_modules.components.warm_start import warm_start_from_image_model

log = logging.getLogger(__name__)

PHASES = ("pretrain", "sft")
AGREEMENT_ATTRIBUTES = ("shape", "color", "motion", "scene")


class VideoLLMModule(L.LightningModule):
    """Pretrains (AdaTaiLr), fine-tunes (SFT) and runs a VideoLLM captioner."""

    def __init__(
        self,
        preset: str = "tiny",
        tokenizer: str | None = None,
        tokenizer_sources: list[str] | None = None,
        video_encoder_path: str | None = None,
        language_model_path: str | None = None,
        cache_dir: str | None = None,
        num_frames: int = 8,
        image_size: int = 32,
        conv_stem: bool = False,
        pool_grid: tuple[int, int, int] | None = None,
        frame_difference: bool = False,
        init_from_ilm: str | None = None,
        max_asr_tokens: int = 64,
        max_caption_tokens: int = 32,
        gamma_schedule: GammaSchedule | None = None,
        w_min: float = 0.2,
        phase: str = "pretrain",
        asr_dropout: float = 0.0,
        tag_weight: float = 0.0,
        speech_tags: list[str] | None = None,
        speech_tag_weight: float = 1.0,
        tag_prompt: bool = False,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: str = "step",
        max_new_tokens: int = 32,
        num_beams: int = 1,
        no_repeat_ngram_size: int = 3,
        sample_captions: bool = False,
        temperature: float = 1.0,
        top_p: float = 0.9,
        sample_seed: int = 0,
        caption_samples: int = 0,
        val_generate_batches: int = 2,
        fsdp_mixed_precision: bool = True,
        activation_checkpointing: bool = False,
    ) -> None:
        """
        Args:
            preset: network size, one of ``tiny``, ``smol``, ``real`` (see ``components.presets``).
            tokenizer: tokenizer folder. ``tiny``: loaded if it exists, else trained on
                ``tokenizer_sources`` and saved there (so resumes and later rounds reuse it);
                ``smol``/``real``: None takes the language model's own tokenizer.
            tokenizer_sources: annotation sources (pool folder, rounds, ``.jsonl``) whose ASR and
                captions train the ``tiny`` tokenizer.
            video_encoder_path: ``real``: local TimeSformer checkpoint folder.
            language_model_path: ``real``: local causal-LM checkpoint folder (e.g. Vicuna-7B).
            cache_dir: ``smol``: where the converted SmolLM2 folder is cached.
            num_frames: frames per clip; must match the data.
            image_size: frame side in pixels; must match the data.
            conv_stem: ``tiny``/``smol``: convolutional patch embedding (see ``components.video_encoder``).
            pool_grid: ``(t, h, w)`` grid the video tokens are average-pooled to, i.e. t·h·w visual
                tokens in the prompt; None = the preset's default (``components.presets``).
            frame_difference: ``tiny``/``smol``: frame differences as extra input channels (ditto).
            init_from_ilm: ``tiny``: a single-frame tiny VideoLLM checkpoint (the round-0 image
                captioner, ``configs/demo/ilm_pretrain.yaml``) to start a new fit from, the way a
                TimeSformer starts from an image ViT (``components.warm_start``). A resumed fit
                restores its own weights over it.
            max_asr_tokens: transcripts are cut to this many tokens in the prompt.
            max_caption_tokens: training captions are cut to this many tokens.
            gamma_schedule: AdaTaiLr's Γ estimator; None = ``AdaptiveGamma()``;
                ``ConstantGamma(0.0)`` is cross-entropy, ``ConstantGamma(γ)`` is TaiLr.
            w_min: lower clamp of the token weights (TaiLr's usual 0.2).
            phase: ``pretrain`` (AdaTaiLr) or ``sft`` (cross-entropy on clean human examples).
            asr_dropout: share of pretraining clips whose transcript is left out of the prompt. A
                transcript often names what the caption says, so a model can learn to copy it
                and ignore the video; dropping it forces the caption to come from the frames.
            tag_weight: weight of a tag-recognition term added to the loss: from the video encoder's
                tokens, a linear head names the tags (attribute values) the caption holds
                (``components.tag_recognition``, Tag2Text's image-tag head; 0 = off). Captioning
                alone does not teach the tiny encoder shape; this does.
            speech_tags: attributes whose tags the head learns from the transcript instead of the
                caption (e.g. ``[motion]``: round 0's motion words are guesses where the speech is
                silent, since an image captioner cannot see motion); left out where it names none.
            speech_tag_weight: weight of the speech tags' terms within the tag loss (see
                ``TagRecognition``'s ``speech_weight``).
            tag_prompt: write tags into the prompt after the transcript (Tag2Text's tag-guided
                captioning): in training the tags the target caption names, when captioning the
                tags the head recognises in the video. The caption then says what the video shows
                where the transcript is silent. Needs ``tag_weight`` > 0.
            optimizer: optimizer factory, e.g. ``torch.optim.AdamW`` with its ``lr``.
            scheduler: optional learning-rate scheduler factory.
            scheduler_interval: ``step`` or ``epoch``: when the scheduler steps. ``epoch`` lets a
                schedule count in epochs, e.g. a cosine restarted every flywheel round
                (``CosineAnnealingWarmRestarts`` with ``T_0`` = a round's epochs).
            max_new_tokens: caption length limit when generating.
            num_beams: 1 = greedy decoding, more = beam search.
            no_repeat_ngram_size: no n-gram of this size is generated twice in a caption (0 = off):
                small greedy decoders otherwise loop ("moves left moves left …").
            sample_captions: caption by sampling at ``temperature`` from the nucleus ``top_p``
                instead of greedily. Greedy captions are the mode of the model's paraphrases, so a
                re-annotated pool collapses into a few templates; the draws are seeded per clip
                (``sample_seed`` and the clip id), so a clip's caption does not depend on its batch,
                rank or the number of workers.
            caption_samples: with ``tag_prompt``: besides the greedy caption, sample this many per
                clip (as ``sample_captions`` does, seeds ``sample_seed`` + 1, + 2, …) and keep the
                sample grounded in the recognised tags that is farthest from the greedy caption
                (``components.grounded_choice``: it names only tags the head recognises, and no
                fewer kinds of them than the greedy caption); where none is, the greedy caption
                stays. 0 = off.
            val_generate_batches: validation batches captioned by generation for the agreement metric.
            fsdp_mixed_precision: with a sharded strategy (``ModelParallelStrategy``): compute in bf16,
                reduce gradients and keep the sharded master weights in fp32 (``components.sharding``).
            activation_checkpointing: with a sharded strategy: recompute each transformer block's
                activations in the backward pass (less memory, about one more forward of compute).
        """
        super().__init__()
        if preset not in PRESETS:
            raise ValueError(f"model.preset: unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        if phase not in PHASES:
            raise ValueError(f"model.phase: must be one of {PHASES}, got {phase!r}")
        if scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"model.scheduler_interval: must be 'step' or 'epoch', got {scheduler_interval!r}")
        if not 0.0 <= asr_dropout <= 1.0:
            raise ValueError(f"model.asr_dropout: must be in [0, 1], got {asr_dropout}")
        if tag_weight < 0.0:
            raise ValueError(f"model.tag_weight: must be >= 0, got {tag_weight}")
        if (tag_prompt or speech_tags) and tag_weight <= 0.0:
            raise ValueError("model.tag_prompt and model.speech_tags need model.tag_weight > 0: "
                             "the tag head names the tags")
        if caption_samples < 0:
            raise ValueError(f"model.caption_samples: must be >= 0, got {caption_samples}")
        if caption_samples and not tag_prompt:
            raise ValueError("model.caption_samples needs model.tag_prompt: samples are checked against the recognised tags")
        if caption_samples and sample_captions:
            raise ValueError("model.caption_samples and model.sample_captions: choose one (the first keeps a greedy fallback)")
        if preset == "tiny" and tokenizer is None and not tokenizer_sources:
            raise ValueError("model.tokenizer: preset 'tiny' needs a tokenizer folder or model.tokenizer_sources to train one")
        for key, value in (("tokenizer_sources", tokenizer_sources or []),):
            for path in value:
                if not Path(path).exists():
                    raise FileNotFoundError(f"model.{key}: {path} does not exist")
        if init_from_ilm is not None and preset != "tiny":
            raise ValueError(f"model.init_from_ilm: starts the tiny preset only, not {preset!r}")
        for key, value in (("video_encoder_path", video_encoder_path), ("language_model_path", language_model_path),
                           ("init_from_ilm", init_from_ilm)):
            if value is not None and not Path(value).exists():
                raise FileNotFoundError(f"model.{key}: {value} does not exist")
        # Objects stay out of the checkpoint's hparams so it loads with weights_only=True; a resumed
        # run gets them from its config, and the schedule's state from on_load_checkpoint.
        self.save_hyperparameters(ignore=["gamma_schedule", "optimizer", "scheduler"])
        self.gamma_schedule = gamma_schedule if gamma_schedule is not None else AdaptiveGamma()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.phase = phase
        self.net: VideoLLM | None = None
        self.tag_head: TagRecognition | None = None
        self.last_gamma = 0.0
        self.last_token_stats = None  # read by callbacks.gamma_monitor.GammaMonitor

    # ---- construction -----------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.net is not None:
            return
        hp = self.hparams
        self.net = build_video_llm(
            hp.preset,
            tokenizer=self._tiny_tokenizer() if hp.preset == "tiny" else hp.tokenizer,
            video_encoder_path=hp.video_encoder_path,
            language_model_path=hp.language_model_path,
            cache_dir=hp.cache_dir,
            **network_arguments(hp),
        )
        if hp.get("tag_weight", 0.0) > 0.0:
            try:
                self.tag_head = TagRecognition(self.net.video_encoder.hidden_size,
                                               speech_attributes=hp.get("speech_tags") or (),
                                               speech_weight=hp.get("speech_tag_weight", 1.0))
            except ValueError as e:
                raise ValueError(f"model.speech_tags: {e}") from None
        # A new fit only: load_from_checkpoint has no trainer, and a resumed run restores its own weights.
        if hp.get("init_from_ilm") and self._trainer is not None and self.trainer.ckpt_path is None:
            self._warm_start(hp.init_from_ilm)
        if self.device_mesh is not None:  # a sharded strategy: FSDP2 per encoder and decoder block
            shard_model(
                self.net,
                data_parallel_mesh(self.device_mesh),
                mixed_precision=hp.get("fsdp_mixed_precision", True),
                activation_checkpointing=hp.get("activation_checkpointing", False),
                forward_methods=("generate",),
            )

    def _warm_start(self, path: str) -> None:
        copied = warm_start_from_image_model(self.net, TinyVideoLLMCaptioner(path).net)
        log.info("started from the image captioner %s: %d tensors, %d shared tokens",
                 path, copied["tensors"], copied["shared_tokens"])

    def _tiny_tokenizer(self):
        folder = self.hparams.tokenizer
        if folder is not None and (Path(folder) / "tokenizer.json").is_file():
            return load_tokenizer(folder)
        # Streamed: the trainer counts words as the records go by; no source is held in memory.
        texts = itertools.chain(prompt_words(), [tag_text(WORLD_TAGS)], (
            text for source in self.hparams.tokenizer_sources or [] for record in open_source(source)
            for text in (record["asr"], record["caption"])))
        tokenizer = train_tokenizer(texts, kind="word")
        if folder is not None:
            _save_tokenizer_once(tokenizer, folder)
        return tokenizer

    # ---- steps --------------------------------------------------------------------------------
    def _score(self, batch: dict[str, Any], asrs: list[str] | None = None):
        assert self.net is not None
        asrs = batch["asr"] if asrs is None else asrs
        tags = None
        if self._tag_prompt:  # teacher forcing: the prompt carries the tags the target caption names
            tags = [tag_text(self.tag_head.parse(c), self.tag_head.tags) for c in batch["caption"]]
        inputs = self.net.build_batch(asrs, batch["caption"], padding_side="right", tags=tags)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        return self.net(batch["video"], **inputs)

    def training_step(self, batch: dict[str, Any], batch_idx: int):
        if not batch["clip_id"]:  # every clip of this batch failed to decode (counted by the DataModule)
            return self._no_clips_loss()
        out = self._score(batch, self._drop_transcripts(batch["asr"]))
        gamma = self.gamma_schedule.gamma if self.phase == "pretrain" else 0.0
        loss, stats = tailr_loss_with_stats(out.logits, out.labels, gamma, w_min=self.hparams.w_min)
        if self.phase == "pretrain":
            self.gamma_schedule.update(stats.mean_p, stats.num_tokens)
        self.last_gamma, self.last_token_stats = gamma, stats
        self.log(f"train/{self.phase}_loss", loss, prog_bar=True, batch_size=len(batch["clip_id"]))
        if self.tag_head is not None:
            tags = self.tag_head(out.video_tokens, batch["caption"], batch["asr"])
            self.log("train/tag_loss", tags, batch_size=len(batch["clip_id"]))
            loss = loss + self.hparams.tag_weight * tags
        return loss

    def _no_clips_loss(self) -> torch.Tensor | None:
        """Alone, skip the step. With other ranks, take part in it: they wait in the gradient
        all-reduce (DDP) or the blocks' all-gathers (FSDP) for every rank, so this rank runs one
        blank clip through the whole network and contributes a zero gradient."""
        if self.trainer.world_size == 1:
            return None
        if self.phase == "pretrain":
            self.gamma_schedule.update(0.0, 0)  # Γ's statistics are an all-reduce: join it with no tokens
        out = self._score(self.blank_batch())
        blank = out.logits.sum() * 0.0
        if self.tag_head is not None:  # every parameter takes part, as DDP's reducer expects
            blank = blank + self.tag_head(out.video_tokens, [""], [""]) * 0.0
        return blank

    def blank_batch(self) -> dict[str, Any]:
        """One all-zero clip with empty text: what a rank with nothing to process runs so that its
        collectives line up with the other ranks'."""
        hp = self.hparams
        return {"video": torch.zeros(1, hp.num_frames, 3, hp.image_size, hp.image_size, device=self.device),
                "asr": [""], "caption": [""], "clip_id": ["<blank>"]}

    def _drop_transcripts(self, asrs: list[str]) -> list[str]:
        """Blank each pretraining transcript with probability ``asr_dropout``; the draw depends on the
        step only, so a resumed run drops the same ones. SFT keeps every transcript: refining a
        transcript against the video is the task the human examples teach."""
        rate = self.hparams.get("asr_dropout", 0.0)
        if not rate or self.phase != "pretrain":
            return asrs
        g = torch.Generator().manual_seed(self.global_step)
        keep = torch.rand(len(asrs), generator=g) >= rate
        return [a if k else "" for a, k in zip(asrs, keep.tolist())]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if not batch["clip_id"]:
            if self.trainer.world_size > 1:  # keep step with the other ranks' collectives (sharded)
                self._score(self.blank_batch())
                if batch_idx < self.hparams.val_generate_batches:
                    self.caption(self.blank_batch(), samples=0)
            return
        size = len(batch["clip_id"])
        out = self._score(batch)
        _, stats = tailr_loss_with_stats(out.logits, out.labels, 0.0)
        self.log("val/caption_nll", stats.nll, prog_bar=True, batch_size=size, sync_dist=True)
        if batch_idx < self.hparams.val_generate_batches:
            captions = self.caption(batch, samples=0)  # the greedy captions: cheap, every epoch
            for attribute, agree in attribute_agreement(captions, batch["caption"]).items():
                self.log(f"val/agreement_{attribute}", agree, batch_size=size, sync_dist=True)
            if batch_idx == 0:
                self._show_examples(batch["caption"][:3], captions[:3])

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, str]]:
        captions = self.caption(batch) if batch["clip_id"] else []
        return [{"clip_id": c, "caption": t} for c, t in zip(batch["clip_id"], captions)]

    def caption(self, batch: dict[str, Any], samples: int | None = None) -> list[str]:
        """One caption per clip of ``batch``; ``samples`` overrides ``caption_samples`` (0: greedy)."""
        assert self.net is not None
        hp = self.hparams
        samples = hp.get("caption_samples", 0) if samples is None else samples
        extra = {"no_repeat_ngram_size": hp.no_repeat_ngram_size} if hp.get("no_repeat_ngram_size") else {}

        def sampling(offset: int) -> dict[str, Any]:  # draws seeded per clip (sample_seed + offset)
            seed = hp.get("sample_seed", 0) + offset
            return {"sample_seeds": [clip_seed(c, seed) for c in batch["clip_id"]],
                    "temperature": hp.get("temperature", 1.0), "top_p": hp.get("top_p", 0.9)}

        if hp.get("sample_captions", False):
            extra.update(sampling(0))
        recognised = None
        if self._tag_prompt:
            extra["video_tokens"], recognised = self.recognised_tags(batch["video"])
            extra["tags"] = [tag_text(t, self.tag_head.tags) for t in recognised]
        greedy = self.net.generate(
            batch["video"], batch["asr"], max_new_tokens=hp.max_new_tokens, num_beams=hp.num_beams, **extra
        )
        if not samples or recognised is None:
            return greedy
        drawn = [self.net.generate(batch["video"], batch["asr"], max_new_tokens=hp.max_new_tokens, **sampling(1 + j), **extra)
                 for j in range(samples)]
        return [farthest_grounded(g, [d[i] for d in drawn], recognised[i], parse=self.tag_head.parse)
                for i, g in enumerate(greedy)]

    @torch.no_grad()
    def recognised_tags(self, video: torch.Tensor) -> tuple[torch.Tensor, list[set[str]]]:
        """The video encoder's tokens (eval mode, as ``generate`` encodes) and the tags the tag
        head recognises in each clip's frames (render them for a prompt with ``tag_text``)."""
        with eval_mode(self.net):  # running statistics, no dropout
            tokens = self.net.video_encoder(video)
        return tokens, self.tag_head.predict(tokens)

    @property
    def _tag_prompt(self) -> bool:
        return bool(self.hparams.get("tag_prompt", False)) and self.tag_head is not None

    @rank_zero_only
    def _show_examples(self, references: list[str], generated: list[str]) -> None:
        for ref, gen in zip(references, generated):
            log.info("reference: %s | generated: %s", ref, gen)

    # ---- optimisation and state ---------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = {"scheduler": self.scheduler_factory(optimizer), "interval": self.hparams.scheduler_interval}
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["gamma_schedule"] = self.gamma_schedule.state_dict()
        checkpoint["phase"] = self.phase

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "gamma_schedule" in checkpoint:
            self.gamma_schedule.load_state_dict(checkpoint["gamma_schedule"])
        self.phase = checkpoint.get("phase", self.phase)


def attribute_agreement(generated: list[str], references: list[str]) -> dict[str, float]:
    """Per attribute, the share of pairs where the generated caption names exactly the reference's values.

    Only pairs whose reference names the attribute count; an attribute no reference names is left out.
    """
    result: dict[str, float] = {}
    pairs = [(attributes_mentioned(g), attributes_mentioned(r)) for g, r in zip(generated, references)]
    for attribute in AGREEMENT_ATTRIBUTES:
        judged = [g[attribute] == r[attribute] for g, r in pairs if r[attribute]]
        if judged:
            result[attribute] = sum(judged) / len(judged)
    return result


@rank_zero_only
def _save_tokenizer_once(tokenizer, folder: str) -> None:
    # Every rank trains the same tokenizer from the same text; one of them writes it.
    save_tokenizer(tokenizer, folder)
