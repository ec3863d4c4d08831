"""What the benchmarks record about their machine."""

from __future__ import annotations

import torch

from benchmarks.machine_info import native_bfloat16_or_float32


def test_native_bfloat16_only_where_the_cpu_computes_in_it(monkeypatch):
    for capabilities, expected in (({"amx_bf16": True}, torch.bfloat16), ({"avx512_bf16": True}, torch.bfloat16),
                                   ({"avx2": True}, torch.float32)):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda c=capabilities: c)
        assert native_bfloat16_or_float32(torch.device("cpu")) == expected
