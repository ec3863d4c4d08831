"""AdaTaiLr loss and Γ estimators (DESIGN §5)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from lightning_modules.components.adatailr import tailr_loss, tailr_loss_with_stats, tailr_weights
from lightning_modules.components.gamma_schedules import (
    AdaptiveGamma,
    ConstantGamma,
    LinearWarmupGamma,
)


def _batch(b=3, t=7, v=11, seed=0, ignore_frac=0.3, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = (3.0 * torch.randn(b, t, v, generator=g)).to(dtype)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[torch.rand(b, t, generator=g) < ignore_frac] = -100
    return logits, labels


def _reference(logits, labels, gamma, w_min, ignore_index=-100):
    """Naive float64 loss and weights, written from the definition."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    mask = labels != ignore_index
    lp = logp[mask].gather(-1, labels[mask].unsqueeze(-1)).squeeze(-1)
    p = lp.exp()
    w = (p / (gamma + (1 - gamma) * p)).clamp(w_min, 1.0)
    return (w * -lp).mean(), w


# ------------------------------------------------------------------------------------- the loss


def test_gamma_zero_is_cross_entropy():
    logits, labels = _batch()
    logits.requires_grad_(True)
    ours = tailr_loss(logits, labels, 0.0)
    ref = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    assert torch.allclose(ours, ref, atol=1e-6, rtol=0)
    g_ours = torch.autograd.grad(ours, logits)[0]
    logits2 = logits.detach().requires_grad_(True)
    ref2 = F.cross_entropy(logits2.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    g_ref = torch.autograd.grad(ref2, logits2)[0]
    assert torch.allclose(g_ours, g_ref, atol=1e-7, rtol=0)
    # ConstantGamma(0.0), the cross-entropy baseline, is the same path; a tensor Γ too
    assert torch.allclose(tailr_loss(logits, labels, ConstantGamma(0.0).gamma), ref, atol=1e-6)
    assert torch.allclose(tailr_loss(logits, labels, torch.tensor(0.0)), ref, atol=1e-6)


def test_ignore_index_respected():
    logits, labels = _batch(ignore_frac=0.5)
    other = labels.clone()
    other[labels == -100] = 7
    ref = F.cross_entropy(logits.reshape(-1, 11), other.reshape(-1), ignore_index=7)
    assert torch.allclose(tailr_loss(logits, other, 0.0, ignore_index=7), ref, atol=1e-6)
    # changing logits at ignored positions changes nothing
    noisy = logits.clone()
    noisy[labels == -100] = 100.0 * torch.randn_like(noisy[labels == -100])
    for gamma in (0.0, 0.4, 1.0):
        assert torch.equal(tailr_loss(noisy, labels, gamma, 0.2), tailr_loss(logits, labels, gamma, 0.2))


@pytest.mark.parametrize("gamma", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("w_min", [0.0, 0.2])
def test_constant_gamma_matches_float64_reference(gamma, w_min):
    logits, labels = _batch(b=4, t=9, v=13, seed=1)
    ref_loss, ref_w = _reference(logits, labels, gamma, w_min)
    assert torch.allclose(tailr_loss(logits, labels, gamma, w_min).double(), ref_loss, rtol=1e-5, atol=1e-6)
    # the weights themselves
    mask = labels != -100
    lp = torch.log_softmax(logits, -1)[mask].gather(-1, labels[mask].unsqueeze(-1)).squeeze(-1)
    w, _ = tailr_weights(lp, torch.tensor(gamma), w_min)
    assert torch.allclose(w.double(), ref_w, rtol=1e-5, atol=1e-7)


def test_gamma_one_weights_are_p():
    lp = torch.linspace(-8.0, 0.0, 50)
    w, raw = tailr_weights(lp, 1.0, 0.0)
    assert torch.allclose(w, lp.exp(), rtol=1e-6, atol=0)
    assert torch.equal(w, raw)
    w, raw = tailr_weights(lp, 1.0, 0.2)
    assert torch.allclose(w, lp.exp().clamp(min=0.2), rtol=1e-6)
    # and Γ = 0 gives weights exactly 1
    assert torch.equal(tailr_weights(lp, 0.0, 0.0)[0], torch.ones(50))


def test_weights_do_not_carry_gradient():
    # hand-computed: one token, V = 2, logits (0, 0) → p = 1/2; Γ = 1/2 → w = 0.5/(0.5+0.25) = 2/3.
    # d/dz of w·(−log p) with w constant is w·(softmax − onehot) = 2/3·(−1/2, 1/2).
    z = torch.zeros(1, 1, 2, requires_grad=True)
    y = torch.tensor([[0]])
    loss = tailr_loss(z, y, 0.5)
    assert torch.allclose(loss, torch.tensor(2 / 3 * math.log(2)))
    (g,) = torch.autograd.grad(loss, z)
    assert torch.allclose(g, torch.tensor([[[-1 / 3, 1 / 3]]]))
    # a batch: autograd grad equals the analytic w·(softmax − onehot)/N with w held constant
    logits, labels = _batch(seed=3)
    logits.requires_grad_(True)
    gamma, w_min = 0.6, 0.2
    (g,) = torch.autograd.grad(tailr_loss(logits, labels, gamma, w_min), logits)
    with torch.no_grad():
        mask = labels != -100
        prob = logits.softmax(-1)
        safe = labels.clamp(min=0)
        p = prob.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
        w = (p / (gamma + (1 - gamma) * p)).clamp(w_min, 1.0) * mask
        onehot = F.one_hot(safe, logits.shape[-1]).float()
        analytic = w.unsqueeze(-1) * (prob - onehot) / mask.sum()
    assert torch.allclose(g, analytic, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0])
def test_extreme_logits_are_finite(dtype, gamma):
    v = 17
    logits = torch.full((2, 4, v), -1e4)
    labels = torch.tensor([[0, 1, 2, -100], [3, 4, 5, 6]])
    logits[0, 0, 0] = 1e4  # p → 1 for the target
    logits[0, 1, 0] = 1e4  # p → 0 for the target (1 is at -1e4)
    logits[1, 0, 3] = 1e4  # p → 1
    logits[1, 1, 0] = 1e4  # p → 0
    logits = logits.to(dtype).requires_grad_(True)
    loss, stats = tailr_loss_with_stats(logits, labels, gamma, 0.2)
    (g,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(loss) and torch.isfinite(g.float()).all()
    for value in (stats.mean_p, stats.mean_weight, stats.clamped_frac, stats.nll):
        assert torch.isfinite(value)
    # a masked (-inf) target still gives a finite weight
    w, _ = tailr_weights(torch.tensor([-math.inf, 0.0]), gamma, 0.2)
    assert torch.isfinite(w).all()


def test_all_ignored_batch_is_zero_with_grad():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    labels = torch.full((2, 3), -100)
    loss, stats = tailr_loss_with_stats(logits, labels, 0.5, 0.2)
    assert loss.item() == 0.0 and loss.requires_grad
    (g,) = torch.autograd.grad(loss, logits)
    assert torch.equal(g, torch.zeros_like(g))
    assert stats.num_tokens.item() == 0 and stats.mean_p.item() == 0.0


def test_stats_values():
    logits, labels = _batch(seed=5)
    gamma, w_min = 0.7, 0.2
    loss, stats = tailr_loss_with_stats(logits, labels, gamma, w_min)
    assert torch.equal(loss, tailr_loss(logits, labels, gamma, w_min))
    mask = labels != -100
    lp = torch.log_softmax(logits.double(), -1)[mask].gather(-1, labels[mask].unsqueeze(-1)).squeeze(-1)
    p = lp.exp()
    raw = p / (gamma + (1 - gamma) * p)
    assert stats.num_tokens.item() == mask.sum().item()
    assert math.isclose(stats.mean_p.item(), p.mean().item(), rel_tol=1e-5)
    assert math.isclose(stats.nll.item(), -lp.mean().item(), rel_tol=1e-5)
    assert math.isclose(stats.mean_weight.item(), raw.clamp(w_min, 1).mean().item(), rel_tol=1e-5)
    assert math.isclose(stats.clamped_frac.item(), (raw < w_min).double().mean().item(), rel_tol=1e-6)
    assert 0.0 < stats.clamped_frac.item() < 1.0  # the case is non-trivial
    for value in (stats.mean_p, stats.mean_weight, stats.nll):
        assert not value.requires_grad


def test_bad_shapes_and_gamma_rejected():
    with pytest.raises(ValueError):
        tailr_loss(torch.randn(2, 3, 5), torch.zeros(2, 4, dtype=torch.long), 0.0)
    with pytest.raises(ValueError):
        tailr_loss(torch.randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.long), 1.5)


# ------------------------------------------------------------------------------- the estimators


def test_constant_and_warmup():
    c = ConstantGamma(0.3)
    assert c.gamma == 0.3 and c.update(0.9, 10) == 0.3 and c.step == 1
    w = LinearWarmupGamma(gamma_max=0.8, warmup_steps=4)
    seq = [w.gamma] + [w.update(0.5) for _ in range(6)]
    assert seq == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 0.8, 0.8])
    assert LinearWarmupGamma(0.5, 0).gamma == 0.5


