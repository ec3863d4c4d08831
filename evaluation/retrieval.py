"""Text-video retrieval metrics (DESIGN §7, §8): pure numpy + faiss, no training stack.

The protocol is MSR-VTT 1k-A: ``n`` test pairs (one caption per video), a similarity matrix
``sim[i, j]`` between text ``i`` and video ``j`` whose true pairs lie on the diagonal.

- Rank of a query (1-based), ties counted *against* the query: the rank of the true match is
  ``1 + #{other candidates whose similarity is >= the true one}``. A model that scores every
  candidate alike therefore ranks every query last (``n``), never first.
- text→video (``t2v``) ranks the videos of each row; video→text (``v2t``) ranks the texts of
  each column.
- ``R@K``: percent of queries whose rank is ``<= K``; ``MdR``: ``numpy.median`` of the ranks (the
  mean of the two middle ranks when their count is even); ``MnR``: mean rank.
- Cosine similarity comes from a faiss inner-product index over L2-normalised embeddings.
- DSL (dual softmax, an inference trick that uses the other test queries as a prior) is only
  ever reported under its own keys (``dsl/t2v/R@1`` …), never folded into the plain numbers.

``retrieval_metrics(sim)`` is the interface other parts rely on; ``evaluate_retrieval`` adds the
faiss similarity, DSL and the per-query ranks; ``write_retrieval_outputs`` saves the
similarity matrix (``similarity.npy``), the per-query ranks (``ranks.csv``) and ``metrics.json``.

Command line, on a saved similarity matrix::

    python -m evaluation.retrieval runs/.../similarity.npy [--dsl]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "RECALL_KS",
    "query_ranks",
    "metrics_from_ranks",
    "retrieval_metrics",
    "cosine_similarity",
    "dsl_similarities",
    "dsl_metrics",
    "RetrievalResult",
    "evaluate_retrieval",
    "write_retrieval_outputs",
]

RECALL_KS = (1, 5, 10)
SIMILARITY_FILE = "similarity.npy"
RANKS_FILE = "ranks.csv"
METRICS_FILE = "metrics.json"


def _check_square(sim: np.ndarray) -> np.ndarray:
    sim = np.asarray(sim)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"sim must be a square [texts, videos] matrix with true pairs on the diagonal, got {sim.shape}")
    if sim.shape[0] == 0:
        raise ValueError("sim is empty: no query to evaluate")
    if not np.isfinite(sim).all():
        raise ValueError("sim holds NaN or infinite similarities")
    return sim


def query_ranks(sim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks of the true match of every text query (``t2v``) and video query (``v2t``).

    ``rank = 1 + #{other candidates with similarity >= the true one}``: ties count against the
    query. The diagonal element itself always satisfies ``>=``, so the count includes it.
    """
    sim = _check_square(sim)
    diag = np.diagonal(sim)
    t2v = (sim >= diag[:, None]).sum(axis=1)
    v2t = (sim >= diag[None, :]).sum(axis=0)
    return t2v.astype(np.int64), v2t.astype(np.int64)


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """``R@K`` (percent), ``MdR`` (numpy median) and ``MnR`` of 1-based ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no ranks: no query to evaluate")
    out = {f"R@{k}": float(100.0 * np.mean(ranks <= k)) for k in ks}
    out["MdR"] = float(np.median(ranks))
    out["MnR"] = float(np.mean(ranks))
    return out


def retrieval_metrics(sim: np.ndarray) -> dict[str, float]:
    """``t2v/R@1, t2v/R@5, t2v/R@10, t2v/MdR, t2v/MnR`` and the same under ``v2t/``.

    ``sim[i, j]``: similarity of text ``i`` and video ``j``; the true pairs on the diagonal.
    """
    t2v, v2t = query_ranks(sim)
    out = {f"t2v/{k}": v for k, v in metrics_from_ranks(t2v).items()}
    out.update({f"v2t/{k}": v for k, v in metrics_from_ranks(v2t).items()})
    return out


# ------------------------------------------------------------------------------- similarity

def cosine_similarity(text_emb: np.ndarray, video_emb: np.ndarray) -> np.ndarray:
    """``[texts, videos]`` cosine similarities through a faiss inner-product index.

    Both inputs are copied to float32 and L2-normalised (zero vectors stay zero); the index
    returns every video for every text, which is scattered back into a dense matrix.
    """
    import faiss  # imported here: the rest of the module works without it

    text = np.ascontiguousarray(np.asarray(text_emb, dtype=np.float32)).copy()
    video = np.ascontiguousarray(np.asarray(video_emb, dtype=np.float32)).copy()
    if text.ndim != 2 or video.ndim != 2 or text.shape[1] != video.shape[1]:
        raise ValueError(f"embeddings must be [n, d] with one d, got {text.shape} and {video.shape}")
    if not (np.isfinite(text).all() and np.isfinite(video).all()):
        raise ValueError("embeddings hold NaN or infinite values")
    faiss.normalize_L2(text)
    faiss.normalize_L2(video)
    index = faiss.IndexFlatIP(video.shape[1])
    index.add(video)
    with _exact_pairwise(faiss):
        scores, ids = index.search(text, video.shape[0])
    sim = np.empty((text.shape[0], video.shape[0]), dtype=np.float32)
    np.put_along_axis(sim, ids, scores, axis=1)
    return sim


@contextlib.contextmanager
def _exact_pairwise(faiss):
    """Make faiss compute every inner product on its own (SIMD) instead of through BLAS GEMM.

    A GEMM may sum an output element in another order depending on where it falls in the
    tiling, so two identical videos can get similarities a bit apart; the tie rule needs
    identical embeddings to score identically. The per-pair path is as fast at 1k × 1k.
    """
    old = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = 2**30
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = old


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def dsl_similarities(sim: np.ndarray, temperature: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Dual-softmax re-scored similarities ``(for t2v, for v2t)``.

    For text→video each similarity is multiplied by a softmax over the *texts* of its video
    column (the prior that a video matches one text); for video→text, by a softmax over the
    videos of its text row. ``temperature`` divides the similarities inside the softmax.
    """
    sim = _check_square(sim).astype(np.float64)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    scaled = sim / temperature
    return sim * _softmax(scaled, axis=0), sim * _softmax(scaled, axis=1)


