"""Which moments of a clip to show the model: frame sampling in time, shared by every backend.

A clip is a segment ``[start, end]`` in seconds of a video file (HowTo100M segment times).
Sampling happens in *time*, not in frame indices, so that every decoding backend picks the same
frames:

1. ``sample_offsets`` chooses, for ``N`` frames, one position per bin in ``[0, 1)``:
   ``uniform`` (evaluation) takes the centre of each of ``N`` equal bins; ``random`` (training)
   takes one random position inside each bin, drawn from the given ``torch.Generator``. The
   offsets do not depend on the file, so a reader that falls back to another backend reuses them.
2. ``offsets_to_times`` maps them into the (duration-clamped) segment: ``t_i = start + o_i * (end
   - start)``, where ``o_i`` already includes the bin index: ``o_i = (i + u_i) / N``.
3. A time ``t`` shows the frame on screen at ``t``: the last frame whose presentation timestamp
   (seconds from the first frame of the stream) is ``<= t + TIME_EPS``. ``times_to_indices``
   applies that rule to a list of frame timestamps; the PyAV reader applies the same rule while
   decoding. decord2 reports frame times as float32 seconds; the PyAV reader rounds its exact
   times the same way, so both backends compare identical numbers and pick identical frames.

When the segment holds fewer distinct frames than ``N`` (a short segment or a low frame rate),
several times fall on the same frame and that frame is repeated: the output always has ``N``
frames, in temporal order.
"""

import math
from typing import Literal

import torch

SamplingMode = Literal["uniform", "random"]

#: Tolerance in seconds when comparing a sample time with a frame timestamp, so that rounding in
#: the time-base conversion of one backend cannot flip a frame choice.
TIME_EPS = 1e-6


def sample_offsets(
    num_frames: int, mode: SamplingMode = "uniform", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Relative positions in ``[0, 1)`` of ``num_frames`` samples, one per equal bin, ascending.

    ``uniform`` gives the bin centres ``(i + 0.5) / N``; ``random`` gives ``(i + u_i) / N`` with
    ``u_i ~ U[0, 1)`` drawn from ``generator`` (the global torch RNG when it is ``None``).
    Returns a float64 tensor of shape ``[num_frames]``.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    bins = torch.arange(num_frames, dtype=torch.float64)
    if mode == "uniform":
        within = torch.full((num_frames,), 0.5, dtype=torch.float64)
    elif mode == "random":
        within = torch.rand(num_frames, generator=generator, dtype=torch.float64)
    else:
        raise ValueError(f"unknown sampling mode {mode!r}; expected 'uniform' or 'random'")
    return (bins + within) / num_frames


def clamp_segment(start: float, end: float, duration: float) -> tuple[float, float]:
    """Check a segment against the video duration and clamp its end to the duration.

    Raises ``ValueError`` (readers turn it into ``VideoDecodeError`` naming the file) when a time
    is not finite, ``start`` is negative, ``end <= start`` or ``start >= duration``.
    """
    if not (math.isfinite(start) and math.isfinite(end)):
        raise ValueError(f"segment times must be finite, got [{start}, {end}]")
    if start < 0:
        raise ValueError(f"segment start {start:.3f}s is negative")
    if end <= start:
        raise ValueError(f"segment end {end:.3f}s is not after its start {start:.3f}s")
    if not duration > 0:
        raise ValueError(f"video has no duration ({duration})")
    if start >= duration:
        raise ValueError(f"segment start {start:.3f}s is beyond the video duration {duration:.3f}s")
    return start, min(end, duration)


def offsets_to_times(offsets: torch.Tensor, start: float, end: float) -> torch.Tensor:
    """Sample times in seconds: ``start + offsets * (end - start)`` (float64, ascending)."""
    return start + offsets.to(torch.float64) * (end - start)


def times_to_indices(times: torch.Tensor, frame_starts: torch.Tensor) -> torch.Tensor:
    """Index of the frame on screen at each time: the last frame whose start is ``<= t + TIME_EPS``.

    ``frame_starts`` are the presentation timestamps of all frames in seconds, ascending. Times
    before the first frame map to frame 0 and times after the last frame to the last frame (the
    caller clamps segments to the duration, so that only happens within one frame length).
    """
    if frame_starts.numel() == 0:
        raise ValueError("the video has no frames")
    starts = frame_starts.to(torch.float64).contiguous()
    idx = torch.searchsorted(starts, times.to(torch.float64) + TIME_EPS, right=True) - 1
    return idx.clamp_(0, starts.numel() - 1)
