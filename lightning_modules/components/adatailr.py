"""AdaTaiLr: a tail-aware, noise-discounting caption loss.

This module implements the loss as *this project* defines it (DESIGN §5). It is built on TaiLr
(Ji et al., "Tailoring Language Generation Models under Total Variation Distance", ICLR 2023)
and on the description of AdaTaiLr in the Video DataFlywheel paper (arXiv 2409.19532): total
variation distance instead of KL, (1 - Γ) governing bias and Γ governing variance, Γ adapting
during training. The paper's exact adaptive rule was not available to us, so the weighting
below and the estimators in ``gamma_schedules.py`` are our definition, not the paper's rule.

For every supervised token t with target probability p_t (computed in fp32 from log-softmax):

    w_t  = stopgrad(clamp(p_t / (Γ + (1 - Γ) p_t), w_min, 1))
    loss = mean over non-ignored tokens of  w_t · (−log p_t)

Γ = 0 gives w_t = 1, i.e. exactly cross-entropy (MLE). Γ = 1 gives w_t = p_t (the pure TVD
direction). TaiLr with a fixed γ is a constant Γ. The weight is evaluated in log space,

    log w_t = log p_t − logaddexp(log Γ, log(1 − Γ) + log p_t),

which stays finite for p_t → 0 and p_t → 1 and for Γ ∈ {0, 1} (where one branch is −inf).
Gradients flow only through −log p_t; the weights are constants of the step.

The per-token NLL comes from a single fused ``F.cross_entropy(reduction="none")`` pass over the
vocabulary, the same pass the cross-entropy baseline makes; the weighting only touches the
[B·T] vector of target log-probabilities, so its overhead is independent of the vocabulary size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["TokenStats", "tailr_weights", "tailr_loss", "tailr_loss_with_stats"]


@dataclass(frozen=True)
class TokenStats:
    """Detached per-step statistics of the supervised tokens (all 0-dim tensors, no host sync).

    ``mean_p`` and ``num_tokens`` are what a Γ estimator needs; together with ``mean_weight``,
    ``clamped_frac`` and ``nll`` they are what the Γ monitor logs. With no supervised token the
    means are 0 and ``num_tokens`` is 0.
    """

    mean_p: Tensor
    """Mean target probability p_t over the non-ignored tokens."""
    mean_weight: Tensor
    """Mean weight w_t (after clamping) over the non-ignored tokens."""
    clamped_frac: Tensor
    """Fraction of non-ignored tokens whose raw weight fell below ``w_min`` and was raised to it."""
    nll: Tensor
    """Plain (unweighted) mean negative log-likelihood, i.e. the cross-entropy."""
    num_tokens: Tensor
    """Number of non-ignored tokens (int64)."""


def _as_gamma(gamma: float | Tensor, device: torch.device) -> Tensor:
    # A Python Γ is checked here; a tensor Γ is clamped to [0, 1] (checking it would sync a GPU).
    if not isinstance(gamma, Tensor) and not 0.0 <= float(gamma) <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
    g = torch.as_tensor(gamma, dtype=torch.float32, device=device).detach()
    if g.dim() != 0:
        raise ValueError(f"gamma must be a scalar, got shape {tuple(g.shape)}")
    return g


def tailr_weights(
    log_p: Tensor, gamma: float | Tensor, w_min: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Return ``(w, raw_w)``: the clamped TaiLr weights of target log-probabilities ``log_p``.

    ``raw_w = p / (Γ + (1 − Γ) p)`` evaluated in log space, before clamping; ``w`` is
    ``raw_w`` clamped to ``[w_min, 1]``. Both are detached and fp32.
    """
    if not 0.0 <= w_min <= 1.0:
        raise ValueError(f"w_min must lie in [0, 1], got {w_min}")
    log_p = log_p.detach().float()
    # A target log-probability of -inf (a masked-out target) would give -inf - (-inf) = nan.
    log_p = log_p.clamp(min=torch.finfo(torch.float32).min)
    g = _as_gamma(gamma, log_p.device).clamp(0.0, 1.0)
    # log(Γ + (1−Γ)p) with log(0) = -inf handled exactly by logaddexp: Γ = 0 → log p, Γ = 1 → 0.
    log_den = torch.logaddexp(torch.log(g), torch.log1p(-g) + log_p)
    raw_w = torch.exp((log_p - log_den).clamp(max=0.0))
    return raw_w.clamp(min=w_min, max=1.0), raw_w


def _weighted_nll(
    logits: Tensor,
    labels: Tensor,
    gamma: float | Tensor,
    w_min: float,
    ignore_index: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    if logits.dim() < 2 or logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not align: "
            "expected logits [..., V] and labels [...]"
        )
    vocab = logits.shape[-1]
    # One fused log-softmax + gather; ignored positions get nll = 0.
    nll = F.cross_entropy(
        logits.reshape(-1, vocab).float(),
        labels.reshape(-1),
        ignore_index=ignore_index,
        reduction="none",
    )
    mask = labels.reshape(-1) != ignore_index
    count = mask.sum()
    w, raw_w = tailr_weights(-nll.detach(), gamma, w_min)
    # Dividing by max(count, 1) makes an all-ignored batch a 0 loss that still has a grad path.
    loss = (w * nll).sum() / count.clamp(min=1)
    return loss, nll, w, raw_w, mask


def tailr_loss(
    logits: Tensor,
    labels: Tensor,
    gamma: float | Tensor,
    w_min: float = 0.0,
    ignore_index: int = -100,
) -> Tensor:
    """Mean over non-ignored tokens of ``w_t · (−log p_t)`` (DESIGN §5, §8).

    Args:
        logits: ``[B, T, V]`` scores in any float dtype; the loss is computed in fp32.
        labels: ``[B, T]`` target ids already aligned with ``logits`` (no shift is applied).
        gamma: Γ in [0, 1], a Python float or a 0-dim tensor; 0 is exactly cross-entropy.
        w_min: lower clamp of the weights (TaiLr's usual value is 0.2).
        ignore_index: label value of positions that are not supervised.

    Returns:
        A 0-dim fp32 tensor; 0 (with a gradient path) when every position is ignored.
    """
    return _weighted_nll(logits, labels, gamma, w_min, ignore_index)[0]


def tailr_loss_with_stats(
    logits: Tensor,
    labels: Tensor,
    gamma: float | Tensor,
    w_min: float = 0.0,
    ignore_index: int = -100,
) -> tuple[Tensor, TokenStats]:
    """Like :func:`tailr_loss`, and also return the detached :class:`TokenStats` of the tokens."""
    loss, nll, w, raw_w, mask = _weighted_nll(logits, labels, gamma, w_min, ignore_index)
    with torch.no_grad():
        maskf = mask.float()
        count = mask.sum()
        denom = count.clamp(min=1).float()
        p = torch.exp(-nll.detach())
        stats = TokenStats(
            mean_p=(p * maskf).sum() / denom,
            mean_weight=(w * maskf).sum() / denom,
            clamped_frac=((raw_w < w_min).float() * maskf).sum() / denom,
            nll=nll.detach().sum() / denom,
            num_tokens=count,
        )
    return loss, stats