def test_adaptive_lambda_zero_is_mle():
    est = AdaptiveGamma(lam=0.0)
    assert est.gamma == 0.0
    for q in (0.1, 0.5, 0.99, 1.0):
        assert est.update(q, 10) == 0.0


def test_adaptive_huge_lambda_jumps_to_max():
    est = AdaptiveGamma(lam=1e9, gamma_max=0.95)
    assert est.gamma == 0.0  # the first step uses Γ_min
    assert est.update(0.01, 5) == 0.95


def test_adaptive_rises_with_increasing_q():
    est = AdaptiveGamma(lam=2.0, beta=0.9)
    seq = [est.update(q, 8) for q in torch.linspace(0.05, 0.9, 30).tolist()]
    assert all(b > a for a, b in zip(seq, seq[1:]))
    assert 0.0 < seq[0] < seq[-1] <= 0.95


def test_adaptive_bias_correction_hand_computed():
    est = AdaptiveGamma(lam=1.5, beta=0.5, gamma_min=0.05, gamma_max=0.9)
    assert est.gamma == 0.05  # step 1 uses Γ_min
    # q = 0.2: m1 = 0.1, m̂1 = 0.1/0.5 = 0.2, Γ = 1 − e^−0.3
    assert est.update(0.2) == pytest.approx(1 - math.exp(-0.3), abs=1e-12)
    # q = 0.8: m2 = 0.05 + 0.4 = 0.45, m̂2 = 0.45/0.75 = 0.6, Γ = 1 − e^−0.9
    assert est.update(0.8) == pytest.approx(1 - math.exp(-0.9), abs=1e-12)
    assert est.ema == pytest.approx(0.45) and est.ema_corrected == pytest.approx(0.6)
    # q = 1.0, λ m̂ large enough to hit Γ_max: m3 = 0.725, m̂3 = 0.725/0.875
    expected = min(1 - math.exp(-1.5 * 0.725 / 0.875), 0.9)
    assert est.update(1.0) == pytest.approx(expected, abs=1e-12)
    # a tiny q is clipped up to Γ_min
    low = AdaptiveGamma(lam=0.01, gamma_min=0.05)
    assert low.update(0.01) == 0.05


