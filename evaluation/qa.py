"""Video QA metrics (DESIGN §7): normalised exact-match accuracy, per question type, with baselines.

Pure Python: importable and runnable without the training stack.

- Normalisation (``normalize_answer``): lower-case, delete punctuation, drop the articles
  ``a``/``an``/``the``, collapse and strip white space (SQuAD's answer normalisation). A
  prediction is correct when its normal form equals the gold answer's.
- Question type (``question_type``): the question's first word when it is one of ``what``,
  ``who``, ``how``, ``where``, ``when`` (MSVD-QA's types), else ``other``.
- Excluded questions: a question whose video cannot be read (no entry in the mapping, no file,
  a decoding failure) has no prediction. It is counted by reason, listed, and left out of the
  denominator; ``metrics.json`` says so in ``denominator_note`` and also gives
  ``accuracy_excluded_as_wrong``, the accuracy had those questions been counted wrong.
- Classic mode (classification over an answer vocabulary): a gold answer outside the
  vocabulary cannot be predicted; it counts as wrong and ``num_oov_answers`` says how many.
- Baselines, from the training answers: ``majority`` always answers the most frequent training
  answer; ``type_majority`` answers the most frequent training answer of the question's type
  (a question-only prior).

Outputs (``write_qa_outputs``): ``predictions.jsonl`` (one line per question, excluded ones
included with their reason), ``answer_vocabulary.json`` (classic mode) and ``metrics.json``,
each written to a temporary file and renamed.

Command line, to rescore a predictions file::

    python -m evaluation.qa runs/.../predictions.jsonl [--train-qa train_qa.json] [--vocabulary answer_vocabulary.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datamodules.annotation_store import atomic_write_text

__all__ = [
    "QUESTION_TYPES",
    "normalize_answer",
    "question_type",
    "answer_vocabulary",
    "QAResult",
    "score_predictions",
    "format_type_table",
    "write_qa_outputs",
    "read_predictions",
]

QUESTION_TYPES = ("what", "who", "how", "where", "when", "other")
PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"
VOCABULARY_FILE = "answer_vocabulary.json"
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_FIRST_WORD = re.compile(r"[^\W\d_]+")


def normalize_answer(text: str) -> str:
    """Lower-case, delete punctuation, drop articles, collapse and strip white space."""
    text = "".join(ch for ch in str(text).lower() if not unicodedata.category(ch).startswith("P"))
    return " ".join(_ARTICLES.sub(" ", text).split())


def question_type(question: str) -> str:
    """``what``/``who``/``how``/``where``/``when`` from the question's first word, else ``other``."""
    match = _FIRST_WORD.search(str(question).lower())
    word = match.group(0) if match else ""
    return word if word in QUESTION_TYPES[:-1] else "other"


