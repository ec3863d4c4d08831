"""QA metrics (evaluation.qa): normalisation, question types, scoring, baselines, outputs, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation.qa import (
    answer_vocabulary,
    format_type_table,
    main,
    normalize_answer,
    question_type,
    read_predictions,
    score_predictions,
    write_qa_outputs,
)

ROOT = Path(__file__).resolve().parents[1]

ROWS = [
    {"id": 1, "question": "What color is the ball?", "answer": "red", "prediction": "The Red."},
    {"id": 2, "question": "what shape is it?", "answer": "circle", "prediction": "square"},
    {"id": 3, "question": "How many objects are there?", "answer": "two", "prediction": "two"},
    {"id": 4, "question": "where is this?", "answer": "the beach", "prediction": "beach"},
    {"id": 5, "question": "which way does it move?", "answer": "left", "prediction": "right"},
    {"id": 6, "question": "who is there?", "answer": "nobody", "excluded": "no_mapping"},
    {"id": 7, "question": "when is it?", "answer": "night", "excluded": "missing_file"},
]
TRAIN_QA = [("how many objects?", "one"), ("how many things?", "one"), ("what color is it?", "red"),
            ("where is this?", "city"), ("what color is the star?", "blue"), ("what color?", "blue"),
            ("how many?", "two"), ("in which direction?", "left")]


@pytest.mark.parametrize("raw, normal", [
    ("The Red.", "red"), ("  a  Blue   Ball ", "blue ball"), ("an apple!", "apple"), ("theater", "theater"),
    ("Rock-and-roll", "rockandroll"), ("¿Qué?", "qué"), ("THE", ""), ("two", "two"),
])
def test_answers_are_normalised_as_design_says(raw, normal):
    assert normalize_answer(raw) == normal


@pytest.mark.parametrize("question, qtype", [
    ("What color is the ball?", "what"), ("what's the shape", "what"), ("Who is dancing?", "who"),
    ("how many objects are there?", "how"), ("  Where is this?", "where"), ("When does it grow?", "when"),
    ("which way does the star move?", "other"), ("in which direction does it go?", "other"),
    ("whatever happens?", "other"), ("", "other"),
])
def test_question_type_is_the_first_word(question, qtype):
    assert question_type(question) == qtype


def test_vocabulary_is_the_top_k_normalised_answers_ties_alphabetical():
    answers = ["The Cat", "cat", "dog", "bird", "bird", "ant", "cat."]
    assert answer_vocabulary(answers, 3) == ["cat", "bird", "ant"]
    assert answer_vocabulary(answers, 100) == ["cat", "bird", "ant", "dog"]
    with pytest.raises(ValueError, match="top_k"):
        answer_vocabulary(answers, 0)


def test_scoring_counts_per_type_excludes_with_a_note_and_counts_oov():
    result = score_predictions(ROWS, vocabulary=["red", "two", "beach", "square", "right"], train_qa=TRAIN_QA)
    m = result.metrics
    # correct: 1 (normalised), 3, 4 (article dropped); wrong: 2, 5; excluded: 6, 7
    assert (m["num_correct"], m["denominator"], m["num_questions"], m["num_excluded"]) == (3, 5, 7, 2)
    assert m["accuracy"] == pytest.approx(3 / 5) and m["accuracy_excluded_as_wrong"] == pytest.approx(3 / 7)
    assert m["excluded_by_reason"] == {"missing_file": 1, "no_mapping": 1} and m["excluded_ids"] == [6, 7]
    assert "5 of 7 test questions" in m["denominator_note"] and "2 excluded from the denominator" in m["denominator_note"]
    assert m["num_oov_answers"] == 2  # circle and left are not in the vocabulary (excluded rows do not count)
    per = m["per_type"]
    assert (per["what"]["count"], per["what"]["correct"]) == (2, 1)
    assert per["how"]["accuracy"] == 1.0 and per["where"]["accuracy"] == 1.0 and per["other"]["accuracy"] == 0.0
    assert per["who"] == {"count": 0, "correct": 0, "accuracy": None, "majority_accuracy": None}
    # majority: "blue" and "one" tie at 2 training answers; ties go alphabetically
    assert m["baseline"]["majority_answer"] == "blue" and m["baseline"]["majority_accuracy"] == 0.0
    # type prior: what → blue (2 of 3), how → one, where → city, other → left (question 5 is right)
    assert m["baseline"]["type_majority_answers"] == {"how": "one", "other": "left", "what": "blue", "where": "city"}
    assert m["baseline"]["type_majority_accuracy"] == pytest.approx(1 / 5)
    records = {r["id"]: r for r in result.records}
    assert records[1]["correct"] is True and records[6]["correct"] is None and records[6]["prediction"] is None
    assert records[2]["in_vocab"] is False and records[5]["type"] == "other"


def test_generative_scoring_has_no_vocabulary_and_all_evaluated_means_a_plain_note():
    rows = [r for r in ROWS if "prediction" in r]
    m = score_predictions(rows).metrics
    assert "num_oov_answers" not in m and "baseline" not in m
    assert m["denominator_note"] == "accuracy over all 5 test questions" and m["num_excluded"] == 0
    table = format_type_table(m)
    assert "| what | 2 | 1 | 50.0% |" in table and "| all | 5 | 3 | 60.0% |" in table


def test_a_row_without_its_keys_is_an_error_naming_it():
    with pytest.raises(ValueError, match="prediction row 1: missing key.*answer"):
        score_predictions([ROWS[0], {"id": 9, "question": "what?", "prediction": "x"}])
    with pytest.raises(ValueError, match="prediction row 0: missing key.*prediction"):
        score_predictions([{"id": 9, "question": "what?", "answer": "x"}])


def test_outputs_are_written_atomically_and_read_back(tmp_path):
    result = score_predictions(ROWS, vocabulary=["red"], train_qa=TRAIN_QA)
    paths = write_qa_outputs(tmp_path / "out", result, extra={"mode": "classic"}, vocabulary=["red"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "answer_vocabulary.json", "metrics.json", "predictions.jsonl"]  # no temporary file left behind
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["mode"] == "classic" and metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["predictions_file"] == "predictions.jsonl"
    rows = read_predictions(paths["predictions"])
    assert [r["id"] for r in rows] == [r["id"] for r in ROWS] and rows[5]["excluded"] == "no_mapping"
    again = score_predictions(rows, vocabulary=["red"], train_qa=TRAIN_QA).metrics
    assert again == result.metrics  # the saved predictions rescore to the same numbers

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        read_predictions(bad)


def test_command_line_rescoring(tmp_path, capsys):
    paths = write_qa_outputs(tmp_path, score_predictions(ROWS), vocabulary=["red", "two"])
    train = tmp_path / "train_qa.json"
    train.write_text(json.dumps([{"question": q, "answer": a, "id": i, "video_id": 1} for i, (q, a) in enumerate(TRAIN_QA)]))
    main([str(paths["predictions"]), "--train-qa", str(train), "--vocabulary", str(paths["vocabulary"])])
    out = capsys.readouterr().out
    printed = json.loads(out[: out.index("| type")])
    assert printed["accuracy"] == pytest.approx(3 / 5) and printed["num_oov_answers"] == 3
    assert printed["baseline"]["majority_answer"] == "blue" and "| how | 1 | 1 | 100.0% |" in out


def test_metrics_import_without_the_training_stack():
    code = "import sys, evaluation.qa; print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
