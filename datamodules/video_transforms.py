"""Frame transforms for decoded clips, with torchvision.transforms.v2.

``build_video_transform(image_size, train)`` maps a uint8 clip ``[T, C, H, W]`` to a normalised
float32 clip ``[T, C, image_size, image_size]``. The clip is wrapped as a ``tv_tensors.Video`` so
that every random parameter (crop box, flip) is drawn once per clip and applied to every frame:
the frames stay aligned and motion between them is preserved.

- train: ``RandomResizedCrop`` with a mild scale range (the objects of a clip must stay in view),
  optional horizontal flip (off by default, see below), float scaling to [0, 1], normalisation.
- eval: ``Resize`` of the short side to ``image_size``, ``CenterCrop``, scaling, normalisation.

Random draws use torch's global RNG, which DataLoader seeds per worker.
"""

from collections.abc import Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

#: ImageNet statistics, as used by TimeSformer-style video encoders; override for other checkpoints.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VideoTransform(torch.nn.Module):
    """Applies a v2 pipeline to a uint8 clip ``[T, C, H, W]`` with the same parameters on every frame."""

    def __init__(self, transforms: Sequence[v2.Transform]) -> None:
        super().__init__()
        self.pipeline = v2.Compose(list(transforms))

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        if clip.ndim != 4 or clip.shape[1] not in (1, 3):
            raise ValueError(f"expected a clip [T, C, H, W], got shape {tuple(clip.shape)}")
        if clip.dtype != torch.uint8:
            raise ValueError(f"expected a uint8 clip, got {clip.dtype}")
        out = self.pipeline(tv_tensors.Video(clip))
        return out.as_subclass(torch.Tensor)


def build_video_transform(
    image_size: int,
    train: bool,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    crop_scale: tuple[float, float] = (0.6, 1.0),
    hflip: bool = False,
) -> VideoTransform:
    """The clip transform for training (``train=True``) or evaluation.

    ``image_size``: side of the square output frames. ``mean``/``std``: per-channel normalisation
    of [0, 1] pixels. ``crop_scale``: area range of the training crop (mild by default).
    ``hflip``: random horizontal flip in training. Off by default: flipping a clip swaps left and
    right, so a caption saying "moves left" would then describe a clip moving right; turn it on
    only for data whose text carries no left/right semantics.
    """
    if train:
        steps: list[v2.Transform] = [v2.RandomResizedCrop(image_size, scale=crop_scale, antialias=True)]
        if hflip:
            steps.append(v2.RandomHorizontalFlip())
    else:
        steps = [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    return VideoTransform(steps)
