"""Retrieval metrics (DESIGN §7, §8) against an independent brute force, ties counted against the query."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from evaluation.retrieval import (
    cosine_similarity,
    dsl_metrics,
    dsl_similarities,
    evaluate_retrieval,
    main,
    query_ranks,
    retrieval_metrics,
    write_retrieval_outputs,
)

KEYS = {f"{d}/{m}" for d in ("t2v", "v2t") for m in ("R@1", "R@5", "R@10", "MdR", "MnR")}


def brute_force_ranks(sim: np.ndarray) -> np.ndarray:
    """Rank of the true candidate of every row from a plain sort: by similarity, descending,
    and among equal similarities the true candidate last (a tie counts against the query)."""
    ranks = []
    for i, row in enumerate(sim):
        is_true = np.arange(len(row)) == i
        order = np.lexsort((is_true, -row))  # last key is primary: -similarity, then is_true
        ranks.append(int(np.where(order == i)[0][0]) + 1)
    return np.array(ranks)


def brute_force_metrics(sim: np.ndarray) -> dict[str, float]:
    out = {}
    for direction, matrix in (("t2v", sim), ("v2t", sim.T)):
        ranks = brute_force_ranks(matrix)
        for k in (1, 5, 10):
            out[f"{direction}/R@{k}"] = 100.0 * sum(r <= k for r in ranks) / len(ranks)
        srt = sorted(ranks)
        mid = len(srt) // 2
        out[f"{direction}/MdR"] = float(srt[mid]) if len(srt) % 2 else (srt[mid - 1] + srt[mid]) / 2
        out[f"{direction}/MnR"] = sum(ranks) / len(ranks)
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-9), k


@pytest.mark.parametrize("n", [1, 2, 7, 12, 50, 201])
def test_random_matrices_match_brute_force(n):
    rng = np.random.default_rng(n)
    sim = rng.normal(size=(n, n)).astype(np.float32)
    sim[np.arange(n), np.arange(n)] += rng.uniform(0, 2, size=n).astype(np.float32)  # not all hopeless
    metrics = retrieval_metrics(sim)
    assert set(metrics) == KEYS
    assert_same(metrics, brute_force_metrics(sim))


@pytest.mark.parametrize("levels", [1, 2, 3, 5])
def test_tied_matrices_match_brute_force(levels):
    rng = np.random.default_rng(levels)
    for n in (6, 11, 40):
        sim = rng.integers(0, levels, size=(n, n)).astype(np.float64)  # many exact ties
        assert_same(retrieval_metrics(sim), brute_force_metrics(sim))


def test_a_model_that_scores_everything_alike_gets_no_credit():
    n = 20
    metrics = retrieval_metrics(np.full((n, n), 0.3))
    for d in ("t2v", "v2t"):
        assert metrics[f"{d}/R@1"] == metrics[f"{d}/R@5"] == metrics[f"{d}/R@10"] == 0.0
        assert metrics[f"{d}/MdR"] == metrics[f"{d}/MnR"] == n


def test_hand_computed_example_with_ties_and_even_median():
    # t2v ranks: row 0: 1 (clear), row 1: 0.5 ties with 0.5 -> 2, row 2: two others >= -> 3, row 3: 1
    sim = np.array([
        [0.9, 0.1, 0.2, 0.3],
        [0.5, 0.5, 0.1, 0.0],
        [0.4, 0.3, 0.3, 0.0],
        [0.0, 0.0, 0.0, 0.1],
    ])
    t2v, v2t = query_ranks(sim)
    assert t2v.tolist() == [1, 2, 3, 1]
    # v2t (columns): col 0: 0.9 best -> 1; col 1: 0.5 vs 0.1,0.3,0.0 -> 1; col 2: 0.3 vs 0.2,0.1,0.0 -> 1;
    # col 3: 0.1 vs 0.3 (row 0) -> 2
    assert v2t.tolist() == [1, 1, 1, 2]
    m = retrieval_metrics(sim)
    assert m["t2v/R@1"] == 50.0 and m["t2v/R@5"] == 100.0
    assert m["t2v/MdR"] == 1.5  # numpy median of [1, 1, 2, 3]: mean of the two middle ranks
    assert m["t2v/MnR"] == 1.75
    assert m["v2t/R@1"] == 75.0 and m["v2t/MdR"] == 1.0 and m["v2t/MnR"] == 1.25


def test_bad_matrices_are_refused():
    with pytest.raises(ValueError, match="square"):
        retrieval_metrics(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="empty"):
        retrieval_metrics(np.zeros((0, 0)))
    bad = np.eye(3)
    bad[0, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(bad)


def test_faiss_cosine_similarity_is_cosine_and_keeps_ties_exact():
    rng = np.random.default_rng(0)
    text = rng.normal(size=(30, 16)).astype(np.float32)
    video = rng.normal(size=(30, 16)).astype(np.float32) * 5.0
    expected = (text / np.linalg.norm(text, axis=1, keepdims=True)) @ (
        video / np.linalg.norm(video, axis=1, keepdims=True)).T
    np.testing.assert_allclose(cosine_similarity(text, video), expected, atol=1e-5)

    # 1,000 videos that are copies of 5 distinct embeddings: copies must score exactly alike
    # (a BLAS GEMM does not promise that), or the tie rule would depend on the position.
    base = rng.normal(size=(5, 256)).astype(np.float32)
    which = rng.integers(0, 5, size=1000)
    sim = cosine_similarity(rng.normal(size=(1000, 256)).astype(np.float32), base[which])
    for k in range(5):
        block = sim[:, which == k]
        assert (block == block[:, :1]).all()
    const = cosine_similarity(rng.normal(size=(1000, 256)).astype(np.float32), np.tile(base[:1], (1000, 1)))
    assert retrieval_metrics(const)["t2v/R@1"] == 0.0 and retrieval_metrics(const)["t2v/MdR"] == 1000


def test_dsl_is_separately_named_and_matches_its_definition():
    rng = np.random.default_rng(3)
    sim = rng.normal(size=(25, 25))
    plain = retrieval_metrics(sim)
    dsl = dsl_metrics(sim, temperature=0.05)
    assert set(dsl) == {f"dsl/{k}" for k in KEYS}
    for_t2v, for_v2t = dsl_similarities(sim, temperature=0.05)
    e0 = np.exp(sim / 0.05 - (sim / 0.05).max(axis=0, keepdims=True))
    np.testing.assert_allclose(for_t2v, sim * e0 / e0.sum(axis=0, keepdims=True))
    assert dsl["dsl/t2v/R@1"] == brute_force_metrics(for_t2v)["t2v/R@1"]
    assert dsl["dsl/v2t/MnR"] == pytest.approx(brute_force_metrics(for_v2t)["v2t/MnR"])
    assert retrieval_metrics(sim) == plain  # no side effect on the plain numbers


def test_evaluate_and_write_outputs(tmp_path, capsys):
    rng = np.random.default_rng(1)
    video = rng.normal(size=(12, 8)).astype(np.float32)
    text = video + 0.8 * rng.normal(size=(12, 8)).astype(np.float32)
    result = evaluate_retrieval(text, video)
    assert result.metrics["num_queries"] == 12 and result.metrics["chance/R@1"] == pytest.approx(100 / 12)
    assert_same({k: result.metrics[k] for k in KEYS}, brute_force_metrics(result.sim))
    ids = [f"video{i}" for i in range(12)]
    sentences = [f"caption, with a comma {i}" for i in range(12)]
    paths = write_retrieval_outputs(tmp_path, result, ids, sentences, extra={"num_missing_videos": 0})
    np.testing.assert_array_equal(np.load(paths["similarity"]), result.sim)
    rows = list(csv.DictReader(open(paths["ranks"], encoding="utf-8")))
    assert [r["video_id"] for r in rows] == ids and rows[3]["sentence"] == sentences[3]
    assert [int(r["t2v_rank"]) for r in rows] == result.t2v_ranks.tolist()
    assert [int(r["v2t_rank"]) for r in rows] == result.v2t_ranks.tolist()
    saved = json.loads(paths["metrics"].read_text())
    assert saved["t2v/R@1"] == result.metrics["t2v/R@1"] and saved["num_missing_videos"] == 0

    main([str(paths["similarity"]), "--dsl"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["t2v/MnR"] == pytest.approx(result.metrics["t2v/MnR"]) and "dsl/v2t/R@1" in printed


def test_importable_without_the_training_stack():
    import subprocess
    import sys

    code = (
        "import sys, evaluation.retrieval as r, numpy as np; r.retrieval_metrics(np.eye(3)); "
        "bad = [m for m in ('torch', 'lightning', 'transformers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
