"""The image-language model (ILM) of round 0: caption single frames, behind one small interface.

``FrameCaptioner`` is anything with ``caption_frames(frames) -> list[str]``, where ``frames`` is a
float tensor ``[N, C, H, W]`` normalised with the ImageNet statistics (the layout the clip
DataModules produce, see ``datamodules.video_transforms``). Two backends:

- ``TinyVideoLLMCaptioner``: our tiny VideoLLM trained as an image captioner (``num_frames: 1``,
  empty transcript; ``configs/demo/ilm_pretrain.yaml``), read from its Lightning checkpoint
  with ``torch.load(weights_only=True)`` and rebuilt from the checkpoint's hyper-parameters and
  its saved tokenizer folder. The offline default.
- ``HFImageCaptioner``: any local HF image-to-text checkpoint folder (BLIP-2 class: an
  ``AutoProcessor`` plus ``AutoModelForImageTextToText``, e.g. ``Blip2ForConditionalGeneration``),
  never a hub id. Frames are de-normalised to [0, 1] and handed to the processor, which resizes
  them to the model's own input size.

``build_frame_captioner(kind, path, ...)`` chooses one; missing paths are errors naming the key
and the path. Captioners are plain ``nn.Module``s (no Lightning) so the refiner can move them to
its device and hold them in ``eval`` mode.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.video_transforms import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

__all__ = [
    "FRAME_CAPTIONER_KINDS",
    "FrameCaptioner",
    "TinyVideoLLMCaptioner",
    "HFImageCaptioner",
    "build_frame_captioner",
]

FRAME_CAPTIONER_KINDS = ("tiny", "hf")


@runtime_checkable
class FrameCaptioner(Protocol):
    """Captions a batch of single frames ``[N, C, H, W]`` (ImageNet-normalised floats)."""

    def caption_frames(self, frames: Tensor) -> list[str]: ...

    def describe(self) -> str: ...


class TinyVideoLLMCaptioner(nn.Module):
    """A single-frame tiny VideoLLM, loaded from the Lightning checkpoint of its training run.

    Args:
        checkpoint: the ``.ckpt`` written by ``train.py fit --config configs/demo/ilm_pretrain.yaml``.
        tokenizer: its tokenizer folder; None takes the path recorded in the checkpoint, or else a
            ``tokenizer`` folder beside the checkpoint folder (``<run>/tokenizer`` for
            ``<run>/checkpoints/last.ckpt``).
        max_new_tokens: caption length limit.
        batch_size: frames per ``generate`` call.
    """

    def __init__(self, checkpoint: str | Path, tokenizer: str | Path | None = None,
                 max_new_tokens: int = 24, batch_size: int = 64) -> None:
        super().__init__()
        # Imported here so that the HF backend does not pull in the VideoLLM stack.
        from lightning_modules.components.presets import build_video_llm, network_arguments

        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"image captioner checkpoint not found: {checkpoint}")
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        hp = state.get("hyper_parameters", {})
        if hp.get("preset", "tiny") != "tiny" or hp.get("num_frames") != 1:
            raise ValueError(
                f"{checkpoint}: not a single-frame tiny VideoLLM (preset={hp.get('preset')!r}, "
                f"num_frames={hp.get('num_frames')!r}); train one with configs/demo/ilm_pretrain.yaml"
            )
        folder = _find_tokenizer(checkpoint, tokenizer, hp.get("tokenizer"))
        self.net = build_video_llm("tiny", tokenizer=str(folder), **network_arguments(hp))
        weights = {k[len("net."):]: v for k, v in state["state_dict"].items() if k.startswith("net.")}
        self.net.load_state_dict(weights)
        self.net.eval()
        self.image_size = int(hp["image_size"])
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.source = str(checkpoint)

    @torch.no_grad()
    def caption_frames(self, frames: Tensor) -> list[str]:
        if frames.ndim != 4:
            raise ValueError(f"expected frames [N, C, H, W], got shape {tuple(frames.shape)}")
        if frames.shape[-1] != self.image_size or frames.shape[-2] != self.image_size:
            frames = F.interpolate(frames, size=(self.image_size, self.image_size), mode="bilinear",
                                   antialias=True, align_corners=False)
        captions: list[str] = []
        for i in range(0, frames.shape[0], self.batch_size):
            chunk = frames[i : i + self.batch_size].unsqueeze(1)  # [n, 1, C, H, W]: one-frame clips
            captions += self.net.generate(chunk, [""] * chunk.shape[0], max_new_tokens=self.max_new_tokens)
        return captions

    def describe(self) -> str:
        return f"tiny single-frame VideoLLM ({self.source})"


def _find_tokenizer(checkpoint: Path, explicit: str | Path | None, recorded: str | None) -> Path:
    if explicit is not None:
        if not Path(explicit).is_dir():
            raise FileNotFoundError(f"image captioner tokenizer folder not found: {explicit}")
        return Path(explicit)
    candidates = [Path(recorded)] if recorded else []
    candidates.append(checkpoint.parent.parent / "tokenizer")
    for folder in candidates:
        if (folder / "tokenizer.json").is_file():
            return folder
    raise FileNotFoundError(
        f"no tokenizer for the image captioner {checkpoint}: tried {', '.join(str(c) for c in candidates)}; "
        "pass its folder explicitly"
    )


class HFImageCaptioner(nn.Module):
    """Any local HF image-to-text checkpoint (BLIP-2 class) as a frame captioner.

    Args:
        path: local checkpoint folder holding the model and its processor (never a hub id).
        prompt: optional text prompt the caption continues (e.g. ``"a photo of"``); it is stripped
            from the output when the model echoes it.
        max_new_tokens: caption length limit.
        batch_size: frames per ``generate`` call.
        dtype: parameter dtype (e.g. ``torch.bfloat16`` on GPUs); None keeps the checkpoint's.
    """

    def __init__(self, path: str | Path, prompt: str | None = None, max_new_tokens: int = 30,
                 batch_size: int = 16, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        from transformers import AutoModelForImageTextToText, AutoProcessor

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"image-to-text checkpoint not found (no config.json): {path}")
        self.processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModelForImageTextToText.from_pretrained(str(path), dtype=dtype, local_files_only=True).eval()
        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.padding_side = "left"  # decoder-only LMs (OPT in BLIP-2) continue at the right end
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.source = str(path)

    @torch.no_grad()
    def caption_frames(self, frames: Tensor) -> list[str]:
        if frames.ndim != 4:
            raise ValueError(f"expected frames [N, C, H, W], got shape {tuple(frames.shape)}")
        pixels = denormalize(frames).clamp(0, 1)
        device = next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        captions: list[str] = []
        for i in range(0, pixels.shape[0], self.batch_size):
            images = list(pixels[i : i + self.batch_size].float().cpu())
            kwargs = {"text": [self.prompt] * len(images)} if self.prompt else {}
            inputs = self.processor(images=images, return_tensors="pt", do_rescale=False, **kwargs)
            inputs = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in inputs.items()}
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            texts = self.processor.batch_decode(out, skip_special_tokens=True)
            captions += [_strip_prompt(t, self.prompt) for t in texts]
        return captions

    def describe(self) -> str:
        return f"HF image-to-text model ({self.source})"


def denormalize(frames: Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Tensor:
    """Undo the clip transform's normalisation: back to [0, 1] pixels."""
    m = torch.tensor(mean, dtype=frames.dtype, device=frames.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=frames.dtype, device=frames.device).view(-1, 1, 1)
    return frames * s + m