def dsl_metrics(sim: np.ndarray, temperature: float = 0.01) -> dict[str, float]:
    """The metrics of ``retrieval_metrics`` after DSL re-scoring, keyed ``dsl/t2v/…``, ``dsl/v2t/…``."""
    for_t2v, for_v2t = dsl_similarities(sim, temperature)
    t2v, _ = query_ranks(for_t2v)
    _, v2t = query_ranks(for_v2t)
    out = {f"dsl/t2v/{k}": v for k, v in metrics_from_ranks(t2v).items()}
    out.update({f"dsl/v2t/{k}": v for k, v in metrics_from_ranks(v2t).items()})
    return out


# ------------------------------------------------------------------------------- the whole evaluation

@dataclass
class RetrievalResult:
    """Everything one evaluation produces."""

    sim: np.ndarray
    """``[n, n]`` float32 cosine similarities, texts × videos, true pairs on the diagonal."""
    t2v_ranks: np.ndarray
    """``[n]`` 1-based rank of the true video of each text."""
    v2t_ranks: np.ndarray
    """``[n]`` 1-based rank of the true text of each video."""
    metrics: dict[str, float] = field(default_factory=dict)
    """``t2v/…``, ``v2t/…``, optional ``dsl/…``, plus ``num_queries`` and ``chance/R@1``."""


def evaluate_retrieval(
    text_emb: np.ndarray, video_emb: np.ndarray, dsl: bool = True, dsl_temperature: float = 0.01
) -> RetrievalResult:
    """Cosine similarities (faiss), ranks and metrics of ``n`` paired text and video embeddings."""
    text_emb, video_emb = np.asarray(text_emb), np.asarray(video_emb)
    if text_emb.shape[0] != video_emb.shape[0]:
        raise ValueError(f"{text_emb.shape[0]} texts but {video_emb.shape[0]} videos: pairs must be aligned")
    sim = cosine_similarity(text_emb, video_emb)
    t2v, v2t = query_ranks(sim)
    metrics = {f"t2v/{k}": v for k, v in metrics_from_ranks(t2v).items()}
    metrics.update({f"v2t/{k}": v for k, v in metrics_from_ranks(v2t).items()})
    if dsl:
        metrics.update(dsl_metrics(sim, dsl_temperature))
    n = sim.shape[0]
    metrics["num_queries"] = float(n)
    metrics["chance/R@1"] = 100.0 / n
    return RetrievalResult(sim=sim, t2v_ranks=t2v, v2t_ranks=v2t, metrics=metrics)


def write_retrieval_outputs(
    out_dir: str | os.PathLike,
    result: RetrievalResult,
    video_ids: Sequence[str],
    sentences: Sequence[str],
    extra: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``similarity.npy``, ``ranks.csv`` and ``metrics.json`` into ``out_dir``.

    ``ranks.csv`` has one row per test pair ``i``: ``index, video_id, sentence, t2v_rank``
    (rank of video ``i`` for text ``i``) and ``v2t_rank`` (rank of text ``i`` for video ``i``);
    row ``i`` is row and column ``i`` of the similarity matrix. ``metrics.json`` holds the
    metrics and ``extra`` (counts of missing or undecodable videos, …).
    """
    n = result.sim.shape[0]
    if not len(video_ids) == len(sentences) == n:
        raise ValueError(f"{len(video_ids)} video ids and {len(sentences)} sentences for {n} pairs")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"similarity": out / SIMILARITY_FILE, "ranks": out / RANKS_FILE, "metrics": out / METRICS_FILE}
    np.save(paths["similarity"], result.sim)
    with open(paths["ranks"], "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "video_id", "sentence", "t2v_rank", "v2t_rank"])
        for i in range(n):
            writer.writerow([i, video_ids[i], sentences[i], int(result.t2v_ranks[i]), int(result.v2t_ranks[i])])
    payload = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result.metrics.items()}
    payload.update(extra or {})
    tmp = paths["metrics"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(paths["metrics"])
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation.retrieval",
        description="Retrieval metrics (R@1/5/10, MdR, MnR; ties count against the query) of a saved "
        "[texts, videos] similarity matrix whose true pairs are on the diagonal.",
    )
    parser.add_argument("similarity", help=".npy file holding the square similarity matrix")
    parser.add_argument("--dsl", action="store_true", help="also report DSL-rescored metrics (separate keys)")
    parser.add_argument("--dsl-temperature", type=float, default=0.01)
    args = parser.parse_args(argv)
    sim = np.load(args.similarity, allow_pickle=False)
    metrics = retrieval_metrics(sim)
    if args.dsl:
        metrics.update(dsl_metrics(sim, args.dsl_temperature))
    metrics["num_queries"] = float(sim.shape[0])
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