def test_adaptive_step_without_tokens_is_skipped():
    est = AdaptiveGamma(lam=3.0)
    est.update(0.4, 10)
    before = est.state_dict()
    assert est.update(float("nan"), 0) == est.gamma
    assert est.state_dict() == before


def test_adaptive_accepts_tensors_and_weights_tokens():
    a, b = AdaptiveGamma(lam=2.0, beta=0.0), AdaptiveGamma(lam=2.0, beta=0.0)
    a.update(torch.tensor(0.3, dtype=torch.float64), torch.tensor(4))
    b.update(0.3, 4)
    assert a.gamma == b.gamma == pytest.approx(1 - math.exp(-0.6))
    c = AdaptiveGamma(lam=2.0, beta=0.0)  # an fp32 tensor q̄ is used as the fp32 value it holds
    c.update(torch.tensor(0.3), 4)
    assert c.gamma == -math.expm1(-2.0 * torch.tensor(0.3).item())


@pytest.mark.parametrize(
    "make",
    [lambda: AdaptiveGamma(lam=3.0, beta=0.9, gamma_min=0.02), lambda: LinearWarmupGamma(0.7, 13)],
)
def test_state_dict_roundtrip_reproduces_sequence(make):
    g = torch.Generator().manual_seed(0)
    qs = torch.rand(40, generator=g, dtype=torch.float64).tolist()
    full = make()
    ref = [full.update(q, 3) for q in qs]
    first = make()
    for q in qs[:17]:
        first.update(q, 3)
    state = first.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    assert resumed.gamma == ref[16]
    assert [resumed.update(q, 3) for q in qs[17:]] == ref[17:]  # exact, not approximate


# ------------------------------------------------------------------------------ 2 processes


_RANK_DATA = {0: ([0.2, 0.5, 0.7], [10, 3, 0]), 1: ([0.6, 0.1, 0.9], [30, 1, 5])}


def _worker(rank: int, world: int, init_file: str, out: dict):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        est = AdaptiveGamma(lam=2.5, beta=0.7)
        qs, ns = _RANK_DATA[rank]
        out[rank] = [est.update(torch.tensor(q, dtype=torch.float64), torch.tensor(n)) for q, n in zip(qs, ns)]
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_adaptive_gamma_two_processes(tmp_path):
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), out), nprocs=2, join=True)
    # the same computation by hand on one process: token-weighted global means
    expected, m = [], 0.0
    for k in range(3):
        (q0, n0), (q1, n1) = [(_RANK_DATA[r][0][k], _RANK_DATA[r][1][k]) for r in (0, 1)]
        q = (q0 * n0 + q1 * n1) / (n0 + n1)
        m = 0.7 * m + 0.3 * q
        expected.append(1 - math.exp(-2.5 * m / (1 - 0.7 ** (k + 1))))
    assert out[0] == out[1]
    assert out[0] == pytest.approx(expected, abs=1e-12)
    # unweighted averaging would differ: the test can tell
    assert abs(expected[0] - (1 - math.exp(-2.5 * 0.4))) > 1e-3
