"""Drawing segments with numpy and encoding them with PyAV.

Each scene is a distinct background texture; each object is a filled shape with a thin
contrasting outline (black, or white around black objects) so that it stays visible on any
background and at half resolution. Objects move linearly between the start and end centres and
scales of their :class:`~.spec.ObjectSpec`.
"""

from pathlib import Path

import av
import numpy as np
from PIL import Image

from .spec import SIZE_DIAMETER, SegmentSpec

COLOR_RGB = {
    "red": (220, 35, 35),
    "orange": (255, 140, 20),
    "yellow": (250, 225, 40),
    "green": (40, 190, 60),
    "blue": (40, 90, 235),
    "purple": (150, 60, 210),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
OUTLINE_PX = 1.25


# ----------------------------------------------------------------------------- backgrounds

def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates as fractions of the side: (y, x), each [size, size]."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(c, c, indexing="ij")


def _fill(size: int, rgb) -> np.ndarray:
    return np.broadcast_to(np.asarray(rgb, np.float32), (size, size, 3)).copy()


def _paint(img: np.ndarray, mask: np.ndarray, rgb) -> None:
    img[mask] = np.asarray(rgb, np.float32)


def _beach(rng, size, y, x):
    img = _fill(size, (225, 205, 150))
    shore = 0.45 + 0.03 * np.sin(x * 12 + rng.uniform(0, 6.3))
    _paint(img, y < shore, (40, 120, 160))
    _paint(img, y < 0.28 + rng.uniform(-0.03, 0.03), (140, 200, 235))
    return img


def _forest(rng, size, y, x):
    img = _fill(size, (45, 90, 45))
    for _ in range(5):
        cx = rng.uniform(0, 1)
        _paint(img, np.abs(x - cx) < 0.03, (95, 65, 40))
    canopy = 0.22 + 0.05 * np.sin(x * 20 + rng.uniform(0, 6.3))
    _paint(img, y < canopy, (25, 60, 30))
    return img


def _kitchen(rng, size, y, x):
    tiles = 8 if rng.random() < 0.5 else 6
    checker = ((np.floor(y * tiles) + np.floor(x * tiles)) % 2).astype(bool)
    img = _fill(size, (230, 225, 205))
    _paint(img, checker, (175, 170, 160))
    _paint(img, y > 0.88, (120, 90, 60))
    return img


def _snow(rng, size, y, x):
    img = _fill(size, (232, 238, 246))
    hill = 0.6 + 0.08 * np.sin(x * 5 + rng.uniform(0, 6.3))
    _paint(img, y > hill, (214, 222, 235))
    _paint(img, rng.random((size, size)) < 0.04, (190, 200, 220))
    return img


def _night(rng, size, y, x):
    img = np.stack([15 + 15 * y, 20 + 10 * y, 50 + 20 * y], axis=-1).astype(np.float32)
    _paint(img, rng.random((size, size)) < 0.015, (220, 220, 180))
    return img


def _desert(rng, size, y, x):
    img = _fill(size, (225, 185, 120))
    for level in (0.45, 0.7, 0.9):
        dune = level + 0.05 * np.sin(x * rng.uniform(4, 9) + rng.uniform(0, 6.3))
        _paint(img, (y > dune) & (y < dune + 0.04), (195, 150, 90))
    _paint(img, y < 0.2, (245, 225, 190))
    return img


def _city(rng, size, y, x):
    img = _fill(size, (175, 185, 195))
    left = 0.0
    while left < 1.0:
        width = rng.uniform(0.12, 0.25)
        top = rng.uniform(0.25, 0.6)
        shade = (80, 85, 95) if rng.random() < 0.5 else (110, 110, 120)
        building = (x >= left) & (x < left + width) & (y > top)
        _paint(img, building, shade)
        _paint(img, building & (rng.random((size, size)) < 0.05), (230, 215, 130))
        left += width + rng.uniform(0.0, 0.05)
    return img


def _underwater(rng, size, y, x):
    img = np.stack([20 - 10 * y, 130 - 70 * y, 150 - 50 * y], axis=-1).astype(np.float32)
    for level in (0.1, 0.22):  # caustic light bands
        wave = level + 0.03 * np.sin(x * rng.uniform(8, 14) + rng.uniform(0, 6.3))
        _paint(img, np.abs(y - wave) < 0.015, (90, 190, 200))
    _paint(img, rng.random((size, size)) < 0.004, (150, 210, 220))
    _paint(img, y > 0.9 + 0.03 * np.sin(x * 15), (160, 140, 100))
    return img


BACKGROUNDS = {
    "beach": _beach, "forest": _forest, "kitchen": _kitchen, "snow": _snow,
    "night": _night, "desert": _desert, "city": _city, "underwater": _underwater,
}


def render_background(scene: str, size: int, seed: int) -> np.ndarray:
    """The scene's texture with its per-segment variation, float32 [size, size, 3]."""
    rng = np.random.default_rng(seed)
    y, x = _grid(size)
    img = BACKGROUNDS[scene](rng, size, y, x)
    jitter = rng.uniform(-8, 8, size=3).astype(np.float32)
    return np.clip(img + jitter, 0, 255)


# ----------------------------------------------------------------------------- shapes

def shape_mask(
    shape: str, dy: np.ndarray, dx: np.ndarray, r: float, pad: float = 0.0
) -> np.ndarray:
    """Pixels inside ``shape`` of radius ``r`` (px) centred at offset 0, grown by ``pad`` px."""
    if shape == "circle":
        return dx * dx + dy * dy <= (r + pad) ** 2
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= (r + pad) ** 2) & (d2 >= max(0.0, 0.5 * r - pad) ** 2)
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.8 * r + pad
    if shape == "cross":
        arm, reach = 0.3 * r + pad, r + pad
        ax, ay = np.abs(dx), np.abs(dy)
        return ((ax <= arm) & (ay <= reach)) | ((ay <= arm) & (ax <= reach))
    if shape == "triangle":
        r = r + 1.6 * pad
        top, bottom, half_base = -r, 0.65 * r, 0.95 * r
        inside_y = (dy >= top) & (dy <= bottom)
        return inside_y & (np.abs(dx) <= half_base * (dy - top) / (bottom - top))
    if shape == "star":
        theta = np.arctan2(dy, dx) + np.pi / 2  # a tip points up
        phase = (theta * 5 / (2 * np.pi)) % 1.0
        tri = np.abs(phase * 2 - 1)  # 1 at tips, 0 between them
        radius = r * (0.45 + 0.55 * tri) + pad
        return dx * dx + dy * dy <= radius ** 2
    raise ValueError(f"unknown shape {shape!r}")


