"""The dataset report: did refinement raise quality without losing quantity and diversity?

The paper's "impossible trinity", answered side by side for any set of annotation sources (the
raw ASR pool, refinement rounds, any JSONL record file) and, when the synthetic world's ground
truth is given, for the clean captions of the same clips::

    python -m evaluation.dataset_report --rounds DIR [DIR ...] [--ground-truth FILE] \
        [--dual-encoder CKPT] --out DIR

or from Python, ``build_report(sources, ground_truth=None, out=None, log_dir=None, ...)``.
It writes into ``out``:

- ``metrics.json`` shaped as DESIGN §8: ``{"sources": {NAME: {"quantity": {...},
  "diversity": {...}, "quality": {...}}}}``. NAME is the folder name of a round
  (``round_000``), ``raw_asr`` for an ASR pool, the file stem of a JSONL file, and
  ``ground_truth`` for the clean captions (a repeated name gets ``#2``, ``#3``...).
  - quantity: ``records``, ``clips`` (distinct clip ids), ``failures`` (the round manifest's
    count, its per-reason breakdown in ``failures_detail``; None for sources that are not
    rounds), ``skipped`` (torn final lines and over-long lines the reader skipped),
    ``mean_caption_length`` (tokens), ``caption_length_hist`` (``{tokens: records}``),
    ``manifest_records`` (what the manifest claims, for rounds).
  - diversity: ``vocabulary``, ``distinct_1``, ``distinct_2``, ``entropy`` (bits), ``tokens``,
    ``self_bleu_4`` on ``self_bleu_sample`` captions, ``category_balance``.
  - quality: ``attr_accuracy`` {shape, color, motion, scene, mean} (None without ground
    truth), per-attribute detail in ``attributes``, ``judged``, ``missing_ground_truth``; and
    ``similarity`` {mean, std, min, max, count, failed, histogram} when a similarity function
    is given (``--dual-encoder``): ``count`` records scored, ``failed`` records whose clip could
    not be decoded (not in the statistics), the histogram over [-1, 1].
- ``report.md``: the table, the protocol, per-source detail, the plots, and a few example
  clips (a strip of frames and every source's caption side by side).
- ``metrics_per_source.png``, ``caption_length_hist.png`` (and ``similarity_hist.png``), the
  frame strips under ``examples/``; the same numbers and images in TensorBoard with ``log_dir``.

Protocol (see ``text_stats`` and ``caption_quality`` for the exact definitions):

- Samples: a record's sampling key is the 64-bit BLAKE2b hash of ``"<seed>\\0<clip_id>"``; each
  source keeps the ``bleu_sample`` records with the smallest keys (a bottom-k sample:
  independent of file order, and the *same clips* in every source that covers them, so
  self-BLEU compares rounds on paired clips). Self-BLEU-4 is computed on that sample. The
  example clips are the smallest-key clips, preferring clips that every source covers.
- Category balance: the category of a record is its ``category`` field when it has one, else
  the scene of its clip in the ground truth. Balance = entropy of the category counts divided
  by log2 K, K the number of categories seen over all sources of the report (1.0 = uniform).
  None when K < 2. For rounds of the same pool it describes the clips covered, not the words.
- Ground-truth source: the clean captions of every clip that at least one other source covers
  (records whose clip the ground truth lacks are counted per source in
  ``missing_ground_truth``).

Memory: every source is streamed once, record by record; what is kept grows with the
vocabulary, the distinct n-grams and the clip ids (one set per source while it is read, one
set over all sources when ground truth is given), never with caption text: the fixed-size
samples are the only captions held. The ground truth is held as ``{clip_id: attribute
values}``.

Quality from a dual encoder plugs in through ``similarity_fn(records) -> list[float | None]``:
it is called on batches of records (each with ``video_file``, the resolved video path, added)
and must return one similarity per record, None for a record it could not score (its clip
does not decode), which is counted. ``--dual-encoder CKPT`` plugs in the cosine similarity of a
trained dual encoder (``evaluation.video_text_similarity``, imported only then: the report
itself needs no torch).
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import logging
import math
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from datamodules.annotation_sources import open_source
from datamodules.annotation_store import (
    MANIFEST_NAME,
    AnnotationFormatError,
    RoundReader,
    atomic_write_json,
    atomic_write_text,
)
from datamodules.asr_pool import ASR_FILE, AsrPoolReader
from datamodules.tar_members import video_exists
from datamodules.webdataset_pool import WebDatasetPoolReader, is_webdataset_pool
from evaluation.caption_quality import MEAN_ATTRIBUTES, AttributeAccuracy, ClipTruth, GroundTruthFile
from evaluation.text_stats import TextStats, entropy_bits, self_bleu

log = logging.getLogger(__name__)

SimilarityFn = Callable[[list[dict]], Sequence[float | None]]

RAW_ASR_NAME = "raw_asr"
GROUND_TRUTH_NAME = "ground_truth"
SIMILARITY_BINS = 40  # over [-1, 1]; values outside are counted in the edge bins


@dataclass
class ReportSource:
    """One annotation source of the report: a name and a re-iterable (or one-shot) record stream."""

    name: str
    records: Iterable[dict]
    kind: str = "records"
    path: Path | None = None
    video_root: Path | None = None
    manifest: dict | None = None


def open_report_source(spec: str | os.PathLike | tuple[str, Any] | ReportSource) -> ReportSource:
    """A path (round folder, ASR pool folder or ``asr.json``, ``.jsonl`` file), a ``(name,
    path or iterable of records)`` pair, or a ready :class:`ReportSource`.

    A folder that is neither a pool nor a finished round fails here with the manifest it lacks.
    """
    if isinstance(spec, ReportSource):
        return spec
    if isinstance(spec, tuple):
        name, inner = spec
        if isinstance(inner, (str, os.PathLike)):
            source = open_report_source(inner)
            source.name = name
            return source
        return ReportSource(name=name, records=inner, video_root=getattr(inner, "video_root", None))
    path = Path(spec)
    if path.is_dir() and not (path / MANIFEST_NAME).is_file() and not (path / ASR_FILE).is_file() \
            and not is_webdataset_pool(path):
        RoundReader(path)  # raises FileNotFoundError naming the missing manifest
    reader = open_source(path)
    if isinstance(reader, RoundReader):
        return ReportSource(path.name, reader, "round", path, reader.video_root, reader.manifest)
    if isinstance(reader, (AsrPoolReader, WebDatasetPoolReader)):
        return ReportSource(RAW_ASR_NAME, reader, "asr_pool", path, reader.video_root)
    return ReportSource(path.stem, reader, "jsonl", path, reader.video_root)


def sample_key(clip_id: str, seed: int) -> int:
    """The record's sampling key: a 64-bit hash of seed and clip id (order-independent)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}\0{clip_id}".encode(), digest_size=8).digest(), "big")


