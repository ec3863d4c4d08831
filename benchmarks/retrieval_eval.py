"""How long does retrieval evaluation of 1,000 test pairs take? (MSR-VTT 1k-A size)

Times, on random correlated embeddings (``--dim``), the whole of ``evaluation.retrieval``'s
work: the faiss cosine similarity, both rank directions, the metrics, DSL and writing
``similarity.npy``/``ranks.csv``/``metrics.json``. The baseline, run in the same process, is the
brute force the tests trust (one stable sort per query); the line printed is the ratio.
With ``--model``, it also times embedding 1,000 already-decoded clips and captions with the
tiny dual encoder (decoding is the DataModule's cost and is benchmarked in ``decode.py``).

    python benchmarks/retrieval_eval.py [--pairs 1000] [--dim 256] [--model]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.retrieval import evaluate_retrieval, write_retrieval_outputs  # noqa: E402


def brute_force_ranks(sim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query: sort by similarity (descending), the true candidate last among ties."""
    def one_way(matrix: np.ndarray) -> np.ndarray:
        out = np.empty(len(matrix), dtype=np.int64)
        for i, row in enumerate(matrix):
            order = np.lexsort((np.arange(len(row)) == i, -row))
            out[i] = int(np.flatnonzero(order == i)[0]) + 1
        return out

    return one_way(sim), one_way(sim.T)


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", action="store_true", help="also time the tiny dual encoder on 1,000 clips")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    video = rng.normal(size=(args.pairs, args.dim)).astype(np.float32)
    text = video + 6.0 * rng.normal(size=(args.pairs, args.dim)).astype(np.float32)  # R@1 well below 100
    ids = [f"video{i}" for i in range(args.pairs)]
    sentences = [f"caption {i}" for i in range(args.pairs)]

    evaluate_s, result = timed(lambda: evaluate_retrieval(text, video, dsl=True), args.repeats)
    plain_s, _ = timed(lambda: evaluate_retrieval(text, video, dsl=False), args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        write_s, _ = timed(lambda: write_retrieval_outputs(tmp, result, ids, sentences), args.repeats)
    baseline_s, (t2v, v2t) = timed(lambda: brute_force_ranks(result.sim), 1)
    assert np.array_equal(t2v, result.t2v_ranks) and np.array_equal(v2t, result.v2t_ranks)

    total = evaluate_s + write_s
    print(f"retrieval evaluation of {args.pairs} pairs (dim {args.dim}), median of {args.repeats}:")
    print(f"  similarity (faiss) + ranks + metrics:       {plain_s:8.3f} s")
    print(f"  ... + DSL metrics:                          {evaluate_s:8.3f} s")
    print(f"  writing similarity.npy, ranks.csv, metrics: {write_s:8.3f} s")
    print(f"  total:                                      {total:8.3f} s")
    print(f"  baseline, brute-force argsort ranks only:   {baseline_s:8.3f} s")
    print(f"  ratio total / baseline:                     {total / baseline_s:8.3f}x")
    print(f"  t2v R@1 of these random embeddings: {result.metrics['t2v/R@1']:.1f} (chance {100 / args.pairs:.1f})")

    if args.model:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch

        from lightning_modules.components.tokenizer import train_tokenizer
        from lightning_modules.dual_encoder import DualEncoder

        model = DualEncoder(text_model="tiny", num_frames=8, image_size=32)
        model.configure_model()
        model.eval()
        model.net.text.set_tokenizer(train_tokenizer(["a red circle moves left on the beach"], vocab_size=4096))
        clips = torch.randn(100, 8, 3, 32, 32)
        captions = ["a big red circle moves left on the beach"] * 100

        def embed_all():
            with torch.no_grad():
                for _ in range(args.pairs // 100):
                    model._embed(clips, captions)

        model_s, _ = timed(embed_all, 1)
        print(f"  tiny dual encoder, embedding {args.pairs} decoded clips + captions: {model_s:.2f} s")


if __name__ == "__main__":
    main()
