"""Decode the frames of one clip, behind one small interface with two backends.

``read_clip(path, start, end, num_frames, mode, generator, backend)`` returns a uint8 tensor
``[T, C, H, W]`` (RGB) of ``num_frames`` frames sampled inside the segment ``[start, end]``
seconds of the file (see ``frame_sampling`` for the sampling rule and the repetition of frames
when a segment holds fewer distinct frames than asked for). Clip times count from the first
frame of the video stream, as segment times in HowTo100M-style captions do. A path through a
tar shard (``00003.tar/<key>.mp4``, see ``tar_members``) is decoded from the member's bytes; the
member is a clip cut at ``start``, so the segment read is ``[0, end - start]`` of the member.

Backends, both implementing the ``VideoReader`` protocol:

- ``DecordVideoReader`` (``"decord"``, the default): decord2, the maintained fork with the same
  import name (``import decord``). One decoding thread, ``get_batch`` of the needed frames,
  handed to torch through DLPack without a copy.
- ``PyAVVideoReader`` (``"pyav"``, the fallback): one decoding thread (safe inside DataLoader
  workers), seeks to the keyframe before the first sample time instead of decoding from zero,
  closes the container with a context manager.

Both map a sample time to the frame on screen at that time using the frames' presentation
timestamps, so for the same clip they return the same frames.

Every failure (missing file, corrupt or truncated data, a segment outside the video, no frames)
raises ``VideoDecodeError``, whose message names the file and the segment; the DataModule counts
and logs it as a skipped sample. ``get_reader(backend, fallback="pyav")`` builds a reader that,
when the first backend raises, logs a warning and retries with the second one; without
``fallback`` nothing is retried silently.

Limits: a decoder stuck inside native code (reported for some broken files with the original
decord) cannot be interrupted from Python; decord2 is the maintained line for that reason.
Rotation metadata (phone videos) is ignored by both backends.
"""

import functools
import io
import logging
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Protocol, runtime_checkable

import numpy as np
import torch

from datamodules.frame_sampling import (
    TIME_EPS,
    SamplingMode,
    clamp_segment,
    offsets_to_times,
    sample_offsets,
    times_to_indices,
)
from datamodules.tar_members import read_member, split_member_path

log = logging.getLogger(__name__)

BackendName = Literal["decord", "pyav", "auto"]


class VideoDecodeError(RuntimeError):
    """A clip could not be decoded; the message names the file, the segment and the reason."""

    def __init__(self, path: str | Path, start: float, end: float, reason: str, backend: str = "") -> None:
        self.path = str(path)
        self.start = start
        self.end = end
        self.reason = reason
        self.backend = backend
        where = f" ({backend})" if backend else ""
        super().__init__(f"cannot decode {self.path} segment [{start:.3f}s, {end:.3f}s]{where}: {reason}")

    def __reduce__(self):  # keep it picklable across DataLoader worker processes
        return type(self), (self.path, self.start, self.end, self.reason, self.backend)


@dataclass(frozen=True)
class DecodedClip:
    """The frames of a clip and where they come from."""

    frames: torch.Tensor
    """uint8 ``[T, C, H, W]``, RGB."""
    timestamps: torch.Tensor
    """float64 ``[T]``: presentation time in seconds (from the stream's first frame) of each frame."""
    backend: str
    """Name of the backend that decoded the frames."""


@runtime_checkable
class VideoReader(Protocol):
    """Decodes the frames at given relative positions of a segment of a video file."""

    name: str

    def read(self, path: str | Path, start: float, end: float, offsets: torch.Tensor) -> DecodedClip:
        """Frames at times ``start + offsets * (end' - start)``, ``end'`` being ``end`` clamped to
        the duration; ``offsets`` ascending in ``[0, 1)`` (``frame_sampling.sample_offsets``).
        Raises ``VideoDecodeError`` on any failure."""
        ...


@contextmanager
def _decode_errors(path: str | Path, start: float, end: float, backend: str) -> Iterator[None]:
    """Turn any exception from a backend into ``VideoDecodeError`` (MemoryError passes through)."""
    try:
        yield
    except (VideoDecodeError, MemoryError):
        raise
    except Exception as exc:  # backends raise many types: RuntimeError, DECORDError, av.error.*
        detail = " ".join(str(exc).split())  # decord messages span several lines
        if len(detail) > 400:
            detail = detail[:400] + "..."
        reason = f"{type(exc).__name__}: {detail}"
        raise VideoDecodeError(path, start, end, reason, backend) from exc