def answer_vocabulary(answers: Iterable[str], top_k: int) -> list[str]:
    """The ``top_k`` most frequent normalised answers, most frequent first (ties alphabetical)."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    counts = Counter(a for a in (normalize_answer(x) for x in answers) if a)
    return [a for a, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]]


def _most_common(answers: Iterable[str]) -> str | None:
    counts = Counter(answers)
    return min(counts, key=lambda a: (-counts[a], a)) if counts else None


@dataclass
class QAResult:
    """What one scoring produces."""

    metrics: dict[str, Any]
    """Accuracy, counts, per-type table, baselines (see ``score_predictions``)."""
    records: list[dict[str, Any]]
    """One row per question, in the order given, with ``type``, ``correct`` and the normal forms."""


def score_predictions(
    rows: Sequence[dict[str, Any]],
    vocabulary: Sequence[str] | None = None,
    train_qa: Iterable[tuple[str, str]] | None = None,
    split: str = "test",
) -> QAResult:
    """Score QA predictions.

    Args:
        rows: one dict per question with ``id``, ``question``, ``answer`` and either
            ``prediction`` (a string) or ``excluded`` (why the question has no prediction, e.g.
            ``no_mapping``, ``missing_file``, ``decode_failed``). Other keys are kept.
        vocabulary: the classifier's answer vocabulary (classic mode); gold answers outside it
            are counted in ``num_oov_answers`` (and are wrong). None for generative answering.
        train_qa: the training ``(question, answer)`` pairs, for the baselines; None leaves them out.
        split: the split's name, for the denominator note.

    Accuracies are fractions in [0, 1]; a type with no evaluated question has accuracy None.
    """
    vocab = {normalize_answer(v) for v in vocabulary} if vocabulary is not None else None
    records: list[dict[str, Any]] = []
    for k, row in enumerate(rows):
        missing = [key for key in ("id", "question", "answer") if key not in row]
        if "prediction" not in row and not row.get("excluded"):
            missing.append("prediction (or excluded)")
        if missing:
            raise ValueError(f"prediction row {k}: missing key(s) {', '.join(missing)}")
        gold = normalize_answer(row["answer"])
        record = {**row, "type": question_type(row["question"]), "answer_norm": gold}
        if row.get("excluded"):
            record.update(prediction=None, prediction_norm=None, correct=None)
        else:
            pred = normalize_answer(row["prediction"])
            record.update(prediction_norm=pred, correct=bool(gold) and pred == gold)
        if vocab is not None:
            record["in_vocab"] = gold in vocab
        records.append(record)

    evaluated = [r for r in records if not r.get("excluded")]
    reasons = Counter(r["excluded"] for r in records if r.get("excluded"))
    correct, n, total = sum(r["correct"] for r in evaluated), len(evaluated), len(records)
    metrics: dict[str, Any] = {
        "split": split,
        "accuracy": _fraction(correct, n),
        "num_correct": correct,
        "denominator": n,
        "num_questions": total,
        "num_excluded": total - n,
        "excluded_by_reason": dict(sorted(reasons.items())),
        "excluded_ids": [r["id"] for r in records if r.get("excluded")],
        "denominator_note": _denominator_note(split, n, total, reasons),
        "accuracy_excluded_as_wrong": _fraction(correct, total),
    }
    if vocab is not None:
        metrics["answer_vocabulary_size"] = len(vocab)
        metrics["num_oov_answers"] = sum(not r["in_vocab"] for r in evaluated)
        metrics["oov_note"] = "gold answers outside the answer vocabulary cannot be predicted and count as wrong"
    baselines = _baselines(list(train_qa)) if train_qa is not None else None
    metrics["per_type"] = _per_type(evaluated, baselines)
    if baselines is not None:
        majority, by_type = baselines
        metrics["baseline"] = {
            "majority_answer": majority,
            "majority_accuracy": _fraction(sum(r["answer_norm"] == majority for r in evaluated), n),
            "type_majority_answers": by_type,
            "type_majority_accuracy": _fraction(
                sum(r["answer_norm"] == by_type.get(r["type"], majority) for r in evaluated), n),
        }
    return QAResult(metrics=metrics, records=records)


def _fraction(num: int, den: int) -> float | None:
    return num / den if den else None


def _baselines(train_qa: list[tuple[str, str]]) -> tuple[str, dict[str, str]] | None:
    """The most frequent training answer overall and per question type (ties alphabetical)."""
    pairs = [(question_type(q), normalize_answer(a)) for q, a in train_qa]
    overall = _most_common(a for _, a in pairs)
    if overall is None:
        return None
    types = sorted({t for t, _ in pairs})
    return overall, {t: _most_common(a for u, a in pairs if u == t) for t in types}


def _per_type(evaluated: list[dict[str, Any]], baselines: tuple[str, dict[str, str]] | None) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for t in QUESTION_TYPES:
        rows = [r for r in evaluated if r["type"] == t]
        entry: dict[str, Any] = {"count": len(rows), "correct": sum(r["correct"] for r in rows),
                                 "accuracy": _fraction(sum(r["correct"] for r in rows), len(rows))}
        if baselines is not None:
            entry["majority_accuracy"] = _fraction(sum(r["answer_norm"] == baselines[0] for r in rows), len(rows))
        table[t] = entry
    return table


def _denominator_note(split: str, n: int, total: int, reasons: Counter) -> str:
    if n == total:
        return f"accuracy over all {total} {split} questions"
    why = ", ".join(f"{reason}: {count}" for reason, count in sorted(reasons.items()))
    return (f"accuracy over {n} of {total} {split} questions: {total - n} excluded from the denominator "
            f"because their video could not be read ({why})")


def format_type_table(metrics: dict[str, Any]) -> str:
    """The per-type table of ``score_predictions``'s metrics as Markdown (count, accuracy, majority)."""
    def pct(x: float | None) -> str:
        return "–" if x is None else f"{100 * x:.1f}%"

    with_majority = "baseline" in metrics
    head = "| type | questions | correct | accuracy |" + (" majority baseline |" if with_majority else "")
    rule = "|---|---:|---:|---:|" + ("---:|" if with_majority else "")
    lines = [head, rule]
    rows = [(t, metrics["per_type"][t]) for t in QUESTION_TYPES]
    rows.append(("all", {"count": metrics["denominator"], "correct": metrics["num_correct"],
                         "accuracy": metrics["accuracy"],
                         "majority_accuracy": metrics.get("baseline", {}).get("majority_accuracy")}))
    for name, e in rows:
        line = f"| {name} | {e['count']} | {e['correct']} | {pct(e['accuracy'])} |"
        lines.append(line + (f" {pct(e.get('majority_accuracy'))} |" if with_majority else ""))
    return "\n".join(lines)


