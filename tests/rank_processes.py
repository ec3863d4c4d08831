"""Environment for tests that start ranks as separate processes (gloo on this machine)."""

import os
import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(**extra: str) -> dict[str, str]:
    """This process's environment plus a free rendezvous port on 127.0.0.1 and the project on
    PYTHONPATH; ``extra`` adds or overrides variables (WORLD_SIZE, OMP_NUM_THREADS, …)."""
    return dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), PYTHONPATH=str(ROOT), **extra)
