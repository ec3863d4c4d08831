"""Round-0 caption quality against the synthetic world's ground truth, next to the raw ASR.

For each attribute (shape, colour, size, motion, scene) and each source (the raw ASR pool and one
or more round folders), over the same clips, two accuracies:

- ``named``: the caption names the ground-truth value of the clip's first object (the scene for
  ``scene``), whatever else it names (the simple definition of the round-0 issue);
- ``strict``: the caption names at least one value and every value it names belongs to the clip
  (any of its objects), the definition of the dataset report (``evaluation/``), so naming every
  colour never scores.

Words map to values with ``lexicon.attributes_mentioned`` (a misheard "read" is not red). The
ground truth is read here, for measurement only; nothing in the refiner sees it. Clips that were
human refinement examples are reported separately as well (the merge LLM may have been tuned on
them), and the rounds' manifests give their timing.

    python benchmarks/round0_quality.py --world data/demo_world --rounds runs/demo/annotations/round_000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.annotation_sources import open_source  # noqa: E402
from datamodules.annotation_store import RoundReader  # noqa: E402
from datamodules.synthetic_world.lexicon import attributes_mentioned  # noqa: E402

ATTRIBUTES = ("shape", "color", "size", "motion", "scene")
MEAN_OF = ("shape", "color", "motion", "scene")


def load_truth(path: Path) -> dict[str, dict]:
    truth = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                obj = json.loads(line)
                truth[obj["clip_id"]] = obj
    return truth


def judge(caption: str, truth: dict) -> dict[str, tuple[bool, bool]]:
    """``{attribute: (named, strict)}`` for one caption."""
    said = attributes_mentioned(caption)
    first = truth["objects"][0]
    result = {}
    for a in ATTRIBUTES:
        if a == "scene":
            target, allowed = truth["scene"], {truth["scene"]}
        else:
            target, allowed = first[a], {o[a] for o in truth["objects"]}
        result[a] = (target in said[a], bool(said[a]) and said[a] <= allowed)
    return result


def accuracy(captions: dict[str, str], truth: dict[str, dict], clips: list[str]) -> dict[str, dict[str, float]]:
    sums = {a: [0, 0] for a in ATTRIBUTES}
    for clip in clips:
        for a, (named, strict) in judge(captions[clip], truth[clip]).items():
            sums[a][0] += named
            sums[a][1] += strict
    n = max(len(clips), 1)
    out = {kind: {a: sums[a][k] / n for a in ATTRIBUTES} for k, kind in enumerate(("named", "strict"))}
    for kind in out:
        out[kind]["mean"] = sum(out[kind][a] for a in MEAN_OF) / len(MEAN_OF)
    return out


def table(results: dict[str, dict], kind: str, baseline: str) -> str:
    cols = [*ATTRIBUTES, "mean"]
    lines = [f"| {kind} accuracy | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, res in results.items():
        cells = [f"{res[kind][c]:.3f}" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if name != baseline:
            delta = [f"{res[kind][c] - results[baseline][kind][c]:+.3f}" for c in cols]
            lines.append(f"| {name} − {baseline} | " + " | ".join(delta) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", type=Path, required=True, help="synthetic world folder (pool/, ground_truth.jsonl)")
    p.add_argument("--rounds", type=Path, nargs="+", required=True, help="round folders to judge")
    p.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = p.parse_args(argv)

    truth = load_truth(args.world / "ground_truth.jsonl")
    sources = {"raw_asr": {r["clip_id"]: r["asr"] for r in open_source(args.world / "pool")}}
    manifests = {}
    for folder in args.rounds:
        reader = RoundReader(folder)
        sources[folder.name] = {r["clip_id"]: r["caption"] for r in reader}
        manifests[folder.name] = reader.manifest
    human_path = args.world / "pool" / "human_refined.jsonl"
    human = {r["clip_id"] for r in open_source(human_path)} if human_path.is_file() else set()
    clips = sorted(set.intersection(*(set(s) for s in sources.values())) & set(truth))
    subsets = {"all clips": clips, "without human examples": [c for c in clips if c not in human]}

    report: dict = {"clips": len(clips), "human_examples_in_pool": len(human & set(clips)), "subsets": {}}
    for subset, ids in subsets.items():
        results = {name: accuracy(caps, truth, ids) for name, caps in sources.items()}
        report["subsets"][subset] = results
        print(f"\n## {subset} ({len(ids)} clips)\n")
        for kind in ("named", "strict"):
            print(table(results, kind, "raw_asr"))
            print()
    for name, m in manifests.items():
        print(f"{name}: {m.get('records')} records, {m.get('failures')} failures, "
              f"{m.get('throughput_clips_per_s')} clips/s, wall {m.get('timing', {}).get('wall_s')} s")
    report["manifests"] = {n: {k: m.get(k) for k in ("records", "failures", "throughput_clips_per_s", "timing", "model")}
                           for n, m in manifests.items()}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
