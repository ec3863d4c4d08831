"""Tokenizers for the VideoLLM: train a small one offline, load a local one, validate either.

Tiny models get a tokenizer trained on the run's own text with the `tokenizers` library (DESIGN
§4) and saved next to the checkpoint with ``save_pretrained``; real models bring a local HF
tokenizer. Whatever its origin, a tokenizer must define ``eos`` (generation stops on it, and the
caption target ends with it) and ``pad`` (batches are padded with it); ``validate_tokenizer``
fails early with the tokenizer's path when either is missing. ``bos`` is optional: prompts start
with it when the tokenizer has one.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

__all__ = [
    "SPECIAL_TOKENS",
    "train_tokenizer",
    "save_tokenizer",
    "load_tokenizer",
    "validate_tokenizer",
]

# Ids 0..3 in every tokenizer trained here, in this order.
SPECIAL_TOKENS: dict[str, str] = {
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "bos_token": "<s>",
    "eos_token": "</s>",
}


def train_tokenizer(
    texts: Iterable[str],
    kind: Literal["word", "bpe"] = "word",
    vocab_size: int = 4096,
    min_frequency: int = 1,
) -> PreTrainedTokenizerFast:
    """Train a small tokenizer on ``texts`` and wrap it as a ``PreTrainedTokenizerFast``.

    Args:
        texts: the training text (captions, transcripts, prompt words). Words never seen here
            become ``<unk>`` with the word-level kind.
        kind: ``"word"``: lower-cased words and punctuation marks, one token each (the demo
            default: the synthetic world's language is small and closed); ``"bpe"``: a lower-cased
            byte-level BPE, which has no unknown words.
        vocab_size: upper bound on the vocabulary, special tokens included.
        min_frequency: a word (or merge) seen fewer times is left out.
    """
    specials = list(SPECIAL_TOKENS.values())
    if kind == "word":
        tok = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS["unk_token"]))
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.WordLevelTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials
        )
    elif kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}: expected 'word' or 'bpe'")
    tok.train_from_iterator((str(t) for t in texts), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        # Word-level decoding joins tokens with spaces; this rejoins "left ." as "left.".
        clean_up_tokenization_spaces=(kind == "word"),
        **SPECIAL_TOKENS,
    )
    validate_tokenizer(wrapped, source="<trained tokenizer>")
    return wrapped


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, directory: str | Path) -> Path:
    """Save ``tokenizer`` into ``directory`` (created if needed), e.g. beside a checkpoint."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(directory))
    return directory


def load_tokenizer(path: str | Path, pad_token: str | None = None) -> PreTrainedTokenizerBase:
    """Load a local tokenizer folder (never a hub id) and validate it.

    Args:
        path: a folder written by ``save_pretrained`` (ours or a real model's).
        pad_token: an existing token to use for padding when the tokenizer defines none (for
            example ``"<unk>"`` for Llama/Vicuna tokenizers); nothing is added to the vocabulary.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer folder not found: {path}")
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if pad_token is not None and tokenizer.pad_token is None:
        if pad_token not in tokenizer.get_vocab():
            raise ValueError(f"pad_token {pad_token!r} is not in the vocabulary of the tokenizer at {path}")
        tokenizer.pad_token = pad_token
    validate_tokenizer(tokenizer, source=str(path))
    return tokenizer


def validate_tokenizer(tokenizer: PreTrainedTokenizerBase, source: str = "<tokenizer>") -> None:
    """Raise ``ValueError`` naming ``source`` unless the tokenizer has eos and pad tokens."""
    missing = [name for name in ("eos", "pad") if getattr(tokenizer, f"{name}_token_id") is None]
    if missing:
        hint = " (pass pad_token=... naming an existing token)" if "pad" in missing else ""
        raise ValueError(
            f"the tokenizer at {source} has no {' and no '.join(missing)} token{hint}; the VideoLLM "
            "needs eos to end captions and pad to batch them"
        )
