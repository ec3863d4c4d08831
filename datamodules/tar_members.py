"""Videos inside tar shards: the ``<shard>.tar/<member>`` path convention, and reading a member.

A ``video_path`` that runs through a ``.tar`` file, such as ``00003.tar/000030002_00001.mp4``,
names the member ``000030002_00001.mp4`` of the shard ``00003.tar`` (a relative path resolves
against the source's video root, as a plain file's does). Such a member is one sample of a
video2dataset pool: when video2dataset cut it from a longer video, the record's ``start``/``end``
are the clip's span in that video and the member's own time 0 is ``start`` (``read_clip`` applies
this). Records written by any round keep the path, so every reader decodes them later.

Members are read by seeking into the shard; nothing is extracted to disk, so a hostile member
name cannot write anywhere (DESIGN §10). Finding a member scans the shard's 512-byte headers once
per process (the data is skipped); the tables of the last few shards are cached, which suits the
order records come in (shard by shard).
"""

from __future__ import annotations

import functools
import os
import tarfile

TAR_DIR = ".tar/"
#: A member larger than this is refused: decoding loads the member into memory.
MAX_MEMBER_BYTES = 1 << 30


def split_member_path(path: str | os.PathLike) -> tuple[str, str] | None:
    """``(shard, member)`` when ``path`` runs through an existing ``.tar`` file, else None."""
    text = os.fspath(path)
    at = text.find(TAR_DIR)
    while at >= 0:
        shard = text[: at + len(TAR_DIR) - 1]
        if os.path.isfile(shard):
            return shard, text[at + len(TAR_DIR):]
        at = text.find(TAR_DIR, at + 1)
    return None


def video_exists(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file, or a member present in its tar shard."""
    if os.path.isfile(path):
        return True
    member = split_member_path(path)
    return member is not None and member[1] in _member_table(member[0])


def read_member(shard: str, member: str, max_bytes: int = MAX_MEMBER_BYTES) -> bytes:
    """The bytes of ``member`` of ``shard``; raises naming both when it is absent, too big or cut short."""
    table = _member_table(shard)
    if member not in table:
        raise FileNotFoundError(f"no member {member!r} in {shard} (or the shard is truncated before it)")
    offset, size = table[member]
    if size > max_bytes:
        raise ValueError(f"member {member!r} of {shard} has {size} bytes, over the {max_bytes}-byte cap")
    with open(shard, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise EOFError(f"member {member!r} of {shard} is cut short: {len(data)} of {size} bytes")
    return data


def _member_table(shard: str) -> dict[str, tuple[int, int]]:
    stat = os.stat(shard)
    return _scan(shard, stat.st_mtime_ns, stat.st_size)  # a rewritten shard gets a new table


@functools.lru_cache(maxsize=8)
def _scan(shard: str, mtime_ns: int, size: int) -> dict[str, tuple[int, int]]:
    """``{member: (data offset, size)}`` of the regular files of a shard, up to any damage."""
    table: dict[str, tuple[int, int]] = {}
    try:
        with tarfile.open(shard, "r:") as tar:
            while (info := tar.next()) is not None:
                tar.members = []  # tarfile keeps every header otherwise; the table is enough
                if info.isfile():
                    table[info.name] = (info.offset_data, info.size)
    except (tarfile.TarError, EOFError, OSError):
        pass  # members before the damage stay readable; a later one is reported as absent
    return table
