"""Consolidate a sharded checkpoint folder (``ModelParallelStrategy``, FSDP2) into one file.

    python -m lightning_modules.consolidate_checkpoint runs/x/checkpoints/step=100.ckpt [--output_file FILE]

A sharded checkpoint is a folder: the weights and optimizer states as ``torch.distributed.checkpoint``
shards (one file per rank) and Lightning's ``meta.pt`` (hyper-parameters, loop and callback state,
the Γ schedule). Lightning's own ``lightning.pytorch.utilities.consolidate_checkpoint`` reads the
FSDP1 layout (a ``model`` key) and fails on this strategy's (``state_dict``), hence this tool. It
reads the full weights in one process (no process group, no GPU) and writes a standard
checkpoint file: ``state_dict`` (the fp32 master weights) and every entry of ``meta.pt``, so
``init_from``, ``load_from_checkpoint`` and ``test --ckpt_path`` on one device read it with
``torch.load(weights_only=True)``. Optimizer states are left out: to resume training, pass the
sharded folder itself to ``--ckpt_path`` (torch.distributed.checkpoint reshards it to any world
size). The output is written to a temporary file and renamed.
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

__all__ = ["consolidate"]

META_FILE = "meta.pt"  # Lightning's name for the non-tensor part of a sharded checkpoint
PREFIX = "state_dict."  # torch.distributed.checkpoint flattens the nested {"state_dict": {...}}


def consolidate(folder: str | Path, output_file: str | Path | None = None) -> Path:
    """Write ``folder``'s full weights and metadata to one file (default ``<folder>.consolidated``); returns it."""
    folder = Path(folder)
    if not (folder / META_FILE).is_file() or not (folder / ".metadata").is_file():
        raise FileNotFoundError(f"{folder} is not a sharded Lightning checkpoint (needs .metadata and {META_FILE})")
    output = Path(output_file) if output_file is not None else folder.with_name(folder.name + ".consolidated")
    shards = FileSystemReader(str(folder)).read_metadata().state_dict_metadata
    weights = {
        key[len(PREFIX):]: torch.empty(meta.size, dtype=meta.properties.dtype)
        for key, meta in shards.items()
        if key.startswith(PREFIX) and isinstance(meta, TensorStorageMetadata)
    }
    if not weights:
        raise ValueError(f"{folder} holds no model weights (no {PREFIX}* entries)")
    state = {"state_dict": weights}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(folder), no_dist=True)
    checkpoint = torch.load(folder / META_FILE, map_location="cpu", weights_only=True)
    checkpoint["state_dict"] = state["state_dict"]
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint_folder", help="a sharded checkpoint folder written by ModelParallelStrategy")
    parser.add_argument("--output_file", default=None, help="default: <checkpoint_folder>.consolidated")
    args = parser.parse_args(argv)
    print(consolidate(args.checkpoint_folder, args.output_file))


if __name__ == "__main__":
    main()
