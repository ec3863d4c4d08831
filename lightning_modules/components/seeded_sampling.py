"""Sampling whose draws belong to each clip, not to the batch: the same clip gets the same caption
whatever it is batched with, on whichever rank, in whatever order.

HF ``generate(do_sample=True)`` draws every row from one global generator, so a clip's caption
depends on its neighbours in the batch, and re-annotating a pool on 2 ranks would give other
captions than on 1. ``SeededSampling`` is a logits processor for *greedy* decoding that adds
Gumbel noise drawn from a generator seeded by (row seed, step): the arg-max of
``log softmax(scores / T) + Gumbel`` is a sample from ``softmax(scores / T)`` (the Gumbel-max
trick), restricted to the nucleus of mass ``top_p``. Tokens other processors ruled out (``-inf``,
e.g. n-gram blocking) stay ruled out.

Why sample at all: greedy decoding of a captioner returns the mode of its paraphrase
distribution, so a pool re-annotated greedily collapses into a few templates (the diversity the
flywheel must keep); sampling with a nucleus keeps the confident attribute words and varies the
wording where the model learnt that several are fine.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import LogitsProcessor

__all__ = ["clip_seed", "SeededSampling"]

NUCLEUS_CANDIDATES = 256  # tokens sorted per step to find a nucleus (more only where it must)


def clip_seed(clip_id: str, seed: int) -> int:
    """A stable 63-bit seed for one clip under a run seed (independent of Python's hash salt)."""
    return (zlib.crc32(clip_id.encode()) << 31 ^ int(seed)) & (2**63 - 1)


class SeededSampling(LogitsProcessor):
    """Turns greedy decoding into per-row seeded sampling (see the module docstring).

    Args:
        seeds: one seed per batch row (``num_beams`` must be 1); None leaves a row greedy, so one
            batch can hold a clip's greedy caption beside its samples.
        temperature: softmax temperature (> 0).
        top_p: keep the smallest set of tokens whose probability reaches ``top_p`` (0 < top_p <= 1).
    """

    def __init__(self, seeds: Sequence[int | None], temperature: float = 1.0, top_p: float = 1.0) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self.seeds = [None if s is None else int(s) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if scores.shape[0] != len(self.seeds):
            raise ValueError(f"{scores.shape[0]} rows to sample but {len(self.seeds)} seeds")
        step = input_ids.shape[1]
        logp = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        noise = torch.zeros_like(logp)  # a greedy row's arg-max is its top token, kept by any nucleus
        rows = [row for row, seed in enumerate(self.seeds) if seed is not None]
        if rows:
            # the noise belongs to (seed, step, token id), never to a token's rank in this batch
            uniform = torch.stack([
                torch.rand(logp.shape[1], generator=torch.Generator().manual_seed(
                    (self.seeds[row] * 1_000_003 + step) & (2**63 - 1)))
                for row in rows
            ]).clamp_(1e-12, 1 - 1e-7)
            noise[rows] = -torch.log(-torch.log(uniform)).to(noise.device)
        if self.top_p >= 1:
            return logp + noise
        return self._nucleus(logp) + noise

    def _nucleus(self, logp: Tensor) -> Tensor:
        """``logp`` with the tokens outside each row's nucleus at -inf.

        A captioner's nucleus almost always lies within its top ``NUCLEUS_CANDIDATES`` tokens, so
        only those are sorted, not the whole vocabulary (49k tokens for SmolLM2) every step; a step
        where some row's nucleus reaches beyond them sorts the whole vocabulary (exact either
        way)."""
        k = min(NUCLEUS_CANDIDATES, logp.shape[1])
        top_logp, top_ids = logp.topk(k, dim=-1)
        if k < logp.shape[1] and bool((top_logp.exp().sum(dim=-1) < self.top_p).any()):
            top_logp, top_ids = logp.sort(dim=-1, descending=True)
        mass_before = top_logp.exp().cumsum(dim=-1) - top_logp.exp()
        keep = mass_before < self.top_p  # the top token always stays (mass before it is 0)
        return torch.full_like(logp, float("-inf")).scatter(-1, top_ids, top_logp.masked_fill(~keep, float("-inf")))
