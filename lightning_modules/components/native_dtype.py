"""Which low precision a device computes in natively (no Lightning, no transformers: benchmarks
import it to describe their machine)."""

from __future__ import annotations

import torch

__all__ = ["native_bfloat16_or_float32"]


def native_bfloat16_or_float32(device: torch.device) -> torch.dtype:
    """bfloat16 where matrix products run natively in it (CUDA GPUs that support it, CPUs with AMX
    or AVX512-BF16), else float32: other CPUs emulate bfloat16, slower than float32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu":
        capabilities = torch.cpu.get_capabilities()
        return torch.bfloat16 if capabilities.get("amx_bf16") or capabilities.get("avx512_bf16") else torch.float32
    return torch.float32
