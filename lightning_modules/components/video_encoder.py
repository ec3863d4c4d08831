"""The video encoder: a TimeSformer (divided space-time attention) that emits a grid of tokens.

``VideoEncoder`` wraps transformers' ``TimesformerModel`` (built from a config or loaded from a
local checkpoint folder) and turns its output into the visual tokens the VideoLLM reads.

Which tokens. TimeSformer's last layer holds one CLS token and one token per (patch, frame). The
CLS token alone is a global summary: an action classifier needs nothing else, but a captioner must
say *where* an object goes (left, right, up, down) and whether it grows or shrinks, i.e. how a
position or a size changes over time. We therefore keep the space-time grid of patch tokens,
average-pooled to a fixed ``(t, h, w)`` grid (``pool_grid``) and emitted in a fixed time-major,
row-major order, plus the CLS token first. Every visual token thus has a known place in space and
time (its features carry TimeSformer's space and time position embeddings, and its slot in the
LM's sequence is fixed), so motion stays learnable, while the pooled grid bounds the number of
tokens the LM pays for: the tiny preset keeps a 4×4 spatial grid at 4 time steps (65 tokens); a
224-pixel TimeSformer (14×14 patches × 8 frames = 1568 tokens) pools to e.g. 4×7×7.

Convolutional stem. A randomly initialised ViT learns little from a few hundred clips: its patch
embedding is one linear map of a whole patch, so an object's appearance depends on where the
patch grid cuts it. ``conv_stem=True`` replaces that map with a small VGG-style network that
reaches the same patch grid: per halving of the resolution a 3×3 convolution, batch norm, GELU
and 2×2 max-pooling, then a 1×1 projection to the hidden width (in the spirit of Xiao et al.,
2021, "Early convolutions help transformers see better"). The transformer, its divided
space-time attention and the token layout are unchanged. Shape needs it: on the synthetic
world's 32-pixel stills the encoder with this stem, trained with a shape read-out, names a shape
the still holds in 0.99 of validation stills, against 0.43 with linear patches (README, "What
the tiny preset learns"). Batch norm beat group norm there (the image captioner's shape agreement
0.66 against 0.36); its running statistics are buffers, which the flywheel makes equal on every
rank before re-annotating. It is for encoders built from a config; a pretrained checkpoint keeps
its own patch embedding.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import TimesformerConfig, TimesformerModel

__all__ = ["tiny_timesformer_config", "ConvStem", "VideoEncoder"]


def tiny_timesformer_config(**overrides) -> TimesformerConfig:
    """The demo-size TimeSformer: hidden 64, 2 layers, 4 heads, patch 8 on 32×32 frames, 8 frames.

    Keyword overrides replace any field (e.g. ``image_size=64``, ``num_frames=16``).
    """
    fields = dict(
        image_size=32,
        patch_size=8,
        num_channels=3,
        num_frames=8,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attention_type="divided_space_time",
    )
    fields.update(overrides)
    return TimesformerConfig(**fields)


class ConvStem(nn.Sequential):
    """A VGG-style stem from pixels to the patch grid: ``[N, C, H, W]`` → ``[N, D, H/p, W/p]``.

    ``log2(patch_size)`` stages of 3×3 convolution, batch norm, GELU and 2×2 max-pooling, widths
    doubling up to ``hidden_size`` (at least 16), then a 1×1 convolution to ``hidden_size``; a
    drop-in for TimeSformer's patch projection.
    """

    def __init__(self, num_channels: int, hidden_size: int, patch_size: int) -> None:
        steps = int(patch_size).bit_length() - 1
        if patch_size < 2 or 2**steps != patch_size:
            raise ValueError(f"a convolutional stem needs a power-of-two patch size >= 2, got {patch_size}")
        widths = [max(hidden_size // 2 ** (steps - 1 - i), 16) for i in range(steps)]
        layers: list[nn.Module] = []
        c = num_channels
        for width in widths:
            layers += [nn.Conv2d(c, width, kernel_size=3, stride=1, padding=1), nn.BatchNorm2d(width), nn.GELU(),
                       nn.MaxPool2d(2)]
            c = width
        layers.append(nn.Conv2d(c, hidden_size, kernel_size=1))
        super().__init__(*layers)

    @property
    def weight(self) -> Tensor:
        """The last convolution's weight: what callers read the encoder's dtype and device from."""
        return self[-1].weight


class VideoEncoder(nn.Module):
    """Video ``[B, T, C, H, W]`` (float, normalised) → visual tokens ``[B, 1 + t·h·w, D]``.

    Args:
        config: a ``TimesformerConfig`` to build a randomly initialised encoder from.
        checkpoint: a local folder holding a TimeSformer checkpoint (``config.json`` + weights);
            exactly one of ``config`` and ``checkpoint`` is given.
        pool_grid: ``(t, h, w)`` the patch-token grid is average-pooled to; ``None`` keeps every
            patch token (``T·(H/p)·(W/p)`` of them). Each entry must not exceed the grid's size.
        dtype: parameter dtype when loading a checkpoint (e.g. ``torch.bfloat16``).
        conv_stem: with ``config``, embed patches with a ``ConvStem`` instead of one linear map.
        frame_difference: with ``config``, give the encoder each frame's difference from the
            previous frame as extra channels (see the module docstring); ``config.num_channels``
            counts the frame's channels only.
    """

    def __init__(
        self,
        config: TimesformerConfig | None = None,
        checkpoint: str | Path | None = None,
        pool_grid: tuple[int, int, int] | None = (4, 4, 4),
        dtype: torch.dtype | None = None,
        conv_stem: bool = False,
        frame_difference: bool = False,
    ) -> None:
        super().__init__()
        if (config is None) == (checkpoint is None):
            raise ValueError("give exactly one of `config` and `checkpoint` to VideoEncoder")
        if conv_stem and checkpoint is not None:
            raise ValueError("conv_stem replaces the patch embedding; a pretrained checkpoint keeps its own")
        if frame_difference and checkpoint is not None:
            raise ValueError("frame_difference adds input channels; a pretrained checkpoint keeps its own")
        self.frame_difference = frame_difference
        if checkpoint is not None:
            checkpoint = Path(checkpoint)
            if not (checkpoint / "config.json").is_file():
                raise FileNotFoundError(f"video encoder checkpoint not found (no config.json): {checkpoint}")
            # Weights are read as safetensors when present, else with torch.load(weights_only=True).
            self.timesformer = TimesformerModel.from_pretrained(
                str(checkpoint), local_files_only=True, dtype=dtype
            )
        else:
            if frame_difference:
                config = TimesformerConfig(**{**config.to_dict(), "num_channels": 2 * config.num_channels})
            self.timesformer = TimesformerModel(config)
            if conv_stem:
                self.timesformer.embeddings.patch_embeddings.projection = ConvStem(
                    config.num_channels, config.hidden_size, config.patch_size
                )
        cfg = self.timesformer.config
        if cfg.attention_type != "divided_space_time":
            raise ValueError(f"expected divided space-time attention, got {cfg.attention_type!r}")
        self.num_frames = int(cfg.num_frames)
        self.image_size = int(cfg.image_size)
        self.grid_hw = self.image_size // int(cfg.patch_size)
        full = (self.num_frames, self.grid_hw, self.grid_hw)
        if pool_grid is not None:
            pool_grid = tuple(int(x) for x in pool_grid)
            if len(pool_grid) != 3 or any(not 1 <= p <= f for p, f in zip(pool_grid, full)):
                raise ValueError(f"pool_grid {pool_grid} must be 3 ints within the token grid {full}")
        self.pool_grid = pool_grid
        t, h, w = pool_grid if pool_grid is not None else full
        self.num_tokens = 1 + t * h * w
        self.hidden_size = int(cfg.hidden_size)

    def forward(self, video: Tensor) -> Tensor:
        if video.dim() != 5:
            raise ValueError(f"video must be [B, T, C, H, W], got shape {tuple(video.shape)}")
        b, t, c, h, w = video.shape
        if t != self.num_frames or h != self.image_size or w != self.image_size:
            raise ValueError(
                f"the video encoder expects {self.num_frames} frames of "
                f"{self.image_size}×{self.image_size}, "
                f"got {t} frames of {h}×{w}"
            )
        dtype = self.timesformer.embeddings.patch_embeddings.projection.weight.dtype
        if self.frame_difference:
            previous = torch.cat([video[:, :1], video[:, :-1]], dim=1)
            video = torch.cat([video, video - previous], dim=2)
        hidden = self.timesformer(pixel_values=video.to(dtype)).last_hidden_state  # [B, 1+P·T, D]
        cls, patches = hidden[:, :1], hidden[:, 1:]
        d = hidden.shape[-1]
        # TimeSformer orders patch tokens patch-major, frame-minor: [B, Hp, Wp, T, D].
        grid = patches.reshape(b, self.grid_hw, self.grid_hw, t, d).permute(0, 4, 3, 1, 2)  # [B,D,T,Hp,Wp]
        if self.pool_grid is not None:
            grid = F.adaptive_avg_pool3d(grid, self.pool_grid)
        tokens = grid.flatten(2).transpose(1, 2)  # time-major, then row, then column
        return torch.cat([cls, tokens], dim=1)
