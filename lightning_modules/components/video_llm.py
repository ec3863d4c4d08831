"""The VideoLLM network: video encoder → MLP connector → causal LM, prompt building, generation.

A plain ``nn.Module`` (no Lightning): the LightningModule owns the loss, logging and optimizers.

The sequence the LM reads (one row of a batch)::

    [bos] <v_1> … <v_N> {instruction} {transcript_prefix} {asr} [{tags_prefix} {tags}] {caption_cue} | {caption} [eos]
    └──────────────────────────────────── prompt (labels −100) ───────────────────────────┘ └─ target ──┘

``<v_i>`` are the visual tokens: the video encoder's CLS token and its pooled space-time grid
(see ``video_encoder.py``), mapped by the connector to the LM's embedding width and written into
``inputs_embeds`` at the rows marked by ``visual_mask`` (the ids there are placeholders). The
default template reads "Describe the video. Transcript: <asr> Caption: <caption></s>". The ASR
is cut to ``max_asr_tokens`` tokens and the caption to ``max_caption_tokens``; ``bos`` is left out
when the tokenizer has none. ``tags`` (words naming what the video shows, e.g. from a tag head, as
Tag2Text guides its captioner) go after the transcript when given.

Batches are padded on the right for training (every row starts at position 0) and on the left
for generation (every row ends at the last position, where generation continues); position ids
are always derived from the attention mask, so the padding side does not change a row's result.

``forward`` returns the logits and labels already shifted, ``logits[:, t]`` predicting
``labels[:, t]``, so ``adatailr.tailr_loss(out.logits, out.labels, gamma)`` applies directly;
only caption tokens and the final eos carry labels.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase

from lightning_modules.components.connector import MLPConnector
from lightning_modules.components.eval_mode import eval_mode
from lightning_modules.components.seeded_sampling import SeededSampling
from lightning_modules.components.tokenizer import validate_tokenizer
from lightning_modules.components.video_encoder import VideoEncoder

__all__ = [
    "IGNORE_INDEX",
    "DEFAULT_INSTRUCTION",
    "TRANSCRIPT_PREFIX",
    "CAPTION_CUE",
    "TAGS_PREFIX",
    "prompt_words",
    "build_batch",
    "VideoLLMOutput",
    "VideoLLM",
]

IGNORE_INDEX = -100
DEFAULT_INSTRUCTION = "Describe the video."
TRANSCRIPT_PREFIX = "Transcript:"
CAPTION_CUE = "Caption:"
TAGS_PREFIX = "Tags:"


def prompt_words(
    instruction: str = DEFAULT_INSTRUCTION,
    transcript_prefix: str = TRANSCRIPT_PREFIX,
    caption_cue: str = CAPTION_CUE,
    tags_prefix: str = TAGS_PREFIX,
) -> list[str]:
    """The fixed prompt text: add it to the texts a word-level tokenizer is trained on."""
    return [instruction, transcript_prefix, caption_cue, tags_prefix]


def build_batch(
    tokenizer: PreTrainedTokenizerBase,
    asrs: list[str],
    captions: list[str] | None = None,
    *,
    num_visual_tokens: int,
    instruction: str = DEFAULT_INSTRUCTION,
    transcript_prefix: str = TRANSCRIPT_PREFIX,
    caption_cue: str = CAPTION_CUE,
    max_asr_tokens: int = 64,
    max_caption_tokens: int = 32,
    padding_side: str = "right",
    tags: list[str] | None = None,
    tags_prefix: str = TAGS_PREFIX,
) -> dict[str, Tensor]:
    """Tokenise prompts (and captions, and tags) into a padded batch.

    Returns ``input_ids``, ``attention_mask`` (1 = real token), ``visual_mask`` (True where a
    visual token goes), all ``[B, L]``, and with ``captions`` also ``labels`` ``[B, L]``: the
    caption ids and the eos at their own positions, ``-100`` everywhere else (bos, visual tokens,
    instruction, transcript, cue, padding). ``labels`` are *not* shifted here; ``VideoLLM.forward``
    shifts them. Use ``padding_side="right"`` for training, ``"left"`` for generation.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if captions is not None and len(captions) != len(asrs):
        raise ValueError(f"{len(asrs)} transcripts but {len(captions)} captions")
    if tags is not None and len(tags) != len(asrs):
        raise ValueError(f"{len(asrs)} transcripts but {len(tags)} tag lists")
    if max_asr_tokens < 0 or max_caption_tokens < 0:
        raise ValueError("max_asr_tokens and max_caption_tokens must be >= 0")

    def encode(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    pad_id, eos_id, bos_id = tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id
    head = ([bos_id] if bos_id is not None else []) + [pad_id] * num_visual_tokens
    instr, prefix, cue = encode([instruction, " " + transcript_prefix, " " + caption_cue])
    asr_ids = encode([" " + " ".join(str(a).split()) for a in asrs])
    cap_ids = encode([" " + " ".join(str(c).split()) for c in captions]) if captions is not None else None
    tag_ids = None
    if tags is not None:
        (tag_prefix_ids,) = encode([" " + tags_prefix])
        tag_ids = [tag_prefix_ids + t for t in encode([" " + " ".join(str(t).split()) for t in tags])]

    rows, label_rows, vis_rows = [], [], []
    n_head = len(head)
    for i in range(len(asrs)):
        prompt = head + instr + prefix + asr_ids[i][:max_asr_tokens] + (tag_ids[i] if tag_ids else []) + cue
        target = (cap_ids[i][:max_caption_tokens] + [eos_id]) if cap_ids is not None else []
        rows.append(prompt + target)
        label_rows.append([IGNORE_INDEX] * len(prompt) + target)
        vis_rows.append([False] * (n_head - num_visual_tokens) + [True] * num_visual_tokens)

    length = max((len(r) for r in rows), default=0)
    b = len(rows)
    input_ids = torch.full((b, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((b, length), dtype=torch.long)
    labels = torch.full((b, length), IGNORE_INDEX, dtype=torch.long)
    visual_mask = torch.zeros((b, length), dtype=torch.bool)
    for i, (row, lab, vis) in enumerate(zip(rows, label_rows, vis_rows)):
        start = 0 if padding_side == "right" else length - len(row)
        sl = slice(start, start + len(row))
        input_ids[i, sl] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, sl] = 1
        labels[i, sl] = torch.tensor(lab, dtype=torch.long)
        visual_mask[i, start : start + len(vis)] = torch.tensor(vis, dtype=torch.bool)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "visual_mask": visual_mask}
    if captions is not None:
        batch["labels"] = labels
    return batch


@dataclass
class VideoLLMOutput:
    """``logits[:, t]`` predicts ``labels[:, t]`` (already shifted); both cover the text span
    from the first caption position of the batch to the end (earlier positions carry no label)."""

    logits: Tensor
    """``[B, T, V]`` next-token scores."""
    labels: Tensor | None
    """``[B, T]`` targets, ``-100`` where nothing is supervised; ``None`` without labels."""
    video_tokens: Tensor | None = None
    """``[B, N, D_v]`` the video encoder's tokens (before the connector)."""


class VideoLLM(nn.Module):
    """Video encoder → connector → causal LM, with its tokenizer and prompt template.

    Args:
        video_encoder: emits ``[B, N, D_v]`` visual tokens from ``[B, T, C, H, W]`` video.
        connector: maps ``D_v`` to the LM's embedding width.
        language_model: an HF causal LM (``AutoModelForCausalLM``).
        tokenizer: the LM's tokenizer; must define eos and pad.
        instruction: the instruction text placed after the visual tokens.
        transcript_prefix: the text introducing the ASR transcript.
        caption_cue: the text after which the caption starts.
        max_asr_tokens: transcripts are cut to this many tokens.
        max_caption_tokens: training captions are cut to this many tokens (the eos is kept).
    """

    def __init__(
        self,
        video_encoder: VideoEncoder,
        connector: MLPConnector,
        language_model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        instruction: str = DEFAULT_INSTRUCTION,
        transcript_prefix: str = TRANSCRIPT_PREFIX,
        caption_cue: str = CAPTION_CUE,
        max_asr_tokens: int = 64,
        max_caption_tokens: int = 32,
    ) -> None:
        super().__init__()
        validate_tokenizer(tokenizer, source=getattr(tokenizer, "name_or_path", None) or "<tokenizer>")
        self.video_encoder = video_encoder
        self.connector = connector
        self.language_model = language_model
        self.tokenizer = tokenizer
        self.instruction = instruction
        self.transcript_prefix = transcript_prefix
        self.caption_cue = caption_cue
        self.max_asr_tokens = max_asr_tokens
        self.max_caption_tokens = max_caption_tokens
        emb = language_model.get_input_embeddings()
        if connector.out_dim != emb.embedding_dim:
            raise ValueError(f"connector width {connector.out_dim} != LM embedding width {emb.embedding_dim}")
        if len(tokenizer) > emb.num_embeddings:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the LM only {emb.num_embeddings}")

    @property
    def num_visual_tokens(self) -> int:
        return self.video_encoder.num_tokens

    def build_batch(
        self, asrs: list[str], captions: list[str] | None = None, padding_side: str = "right",
        tags: list[str] | None = None,
    ) -> dict[str, Tensor]:
        """``build_batch`` with this model's tokenizer, template and limits."""
        return build_batch(
            self.tokenizer,
            asrs,
            captions,
            num_visual_tokens=self.num_visual_tokens,
            instruction=self.instruction,
            transcript_prefix=self.transcript_prefix,
            caption_cue=self.caption_cue,
            max_asr_tokens=self.max_asr_tokens,
            max_caption_tokens=self.max_caption_tokens,
            padding_side=padding_side,
            tags=tags,
        )

    def encode_video(self, video: Tensor) -> Tensor:
        """``[B, T, C, H, W]`` → visual embeddings ``[B, N, D_lm]`` in the LM's dtype."""
        return self._connect(self.video_encoder(video))

    def _connect(self, video_tokens: Tensor) -> Tensor:
        return self.connector(video_tokens).to(self.language_model.get_input_embeddings().weight.dtype)

    def _visual_mask_from(self, attention_mask: Tensor) -> Tensor:
        # The template puts the N visual tokens right after the first real token (bos) or first.
        n = self.num_visual_tokens
        offset = 1 if self.tokenizer.bos_token_id is not None else 0
        first = attention_mask.long().argmax(dim=1, keepdim=True) + offset
        pos = torch.arange(attention_mask.shape[1], device=attention_mask.device).unsqueeze(0)
        return (pos >= first) & (pos < first + n)

    def embed(
        self, video: Tensor, input_ids: Tensor, attention_mask: Tensor, visual_mask: Tensor | None = None,
        video_tokens: Tensor | None = None,
    ) -> Tensor:
        """The LM's ``inputs_embeds``: token embeddings with the visual tokens written in.
        ``video_tokens``: the video encoder's output for ``video``, if the caller has it."""
        visual = self.encode_video(video) if video_tokens is None else self._connect(video_tokens)
        return self._splice(visual, input_ids, attention_mask, visual_mask)

    def _splice(
        self, visual: Tensor, input_ids: Tensor, attention_mask: Tensor, visual_mask: Tensor | None
    ) -> Tensor:
        if visual_mask is None:
            visual_mask = self._visual_mask_from(attention_mask)
        b, n, d = visual.shape
        if input_ids.shape[0] != b:
            raise ValueError(f"{b} videos but {input_ids.shape[0]} token rows")
        counts = visual_mask.sum(dim=1)
        if not bool((counts == n).all()):
            raise ValueError(f"every row needs {n} visual positions, got {counts.tolist()}")
        embeds = self.language_model.get_input_embeddings()(input_ids)
        # masked_scatter fills the marked positions row by row, in order.
        return embeds.masked_scatter(visual_mask.unsqueeze(-1), visual.reshape(-1, d))

    def forward(
        self,
        video: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor,
        labels: Tensor | None = None,
        visual_mask: Tensor | None = None,
    ) -> VideoLLMOutput:
        """Score a batch from ``build_batch``: returns shifted logits and labels (see the class)."""
        video_tokens = self.video_encoder(video)
        embeds = self._splice(self._connect(video_tokens), input_ids, attention_mask, visual_mask)
        position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        length = input_ids.shape[1]
        if labels is None:
            out = self.language_model(
                inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids
            )
            return VideoLLMOutput(logits=out.logits, labels=None, video_tokens=video_tokens)
        # Project only the positions that predict a label: from one before the batch's first
        # supervised token to the second-to-last position (saves the [B, L, V] logits of the prompt).
        supervised = (labels != IGNORE_INDEX).any(dim=0).nonzero()
        start = max(int(supervised[0]) - 1, 0) if len(supervised) else length - 1
        out = self.language_model(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            logits_to_keep=length - start,
        )
        return VideoLLMOutput(logits=out.logits[:, :-1], labels=labels[:, start + 1 :], video_tokens=video_tokens)

    @torch.no_grad()
    def generate(
        self,
        video: Tensor,
        asrs: list[str],
        max_new_tokens: int = 32,
        num_beams: int = 1,
        do_sample: bool = False,
        seed: int | None = None,
        sample_seeds: list[int] | None = None,
        temperature: float = 1.0,
        top_p: float = 1.0,
        tags: list[str] | None = None,
        video_tokens: Tensor | None = None,
        **generate_kwargs,
    ) -> list[str]:
        """Caption a batch of clips; returns one string per clip.

        Greedy by default (deterministic); ``num_beams > 1`` for beam search; ``do_sample`` with a
        ``seed`` for reproducible sampling. Uses the LM's KV cache through HF ``generate`` on
        left-padded ``inputs_embeds``, so batched and one-at-a-time results agree. Extra keyword
        arguments go to the ``GenerationConfig`` (e.g. ``length_penalty``, ``min_new_tokens``).

        ``sample_seeds`` (one per clip) samples at ``temperature`` from the nucleus ``top_p`` with
        draws that belong to each clip (``components.seeded_sampling``): a clip's caption does not
        depend on the rest of its batch. Not with beams or ``do_sample``. ``tags``: one string of
        tag words per clip for the prompt (see the module docstring). ``video_tokens``: the video
        encoder's output for ``video`` in eval mode, if the caller has it (saves a second pass).
        """
        processors = LogitsProcessorList()
        if sample_seeds is not None:
            if num_beams != 1 or do_sample:
                raise ValueError("sample_seeds is its own sampler: use it with num_beams=1 and do_sample=False")
            if len(sample_seeds) != len(asrs):
                raise ValueError(f"{len(asrs)} clips but {len(sample_seeds)} sample seeds")
            processors.append(SeededSampling(sample_seeds, temperature=temperature, top_p=top_p))
        with eval_mode(self):  # no dropout, whatever the caller's mode
            device = next(self.language_model.parameters()).device
            batch = self.build_batch(asrs, padding_side="left", tags=tags)
            batch = {k: v.to(device) for k, v in batch.items()}
            ids, mask = batch["input_ids"], batch["attention_mask"]
            tokens = video_tokens.to(device) if video_tokens is not None else None
            embeds = self.embed(video.to(device), ids, mask, batch["visual_mask"], video_tokens=tokens)
            tok = self.tokenizer
            config = GenerationConfig(
                max_new_tokens=max_new_tokens,
                num_beams=num_beams,
                do_sample=do_sample,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
                **generate_kwargs,
            )
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                if seed is not None:
                    torch.manual_seed(seed)
                # With only inputs_embeds, HF returns just the new tokens, and n-gram blocking
                # sees only them: what we want (a caption may repeat words of its transcript).
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="Passing `no_repeat_ngram_size` with `inputs_embeds`")
                    out = self.language_model.generate(
                        inputs_embeds=embeds, attention_mask=mask, generation_config=config,
                        logits_processor=processors,
                    )
            return [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]