class _BottomK:
    """The ``k`` items with the smallest keys seen so far (a max-heap of size ``k``)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self._heap: list[tuple[int, int, Any]] = []
        self._seq = 0

    def offer(self, key: int, make_item: Callable[[], Any]) -> None:
        if self.k <= 0:
            return
        self._seq += 1
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, (-key, -self._seq, make_item()))
        elif key < -self._heap[0][0]:
            heapq.heapreplace(self._heap, (-key, -self._seq, make_item()))

    def sorted(self) -> list[tuple[int, Any]]:
        return [(-k, item) for k, _, item in sorted(self._heap, key=lambda e: (-e[0], -e[1]))]


@dataclass
class _Sampled:
    clip_id: str
    caption: str
    tokens: list[str]
    asr: str
    video_file: str
    start: float
    end: float


class _SimilarityStats:
    """Streaming mean / std / min / max / fixed-bin histogram of similarities; None is a failure."""

    def __init__(self) -> None:
        self.count = 0
        self.failed = 0
        self.total = 0.0
        self.total_sq = 0.0
        self.low = math.inf
        self.high = -math.inf
        self.counts = [0] * SIMILARITY_BINS

    def add(self, value: float | None) -> None:
        if value is None:
            self.failed += 1
            return
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"similarity_fn returned a non-finite similarity {value!r}")
        self.count += 1
        self.total += value
        self.total_sq += value * value
        self.low = min(self.low, value)
        self.high = max(self.high, value)
        b = int((value + 1.0) / 2.0 * SIMILARITY_BINS)
        self.counts[min(max(b, 0), SIMILARITY_BINS - 1)] += 1

    @staticmethod
    def edges() -> list[float]:
        return [-1.0 + 2.0 * i / SIMILARITY_BINS for i in range(SIMILARITY_BINS + 1)]

    def result(self) -> dict[str, Any]:
        if not self.count:
            return {"count": 0, "failed": self.failed, "mean": None, "std": None, "min": None, "max": None,
                    "histogram": {"edges": self.edges(), "counts": self.counts}}
        mean = self.total / self.count
        return {
            "count": self.count,
            "failed": self.failed,
            "mean": mean,
            "std": math.sqrt(max(0.0, self.total_sq / self.count - mean * mean)),
            "min": self.low,
            "max": self.high,
            "histogram": {"edges": self.edges(), "counts": self.counts},
        }


@dataclass
class _SourceResult:
    source: ReportSource
    metrics: dict[str, Any]
    categories: Counter
    uncategorized: int
    sample: list[tuple[int, _Sampled]] = field(default_factory=list)
    length_hist: dict[int, int] = field(default_factory=dict)


def _resolve_video(record: dict, video_root: str | None) -> str:
    """The record's video file: ``video_path`` resolved against the source's video root."""
    video_path = record.get("video_path") or ""
    if not video_path or video_root is None or os.path.isabs(video_path):
        return video_path
    return os.path.join(video_root, video_path)  # os.path, not pathlib: this runs per record


def _manifest_failures(manifest: dict | None) -> tuple[int | None, dict | None]:
    if manifest is None:
        return None, None
    failures = manifest.get("failures")
    if failures is None or isinstance(failures, bool):
        return None, None  # the producer did not say
    if isinstance(failures, (int, float)):
        return int(failures), None
    if isinstance(failures, dict):
        numbers = {k: v for k, v in failures.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return int(sum(numbers.values())), numbers
    return None, None


def _stream_source(
    source: ReportSource,
    truth: dict[str, ClipTruth] | None,
    covered: dict[str, tuple[str, float, float]] | None,
    sample_size: int,
    bleu_sample: int,
    seed: int,
    similarity_fn: SimilarityFn | None,
    similarity_batch: int,
    progress: bool,
    total: int | None = None,
) -> _SourceResult:
    """One pass over a source; keeps only counts, sets of ids/n-grams and a bounded sample."""
    text = TextStats((1, 2))
    quality = AttributeAccuracy() if truth is not None else None
    clips: set[str] = set()
    categories: Counter = Counter()
    uncategorized = 0
    sample = _BottomK(sample_size)
    similarity = _SimilarityStats() if similarity_fn is not None else None
    batch: list[dict] = []

    def flush() -> None:
        values = list(similarity_fn(batch))  # type: ignore[misc]
        if len(values) != len(batch):
            raise ValueError(f"similarity_fn returned {len(values)} values for {len(batch)} records")
        for v in values:
            similarity.add(v)  # type: ignore[union-attr]
        batch.clear()
        if similarity.failed:  # type: ignore[union-attr]
            bar.set_postfix(undecodable=similarity.failed, refresh=False)

    if total is None and source.manifest is not None and isinstance(source.manifest.get("records"), int):
        total = source.manifest["records"]
    bar = tqdm(total=total, desc=f"report {source.name}", unit="rec", disable=not progress,
               mininterval=0.5, leave=False)
    records = 0
    video_root = None if source.video_root is None else str(source.video_root)
    try:
        for record in source.records:
            records += 1
            clip_id, caption = record.get("clip_id"), record.get("caption")
            if not isinstance(clip_id, str) or not isinstance(caption, str):
                # file readers check every field with file and line; this guards in-memory sources
                raise ValueError(f"{source.name}: record {records} needs string fields 'clip_id' and 'caption'")
            tokens = text.update(caption)
            clips.add(clip_id)
            clip_truth = truth.get(clip_id) if truth is not None else None
            if quality is not None:
                quality.update(caption, clip_truth)
            category = record.get("category")
            if not isinstance(category, str):
                category = next(iter(clip_truth.scene)) if clip_truth is not None else None
            if category is None:
                uncategorized += 1
            else:
                categories[category] += 1
            video_file = record.get("video_file") or _resolve_video(record, video_root)
            if covered is not None and (clip_id not in covered or (video_file and not covered[clip_id][0])):
                covered[clip_id] = (video_file, record.get("start", 0.0), record.get("end", 0.0))
            sample.offer(sample_key(clip_id, seed), lambda: _Sampled(
                clip_id, caption, tokens, record.get("asr", ""), video_file,
                float(record.get("start", 0.0)), float(record.get("end", 0.0))))
            if similarity is not None:
                batch.append({**record, "video_file": video_file})
                if len(batch) >= similarity_batch:
                    flush()
            bar.update(1)
        if similarity is not None and batch:
            flush()
    finally:
        bar.close()

    stats = text.result()
    sampled = sample.sorted()
    failures, failures_detail = _manifest_failures(source.manifest)
    quantity: dict[str, Any] = {
        "records": records,
        "clips": len(clips),
        "failures": failures,
        "skipped": int(getattr(source.records, "skipped", 0)),
        "mean_caption_length": stats["mean_length"],
        "caption_length_hist": {str(k): v for k, v in sorted(text.length_counts.items())},
    }
    if failures_detail is not None:
        quantity["failures_detail"] = failures_detail
    if source.manifest is not None:
        quantity["manifest_records"] = source.manifest.get("records")
    bleu_tokens = [item.tokens for _, item in sampled[:bleu_sample]]
    diversity = {
        "vocabulary": stats["vocabulary"],
        "distinct_1": stats["distinct_1"],
        "distinct_2": stats["distinct_2"],
        "entropy": stats["entropy"],
        "tokens": stats["tokens"],
        "self_bleu_4": self_bleu(bleu_tokens, max_n=4),
        "self_bleu_sample": len(bleu_tokens),
    }
    if quality is not None:
        quality_metrics = quality.result()
        if quality.missing:
            log.warning("%s: %d record(s) whose clip is not in the ground truth (counted, not judged)",
                        source.name, quality.missing)
    else:
        quality_metrics = {
            "attr_accuracy": {a: None for a in (*MEAN_ATTRIBUTES, "mean")},
            "judged": 0,
            "missing_ground_truth": None,
        }
    if similarity is not None:
        quality_metrics["similarity"] = similarity.result()
        if similarity.failed:
            log.warning("%s: %d record(s) whose clip could not be decoded have no similarity (counted in "
                        "quality.similarity.failed)", source.name, similarity.failed)
    metrics = {"quantity": quantity, "diversity": diversity, "quality": quality_metrics}
    return _SourceResult(source, metrics, categories, uncategorized, sampled, dict(text.length_counts))


class _GroundTruthRecords:
    """The clean captions of the covered clips, with the video file of the source that had them."""

    def __init__(self, truth_file: GroundTruthFile, covered: dict[str, tuple[str, float, float]]) -> None:
        self.truth_file = truth_file
        self.covered = covered

    @property
    def skipped(self) -> int:
        return self.truth_file.skipped

    def __iter__(self):
        for record in self.truth_file.records(clip_ids=self.covered):
            record["video_file"] = self.covered[record["clip_id"]][0]
            yield record


def _unique_names(sources: list[ReportSource]) -> None:
    seen: Counter = Counter()
    for s in sources:
        seen[s.name] += 1
        if seen[s.name] > 1:
            s.name = f"{s.name}#{seen[s.name]}"


def _category_balance(results: list[_SourceResult]) -> None:
    known = set().union(*(r.categories for r in results)) if results else set()
    k = len(known)
    for r in results:
        h = entropy_bits(r.categories.values())
        balance = h / math.log2(k) if (k >= 2 and h is not None) else None
        r.metrics["diversity"]["category_balance"] = {
            "normalized_entropy": balance,
            "categories": k,
            "counts": dict(sorted(r.categories.items())),
            "uncategorized": r.uncategorized,
        }


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


TABLE_COLUMNS = ("source", "records", "shape", "color", "motion", "scene", "mean", "distinct-2", "vocab")


def _table_rows(metrics: dict, with_similarity: bool) -> list[list[str]]:
    rows = []
    for name, m in metrics["sources"].items():
        acc = m["quality"]["attr_accuracy"]
        rows.append([
            name,
            _fmt(m["quantity"]["records"]),
            *(_fmt(acc.get(a)) for a in ("shape", "color", "motion", "scene", "mean")),
            _fmt(m["diversity"]["distinct_2"]),
            _fmt(m["diversity"]["vocabulary"]),
        ])
        if with_similarity:
            rows[-1].append(_fmt((m["quality"].get("similarity") or {}).get("mean")))
    return rows


def format_table(metrics: dict, markdown: bool = False) -> str:
    """The per-source table: records, attribute accuracies (shape/color/motion/scene/mean),
    distinct-2, vocabulary and, when measured, the mean video-text similarity. Plain aligned
    text (for stdout) or a Markdown table."""
    with_similarity = any("similarity" in m["quality"] for m in metrics["sources"].values())
    columns = TABLE_COLUMNS + (("similarity",) if with_similarity else ())
    rows = _table_rows(metrics, with_similarity)
    if markdown:
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(["---"] + ["---:"] * (len(columns) - 1)) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(columns, widths)))]
    lines += ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))) for r in rows]
    return "\n".join(lines)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:120] or "clip"


def _frame_strip(video_file: str, start: float, end: float, num_frames: int, out_png: Path) -> str | None:
    """Write a horizontal strip of ``num_frames`` frames; returns None or why there is none."""
    if not video_file:
        return "no video path"
    if not video_exists(video_file):
        return f"video file not found: {video_file}"
    try:
        import numpy as np
        from PIL import Image

        from datamodules.video_reader import read_clip

        frames = read_clip(video_file, start, end, num_frames, mode="uniform")
        array = frames.permute(0, 2, 3, 1).numpy()  # [T, H, W, C]
        strip = np.concatenate(list(array), axis=1)
        if strip.shape[0] < 96:  # tiny synthetic frames: enlarge for reading
            factor = -(-96 // strip.shape[0])
            strip = strip.repeat(factor, axis=0).repeat(factor, axis=1)
        out_png.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_png.with_name(f".{out_png.name}.tmp.png")
        Image.fromarray(strip).save(tmp)
        os.replace(tmp, out_png)
        return None
    except Exception as e:  # a clip that fails to decode costs its strip, not the report
        return f"could not decode: {e}"


def _pick_examples(results: list[_SourceResult], sample_size: int, num_examples: int) -> list[dict]:
    """The smallest-key clips over all sources, preferring clips that every source covers."""
    if num_examples <= 0:
        return []
    by_clip: dict[str, dict] = {}
    for r in results:
        for key, item in r.sample:
            entry = by_clip.setdefault(item.clip_id, {"key": key, "clip_id": item.clip_id, "captions": {},
                                                      "asr": "", "video_file": "", "start": item.start,
                                                      "end": item.end})
            entry["captions"].setdefault(r.source.name, item.caption)
            if not entry["asr"] and item.asr:
                entry["asr"] = item.asr
            if not entry["video_file"] and item.video_file:
                entry["video_file"], entry["start"], entry["end"] = item.video_file, item.start, item.end
    # Only the sample_size smallest keys over the union are guaranteed to be in the sample of
    # every source that covers them; choose among those.
    candidates = sorted(by_clip.values(), key=lambda e: e["key"])[:sample_size]
    candidates.sort(key=lambda e: (-len(e["captions"]), e["key"]))
    return candidates[:num_examples]


def _report_markdown(
    metrics: dict, results: list[_SourceResult], examples: list[dict], plots: list[str],
    ground_truth: Path | None, seed: int, bleu_sample: int, elapsed: float, similarity_label: str = "dual encoder",
) -> str:
    sources = metrics["sources"]
    out = ["# Dataset report", ""]
    out.append("Quantity, diversity and quality of each annotation source, side by side. "
               "Accuracies, distinct-n and category balance are fractions in [0, 1]; entropy is in bits.")
    out.append("")
    out.append(format_table(metrics, markdown=True))
    out += ["", "## Sources", "", "| source | kind | path |", "|---|---|---|"]
    for r in results:
        out.append(f"| {r.source.name} | {r.source.kind} | {r.source.path if r.source.path else '(in memory)'} |")
    if ground_truth is not None:
        out.append("")
        out.append(f"Ground truth: `{ground_truth}`; `{GROUND_TRUTH_NAME}` holds its clean captions of the "
                   "clips the other sources cover.")
    out += ["", "## Quantity", "",
            "| source | records | clips | failures | skipped | mean caption length (tokens) |",
            "|---|---:|---:|---:|---:|---:|"]
    for name, m in sources.items():
        q = m["quantity"]
        out.append(f"| {name} | {q['records']} | {q['clips']} | {_fmt(q['failures'])} | {q['skipped']} | "
                   f"{_fmt(q['mean_caption_length'], 2)} |")
    out += ["", "## Diversity", "",
            "| source | vocabulary | distinct-1 | distinct-2 | entropy (bits) | self-BLEU-4 (sample) "
            "| category balance |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for name, m in sources.items():
        d = m["diversity"]
        balance = d.get("category_balance", {}).get("normalized_entropy")
        out.append(f"| {name} | {d['vocabulary']} | {_fmt(d['distinct_1'])} | {_fmt(d['distinct_2'])} | "
                   f"{_fmt(d['entropy'])} | {_fmt(d['self_bleu_4'])} ({d['self_bleu_sample']}) | {_fmt(balance)} |")
    if ground_truth is not None:
        out += ["", "## Quality against ground truth", "",
                "accuracy / precision / coverage per attribute (see protocol).", "",
                "| source | judged | missing ground truth | shape | color | motion | scene | size |",
                "|---|---:|---:|---|---|---|---|---|"]
        for name, m in sources.items():
            ql = m["quality"]
            cells = []
            for a in ("shape", "color", "motion", "scene", "size"):
                s = ql.get("attributes", {}).get(a, {})
                cells.append(f"{_fmt(s.get('accuracy'))} / {_fmt(s.get('precision'))} / {_fmt(s.get('coverage'))}")
            out.append(f"| {name} | {ql['judged']} | {_fmt(ql['missing_ground_truth'])} | " + " | ".join(cells) + " |")
    if any("similarity" in m["quality"] for m in sources.values()):
        out += ["", "## Video-text similarity", "",
                f"Cosine similarity of each caption and its clip under the {similarity_label}; records whose "
                "clip could not be decoded are counted, not scored.", "",
                "| source | scored | failed to decode | mean | std | min | max |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        for name, m in sources.items():
            s = m["quality"].get("similarity")
            if s:
                out.append(f"| {name} | {s['count']} | {s['failed']} | {_fmt(s['mean'])} | {_fmt(s['std'])} | "
                           f"{_fmt(s['min'])} | {_fmt(s['max'])} |")
    if plots:
        out += ["", "## Plots", ""]
        out += [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    if examples:
        out += ["", "## Example clips", ""]
        for e in examples:
            out += [f"### {e['clip_id']} ({e['start']:.2f}-{e['end']:.2f} s)", ""]
            if e.get("strip"):
                out += [f"![frames of {e['clip_id']}]({e['strip']})", ""]
            else:
                out += [f"(no frame strip: {e.get('strip_error', 'unknown reason')})", ""]
            out += ["| source | caption |", "|---|---|"]
            if e["asr"]:
                out.append(f"| ASR transcript | {_md_cell(e['asr'])} |")
            for name in sources:
                caption = e["captions"].get(name)
                cell = _md_cell(caption) if caption is not None else "— (clip not in this source)"
                out.append(f"| {name} | {cell} |")
            out.append("")
    out += ["", "## Protocol", "",
            "- Tokens: lower-case, split on runs of characters that are not letters or digits.",
            "- distinct-n: distinct n-grams / all n-grams over the whole source (n-grams within a caption).",
            "- Entropy: Shannon entropy of the unigram distribution, log base 2 (bits).",
            f"- Self-BLEU-4: bottom-{bleu_sample} sample by BLAKE2b(seed={seed}, clip id), the same clips in "
            "every source; each sampled caption scored by sentence BLEU-4 against all other sampled captions "
            "(clipped counts, closest reference length, NLTK method1 smoothing, epsilon 0.1), averaged.",
            "- Attribute accuracy: a caption is correct for an attribute when it names at least one value "
            "and only values the clip shows (any of its objects); naming an absent value is wrong, naming "
            "none is silent and counts against accuracy. precision = correct / (correct + wrong), "
            "coverage = (correct + wrong) / judged; mean over shape, color, motion, scene.",
            "- Category balance: entropy of the category counts / log2(number of categories over all sources); "
            "category = the record's `category` field, else its clip's ground-truth scene.",
            "", f"Built in {elapsed:.1f} s.", ""]
    return "\n".join(out)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def build_report(
    sources: Sequence[str | os.PathLike | tuple[str, Any] | ReportSource] | str | os.PathLike,
    ground_truth: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    log_dir: str | os.PathLike | None = None,
    *,
    similarity_fn: SimilarityFn | None = None,
    similarity_batch: int = 256,
    num_examples: int = 3,
    strip_frames: int = 6,
    bleu_sample: int = 500,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Compute the report over ``sources`` and, when ``out`` is given, write it there.

    Args:
        sources: round folders, ASR pool folders (or ``asr.json``), ``.jsonl`` record files,
            ``(name, path or iterable of records)`` pairs or :class:`ReportSource` objects, in
            the order the table shows them.
        ground_truth: the synthetic world's ``ground_truth.jsonl``; adds the attribute
            accuracies and the ``ground_truth`` source.
        out: output folder for ``metrics.json``, ``report.md``, PNGs and frame strips; None
            computes and returns the metrics only (nothing written but TensorBoard's scalars).
        log_dir: also log scalars, the table and the plots to TensorBoard there.
        similarity_fn: ``records -> similarities`` (e.g. a dual encoder's cosine,
            ``video_text_similarity.similarity_from_checkpoint``); called on batches of
            ``similarity_batch`` records carrying ``video_file``; None for a record is a counted
            failure. An optional ``description`` attribute names it in ``report.md``.
        num_examples: example clips in ``report.md``; strip_frames: frames per strip.
        bleu_sample: captions per source in the self-BLEU-4 sample; seed: its sampling seed.
        progress: show a tqdm progress bar per source.

    Returns:
        The metrics, as written to ``metrics.json``.
    """
    started = time.perf_counter()
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    opened = [open_report_source(s) for s in sources]  # every input checked before any work
    if not opened:
        raise ValueError("no annotation source given")
    _unique_names(opened)
    if any(s.name == GROUND_TRUTH_NAME for s in opened) and ground_truth is not None:
        raise ValueError(f"a source is named {GROUND_TRUTH_NAME!r}, which the ground-truth source uses")
    truth_file = GroundTruthFile(ground_truth) if ground_truth is not None else None
    truth = truth_file.load() if truth_file is not None else None
    covered: dict[str, tuple[str, float, float]] | None = {} if truth is not None else None
    sample_size = max(bleu_sample, num_examples, 0)

    results = []
    for source in opened:
        results.append(_stream_source(source, truth, covered, sample_size, bleu_sample, seed,
                                      similarity_fn, similarity_batch, progress))
    if truth_file is not None:
        assert covered is not None
        gt_records = _GroundTruthRecords(truth_file, covered)
        gt_source = ReportSource(GROUND_TRUTH_NAME, gt_records, "ground_truth", truth_file.path)
        results.append(_stream_source(gt_source, truth, None, sample_size, bleu_sample, seed,
                                      similarity_fn, similarity_batch, progress, total=len(covered)))
    _category_balance(results)
    metrics = {"sources": {r.source.name: r.metrics for r in results}}
    if out is None:
        if log_dir is not None:
            from evaluation import report_plots

            report_plots.log_to_tensorboard(metrics, log_dir, (), format_table(metrics, markdown=True))
        return metrics

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    examples = _pick_examples(results, sample_size, num_examples)
    for e in examples:
        png = out / "examples" / f"{_safe_name(e['clip_id'])}.png"
        error = _frame_strip(e["video_file"], e["start"], e["end"], strip_frames, png)
        if error is None:
            e["strip"] = f"examples/{png.name}"
        else:
            e["strip_error"] = error
            log.warning("%s: no frame strip (%s)", e["clip_id"], error)

    from evaluation import report_plots

    plots = [str(report_plots.plot_metrics_per_source(metrics, out / "metrics_per_source.png")),
             str(report_plots.plot_length_histograms({r.source.name: r.length_hist for r in results},
                                                     out / "caption_length_hist.png"))]
    if similarity_fn is not None:
        hists = {}
        for name, m in metrics["sources"].items():
            h = m["quality"]["similarity"]["histogram"]
            hists[name] = (h["edges"], h["counts"])
        plots.append(str(report_plots.plot_similarity_histograms(hists, out / "similarity_hist.png")))

    atomic_write_json(out / "metrics.json", metrics)
    elapsed = time.perf_counter() - started
    report = _report_markdown(metrics, results, examples, plots, Path(ground_truth) if ground_truth else None,
                              seed, bleu_sample, elapsed, getattr(similarity_fn, "description", "dual encoder"))
    atomic_write_text(out / "report.md", report)
    if log_dir is not None:
        report_plots.log_to_tensorboard(metrics, log_dir, plots, format_table(metrics, markdown=True))
    return metrics


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation.dataset_report",
        description="Dataset report: quantity, diversity and quality of annotation sources side by side "
                    "(writes metrics.json, report.md and PNG plots; prints the per-source table).",
    )
    parser.add_argument("--rounds", nargs="+", required=True, metavar="DIR",
                        help="annotation sources, in table order: round folders (with manifest.json), an ASR "
                             "pool folder or its asr.json (named raw_asr), or .jsonl record files")
    parser.add_argument("--ground-truth", metavar="FILE",
                        help="the synthetic world's ground_truth.jsonl: adds per-attribute caption accuracy "
                             "and a 'ground_truth' source of the clean captions of the same clips")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder for metrics.json, report.md, PNG plots and example frame strips")
    parser.add_argument("--log-dir", metavar="DIR", help="also write the metrics and plots to TensorBoard here")
    parser.add_argument("--dual-encoder", metavar="CKPT",
                        help="a dual-encoder checkpoint (train.py fit with configs/retrieval/): adds the video-text "
                             "cosine similarity of every caption (mean, histogram, undecodable clips counted)")
    parser.add_argument("--examples", type=int, default=3, metavar="N",
                        help="example clips shown in report.md with every source's caption (default 3)")
    parser.add_argument("--strip-frames", type=int, default=6, metavar="N",
                        help="frames in each example's strip (default 6)")
    parser.add_argument("--bleu-sample", type=int, default=500, metavar="N",
                        help="captions per source in the seeded self-BLEU-4 sample (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the self-BLEU and example sample (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        similarity_fn = None
        if args.dual_encoder is not None:
            from evaluation.video_text_similarity import similarity_from_checkpoint  # torch only when asked

            similarity_fn = similarity_from_checkpoint(args.dual_encoder)
        metrics = build_report(
            args.rounds, ground_truth=args.ground_truth, out=args.out, log_dir=args.log_dir,
            similarity_fn=similarity_fn, num_examples=args.examples, strip_frames=args.strip_frames,
            bleu_sample=args.bleu_sample, seed=args.seed, progress=not args.no_progress,
        )
    except (FileNotFoundError, AnnotationFormatError, ValueError) as e:
        print(f"dataset_report: error: {e}", file=sys.stderr)
        return 2
    print(format_table(metrics))
    if similarity_fn is not None:
        print(f"video-text similarity: {similarity_fn.decoded} clips decoded, {similarity_fn.reused} records reused "
              f"a cached clip embedding, {similarity_fn.failed} undecodable")
    print(f"report written to {Path(args.out) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
