"""The contrastive dual encoder as a plain network: towers, projections, InfoNCE, gathering.

``DualEncoderNet`` embeds videos (``VideoEncoder`` → temporal pooling → linear projection) and
texts (``TextEncoder`` → linear projection) into one space, L2-normalised, and scores pairs by
their cosine similarity times a learnable scale (``1 / temperature``).

The loss is the symmetric InfoNCE of CLIP over the *global* batch: with several data-parallel
ranks, every rank gathers the embeddings of all ranks (``gather_with_local_grad``) and computes
the same ``N × N`` loss. Only this rank's rows carry gradient (the other rows are detached
copies), so no collective runs in the backward pass. Every rank's loss holds every pair, and the
DDP/FSDP gradient average would divide the encoder gradient by the world size; the local rows
therefore carry their gradient multiplied by the world size, and after the average the encoders
get exactly the gradient of the global-batch loss. The temperature, used whole by every rank,
already gets the right gradient from the average.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal


import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:  # only annotations: the loss and the gathering import nothing but torch
    from lightning_modules.components.text_encoder import TextEncoder
    from lightning_modules.components.video_encoder import VideoEncoder

__all__ = [
    "world_info",
    "all_gather_rows",
    "gather_with_local_grad",
    "symmetric_infonce",
    "ContrastiveOutput",
    "DualEncoderNet",
]

VideoPooling = Literal["mean", "cls"]


def world_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather_padded(x: Tensor) -> tuple[list[Tensor], int, int]:
    """All ranks' ``x`` (row counts may differ) as a list in rank order, detached."""
    rank, world = world_info()
    count = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    longest = max(sizes)
    if longest == 0:
        return [x.detach()[:0] for _ in range(world)], rank, world
    padded = x.detach().new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x.detach()
    buffers = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(buffers, padded.contiguous())
    return [b[:n] for b, n in zip(buffers, sizes)], rank, world


def all_gather_rows(x: Tensor) -> Tensor:
    """Rows of ``x`` from every rank, concatenated in rank order (no gradient). Identity on one process.

    Ranks may hold different numbers of rows (zero included). A collective: every rank must call it.
    """
    if world_info()[1] == 1:
        return x.detach()
    parts, _, _ = _gather_padded(x)
    return torch.cat(parts)


def gather_with_local_grad(x: Tensor, scale_grad: bool = True) -> tuple[Tensor, int]:
    """Concatenate ``x`` from every rank; this rank's rows keep their autograd graph.

    Returns ``(gathered, offset)``, ``offset`` being where this rank's rows start. With
    ``scale_grad`` the local rows pass gradient multiplied by the world size (see the module
    docstring). Identity on one process. A collective: every rank must call it.
    """
    rank, world = world_info()
    if world == 1:
        return x, 0
    parts, rank, world = _gather_padded(x)
    local = x
    if scale_grad:
        # value of x, gradient world × that of x
        local = x * world - x.detach() * (world - 1)
    offset = sum(p.shape[0] for p in parts[:rank])
    parts[rank] = local
    return torch.cat(parts), offset


def symmetric_infonce(text: Tensor, video: Tensor, logit_scale: Tensor) -> tuple[Tensor, Tensor]:
    """CLIP's symmetric InfoNCE of ``N`` aligned pairs (row ``i`` of both is a true pair).

    ``text``, ``video``: ``[N, E]`` L2-normalised; ``logit_scale``: a scalar (``1 / temperature``).
    Returns ``(loss, logits)``: the mean of the text→video and video→text cross-entropies, and
    the ``[N, N]`` text×video logits.
    """
    if text.shape != video.shape or text.dim() != 2:
        raise ValueError(f"text and video embeddings must be aligned [N, E], got {tuple(text.shape)} and {tuple(video.shape)}")
    logits = logit_scale * text @ video.t()
    labels = torch.arange(text.shape[0], device=text.device)
    loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
    return loss, logits


@dataclass
class ContrastiveOutput:
    loss: Tensor
    """Symmetric InfoNCE over the global batch (the same value on every rank)."""
    t2v_accuracy: Tensor
    """Share of texts whose best video in the global batch is their own (detached)."""
    batch_size: int
    """Pairs in the global batch."""


class DualEncoderNet(nn.Module):
    """Video and text towers with linear projections into one normalised space.

    Args:
        video_encoder: a ``VideoEncoder``; build it with ``pool_grid=(num_frames, 1, 1)`` so its
            tokens are the CLS token + one spatially pooled token per time step.
        text_encoder: a ``TextEncoder``.
        embed_dim: width of the shared space.
        video_pooling: ``mean``: average of the per-time-step tokens (temporal pooling);
            ``cls``: TimeSformer's CLS token.
        temperature: initial softmax temperature (CLIP: 0.07).
        learn_temperature: learn it (as ``log(1 / temperature)``) or keep it fixed.
        max_logit_scale: the scale ``1 / temperature`` is clamped to at most this (CLIP: 100).
    """

    def __init__(
        self,
        video_encoder: VideoEncoder,
        text_encoder: TextEncoder,
        embed_dim: int = 256,
        video_pooling: VideoPooling = "mean",
        temperature: float = 0.07,
        learn_temperature: bool = True,
        max_logit_scale: float = 100.0,
    ) -> None:
        super().__init__()
        if video_pooling not in ("mean", "cls"):
            raise ValueError(f"unknown video pooling {video_pooling!r}; expected 'mean' or 'cls'")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.video = video_encoder
        self.text = text_encoder
        self.video_pooling = video_pooling
        self.video_proj = nn.Linear(video_encoder.hidden_size, embed_dim, bias=False)
        self.text_proj = nn.Linear(text_encoder.hidden_size, embed_dim, bias=False)
        log_scale = torch.tensor(math.log(1.0 / temperature))
        if learn_temperature:
            self.log_logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_logit_scale", log_scale)
        self.max_logit_scale = max_logit_scale

    @property
    def logit_scale(self) -> Tensor:
        return self.log_logit_scale.exp().clamp(max=self.max_logit_scale)

    def encode_video(self, video: Tensor) -> Tensor:
        """``[B, T, C, H, W]`` normalised frames → ``[B, E]`` unit vectors."""
        tokens = self.video(video)  # [B, 1 + t·h·w, D]
        pooled = tokens[:, 0] if self.video_pooling == "cls" else tokens[:, 1:].mean(dim=1)
        return F.normalize(self.video_proj(pooled), dim=-1)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Token ids ``[B, L]`` → ``[B, E]`` unit vectors."""
        return self.project_text(self.text(input_ids, attention_mask))

    def project_text(self, features: Tensor) -> Tensor:
        """Text tower features ``[B, D]`` → ``[B, E]`` unit vectors (e.g. from cached features)."""
        return F.normalize(self.text_proj(features), dim=-1)

    def contrastive_loss(self, text: Tensor, video: Tensor, gather: bool = True) -> ContrastiveOutput:
        """Symmetric InfoNCE of this rank's aligned embeddings against the global batch.

        A collective when ``gather`` and several ranks: every rank must call it, even with no
        rows of its own.
        """
        if gather:
            text, _ = gather_with_local_grad(text)
            video, _ = gather_with_local_grad(video)
        loss, logits = symmetric_infonce(text, video, self.logit_scale)
        with torch.no_grad():
            labels = torch.arange(logits.shape[0], device=logits.device)
            acc = (logits.argmax(dim=1) == labels).float().mean() if logits.numel() else logits.new_zeros(())
        return ContrastiveOutput(loss=loss, t2v_accuracy=acc, batch_size=int(logits.shape[0]))
