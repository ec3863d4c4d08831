"""Start a VideoLLM from an image-language model of the same family (the round-0 ILM).

The paper's VideoLLM starts from pretrained parts (a TimeSformer initialised from an image ViT,
a pretrained LLM); the tiny preset has none, and from a few hundred clips it learns little of what
a frame shows. The demo's ILM is a tiny VideoLLM trained on the foundation stills
(``num_frames: 1``), so its weights fit the tiny VideoLLM almost one to one:

- every tensor of the same name and shape is copied (TimeSformer blocks, connector, LM blocks);
- TimeSformer's time embedding (one frame) is repeated over the video's frames, as TimeSformer
  itself is initialised from an image ViT;
- with ``frame_difference`` the patch projection (or the first convolution of a convolutional
  stem) has twice the input channels: the frame channels get the ILM's weights and the difference
  channels random weights of the same spread. A still region has zero differences, so the
  encoder sees a still video exactly as the ILM saw its frame. The difference channels must not
  start at zero: from zero they learn motion slowly (a motion probe on the demo world, started
  from the ILM and trained on the transcripts' motion words: 0.56 of held-out clips from zero,
  0.76 from random weights, 0.77 for an encoder trained from scratch);
- buffers (running statistics, if a model has any) are copied like parameters;
- token embeddings and the LM head are copied row by row for the tokens both vocabularies hold
  (the ILM's tokenizer was trained on the foundation captions only).

Anything else (a tensor whose shape differs otherwise) is an error naming it: a mismatch means
the two models are not of the same family.
"""

from __future__ import annotations

import torch

from lightning_modules.components.video_llm import VideoLLM

__all__ = ["warm_start_from_image_model"]

_VOCAB_ROWS = ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight")
_TIME = "video_encoder.timesformer.embeddings.time_embeddings"
_PATCH = "video_encoder.timesformer.embeddings.patch_embeddings.projection.weight"
_INPUT_WEIGHTS = (_PATCH, "video_encoder.timesformer.embeddings.patch_embeddings.projection.0.weight")  # linear or stem


@torch.no_grad()
def warm_start_from_image_model(video_llm: VideoLLM, image_llm: VideoLLM) -> dict[str, int]:
    """Copy ``image_llm``'s weights into ``video_llm`` in place; returns what was copied.

    The counts: ``tensors`` copied (whole or adapted) and ``shared_tokens``, the vocabulary rows
    carried over.
    """
    source = dict(image_llm.named_parameters())
    target = dict(video_llm.named_parameters())
    missing = sorted(set(target) - set(source))
    if missing:
        raise ValueError(f"the image model has no weights for {missing[:5]}: not the same model family")
    shared = _shared_token_rows(video_llm, image_llm)
    copied = 0
    for name, param in target.items():
        src = source[name]
        if name in _VOCAB_ROWS:
            param[shared[:, 0]] = src[shared[:, 1]].to(param.dtype)
        elif name == _TIME:
            param.copy_(src.expand_as(param))
        elif name in _INPUT_WEIGHTS and src.shape[1] * 2 == param.shape[1]:  # frame + difference channels
            param[:, : src.shape[1]] = src
            param[:, src.shape[1]:] = torch.randn_like(src) * src.std()
        elif src.shape == param.shape:
            param.copy_(src)
        else:
            raise ValueError(f"{name}: shape {tuple(param.shape)} here, {tuple(src.shape)} in the image model")
        copied += 1
    their_buffers = dict(image_llm.named_buffers())
    for name, buffer in video_llm.named_buffers():
        src = their_buffers.get(name)
        if src is None or src.shape != buffer.shape:
            raise ValueError(f"buffer {name}: {tuple(buffer.shape)} here, "
                             f"{'absent' if src is None else tuple(src.shape)} in the image model")
        buffer.copy_(src)
        copied += 1
    return {"tensors": copied, "shared_tokens": int(shared.shape[0])}


def _shared_token_rows(video_llm: VideoLLM, image_llm: VideoLLM) -> torch.Tensor:
    """``[K, 2]`` pairs (row here, row in the image model) of tokens both tokenizers hold."""
    theirs = image_llm.tokenizer.get_vocab()
    rows = [(i, theirs[token]) for token, i in video_llm.tokenizer.get_vocab().items() if token in theirs]
    return torch.tensor(sorted(rows), dtype=torch.long).reshape(-1, 2)
