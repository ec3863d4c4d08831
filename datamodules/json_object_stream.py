"""Stream the members of one large top-level JSON object without loading the file.

HowTo100M ships its transcripts as a single JSON object (``{"<video_id>": {...}, ...}``) of
several gigabytes. ``iter_json_object`` reads it in chunks and yields one ``(key, value)`` pair
at a time, so memory is bounded by the largest member, not by the file. Invalid UTF-8 bytes
survive as surrogates (the caller decides what to skip); a syntax error names the file and line.
"""

from __future__ import annotations

import codecs
import json
import os
import re
from collections.abc import Iterator
from typing import Any

from datamodules.annotation_store import AnnotationFormatError

_WS = re.compile(r"[ \t\n\r]*")
CHUNK_CHARS = 1 << 20
EDGE_CHARS = 64


class _Buffer:
    """A window on the decoded file: ``text[pos:]`` is unread; older text is dropped on refill."""

    def __init__(self, path: str | os.PathLike, chunk_chars: int) -> None:
        self.path = path
        self.file = open(path, "rb")
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        self.chunk_chars = chunk_chars
        self.text = ""
        self.pos = 0
        self.dropped_lines = 0
        self.eof = False

    def refill(self) -> bool:
        """Read one more chunk; False at end of file."""
        if self.eof:
            return False
        raw = self.file.read(self.chunk_chars)
        self.eof = not raw
        self.dropped_lines += self.text.count("\n", 0, self.pos)
        self.text = self.text[self.pos :] + self.decoder.decode(raw, final=self.eof)
        self.pos = 0
        return True

    def skip_ws(self) -> str:
        """Skip whitespace and return the next character ('' at end of file)."""
        while True:
            self.pos = _WS.match(self.text, self.pos).end()
            if self.pos < len(self.text) or not self.refill():
                return self.text[self.pos : self.pos + 1]

    def line(self) -> int:
        return self.dropped_lines + self.text.count("\n", 0, self.pos) + 1

    def error(self, message: str) -> AnnotationFormatError:
        return AnnotationFormatError(f"{self.path}:{self.line()}: {message}")

    def expect(self, chars: str) -> str:
        char = self.skip_ws()
        if not char or char not in chars:
            found = repr(char) if char else "end of file"
            raise self.error(f"expected {' or '.join(repr(c) for c in chars)}, found {found}")
        self.pos += 1
        return char

    def value(self, decoder: json.JSONDecoder) -> Any:
        """Decode one JSON value, reading more while it may run past the window."""
        self.skip_ws()
        while True:
            try:
                value, end = decoder.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as e:
                # Only an error near the window's edge may be a value cut by it ("tr", "1.5e-");
                # others are real, and reading on would pull the rest of the file into memory.
                cut = e.pos >= len(self.text) - EDGE_CHARS or e.msg.startswith("Unterminated string")
                if cut and self.refill():
                    continue
                self.pos = e.pos
                raise self.error(f"not valid JSON ({e.msg})") from None
            # A number or literal that ends exactly at the window's edge may continue beyond it.
            if end == len(self.text) and self.refill():
                continue
            self.pos = end
            return value


def iter_json_object(path: str | os.PathLike, chunk_chars: int = CHUNK_CHARS) -> Iterator[tuple[str, Any]]:
    """Yield the ``(key, value)`` members of the JSON object that makes up the file at ``path``."""
    decoder = json.JSONDecoder()
    buf = _Buffer(path, chunk_chars)
    try:
        if buf.skip_ws() != "{":
            raise buf.error("expected a JSON object mapping keys to values")
        buf.pos += 1
        if buf.skip_ws() == "}":
            buf.pos += 1
        else:
            while True:
                if buf.skip_ws() != '"':
                    raise buf.error("expected a string key")
                key = buf.value(decoder)
                buf.expect(":")
                yield key, buf.value(decoder)
                if buf.expect(",}") == "}":
                    break
        if buf.skip_ws():
            raise buf.error("unexpected text after the top-level object")
    finally:
        buf.file.close()