def _open_input(path: str | Path) -> str | io.BytesIO:
    """What a backend opens: a plain file's path, or the bytes of a tar shard's member (``tar_members``)."""
    member = split_member_path(path)
    if member is None:
        if not os.path.isfile(path):
            raise FileNotFoundError("no such file")
        if os.path.getsize(path) == 0:
            raise ValueError("empty file")
        return str(path)
    data = read_member(*member)
    if not data:
        raise ValueError("empty member")
    return io.BytesIO(data)


def _expand(frames: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Repeat unique frames ``[U, ...]`` into the sampled order; no copy when nothing repeats."""
    if frames.shape[0] == inverse.numel():
        return frames
    return frames[inverse]


def _check_frames(frames: torch.Tensor, expected: int) -> None:
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"decoder returned {tuple(frames.shape)} {frames.dtype}, expected [T, 3, H, W] uint8")
    if frames.shape[0] != expected or frames.shape[2] == 0 or frames.shape[3] == 0:
        raise ValueError(f"decoder returned {frames.shape[0]} frames of {tuple(frames.shape[2:])}, expected {expected}")


# --------------------------------------------------------------------------------------------
# decord2


@functools.cache
def decord_available() -> bool:
    """Whether decord2 (import name ``decord``) imports in this environment."""
    try:
        import decord  # noqa: F401
    except Exception:  # ImportError, or a broken native library
        return False
    return True


def _decord_batch_to_torch(batch) -> torch.Tensor:
    """decord's ``get_batch`` output ``[N, H, W, 3]`` as a torch tensor, sharing memory.

    Works whatever bridge another part of the program set globally (``decord.bridge``)."""
    if isinstance(batch, torch.Tensor):
        return batch
    if hasattr(batch, "to_dlpack"):  # the native decord NDArray: hand over its buffer, no copy
        return torch.utils.dlpack.from_dlpack(batch.to_dlpack())
    return torch.from_numpy(np.asarray(batch))


class DecordVideoReader:
    """decord2 backend: ``decord.VideoReader(path, ctx=cpu(0), num_threads=1)`` + ``get_batch``."""

    name = "decord"

    def __init__(self, num_threads: int = 1) -> None:
        """``num_threads``: decoding threads per reader; keep 1 inside DataLoader workers."""
        self.num_threads = num_threads

    def read(self, path: str | Path, start: float, end: float, offsets: torch.Tensor) -> DecodedClip:
        with _decode_errors(path, start, end, self.name):
            source = _open_input(path)
            import decord

            vr = decord.VideoReader(source, ctx=decord.cpu(0), num_threads=self.num_threads)
            try:
                return self._read(vr, start, end, offsets)
            finally:
                del vr  # frees the native decoder now, not at the next garbage collection

    def _read(self, vr, start: float, end: float, offsets: torch.Tensor) -> DecodedClip:
        num = len(vr)
        if num < 1:
            raise ValueError("no frames")
        try:
            # (num, 2) start/end seconds of each frame, from the first frame, in display order.
            # decord computes these from the packets it indexed; if they are fewer than the frame
            # count it reports, indexing past them is what hangs the old decord, so refuse.
            pts = np.asarray(vr.get_frame_timestamp(range(num)), dtype=np.float64)
        except IndexError as exc:
            raise ValueError(f"frame count {num} disagrees with the frame timestamps") from exc
        starts = torch.from_numpy(np.ascontiguousarray(pts[:, 0]))
        if num > 1 and not bool((starts[1:] >= starts[:-1]).all()):
            raise ValueError("frame timestamps are not in display order")
        duration = float(pts[-1, 1]) if pts[-1, 1] > pts[-1, 0] else float(pts[-1, 0]) + 1.0 / vr.get_avg_fps()
        seg_start, seg_end = clamp_segment(start, end, duration)
        times = offsets_to_times(offsets, seg_start, seg_end)
        indices = times_to_indices(times, starts)
        unique, inverse = torch.unique(indices, sorted=True, return_inverse=True)
        frames = _decord_batch_to_torch(vr.get_batch(unique.tolist()))  # [U, H, W, 3]
        frames = _expand(frames.permute(0, 3, 1, 2), inverse)
        _check_frames(frames, offsets.numel())
        return DecodedClip(frames, starts[indices], self.name)


# --------------------------------------------------------------------------------------------
# PyAV


def _seconds(ticks, time_base) -> float:
    """``ticks * time_base`` seconds, rounded to float32 as decord2 reports frame times, so that
    both backends compare sample times with the very same numbers."""
    return float(np.float32(float(ticks * time_base)))


class PyAVVideoReader:
    """PyAV backend: single-threaded decoding from the keyframe before the first sample time."""

    name = "pyav"

    def __init__(self, num_threads: int = 1) -> None:
        """``num_threads``: codec threads; 1 (the default) behaves inside DataLoader workers."""
        self.num_threads = num_threads

    def read(self, path: str | Path, start: float, end: float, offsets: torch.Tensor) -> DecodedClip:
        with _decode_errors(path, start, end, self.name):
            source = _open_input(path)
            import av

            with av.open(source, metadata_errors="ignore") as container:
                if not container.streams.video:
                    raise ValueError("no video stream")
                stream = container.streams.video[0]
                codec = stream.codec_context
                codec.thread_count = self.num_threads
                codec.thread_type = "NONE" if self.num_threads == 1 else "AUTO"
                return self._read(container, stream, start, end, offsets)

    def _read(self, container, stream, start: float, end: float, offsets: torch.Tensor) -> DecodedClip:
        time_base = stream.time_base
        first_pts = stream.start_time if stream.start_time is not None else 0
        if stream.average_rate:
            frame_len = 1.0 / float(stream.average_rate)
        else:
            frame_len = 0.0
        duration = _seconds(self._duration(container, stream, first_pts), 1)
        seg_start, seg_end = clamp_segment(start, end, duration)
        times = offsets_to_times(offsets, seg_start, seg_end).tolist()

        picked = None
        if times[0] > frame_len:  # seek to the keyframe at or before the first sample time
            target = first_pts + math.floor(times[0] / time_base)
            container.seek(target, stream=stream, backward=True, any_frame=False)
            picked = self._scan(container, stream, times, first_pts, frame_len, seeked=True)
        if picked is None:  # no seek needed, or the seek landed after the first sample time
            if times[0] > frame_len:
                container.seek(first_pts, stream=stream, backward=True, any_frame=False)
            picked = self._scan(container, stream, times, first_pts, frame_len, seeked=False)

        arrays: list[np.ndarray] = []
        position: dict[int, int] = {}  # id(frame) -> row in ``arrays``; ``picked`` keeps frames alive
        order: list[int] = []
        for frame, _ in picked:
            if id(frame) not in position:
                if frame.is_corrupt:
                    raise ValueError(f"corrupt frame at {float((frame.pts - first_pts) * time_base):.3f}s")
                position[id(frame)] = len(arrays)
                arrays.append(frame.to_ndarray(format="rgb24"))
            order.append(position[id(frame)])
        frames = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        frames = _expand(frames, torch.tensor(order))
        _check_frames(frames, len(times))
        timestamps = torch.tensor([t for _, t in picked], dtype=torch.float64)
        return DecodedClip(frames, timestamps, self.name)

    @staticmethod
    def _duration(container, stream, first_pts: int) -> float:
        """Length of the video stream in seconds, from metadata, else by reading packet times."""
        if stream.duration:
            return float(stream.duration * stream.time_base)
        if container.duration:
            return container.duration / 1_000_000  # av.time_base
        last_end = None
        for packet in container.demux(stream):
            if packet.pts is not None:
                end = packet.pts + (packet.duration or 0)
                last_end = end if last_end is None else max(last_end, end)
        container.seek(first_pts, stream=stream, backward=True, any_frame=False)
        if last_end is None:
            raise ValueError("no packets with timestamps")
        return float((last_end - first_pts) * stream.time_base)

    @staticmethod
    def _scan(container, stream, times: list[float], first_pts: int, frame_len: float, seeked: bool):
        """Decode forward and pick, for each time, the last frame starting at or before it.

        Returns ``[(frame, frame_time)]`` per time, or ``None`` when ``seeked`` and the first
        decoded frame already starts after the first time (the caller then decodes from the
        beginning). Raises when decoding stops before the last time.
        """
        picked = []
        prev = None  # (frame, time)
        for frame in container.decode(stream):
            if frame.pts is None:
                raise ValueError("decoded a frame without a timestamp")
            t = _seconds(frame.pts - first_pts, stream.time_base)
            if prev is None and seeked and t > times[0] + TIME_EPS:
                return None
            while len(picked) < len(times) and t > times[len(picked)] + TIME_EPS:
                # the frame on screen at this time is the previous one; before the first frame of
                # the stream, the first frame (as ``times_to_indices`` does)
                picked.append(prev if prev is not None else (frame, t))
            if len(picked) == len(times):
                return picked
            prev = (frame, t)
        if prev is None:
            raise ValueError("no frames decoded")
        frame, t = prev
        last_len = float(frame.duration * stream.time_base) if frame.duration else frame_len
        for want in times[len(picked):]:
            if want > t + 2 * max(last_len, TIME_EPS):
                raise ValueError(f"no frame at {want:.3f}s: decoding stopped at {t:.3f}s")
            picked.append(prev)
        return picked


# --------------------------------------------------------------------------------------------
# selection


class FallbackVideoReader:
    """Reads with ``primary``; when it raises ``VideoDecodeError``, logs it and tries ``fallback``."""

    def __init__(self, primary: VideoReader, fallback: VideoReader) -> None:
        self.primary = primary
        self.fallback = fallback
        self.name = f"{primary.name}+{fallback.name}"

    def read(self, path: str | Path, start: float, end: float, offsets: torch.Tensor) -> DecodedClip:
        try:
            return self.primary.read(path, start, end, offsets)
        except VideoDecodeError as first:
            log.warning("%s; retrying with %s", first, self.fallback.name)
            try:
                return self.fallback.read(path, start, end, offsets)
            except VideoDecodeError as second:
                reason = f"{first.backend}: {first.reason}; {second.backend}: {second.reason}"
                raise VideoDecodeError(path, start, end, reason, self.name) from second


_READERS = {"decord": DecordVideoReader, "pyav": PyAVVideoReader}


def _resolve(backend: str) -> str:
    if backend == "auto":
        return "decord" if decord_available() else "pyav"
    if backend not in _READERS:
        raise ValueError(f"unknown video backend {backend!r}; expected 'decord', 'pyav' or 'auto'")
    if backend == "decord" and not decord_available():
        raise ImportError("video backend 'decord' needs the decord2 package (import name 'decord')")
    return backend


def get_reader(backend: BackendName = "auto", fallback: BackendName | None = None) -> VideoReader:
    """The reader for ``backend`` (``auto``: decord2 when it imports, else PyAV).

    With ``fallback``, a reader that retries with that backend when the first one fails, logging a
    warning each time; ``fallback`` equal to the resolved ``backend`` is ignored. ``auto`` falls
    back to PyAV by default: decord's decoding thread reads ahead, so on a damaged file it can
    fail on packets past the requested frames, depending on timing, where PyAV still reads them.
    """
    if backend == "auto" and fallback is None:
        fallback = "pyav"
    primary = _resolve(backend)
    reader = _READERS[primary]()
    if fallback is not None:
        second = _resolve(fallback)
        if second != primary:
            reader = FallbackVideoReader(reader, _READERS[second]())
    return reader


def read_clip(
    path: str | Path,
    start: float,
    end: float,
    num_frames: int,
    mode: SamplingMode = "uniform",
    generator: torch.Generator | None = None,
    backend: BackendName | VideoReader = "auto",
    fallback: BackendName | None = None,
) -> torch.Tensor:
    """``num_frames`` RGB frames of ``path`` within ``[start, end]`` seconds, uint8 ``[T, C, H, W]``.

    ``mode``: ``uniform`` (centres of ``num_frames`` equal bins, for evaluation) or ``random`` (one
    random time per bin from ``generator``, for training). ``end`` is clamped to the duration; a
    ``start`` at or beyond it, ``end <= start`` and every decoding failure raise
    ``VideoDecodeError``. ``backend`` is a name (see ``get_reader``) or a reader instance.
    A tar shard's member holds the clip from ``start`` on (video2dataset resets its timestamps).
    """
    reader = get_reader(backend, fallback) if isinstance(backend, str) else backend
    offsets = sample_offsets(num_frames, mode, generator)
    if split_member_path(path) is not None:
        start, end = 0.0, end - start
    return reader.read(path, start, end, offsets).frames