def _strip_prompt(text: str, prompt: str | None) -> str:
    text = text.strip()
    if prompt and text.lower().startswith(prompt.lower()):
        text = text[len(prompt):].strip()
    return text


def build_frame_captioner(kind: str, path: str | None, tokenizer: str | None = None,
                          max_new_tokens: int = 24, prompt: str | None = None,
                          key: str = "model.ilm_path") -> nn.Module:
    """A ``FrameCaptioner`` of ``kind`` (``tiny`` or ``hf``) from ``path``; errors name ``key`` and the path."""
    if kind not in FRAME_CAPTIONER_KINDS:
        raise ValueError(f"unknown frame captioner kind {kind!r}; choose one of {FRAME_CAPTIONER_KINDS}")
    if path is None:
        raise ValueError(f"{key}: the image captioner needs a checkpoint path ({kind!r} backend)")
    if not Path(path).exists():
        what = "tiny ILM checkpoint (.ckpt)" if kind == "tiny" else "HF image-to-text checkpoint folder"
        raise FileNotFoundError(f"{key}: {what} {path} does not exist")
    try:
        if kind == "tiny":
            return TinyVideoLLMCaptioner(path, tokenizer=tokenizer, max_new_tokens=max_new_tokens)
        return HFImageCaptioner(path, prompt=prompt, max_new_tokens=max_new_tokens)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{key}: {e}") from None