def write_qa_outputs(
    out_dir: str | os.PathLike,
    result: QAResult,
    extra: dict[str, Any] | None = None,
    vocabulary: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Write ``predictions.jsonl``, ``metrics.json`` (``extra`` + ``result.metrics``) and, in
    classic mode, ``answer_vocabulary.json``, each atomically; ``metrics.json`` comes last."""
    out = Path(out_dir)
    paths = {"predictions": out / PREDICTIONS_FILE, "metrics": out / METRICS_FILE}
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result.records)
    atomic_write_text(paths["predictions"], lines)
    if vocabulary is not None:
        paths["vocabulary"] = out / VOCABULARY_FILE
        atomic_write_text(paths["vocabulary"], json.dumps(list(vocabulary), ensure_ascii=False) + "\n")
    payload = {**(extra or {}), **result.metrics, "predictions_file": PREDICTIONS_FILE}
    atomic_write_text(paths["metrics"], json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    return paths


def read_predictions(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a ``predictions.jsonl``; a malformed line is an error naming the file and line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object")
            rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation.qa",
        description="Rescore a QA predictions.jsonl (normalised exact match, overall and per question type).",
    )
    parser.add_argument("predictions", help="predictions.jsonl written by a QA test run")
    parser.add_argument("--train-qa", help="MSVD-QA train_qa.json, for the majority baselines")
    parser.add_argument("--vocabulary", help=f"{VOCABULARY_FILE} of a classic run, to count answers outside it")
    args = parser.parse_args(argv)
    rows = read_predictions(args.predictions)
    vocabulary = json.loads(Path(args.vocabulary).read_text(encoding="utf-8")) if args.vocabulary else None
    train_qa = None
    if args.train_qa:
        train_qa = [(r["question"], r["answer"]) for r in json.loads(Path(args.train_qa).read_text(encoding="utf-8"))]
    result = score_predictions(rows, vocabulary=vocabulary, train_qa=train_qa)
    print(json.dumps({k: v for k, v in result.metrics.items() if k != "excluded_ids"}, indent=2))
    print(format_type_table(result.metrics))


if __name__ == "__main__":
    main()
