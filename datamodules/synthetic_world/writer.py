"""Writing files deterministically, and publishing a world only once it is complete.

JSON is written with sorted keys and a fixed layout so that the same seed gives byte-identical
annotation files. A world is generated in a hidden sibling folder ``.<name>.partial-XXXX`` and
renamed to its final name only after everything, ``world.json`` last, has been written: a
folder named ``--out`` that holds ``world.json`` is always a finished world. A crash leaves at
most a ``.partial-`` folder behind, which may be deleted.
"""

import csv
import json
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

WORLD_FILE = "world.json"
POOL_FORMATS = ("folder", "webdataset")  # pool/asr.json + pool/videos/, or video2dataset tar shards


def write_json(path: Path, obj, indent: int | None = None) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(obj, f, sort_keys=True, indent=indent, ensure_ascii=False)
        f.write("\n")


def write_jsonl(path: Path, rows) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")


def write_csv(path: Path, header: list[str], rows) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_lines(path: Path, lines) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse to replace a finished world or any non-empty folder unless ``overwrite``."""
    if not out.exists() or overwrite:
        if out.exists() and not out.is_dir():
            raise FileExistsError(f"{out} exists and is not a folder")
        return
    if (out / WORLD_FILE).exists():
        raise FileExistsError(
            f"{out} already holds a finished synthetic world ({WORLD_FILE}); "
            "pass --overwrite (overwrite=True) to replace it")
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if any(out.iterdir()):
        raise FileExistsError(
            f"{out} exists and is not empty; choose another --out or pass --overwrite")


@contextmanager
def staged_output(out: Path, overwrite: bool):
    """Yield a hidden sibling folder; on success it replaces ``out``, on failure it is removed."""
    out = Path(out)
    check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the world is an ordinary folder
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.rename(old / "world")
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
