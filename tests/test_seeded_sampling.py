"""Per-clip seeded sampling: the Gumbel-max draw follows the softmax, keeps to the nucleus, and a
clip's caption does not depend on what it is batched with."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.components.presets import build_video_llm
from lightning_modules.components.seeded_sampling import SeededSampling, _mix64, clip_seed

TEXTS = ["a red ball moves left", "a blue star grows", "a green ring goes up", "hello everyone welcome back"]


def draws(scores: torch.Tensor, n: int, **kwargs) -> torch.Tensor:
    """The arg-max of ``n`` seeded draws from one row of scores, one seed each."""
    sampler = SeededSampling(list(range(n)), **kwargs)
    return sampler(torch.zeros(n, 3, dtype=torch.long), scores.expand(n, -1)).argmax(dim=-1)


def test_draws_follow_the_softmax():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    counts = torch.bincount(draws(scores, 4000), minlength=4).float() / 4000
    assert torch.allclose(counts, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.03), counts


def test_temperature_sharpens():
    scores = torch.log(torch.tensor([[0.6, 0.4]]))
    cold = (draws(scores, 2000, temperature=0.25) == 0).float().mean()
    assert cold > 0.8  # 0.6^4 / (0.6^4 + 0.4^4) = 0.835


def test_top_p_keeps_to_the_nucleus_and_ruled_out_tokens_stay_out():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    picked = set(draws(scores, 2000, top_p=0.7).tolist())
    assert picked == {0, 1}  # 0.5 < 0.7, then 0.5 + 0.3 reaches it
    scores = scores.clone()
    scores[0, 0] = float("-inf")  # e.g. an n-gram that may not repeat
    assert 0 not in set(draws(scores, 500).tolist())


def test_a_nucleus_wider_than_the_sorted_candidates_is_still_exact():
    # 1,000 equally likely tokens: the nucleus of 0.9 holds 900, beyond the top tokens sorted first
    scores = torch.zeros(1, 1000)
    kept = torch.isfinite(SeededSampling([1], top_p=0.9)(torch.zeros(1, 3, dtype=torch.long), scores))
    assert int(kept.sum()) == 900
    peaked = torch.full((1, 1000), -30.0)
    peaked[0, :3] = torch.log(torch.tensor([0.6, 0.3, 0.1]))
    kept = torch.isfinite(SeededSampling([1], top_p=0.8)(torch.zeros(1, 3, dtype=torch.long), peaked))
    assert kept.nonzero()[:, 1].tolist() == [0, 1]


def test_same_seed_same_draw_other_seed_other_draws():
    scores = torch.zeros(1, 50)
    ids = torch.zeros(1, 4, dtype=torch.long)
    one = SeededSampling([7])(ids, scores).argmax()
    assert SeededSampling([7])(ids, scores).argmax() == one
    others = {int(SeededSampling([s])(ids, scores).argmax()) for s in range(40)}
    assert len(others) > 10
    assert clip_seed("pool_00001_002", 0) == clip_seed("pool_00001_002", 0) != clip_seed("pool_00001_003", 0)


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="temperature"):
        SeededSampling([0], temperature=0)
    with pytest.raises(ValueError, match="top_p"):
        SeededSampling([0], top_p=0)
    with pytest.raises(ValueError, match="seeds"):
        SeededSampling([0, 1])(torch.zeros(3, 1, dtype=torch.long), torch.zeros(3, 5))


def test_a_clips_caption_does_not_depend_on_its_batch():
    torch.manual_seed(0)
    model = build_video_llm("tiny", tokenizer_texts=TEXTS)  # untrained: near-uniform, so draws vary
    videos = torch.randn(4, 8, 3, 32, 32)
    asrs = ["hello", "welcome back", "so", "a red ball"]
    seeds = [clip_seed(f"clip_{i}", 0) for i in range(4)]
    together = model.generate(videos, asrs, max_new_tokens=8, sample_seeds=seeds)
    alone = [model.generate(videos[i : i + 1], asrs[i : i + 1], max_new_tokens=8, sample_seeds=seeds[i : i + 1])[0]
             for i in (3, 1, 0, 2)]
    assert [alone[2], alone[1], alone[3], alone[0]] == together
    greedy = model.generate(videos, asrs, max_new_tokens=8)
    assert together != greedy  # sampling from an untrained model does not reproduce the mode
    with pytest.raises(ValueError, match="num_beams"):
        model.generate(videos, asrs, num_beams=2, sample_seeds=seeds)


def test_a_row_without_a_seed_stays_greedy():
    scores = torch.log(torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])).repeat(50, 1)
    seeds = [None if i % 2 else i for i in range(100)]
    picked = SeededSampling(seeds, temperature=1.5, top_p=0.9)(torch.zeros(100, 3, dtype=torch.long), scores).argmax(-1)
    assert picked[1::2].tolist() == scores[1::2].argmax(-1).tolist()  # greedy rows: their top token
    assert len(set(picked[0::2].tolist())) > 1  # seeded rows still sample


def splitmix64_finaliser(x: int) -> int:
    """Reference in Python integers (unbounded, masked to 64 bits by hand)."""
    mask = (1 << 64) - 1
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
    return x ^ (x >> 31)


def test_the_noise_hash_is_splitmix64_on_int64_bit_patterns():
    # torch's int64 products must wrap and its shifts must act as logical shifts, or the noise
    # would differ from the generator it claims to be (and between devices)
    values = [0, 1, 2**63 - 1, 2**63, 2**64 - 1, 0x9E3779B97F4A7C15, 123456789123456789]
    patterns = torch.tensor([v - 2**64 if v >= 2**63 else v for v in values])
    assert [v % 2**64 for v in _mix64(patterns).tolist()] == [splitmix64_finaliser(v) for v in values]


def test_a_rows_draw_does_not_depend_on_the_nucleus_of_other_rows():
    # a flat row sends itself down the whole-vocabulary path; the peaked row beside it must draw
    # exactly what it draws alone (its noise is a function of seed, step and token id only)
    peaked = torch.full((1, 1000), -30.0)
    peaked[0, :20] = torch.log_softmax(torch.linspace(2, 0, 20), dim=0)
    flat = torch.zeros(1, 1000)
    ids = torch.zeros(2, 5, dtype=torch.long)
    for seed in range(30):
        alone = SeededSampling([seed], top_p=0.9)(ids[:1], peaked)
        beside = SeededSampling([seed, seed + 1], top_p=0.9)(ids, torch.cat([peaked, flat]))
        assert torch.equal(beside[0], alone[0])
        assert int(torch.isfinite(beside[1]).sum()) == 900  # the flat row's nucleus, sorted in full
    assert len({int(SeededSampling([s], top_p=0.9)(ids[:1], peaked).argmax()) for s in range(30)}) > 5
