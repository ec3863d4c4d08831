"""Pluggable Γ estimators for the AdaTaiLr loss (DESIGN §5; see ``adatailr.py``).

The adaptive rule is this project's definition built on TaiLr (Ji et al., ICLR 2023) and the
Video DataFlywheel paper's description, not the paper's exact rule.

Step ordering, shared by every estimator. One *step* is one call of ``update``:

    step k (k = 1, 2, …):
        loss_k = tailr_loss(logits, labels, gamma=estimator.gamma)   # Γ from steps < k only
        estimator.update(stats.mean_p, stats.num_tokens)             # fold in step k's q̄_k

So the Γ used for a step never depends on that step's own tokens: the first step uses the
estimator's initial value (``Γ_min`` for the adaptive one, 0 for the warm-up), and the statistics
of step k first affect step k + 1. ``update`` returns the Γ the *next* step will use.

Every rank must call ``update`` on every step (it may run a collective) and gets the same Γ.
With gradient accumulation the caller decides what a step is (each micro-batch, or the
token-weighted mean over the accumulated micro-batches); the estimator just counts calls.

State (``state_dict``/``load_state_dict``) is plain Python numbers, restored exactly, so a
resumed run reproduces the uninterrupted sequence of Γ bit for bit.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["GammaSchedule", "ConstantGamma", "LinearWarmupGamma", "AdaptiveGamma"]


class GammaSchedule(ABC):
    """A Γ estimator: ``gamma`` is the value for the current step, ``update`` ends the step."""

    def __init__(self) -> None:
        self.step = 0  # number of completed steps (calls of ``update``)

    @property
    @abstractmethod
    def gamma(self) -> float:
        """Γ to use for the current step's loss."""

    def update(self, mean_p: float | Tensor, num_tokens: int | Tensor = 1) -> float:
        """End the current step with its mean target probability; return the next step's Γ.

        Args:
            mean_p: this rank's mean detached p_t over the step's supervised tokens.
            num_tokens: how many tokens ``mean_p`` averages (weights the cross-rank mean).
        """
        del mean_p, num_tokens
        self.step += 1
        return self.gamma

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(step={self.step}, gamma={self.gamma:.6g})"


class ConstantGamma(GammaSchedule):
    """A fixed Γ: TaiLr with a constant γ; ``gamma=0.0`` is plain cross-entropy (MLE)."""

    def __init__(self, gamma: float = 0.0) -> None:
        """
        Args:
            gamma: the constant Γ in [0, 1]; 0 is cross-entropy, 1 weights tokens by p_t.
        """
        super().__init__()
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
        self._gamma = float(gamma)

    @property
    def gamma(self) -> float:
        return self._gamma


class LinearWarmupGamma(GammaSchedule):
    """Γ rises linearly from 0 to ``gamma_max`` over ``warmup_steps`` steps, then stays there."""

    def __init__(self, gamma_max: float = 0.5, warmup_steps: int = 1000) -> None:
        """
        Args:
            gamma_max: Γ reached at the end of the warm-up, in [0, 1].
            warmup_steps: steps to reach ``gamma_max``; 0 starts at ``gamma_max``.
        """
        super().__init__()
        if not 0.0 <= gamma_max <= 1.0:
            raise ValueError(f"gamma_max must lie in [0, 1], got {gamma_max}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.gamma_max = float(gamma_max)
        self.warmup_steps = int(warmup_steps)

    @property
    def gamma(self) -> float:
        if self.step >= self.warmup_steps:
            return self.gamma_max
        return self.gamma_max * self.step / self.warmup_steps


class AdaptiveGamma(GammaSchedule):
    """Γ from a bias-corrected EMA of the model's mean target probability (DESIGN §5).

    After step k with global mean target probability q̄_k:
        m_k = β m_{k−1} + (1 − β) q̄_k,  m_0 = 0;   m̂_k = m_k / (1 − β^k)
        Γ_{k+1} = clip(1 − exp(−λ m̂_k), Γ_min, Γ_max),  and Γ_1 = Γ_min.
    q̄_k is the token-weighted mean over all data-parallel ranks when ``torch.distributed`` is
    initialised (an all-reduce of (Σ p, token count) in float64), so every rank gets the same Γ.
    A step with no supervised token anywhere leaves the state untouched.
    """

    def __init__(
        self,
        lam: float = 1.0,
        beta: float = 0.98,
        gamma_min: float = 0.0,
        gamma_max: float = 0.95,
    ) -> None:
        """
        Args:
            lam: smoothness λ >= 0; 0 gives MLE, very large values jump straight to ``gamma_max``.
            beta: EMA momentum β in [0, 1) of the mean target probability.
            gamma_min: lower clip of Γ (also the Γ of the very first step).
            gamma_max: upper clip of Γ.
        """
        super().__init__()
        if lam < 0.0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must lie in [0, 1), got {beta}")
        if not 0.0 <= gamma_min <= gamma_max <= 1.0:
            raise ValueError(f"need 0 <= gamma_min <= gamma_max <= 1, got {gamma_min}, {gamma_max}")
        self.lam = float(lam)
        self.beta = float(beta)
        self.gamma_min = float(gamma_min)
        self.gamma_max = float(gamma_max)
        self.ema = 0.0  # m_k, before bias correction
        self.last_mean_p = float("nan")  # global q̄ of the last step that had tokens (for logging)

    @property
    def ema_corrected(self) -> float:
        """m̂_k = m_k / (1 − β^k); 0 before the first step."""
        if self.step == 0:
            return 0.0
        return self.ema / (1.0 - self.beta**self.step)

    @property
    def gamma(self) -> float:
        if self.lam == 0.0:
            raw = 0.0
        else:
            raw = -math.expm1(-self.lam * self.ema_corrected)  # 1 − exp(−λ m̂), exact near 0
        return min(max(raw, self.gamma_min), self.gamma_max)

    @staticmethod
    def _global_mean(mean_p: float | Tensor, num_tokens: int | Tensor) -> tuple[float, float]:
        """Token-weighted mean of ``mean_p`` over all ranks and the global token count."""
        device = torch.device("cpu")
        if isinstance(mean_p, Tensor):
            device = mean_p.device
        elif dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        n = torch.as_tensor(num_tokens, dtype=torch.float64, device=device)
        q = torch.as_tensor(mean_p, dtype=torch.float64, device=device).detach()
        # Σ p = mean · count; a rank with no tokens contributes (0, 0) even if its mean is nan.
        pair = torch.stack([torch.where(n > 0, q * n, torch.zeros_like(q)), n])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(pair, op=dist.ReduceOp.SUM)
        p_sum, count = pair.tolist()  # the one host sync per step
        return (p_sum / count if count > 0 else float("nan")), count

    def update(self, mean_p: float | Tensor, num_tokens: int | Tensor = 1) -> float:
        """Fold in this step's q̄ (collective when distributed); return the next step's Γ."""
        q, count = self._global_mean(mean_p, num_tokens)
        if count > 0:
            self.step += 1
            self.ema = self.beta * self.ema + (1.0 - self.beta) * q
            self.last_mean_p = q
        return self.gamma

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "ema": self.ema, "last_mean_p": self.last_mean_p}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.ema = float(state["ema"])
        self.last_mean_p = float(state.get("last_mean_p", float("nan")))
