"""Sampling whose draws belong to each clip, not to the batch: the same clip gets the same caption
whatever it is batched with, on whichever rank, in whatever order.

HF ``generate(do_sample=True)`` draws every row from one global generator, so a clip's caption
depends on its neighbours in the batch, and re-annotating a pool on 2 ranks would give other
captions than on 1. ``SeededSampling`` is a logits processor for *greedy* decoding that adds
Gumbel noise that is a function of (row seed, step, token id): the arg-max of
``log softmax(scores / T) + Gumbel`` is a sample from ``softmax(scores / T)`` (the Gumbel-max
trick), restricted to the nucleus of mass ``top_p``. Tokens other processors ruled out (``-inf``,
e.g. n-gram blocking) stay ruled out.

The uniform behind a token's Gumbel noise is a hash of (row seed, step, token id) (SplitMix64's
mixer, a counter-based generator), so noise is computed only for the tokens in the nucleus, not
drawn for the whole vocabulary: drawing 49k numbers per row and step from a seeded generator was
most of the cost of sampled merges with SmolLM2's vocabulary (README, "Sample, then keep what is
grounded").

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
        if self.top_p >= 1:  # every token is a candidate
            every = torch.arange(logp.shape[1], device=logp.device).expand_as(logp)
            return self._add_noise(logp, every, list(range(logp.shape[0])), step)
        # A captioner's nucleus almost always lies within its top NUCLEUS_CANDIDATES tokens, so
        # only those are sorted, not the whole vocabulary (49k tokens for SmolLM2) every step; the
        # rows whose nucleus reaches beyond them (a flat distribution, e.g. after the end of the
        # caption) sort their whole vocabulary. Exact either way.
        top_logp, top_ids = logp.topk(min(NUCLEUS_CANDIDATES, logp.shape[1]), dim=-1)
        wide = top_logp.exp().sum(dim=-1) < self.top_p
        out = torch.full_like(logp, float("-inf"))
        if not bool(wide.all()):
            self._write_nucleus(out, ~wide, top_logp[~wide], top_ids[~wide], step)
        if bool(wide.any()):
            self._write_nucleus(out, wide, *logp[wide].sort(dim=-1, descending=True), step)
        return out

    def _write_nucleus(self, out: Tensor, mask: Tensor, cand_logp: Tensor, cand_ids: Tensor, step: int) -> None:
        """Writes the rows of ``out`` that ``mask`` selects: the log-probabilities ``cand_logp`` of
        their candidates ``cand_ids`` (sorted, most likely first), ``-inf`` past the nucleus, plus
        noise."""
        mass_before = cand_logp.exp().cumsum(dim=-1) - cand_logp.exp()
        cand_logp = cand_logp.masked_fill(mass_before >= self.top_p, float("-inf"))  # the top token stays
        members = mask.nonzero().flatten()
        noisy = self._add_noise(cand_logp, cand_ids, members.tolist(), step)
        out[members] = out[members].scatter(-1, cand_ids, noisy)

    def _add_noise(self, logp: Tensor, token_ids: Tensor, rows: list[int], step: int) -> Tensor:
        """Adds Gumbel noise in place to ``logp``, the log-probabilities of ``token_ids`` in the
        batch rows ``rows``. A greedy row gets none: its arg-max is its top token, kept by any
        nucleus."""
        seeded = [i for i, row in enumerate(rows) if self.seeds[row] is not None]
        if seeded:
            keys = torch.tensor([_signed(self.seeds[rows[i]] * 1_000_003 + step) for i in seeded], device=logp.device)
            logp[seeded] += _gumbel_noise(_mix64(keys), token_ids[seeded])
        return logp


_MASK = (1 << 64) - 1


def _signed(value: int) -> int:
    """A 64-bit pattern as the int64 that holds it."""
    value &= _MASK
    return value - (1 << 64) if value >> 63 else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)


def _shift_right(x: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 bit patterns (torch's ``>>`` copies the sign bit)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix64(x: Tensor) -> Tensor:
    """SplitMix64's finaliser on int64 bit patterns (products wrap modulo 2^64, as in C)."""
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


def _gumbel_noise(keys: Tensor, token_ids: Tensor) -> Tensor:
    """Gumbel(0, 1) noise for ``token_ids [R, k]``, row r keyed by ``keys[r]`` (a mixed
    (seed, step)): a function of (key, token id) alone, whatever else is in the batch or the
    candidate list."""
    bits = _mix64(keys[:, None] + (token_ids + 1) * _GOLDEN)
    uniform = ((_shift_right(bits, 11).double() + 0.5) / 2.0**53).clamp_(2.0**-53, 1 - 2.0**-53)
    return (-torch.log(-torch.log(uniform))).float()