def render_segment(segment: SegmentSpec, size: int) -> np.ndarray:
    """All frames of a segment, uint8 [num_frames, size, size, 3]."""
    background = render_background(segment.scene, size, segment.background_seed)
    n = segment.num_frames
    frames = np.empty((n, size, size, 3), np.uint8)
    for t in range(n):
        a = t / (n - 1) if n > 1 else 0.0
        img = background.copy()
        for obj in segment.objects:
            cx = (obj.x0 + (obj.x1 - obj.x0) * a) * size
            cy = (obj.y0 + (obj.y1 - obj.y0) * a) * size
            r = SIZE_DIAMETER[obj.size] * (obj.scale0 + (obj.scale1 - obj.scale0) * a) * size / 2
            # work on the object's bounding box only
            reach = 1.6 * (r + OUTLINE_PX) + 1
            y0, y1 = max(0, int(cy - reach)), min(size, int(cy + reach) + 1)
            x0, x1 = max(0, int(cx - reach)), min(size, int(cx + reach) + 1)
            if y0 >= y1 or x0 >= x1:
                continue
            dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
            dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
            dy, dx = np.broadcast_arrays(dy, dx)
            window = img[y0:y1, x0:x1]
            outline = (235, 235, 235) if obj.color == "black" else (15, 15, 15)
            _paint(window, shape_mask(obj.shape, dy, dx, r, OUTLINE_PX), outline)
            _paint(window, shape_mask(obj.shape, dy, dx, r), COLOR_RGB[obj.color])
        frames[t] = img.astype(np.uint8)
    return frames


# ----------------------------------------------------------------------------- files

def write_video(path: Path, frames: np.ndarray, fps: int, codec: str = "libx264") -> None:
    """Encode uint8 RGB frames [T, H, W, 3] as yuv420p (``libx264`` for mp4, ``mpeg4`` for avi)."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        if codec == "libx264":
            # Constant QP, not CRF: CRF's rate control encoded the same frames differently from one
            # process to another (seen with 1 thread), so a world was not a function of its seed.
            stream.options = {"preset": "veryfast", "qp": "18", "threads": "1"}
        else:
            stream.bit_rate = 600_000
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_image(path: Path, frame: np.ndarray) -> None:
    Image.fromarray(frame).save(path, format="PNG")
