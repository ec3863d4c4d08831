"""What a benchmark's figures were measured on, printed and stored beside them."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def native_bfloat16_or_float32(device: torch.device) -> torch.dtype:
    """bfloat16 where matrix products run natively in it (CUDA GPUs that support it, CPUs with AMX
    or AVX512-BF16), else float32: other CPUs emulate bfloat16, slower than float32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu":
        capabilities = torch.cpu.get_capabilities()
        return torch.bfloat16 if capabilities.get("amx_bf16") or capabilities.get("avx512_bf16") else torch.float32
    return torch.float32


def machine() -> dict:
    """Platform, processor, CPUs usable by this process, torch threads and version, load average."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_name": torch.cpu.get_capabilities().get("cpu_name", "unknown"),
        "cpu_bfloat16": native_bfloat16_or_float32(torch.device("cpu")) == torch.bfloat16,
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def describe(info: dict) -> str:
    """One line for the top of a benchmark's output."""
    return (f"machine: {info['cpu_name']}, {info['cpu_count']} CPUs ({info['usable_cpus']} usable), native bfloat16 "
            f"{info['cpu_bfloat16']}, torch threads "
            f"{info['torch_threads']}, load average {info['load_average']}, {info['platform']}")


def start_run(out: Path, threads: int) -> dict:
    """A benchmark's common start: its torch threads (0 keeps torch's default), its output folder,
    and the machine, printed; returns the machine."""
    if threads > 0:
        torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(describe(info))
    return info
